//! Patch modules (patch kind 2) through the C API: a loaded base model plus a
//! patch-modules patch, evaluated as base + indicators + modules.
//!
//! Unlike a weight-delta patch, the base model is not switched: `pr_modules_load` fills
//! a separate caller-allocated `pr_modules` that refers to the base `pr_model`'s blob,
//! the patch bytes and the caller RAM holding the module weights.

use core::mem::{align_of, size_of};

use prorepair_core::patch::modules::{ModulePatch, ModulesModel};

use crate::boundary::guard;
use crate::model::{overlaps, read_model, span, tagged_payload};
use crate::patch::{patch_bytes, write_ram_bytes};
use crate::pr_model;
use crate::status::pr_status::{self, *};

/// Size in bytes of `pr_modules` on every target.
pub const PR_MODULES_SIZE: usize = 512;

/// A base model with a patch-modules patch: opaque storage owned by the caller, filled
/// by `pr_modules_load`. No destructor, no heap. It refers to the base model's blob, the
/// patch bytes and the module RAM given to `pr_modules_load`: all three must stay valid
/// and unmodified for as long as it is used. A zeroed one reads as not loaded.
#[repr(C)]
#[derive(Debug)]
pub struct pr_modules {
    /// Opaque: a "loaded" tag, then the validated modules model. Do not touch.
    _opaque: [u64; 64],
}

impl pr_modules {
    /// Zeroed storage, not loaded (what a C static or `{0}` gives).
    pub const fn unloaded() -> Self {
        pr_modules { _opaque: [0; 64] }
    }
}

const LOADED_TAG: u64 = u64::from_le_bytes(*b"PRMODS01");

const _: () = {
    assert!(size_of::<pr_modules>() == PR_MODULES_SIZE);
    assert!(size_of::<u64>() + size_of::<ModulesModel<'static, 'static>>() <= PR_MODULES_SIZE);
    assert!(align_of::<ModulesModel<'static, 'static>>() <= 8);
};

/// # Safety
/// `m` is NULL or an initialised (zeroed or loaded) `pr_modules` whose referenced
/// buffers are still valid.
unsafe fn read_modules(m: *const pr_modules) -> Result<ModulesModel<'static, 'static>, pr_status> {
    // SAFETY: contract, passed on (a pr_modules is 64 u64 words, 8-aligned).
    let payload = unsafe { tagged_payload(m, LOADED_TAG) }?;
    // SAFETY: the tag is written only by `pr_modules_load` after a valid ModulesModel at
    // word 1 (fits and is aligned: const assertions); it is Copy, read by value.
    Ok(unsafe { payload.cast::<ModulesModel<'static, 'static>>().read() })
}

/// `*out` = the RAM bytes `pr_modules_load` needs for this patch-modules patch (module
/// weights repacked for the SIMD kernels, indicator boxes). Validates the patch alone.
///
/// Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER` (`out`), or the patch's
/// error (`PR_UNKNOWN_PATCH_KIND` for a weight-delta patch, `PR_BAD_PATCH_MODULE`, ...).
///
/// # Safety
/// `patch` is NULL or readable for `patch_len` bytes; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_modules_ram_bytes(
    patch: *const u8,
    patch_len: usize,
    out: *mut usize,
) -> pr_status {
    // SAFETY: contract, passed on.
    unsafe {
        write_ram_bytes(patch, patch_len, out, |b| {
            ModulePatch::from_bytes(b).map(|p| p.required_ram_bytes())
        })
    }
}

/// Bind a patch-modules patch to a loaded base model and fill `*out`.
///
/// Validates the patch completely, checks it was made for `model`'s base blob (SHA-256)
/// and that every module fits the model, then copies the module weights into `ram`.
///
/// - `model`: a loaded base `pr_model` (borrowed for the call; its blob must outlive
///   `*out`).
/// - `patch`: `patch_len` bytes, any alignment; BORROWED FOR THE LIFETIME OF `*out`
///   (the module records are read at every evaluation).
/// - `ram`: `ram_len` bytes, 4-byte aligned, at least `pr_modules_ram_bytes`; owned by
///   the caller, valid and unmodified while `*out` is used; must not overlap the blob,
///   the patch or `*out`.
/// - `out`: written only on `PR_OK`. On failure `ram` may have been written only when
///   the status is not a validation or binding error (it never is today).
///
/// Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER`, `PR_MODEL_NOT_LOADED`,
/// `PR_OVERLAPPING_BUFFERS`, `PR_PATCH_RAM_TOO_SMALL`, `PR_MISALIGNED_PATCH_RAM`,
/// `PR_WRONG_BASE_MODEL`, `PR_PATCH_MODULE_MISMATCH` or the patch's error.
///
/// # Safety
/// `model` is NULL or an initialised `pr_model` with a valid blob; `patch` is NULL or
/// readable for `patch_len` bytes; `ram` is NULL or writable for `ram_len` bytes; `out`
/// is NULL or writable `pr_modules` storage; the lifetimes above hold.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_modules_load(
    model: *const pr_model,
    patch: *const u8,
    patch_len: usize,
    ram: *mut u8,
    ram_len: usize,
    out: *mut pr_modules,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract, passed on.
        let base = match unsafe { read_model(model) } {
            Ok(m) => m.base(),
            Err(s) => return s,
        };
        // SAFETY: contract, passed on; the caller keeps the patch valid while `*out` is
        // used (the erased 'static).
        let b: &'static [u8] = match unsafe { patch_bytes(patch, patch_len) } {
            Ok(b) => b,
            Err(s) => return s,
        };
        if ram.is_null() || out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        if ram_len > isize::MAX as usize {
            return PR_OVERFLOW;
        }
        let parsed = match ModulePatch::from_bytes(b) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let needed = parsed.required_ram_bytes();
        if ram_len < needed {
            return PR_PATCH_RAM_TOO_SMALL;
        }
        let blob = base.as_bytes();
        let ram_span = span(ram.cast_const(), needed);
        if overlaps(ram_span, span(blob.as_ptr(), blob.len()))
            || overlaps(ram_span, span(patch, patch_len))
            || overlaps(
                ram_span,
                span(out.cast_const().cast::<u8>(), PR_MODULES_SIZE),
            )
        {
            return PR_OVERLAPPING_BUFFERS;
        }
        if !ram.cast::<f32>().is_aligned() {
            return PR_MISALIGNED_PATCH_RAM;
        }
        if let Err(e) = parsed.check_binding(&base) {
            return e.into();
        }
        // SAFETY: non-null, f32-aligned, writable for `needed` <= ram_len bytes, disjoint
        // from blob, patch and `*out` (checked); valid while `*out` is used (contract).
        let ram: &'static mut [f32] =
            unsafe { core::slice::from_raw_parts_mut(ram.cast::<f32>(), needed / 4) };
        match ModulesModel::new(&base, &parsed, ram) {
            Ok(mm) => {
                let words = out.cast::<u64>();
                // SAFETY: `out` is non-null, aligned, writable for PR_MODULES_SIZE bytes;
                // the model fits at word 1 (const assertions). Tag written last.
                unsafe {
                    words
                        .add(1)
                        .cast::<ModulesModel<'static, 'static>>()
                        .write(mm);
                    words.write(LOADED_TAG);
                }
                PR_OK
            }
            Err(e) => e.into(),
        }
    })
}

/// `*out` = the arena bytes `pr_modules_evaluate` needs (the base model's arena, a copy
/// of its output and two buffers of the widest module layer).
///
/// # Safety
/// `m` is NULL or an initialised `pr_modules`; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_modules_arena_bytes(
    m: *const pr_modules,
    out: *mut usize,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract, passed on.
        match unsafe { read_modules(m) } {
            Ok(mm) => {
                // SAFETY: non-null, aligned, writable.
                unsafe { out.write(mm.required_arena_bytes()) };
                PR_OK
            }
            Err(s) => s,
        }
    })
}

/// Evaluate base + indicators + modules on one input: `output = N(x) + sum of the
/// modules whose indicator fires`; where none fires, exactly the base model's output.
///
/// Same buffer rules as `pr_model_evaluate`, with `pr_modules_arena_bytes` for the
/// arena. Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MODEL_NOT_LOADED`,
/// `PR_MISALIGNED_POINTER`, `PR_INPUT_LENGTH`, `PR_OUTPUT_LENGTH`, `PR_ARENA_TOO_SMALL`,
/// `PR_MISALIGNED_ARENA` or `PR_OVERLAPPING_BUFFERS`. No allocation.
///
/// # Safety
/// `m` is NULL or an initialised `pr_modules` whose blob, patch and RAM are valid;
/// `input` readable for `input_len` floats; `arena` writable for `arena_len` bytes;
/// `output` writable for `output_len` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_modules_evaluate(
    m: *const pr_modules,
    input: *const f32,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract, passed on.
        let mm = match unsafe { read_modules(m) } {
            Ok(mm) => mm,
            Err(s) => return s,
        };
        let model = mm.base();
        let needed = mm.required_arena_bytes();
        if input.is_null() || output.is_null() || arena.is_null() {
            return PR_NULL_POINTER;
        }
        if !input.is_aligned() || !output.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        if input_len != model.input_len() {
            return PR_INPUT_LENGTH;
        }
        if output_len != model.output_len() {
            return PR_OUTPUT_LENGTH;
        }
        if arena_len < needed {
            return PR_ARENA_TOO_SMALL;
        }
        if !arena.cast::<f32>().is_aligned() {
            return PR_MISALIGNED_ARENA;
        }
        let blob = model.as_bytes();
        let (i, a, o, b) = (
            span(input, input_len),
            span(arena.cast_const(), needed),
            span(output.cast_const(), output_len),
            span(blob.as_ptr(), blob.len()),
        );
        if overlaps(i, a) || overlaps(i, o) || overlaps(a, o) || overlaps(a, b) || overlaps(o, b) {
            return PR_OVERLAPPING_BUFFERS;
        }
        // SAFETY: non-null, aligned, valid for the lengths (contract; fixed by the
        // validated model), pairwise disjoint (checked).
        let (input, arena, output) = unsafe {
            (
                core::slice::from_raw_parts(input, input_len),
                core::slice::from_raw_parts_mut(arena.cast::<f32>(), needed / 4),
                core::slice::from_raw_parts_mut(output, output_len),
            )
        };
        match mm.evaluate(input, arena, output) {
            Ok(()) => PR_OK,
            Err(e) => e.into(),
        }
    })
}
