//! The patch decoder: any bytes either fail with an error or give a patch whose every
//! accessor works; its signature check and its binding to a fixed model never panic,
//! and a patch that binds applies (into RAM of the size it asks for).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prorepair_core::{Model, Patch};

fn base() -> &'static common::Aligned {
    static BASE: OnceLock<common::Aligned> = OnceLock::new();
    BASE.get_or_init(|| common::Aligned::new(&common::blob(0.0)))
}

fn seed() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let model = Model::from_bytes(base().bytes()).unwrap();
        common::signed_patch(&model, 0.5, 1)
    })
}

fuzz_target!(|data: &[u8]| {
    let bytes = common::shape_input(data, seed(), common::fix_patch_crc);
    let Ok(patch) = Patch::from_bytes(&bytes) else {
        return;
    };
    let _: usize = patch.layers().map(|r| r.entries().count()).sum();
    let mut lo = vec![0.0f32; patch.region_dim()];
    let mut up = vec![0.0f32; patch.region_dim()];
    for k in 0..patch.region_count().min(64) {
        patch
            .region(k, &mut lo, &mut up)
            .expect("a validated region reads");
    }
    let _ = patch.covers(&lo);
    let key = common::keypair().public.compressed.to_bytes();
    let _ = patch.check_signature(Some(&key));
    let model = Model::from_bytes(base().bytes()).unwrap();
    if patch.check_binding(&model).is_ok() && patch.required_ram_len() <= 1 << 20 {
        let mut ram = vec![0.0f32; patch.required_ram_len()];
        // Sequence 0 (below every real patch) is the one refusal left: "stale".
        let patched = match model.with_patch(&patch, &mut ram) {
            Ok(p) => p,
            Err(e) => {
                assert!(patch.sequence() == 0 && e == prorepair_core::Error::StalePatch);
                return;
            }
        };
        let mut arena = vec![0.0f32; patched.required_arena_len()];
        let mut out = [0.0f32; 2];
        patched
            .evaluate(&[0.1, 0.2, 0.3], &mut arena, &mut out)
            .unwrap();
    }
});
