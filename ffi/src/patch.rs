//! Weight-delta patches on a loaded `pr_model`: size the RAM, apply, read the sequence.

use prorepair_core::Patch;

use crate::boundary::guard;
use crate::model::{overlaps, pr_model, read_model, span, write_model};
use crate::status::pr_status::{self, *};

/// The patch bytes as a slice, or the status saying why not.
///
/// # Safety
/// `patch` is NULL or readable for `patch_len` bytes for the lifetime `'p`.
pub(crate) unsafe fn patch_bytes<'p>(
    patch: *const u8,
    patch_len: usize,
) -> Result<&'p [u8], pr_status> {
    if patch.is_null() {
        return Err(PR_NULL_POINTER);
    }
    if patch_len > isize::MAX as usize {
        return Err(PR_OVERFLOW);
    }
    // SAFETY: non-null, readable for `patch_len` (<= isize::MAX) bytes (contract).
    Ok(unsafe { core::slice::from_raw_parts(patch, patch_len) })
}

/// `*out` = the exact number of RAM bytes `pr_model_apply_patch` needs for this patch
/// (the patched layers' parameters). Validates the patch on its own (header, CRC,
/// records, regions); the binding to a model is checked by `pr_model_apply_patch`.
///
/// - `patch`: `patch_len` bytes of a patch (as written by `prorepair-host repair
///   --out`), any alignment; borrowed for the call only.
/// - `out`: written only on `PR_OK`.
///
/// Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER` (`out`), or the patch's
/// error (10..=17, 26, 27, 50..=57).
///
/// # Safety
/// `patch` is NULL or readable for `patch_len` bytes; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_patch_ram_bytes(
    patch: *const u8,
    patch_len: usize,
    out: *mut usize,
) -> pr_status {
    // SAFETY: contract above, passed on.
    unsafe {
        write_ram_bytes(patch, patch_len, out, |b| {
            Patch::from_bytes(b).map(|p| p.required_ram_bytes())
        })
    }
}

/// The body shared by the `*_ram_bytes` entry points: check `out`, take the patch bytes,
/// and write `ram_bytes(patch)` to `*out` on success (the parser's error otherwise).
///
/// # Safety
/// `patch` is NULL or readable for `patch_len` bytes; `out` is NULL or writable.
pub(crate) unsafe fn write_ram_bytes(
    patch: *const u8,
    patch_len: usize,
    out: *mut usize,
    ram_bytes: impl FnOnce(&[u8]) -> Result<usize, prorepair_core::Error>,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on.
        let bytes = match unsafe { patch_bytes(patch, patch_len) } {
            Ok(bytes) => bytes,
            Err(status) => return status,
        };
        match ram_bytes(bytes) {
            Ok(n) => {
                // SAFETY: `out` is non-null, aligned and writable (checked, contract).
                unsafe { out.write(n) };
                PR_OK
            }
            Err(e) => e.into(),
        }
    })
}

/// Apply a weight-delta patch to a loaded model, in place.
///
/// Validates the patch completely (header, CRC, records, regions), checks that it was
/// made for this model's base blob (SHA-256), that its layers and shapes match, and
/// that its sequence number is above the one applied (`pr_model_patch_sequence`; 0
/// for a base model); only then copies the patched layers' parameters into `ram` and
/// switches `*model` to the patched model. The base blob stays where it is (flash).
///
/// - `model`: a loaded `pr_model`, updated only on `PR_OK`. On ANY error `*model` and
///   `ram` are untouched: the old model keeps running.
/// - `patch`: `patch_len` bytes, any alignment; borrowed for the call only (the
///   values are copied), so it may be freed or reused afterwards.
/// - `ram`: `ram_len` bytes, 4-byte aligned, at least `pr_patch_ram_bytes`; owned by
///   the caller, it must stay valid and unmodified for as long as the patched model
///   (or any copy of it) is used. It must not overlap the blob, the patch or `*model`.
///   To replace a running patch without a window, keep two RAM regions and alternate.
///
/// Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER` (`model`),
/// `PR_MODEL_NOT_LOADED`, `PR_OVERLAPPING_BUFFERS`, `PR_PATCH_RAM_TOO_SMALL`,
/// `PR_MISALIGNED_PATCH_RAM`, `PR_WRONG_BASE_MODEL`, `PR_STALE_PATCH`, or the patch's
/// error. Applying a patch to a patched model replaces its patch (patches always apply
/// to the base blob). No allocation.
///
/// # Safety
/// `model` is NULL or an initialised `pr_model` whose blob is still valid; `patch` is
/// NULL or readable for `patch_len` bytes; `ram` is NULL or writable for `ram_len` bytes
/// and outlives every use of the patched model; no other thread uses any of them during
/// the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_apply_patch(
    model: *mut pr_model,
    patch: *const u8,
    patch_len: usize,
    ram: *mut u8,
    ram_len: usize,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract above, passed on.
        let current = match unsafe { read_model(model) } {
            Ok(model) => model,
            Err(status) => return status,
        };
        // SAFETY: contract above, passed on.
        let bytes = match unsafe { patch_bytes(patch, patch_len) } {
            Ok(bytes) => bytes,
            Err(status) => return status,
        };
        if ram.is_null() {
            return PR_NULL_POINTER;
        }
        if ram_len > isize::MAX as usize {
            return PR_OVERFLOW;
        }
        let parsed = match Patch::from_bytes(bytes) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let needed = parsed.required_ram_bytes();
        if ram_len < needed {
            return PR_PATCH_RAM_TOO_SMALL;
        }
        let blob = current.as_bytes();
        let ram_span = span(ram.cast_const(), needed);
        if overlaps(ram_span, span(blob.as_ptr(), blob.len()))
            || overlaps(ram_span, span(patch, patch_len))
            || overlaps(ram_span, span(model.cast_const(), 1))
        {
            return PR_OVERLAPPING_BUFFERS;
        }
        if !ram.cast::<f32>().is_aligned() {
            return PR_MISALIGNED_PATCH_RAM;
        }
        // SAFETY: `ram` is non-null, aligned for f32, writable for `needed` <= ram_len
        // <= isize::MAX bytes (contract), and disjoint from the blob, the patch and the
        // model storage (checked above), so this `&mut` aliases nothing we read; the
        // caller keeps it valid while the patched model is used (the erased 'static).
        let ram: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(ram, needed) };
        // `with_patch_bytes` checks the binding, the sequence and the size before it
        // writes a byte, so a refusal leaves `ram` (which the running model may be
        // reading, if the caller reuses one region) intact.
        match current.with_patch_bytes(&parsed, ram) {
            Ok(patched) => {
                // SAFETY: `model` is non-null, aligned and writable (read_model checked
                // non-null and alignment; contract).
                unsafe { write_model(model, patched) };
                PR_OK
            }
            Err(e) => e.into(),
        }
    })
}

/// `*out` = the sequence number of the patch applied to `model` (0 for a base model).
///
/// `model`: borrowed, a `pr_model` filled by `pr_model_load` (or zeroed). `out`:
/// written only on `PR_OK`.
///
/// # Safety
/// `model` is NULL or an initialised `pr_model` whose blob is still valid; `out` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_patch_sequence(
    model: *const pr_model,
    out: *mut u32,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on.
        let model = match unsafe { read_model(model) } {
            Ok(model) => model,
            Err(status) => return status,
        };
        // SAFETY: `out` is non-null, aligned and writable (checked, contract).
        unsafe { out.write(model.patch_sequence()) };
        PR_OK
    })
}
