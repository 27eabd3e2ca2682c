//! The C API called from Rust: agreement with the core, every error path, and
//! out-parameters untouched on failure.

use std::ffi::{CStr, c_int};
use std::ptr;

use prorepair_core::Error;

use super::support::*;
use crate::pr_status::{self, *};
use crate::*;

/// Output buffers start with this value; on failure they must still hold it.
const UNTOUCHED: f32 = -12345.5;

/// A loaded model of `blob` (which must outlive it).
pub(super) fn loaded(blob: &Aligned) -> pr_model {
    let mut model = sentinel_model();
    // SAFETY: valid blob and storage.
    let status = unsafe { pr_model_load(blob.bytes().as_ptr(), blob.bytes().len(), &mut model) };
    assert_eq!(status, PR_OK);
    model
}

/// Arena storage of at least `bytes` bytes, 4-byte aligned.
fn arena_for(bytes: usize) -> Vec<f32> {
    vec![0.0; bytes.div_ceil(4) + 1]
}

/// `pr_model_evaluate` with fresh buffers: the status and the output buffer.
pub(super) fn evaluate(
    model: &pr_model,
    input: &[f32],
    arena_bytes: usize,
    output_len: usize,
) -> (pr_status, Vec<f32>) {
    let mut arena = arena_for(arena_bytes);
    let mut output = vec![UNTOUCHED; output_len];
    // SAFETY: every buffer is valid for the lengths passed.
    let status = unsafe {
        pr_model_evaluate(
            model,
            input.as_ptr(),
            input.len(),
            arena.as_mut_ptr().cast(),
            arena_bytes,
            output.as_mut_ptr(),
            output.len(),
        )
    };
    (status, output)
}

fn status_text(status: c_int) -> &'static str {
    // SAFETY: pr_status_str returns a static NUL-terminated string, never NULL.
    unsafe { CStr::from_ptr(pr_status_str(status)) }
        .to_str()
        .expect("ASCII")
}

/// Deterministic inputs in [-1, 1].
fn inputs(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + 1) * (seed + 3) * 7919 % 2001) as f32 - 1000.0) / 1000.0)
        .collect()
}

#[test]
fn load_and_evaluate_agree_with_the_core() {
    for blob in [conv_mlp_blob(), mlp_blob(), single_dense_blob()] {
        let blob = Aligned::new(&blob);
        let reference = core_model(&blob);
        let model = loaded(&blob);
        let (mut input_len, mut output_len, mut arena_bytes, mut parameters) = (0, 0, 0, 0);
        // SAFETY: loaded model, valid out-pointers.
        unsafe {
            assert_eq!(pr_model_input_len(&model, &mut input_len), PR_OK);
            assert_eq!(pr_model_output_len(&model, &mut output_len), PR_OK);
            assert_eq!(pr_model_arena_bytes(&model, &mut arena_bytes), PR_OK);
            assert_eq!(pr_model_parameter_count(&model, &mut parameters), PR_OK);
        }
        assert_eq!(input_len, reference.input_len());
        assert_eq!(output_len, reference.output_len());
        assert_eq!(arena_bytes, reference.required_arena_bytes());
        assert_eq!(parameters, reference.parameter_count());
        for seed in 0..20 {
            let x = inputs(input_len, seed);
            let mut arena = vec![0.0; reference.required_arena_len()];
            let mut expected = vec![0.0; output_len];
            reference.evaluate(&x, &mut arena, &mut expected).unwrap();
            let (status, got) = evaluate(&model, &x, arena_bytes, output_len);
            assert_eq!(status, PR_OK);
            // Same kernels, same order: bit-identical.
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "seed {seed}"
            );
            assert!(got.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn a_copied_model_and_a_larger_arena_work_too() {
    let blob = Aligned::new(&mlp_blob());
    let model = loaded(&blob);
    // SAFETY: pr_model is plain data; the copy refers to the same blob.
    let copy: pr_model = unsafe { ptr::read(&model) };
    let x = inputs(5, 1);
    let (s1, y1) = evaluate(&model, &x, 28 * 4, 5);
    let (s2, y2) = evaluate(&copy, &x, 4096, 5);
    assert_eq!((s1, s2), (PR_OK, PR_OK));
    assert_eq!(y1, y2);
}

#[test]
fn a_model_without_arena_accepts_a_null_arena() {
    let blob = Aligned::new(&single_dense_blob());
    let model = loaded(&blob);
    let mut need = usize::MAX;
    // SAFETY: valid pointers.
    assert_eq!(unsafe { pr_model_arena_bytes(&model, &mut need) }, PR_OK);
    assert_eq!(need, 0);
    let mut out = [UNTOUCHED; 2];
    // SAFETY: NULL arena with 0 bytes is allowed when the model needs none.
    let status = unsafe {
        pr_model_evaluate(
            &model,
            [1.0f32, 2.0, 3.0].as_ptr(),
            3,
            ptr::null_mut(),
            0,
            out.as_mut_ptr(),
            2,
        )
    };
    assert_eq!(status, PR_OK);
    assert_eq!(out, [1.0 + 4.0 + 9.0 + 0.5, -14.0 - 0.5]);
}

#[test]
fn statuses_have_distinct_values_and_descriptions() {
    let mut values: Vec<_> = pr_status::ALL.iter().map(|s| *s as c_int).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), pr_status::ALL.len());
    assert_eq!(PR_OK as c_int, 0);
    let mut texts: Vec<_> = pr_status::ALL
        .iter()
        .map(|s| status_text(*s as c_int))
        .collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), pr_status::ALL.len());
    for unknown in [-1, 6, 9, 31, 45, 98, 100, c_int::MAX, c_int::MIN] {
        assert_eq!(status_text(unknown), "unknown status code");
    }
    // SAFETY: static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(pr_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

/// Every variant of the core's error, by hand: `Error` is non_exhaustive, so a new
/// variant maps to PR_INTERNAL_ERROR until it is named here and in `pr_status`.
const CORE_ERRORS: [Error; 39] = [
    Error::Truncated,
    Error::BadMagic,
    Error::UnsupportedVersion,
    Error::BadHeaderSize,
    Error::LengthMismatch,
    Error::CrcMismatch,
    Error::MisalignedBuffer,
    Error::NonZeroReserved,
    Error::BadInputShape,
    Error::BadLayerCount,
    Error::UnknownLayerKind,
    Error::BadLayerParameters,
    Error::ShapeMismatch,
    Error::MisalignedOffset,
    Error::BadBlockOffset,
    Error::BlockOutOfRange,
    Error::NonFiniteParameter,
    Error::Overflow,
    Error::OutputSizeMismatch,
    Error::ArenaSizeMismatch,
    Error::ParameterCountMismatch,
    Error::InputLength,
    Error::OutputLength,
    Error::ArenaTooSmall,
    Error::MisalignedArena,
    Error::BufferTooSmall,
    Error::UnknownPatchKind,
    Error::UnsupportedSignature,
    Error::WrongBaseModel,
    Error::BadPatchLayerCount,
    Error::BadPatchPayload,
    Error::PatchLayerMismatch,
    Error::PatchShapeMismatch,
    Error::BadPatchRegion,
    Error::BadPatchModule,
    Error::PatchModuleMismatch,
    Error::StalePatch,
    Error::PatchRamTooSmall,
    Error::MisalignedPatchRam,
];

#[test]
fn every_core_error_has_its_own_status_with_the_core_text() {
    let mut seen = std::collections::HashSet::new();
    for error in CORE_ERRORS {
        let status = pr_status::from(error);
        assert_ne!(status, PR_OK);
        assert_ne!(status, PR_INTERNAL_ERROR, "{error:?} is not named");
        assert!(seen.insert(status), "{error:?} shares {status:?}");
        assert_eq!(status_text(status as c_int), error.as_str(), "{error:?}");
    }
}

#[test]
fn the_panic_boundary_turns_a_panic_into_pr_panic() {
    let status = crate::boundary::guard(PR_PANIC, || -> pr_status {
        panic!("deliberate test panic")
    });
    assert_eq!(status, PR_PANIC);
    assert_eq!(crate::boundary::guard(PR_PANIC, || PR_OK), PR_OK);
}

#[test]
fn load_rejects_null_pointers_and_leaves_the_model_untouched() {
    let blob = Aligned::new(&mlp_blob());
    let mut model = sentinel_model();
    // SAFETY: NULL pointers are part of the contract.
    unsafe {
        assert_eq!(pr_model_load(ptr::null(), 100, &mut model), PR_NULL_POINTER);
        assert_eq!(
            pr_model_load(blob.bytes().as_ptr(), blob.bytes().len(), ptr::null_mut()),
            PR_NULL_POINTER
        );
    }
    assert_eq!(model_bytes(&model), model_bytes(&sentinel_model()));
}

#[test]
fn load_rejects_a_misaligned_model_pointer() {
    let blob = Aligned::new(&mlp_blob());
    let mut storage = [0u64; 17];
    let misaligned = storage
        .as_mut_ptr()
        .cast::<u8>()
        .wrapping_add(4)
        .cast::<pr_model>();
    // SAFETY: the pointer is checked before any write.
    let status = unsafe { pr_model_load(blob.bytes().as_ptr(), blob.bytes().len(), misaligned) };
    assert_eq!(status, PR_MISALIGNED_POINTER);
    assert_eq!(storage, [0; 17]);
}

/// Every kind of bad blob gives its own status and leaves the model untouched.
#[test]
fn bad_blobs_give_their_own_status_and_leave_the_model_untouched() {
    let good = conv_mlp_blob();
    let untouched = model_bytes(&sentinel_model());
    let edited = |edit: &dyn Fn(&mut Vec<u8>), fix: bool| {
        let mut b = good.clone();
        edit(&mut b);
        if fix {
            fix_crc(&mut b);
        }
        b
    };
    let last_bias = {
        // Layer 5 (Dense 5->3), word 4: its bias block offset.
        let at = 64 + 64 * 5 + 16;
        u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize
    };
    let cases: Vec<(&str, Vec<u8>, pr_status)> = vec![
        (
            "truncated by one byte",
            good[..good.len() - 1].to_vec(),
            PR_TRUNCATED,
        ),
        (
            "truncated inside the header",
            good[..40].to_vec(),
            PR_TRUNCATED,
        ),
        ("empty", Vec::new(), PR_TRUNCATED),
        ("bad magic", edited(&|b| b[0] ^= 0x20, false), PR_BAD_MAGIC),
        (
            "wrong version",
            edited(&|b| b[4] = 2, true),
            PR_UNSUPPORTED_VERSION,
        ),
        (
            "bad header size",
            edited(&|b| b[6] = 48, true),
            PR_BAD_HEADER_SIZE,
        ),
        (
            "trailing bytes",
            edited(&|b| b.extend_from_slice(&[0; 16]), false),
            PR_LENGTH_MISMATCH,
        ),
        (
            "a flipped weight bit",
            edited(&|b| b[last_bias - 20] ^= 1, false),
            PR_CRC_MISMATCH,
        ),
        (
            "a flipped CRC bit",
            edited(&|b| b[12] ^= 0x80, false),
            PR_CRC_MISMATCH,
        ),
        (
            "non-zero reserved",
            edited(&|b| b[50] = 1, true),
            PR_NON_ZERO_RESERVED,
        ),
        (
            "input rank 4",
            edited(&|b| put_u32(b, 16, 4), true),
            PR_BAD_INPUT_SHAPE,
        ),
        (
            "wrong input shape",
            edited(&|b| put_u32(b, 28, 5), true),
            PR_SHAPE_MISMATCH,
        ),
        (
            "zero layers",
            edited(&|b| put_u32(b, 36, 0), true),
            PR_BAD_LAYER_COUNT,
        ),
        (
            "unknown layer kind",
            edited(&|b| put_u32(b, 64 + 64 * 2, 99), true),
            PR_UNKNOWN_LAYER_KIND,
        ),
        (
            "leaky slope 2",
            edited(&|b| put_u32(b, 64 + 64 * 4 + 4, 2.0f32.to_bits()), true),
            PR_BAD_LAYER_PARAMETERS,
        ),
        (
            "misaligned block offset",
            edited(
                &|b| {
                    let at = 64 + 13 * 4;
                    let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                    put_u32(b, at, v + 4)
                },
                true,
            ),
            PR_MISALIGNED_OFFSET,
        ),
        (
            "misplaced block",
            edited(
                &|b| {
                    let at = 64 + 13 * 4;
                    let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                    put_u32(b, at, v + 16)
                },
                true,
            ),
            PR_BAD_BLOCK_OFFSET,
        ),
        (
            "block out of range",
            edited(
                &|b| {
                    let len = b.len() as u32;
                    put_u32(b, 64 + 64 * 5 + 16, len)
                },
                true,
            ),
            PR_BLOCK_OUT_OF_RANGE,
        ),
        (
            "NaN bias",
            edited(
                &|b| b[last_bias..last_bias + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
                true,
            ),
            PR_NON_FINITE_PARAMETER,
        ),
        (
            "output size",
            edited(&|b| put_u32(b, 32, 4), true),
            PR_OUTPUT_SIZE_MISMATCH,
        ),
        (
            "arena size",
            edited(
                &|b| {
                    let v = u32::from_le_bytes(b[40..44].try_into().unwrap());
                    put_u32(b, 40, v + 4)
                },
                true,
            ),
            PR_ARENA_SIZE_MISMATCH,
        ),
        (
            "parameter count",
            edited(
                &|b| {
                    let v = u32::from_le_bytes(b[44..48].try_into().unwrap());
                    put_u32(b, 44, v + 1)
                },
                true,
            ),
            PR_PARAMETER_COUNT_MISMATCH,
        ),
    ];
    for (what, bytes, expected) in cases {
        let (status, storage) = load_status(&bytes);
        assert_eq!(status, expected, "{what}");
        assert_eq!(storage, untouched, "{what}: the model was written");
        assert_eq!(
            status_text(status as c_int),
            status.description().to_str().unwrap()
        );
    }
    // And the intact blob loads (the cases above are damage, not a broken fixture).
    assert_eq!(load_status(&good).0, PR_OK);
}

#[test]
fn every_bit_flip_and_truncation_is_rejected_without_writing() {
    let good = mlp_blob();
    let untouched = model_bytes(&sentinel_model());
    for cut in 0..good.len() {
        let (status, storage) = load_status(&good[..cut]);
        assert_eq!(status, PR_TRUNCATED, "cut at {cut}");
        assert_eq!(storage, untouched);
    }
    for bit in 0..8 * good.len() {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let (status, storage) = load_status(&b);
        let expected: &[pr_status] = match bit / 8 {
            0..=3 => &[PR_BAD_MAGIC],
            4..=5 => &[PR_UNSUPPORTED_VERSION],
            6..=7 => &[PR_BAD_HEADER_SIZE],
            8..=11 => &[PR_TRUNCATED, PR_LENGTH_MISMATCH],
            _ => &[PR_CRC_MISMATCH],
        };
        assert!(expected.contains(&status), "bit {bit}: {status:?}");
        assert_eq!(storage, untouched, "bit {bit}");
    }
}

#[test]
fn a_misaligned_blob_and_an_impossible_length_are_rejected() {
    let good = mlp_blob();
    let mut storage = vec![0u32; good.len() / 4 + 2];
    let raw = storage.as_mut_ptr().cast::<u8>();
    // SAFETY: `storage` holds len + 8 bytes; we write len bytes from offset 1.
    unsafe { ptr::copy_nonoverlapping(good.as_ptr(), raw.add(1), good.len()) };
    let mut model = sentinel_model();
    // SAFETY: readable for `good.len()` bytes from `raw + 1`.
    let status = unsafe { pr_model_load(raw.add(1), good.len(), &mut model) };
    assert_eq!(status, PR_MISALIGNED_BLOB);
    // SAFETY: the length is rejected before the pointer is read.
    let status = unsafe { pr_model_load(raw, usize::MAX, &mut model) };
    assert_eq!(status, PR_OVERFLOW);
    assert_eq!(model_bytes(&model), model_bytes(&sentinel_model()));
}

#[test]
fn getters_reject_null_and_unloaded_models_without_writing() {
    let zeroed: pr_model = pr_model::unloaded();
    let sentinel = sentinel_model();
    type Getter = unsafe extern "C" fn(*const pr_model, *mut usize) -> pr_status;
    let getters: [(&str, Getter); 4] = [
        ("input_len", pr_model_input_len),
        ("output_len", pr_model_output_len),
        ("arena_bytes", pr_model_arena_bytes),
        ("parameter_count", pr_model_parameter_count),
    ];
    let blob = Aligned::new(&mlp_blob());
    let model = loaded(&blob);
    for (name, getter) in getters {
        let mut out = 777usize;
        // SAFETY: NULL and unloaded models are part of the contract.
        unsafe {
            assert_eq!(getter(ptr::null(), &mut out), PR_NULL_POINTER, "{name}");
            assert_eq!(getter(&zeroed, &mut out), PR_MODEL_NOT_LOADED, "{name}");
            assert_eq!(getter(&sentinel, &mut out), PR_MODEL_NOT_LOADED, "{name}");
            assert_eq!(getter(&model, ptr::null_mut()), PR_NULL_POINTER, "{name}");
        }
        assert_eq!(out, 777, "{name} wrote its out-parameter on failure");
    }
}

/// What, model, input, input_len, arena, arena_len, output, output_len, expected status.
type EvalCase<'a> = (
    &'a str,
    *const pr_model,
    *const f32,
    usize,
    *mut u8,
    usize,
    *mut f32,
    usize,
    pr_status,
);

#[test]
fn evaluate_rejects_bad_arguments_and_leaves_the_output_untouched() {
    let blob = Aligned::new(&conv_mlp_blob());
    let model = loaded(&blob);
    let need = core_model(&blob).required_arena_bytes();
    assert!(need > 0);
    let x = inputs(16, 3);
    let mut arena = arena_for(need + 64);
    let arena_ptr = arena.as_mut_ptr().cast::<u8>();
    let zeroed = pr_model::unloaded();
    let mut output = [UNTOUCHED; 4];
    let out_ptr = output.as_mut_ptr();
    let cases: Vec<EvalCase<'_>> = vec![
        (
            "null model",
            ptr::null(),
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_NULL_POINTER,
        ),
        (
            "zeroed model",
            &zeroed,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_MODEL_NOT_LOADED,
        ),
        (
            "null input",
            &model,
            ptr::null(),
            16,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_NULL_POINTER,
        ),
        (
            "null arena",
            &model,
            x.as_ptr(),
            16,
            ptr::null_mut(),
            need,
            out_ptr,
            3,
            PR_NULL_POINTER,
        ),
        (
            "null output",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            ptr::null_mut(),
            3,
            PR_NULL_POINTER,
        ),
        (
            "short input",
            &model,
            x.as_ptr(),
            15,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_INPUT_LENGTH,
        ),
        (
            "long input",
            &model,
            x.as_ptr(),
            17,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_INPUT_LENGTH,
        ),
        (
            "short output",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            out_ptr,
            2,
            PR_OUTPUT_LENGTH,
        ),
        (
            "long output",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            out_ptr,
            4,
            PR_OUTPUT_LENGTH,
        ),
        (
            "arena one byte short",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need - 1,
            out_ptr,
            3,
            PR_ARENA_TOO_SMALL,
        ),
        (
            "empty arena",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            0,
            out_ptr,
            3,
            PR_ARENA_TOO_SMALL,
        ),
        (
            "misaligned arena",
            &model,
            x.as_ptr(),
            16,
            arena_ptr.wrapping_add(1),
            need,
            out_ptr,
            3,
            PR_MISALIGNED_ARENA,
        ),
        (
            "misaligned input",
            &model,
            x.as_ptr().cast::<u8>().wrapping_add(2).cast(),
            16,
            arena_ptr,
            need,
            out_ptr,
            3,
            PR_MISALIGNED_POINTER,
        ),
        (
            "misaligned output",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            out_ptr.cast::<u8>().wrapping_add(1).cast(),
            3,
            PR_MISALIGNED_POINTER,
        ),
        (
            "output inside the arena",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            arena_ptr.cast(),
            3,
            PR_OVERLAPPING_BUFFERS,
        ),
        (
            "output over the input",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            x.as_ptr().cast_mut(),
            3,
            PR_OVERLAPPING_BUFFERS,
        ),
        (
            "arena over the input",
            &model,
            x.as_ptr(),
            16,
            x.as_ptr().cast_mut().cast(),
            need,
            out_ptr,
            3,
            PR_OVERLAPPING_BUFFERS,
        ),
        (
            "output inside the blob",
            &model,
            x.as_ptr(),
            16,
            arena_ptr,
            need,
            blob.bytes().as_ptr().cast_mut().cast(),
            3,
            PR_OVERLAPPING_BUFFERS,
        ),
    ];
    let x_before = x.clone();
    for (what, m, input, input_len, arena, arena_len, out, out_len, expected) in cases {
        // SAFETY: every non-null pointer is valid for the lengths given or rejected
        // (lengths, alignment, overlap) before any slice is formed.
        let status =
            unsafe { pr_model_evaluate(m, input, input_len, arena, arena_len, out, out_len) };
        assert_eq!(status, expected, "{what}");
        assert_eq!(output, [UNTOUCHED; 4], "{what}: output written on failure");
        assert_eq!(x, x_before, "{what}: input written");
    }
    // The same buffers with correct arguments succeed, and write exactly 3 outputs.
    // SAFETY: valid buffers.
    let status = unsafe { pr_model_evaluate(&model, x.as_ptr(), 16, arena_ptr, need, out_ptr, 3) };
    assert_eq!(status, PR_OK);
    assert!(output[..3].iter().all(|v| *v != UNTOUCHED && v.is_finite()));
    assert_eq!(output[3], UNTOUCHED);
}
