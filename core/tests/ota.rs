//! The OTA protocol and the guard on a small synthetic model (no data files needed, so
//! these run everywhere; `tests/ota_apply.rs` at the workspace root repeats the
//! exhaustive checks on the real ACAS Xu repair): every bit flip and truncation of a
//! signed patch refused with storage untouched; power loss at every erase/write step
//! boots the old or the new model; the guard's regions, monitor and counters.

mod common;

use common::{Aligned, encode};
use prorepair_core::format::encode::LayerSpec;
use prorepair_core::guard::{Choice, Guard, Monitor};
use prorepair_core::ota::sim::SimFlash;
use prorepair_core::ota::{self, BootSource};
use prorepair_core::patch::encode::{PatchWriter, seal_ed25519};
use prorepair_core::{Error, Model, Patch};

const SLOT: usize = 2048;

/// Dense 3->16, ReLU, Dense 16->3, the last bias shifted by `shift`.
fn blob(shift: f32) -> Aligned {
    let w1: Vec<f32> = (0..48).map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0).collect();
    let b1: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) / 20.0).collect();
    let w2: Vec<f32> = (0..48).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let b2 = [0.1 + shift, -0.1, 0.0];
    encode(
        &[3],
        &[
            LayerSpec::Dense {
                in_dim: 3,
                out_dim: 16,
                weight: &w1,
                bias: &b1,
            },
            LayerSpec::Relu,
            LayerSpec::Dense {
                in_dim: 16,
                out_dim: 3,
                weight: &w2,
                bias: &b2,
            },
        ],
    )
}

const REGION: [f32; 6] = [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5];

fn patch(base: &Model<'_>, shift: f32, seq: u32, key: Option<&salty::Keypair>) -> Vec<u8> {
    let repaired = blob(shift);
    let r = Model::from_bytes(repaired.bytes()).unwrap();
    let w = PatchWriter::new(base, &r, seq, &REGION).unwrap();
    let mut out = vec![0u8; w.encoded_len()];
    w.write(&mut out).unwrap();
    if let Some(kp) = key {
        seal_ed25519(&mut out, &kp.public.compressed.to_bytes(), |m| {
            kp.sign(m).to_bytes()
        })
        .unwrap();
    }
    out
}

fn outputs(m: &Model<'_>) -> Vec<u32> {
    let mut arena = vec![0.0f32; m.required_arena_len()];
    let mut all = Vec::new();
    for x in [[0.1f32, 0.2, 0.3], [-0.4, 0.0, 0.4], [2.0, -1.0, 0.5]] {
        let mut y = [0.0f32; 3];
        m.evaluate(&x, &mut arena, &mut y).unwrap();
        all.extend(y.map(f32::to_bits));
    }
    all
}

fn boot(flash: &mut SimFlash, base: &Model<'_>, key: &[u8; 32]) -> (u32, BootSource, Vec<u32>) {
    let mut buf = vec![0u8; SLOT];
    let mut ram = vec![0.0f32; 1024];
    let b = ota::boot(flash, base, Some(key), &mut buf, &mut ram);
    (b.model.patch_sequence(), b.source, outputs(&b.model))
}

fn with(base: &Model<'_>, p: &[u8]) -> Vec<u32> {
    let p = Patch::from_bytes(p).unwrap();
    let mut ram = vec![0.0f32; p.required_ram_len()];
    outputs(&base.with_patch(&p, &mut ram).unwrap())
}

#[test]
fn tampering_and_power_loss_on_a_small_model() {
    let base_blob = blob(0.0);
    let base = Model::from_bytes(base_blob.bytes()).unwrap();
    let kp = salty::Keypair::from(&[5u8; 32]);
    let key = kp.public.compressed.to_bytes();
    let p1 = patch(&base, 0.5, 1, Some(&kp));
    let p2 = patch(&base, -0.75, 2, Some(&kp));
    assert_eq!(
        Patch::from_bytes(&p1).unwrap().signer_key_id(),
        Some(prorepair_core::patch::key_id(&key))
    );

    let mut flash = SimFlash::new(SLOT);
    ota::install(&mut flash, &base, Some(&key), &p1).unwrap();
    let v1 = with(&base, &p1);
    assert_eq!(
        boot(&mut flash, &base, &key),
        (1, BootSource::Slot(ota::Slot::A), v1.clone())
    );

    // Every bit flip and truncation of p2 refused; storage untouched.
    let before = flash.areas().clone();
    for i in 0..p2.len() {
        for bit in 0..8 {
            let mut bad = p2.clone();
            bad[i] ^= 1 << bit;
            assert!(ota::install(&mut flash, &base, Some(&key), &bad).is_err());
            // With the CRC fixed up (lowest and highest bit), only the signature or the
            // structure checks can refuse it.
            let crc = prorepair_core::patch::patch_crc(&bad).to_le_bytes();
            bad[12..16].copy_from_slice(&crc);
            if (bit == 0 || bit == 7) && bad != p2 {
                assert!(
                    ota::install(&mut flash, &base, Some(&key), &bad).is_err(),
                    "{i}"
                );
            }
        }
    }
    for len in 0..p2.len() {
        assert!(ota::install(&mut flash, &base, Some(&key), &p2[..len]).is_err());
    }
    // Unsigned, another key, replay.
    let unsigned = patch(&base, -0.75, 2, None);
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &unsigned),
        Err(Error::UnsignedPatch)
    );
    let other = patch(&base, -0.75, 2, Some(&salty::Keypair::from(&[6u8; 32])));
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &other),
        Err(Error::BadSignature)
    );
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &p1),
        Err(Error::StalePatch)
    );
    assert!(flash.areas() == &before);
    assert_eq!(boot(&mut flash, &base, &key).2, v1);

    // Power loss at every step of installing p2 over p1.
    let v2 = with(&base, &p2);
    let mut probe = flash.clone();
    ota::install(&mut probe, &base, Some(&key), &p2).unwrap();
    let steps = probe.steps() - flash.steps();
    for k in 0..=steps {
        let mut f = flash.clone();
        f.fail_after(k);
        let ok = ota::install(&mut f, &base, Some(&key), &p2).is_ok();
        assert_eq!(ok, k == steps);
        f.reboot();
        let (seq, _, out) = boot(&mut f, &base, &key);
        match seq {
            1 => assert_eq!(out, v1, "step {k}"),
            2 => assert_eq!(out, v2, "step {k}"),
            _ => panic!("step {k}: booted sequence {seq}"),
        }
        assert_eq!(seq == 2, ok, "step {k}");
    }
}

#[test]
fn guard_regions_monitor_and_counters() {
    let base_blob = blob(0.0);
    let base = Model::from_bytes(base_blob.bytes()).unwrap();
    let p = patch(&base, 0.5, 1, None);
    let parsed = Patch::from_bytes(&p).unwrap();
    let mut ram = vec![0.0f32; parsed.required_ram_len()];
    let m = base.with_patch(&parsed, &mut ram).unwrap();
    // Unsafe set: y1 <= y0 and y2 <= y0 (output 0 maximal).
    let rows = [-1.0f32, 1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0];
    assert_eq!(
        Monitor::new(&rows[..7], 3, 1).unwrap_err(),
        Error::BadMonitor
    );
    assert_eq!(Monitor::new(&rows, 3, 3).unwrap_err(), Error::BadMonitor);
    let monitor = Monitor::new(&rows, 3, 2).unwrap();
    let mut g = Guard::new(m, Some(parsed), Some(monitor), Choice::Highest).unwrap();
    let mut arena = vec![0.0f32; m.required_arena_len()];
    let mut y = [0.0f32; 3];
    let mut trips = 0;
    let xs = [
        [0.0f32, 0.0, 0.0],
        [0.5, -0.5, 0.5],
        [0.6, 0.0, 0.0],
        [f32::NAN, 0.0, 0.0],
    ];
    for x in xs {
        let d = g.run(&x, &mut arena, &mut y).unwrap();
        let inside = x.iter().all(|v| (-0.5..=0.5).contains(v));
        assert_eq!(d.inside, inside);
        let unsafe_ = y.iter().any(|v| !v.is_finite()) || (y[1] <= y[0] && y[2] <= y[0]);
        assert_eq!(d.tripped, unsafe_);
        if unsafe_ {
            trips += 1;
            assert_eq!(d.advisory, 2);
        } else {
            let best = (0..3).max_by(|&a, &b| y[a].total_cmp(&y[b])).unwrap();
            assert_eq!(d.advisory, best as u32);
        }
    }
    let c = g.counters();
    assert_eq!((c.inside, c.outside, c.monitor_trips), (2, 2, trips));
    assert!(trips >= 1, "the NaN input trips the monitor");
    assert_eq!(
        g.run(&[0.0; 2], &mut arena, &mut y).unwrap_err(),
        Error::InputLength
    );
    assert_eq!(g.counters(), c, "a refused call counts nothing");
    // The patch must be the applied one.
    assert_eq!(
        Guard::new(base, Some(parsed), None, Choice::Lowest).unwrap_err(),
        Error::StalePatch
    );
}
