//! Patch kind 2 (patch modules): encode, validate, bind, evaluate base + indicators +
//! modules against an f64 oracle; outside every indicator the output is the base
//! model's, bit for bit; every kind of damage gives its own error and nothing panics.

mod common;

use common::{Aligned, encode};
use prorepair_core::format::encode::LayerSpec;
use prorepair_core::patch::modules::encode::{self as menc, IndicatorSpec, ModuleSpec};
use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
use prorepair_core::patch::{PATCH_HEADER_SIZE, Patch};
use prorepair_core::{Error, Model};

const W1: [f32; 12] = [
    0.5, -0.2, 0.1, 0.3, 0.8, -0.5, -0.7, 0.2, 0.4, 0.1, -0.3, 0.9,
];
const B1: [f32; 4] = [0.1, -0.1, 0.05, 0.0];
const W2: [f32; 8] = [1.0, -0.5, 0.25, 0.75, -1.0, 0.5, 0.3, -0.2];
const B2: [f32; 2] = [0.2, -0.3];

fn base_layers() -> [LayerSpec<'static>; 3] {
    [
        LayerSpec::Dense {
            in_dim: 3,
            out_dim: 4,
            weight: &W1,
            bias: &B1,
        },
        LayerSpec::Relu,
        LayerSpec::Dense {
            in_dim: 4,
            out_dim: 2,
            weight: &W2,
            bias: &B2,
        },
    ]
}

fn base() -> Aligned {
    encode(&[3], &base_layers())
}

/// Module A: box [0, 0.5]^3, 3 -> 5 -> 2. Module B: label 1, 3 -> 2.
fn params_a() -> Vec<f32> {
    (0..(15 + 5 + 10 + 2))
        .map(|i| ((i * 29 % 23) as f32 - 11.0) / 10.0)
        .collect()
}

fn params_b() -> Vec<f32> {
    (0..8).map(|i| (i as f32 - 4.0) / 8.0).collect()
}

const LO: [f32; 3] = [0.0, 0.0, 0.0];
const UP: [f32; 3] = [0.5, 0.5, 0.5];
const DIMS_A: [usize; 3] = [3, 5, 2];
const DIMS_B: [usize; 2] = [3, 2];

fn patch_bytes(model: &Model<'_>, with_label: bool) -> Vec<u8> {
    let (pa, pb) = (params_a(), params_b());
    let mut specs = vec![ModuleSpec {
        indicator: IndicatorSpec::Box {
            lower: &LO,
            upper: &UP,
        },
        dims: &DIMS_A,
        params: &pa,
    }];
    if with_label {
        specs.push(ModuleSpec {
            indicator: IndicatorSpec::Label(1),
            dims: &DIMS_B,
            params: &pb,
        });
    }
    let regions = [0.0f32, 0.0, 0.0, 0.5, 0.5, 0.5];
    let n = menc::encoded_len(&specs, &regions).unwrap();
    let mut out = vec![0u8; n];
    assert_eq!(menc::write(model, &specs, 3, &regions, &mut out), Ok(n));
    out
}

/// f64 oracle of an MLP with row-major params (ReLU between layers).
fn mlp(dims: &[usize], p: &[f32], x: &[f64]) -> Vec<f64> {
    let mut h = x.to_vec();
    let mut k = 0;
    for (l, w) in dims.windows(2).enumerate() {
        let (i, o) = (w[0], w[1]);
        let mut y = vec![0.0; o];
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = f64::from(p[k + i * o + r])
                + (0..i)
                    .map(|c| f64::from(p[k + r * i + c]) * h[c])
                    .sum::<f64>();
        }
        k += i * o + o;
        if l + 2 < dims.len() {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        h = y;
    }
    h
}

fn base_ref(x: &[f64]) -> Vec<f64> {
    let w1: Vec<f32> = W1.iter().chain(&B1).copied().collect();
    let w2: Vec<f32> = W2.iter().chain(&B2).copied().collect();
    let h: Vec<f64> = mlp(&[3, 4], &w1, x)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    mlp(&[4, 2], &w2, &h)
}

/// CRC-32/ISO-HDLC over bytes 0..12 and 16.., written at 12 (after editing a patch).
fn fix_crc(b: &mut [u8]) {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in b[..12].iter().chain(&b[16..]) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    b[12..16].copy_from_slice(&(!crc).to_le_bytes());
}

#[test]
fn evaluates_base_plus_modules_and_leaves_other_inputs_bit_for_bit() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let bytes = patch_bytes(&model, true);
    let patch = ModulePatch::from_bytes(&bytes).unwrap();
    assert_eq!(patch.module_count(), 2);
    assert_eq!(patch.sequence(), 3);
    assert_eq!(patch.region_count(), 1);
    let mut ram = vec![0f32; patch.required_ram_len()];
    let mm = ModulesModel::new(&model, &patch, &mut ram).unwrap();
    let mut arena = vec![0f32; mm.required_arena_len()];
    let mut base_arena = vec![0f32; model.required_arena_len()];
    let (mut inside, mut label, mut neither) = (0, 0, 0);
    let mut seed = 12345u64;
    for _ in 0..2000 {
        // A small LCG over [-1, 1.5]^3, with a third of the points inside the box.
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let inside_draw = next() < 0.3;
        let x: Vec<f32> = (0..3)
            .map(|_| {
                if inside_draw {
                    next() * 0.5
                } else {
                    next() * 2.5 - 1.0
                }
            })
            .collect();
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut out = [0f32; 2];
        mm.evaluate(&x, &mut arena, &mut out).unwrap();
        let mut base_out = [0f32; 2];
        model.evaluate(&x, &mut base_arena, &mut base_out).unwrap();
        let yb = base_ref(&xd);
        let mut want = yb.clone();
        let in_box = x
            .iter()
            .zip(LO.iter().zip(&UP))
            .all(|(&v, (&l, &u))| l <= v && v <= u);
        if in_box {
            inside += 1;
            want.iter_mut()
                .zip(mlp(&DIMS_A, &params_a(), &xd))
                .for_each(|(a, b)| *a += b);
        }
        let fires_label = base_out[1] > base_out[0];
        if fires_label {
            label += 1;
            want.iter_mut()
                .zip(mlp(&DIMS_B, &params_b(), &xd))
                .for_each(|(a, b)| *a += b);
        }
        for (g, w) in out.iter().zip(&want) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5,
                "x {x:?}: {out:?} vs {want:?}"
            );
        }
        if !in_box && !fires_label {
            neither += 1;
            assert_eq!(out.map(f32::to_bits), base_out.map(f32::to_bits), "x {x:?}");
        }
    }
    assert!(
        inside > 10 && label > 10 && neither > 10,
        "{inside} {label} {neither}"
    );
}

#[test]
fn every_kind_of_damage_has_its_own_error() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let good = patch_bytes(&model, true);
    let edit = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        fix_crc(&mut b);
        ModulePatch::from_bytes(&b).err()
    };
    let rec = PATCH_HEADER_SIZE;
    assert_eq!(
        edit(rec, &9u16.to_le_bytes()),
        Some(Error::BadPatchModule),
        "indicator kind"
    );
    assert_eq!(
        edit(rec + 2, &0u16.to_le_bytes()),
        Some(Error::BadPatchModule),
        "layer count 0"
    );
    assert_eq!(
        edit(rec + 2, &9u16.to_le_bytes()),
        Some(Error::BadPatchModule),
        "too many layers"
    );
    assert_eq!(
        edit(rec + 4, &1u32.to_le_bytes()),
        Some(Error::BadPatchModule),
        "label on a box"
    );
    assert_eq!(
        edit(rec + 16, &0u32.to_le_bytes()),
        Some(Error::BadPatchModule),
        "zero width"
    );
    // Box corner 0: lower above upper.
    let box_at = rec + 12 + 4 * 3;
    assert_eq!(
        edit(box_at, &2.0f32.to_le_bytes()),
        Some(Error::BadPatchModule),
        "empty box"
    );
    assert_eq!(
        edit(box_at + 24, &f32::NAN.to_le_bytes()),
        Some(Error::NonFiniteParameter),
        "NaN weight"
    );
    assert_eq!(
        edit(64, &0u32.to_le_bytes()),
        Some(Error::BadPatchModule),
        "no module"
    );
    assert_eq!(
        edit(64, &1u32.to_le_bytes()),
        Some(Error::BadPatchPayload),
        "count too small"
    );
    assert_eq!(
        edit(16, &1u16.to_le_bytes()),
        Some(Error::UnknownPatchKind),
        "kind 1"
    );
    assert_eq!(edit(80, &[1]), Some(Error::NonZeroReserved), "reserved");
    let mut bad = good.clone();
    bad[100] ^= 1;
    assert_eq!(
        ModulePatch::from_bytes(&bad).err(),
        Some(Error::CrcMismatch)
    );
    assert_eq!(
        ModulePatch::from_bytes(&good[..good.len() - 1]).err(),
        Some(Error::Truncated)
    );
    assert_eq!(
        ModulePatch::from_bytes(&good[..50]).err(),
        Some(Error::Truncated)
    );
    // A weight-delta reader refuses kind 2 with its own error.
    assert_eq!(
        Patch::from_bytes(&good).err(),
        Some(Error::UnknownPatchKind)
    );

    // Binding: another base model; a module that does not fit; a label out of range.
    let other = encode(
        &[3],
        &[LayerSpec::Dense {
            in_dim: 3,
            out_dim: 2,
            weight: &[0.0; 6],
            bias: &[0.0; 2],
        }],
    );
    let other = Model::from_bytes(other.bytes()).unwrap();
    let patch = ModulePatch::from_bytes(&good).unwrap();
    assert_eq!(
        patch.check_binding(&other).err(),
        Some(Error::WrongBaseModel)
    );
    let p4: Vec<f32> = vec![0.5; 4 * 2 + 2];
    let wide = [ModuleSpec {
        indicator: IndicatorSpec::Label(0),
        dims: &[4, 2],
        params: &p4,
    }];
    let mut b = vec![0u8; menc::encoded_len(&wide, &[]).unwrap()];
    menc::write(&model, &wide, 1, &[], &mut b).unwrap();
    let p = ModulePatch::from_bytes(&b).unwrap();
    assert_eq!(
        p.check_binding(&model).err(),
        Some(Error::PatchModuleMismatch)
    );
    let pb = params_b();
    let far = [ModuleSpec {
        indicator: IndicatorSpec::Label(7),
        dims: &DIMS_B,
        params: &pb,
    }];
    let mut b = vec![0u8; menc::encoded_len(&far, &[]).unwrap()];
    menc::write(&model, &far, 1, &[], &mut b).unwrap();
    let p = ModulePatch::from_bytes(&b).unwrap();
    assert_eq!(
        p.check_binding(&model).err(),
        Some(Error::PatchModuleMismatch)
    );
    // RAM and arena sizes.
    let mut small = vec![0f32; patch.required_ram_len() - 1];
    assert_eq!(
        ModulesModel::new(&model, &patch, &mut small).err(),
        Some(Error::PatchRamTooSmall)
    );
    let mut ram = vec![0f32; patch.required_ram_len()];
    let mm = ModulesModel::new(&model, &patch, &mut ram).unwrap();
    let mut arena = vec![0f32; mm.required_arena_len() - 1];
    let mut out = [0f32; 2];
    assert_eq!(
        mm.evaluate(&[0.0; 3], &mut arena, &mut out).err(),
        Some(Error::ArenaTooSmall)
    );
    let mut arena = vec![0f32; mm.required_arena_len()];
    assert_eq!(
        mm.evaluate(&[0.0; 2], &mut arena, &mut out).err(),
        Some(Error::InputLength)
    );
    // Encoder refusals.
    let bad_params = [ModuleSpec {
        indicator: IndicatorSpec::Label(0),
        dims: &DIMS_B,
        params: &p4,
    }];
    assert_eq!(
        menc::encoded_len(&bad_params, &[]).err(),
        Some(Error::BadPatchModule)
    );
    assert_eq!(
        menc::encoded_len(&[], &[]).err(),
        Some(Error::BadPatchModule)
    );
}

#[test]
fn single_byte_corruptions_never_panic() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let good = patch_bytes(&model, true);
    for at in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut b = good.clone();
            b[at] ^= flip;
            if !(12..16).contains(&at) {
                fix_crc(&mut b);
            }
            if let Ok(p) = ModulePatch::from_bytes(&b)
                && p.check_binding(&model).is_ok()
            {
                let mut ram = vec![0f32; p.required_ram_len()];
                let mm = ModulesModel::new(&model, &p, &mut ram).unwrap();
                let mut arena = vec![0f32; mm.required_arena_len()];
                let mut out = [0f32; 2];
                mm.evaluate(&[0.25; 3], &mut arena, &mut out).unwrap();
            }
        }
    }
}

#[test]
fn module_patches_are_signed_and_checked_like_weight_deltas() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let mut bytes = patch_bytes(&model, false);
    let kp = salty::Keypair::from(&[7u8; 32]);
    let public = kp.public.compressed.to_bytes();
    // Unsigned: an unkeyed device accepts it, a keyed one refuses it.
    let unsigned = ModulePatch::from_bytes(&bytes).unwrap();
    assert_eq!(unsigned.check_signature(None), Ok(()));
    assert_eq!(
        unsigned.check_signature(Some(&public)),
        Err(Error::UnsignedPatch)
    );
    prorepair_core::patch::encode::seal_ed25519(&mut bytes, &public, |m| kp.sign(m).to_bytes())
        .unwrap();
    let signed = ModulePatch::from_bytes(&bytes).unwrap();
    assert_eq!(signed.check_signature(Some(&public)), Ok(()));
    assert!(signed.signer_key_id().is_some());
    let other = salty::Keypair::from(&[8u8; 32])
        .public
        .compressed
        .to_bytes();
    assert_eq!(
        signed.check_signature(Some(&other)),
        Err(Error::BadSignature)
    );
    // A changed module weight is caught by the CRC, and with the CRC fixed up by the
    // signature.
    let mut tampered = bytes.clone();
    tampered[PATCH_HEADER_SIZE + 40] ^= 0x01;
    assert_eq!(
        ModulePatch::from_bytes(&tampered).err(),
        Some(Error::CrcMismatch)
    );
    let crc = prorepair_core::patch::patch_crc(&tampered);
    tampered[12..16].copy_from_slice(&crc.to_le_bytes());
    let parsed = ModulePatch::from_bytes(&tampered).unwrap();
    assert_eq!(
        parsed.check_signature(Some(&public)),
        Err(Error::BadSignature)
    );
}

/// Module at feature layer 1 (the ReLU after the first Dense, width 4): box on the input,
/// 4 -> 5 -> 2; plus a label module at the same layer, 4 -> 2.
const DIMS_F: [usize; 3] = [4, 5, 2];
const DIMS_FL: [usize; 2] = [4, 2];

fn params_f() -> Vec<f32> {
    (0..(20 + 5 + 10 + 2))
        .map(|i| ((i * 17 % 19) as f32 - 9.0) / 8.0)
        .collect()
}

fn feature_patch(model: &Model<'_>, dims: &[usize], layers: &[usize]) -> Result<Vec<u8>, Error> {
    let (pf, pl) = (
        params_f(),
        (0..10).map(|i| (i as f32 - 5.0) / 4.0).collect::<Vec<_>>(),
    );
    let pf = &pf[..dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>()];
    let specs = [
        ModuleSpec {
            indicator: IndicatorSpec::Box {
                lower: &LO,
                upper: &UP,
            },
            dims,
            params: pf,
        },
        ModuleSpec {
            indicator: IndicatorSpec::Label(0),
            dims: &DIMS_FL,
            params: &pl,
        },
    ];
    let n = menc::encoded_len_with_input_layers(&specs, layers, &[])?;
    let mut out = vec![0u8; n];
    menc::write_with_input_layers(model, &specs, layers, 4, &[], &mut out)?;
    Ok(out)
}

#[test]
fn feature_layer_modules_read_the_kth_activation() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let bytes = feature_patch(&model, &DIMS_F, &[1, 1]).unwrap();
    let patch = ModulePatch::from_bytes(&bytes).unwrap();
    let recs: Vec<_> = patch.modules().collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        (recs[0].input_layer, recs[0].in_dim(), recs[0].box_len()),
        (1, 4, 3)
    );
    assert_eq!((recs[1].input_layer, recs[1].box_len()), (1, 0));
    assert_eq!(recs[0].box_bounds(2), Some((0.0, 0.5)));
    assert_eq!(recs[0].box_bounds(3), None);
    // The record header: indicator u16, layer_count u8, input_layer u8.
    assert_eq!(
        &bytes[PATCH_HEADER_SIZE..PATCH_HEADER_SIZE + 4],
        &[1, 0, 2, 1]
    );
    let mut ram = vec![0f32; patch.required_ram_len()];
    let mm = ModulesModel::new(&model, &patch, &mut ram).unwrap();
    // The arena holds the base's, its output copy, the one kept feature (4) and 2 x 5.
    assert_eq!(
        mm.required_arena_len(),
        model.required_arena_len() + 2 + 4 + 10
    );
    let mut arena = vec![0f32; mm.required_arena_len()];
    let (pf, pl) = (
        params_f(),
        (0..10).map(|i| (i as f32 - 5.0) / 4.0).collect::<Vec<_>>(),
    );
    let mut fired = [0usize; 2];
    for t in 0..200 {
        // Half near the box, half spread over [-1, 1]^3 (where the base's label varies).
        let scale = if t < 100 { (40.0, 0.1) } else { (15.0, 1.0) };
        let x: Vec<f32> = (0..3)
            .map(|j| ((t * 7 + j * 13) % 31) as f32 / scale.0 - scale.1)
            .collect();
        let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut want = base_ref(&xf);
        let h: Vec<f64> = {
            let w1: Vec<f32> = W1.iter().chain(&B1).copied().collect();
            mlp(&[3, 4], &w1, &xf)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect()
        };
        let base_label = if want[0] >= want[1] { 0 } else { 1 };
        let inside = x.iter().all(|&v| (0.0..=0.5).contains(&v));
        if inside {
            fired[0] += 1;
            for (y, d) in want.iter_mut().zip(mlp(&DIMS_F, &pf, &h)) {
                *y += d;
            }
        }
        if base_label == 0 {
            fired[1] += 1;
            for (y, d) in want.iter_mut().zip(mlp(&DIMS_FL, &pl, &h)) {
                *y += d;
            }
        }
        let mut out = [0f32; 2];
        mm.evaluate(&x, &mut arena, &mut out).unwrap();
        for (a, b) in out.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{out:?} vs {want:?}");
        }
        if !inside && base_label != 0 {
            let mut plain = [0f32; 2];
            let mut ba = vec![0f32; model.required_arena_len()];
            model.evaluate(&x, &mut ba, &mut plain).unwrap();
            assert_eq!(out.map(f32::to_bits), plain.map(f32::to_bits));
        }
    }
    assert!(fired[0] > 0 && fired[1] > 0 && fired[1] < 200, "{fired:?}");
    // One value short of the arena is refused, not a panic.
    let mut short = vec![0f32; mm.required_arena_len() - 1];
    let mut out = [0f32; 2];
    assert_eq!(
        mm.evaluate(&[0.1; 3], &mut short, &mut out),
        Err(Error::ArenaTooSmall)
    );
}

#[test]
fn bad_feature_layers_are_refused_at_binding() {
    let blob = base();
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let bind = |bytes: &[u8]| {
        let p = ModulePatch::from_bytes(bytes).unwrap();
        let mut ram = vec![0f32; p.required_ram_len()];
        ModulesModel::new(&model, &p, &mut ram).map(|_| ())
    };
    // The base has one activation layer: K = 2 does not exist.
    let bytes = feature_patch(&model, &DIMS_F, &[2, 2]).unwrap();
    assert_eq!(bind(&bytes), Err(Error::PatchModuleMismatch));
    // K = 1 has 4 values: a module reading 3 does not fit (and one reading the input at
    // K = 0 with dims[0] = 4 does not either).
    let bytes = feature_patch(&model, &[3, 5, 2], &[1, 1]);
    let bytes = bytes.unwrap();
    assert_eq!(bind(&bytes), Err(Error::PatchModuleMismatch));
    let bytes = feature_patch(&model, &[4, 2], &[1, 0]).unwrap();
    assert_eq!(bind(&bytes), Err(Error::PatchModuleMismatch));
    // At input layer 0 the box must have the module's input length (the encoder refuses).
    assert_eq!(
        feature_patch(&model, &DIMS_F, &[0, 1]),
        Err(Error::BadPatchModule)
    );
    // Input layers that do not fit a byte, or a list of the wrong length, are not written.
    assert!(feature_patch(&model, &DIMS_F, &[256, 1]).is_err());
    assert!(feature_patch(&model, &DIMS_F, &[1]).is_err());
    // A box length of zero is damage.
    let mut bytes = feature_patch(&model, &DIMS_F, &[1, 1]).unwrap();
    let at = PATCH_HEADER_SIZE + 12 + 4 * DIMS_F.len();
    bytes[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    fix_crc(&mut bytes);
    assert_eq!(
        ModulePatch::from_bytes(&bytes).map(|_| ()),
        Err(Error::BadPatchModule)
    );
    // A box on something else than the input length is refused at binding.
    let mut bytes = feature_patch(&model, &DIMS_F, &[1, 1]).unwrap();
    let before = bytes.len();
    bytes[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
    // 2 corners of 2 instead of 3: shift the rest down by 8 bytes and fix the lengths.
    bytes.drain(at + 4 + 16..at + 4 + 24);
    let total = bytes.len() as u32;
    bytes[8..12].copy_from_slice(&total.to_le_bytes());
    let payload = (before - 8 - PATCH_HEADER_SIZE - 64) as u32;
    bytes[60..64].copy_from_slice(&payload.to_le_bytes());
    fix_crc(&mut bytes);
    assert_eq!(bind(&bytes), Err(Error::PatchModuleMismatch));
}

#[test]
fn at_most_four_distinct_feature_layers() {
    let w = [1.0f32, 0.0, 0.0, 1.0];
    let b = [0.0f32; 2];
    let mut layers = vec![LayerSpec::Dense {
        in_dim: 2,
        out_dim: 2,
        weight: &w,
        bias: &b,
    }];
    layers.extend([LayerSpec::Relu; 5]);
    let blob = encode(&[2], &layers);
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let p = [0.5f32; 6];
    let dims = [2usize, 2];
    let spec = ModuleSpec {
        indicator: IndicatorSpec::Label(0),
        dims: &dims,
        params: &p,
    };
    let write = |layers: &[usize]| {
        let specs = vec![spec; layers.len()];
        let n = menc::encoded_len_with_input_layers(&specs, layers, &[]).unwrap();
        let mut out = vec![0u8; n];
        menc::write_with_input_layers(&model, &specs, layers, 1, &[], &mut out).unwrap();
        out
    };
    let four = write(&[1, 2, 3, 4, 4, 0]);
    let p4 = ModulePatch::from_bytes(&four).unwrap();
    assert_eq!(p4.check_binding(&model), Ok(()));
    let mut ram = vec![0f32; p4.required_ram_len()];
    let mm = ModulesModel::new(&model, &p4, &mut ram).unwrap();
    let mut arena = vec![0f32; mm.required_arena_len()];
    let mut out = [0f32; 2];
    // x = (1, -1): every activation is (1, 0), label 0 fires all six modules, each adds
    // 0.5 * (sum of its input) + 0.5 = 1 (or 0.5 * 0 + 0.5 for the input module).
    mm.evaluate(&[1.0, -1.0], &mut arena, &mut out).unwrap();
    assert_eq!(out, [1.0 + 5.0 + 0.5, 5.5]);
    let five = write(&[1, 2, 3, 4, 5]);
    assert_eq!(
        ModulePatch::from_bytes(&five)
            .unwrap()
            .check_binding(&model),
        Err(Error::PatchModuleMismatch)
    );
}
