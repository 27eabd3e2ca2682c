//! The OTA protocol and the guard on a small synthetic model (no data files needed, so
//! these run everywhere; `tests/ota_apply.rs` at the workspace root repeats the
//! exhaustive checks on the real ACAS Xu repair): every bit flip and truncation of a
//! signed patch refused with storage untouched; power loss at every erase/write step
//! boots the old or the new model; the guard's regions, monitor and counters. The same
//! for patch-modules patches (kind 2) in a kind 1 -> kind 2 -> kind 2 sequence.

mod common;

use common::{Aligned, encode};
use prorepair_core::format::encode::LayerSpec;
use prorepair_core::guard::{Choice, Guard, Monitor};
use prorepair_core::ota::sim::SimFlash;
use prorepair_core::ota::{self, BootSource, Running, WeightDeltaOnly};
use prorepair_core::patch::PatchKind;
use prorepair_core::patch::encode::{PatchWriter, seal_ed25519};
use prorepair_core::patch::modules::encode::{self as menc, IndicatorSpec, ModuleSpec};
use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
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

/// Inputs: inside the modules' box (first two), outside it (last two).
const XS: [[f32; 3]; 4] = [
    [0.1, 0.2, 0.3],
    [-0.4, 0.0, 0.4],
    [2.0, -1.0, 0.5],
    [0.1, 0.2, 0.9],
];

fn outputs(m: &Running<'_>) -> Vec<u32> {
    let mut arena = vec![0.0f32; m.required_arena_len()];
    let mut all = Vec::new();
    for x in XS {
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
    assert_eq!(
        b.patch.map_or(0, |p| p.sequence()),
        b.model.patch_sequence()
    );
    (b.model.patch_sequence(), b.source, outputs(&b.model))
}

/// Outputs of `base` with patch `p` (either kind) applied directly, without OTA.
fn with(base: &Model<'_>, p: &[u8]) -> Vec<u32> {
    let p = ota::AnyPatch::from_bytes(p).unwrap();
    let mut ram = vec![0.0f32; p.required_ram_len()];
    outputs(&Running::apply(base, p, &mut ram).unwrap())
}

/// A kind-2 patch for `base`: a box module on [-0.5, 0.5]^3 (3 -> 8 -> 3, weights
/// scaled by `scale`) and a label module (3 -> 3, fires where output 2 is the
/// argmax), with verified regions covering only the half x2 <= 0 of the box.
fn modules_patch(base: &Model<'_>, scale: f32, seq: u32, key: Option<&salty::Keypair>) -> Vec<u8> {
    let pa: Vec<f32> = (0..(24 + 8 + 24 + 3))
        .map(|i| scale * (((i * 29 % 23) as f32) - 11.0) / 10.0)
        .collect();
    let pb: Vec<f32> = (0..12).map(|i| scale * (i as f32 - 6.0) / 16.0).collect();
    let (lo, up) = ([-0.5f32; 3], [0.5f32; 3]);
    let specs = [
        ModuleSpec {
            indicator: IndicatorSpec::Box {
                lower: &lo,
                upper: &up,
            },
            dims: &[3, 8, 3],
            params: &pa,
        },
        ModuleSpec {
            indicator: IndicatorSpec::Label(2),
            dims: &[3, 3],
            params: &pb,
        },
    ];
    let regions = [-0.5f32, -0.5, -0.5, 0.5, 0.5, 0.0];
    let mut out = vec![0u8; menc::encoded_len(&specs, &regions).unwrap()];
    menc::write(base, &specs, seq, &regions, &mut out).unwrap();
    if let Some(kp) = key {
        seal_ed25519(&mut out, &kp.public.compressed.to_bytes(), |m| {
            kp.sign(m).to_bytes()
        })
        .unwrap();
    }
    out
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
    let running = Running::WeightDelta(m, parsed);
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
        assert_eq!(running.covers(&x), inside);
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

/// Power cut at every erase/write step of each install in base -> kind 1 -> kind 2 ->
/// kind 2; after each reboot the device runs the old or the new model (outputs bit for
/// bit those of the patch applied directly), never a mix; a retry then succeeds.
fn install_with_power_cuts(
    flash: &mut SimFlash,
    base: &Model<'_>,
    key: &[u8; 32],
    old: (u32, &[u32]),
    new: (u32, &[u8]),
) {
    let v_new = with(base, new.1);
    assert_ne!(v_new, old.1, "the transition must be observable");
    let mut probe = flash.clone();
    ota::install(&mut probe, base, Some(key), new.1).unwrap();
    let steps = probe.steps() - flash.steps();
    assert!(steps >= 4, "erase + write of the slot and the record");
    for k in 0..=steps {
        let mut f = flash.clone();
        f.fail_after(k);
        let ok = ota::install(&mut f, base, Some(key), new.1).is_ok();
        assert_eq!(ok, k == steps, "step {k}");
        f.reboot();
        let (seq, _, out) = boot(&mut f, base, key);
        if seq == new.0 {
            assert!(ok, "step {k}: the new model runs only after the commit");
            assert_eq!(out, v_new, "step {k}");
        } else {
            assert_eq!((seq, &out[..]), (old.0, old.1), "step {k}");
            // The retry after the reboot commits.
            ota::install(&mut f, base, Some(key), new.1).unwrap();
            assert_eq!(boot(&mut f, base, key).2, v_new, "step {k}: retry");
        }
    }
    ota::install(flash, base, Some(key), new.1).unwrap();
}

#[test]
fn patch_modules_install_boot_tamper_and_power_loss() {
    let base_blob = blob(0.0);
    let base = Model::from_bytes(base_blob.bytes()).unwrap();
    let kp = salty::Keypair::from(&[5u8; 32]);
    let key = kp.public.compressed.to_bytes();
    let p1 = patch(&base, 0.5, 1, Some(&kp));
    let m2 = modules_patch(&base, 1.0, 2, Some(&kp));
    let m3 = modules_patch(&base, -0.5, 3, Some(&kp));

    let mut flash = SimFlash::new(SLOT);
    let v0 = outputs(&Running::Plain(base));
    assert_eq!(
        boot(&mut flash, &base, &key),
        (0, BootSource::Base, v0.clone())
    );
    install_with_power_cuts(&mut flash, &base, &key, (0, &v0), (1, &p1));
    let v1 = with(&base, &p1);
    install_with_power_cuts(&mut flash, &base, &key, (1, &v1), (2, &m2));
    let v2 = with(&base, &m2);
    // Kind 2 booted: base + modules, equal to the core's ModulesModel bit for bit, and
    // the base model's output outside every indicator (input 3 is outside the box; the
    // label module does not fire there on this model).
    {
        let mut buf = vec![0u8; SLOT];
        let mut ram = vec![0.0f32; 1024];
        let b = ota::boot(&mut flash, &base, Some(&key), &mut buf, &mut ram);
        assert_eq!(b.source, BootSource::Slot(ota::Slot::B));
        assert!(matches!(b.model, Running::Modules(_)));
        assert_eq!(b.patch.map(|p| p.kind()), Some(PatchKind::Modules));
        let parsed = ModulePatch::from_bytes(&m2).unwrap();
        let mut ram2 = vec![0.0f32; parsed.required_ram_len()];
        let mm = ModulesModel::new(&base, &parsed, &mut ram2).unwrap();
        let mut arena = vec![0.0f32; mm.required_arena_len()];
        let mut want = Vec::new();
        for x in XS {
            let mut y = [0.0f32; 3];
            mm.evaluate(&x, &mut arena, &mut y).unwrap();
            want.extend(y.map(f32::to_bits));
        }
        assert_eq!(outputs(&b.model), want);
        for (k, x) in XS.iter().enumerate() {
            let in_box = x.iter().all(|v| (-0.5..=0.5).contains(v));
            let y0: Vec<f32> = v0[3 * k..3 * k + 3]
                .iter()
                .map(|&b| f32::from_bits(b))
                .collect();
            let label_fires = (0..3).max_by(|&a, &b| y0[a].total_cmp(&y0[b])) == Some(2);
            if !in_box && !label_fires {
                assert_eq!(
                    v2[3 * k..3 * k + 3],
                    v0[3 * k..3 * k + 3],
                    "outside: the base"
                );
            }
        }
        assert_ne!(v2[..3], v0[..3], "inside the box the module acts");
        // Evaluation after boot fails only on argument lengths.
        let mut y = [0.0f32; 3];
        let mut small = vec![0.0f32; b.model.required_arena_len() - 1];
        assert_eq!(
            b.model.evaluate(&XS[0], &mut small, &mut y),
            Err(Error::ArenaTooSmall)
        );
        assert_eq!(
            b.model.evaluate(&[0.0; 2], &mut arena, &mut y),
            Err(Error::InputLength)
        );
    }

    // A device that runs weight-delta patches only: refuses to install kind 2, and
    // boots past a kind-2 commit to the previous one (the kind-1 patch).
    {
        let mut f = flash.clone();
        assert_eq!(
            ota::install_as::<WeightDeltaOnly, _>(&mut f, &base, Some(&key), &m3),
            Err(Error::UnknownPatchKind)
        );
        assert!(f == flash);
        let mut buf = vec![0u8; SLOT];
        let mut ram = vec![0.0f32; 1024];
        let b = ota::boot_as::<WeightDeltaOnly, _>(&mut f, &base, Some(&key), &mut buf, &mut ram);
        assert_eq!(b.source, BootSource::FallbackSlot(ota::Slot::A));
        assert_eq!(
            (b.model.patch_sequence(), outputs(&b.model)),
            (1, v1.clone())
        );
    }

    // Tamper with the next kind-2 patch: every bit flip and truncation refused, the
    // flash byte-identical, the running model unchanged.
    let before = flash.areas().clone();
    for i in 0..m3.len() {
        for bit in 0..8 {
            let mut bad = m3.clone();
            bad[i] ^= 1 << bit;
            assert!(ota::install(&mut flash, &base, Some(&key), &bad).is_err());
            let crc = prorepair_core::patch::patch_crc(&bad).to_le_bytes();
            bad[12..16].copy_from_slice(&crc);
            if (bit == 0 || bit == 7) && bad != m3 {
                assert!(
                    ota::install(&mut flash, &base, Some(&key), &bad).is_err(),
                    "{i}"
                );
            }
        }
    }
    for len in 0..m3.len() {
        assert!(ota::install(&mut flash, &base, Some(&key), &m3[..len]).is_err());
    }
    let unsigned = modules_patch(&base, -0.5, 3, None);
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &unsigned),
        Err(Error::UnsignedPatch)
    );
    let other_key = modules_patch(&base, -0.5, 3, Some(&salty::Keypair::from(&[6u8; 32])));
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &other_key),
        Err(Error::BadSignature)
    );
    // Made for another base model.
    let other_blob = blob(0.25);
    let other = Model::from_bytes(other_blob.bytes()).unwrap();
    let foreign = modules_patch(&other, -0.5, 3, Some(&kp));
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &foreign),
        Err(Error::WrongBaseModel)
    );
    // Replays: the running kind-2 patch and the older kind-1 one.
    for old in [&m2, &p1] {
        assert_eq!(
            ota::install(&mut flash, &base, Some(&key), old),
            Err(Error::StalePatch)
        );
    }
    assert!(
        flash.areas() == &before,
        "refusals leave the flash untouched"
    );
    assert_eq!(
        boot(&mut flash, &base, &key),
        (2, BootSource::Slot(ota::Slot::B), v2.clone())
    );

    install_with_power_cuts(&mut flash, &base, &key, (2, &v2), (3, &m3));
    assert_eq!(boot(&mut flash, &base, &key).0, 3);
    assert_eq!(
        ota::install(&mut flash, &base, Some(&key), &m2),
        Err(Error::StalePatch)
    );

    // A RAM buffer too small for the modules: the slot is not booted (the older commit,
    // kind 2 of sequence 2, needs the same RAM, so the base model runs), never a
    // half-built model.
    let need = ModulePatch::from_bytes(&m3).unwrap().required_ram_len();
    let mut buf = vec![0u8; SLOT];
    let mut ram = vec![0.0f32; need - 1];
    let b = ota::boot(&mut flash, &base, Some(&key), &mut buf, &mut ram);
    assert_eq!(b.source, BootSource::FallbackBase);
    assert_eq!(outputs(&b.model), v0);
}

#[test]
fn guard_with_patch_modules() {
    let base_blob = blob(0.0);
    let base = Model::from_bytes(base_blob.bytes()).unwrap();
    let bytes = modules_patch(&base, 1.0, 1, None);
    let p = ota::AnyPatch::from_bytes(&bytes).unwrap();
    let mut ram = vec![0.0f32; p.required_ram_len()];
    let running = Running::apply(&base, p, &mut ram).unwrap();
    // Unsafe set: output 0 maximal.
    let rows = [-1.0f32, 1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0];
    let monitor = Monitor::new(&rows, 3, 2).unwrap();
    let mut g = Guard::for_running(running, Some(monitor), Choice::Highest).unwrap();
    let mut arena = vec![0.0f32; running.required_arena_len()];
    let mut y = [0.0f32; 3];
    let mut base_y = [0.0f32; 3];
    let mut base_arena = vec![0.0f32; base.required_arena_len()];
    let mut seed = 7u64;
    let (mut inside, mut box_only, mut outside, mut trips) = (0u32, 0u32, 0u32, 0u32);
    for _ in 0..3000 {
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 1.6 - 0.8
        };
        let x = [next(), next(), next()];
        let d = g.run(&x, &mut arena, &mut y).unwrap();
        let in_box = x.iter().all(|v| (-0.5..=0.5).contains(v));
        let in_region = in_box && x[2] <= 0.0;
        // Inside = inside the box indicator AND a verified region.
        assert_eq!(d.inside, in_region, "{x:?}");
        if in_region {
            inside += 1;
        } else {
            outside += 1;
            box_only += u32::from(in_box);
        }
        let unsafe_ = y[1] <= y[0] && y[2] <= y[0];
        assert_eq!(d.tripped, unsafe_);
        trips += u32::from(unsafe_);
        // Outside every indicator, the base model's output bit for bit.
        base.evaluate(&x, &mut base_arena, &mut base_y).unwrap();
        let label_fires = (0..3).max_by(|&a, &b| base_y[a].total_cmp(&base_y[b])) == Some(2);
        if !in_box && !label_fires {
            assert_eq!(y.map(f32::to_bits), base_y.map(f32::to_bits), "{x:?}");
        }
    }
    assert!(
        inside > 100 && box_only > 100 && outside > 1000,
        "{inside} {box_only} {outside}"
    );
    let c = g.counters();
    assert_eq!(
        (c.inside, c.outside, c.monitor_trips),
        (inside, outside, trips)
    );
    // A base model has no regions: everything is outside.
    let mut plain = Guard::for_running(Running::Plain(base), None, Choice::Lowest).unwrap();
    assert!(
        !plain
            .run(&[0.0; 3], &mut base_arena, &mut y)
            .unwrap()
            .inside
    );
    // A monitor for another output length is refused.
    let m4 = Monitor::new(&[1.0f32, 0.0, 0.0, 0.0, 0.0], 4, 0).unwrap();
    assert_eq!(
        Guard::for_running(running, Some(m4), Choice::Lowest).unwrap_err(),
        Error::BadMonitor
    );
}
