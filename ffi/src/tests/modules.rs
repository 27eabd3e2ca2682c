//! Patch modules through the C API: load, evaluate like the core, and every refusal
//! with its own status and `*out` untouched.

use prorepair_core::patch::modules::encode::{self as menc, IndicatorSpec, ModuleSpec};

use super::api::loaded;
use super::support::*;
use crate::pr_status::*;
use crate::*;

fn modules_patch(blob: &Aligned, label: usize) -> Vec<u8> {
    let model = core_model(blob);
    let lower = [-0.5f32; 5];
    let upper = [0.5f32; 5];
    let p1: Vec<f32> = (0..(5 * 4 + 4 + 4 * 5 + 5))
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0)
        .collect();
    let p2: Vec<f32> = (0..(5 * 5 + 5)).map(|i| (i as f32 - 15.0) / 20.0).collect();
    let specs = [
        ModuleSpec {
            indicator: IndicatorSpec::Box {
                lower: &lower,
                upper: &upper,
            },
            dims: &[5, 4, 5],
            params: &p1,
        },
        ModuleSpec {
            indicator: IndicatorSpec::Label(label),
            dims: &[5, 5],
            params: &p2,
        },
    ];
    let mut out = vec![0u8; menc::encoded_len(&specs, &[]).unwrap()];
    menc::write(&model, &specs, 1, &[], &mut out).unwrap();
    out
}

/// `pr_modules_load` of `patch` with the first `ram_len` bytes of `ram` into `out`.
fn load(
    model: &pr_model,
    patch: &[u8],
    ram: &mut [f32],
    ram_len: usize,
    out: &mut pr_modules,
) -> pr_status {
    assert!(ram_len <= ram.len() * 4);
    // SAFETY: valid buffers for the lengths passed (`ram_len` checked above).
    unsafe {
        pr_modules_load(
            model,
            patch.as_ptr(),
            patch.len(),
            ram.as_mut_ptr().cast(),
            ram_len,
            out,
        )
    }
}

#[test]
fn modules_evaluate_like_the_core_and_refusals_leave_out_untouched() {
    let blob = Aligned::new(&mlp_blob());
    let model = loaded(&blob);
    let patch = modules_patch(&blob, 2);
    let mut ram_bytes = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { pr_modules_ram_bytes(patch.as_ptr(), patch.len(), &mut ram_bytes) },
        PR_OK
    );
    let mut ram = vec![0f32; ram_bytes / 4];
    let mut m = pr_modules::unloaded();
    let s = load(&model, &patch, &mut ram, ram_bytes, &mut m);
    assert_eq!(s, PR_OK);
    let mut arena_bytes = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { pr_modules_arena_bytes(&m, &mut arena_bytes) },
        PR_OK
    );
    let mut arena = vec![0f32; arena_bytes / 4];
    // The core's own evaluation, for comparison.
    let core = core_model(&blob);
    let parsed = prorepair_core::patch::modules::ModulePatch::from_bytes(&patch).unwrap();
    let mut ram2 = vec![0f32; parsed.required_ram_len()];
    let mm = prorepair_core::patch::modules::ModulesModel::new(&core, &parsed, &mut ram2).unwrap();
    let mut arena2 = vec![0f32; mm.required_arena_len()];
    for k in 0..50 {
        let x: Vec<f32> = (0..5)
            .map(|i| ((k * 3 + i * 7) % 11) as f32 / 10.0 - 0.5)
            .collect();
        let mut out = [0f32; 5];
        // SAFETY: valid buffers for the lengths passed.
        let s = unsafe {
            pr_modules_evaluate(
                &m,
                x.as_ptr(),
                5,
                arena.as_mut_ptr().cast(),
                arena_bytes,
                out.as_mut_ptr(),
                5,
            )
        };
        assert_eq!(s, PR_OK);
        let mut want = [0f32; 5];
        mm.evaluate(&x, &mut arena2, &mut want).unwrap();
        assert_eq!(out.map(f32::to_bits), want.map(f32::to_bits));
    }
    // Refusals: weight-delta kind, a label the model lacks, RAM too small, not loaded.
    let mut fresh = pr_modules::unloaded();
    let bad = modules_patch(&blob, 9);
    let s = load(&model, &bad, &mut ram, ram_bytes, &mut fresh);
    assert_eq!(s, PR_PATCH_MODULE_MISMATCH);
    let s = load(&model, &patch, &mut ram, ram_bytes - 4, &mut fresh);
    assert_eq!(s, PR_PATCH_RAM_TOO_SMALL);
    let mut broken = patch.clone();
    broken[16] = 1;
    let s = load(&model, &broken, &mut ram, ram_bytes, &mut fresh);
    assert_eq!(s, PR_CRC_MISMATCH);
    let mut n = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { pr_modules_arena_bytes(&fresh, &mut n) },
        PR_MODEL_NOT_LOADED,
        "untouched on failure"
    );
    let mut out = [0f32; 5];
    // SAFETY: valid buffers.
    let s = unsafe {
        pr_modules_evaluate(
            &m,
            [0f32; 4].as_ptr(),
            4,
            arena.as_mut_ptr().cast(),
            arena_bytes,
            out.as_mut_ptr(),
            5,
        )
    };
    assert_eq!(s, PR_INPUT_LENGTH);
}
