//! Signed OTA patches through caller storage: install (A/B, power-fail safe) and boot.
//! The protocol is the core's (`prorepair_core::ota`); C supplies the storage as
//! callbacks in a `pr_storage`.

use core::ffi::{c_int, c_void};

use prorepair_core::Error;
use prorepair_core::ota::{self, Area, BootSource, Slot, Storage};
use prorepair_core::patch::PUBLIC_KEY_SIZE;

use crate::boundary::guard;
use crate::model::{overlaps, pr_model, read_model, span, write_model};
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

/// Install a patch over the air, power-fail safe.
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
        match ota::install(&mut CStorage(storage), &model, key, bytes) {
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

/// Boot: pick the committed patch and verify it again, else the previous commit, else
/// the base model; fill `*out_model` with the model to run.
///
/// A slot runs only if its patch passes every check again (CRC, structure, signature
/// under `public_key`, binding to the base blob, the commit record's length and CRC,
/// and fits `patch_buf` and `ram`). This function does not fail on storage contents:
/// with `PR_OK` the device always has a verified model (the base one at worst); only
/// bad arguments give an error.
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
        // SAFETY: contract above, passed on.
        let base = match unsafe { read_model(base) } {
            Ok(m) => m,
            Err(s) => return s,
        };
        // SAFETY: contract above, passed on.
        let storage = match unsafe { storage_ref(storage) } {
            Ok(s) => s,
            Err(s) => return s,
        };
        if patch_buf.is_null() || ram.is_null() || out_model.is_null() || out_info.is_null() {
            return PR_NULL_POINTER;
        }
        if !out_model.is_aligned() || !out_info.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        if patch_buf_len > isize::MAX as usize || ram_len > isize::MAX as usize {
            return PR_OVERFLOW;
        }
        if !ram.cast::<f32>().is_aligned() {
            return PR_MISALIGNED_PATCH_RAM;
        }
        let ram_floats = ram_len / 4;
        let blob = base.as_bytes();
        let ram_span = span(ram.cast_const(), ram_floats * 4);
        let buf_span = span(patch_buf.cast_const(), patch_buf_len);
        let model_span = span(out_model.cast_const(), 1);
        let blob_span = span(blob.as_ptr(), blob.len());
        if overlaps(ram_span, buf_span)
            || overlaps(ram_span, blob_span)
            || overlaps(buf_span, blob_span)
            || overlaps(ram_span, model_span)
            || overlaps(buf_span, model_span)
        {
            return PR_OVERLAPPING_BUFFERS;
        }
        // SAFETY: non-null, writable for the lengths (<= isize::MAX; contract), `ram`
        // aligned for f32 (checked), pairwise disjoint and disjoint from the blob and
        // the output model (checked), so the `&mut` slices alias nothing; the caller
        // keeps them valid while the booted model is used (the erased 'static).
        let (buf, ram): (&'static mut [u8], &'static mut [f32]) = unsafe {
            (
                core::slice::from_raw_parts_mut(patch_buf, patch_buf_len),
                core::slice::from_raw_parts_mut(ram.cast::<f32>(), ram_floats),
            )
        };
        // SAFETY: contract above.
        let key = unsafe { key_ref(public_key) };
        let booted = ota::boot(&mut CStorage(storage), &base, key, buf, ram);
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
        };
        // SAFETY: both non-null, aligned (checked) and writable (contract).
        unsafe {
            write_model(out_model, booted.model);
            out_info.write(info);
        }
        PR_OK
    })
}
