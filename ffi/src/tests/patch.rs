//! Weight-delta patches through the C API: applied patches evaluate like the repaired
//! blob; every rejected patch returns its status and leaves the model and the RAM as
//! they were, so the old model keeps running.

use prorepair_core::format::encode::LayerSpec;
use prorepair_core::patch::encode::PatchWriter;

use super::api::{evaluate, loaded};
use super::support::*;
use crate::pr_status::*;
use crate::*;

/// The repaired twin of `mlp_blob`: the last layer's weights and one bias changed.
pub(super) fn repaired_mlp_blob() -> Vec<u8> {
    let w1: Vec<f32> = (0..35)
        .map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0)
        .collect();
    let w2: Vec<f32> = (0..35).map(|i| ((i * 3 % 9) as f32 - 4.0) / 5.0).collect();
    encode(
        &[5],
        &[
            LayerSpec::Dense {
                in_dim: 5,
                out_dim: 7,
                weight: &w1,
                bias: &[0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.25],
            },
            LayerSpec::Relu,
            LayerSpec::Dense {
                in_dim: 7,
                out_dim: 5,
                weight: &w2,
                bias: &[0.5, 0.4, 0.3, 0.2, -0.1],
            },
        ],
    )
}

pub(super) fn make_patch(base: &Aligned, repaired: &Aligned, sequence: u32) -> Vec<u8> {
    let (b, r) = (core_model(base), core_model(repaired));
    let regions = [-1.0f32, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let writer = PatchWriter::new(&b, &r, sequence, &regions).unwrap();
    let mut out = vec![0u8; writer.encoded_len()];
    writer.write(&mut out).unwrap();
    out
}

fn ram_bytes(patch: &[u8]) -> (pr_status, usize) {
    let mut n = usize::MAX;
    // SAFETY: valid buffers.
    let status = unsafe { pr_patch_ram_bytes(patch.as_ptr(), patch.len(), &mut n) };
    (status, n)
}

fn apply(model: &mut pr_model, patch: &[u8], ram: &mut [f32], ram_len: usize) -> pr_status {
    assert!(ram_len <= 4 * ram.len());
    // SAFETY: valid buffers for the lengths passed.
    unsafe {
        pr_model_apply_patch(
            model,
            patch.as_ptr(),
            patch.len(),
            ram.as_mut_ptr().cast(),
            ram_len,
        )
    }
}

fn sequence(model: &pr_model) -> u32 {
    let mut s = u32::MAX;
    // SAFETY: valid buffers.
    assert_eq!(unsafe { pr_model_patch_sequence(model, &mut s) }, PR_OK);
    s
}

fn outputs(model: &pr_model, arena: usize) -> Vec<Vec<f32>> {
    (0..10)
        .map(|k| {
            let x: Vec<f32> = (0..5).map(|i| ((k * 5 + i) as f32 * 0.37).sin()).collect();
            let (status, out) = evaluate(model, &x, arena, 5);
            assert_eq!(status, PR_OK);
            out
        })
        .collect()
}

#[test]
fn an_applied_patch_evaluates_like_the_repaired_blob() {
    let base = Aligned::new(&mlp_blob());
    let repaired = Aligned::new(&repaired_mlp_blob());
    let patch = make_patch(&base, &repaired, 1);
    let arena = core_model(&base).required_arena_bytes();
    let mut model = loaded(&base);
    let before = outputs(&model, arena);
    let want = outputs(&loaded(&repaired), arena);
    assert_ne!(before, want);
    let (status, n) = ram_bytes(&patch);
    assert_eq!(status, PR_OK);
    // Both layers changed: (8*5 + 7) + (8*7 + 5) values.
    assert_eq!(n, 4 * (47 + 61));
    let mut ram = vec![0.0f32; n / 4];
    assert_eq!(sequence(&model), 0);
    assert_eq!(apply(&mut model, &patch, &mut ram, n), PR_OK);
    assert_eq!(sequence(&model), 1);
    assert_eq!(outputs(&model, arena), want);
    // The patch buffer may go away: the model no longer refers to it.
    drop(patch);
    assert_eq!(outputs(&model, arena), want);
}

#[test]
fn rejected_patches_leave_the_running_model_and_ram_untouched() {
    let base = Aligned::new(&mlp_blob());
    let repaired = Aligned::new(&repaired_mlp_blob());
    let arena = core_model(&base).required_arena_bytes();
    let p1 = make_patch(&base, &repaired, 1);
    let p2 = make_patch(&base, &repaired, 2);
    let n = ram_bytes(&p2).1;
    let mut model = loaded(&base);
    let mut ram_a = vec![0.0f32; n / 4 + 1];
    assert_eq!(apply(&mut model, &p2, &mut ram_a, n), PR_OK);
    let running = model_bytes(&model);
    let want = outputs(&model, arena);
    let mut ram_b = vec![7.5f32; n / 4 + 1];
    let check = |model: &pr_model, ram_b: &[f32]| {
        assert_eq!(model_bytes(model), running);
        assert!(ram_b.iter().all(|&v| v == 7.5));
        assert_eq!(outputs(model, arena), want);
    };
    // Stale (older and equal sequence numbers).
    assert_eq!(apply(&mut model, &p1, &mut ram_b, n), PR_STALE_PATCH);
    assert_eq!(apply(&mut model, &p2, &mut ram_b, n), PR_STALE_PATCH);
    check(&model, &ram_b);
    // Corrupted (CRC), truncated, wrong base model, RAM too small, misaligned RAM.
    let mut flipped = make_patch(&base, &repaired, 3);
    flipped[120] ^= 1;
    assert_eq!(apply(&mut model, &flipped, &mut ram_b, n), PR_CRC_MISMATCH);
    assert_eq!(
        apply(&mut model, &p2[..p2.len() - 3], &mut ram_b, n),
        PR_TRUNCATED
    );
    let other = Aligned::new(&conv_mlp_blob());
    let mut wrong = make_patch(&repaired, &base, 3);
    assert_eq!(
        apply(&mut model, &wrong, &mut ram_b, n),
        PR_WRONG_BASE_MODEL
    );
    // The hash is the binding: the same patch with the base hash of another blob.
    let other_sha = core_model(&other).sha256();
    wrong = make_patch(&base, &repaired, 3);
    wrong[24..56].copy_from_slice(&other_sha);
    fix_crc(&mut wrong);
    assert_eq!(
        apply(&mut model, &wrong, &mut ram_b, n),
        PR_WRONG_BASE_MODEL
    );
    let p3 = make_patch(&base, &repaired, 3);
    assert_eq!(
        apply(&mut model, &p3, &mut ram_b, n - 4),
        PR_PATCH_RAM_TOO_SMALL
    );
    check(&model, &ram_b);
    // SAFETY: valid buffers; the RAM pointer is deliberately 1 byte into the storage.
    let status = unsafe {
        pr_model_apply_patch(
            &mut model,
            p3.as_ptr(),
            p3.len(),
            ram_b.as_mut_ptr().cast::<u8>().add(1),
            n,
        )
    };
    assert_eq!(status, PR_MISALIGNED_PATCH_RAM);
    // NULLs, and RAM overlapping the patch itself.
    // SAFETY: null pointers are rejected before any access.
    unsafe {
        assert_eq!(
            pr_model_apply_patch(
                &mut model,
                std::ptr::null(),
                10,
                ram_b.as_mut_ptr().cast(),
                n
            ),
            PR_NULL_POINTER
        );
        assert_eq!(
            pr_model_apply_patch(&mut model, p3.as_ptr(), p3.len(), std::ptr::null_mut(), n),
            PR_NULL_POINTER
        );
        assert_eq!(
            pr_model_apply_patch(
                std::ptr::null_mut(),
                p3.as_ptr(),
                p3.len(),
                ram_b.as_mut_ptr().cast(),
                n
            ),
            PR_NULL_POINTER
        );
        let mut n_out = 0usize;
        assert_eq!(
            pr_patch_ram_bytes(p3.as_ptr(), p3.len(), std::ptr::null_mut()),
            PR_NULL_POINTER
        );
        assert_eq!(
            pr_patch_ram_bytes(std::ptr::null(), 3, &mut n_out),
            PR_NULL_POINTER
        );
        assert_eq!(
            pr_model_patch_sequence(&model, std::ptr::null_mut()),
            PR_NULL_POINTER
        );
    }
    let mut shared = vec![0u32; (p3.len() + n).div_ceil(4) + 1];
    let shared_bytes: &mut [u8] = unsafe_bytes(&mut shared);
    shared_bytes[..p3.len()].copy_from_slice(&p3);
    let ptr = shared_bytes.as_mut_ptr();
    // SAFETY: both ranges lie inside `shared`; the overlap is refused before any write.
    let status = unsafe { pr_model_apply_patch(&mut model, ptr, p3.len(), ptr, n) };
    assert_eq!(status, PR_OVERLAPPING_BUFFERS);
    check(&model, &ram_b);
    // An unloaded model.
    let mut zero = pr_model::unloaded();
    assert_eq!(apply(&mut zero, &p3, &mut ram_b, n), PR_MODEL_NOT_LOADED);
    // And a newer valid patch is then accepted into the second RAM region.
    assert_eq!(apply(&mut model, &p3, &mut ram_b, n), PR_OK);
    assert_eq!(sequence(&model), 3);
}

/// Byte view of u32 storage (4-byte aligned).
fn unsafe_bytes(w: &mut [u32]) -> &mut [u8] {
    let len = w.len() * 4;
    // SAFETY: u32 storage is valid as bytes; same memory, exclusively borrowed.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), len) }
}
