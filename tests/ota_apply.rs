//! Signed OTA patches on real data: the proven repair of ACAS Xu N2,1 for property 2,
//! signed with a fresh Ed25519 key, installed through the core's A/B protocol
//! (`prorepair_core::ota`) on a simulated NOR flash.
//!
//! - Tamper: every single-bit flip and whole-byte flip of every byte; the bit-0 and
//!   whole-byte flips again with a fixed-up CRC (so only the signature can stop them);
//!   every truncation of the signed patch is refused, as are a patch for
//!   another model, an older or replayed sequence number, a wrong key and an unsigned
//!   patch; storage is untouched byte for byte and the running model's outputs stay
//!   identical.
//! - Power failure: the apply is interrupted at every write/erase step (the step itself
//!   torn: half written); after "reboot" the device runs the old or the new model,
//!   verified, with every output equal to one of them (never a mix), and a retried
//!   install then succeeds.
//! - Runtime guard: inputs in the verified box run the repaired model and never trip the
//!   property-2 monitor; the unrepaired model trips it on its counterexample.
//! - Patch modules (kind 2): the patch-modules repair of the same network and property,
//!   built here with the host library, installs over the weight-delta patch and boots;
//!   its outputs equal the host's device evaluation (`patch::modules::eval_device`) bit
//!   for bit, inside and outside the box; the guard counts inputs inside the box; a
//!   flipped bit or a replay is refused with the flash unchanged.

use std::sync::OnceLock;

use prorepair_core::guard::{Choice, Guard, Monitor};
use prorepair_core::ota::sim::SimFlash;
use prorepair_core::ota::{self, Area, BootSource, Running, Slot};
use prorepair_core::{Error, Patch};
use prorepair_host::compile::AlignedBlob;
use prorepair_host::patch::sign;

const SLOT: usize = 32 * 1024;

struct Fixture {
    blob: AlignedBlob,
    public: [u8; 32],
    /// Signed patches of the same proven repair with sequence numbers 1, 2, 3.
    signed: Vec<Vec<u8>>,
    unsigned: Vec<u8>,
    /// Signed (same key) but made for ACAS Xu N2,2.
    other_model: Vec<u8>,
    /// A second, different patch for N2,1 (one more bias changed), sequence 4.
    different: Vec<u8>,
    regions: Vec<(Vec<f64>, Vec<f64>)>,
    inputs: Vec<[f32; 5]>,
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture).as_ref()
}

fn build_fixture() -> Option<Fixture> {
    let other = prorepair_host::testing::data_path(&prorepair_host::testing::acasxu_onnx(2, 2))
        .filter(|p| p.exists())?;
    let prorepair_tests::N21Prop2Repair {
        net,
        repaired,
        regions,
        ..
    } = prorepair_tests::repair_n21_prop2()?;
    let key = sign::generate().unwrap();
    let emit = |base: &prorepair_host::Network, repaired: &prorepair_host::Network, seq| {
        let e = prorepair_host::patch::emit(base, repaired, seq, &regions).unwrap();
        let mut bytes = e.bytes.clone();
        sign::sign_patch(&mut bytes, &key).unwrap();
        (e, bytes)
    };
    let (first, _) = emit(&net, &repaired, 1);
    let signed: Vec<Vec<u8>> = (1..=3).map(|s| emit(&net, &repaired, s).1).collect();
    let mut tweaked = repaired.clone();
    if let prorepair_host::Layer::Dense(d) = tweaked.layers.last_mut().unwrap() {
        d.bias[1] += 0.25;
    }
    let different = emit(&net, &tweaked, 4).1;
    let other_net = prorepair_host::import::load(&other).unwrap();
    let mut other_repaired = other_net.clone();
    if let prorepair_host::Layer::Dense(d) = &mut other_repaired.layers[0] {
        d.bias[0] += 0.5;
    }
    let other_model = emit(&other_net, &other_repaired, 5).1;
    let (lower, upper) = &regions[0];
    let mut inputs: Vec<[f32; 5]> = vec![std::array::from_fn(|i| {
        ((lower[i] + upper[i]) / 2.0) as f32
    })];
    for k in 0..11 {
        inputs.push(std::array::from_fn(|i| {
            ((((k * 5 + i) as f32) * 0.618).fract() - 0.5) * 0.9
        }));
    }
    Some(Fixture {
        blob: AlignedBlob::new(&first.base_blob),
        public: key.verifying_key().to_bytes(),
        signed,
        unsigned: first.bytes,
        other_model,
        different,
        regions,
        inputs,
    })
}

macro_rules! fixture_or_skip {
    () => {
        match fixture() {
            Some(f) => f,
            None => {
                eprintln!(
                    "SKIP: ACAS Xu data not found (set PROREPAIR_DATA or add ../shared/data)"
                );
                return;
            }
        }
    };
}

/// Outputs of `model` on every input.
fn outputs(model: &Running<'_>, inputs: &[[f32; 5]]) -> Vec<[f32; 5]> {
    let mut arena = vec![0.0f32; model.required_arena_len()];
    inputs
        .iter()
        .map(|x| {
            let mut y = [0.0f32; 5];
            model.evaluate(x, &mut arena, &mut y).unwrap();
            y
        })
        .collect()
}

/// Boot from `flash` and return (sequence, source, outputs of the booted model).
fn boot_outputs(
    f: &Fixture,
    flash: &mut SimFlash,
    key: &[u8; 32],
) -> (u32, BootSource, Vec<[f32; 5]>) {
    let base = f.blob.model().unwrap();
    let mut buf = vec![0u8; SLOT];
    let mut ram = vec![0.0f32; 1 << 16];
    let booted = ota::boot(flash, &base, Some(key), &mut buf, &mut ram);
    let seq = booted.patch.map_or(0, |p| p.sequence());
    assert_eq!(seq, booted.model.patch_sequence());
    (seq, booted.source, outputs(&booted.model, &f.inputs))
}

/// The outputs of the base model with `patch` applied directly (no OTA).
fn expected(f: &Fixture, patch: Option<&[u8]>) -> Vec<[f32; 5]> {
    let base = f.blob.model().unwrap();
    let Some(bytes) = patch else {
        return outputs(&Running::Plain(base), &f.inputs);
    };
    let p = Patch::from_bytes(bytes).unwrap();
    let mut ram = vec![0.0f32; p.required_ram_len()];
    let m = base.with_patch(&p, &mut ram).unwrap();
    outputs(&Running::WeightDelta(m, p), &f.inputs)
}

fn bits(rows: &[[f32; 5]]) -> Vec<[u32; 5]> {
    rows.iter().map(|r| r.map(f32::to_bits)).collect()
}

/// A flash running signed patch 1, with that model's outputs.
fn running_v1(f: &Fixture) -> SimFlash {
    let mut flash = SimFlash::new(SLOT);
    let base = f.blob.model().unwrap();
    ota::install(&mut flash, &base, Some(&f.public), &f.signed[0]).unwrap();
    flash
}

#[test]
fn signed_patch_installs_boots_and_survives_a_second_update() {
    let f = fixture_or_skip!();
    let base = f.blob.model().unwrap();
    let mut flash = SimFlash::new(SLOT);
    // An empty flash boots the base model.
    let (seq, source, out) = boot_outputs(f, &mut flash, &f.public);
    assert_eq!((seq, source), (0, BootSource::Base));
    assert_eq!(bits(&out), bits(&expected(f, None)));

    let record = ota::install(&mut flash, &base, Some(&f.public), &f.signed[0]).unwrap();
    assert_eq!((record.slot, record.counter), (Some(Slot::A), 1));
    let (seq, source, out) = boot_outputs(f, &mut flash, &f.public);
    assert_eq!((seq, source), (1, BootSource::Slot(Slot::A)));
    assert_eq!(bits(&out), bits(&expected(f, Some(&f.signed[0]))));
    assert_ne!(
        bits(&out),
        bits(&expected(f, None)),
        "the patch changes nothing"
    );

    let record = ota::install(&mut flash, &base, Some(&f.public), &f.different).unwrap();
    assert_eq!((record.slot, record.counter), (Some(Slot::B), 4));
    let (seq, source, out) = boot_outputs(f, &mut flash, &f.public);
    assert_eq!((seq, source), (4, BootSource::Slot(Slot::B)));
    assert_eq!(bits(&out), bits(&expected(f, Some(&f.different))));
    assert_ne!(bits(&out), bits(&expected(f, Some(&f.signed[0]))));

    // Slot B damaged after the commit (bit rot): boot falls back to slot A, verified.
    flash.area_mut(Area::SlotB)[200] ^= 0x10;
    let (seq, source, out) = boot_outputs(f, &mut flash, &f.public);
    assert_eq!((seq, source), (1, BootSource::FallbackSlot(Slot::A)));
    assert_eq!(bits(&out), bits(&expected(f, Some(&f.signed[0]))));
    // ... and a patch at or below the stored counter (4) is still refused.
    let err = ota::install(&mut flash, &base, Some(&f.public), &f.signed[2]).unwrap_err();
    assert_eq!(err, Error::StalePatch);
}

/// Install `bytes` on a flash running patch 1: it must be refused, leave the flash
/// byte-identical, and the device must still boot patch 1 with identical outputs.
fn assert_refused(f: &Fixture, flash: &mut SimFlash, bytes: &[u8]) -> Error {
    let base = f.blob.model().unwrap();
    let before = flash.areas().clone();
    let err = ota::install(flash, &base, Some(&f.public), bytes).expect_err("accepted");
    assert!(flash.areas() == &before, "a refused patch changed storage");
    err
}

/// Offer `refuse` every single-bit and whole-byte flip of every byte of `good`, the
/// bit-0 and whole-byte flips again with the CRC fixed up (a forger's first try: only
/// structure checks or the signature can stop them), every truncation and one extra
/// byte; `refuse` installs and returns the error (panicking if accepted). Returns how
/// many were refused by the CRC and, with the CRC fixed up, by the signature.
fn refuse_every_change(good: &[u8], mut refuse: impl FnMut(&[u8]) -> Error) -> (usize, usize) {
    let (mut by_crc, mut by_signature) = (0usize, 0usize);
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.to_vec();
            bad[i] ^= 1 << bit;
            if refuse(&bad) == Error::CrcMismatch {
                by_crc += 1;
            }
        }
        for mask in [0x01u8, 0xFF] {
            let mut bad = good.to_vec();
            bad[i] ^= mask;
            if mask == 0xFF && refuse(&bad) == Error::CrcMismatch {
                by_crc += 1;
            }
            // Bytes 12..16 are the CRC itself (then it is recomputed, undoing nothing).
            let fixed = prorepair_core::patch::patch_crc(&bad).to_le_bytes();
            bad[12..16].copy_from_slice(&fixed);
            if bad == good {
                continue;
            }
            if refuse(&bad) == Error::BadSignature {
                by_signature += 1;
            }
        }
    }
    for len in 0..good.len() {
        refuse(&good[..len]);
    }
    let mut longer = good.to_vec();
    longer.push(0);
    refuse(&longer);
    (by_crc, by_signature)
}

#[test]
fn every_byte_change_and_truncation_of_a_signed_patch_is_refused() {
    let f = fixture_or_skip!();
    let mut flash = running_v1(f);
    let v1 = expected(f, Some(&f.signed[0]));
    let good = &f.signed[1];
    let (by_crc, by_signature) =
        refuse_every_change(good, |bad| assert_refused(f, &mut flash, bad));
    eprintln!(
        "{} bytes x 9 flips (8 bits, whole byte): {by_crc} refused by the CRC; 2 flips with \
         the CRC fixed up: {by_signature} refused by the signature (the rest by structure \
         checks first)",
        good.len()
    );
    // Payload bytes with a fixed CRC get past every structural check: only the
    // signature stops them.
    assert!(by_signature > good.len(), "{by_signature}");
    let (seq, _, out) = boot_outputs(f, &mut flash, &f.public);
    assert_eq!(seq, 1);
    assert_eq!(bits(&out), bits(&v1));
    // The untouched patch is still accepted afterwards.
    let base = f.blob.model().unwrap();
    ota::install(&mut flash, &base, Some(&f.public), good).unwrap();
}

#[test]
fn another_model_older_sequence_wrong_key_and_unsigned_are_refused() {
    let f = fixture_or_skip!();
    let base = f.blob.model().unwrap();
    let mut flash = SimFlash::new(SLOT);
    ota::install(&mut flash, &base, Some(&f.public), &f.signed[1]).unwrap();
    let v2 = expected(f, Some(&f.signed[1]));
    let wrong_key = sign::generate().unwrap();
    let mut wrongly_signed = f.unsigned.clone();
    // Sequence 3 (fresh), signed by someone else.
    wrongly_signed.copy_from_slice(&f.signed[2]);
    wrongly_signed[18..20].copy_from_slice(&0u16.to_le_bytes());
    wrongly_signed[76..84].fill(0); // the signer's key id
    let n = wrongly_signed.len();
    wrongly_signed[n - 64..].fill(0);
    let fixed = prorepair_core::patch::patch_crc(&wrongly_signed).to_le_bytes();
    wrongly_signed[12..16].copy_from_slice(&fixed);
    let unsigned_v3 = wrongly_signed.clone();
    sign::sign_patch(&mut wrongly_signed, &wrong_key).unwrap();
    assert!(Patch::from_bytes(&unsigned_v3).is_ok());

    let cases: [(&str, &[u8], Error); 5] = [
        ("another model", &f.other_model, Error::WrongBaseModel),
        ("older sequence", &f.signed[0], Error::StalePatch),
        ("replayed sequence", &f.signed[1], Error::StalePatch),
        ("wrong key", &wrongly_signed, Error::BadSignature),
        ("unsigned", &unsigned_v3, Error::UnsignedPatch),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(assert_refused(f, &mut flash, bytes), want, "{what}");
        let (seq, source, out) = boot_outputs(f, &mut flash, &f.public);
        assert_eq!((seq, source), (2, BootSource::Slot(Slot::A)), "{what}");
        assert_eq!(bits(&out), bits(&v2), "{what}");
    }
    // A device configured with another key refuses even the vendor's patch, at boot
    // too: it falls back to the base model rather than run an unverified patch.
    let other_public = wrong_key.verifying_key().to_bytes();
    let (seq, source, out) = boot_outputs(f, &mut flash, &other_public);
    assert_eq!((seq, source), (0, BootSource::FallbackBase));
    assert_eq!(bits(&out), bits(&expected(f, None)));
    // Not a curve point: a distinct error.
    let p = Patch::from_bytes(&f.signed[2]).unwrap();
    let mut bad_key = [0u8; 32];
    bad_key[0] = 2;
    assert!(matches!(
        p.check_signature(Some(&bad_key)),
        Err(Error::BadPublicKey | Error::BadSignature)
    ));
    // The good one still goes in.
    ota::install(&mut flash, &base, Some(&f.public), &f.signed[2]).unwrap();
}

/// Steps (erases + writes) of a clean install of `bytes` on `flash`.
fn count_steps(f: &Fixture, flash: &SimFlash, bytes: &[u8]) -> usize {
    let mut probe = flash.clone();
    let base = f.blob.model().unwrap();
    ota::install(&mut probe, &base, Some(&f.public), bytes).unwrap();
    probe.steps() - flash.steps()
}

fn power_fail_everywhere(f: &Fixture, start: &SimFlash, new: &[u8], old_seq: u32) {
    let base = f.blob.model().unwrap();
    let old = expected(
        f,
        (old_seq > 0).then(|| f.signed[old_seq as usize - 1].as_slice()),
    );
    let new_out = expected(f, Some(new));
    let new_seq = Patch::from_bytes(new).unwrap().sequence();
    let steps = count_steps(f, start, new);
    assert!(steps >= 4, "{steps}");
    let (mut saw_old, mut saw_new) = (0, 0);
    for k in 0..=steps {
        let mut flash = start.clone();
        flash.fail_after(k);
        let result = ota::install(&mut flash, &base, Some(&f.public), new);
        assert_eq!(result.is_ok(), k == steps, "step {k}");
        flash.reboot();
        let (seq, _, out) = boot_outputs(f, &mut flash, &f.public);
        // Old or new as a whole: every output of one of the two models.
        if seq == new_seq {
            assert_eq!(
                bits(&out),
                bits(&new_out),
                "step {k}: new sequence, other outputs"
            );
            saw_new += 1;
        } else {
            assert_eq!(seq, old_seq, "step {k}");
            assert_eq!(
                bits(&out),
                bits(&old),
                "step {k}: old sequence, other outputs"
            );
            saw_old += 1;
            // The interrupted update can be retried after the reboot.
            ota::install(&mut flash, &base, Some(&f.public), new).unwrap();
            let (seq, _, out) = boot_outputs(f, &mut flash, &f.public);
            assert_eq!(seq, new_seq);
            assert_eq!(bits(&out), bits(&new_out));
        }
    }
    eprintln!("{steps} steps: old model after {saw_old} interruptions, new after {saw_new}");
    assert!(saw_old >= steps - 1 && saw_new >= 1);
}

#[test]
fn power_fail_at_every_write_step_boots_the_old_or_the_new_model() {
    let f = fixture_or_skip!();
    // First update on an empty flash (old = base), then an update over patch 1.
    power_fail_everywhere(f, &SimFlash::new(SLOT), &f.signed[1], 0);
    power_fail_everywhere(f, &running_v1(f), &f.signed[1], 1);
    // And a third over the second (slot B to A, record B to A).
    let mut two = running_v1(f);
    let base = f.blob.model().unwrap();
    ota::install(&mut two, &base, Some(&f.public), &f.signed[1]).unwrap();
    power_fail_everywhere(f, &two, &f.signed[2], 2);
}

#[test]
fn guard_flags_inputs_outside_the_verified_box_and_monitors_property_2() {
    let f = fixture_or_skip!();
    let base = f.blob.model().unwrap();
    let patch = Patch::from_bytes(&f.signed[0]).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let repaired = base.with_patch(&patch, &mut ram).unwrap();
    // Property 2's unsafe set: y_j <= y_0 for j = 1..4 (COC maximal), as rows
    // c . y <= d with c = e_j - e_0.
    let mut rows = Vec::new();
    for j in 1..5 {
        let mut row = [0.0f32; 6];
        row[0] = -1.0;
        row[j] = 1.0;
        rows.extend(row);
    }
    const STRONG_RIGHT: u32 = 4;
    let monitor = Monitor::new(&rows, 5, STRONG_RIGHT).unwrap();
    let mut guard = Guard::new(repaired, Some(patch), Some(monitor), Choice::Lowest).unwrap();
    let mut arena = vec![0.0f32; repaired.required_arena_len()];
    let (lo, up) = &f.regions[0];
    let mut inside = 0;
    // A grid over the verified box: the repaired model is proven there, so the monitor
    // never trips.
    for k in 0..243u32 {
        let x: [f32; 5] = std::array::from_fn(|i| {
            let t = [0.01, 0.5, 0.99][((k / 3u32.pow(i as u32)) % 3) as usize];
            (lo[i] + t * (up[i] - lo[i])) as f32
        });
        let mut y = [0.0f32; 5];
        let d = guard.run(&x, &mut arena, &mut y).unwrap();
        if d.inside {
            inside += 1;
            assert!(
                !d.tripped,
                "monitor tripped inside the proven box at {x:?}: {y:?}"
            );
        }
    }
    assert_eq!(inside, 243, "the grid lies inside the box");
    // Far outside the box: flagged.
    let mut y = [0.0f32; 5];
    let d = guard
        .run(&[-0.3, 0.0, 0.0, -0.4, 0.4], &mut arena, &mut y)
        .unwrap();
    assert!(!d.inside);
    let c = guard.counters();
    assert_eq!(
        (c.inside, c.outside, c.monitor_trips),
        (inside, 244 - inside, u32::from(d.tripped))
    );

    // The unrepaired model violates property 2 in the box: the monitor catches it.
    let mut plain = Guard::new(base, None, Some(monitor), Choice::Lowest).unwrap();
    let mut trips = 0;
    for k in 0..243u32 {
        let x: [f32; 5] = std::array::from_fn(|i| {
            let t = [0.01, 0.5, 0.99][((k / 3u32.pow(i as u32)) % 3) as usize];
            (lo[i] + t * (up[i] - lo[i])) as f32
        });
        let d = plain.run(&x, &mut arena, &mut y).unwrap();
        assert!(!d.inside, "no patch: nothing is verified");
        let unsafe_ = (1..5).all(|j| y[j] <= y[0]);
        assert_eq!(d.tripped, unsafe_);
        if d.tripped {
            assert_eq!(d.advisory, STRONG_RIGHT);
            trips += 1;
        }
    }
    assert!(trips > 0, "N2,1 has no prop-2 counterexample on the grid");
    assert_eq!(plain.counters().monitor_trips, trips);
    // A guard refuses a patch that is not the applied one.
    assert_eq!(
        Guard::new(base, Some(patch), None, Choice::Lowest).unwrap_err(),
        Error::StalePatch
    );
}

#[test]
fn patch_modules_repair_installs_over_a_weight_delta_and_boots_bit_exact() {
    use prorepair_host::repair::patchmodules;
    let f = fixture_or_skip!();
    let Some((net, r)) = prorepair_tests::repair_n21_prop2_modules() else {
        eprintln!("SKIP: ACAS Xu N2,1 not found");
        return;
    };
    let key = sign::generate().unwrap();
    let public = key.verifying_key().to_bytes();
    let emit = |seq| {
        let e =
            prorepair_host::patch::modules::emit(&net, &r.modules, seq, &r.outcomes[0].partition)
                .unwrap();
        assert_eq!(e.base_blob, f.blob.bytes(), "one base blob for both kinds");
        let mut bytes = e.bytes;
        sign::sign_patch(&mut bytes, &key).unwrap();
        bytes
    };
    let (m2, m3) = (emit(2), emit(3));
    // The weight-delta repair (signed by this key), then the modules over it.
    let mut delta = f.unsigned.clone();
    sign::sign_patch(&mut delta, &key).unwrap();
    let base = f.blob.model().unwrap();
    let mut flash = SimFlash::new(SLOT);
    ota::install(&mut flash, &base, Some(&public), &delta).unwrap();
    ota::install(&mut flash, &base, Some(&public), &m2).unwrap();

    // Inputs: the fixture's (mostly outside the box), a grid over the box, and points
    // just outside its faces. The box: the module's indicator (the property box rounded
    // outward to f32; the repair's partition, the verified regions, covers all of it).
    let patchmodules::Indicator::Box(ind) = &r.modules.entries[0].0 else {
        panic!("a box indicator")
    };
    let (lo, up) = (&ind.lower, &ind.upper);
    let mut inputs: Vec<Vec<f32>> = f.inputs.iter().map(|x| x.to_vec()).collect();
    for k in 0..243u32 {
        inputs.push(
            (0..5)
                .map(|i| {
                    let t = [0.0, 0.37, 1.0][((k / 3u32.pow(i)) % 3) as usize];
                    (lo[i as usize] + t * (up[i as usize] - lo[i as usize])) as f32
                })
                .collect(),
        );
    }
    for i in 0..5 {
        let mut x: Vec<f32> = (0..5).map(|j| ((lo[j] + up[j]) / 2.0) as f32).collect();
        x[i] = (up[i] as f32).next_up().next_up();
        inputs.push(x.clone());
        x[i] = (lo[i] as f32).next_down().next_down();
        inputs.push(x);
    }
    let want = prorepair_host::patch::modules::eval_device(&net, &m2, &inputs).unwrap();

    let mut buf = vec![0u8; SLOT];
    let mut ram = vec![0.0f32; 1 << 16];
    let booted = ota::boot(&mut flash, &base, Some(&public), &mut buf, &mut ram);
    assert_eq!(booted.source, BootSource::Slot(Slot::B));
    assert!(matches!(booted.model, Running::Modules(_)));
    assert_eq!(booted.model.patch_sequence(), 2);
    let mut arena = vec![0.0f32; booted.model.required_arena_len()];
    let mut base_arena = vec![0.0f32; base.required_arena_len()];
    let mut monitor_rows = Vec::new();
    for j in 1..5 {
        let mut row = [0.0f32; 6];
        row[0] = -1.0;
        row[j] = 1.0;
        monitor_rows.extend(row);
    }
    let monitor = Monitor::new(&monitor_rows, 5, 4).unwrap();
    let mut guard = Guard::for_booted(&booted, Some(monitor), Choice::Lowest).unwrap();
    let (mut inside, mut changed) = (0u32, 0u32);
    for (x, w) in inputs.iter().zip(&want) {
        let mut y = [0.0f32; 5];
        booted.model.evaluate(x, &mut arena, &mut y).unwrap();
        assert_eq!(
            y.map(f32::to_bits).to_vec(),
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{x:?}"
        );
        let d = guard.run(x, &mut arena, &mut y).unwrap();
        let in_box = x
            .iter()
            .zip(lo.iter().zip(up))
            .all(|(&v, (&l, &u))| l <= f64::from(v) && f64::from(v) <= u);
        // Inside is at most the indicator box.
        if d.inside {
            assert!(in_box, "{x:?}");
            inside += 1;
            assert!(!d.tripped, "property 2 is proven inside: {x:?} {y:?}");
        }
        let mut y0 = [0.0f32; 5];
        base.evaluate(x, &mut base_arena, &mut y0).unwrap();
        if !in_box {
            assert_eq!(
                y.map(f32::to_bits),
                y0.map(f32::to_bits),
                "outside: the base, {x:?}"
            );
        } else if y != y0 {
            changed += 1;
        }
    }
    assert!(
        inside >= 200,
        "{inside} of the 243 grid points counted inside"
    );
    assert!(changed > 0, "the module acts inside the box");
    let c = guard.counters();
    assert_eq!(c.inside + c.outside, inputs.len() as u32);
    assert_eq!(c.inside, inside);

    // Tamper and replay against the running kind-2 patch: refused, flash unchanged.
    let before = flash.areas().clone();
    let (by_crc, by_signature) = refuse_every_change(&m3, |bad| {
        let err = ota::install(&mut flash, &base, Some(&public), bad).expect_err("accepted");
        assert!(flash.areas() == &before, "a refused patch changed storage");
        err
    });
    eprintln!(
        "kind 2: {} bytes: {by_crc} flips refused by the CRC, {by_signature} CRC-fixed \
         forgeries by the signature",
        m3.len()
    );
    assert!(
        by_signature > m3.len(),
        "{by_signature} of {} bytes",
        m3.len()
    );
    for old in [&m2, &delta] {
        assert_eq!(
            ota::install(&mut flash, &base, Some(&public), old),
            Err(Error::StalePatch)
        );
    }
    assert!(flash.areas() == &before);
    ota::install(&mut flash, &base, Some(&public), &m3).unwrap();
    let mut buf = vec![0u8; SLOT];
    let mut ram = vec![0.0f32; 1 << 16];
    let booted = ota::boot(&mut flash, &base, Some(&public), &mut buf, &mut ram);
    assert_eq!(
        (booted.source, booted.model.patch_sequence()),
        (BootSource::Slot(Slot::A), 3)
    );
}
