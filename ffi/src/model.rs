//! `pr_model`: a validated model blob in caller-allocated storage, and its evaluation.

use core::mem::{align_of, size_of};

use prorepair_core::Model;
use prorepair_core::ota::Running;

use crate::boundary::guard;
use crate::status::pr_status::{self, *};

/// Size in bytes of `pr_model` on every target (C: `sizeof(pr_model)`).
pub const PR_MODEL_SIZE: usize = 256;

/// Alignment in bytes of `pr_model` on every target (C: `_Alignof(pr_model)`).
pub const PR_MODEL_ALIGN: usize = 8;

/// A loaded model: opaque storage owned by the caller, filled by `pr_model_load`.
///
/// Put it anywhere (stack, `.bss`, a struct member); it needs no destructor and holds
/// no heap memory. It refers to the blob it was loaded from, which must stay valid and
/// unmodified for as long as the model is used. Copying the struct (`memcpy`, `=`)
/// gives an equivalent model. A zero-initialised `pr_model` (e.g. a static, or
/// `pr_model m = {0};`) is reported as `PR_MODEL_NOT_LOADED`; an uninitialised one
/// must not be passed to any function but `pr_model_load`.
#[repr(C)]
#[derive(Debug)]
pub struct pr_model {
    /// Opaque: a "loaded" tag, then the validated model (with its patch table, if a
    /// patch is applied). Do not read or write.
    _opaque: [u64; 32],
}

impl pr_model {
    /// Zeroed storage, not yet loaded (what a C static or `{0}` gives).
    pub const fn unloaded() -> Self {
        pr_model { _opaque: [0; 32] }
    }
}

/// Word 0 of a loaded `pr_model` ("PRMODEL1").
const LOADED_TAG: u64 = u64::from_le_bytes(*b"PRMODEL1");

// The storage must hold the tag word plus the core's `Model` at word 1, on every target.
const _: () = {
    assert!(size_of::<pr_model>() == PR_MODEL_SIZE);
    assert!(align_of::<pr_model>() == PR_MODEL_ALIGN);
    assert!(size_of::<u64>() + size_of::<Model<'static>>() <= PR_MODEL_SIZE);
    assert!(align_of::<Model<'static>>() <= PR_MODEL_ALIGN);
};

/// The `Model` stored in `model`, copied out, or the status saying why there is none.
///
/// # Safety
/// `model` is NULL or points to a readable `pr_model` that is initialised (zeroed or
/// loaded); the blob of a loaded model is still valid.
pub(crate) unsafe fn read_model(model: *const pr_model) -> Result<Model<'static>, pr_status> {
    // SAFETY: contract above, passed on (a pr_model is u64 words, 8-aligned).
    let payload = unsafe { tagged_payload(model, LOADED_TAG) }?;
    // SAFETY: the tag is written only by `pr_model_load`, after it wrote a valid
    // `Model` at word 1 (in bounds and aligned: checked by the const assertions).
    // `Model` is `Copy`, so reading it by value leaves the storage as it was and keeps
    // no borrow of it (the caller may pass the same memory as an output buffer).
    Ok(unsafe { payload.cast::<Model<'static>>().read() })
}

/// Word 1 of tagged caller storage (`pr_model`, `pr_modules`, `pr_guard`: an opaque
/// array of u64 words whose word 0 says it holds a valid value at word 1), or
/// `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER`, or `PR_MODEL_NOT_LOADED` when word 0 is
/// not `tag`.
///
/// # Safety
/// `storage` is NULL or points to readable, initialised storage of at least two u64
/// words, aligned for `S` at least as strictly as for u64.
pub(crate) unsafe fn tagged_payload<S>(
    storage: *const S,
    tag: u64,
) -> Result<*const u64, pr_status> {
    if storage.is_null() {
        return Err(PR_NULL_POINTER);
    }
    if !storage.is_aligned() {
        return Err(PR_MISALIGNED_POINTER);
    }
    let words = storage.cast::<u64>();
    // SAFETY: non-null, aligned for u64, initialised storage of u64 words (contract).
    if unsafe { words.read() } != tag {
        return Err(PR_MODEL_NOT_LOADED);
    }
    // SAFETY: word 1 is within the storage (contract: at least two words).
    Ok(unsafe { words.add(1) })
}

/// Validate a model blob in place and fill `*out` with the loaded model.
///
/// - `blob`: `blob_len` bytes of a model blob (as written by `prorepair-host compile`),
///   starting at a 4-byte aligned address (16 recommended: `c_array` emits
///   `aligned(16)`). Borrowed, not copied: the blob must stay valid and unmodified for
///   as long as `*out` (or any copy of it) is used, e.g. a `static const` array in flash.
/// - `out`: caller-owned storage; written only on `PR_OK`, untouched on failure.
///
/// Checks everything once (length, magic, version, CRC, every layer's parameters and
/// shapes), so that evaluation cannot fail on the blob later. Returns `PR_OK`,
/// `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER` (`out`), or one blob error (10..=39).
///
/// # Safety
/// `blob` is NULL or readable for `blob_len` bytes and outlives every use of the
/// model; `out` is NULL or points to writable `pr_model` storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_load(
    blob: *const u8,
    blob_len: usize,
    out: *mut pr_model,
) -> pr_status {
    guard(PR_PANIC, || {
        if blob.is_null() || out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // `from_raw_parts` requires the length to fit in isize; no real buffer is longer.
        if blob_len > isize::MAX as usize {
            return PR_OVERFLOW;
        }
        // SAFETY: `blob` is non-null and readable for `blob_len` bytes (<= isize::MAX),
        // and the caller keeps it valid and unmodified while the model is used, which is
        // what the erased `'static` lifetime stands for.
        let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(blob, blob_len) };
        let model = match Model::from_bytes(bytes) {
            Ok(model) => model,
            Err(error) => return error.into(),
        };
        // SAFETY: `out` is non-null, aligned and writable (checked above, contract).
        unsafe { write_model(out, model) };
        PR_OK
    })
}

/// Store `model` in `out` and tag it loaded.
///
/// # Safety
/// `out` is non-null, aligned and writable for `PR_MODEL_SIZE` bytes.
pub(crate) unsafe fn write_model(out: *mut pr_model, model: Model<'static>) {
    let words = out.cast::<u64>();
    // SAFETY: `out` is non-null, aligned and writable for PR_MODEL_SIZE bytes (caller's
    // contract); the Model fits at word 1 with its alignment (const assertions above).
    // The tag is written last, so fresh storage reads as loaded only once it holds a
    // model (an already loaded one is replaced by one plain write of the Model).
    unsafe {
        words.add(1).cast::<Model<'static>>().write(model);
        words.write(LOADED_TAG);
    }
}

/// Shared body of the size getters: `*out = value(model)` on success.
///
/// # Safety
/// As for the getters: `model` NULL or an initialised `pr_model`, `out` NULL or writable.
unsafe fn get_size(
    model: *const pr_model,
    out: *mut usize,
    value: impl FnOnce(&Model<'static>) -> usize,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract of the public getters, passed on.
        let model = match unsafe { read_model(model) } {
            Ok(model) => model,
            Err(status) => return status,
        };
        // SAFETY: `out` is non-null, aligned and writable (caller's contract).
        unsafe { out.write(value(&model)) };
        PR_OK
    })
}

/// `*out` = the number of `float` inputs the model takes (its input shape flattened
/// row-major, without batch dimension).
///
/// `model`: borrowed, a `pr_model` filled by `pr_model_load` (or zeroed). `out`: written
/// only on `PR_OK`.
///
/// # Safety
/// `model` is NULL or points to an initialised `pr_model` whose blob is still valid;
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_input_len(model: *const pr_model, out: *mut usize) -> pr_status {
    // SAFETY: same contract.
    unsafe { get_size(model, out, Model::input_len) }
}

/// `*out` = the number of `float` outputs the model produces.
///
/// `model`: borrowed, a `pr_model` filled by `pr_model_load` (or zeroed). `out`: written
/// only on `PR_OK`.
///
/// # Safety
/// As for `pr_model_input_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_output_len(model: *const pr_model, out: *mut usize) -> pr_status {
    // SAFETY: same contract.
    unsafe { get_size(model, out, Model::output_len) }
}

/// `*out` = the exact number of scratch bytes `pr_model_evaluate` needs in its arena
/// (may be 0 for a one-layer model). Size a static buffer with it at start-up.
///
/// `model`: borrowed, a `pr_model` filled by `pr_model_load` (or zeroed). `out`: written
/// only on `PR_OK`.
///
/// # Safety
/// As for `pr_model_input_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_arena_bytes(
    model: *const pr_model,
    out: *mut usize,
) -> pr_status {
    // SAFETY: same contract.
    unsafe { get_size(model, out, Model::required_arena_bytes) }
}

/// `*out` = the number of parameters (weights and biases) of the model.
///
/// `model`: borrowed, a `pr_model` filled by `pr_model_load` (or zeroed). `out`: written
/// only on `PR_OK`.
///
/// # Safety
/// As for `pr_model_input_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_parameter_count(
    model: *const pr_model,
    out: *mut usize,
) -> pr_status {
    // SAFETY: same contract.
    unsafe { get_size(model, out, Model::parameter_count) }
}

/// Byte range `[start, start + len)` of a buffer, for overlap checks.
pub(crate) fn span<T>(ptr: *const T, count: usize) -> (usize, usize) {
    let start = ptr as usize;
    (
        start,
        start.saturating_add(count.saturating_mul(size_of::<T>())),
    )
}

/// True when two non-empty byte ranges share a byte.
pub(crate) fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

/// The input, arena and output of one evaluation, as slices.
pub(crate) type EvalBuffers<'b> = (&'b [f32], &'b mut [u8], &'b mut [f32]);

/// The argument checks shared by `pr_model_evaluate`, `pr_booted_evaluate` and
/// `pr_guard_run` (any running model, so both patch kinds): non-null,
/// aligned, lengths as the validated `model` fixes them, an arena large enough and
/// f32-aligned, and no buffer that would alias a `&mut` (input, blob and patch RAM may
/// share memory: they are only read; `other`, when given, is caller storage that the
/// arena and output must not overlap). Returns the three buffers as slices.
///
/// # Safety
/// `input` is NULL or readable for `input_len` floats; `arena` is NULL or writable for
/// `arena_len` bytes; `output` is NULL or writable for `output_len` floats; no other
/// thread writes any of them while the slices are used.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn eval_buffers<'b>(
    model: &Running<'_>,
    input: *const f32,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
    other: Option<(usize, usize)>,
) -> Result<EvalBuffers<'b>, pr_status> {
    let arena_needed = model.required_arena_bytes();
    if input.is_null() || output.is_null() || (arena.is_null() && arena_needed > 0) {
        return Err(PR_NULL_POINTER);
    }
    if !input.is_aligned() || !output.is_aligned() {
        return Err(PR_MISALIGNED_POINTER);
    }
    // Lengths first: every slice below then has a length the validated model fixed.
    if input_len != model.input_len() {
        return Err(PR_INPUT_LENGTH);
    }
    if output_len != model.output_len() {
        return Err(PR_OUTPUT_LENGTH);
    }
    if arena_len < arena_needed {
        return Err(PR_ARENA_TOO_SMALL);
    }
    if arena_needed > 0 && !arena.cast::<f32>().is_aligned() {
        return Err(PR_MISALIGNED_ARENA);
    }
    let blob = model.base().as_bytes();
    let input_span = span(input, input_len);
    let arena_span = span(arena.cast_const(), arena_needed);
    let output_span = span(output.cast_const(), output_len);
    let blob_span = span(blob.as_ptr(), blob.len());
    let ram = model.patch_ram();
    let ram_span = span(ram.as_ptr(), ram.len());
    // The running patch's bytes are read during evaluation (module records) and by the
    // guard (regions): read-only too.
    let patch = model.patch().map_or(&[][..], |p| p.as_bytes());
    let patch_span = span(patch.as_ptr(), patch.len());
    let other_span = other.unwrap_or((0, 0));
    // Pairs that would alias a `&mut` (input, blob and patch RAM may share memory:
    // they are only read).
    if overlaps(input_span, arena_span)
        || overlaps(input_span, output_span)
        || overlaps(arena_span, output_span)
        || overlaps(arena_span, blob_span)
        || overlaps(output_span, blob_span)
        || overlaps(arena_span, ram_span)
        || overlaps(output_span, ram_span)
        || overlaps(arena_span, patch_span)
        || overlaps(output_span, patch_span)
        || overlaps(arena_span, other_span)
        || overlaps(output_span, other_span)
    {
        return Err(PR_OVERLAPPING_BUFFERS);
    }
    // An empty arena still needs a non-null pointer, 4-byte aligned because the core
    // views the arena as f32: a dangling f32 pointer.
    let empty_arena = core::ptr::NonNull::<f32>::dangling().as_ptr().cast::<u8>();
    // SAFETY: non-null, aligned for f32 (all three; the dangling pointer too),
    // readable/writable for the given lengths (caller's contract; lengths fixed by the
    // validated model, so within isize), and pairwise disjoint and disjoint from the
    // blob, RAM and `other` (checked above), so the `&mut` slices alias nothing.
    Ok(unsafe {
        (
            core::slice::from_raw_parts(input, input_len),
            core::slice::from_raw_parts_mut(
                if arena_needed == 0 {
                    empty_arena
                } else {
                    arena
                },
                arena_needed,
            ),
            core::slice::from_raw_parts_mut(output, output_len),
        )
    })
}

/// Evaluate the model on one input: `output = model(input)`.
///
/// - `model`: borrowed, filled by `pr_model_load`; its blob must still be valid.
/// - `input`: `input_len` floats, borrowed for the call; `input_len` must equal
///   `pr_model_input_len`.
/// - `arena`: caller scratch memory of `arena_len` bytes, 4-byte aligned, at least
///   `pr_model_arena_bytes` long (only that many bytes are used); clobbered, borrowed
///   for the call only. May be NULL only when the model needs 0 arena bytes.
/// - `output`: `output_len` floats, `output_len` equal to `pr_model_output_len`;
///   written only on `PR_OK`, untouched on failure.
///
/// None of `input`, the used part of `arena`, `output`, the model blob and the patch RAM
/// (of a patched model) may overlap
/// (`PR_OVERLAPPING_BUFFERS`). Returns `PR_OK`, `PR_NULL_POINTER`,
/// `PR_MODEL_NOT_LOADED`, `PR_MISALIGNED_POINTER` (`input`, `output`),
/// `PR_INPUT_LENGTH`, `PR_OUTPUT_LENGTH`, `PR_ARENA_TOO_SMALL`, `PR_MISALIGNED_ARENA` or
/// `PR_OVERLAPPING_BUFFERS`. After the argument checks evaluation cannot fail.
/// No allocation; reentrant (the model is only read).
///
/// # Safety
/// `model` is NULL or an initialised `pr_model` whose blob is still valid; `input` is
/// NULL or readable for `input_len` floats; `arena` is NULL or writable for `arena_len`
/// bytes; `output` is NULL or writable for `output_len` floats; no other thread writes
/// any of them during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_model_evaluate(
    model: *const pr_model,
    input: *const f32,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract above, passed on.
        let model = match unsafe { read_model(model) } {
            Ok(model) => model,
            Err(status) => return status,
        };
        // SAFETY: contract above, passed on; nothing else is borrowed from the caller.
        let (input, arena, output) = match unsafe {
            eval_buffers(
                &Running::Plain(model),
                input,
                input_len,
                arena,
                arena_len,
                output,
                output_len,
                None,
            )
        } {
            Ok(buffers) => buffers,
            Err(status) => return status,
        };
        match model.evaluate_bytes(input, arena, output) {
            Ok(()) => PR_OK,
            Err(error) => error.into(),
        }
    })
}
