//! Weight-delta patches: encode (diff of two blobs), validate, apply with the patched
//! layers in caller RAM, evaluate. Every kind of damage gives its own error and nothing
//! panics (random corruptions, as `corruption.rs` does for blobs); a rejected patch
//! leaves the running model as it was.

mod common;

use common::{Aligned, encode};
use proptest::prelude::*;
use prorepair_core::format::encode::LayerSpec;
use prorepair_core::patch::encode::PatchWriter;
use prorepair_core::patch::{LayerEncoding, PATCH_HEADER_SIZE, Patch};
use prorepair_core::{ConvGeometry, Error, Model};

const GEOMETRY: ConvGeometry = ConvGeometry {
    in_channels: 1,
    out_channels: 2,
    in_h: 4,
    in_w: 4,
    kernel_h: 2,
    kernel_w: 2,
    stride_h: 1,
    stride_w: 1,
    pad_top: 0,
    pad_left: 0,
    pad_bottom: 0,
    pad_right: 0,
};

/// Parameters of the test model: conv weights, dense 18->5 weights and bias, dense
/// 5->3 weights and bias.
#[derive(Clone)]
struct Params {
    cw: Vec<f32>,
    cb: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl Params {
    fn base() -> Self {
        Params {
            cw: (0..8).map(|i| i as f32 * 0.1 - 0.3).collect(),
            cb: vec![0.1, -0.2],
            w1: (0..90)
                .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
                .collect(),
            b1: vec![0.0, 0.1, 0.2, 0.3, 0.4],
            w2: (0..15).map(|i| ((i * 11 % 7) as f32 - 3.0) / 4.0).collect(),
            b2: vec![1.0, 2.0, 3.0],
        }
    }

    /// 1x4x4 -> conv(2) -> ReLU -> Flatten -> Dense 18->5 -> LeakyReLU -> Dense 5->3.
    fn blob(&self) -> Aligned {
        let layers = [
            LayerSpec::Conv2d {
                geometry: GEOMETRY,
                weight: &self.cw,
                bias: &self.cb,
            },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            LayerSpec::Dense {
                in_dim: 18,
                out_dim: 5,
                weight: &self.w1,
                bias: &self.b1,
            },
            LayerSpec::LeakyRelu { alpha: 0.01 },
            LayerSpec::Dense {
                in_dim: 5,
                out_dim: 3,
                weight: &self.w2,
                bias: &self.b2,
            },
        ];
        encode(&[1, 4, 4], &layers)
    }

    /// A repair: the conv weights and the last layer rewritten, two values of the
    /// middle layer changed.
    fn repaired() -> Self {
        let mut p = Params::base();
        p.cw.iter_mut().for_each(|w| *w += 0.125);
        p.w2.iter_mut().for_each(|w| *w = -*w * 0.5 + 0.01);
        p.b2 = vec![-1.0, 0.5, 0.25];
        p.w1[7] = 0.75;
        p.b1[4] = -0.4;
        p
    }
}

/// One verified box over the 16 inputs: [-1, 1]^16.
fn regions() -> Vec<f32> {
    let mut r = vec![-1.0; 16];
    r.extend([1.0; 16]);
    r
}

fn make_patch(base: &Aligned, repaired: &Aligned, sequence: u32) -> Vec<u8> {
    let (b, r) = (
        Model::from_bytes(base.bytes()).unwrap(),
        Model::from_bytes(repaired.bytes()).unwrap(),
    );
    let regions = regions();
    let writer = PatchWriter::new(&b, &r, sequence, &regions).unwrap();
    let mut out = vec![0u8; writer.encoded_len()];
    assert_eq!(writer.write(&mut out).unwrap(), out.len());
    out
}

fn fixture() -> (Aligned, Aligned, Vec<u8>) {
    let base = Params::base().blob();
    let repaired = Params::repaired().blob();
    let patch = make_patch(&base, &repaired, 1);
    (base, repaired, patch)
}

fn eval(model: &Model<'_>, x: &[f32]) -> Vec<f32> {
    let mut arena = vec![0.0; model.required_arena_len()];
    let mut out = vec![0.0; model.output_len()];
    model.evaluate(x, &mut arena, &mut out).unwrap();
    out
}

fn inputs() -> Vec<Vec<f32>> {
    (0..20)
        .map(|k| {
            (0..16)
                .map(|i| (((k * 7 + i * 13) % 23) as f32 - 11.0) / 7.0)
                .collect()
        })
        .collect()
}

/// Apply `patch` to the base model of the fixture.
fn apply(base: &Aligned, patch: &[u8]) -> Result<Vec<Vec<f32>>, Error> {
    let model = Model::from_bytes(base.bytes())?;
    let patch = Patch::from_bytes(patch)?;
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let patched = model.with_patch(&patch, &mut ram)?;
    Ok(inputs().iter().map(|x| eval(&patched, x)).collect())
}

fn fix_crc(b: &mut [u8]) {
    // Bytes 0..12 and 16.. with the trailing 64-byte signature field taken as zero.
    let v = prorepair_core::patch::patch_crc(b);
    b[12..16].copy_from_slice(&v.to_le_bytes());
}

fn edited(patch: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = patch.to_vec();
    edit(&mut p);
    fix_crc(&mut p);
    p
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn patched_model_evaluates_exactly_like_the_repaired_blob() {
    let (base, repaired, patch) = fixture();
    let want: Vec<Vec<f32>> = {
        let m = Model::from_bytes(repaired.bytes()).unwrap();
        inputs().iter().map(|x| eval(&m, x)).collect()
    };
    let got = apply(&base, &patch).unwrap();
    // Same values, same kernels: bit for bit.
    assert_eq!(got, want);
    // And the patch changed something.
    let m = Model::from_bytes(base.bytes()).unwrap();
    assert_ne!(eval(&m, &inputs()[0]), want[0]);
}

#[test]
fn the_encoder_picks_the_smaller_encoding_per_layer() {
    let (base, repaired, bytes) = fixture();
    let patch = Patch::from_bytes(&bytes).unwrap();
    let records: Vec<_> = patch.layers().collect();
    assert_eq!(records.len(), 3);
    // Conv: 8 of 10 values changed: masked (4 + 32 bytes beats full 40, sparse 64).
    assert_eq!(records[0].layer_index, 0);
    assert_eq!(records[0].encoding, LayerEncoding::Masked);
    assert_eq!(records[0].value_count, 10);
    assert_eq!(records[0].entry_count, 8);
    // Dense 18->5: 8-row panel (144 values) + 5 bias, 2 changed: sparse (16 bytes).
    assert_eq!(records[1].layer_index, 3);
    assert_eq!(records[1].encoding, LayerEncoding::Sparse);
    assert_eq!(records[1].value_count, 144 + 5);
    assert_eq!(records[1].entry_count, 2);
    // Dense 5->3: 15 weights and 3 biases of 40 + 3 values (padding rows unchanged):
    // masked (8 + 72 bytes beats sparse 144 and full 172).
    assert_eq!(records[2].layer_index, 5);
    assert_eq!(records[2].encoding, LayerEncoding::Masked);
    assert_eq!(records[2].value_count, 40 + 3);
    assert_eq!(records[2].entry_count, 18);
    assert_eq!(patch.required_ram_bytes(), 4 * (10 + 149 + 43));
    // Entries come back in index order with the repaired values.
    let repaired_model = Model::from_bytes(repaired.bytes()).unwrap();
    for r in &records {
        let Some(prorepair_core::Layer::Dense(d)) = repaired_model.layer(r.layer_index) else {
            continue;
        };
        for (i, v) in r.entries() {
            let want = d.panels.iter().chain(d.bias).nth(i).unwrap();
            assert_eq!(v.to_bits(), want.to_bits());
        }
    }
    assert_eq!(patch.sequence(), 1);
    assert_eq!(patch.region_count(), 1);
    assert_eq!(patch.region_dim(), 16);
    let base_model = Model::from_bytes(base.bytes()).unwrap();
    assert_eq!(patch.base_sha256(), base_model.sha256());
    assert_eq!(patch.base_len(), base.bytes().len());
    assert!(patch.covers(&[0.5; 16]));
    assert!(!patch.covers(&[1.5; 16]));
    let (mut lo, mut up) = ([0.0; 16], [0.0; 16]);
    patch.region(0, &mut lo, &mut up).unwrap();
    assert_eq!((lo, up), ([-1.0; 16], [1.0; 16]));
    // 96 header + (16 + 4 + 8*4) + (16 + 2*8) + (16 + 8 + 18*4) + 2*16*4 regions + 64
    // signature.
    assert_eq!(bytes.len(), 96 + 52 + 32 + 96 + 128 + 64);
    assert!(bytes.len() < repaired.bytes().len());
}

#[test]
fn full_encoding_when_every_value_changes() {
    let base = Params::base().blob();
    let mut p = Params::base();
    p.cw.iter_mut().for_each(|w| *w += 0.125);
    p.cb = vec![0.3, 0.4];
    let repaired = p.blob();
    let bytes = make_patch(&base, &repaired, 1);
    let patch = Patch::from_bytes(&bytes).unwrap();
    let records: Vec<_> = patch.layers().collect();
    assert_eq!(records.len(), 1);
    // 10 of 10: full 40 bytes beats masked 44.
    assert_eq!(records[0].encoding, LayerEncoding::Full);
    let want: Vec<Vec<f32>> = {
        let m = Model::from_bytes(repaired.bytes()).unwrap();
        inputs().iter().map(|x| eval(&m, x)).collect()
    };
    assert_eq!(apply(&base, &bytes).unwrap(), want);
}

#[test]
fn patched_model_reports_its_patch_and_keeps_the_base_in_place() {
    let (base, _, bytes) = fixture();
    let model = Model::from_bytes(base.bytes()).unwrap();
    let patch = Patch::from_bytes(&bytes).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let patched = model.with_patch(&patch, &mut ram).unwrap();
    assert_eq!(patched.patch_sequence(), 1);
    assert_eq!(patched.patched_layers().collect::<Vec<_>>(), [0, 3, 5]);
    assert_eq!(patched.as_bytes().as_ptr(), base.bytes().as_ptr());
    assert_eq!(patched.patch_ram().len(), patch.required_ram_len());
    assert_eq!(patched.sha256(), model.sha256());
    assert_eq!(model.patch_sequence(), 0);
    assert_eq!(
        eval(&patched.base(), &inputs()[1]),
        eval(&model, &inputs()[1])
    );
}

#[test]
fn sequence_numbers_only_go_up() {
    let base = Params::base().blob();
    let repaired = Params::repaired().blob();
    let p1 = make_patch(&base, &repaired, 1);
    let p2 = make_patch(&base, &repaired, 2);
    let model = Model::from_bytes(base.bytes()).unwrap();
    let (p1, p2) = (
        Patch::from_bytes(&p1).unwrap(),
        Patch::from_bytes(&p2).unwrap(),
    );
    let mut ram_a = vec![0.0f32; p2.required_ram_len()];
    let mut ram_b = vec![0.0f32; p2.required_ram_len()];
    let running = model.with_patch(&p2, &mut ram_a).unwrap();
    assert_eq!(
        running.with_patch(&p1, &mut ram_b).unwrap_err(),
        Error::StalePatch
    );
    assert_eq!(
        running.with_patch(&p2, &mut ram_b).unwrap_err(),
        Error::StalePatch
    );
    // Nothing was written on the refusal.
    assert!(ram_b.iter().all(|&v| v == 0.0));
    assert_eq!(running.patch_sequence(), 2);
}

#[test]
fn wrong_base_model() {
    let (_, repaired, patch) = fixture();
    // The repaired blob is not the base this patch binds to.
    let other = Model::from_bytes(repaired.bytes()).unwrap();
    let patch = Patch::from_bytes(&patch).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    assert_eq!(
        other.with_patch(&patch, &mut ram).unwrap_err(),
        Error::WrongBaseModel
    );
    // A different hash alone.
    let (base, _, bytes) = fixture();
    let bad = edited(&bytes, |p| p[30] ^= 1);
    assert_eq!(apply(&base, &bad).unwrap_err(), Error::WrongBaseModel);
    let bad = edited(&bytes, |p| put_u32(p, 56, base.bytes().len() as u32 + 16));
    assert_eq!(apply(&base, &bad).unwrap_err(), Error::WrongBaseModel);
}

#[test]
fn ram_too_small_and_misaligned() {
    let (base, _, bytes) = fixture();
    let model = Model::from_bytes(base.bytes()).unwrap();
    let patch = Patch::from_bytes(&bytes).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len() - 1];
    assert_eq!(
        model.with_patch(&patch, &mut ram).unwrap_err(),
        Error::PatchRamTooSmall
    );
    let mut raw = vec![0u32; patch.required_ram_len() + 1];
    let bytes_ram: &mut [u8] = bytemuck_bytes(&mut raw);
    let n = patch.required_ram_bytes();
    assert_eq!(
        model
            .with_patch_bytes(&patch, &mut bytes_ram[1..=n])
            .unwrap_err(),
        Error::MisalignedPatchRam
    );
    assert!(
        model
            .with_patch_bytes(&patch, &mut bytes_ram[4..4 + n])
            .is_ok()
    );
}

fn bytemuck_bytes(w: &mut [u32]) -> &mut [u8] {
    bytemuck::cast_slice_mut(w)
}

#[test]
fn header_damage_gives_its_error() {
    let (base, _, p) = fixture();
    let load = |b: &[u8]| Patch::from_bytes(b).map(|_| ());
    assert_eq!(load(&p[..50]), Err(Error::Truncated));
    assert_eq!(load(&p[..p.len() - 1]), Err(Error::Truncated));
    assert_eq!(load(&edited(&p, |p| p[0] = b'X')), Err(Error::BadMagic));
    assert_eq!(
        load(&edited(&p, |p| p[4] = 2)),
        Err(Error::UnsupportedVersion)
    );
    assert_eq!(load(&edited(&p, |p| p[6] = 64)), Err(Error::BadHeaderSize));
    let mut long = p.clone();
    long.push(0);
    assert_eq!(load(&long), Err(Error::LengthMismatch));
    let mut flipped = p.clone();
    flipped[PATCH_HEADER_SIZE + 20] ^= 4;
    assert_eq!(load(&flipped), Err(Error::CrcMismatch));
    assert_eq!(
        load(&edited(&p, |p| p[16] = 2)),
        Err(Error::UnknownPatchKind)
    );
    assert_eq!(
        load(&edited(&p, |p| p[18] = 2)),
        Err(Error::UnsupportedSignature)
    );
    // Kind 1 (Ed25519) parses; its all-zero signature verifies under no key.
    let claimed = edited(&p, |p| p[18] = 1);
    let parsed = Patch::from_bytes(&claimed).unwrap();
    assert_eq!(parsed.check_signature(None), Ok(()));
    let key = salty::Keypair::from(&[3u8; 32])
        .public
        .compressed
        .to_bytes();
    assert_eq!(parsed.check_signature(Some(&key)), Err(Error::BadSignature));
    assert_eq!(
        Patch::from_bytes(&p).unwrap().check_signature(Some(&key)),
        Err(Error::UnsignedPatch)
    );
    let last = p.len() - 1;
    assert_eq!(
        load(&edited(&p, |p| p[last] = 1)),
        Err(Error::UnsupportedSignature)
    );
    assert_eq!(
        load(&edited(&p, |p| p[80] = 1)),
        Err(Error::NonZeroReserved)
    );
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, 60, 10))),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, 64, 0))),
        Err(Error::BadPatchLayerCount)
    );
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, 64, 9))),
        Err(Error::BadPatchLayerCount)
    );
    // One record fewer: the rest no longer tiles the payload.
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, 64, 2))),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, 72, 0))),
        Err(Error::BadPatchRegion)
    );
    // Region dimension 8 with 2 regions has the same byte size but binds wrongly.
    let p8 = edited(&p, |p| {
        put_u32(p, 68, 2);
        put_u32(p, 72, 8);
    });
    assert_eq!(load(&p8), Ok(()));
    assert_eq!(apply(&base, &p8).unwrap_err(), Error::BadPatchRegion);
}

#[test]
fn record_damage_gives_its_error() {
    let (base, _, p) = fixture();
    let load = |b: &[u8]| Patch::from_bytes(b).map(|_| ());
    let r0 = PATCH_HEADER_SIZE; // conv, masked: 4-byte mask (0xff), 8 values
    let r1 = r0 + 16 + 36; // dense 18->5, sparse, 2 entries
    let r2 = r1 + 16 + 16; // dense 5->3, masked, 18 entries
    assert_eq!(load(&p), Ok(()));
    // Unknown encoding; reserved field.
    assert_eq!(
        load(&edited(&p, |p| p[r1 + 4] = 4)),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| p[r1 + 6] = 1)),
        Err(Error::NonZeroReserved)
    );
    // Layers out of order.
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, r2, 2))),
        Err(Error::BadPatchPayload)
    );
    // Masked: one bit more or fewer than the entry count; a bit past the values.
    assert_eq!(
        load(&edited(&p, |p| p[r0 + 16] = 0xfe)),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| p[r0 + 17] = 0x01)),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| {
            p[r0 + 16] = 0x7f;
            p[r0 + 18] = 0x01; // bit 16 of a 10-value record
        })),
        Err(Error::BadPatchPayload)
    );
    // An entry count that no longer matches the data (the payload stops tiling).
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, r0 + 12, 7))),
        Err(Error::BadPatchPayload)
    );
    // Sparse indices: swapped (not ascending), out of range.
    assert_eq!(
        load(&edited(&p, |p| {
            let (a, b) = (p[r1 + 16], p[r1 + 24]);
            p[r1 + 16] = b;
            p[r1 + 24] = a;
        })),
        Err(Error::BadPatchPayload)
    );
    assert_eq!(
        load(&edited(&p, |p| put_u32(p, r1 + 24, 149))),
        Err(Error::BadPatchPayload)
    );
    // Non-finite values, masked and sparse.
    let nan = f32::NAN.to_le_bytes();
    assert_eq!(
        load(&edited(&p, |p| p[r0 + 20..r0 + 24].copy_from_slice(&nan))),
        Err(Error::NonFiniteParameter)
    );
    let inf = f32::INFINITY.to_le_bytes();
    assert_eq!(
        load(&edited(&p, |p| p[r1 + 20..r1 + 24].copy_from_slice(&inf))),
        Err(Error::NonFiniteParameter)
    );
    // Region lower above upper, and a NaN corner.
    let regions = p.len() - 64 - 128;
    assert_eq!(
        load(&edited(&p, |p| p[regions..regions + 4]
            .copy_from_slice(&2.0f32.to_le_bytes()))),
        Err(Error::BadPatchRegion)
    );
    assert_eq!(
        load(&edited(&p, |p| p[regions..regions + 4].copy_from_slice(&nan))),
        Err(Error::BadPatchRegion)
    );
    // Binding errors: layer without parameters, layer out of range, wrong value count.
    assert_eq!(
        apply(&base, &edited(&p, |p| put_u32(p, r1, 1))).unwrap_err(),
        Error::PatchLayerMismatch
    );
    assert_eq!(
        apply(&base, &edited(&p, |p| put_u32(p, r2, 6))).unwrap_err(),
        Error::PatchLayerMismatch
    );
    assert_eq!(
        apply(&base, &edited(&p, |p| put_u32(p, r1 + 8, 150))).unwrap_err(),
        Error::PatchShapeMismatch
    );
    // The conv record applied to the Flatten layer.
    assert_eq!(
        apply(&base, &edited(&p, |p| put_u32(p, r0, 2))).unwrap_err(),
        Error::PatchLayerMismatch
    );
    // Sparse write into a padding row of the 18->5 panel (row 5, input 0 -> index 5).
    assert_eq!(
        apply(&base, &edited(&p, |p| put_u32(p, r1 + 16, 5))).unwrap_err(),
        Error::BadPatchPayload
    );
}

#[test]
fn the_encoder_refuses_what_it_cannot_express() {
    let base = Params::base().blob();
    let b = Model::from_bytes(base.bytes()).unwrap();
    let regions = regions();
    // Nothing changed.
    assert_eq!(
        PatchWriter::new(&b, &b, 1, &regions).unwrap_err(),
        Error::BadPatchLayerCount
    );
    let repaired = Params::repaired().blob();
    let r = Model::from_bytes(repaired.bytes()).unwrap();
    assert_eq!(
        PatchWriter::new(&b, &r, 0, &regions).unwrap_err(),
        Error::StalePatch
    );
    assert_eq!(
        PatchWriter::new(&b, &r, 1, &regions[..5]).unwrap_err(),
        Error::BadPatchRegion
    );
    let mut flipped = regions.clone();
    flipped[0] = 3.0;
    assert_eq!(
        PatchWriter::new(&b, &r, 1, &flipped).unwrap_err(),
        Error::BadPatchRegion
    );
    // A different structure.
    let w = vec![0.5f32; 16 * 3];
    let other = encode(
        &[1, 4, 4],
        &[
            LayerSpec::Flatten,
            LayerSpec::Dense {
                in_dim: 16,
                out_dim: 3,
                weight: &w,
                bias: &[0.0; 3],
            },
        ],
    );
    let o = Model::from_bytes(other.bytes()).unwrap();
    assert_eq!(
        PatchWriter::new(&b, &o, 1, &regions).unwrap_err(),
        Error::WrongBaseModel
    );
    // No regions is fine.
    assert!(PatchWriter::new(&b, &r, 1, &[]).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_truncation_is_refused(cut in 0usize..10_000) {
        let (base, _, p) = fixture();
        let cut = cut % p.len();
        prop_assert_eq!(Patch::from_bytes(&p[..cut]).map(|_| ()), Err(Error::Truncated));
        let _ = base;
    }

    #[test]
    fn every_bit_flip_is_refused(bit in 0usize..100_000) {
        let (base, _, mut p) = fixture();
        let bit = bit % (8 * p.len());
        p[bit / 8] ^= 1 << (bit % 8);
        // Unless it hits the CRC field itself or the header's magic/version/size/length
        // (checked before the CRC), a flip is a CRC mismatch; the CRC takes the
        // signature field as zero, so a flip there is a signature in an unsigned patch.
        let r = apply(&base, &p);
        prop_assert!(r.is_err());
        if bit / 8 >= p.len() - 64 {
            prop_assert_eq!(r.unwrap_err(), Error::UnsupportedSignature);
        } else if !(0..16).contains(&(bit / 8)) {
            prop_assert_eq!(r.unwrap_err(), Error::CrcMismatch);
        }
    }

    #[test]
    fn damage_with_a_fixed_crc_never_panics(flips in proptest::collection::vec((0usize..100_000, any::<u8>()), 1..5)) {
        let (base, repaired, p) = fixture();
        let damaged = edited(&p, |p| {
            for (at, v) in flips {
                let i = 16 + at % (p.len() - 16);
                p[i] = v;
            }
        });
        // Either refused, or accepted and then evaluation works (a huge but finite
        // parameter may still overflow an output to infinity: that is arithmetic, not
        // a format error).
        if let Ok(outputs) = apply(&base, &damaged) {
            prop_assert_eq!(outputs.len(), inputs().len());
        }
        let _ = repaired;
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800), magic in any::<bool>()) {
        let (base, _, _) = fixture();
        let mut bytes = bytes;
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"PRPT");
            bytes[4..8].copy_from_slice(&[1, 0, 96, 0]);
            let n = bytes.len() as u32;
            if bytes.len() >= 12 { bytes[8..12].copy_from_slice(&n.to_le_bytes()); }
            if bytes.len() >= 16 { fix_crc(&mut bytes); }
        }
        let _ = apply(&base, &bytes);
    }
}
