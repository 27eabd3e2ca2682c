//! Signed OTA patches through caller storage: install (A/B, power-fail safe) and boot.
//! The protocol is the core's (`prorepair_core::ota`); C supplies the storage as
//! callbacks in a `pr_storage`.
//!
//! Two flavours over the same storage and protocol: `pr_ota_install` / `pr_ota_boot`
//! take weight-delta patches only and boot into a `pr_model` (a firmware using just
//! these carries no patch-modules code); `pr_ota_install_any` / `pr_ota_boot_any` take
//! both kinds and boot into a `pr_booted` (evaluated with `pr_booted_evaluate`, guarded
//! with `pr_guard_init_booted`).

use core::ffi::{c_int, c_void};
use core::mem::{align_of, size_of};

use prorepair_core::Error;
use prorepair_core::ota::{
    self, AnyKind, AnyPatch, Area, BootSource, Booted, Kinds, Running, Slot, Storage,
    WeightDeltaOnly,
};
use prorepair_core::patch::{PUBLIC_KEY_SIZE, PatchKind};

use crate::boundary::guard;
use crate::model::{
    eval_buffers, overlaps, pr_model, read_model, span, tagged_payload, write_model,
};
use crate::patch::write_ram_bytes;
use crate::status::pr_status::{self, *};

/// Size of an Ed25519 public key in bytes (the `public_key` arguments).
pub const PR_PUBLIC_KEY_SIZE: usize = 32;

/// Size in bytes of one commit record copy (each record area holds at least this).
pub const PR_OTA_RECORD_SIZE: usize = 32;

/// A storage area, as passed to the `pr_storage` callbacks.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pr_area {
    /// Patch slot A (`slot_capacity` bytes).
    PR_AREA_SLOT_A = 0,
    /// Patch slot B (`slot_capacity` bytes).
    PR_AREA_SLOT_B = 1,
    /// Commit record copy A (at least `PR_OTA_RECORD_SIZE` bytes).
    PR_AREA_RECORD_A = 2,
    /// Commit record copy B (at least `PR_OTA_RECORD_SIZE` bytes).
    PR_AREA_RECORD_B = 3,
}

/// The device's persistent storage for OTA patches, as callbacks (e.g. flash sectors).
///
/// Owned by the caller and borrowed for each call. The library calls `read`, `erase`
/// and `write` with `ctx` as first argument, only during `pr_ota_install` and
/// `pr_ota_boot`, never concurrently, with `offset + len` within the area. A callback
/// that fails (e.g. power loss, flash error) returns non-zero: the call then returns
/// `PR_STORAGE_FAILURE` and the protocol guarantees that the next boot still finds the
/// previously committed model.
#[repr(C)]
#[derive(Debug)]
pub struct pr_storage {
    /// Passed to every callback unchanged.
    pub ctx: *mut c_void,
    /// Bytes each patch slot holds.
    pub slot_capacity: usize,
    /// `read(ctx, area, offset, buf, len)`: read `len` bytes of `area` at `offset` into
    /// `buf`; return 0 on success.
    pub read: Option<unsafe extern "C" fn(*mut c_void, pr_area, usize, *mut u8, usize) -> c_int>,
    /// `erase(ctx, area)`: erase the whole `area`; return 0 on success.
    pub erase: Option<unsafe extern "C" fn(*mut c_void, pr_area) -> c_int>,
    /// `write(ctx, area, offset, data, len)`: write `len` bytes from `data` to the erased
    /// `area` at `offset`; return 0 on success.
    pub write: Option<unsafe extern "C" fn(*mut c_void, pr_area, usize, *const u8, usize) -> c_int>,
}

/// What `pr_ota_boot` booted.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pr_boot_source {
    /// The base model: nothing committed.
    PR_BOOT_BASE = 0,
    /// The patch in slot A, as committed.
    PR_BOOT_SLOT_A = 1,
    /// The patch in slot B, as committed.
    PR_BOOT_SLOT_B = 2,
    /// The newest commit failed its checks; the previous one (slot A) runs.
    PR_BOOT_FALLBACK_SLOT_A = 3,
    /// The newest commit failed its checks; the previous one (slot B) runs.
    PR_BOOT_FALLBACK_SLOT_B = 4,
    /// No committed patch passed its checks: the base model runs.
    PR_BOOT_FALLBACK_BASE = 5,
}

/// Details of a boot (filled by `pr_ota_boot`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pr_boot_info {
    /// Where the running model came from.
    pub source: pr_boot_source,
    /// Sequence number of the running patch (0: base model).
    pub sequence: u32,
    /// The anti-rollback counter in storage (highest sequence ever committed).
    pub counter: u32,
    /// Bytes of the running patch at the start of `patch_buf` (0: base model); pass
    /// them to `pr_guard_init` for the verified regions.
    pub patch_len: usize,
    /// Kind of the running patch: 0 none (base model), 1 weight delta, 2 patch modules.
    pub kind: u32,
}

/// Size in bytes of `pr_booted` on every target.
pub const PR_BOOTED_SIZE: usize = 512;

/// The model `pr_ota_boot_any` booted, of either patch kind: opaque storage owned by the
/// caller. No destructor, no heap. It refers to the base model's blob and to the
/// `patch_buf` and `ram` given to `pr_ota_boot_any`: all must stay valid and unmodified
/// while it (or a copy) is used. A zeroed one reads as `PR_MODEL_NOT_LOADED`.
#[repr(C)]
#[derive(Debug)]
pub struct pr_booted {
    /// Opaque: a tag word, then the running model. Do not touch.
    _opaque: [u64; 64],
}

impl pr_booted {
    /// Zeroed storage, not booted (what a C static or `{0}` gives).
    pub const fn unloaded() -> Self {
        pr_booted { _opaque: [0; 64] }
    }
}

/// Word 0 of a filled `pr_booted` ("PRBOOT01").
const BOOTED_TAG: u64 = u64::from_le_bytes(*b"PRBOOT01");

const _: () = {
    assert!(size_of::<pr_booted>() == PR_BOOTED_SIZE);
    assert!(size_of::<u64>() + size_of::<Running<'static>>() <= PR_BOOTED_SIZE);
    assert!(align_of::<Running<'static>>() <= align_of::<u64>());
};

/// The running model in `b`, copied out, or why there is none.
///
/// # Safety
/// `b` is NULL or an initialised (zeroed or filled) `pr_booted` whose buffers are valid.
pub(crate) unsafe fn read_booted(b: *const pr_booted) -> Result<Running<'static>, pr_status> {
    // SAFETY: contract, passed on (a pr_booted is 64 u64 words, 8-aligned).
    let payload = unsafe { tagged_payload(b, BOOTED_TAG) }?;
    // SAFETY: the tag is written only after a valid Running at word 1 (fits and is
    // aligned: const assertions); it is Copy, read by value.
    Ok(unsafe { payload.cast::<Running<'static>>().read() })
}

/// `Storage` over the C callbacks (checked non-null before use).
struct CStorage<'s>(&'s pr_storage);

fn status_of(rc: c_int) -> Result<(), Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::StorageFailure)
    }
}

fn area_of(area: Area) -> pr_area {
    match area {
        Area::SlotA => pr_area::PR_AREA_SLOT_A,
        Area::SlotB => pr_area::PR_AREA_SLOT_B,
        Area::RecordA => pr_area::PR_AREA_RECORD_A,
        Area::RecordB => pr_area::PR_AREA_RECORD_B,
    }
}

impl Storage for CStorage<'_> {
    fn slot_capacity(&self) -> usize {
        self.0.slot_capacity
    }

    fn read(&mut self, area: Area, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let f = self.0.read.ok_or(Error::StorageFailure)?;
        // SAFETY: the callback is the caller's (contract of the public functions): it
        // writes at most `buf.len()` bytes to `buf`, a valid exclusive buffer.
        status_of(unsafe {
            f(
                self.0.ctx,
                area_of(area),
                offset,
                buf.as_mut_ptr(),
                buf.len(),
            )
        })
    }

    fn erase(&mut self, area: Area) -> Result<(), Error> {
        let f = self.0.erase.ok_or(Error::StorageFailure)?;
        // SAFETY: the caller's callback (contract of the public functions).
        status_of(unsafe { f(self.0.ctx, area_of(area)) })
    }

    fn write(&mut self, area: Area, offset: usize, data: &[u8]) -> Result<(), Error> {
        let f = self.0.write.ok_or(Error::StorageFailure)?;
        // SAFETY: the caller's callback (contract); `data` is readable for its length.
        status_of(unsafe { f(self.0.ctx, area_of(area), offset, data.as_ptr(), data.len()) })
    }
}

/// The storage, checked: non-null pointer and callbacks.
///
/// # Safety
/// `storage` is NULL or points to a readable `pr_storage` for the lifetime `'s`.
unsafe fn storage_ref<'s>(storage: *const pr_storage) -> Result<&'s pr_storage, pr_status> {
    if storage.is_null() {
        return Err(PR_NULL_POINTER);
    }
    if !storage.is_aligned() {
        return Err(PR_MISALIGNED_POINTER);
    }
    // SAFETY: non-null, aligned, readable (contract).
    let s = unsafe { &*storage };
    if s.read.is_none() || s.erase.is_none() || s.write.is_none() {
        return Err(PR_NULL_POINTER);
    }
    Ok(s)
}

/// The public key (NULL: an unkeyed device).
///
/// # Safety
/// `key` is NULL or readable for 32 bytes.
unsafe fn key_ref<'k>(key: *const u8) -> Option<&'k [u8; PUBLIC_KEY_SIZE]> {
    // SAFETY: non-null keys are readable for 32 bytes (contract); [u8; 32] has
    // alignment 1.
    (!key.is_null()).then(|| unsafe { &*key.cast::<[u8; PUBLIC_KEY_SIZE]>() })
}

/// Install a weight-delta patch over the air, power-fail safe (a patch-modules patch
/// is refused with `PR_UNKNOWN_PATCH_KIND`: see `pr_ota_install_any`).
///
/// Verifies the patch completely before touching storage: CRC and structure, the
/// Ed25519 signature under `public_key` (when given: unsigned patches are then refused
/// with `PR_UNSIGNED_PATCH`, wrongly signed ones with `PR_BAD_SIGNATURE`), the binding to
/// `model`'s base blob (SHA-256, layers, shapes), a sequence number above the stored
/// anti-rollback counter (`PR_STALE_PATCH`), and the slot size. Then writes the inactive
/// slot, reads it back, and commits by writing the older of the two commit records. On
/// any error the committed model is unchanged; a storage failure may leave the inactive
/// slot or the older record half written, which `pr_ota_boot` ignores. The running
/// `*model` is not changed: the new patch runs after `pr_ota_boot`.
///
/// - `model`: borrowed, a loaded (possibly patched) `pr_model`; its base blob is used.
/// - `storage`: borrowed; its callbacks are called during the call only.
/// - `public_key`: NULL (accept unsigned patches: for development only) or 32 bytes,
///   borrowed for the call.
/// - `patch`: `patch_len` bytes, any alignment, borrowed for the call (copied to storage).
/// - `out_counter`: NULL or written on `PR_OK` with the new anti-rollback counter.
///
/// # Safety
/// `model` is NULL or an initialised `pr_model` whose blob is still valid; `storage` is
/// NULL or a valid `pr_storage` whose callbacks honour its contract; `public_key` is NULL
/// or readable for 32 bytes; `patch` is NULL or readable for `patch_len` bytes;
/// `out_counter` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_ota_install(
    model: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch: *const u8,
    patch_len: usize,
    out_counter: *mut u32,
) -> pr_status {
    // SAFETY: contract above, passed on.
    unsafe {
        install_checked::<WeightDeltaOnly>(
            model,
            storage,
            public_key,
            patch,
            patch_len,
            out_counter,
        )
    }
}

/// Install a patch of either kind (weight delta or patch modules) over the air: as
/// `pr_ota_install`, with the same checks, arguments and guarantees; boot it with
/// `pr_ota_boot_any`. A patch-modules patch is checked for the binding of every module
/// (input and output widths, labels) to `model`'s base blob.
///
/// # Safety
/// As for `pr_ota_install`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_ota_install_any(
    model: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch: *const u8,
    patch_len: usize,
    out_counter: *mut u32,
) -> pr_status {
    // SAFETY: contract above, passed on.
    unsafe { install_checked::<AnyKind>(model, storage, public_key, patch, patch_len, out_counter) }
}

/// The body of `pr_ota_install` and `pr_ota_install_any`, accepting the kinds `K`.
///
/// # Safety
/// As for `pr_ota_install`.
unsafe fn install_checked<K: Kinds>(
    model: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch: *const u8,
    patch_len: usize,
    out_counter: *mut u32,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract above, passed on.
        let model = match unsafe { read_model(model) } {
            Ok(m) => m,
            Err(s) => return s,
        };
        // SAFETY: contract above, passed on.
        let storage = match unsafe { storage_ref(storage) } {
            Ok(s) => s,
            Err(s) => return s,
        };
        if patch.is_null() {
            return PR_NULL_POINTER;
        }
        if patch_len > isize::MAX as usize {
            return PR_OVERFLOW;
        }
        if !out_counter.is_null() && !out_counter.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: non-null, readable for `patch_len` (<= isize::MAX) bytes (contract).
        let bytes = unsafe { core::slice::from_raw_parts(patch, patch_len) };
        // SAFETY: contract above.
        let key = unsafe { key_ref(public_key) };
        match ota::install_as::<K, _>(&mut CStorage(storage), &model, key, bytes) {
            Ok(record) => {
                if !out_counter.is_null() {
                    // SAFETY: non-null, aligned (checked), writable (contract).
                    unsafe { out_counter.write(record.counter) };
                }
                PR_OK
            }
            Err(e) => e.into(),
        }
    })
}

/// The argument checks and the boot shared by `pr_ota_boot` and `pr_ota_boot_any`;
/// `out` is the output storage (`out_len` bytes) that no buffer may overlap.
///
/// # Safety
/// As for `pr_ota_boot`, with `out` writable for `out_len` bytes.
#[allow(clippy::too_many_arguments)] // the C arguments, passed on
unsafe fn boot_checked<K: Kinds>(
    base: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch_buf: *mut u8,
    patch_buf_len: usize,
    ram: *mut u8,
    ram_len: usize,
    out: (usize, usize),
    out_info: *mut pr_boot_info,
) -> Result<(Booted<'static>, pr_boot_info), pr_status> {
    // SAFETY: contract, passed on.
    let base = unsafe { read_model(base) }?;
    // SAFETY: contract, passed on.
    let storage = unsafe { storage_ref(storage) }?;
    if patch_buf.is_null() || ram.is_null() || out.0 == 0 || out_info.is_null() {
        return Err(PR_NULL_POINTER);
    }
    if !out_info.is_aligned() {
        return Err(PR_MISALIGNED_POINTER);
    }
    if patch_buf_len > isize::MAX as usize || ram_len > isize::MAX as usize {
        return Err(PR_OVERFLOW);
    }
    if !ram.cast::<f32>().is_aligned() {
        return Err(PR_MISALIGNED_PATCH_RAM);
    }
    let ram_floats = ram_len / 4;
    let blob = base.as_bytes();
    let ram_span = span(ram.cast_const(), ram_floats * 4);
    let buf_span = span(patch_buf.cast_const(), patch_buf_len);
    let blob_span = span(blob.as_ptr(), blob.len());
    if overlaps(ram_span, buf_span)
        || overlaps(ram_span, blob_span)
        || overlaps(buf_span, blob_span)
        || overlaps(ram_span, out)
        || overlaps(buf_span, out)
    {
        return Err(PR_OVERLAPPING_BUFFERS);
    }
    // SAFETY: non-null, writable for the lengths (<= isize::MAX; contract), `ram`
    // aligned for f32 (checked), pairwise disjoint and disjoint from the blob and the
    // output (checked), so the `&mut` slices alias nothing; the caller keeps them valid
    // while the booted model is used (the erased 'static).
    let (buf, ram): (&'static mut [u8], &'static mut [f32]) = unsafe {
        (
            core::slice::from_raw_parts_mut(patch_buf, patch_buf_len),
            core::slice::from_raw_parts_mut(ram.cast::<f32>(), ram_floats),
        )
    };
    // SAFETY: contract above.
    let key = unsafe { key_ref(public_key) };
    let booted = ota::boot_as::<K, _>(&mut CStorage(storage), &base, key, buf, ram);
    let source = match booted.source {
        BootSource::Base => pr_boot_source::PR_BOOT_BASE,
        BootSource::Slot(Slot::A) => pr_boot_source::PR_BOOT_SLOT_A,
        BootSource::Slot(Slot::B) => pr_boot_source::PR_BOOT_SLOT_B,
        BootSource::FallbackSlot(Slot::A) => pr_boot_source::PR_BOOT_FALLBACK_SLOT_A,
        BootSource::FallbackSlot(Slot::B) => pr_boot_source::PR_BOOT_FALLBACK_SLOT_B,
        BootSource::FallbackBase => pr_boot_source::PR_BOOT_FALLBACK_BASE,
    };
    let info = pr_boot_info {
        source,
        sequence: booted.model.patch_sequence(),
        counter: booted.counter,
        patch_len: booted.patch.map_or(0, |p| p.as_bytes().len()),
        kind: booted.patch.map_or(0, |p| match p.kind() {
            PatchKind::WeightDelta => 1,
            PatchKind::Modules => 2,
        }),
    };
    Ok((booted, info))
}

/// Boot a device that runs weight-delta patches: pick the committed patch and verify
/// it again, else the previous commit, else the base model; fill `*out_model` with the
/// model to run.
///
/// A slot runs only if its patch passes every check again (CRC, structure, signature
/// under `public_key`, binding to the base blob, the commit record's length and CRC,
/// and fits `patch_buf` and `ram`). This function does not fail on storage contents:
/// with `PR_OK` the device always has a verified model (the base one at worst); only
/// bad arguments give an error. A committed patch-modules patch (installed with
/// `pr_ota_install_any`) is not a weight-delta patch: it fails the checks here and the
/// boot falls back past it (`PR_BOOT_FALLBACK_*`); such a device boots with
/// `pr_ota_boot_any`.
///
/// - `base`: borrowed, a loaded `pr_model` (its base blob is used).
/// - `storage`, `public_key`: as for `pr_ota_install`.
/// - `patch_buf`: `patch_buf_len` caller bytes that receive the running patch; the
///   guard (`pr_guard_init`) reads its verified regions from there, so keep it valid
///   and unmodified while the guard is used.
/// - `ram`: `ram_len` bytes, 4-byte aligned, for the patched layers (at least the
///   patch's `pr_patch_ram_bytes`); must stay valid and unmodified while `*out_model`
///   (or a copy) is used. Must not overlap `patch_buf`, the blob or `*out_model`.
/// - `out_model`, `out_info`: written on `PR_OK` only. `out_model` may be `base`.
///
/// # Safety
/// `base` is NULL or an initialised `pr_model` whose blob is still valid; `storage` is
/// NULL or a valid `pr_storage`; `public_key` NULL or 32 readable bytes; `patch_buf`
/// NULL or writable for `patch_buf_len` bytes and `ram` NULL or writable for `ram_len`
/// bytes, both outliving the booted model; `out_model` and `out_info` NULL or writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: buffers come as (pointer, length) pairs
pub unsafe extern "C" fn pr_ota_boot(
    base: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch_buf: *mut u8,
    patch_buf_len: usize,
    ram: *mut u8,
    ram_len: usize,
    out_model: *mut pr_model,
    out_info: *mut pr_boot_info,
) -> pr_status {
    guard(PR_PANIC, || {
        if !out_model.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on; `out_model` is writable for one pr_model.
        let booted = unsafe {
            boot_checked::<WeightDeltaOnly>(
                base,
                storage,
                public_key,
                patch_buf,
                patch_buf_len,
                ram,
                ram_len,
                span(out_model.cast_const(), 1),
                out_info,
            )
        };
        let (booted, info) = match booted {
            Ok(b) => b,
            Err(s) => return s,
        };
        // Always a Model: `WeightDeltaOnly` boots nothing else.
        let Some(model) = booted.model.as_model() else {
            return PR_UNKNOWN_PATCH_KIND;
        };
        // SAFETY: both non-null, aligned (checked) and writable (contract).
        unsafe {
            write_model(out_model, *model);
            out_info.write(info);
        }
        PR_OK
    })
}

/// Boot a device that runs patches of either kind into `*out`: as `pr_ota_boot`
/// (the same checks, never fails on storage contents: with `PR_OK` a verified model
/// runs, the base one at worst), for weight-delta (kind 1) and patch-modules (kind 2)
/// patches alike. Everything that could go wrong with the patch is checked here, and
/// the patched parameters or the module weights are copied into `ram` here, so that
/// `pr_booted_evaluate` fails only on wrong arguments.
///
/// - `base`, `storage`, `public_key`: as for `pr_ota_boot`.
/// - `patch_buf`: `patch_buf_len` caller bytes (at least the slot's patch) that receive
///   the running patch. A kind-2 patch's module records are read from there at every
///   evaluation: keep it valid and unmodified while `*out` (or a copy) is used.
/// - `ram`: `ram_len` bytes, 4-byte aligned, at least the running patch's
///   `pr_ota_ram_bytes` (size it for the largest patch the device accepts; a patch that
///   does not fit is not booted); valid and unmodified while `*out` is used.
/// - `out`, `out_info`: written on `PR_OK` only. None of `patch_buf`, `ram`, the blob
///   and `*out` may overlap.
///
/// Evaluate with `pr_booted_evaluate` (arena: `pr_booted_arena_bytes`); guard with
/// `pr_guard_init_booted`.
///
/// # Safety
/// As for `pr_ota_boot`, with `out` NULL or writable `pr_booted` storage.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: buffers come as (pointer, length) pairs
pub unsafe extern "C" fn pr_ota_boot_any(
    base: *const pr_model,
    storage: *const pr_storage,
    public_key: *const u8,
    patch_buf: *mut u8,
    patch_buf_len: usize,
    ram: *mut u8,
    ram_len: usize,
    out: *mut pr_booted,
    out_info: *mut pr_boot_info,
) -> pr_status {
    guard(PR_PANIC, || {
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on; `out` is writable for one pr_booted.
        let booted = unsafe {
            boot_checked::<AnyKind>(
                base,
                storage,
                public_key,
                patch_buf,
                patch_buf_len,
                ram,
                ram_len,
                span(out.cast_const(), 1),
                out_info,
            )
        };
        let (booted, info) = match booted {
            Ok(b) => b,
            Err(s) => return s,
        };
        let words = out.cast::<u64>();
        // SAFETY: `out` and `out_info` non-null, aligned (checked) and writable
        // (contract); the Running fits at word 1 (const assertions). Tag written last.
        unsafe {
            words.add(1).cast::<Running<'static>>().write(booted.model);
            words.write(BOOTED_TAG);
            out_info.write(info);
        }
        PR_OK
    })
}

/// `*out` = the RAM bytes a patch of either kind needs to run (`pr_ota_boot_any`'s
/// `ram`): the patched layers of a weight-delta patch, the boxes and module weights of
/// a patch-modules patch. Validates the patch alone.
///
/// # Safety
/// `patch` is NULL or readable for `patch_len` bytes; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_ota_ram_bytes(
    patch: *const u8,
    patch_len: usize,
    out: *mut usize,
) -> pr_status {
    // SAFETY: contract, passed on.
    unsafe {
        write_ram_bytes(patch, patch_len, out, |b| {
            AnyPatch::from_bytes(b).map(|p| p.required_ram_bytes())
        })
    }
}

/// `*out` = the arena bytes `pr_booted_evaluate` needs.
///
/// # Safety
/// `b` is NULL or an initialised `pr_booted`; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_booted_arena_bytes(b: *const pr_booted, out: *mut usize) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract, passed on.
        match unsafe { read_booted(b) } {
            Ok(r) => {
                // SAFETY: non-null, aligned, writable (contract).
                unsafe { out.write(r.required_arena_bytes()) };
                PR_OK
            }
            Err(s) => s,
        }
    })
}

/// Evaluate the booted model on one input: the base model, the base with its
/// weight-delta patch, or base + indicators + modules (where no indicator fires, the
/// base model's output bit for bit).
///
/// Same buffer rules and errors as `pr_model_evaluate`, with `pr_booted_arena_bytes`
/// for the arena; the patch RAM given to `pr_ota_boot_any` counts as the model's. After
/// the argument checks evaluation cannot fail. No allocation; reentrant.
///
/// # Safety
/// `b` is NULL or a `pr_booted` filled by `pr_ota_boot_any` whose blob, patch buffer and
/// RAM are valid; `input` readable for `input_len` floats; `arena` writable for
/// `arena_len` bytes; `output` writable for `output_len` floats; no other thread writes
/// any of them during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_booted_evaluate(
    b: *const pr_booted,
    input: *const f32,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract, passed on.
        let running = match unsafe { read_booted(b) } {
            Ok(r) => r,
            Err(s) => return s,
        };
        // SAFETY: contract, passed on.
        let (input, arena, output) = match unsafe {
            eval_buffers(
                &running, input, input_len, arena, arena_len, output, output_len, None,
            )
        } {
            Ok(buffers) => buffers,
            Err(s) => return s,
        };
        match running.evaluate_bytes(input, arena, output) {
            Ok(()) => PR_OK,
            Err(e) => e.into(),
        }
    })
}
