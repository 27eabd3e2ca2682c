//! The OTA apply state machine: the fuzzer drives installs of signed, tampered and
//! unsigned patches, power losses at any erase/write step, bit rot in any area and
//! reboots, on a simulated NOR flash. Invariants: a refused patch leaves storage
//! untouched; a boot always gives a verified model whose outputs are exactly those of
//! one known model (never a mix); without bit rot it is the last committed one; the
//! anti-rollback counter never decreases.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prorepair_core::ota::sim::SimFlash;
use prorepair_core::ota::{self, Area};
use prorepair_core::{Error, Model, Patch};

const SLOT: usize = 1024;
const SHIFTS: [f32; 4] = [0.5, -0.25, 1.0, 2.0];

struct Fixture {
    base: common::Aligned,
    /// Signed patches, sequence k + 1, shift SHIFTS[k].
    signed: Vec<Vec<u8>>,
    unsigned: Vec<u8>,
    key: [u8; 32],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = common::Aligned::new(&common::blob(0.0));
        let model = Model::from_bytes(base.bytes()).unwrap();
        let signed = SHIFTS
            .iter()
            .enumerate()
            .map(|(k, &s)| common::signed_patch(&model, s, k as u32 + 1))
            .collect();
        let unsigned = common::unsigned_patch(&model, 3.0, 9);
        let key = common::keypair().public.compressed.to_bytes();
        Fixture {
            base,
            signed,
            unsigned,
            key,
        }
    })
}

fn outputs(model: &Model<'_>) -> Vec<u32> {
    let mut arena = vec![0.0f32; model.required_arena_len()];
    let mut all = Vec::new();
    for x in [[0.1f32, 0.2, 0.3], [-0.5, 0.7, 0.0], [0.9, -0.9, 0.4]] {
        let mut y = [0.0f32; 2];
        model.evaluate(&x, &mut arena, &mut y).unwrap();
        all.extend(y.map(f32::to_bits));
    }
    all
}

fn expected(f: &Fixture, seq: u32) -> Vec<u32> {
    let base = Model::from_bytes(f.base.bytes()).unwrap();
    if seq == 0 {
        return outputs(&base);
    }
    let p = Patch::from_bytes(&f.signed[seq as usize - 1]).unwrap();
    let mut ram = vec![0.0f32; p.required_ram_len()];
    outputs(&base.with_patch(&p, &mut ram).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let base = Model::from_bytes(f.base.bytes()).unwrap();
    let mut flash = SimFlash::new(SLOT);
    let mut committed = 0u32;
    let mut rotted = false;
    let mut counter = 0u32;
    for op in data.chunks_exact(3).take(64) {
        let (a, b) = (usize::from(op[1]), usize::from(op[2]));
        match op[0] % 6 {
            0 => {
                let k = a % f.signed.len();
                let before = flash.areas().clone();
                match ota::install(&mut flash, &base, Some(&f.key), &f.signed[k]) {
                    Ok(r) => {
                        assert_eq!(r.counter, k as u32 + 1);
                        // Bit rot may destroy the newest record (and its counter).
                        assert!(rotted || r.counter > counter, "rollback accepted");
                        counter = r.counter;
                        committed = r.counter;
                    }
                    Err(Error::StorageFailure | Error::WriteVerifyFailed) => {}
                    Err(Error::StalePatch) => assert!(flash.areas() == &before),
                    Err(e) => panic!("a signed patch refused: {e}"),
                }
            }
            1 => {
                let k = a % f.signed.len();
                let mut bad = f.signed[k].clone();
                let at = (a * 256 + b) % bad.len();
                bad[at] ^= (b as u8) | 1;
                let before = flash.areas().clone();
                assert!(ota::install(&mut flash, &base, Some(&f.key), &bad).is_err());
                assert!(flash.areas() == &before, "a refused patch touched storage");
            }
            2 => flash.fail_after(a % 16),
            3 => {
                flash.reboot();
                let mut buf = vec![0u8; SLOT];
                let mut ram = vec![0.0f32; 256];
                let booted = ota::boot(&mut flash, &base, Some(&f.key), &mut buf, &mut ram);
                let seq = booted.model.patch_sequence();
                assert!(seq as usize <= f.signed.len());
                assert_eq!(
                    outputs(booted.model.as_model().expect("kind-1 patches only")),
                    expected(f, seq),
                    "a mix booted"
                );
                if !rotted {
                    assert_eq!(seq, committed, "not the committed model");
                    assert_eq!(booted.counter, counter);
                }
            }
            4 => {
                let area = [Area::SlotA, Area::SlotB, Area::RecordA, Area::RecordB][a % 4];
                let bytes = flash.area_mut(area);
                let len = bytes.len();
                bytes[b * 7 % len] ^= 1 << (a % 8);
                rotted = true;
            }
            _ => {
                let before = flash.areas().clone();
                let r = ota::install(&mut flash, &base, Some(&f.key), &f.unsigned);
                assert!(r.is_err());
                assert!(flash.areas() == &before);
            }
        }
    }
});
