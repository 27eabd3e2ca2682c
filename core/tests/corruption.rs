//! Corrupted blobs: every kind of damage gives its own error, and nothing panics.
//!
//! Fixed tests assert the exact variant per kind of damage; property tests throw random
//! truncations, bit flips (with and without a recomputed CRC) and garbage at the
//! decoder. Whenever a damaged blob is still accepted (a flipped weight with its CRC
//! fixed up), evaluation must then succeed: validation leaves nothing to fail later.

mod common;

use common::{Aligned, encode};
use proptest::prelude::*;
use prorepair_core::format::encode::LayerSpec;
use prorepair_core::{ConvGeometry, Error, Model};

/// A small MLP with a conv front end: 1x4x4 -> conv(2) -> ReLU -> Flatten -> Dense 18->5
/// -> LeakyReLU -> Dense 5->3.
fn blob() -> Vec<u8> {
    let g = ConvGeometry {
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
    let cw: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
    let w1: Vec<f32> = (0..90)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
        .collect();
    let w2: Vec<f32> = (0..15).map(|i| ((i * 11 % 7) as f32 - 3.0) / 4.0).collect();
    let layers = [
        LayerSpec::Conv2d {
            geometry: g,
            weight: &cw,
            bias: &[0.1, -0.2],
        },
        LayerSpec::Relu,
        LayerSpec::Flatten,
        LayerSpec::Dense {
            in_dim: 18,
            out_dim: 5,
            weight: &w1,
            bias: &[0.0, 0.1, 0.2, 0.3, 0.4],
        },
        LayerSpec::LeakyRelu { alpha: 0.01 },
        LayerSpec::Dense {
            in_dim: 5,
            out_dim: 3,
            weight: &w2,
            bias: &[1.0, 2.0, 3.0],
        },
    ];
    encode(&[1, 4, 4], &layers).bytes().to_vec()
}

/// Layer-table entry `layer`, word `word`: byte offset.
fn word_at(layer: usize, word: usize) -> usize {
    64 + 64 * layer + 4 * word
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn add_u32(b: &mut [u8], at: usize, delta: u32) {
    let v = get_u32(b, at) + delta;
    put_u32(b, at, v);
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn fix_crc(b: &mut [u8]) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = crc.digest();
    d.update(&b[..12]);
    d.update(&b[16..]);
    let v = d.finalize();
    put_u32(b, 12, v);
}

fn load(bytes: &[u8]) -> Result<(), Error> {
    let aligned = Aligned::new(bytes);
    Model::from_bytes(aligned.bytes()).map(|_| ())
}

/// Apply `edit`, recompute the CRC, decode.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
    let mut b = blob();
    edit(&mut b);
    fix_crc(&mut b);
    load(&b)
}

#[test]
fn the_intact_blob_loads() {
    assert_eq!(load(&blob()), Ok(()));
}

#[test]
fn truncated() {
    let b = blob();
    assert_eq!(load(&b[..b.len() - 1]), Err(Error::Truncated));
    assert_eq!(load(&b[..63]), Err(Error::Truncated));
    assert_eq!(load(&[]), Err(Error::Truncated));
}

#[test]
fn bad_magic() {
    let mut b = blob();
    b[0] ^= 0x20;
    assert_eq!(load(&b), Err(Error::BadMagic));
}

#[test]
fn wrong_version() {
    assert_eq!(edited(|b| b[4] = 2), Err(Error::UnsupportedVersion));
    let mut b = blob();
    b[4] = 0; // no CRC fix-up: the version check comes first
    assert_eq!(load(&b), Err(Error::UnsupportedVersion));
}

#[test]
fn bad_header_size() {
    assert_eq!(edited(|b| b[6] = 48), Err(Error::BadHeaderSize));
}

#[test]
fn trailing_bytes() {
    let mut b = blob();
    b.extend_from_slice(&[0; 16]);
    assert_eq!(load(&b), Err(Error::LengthMismatch));
}

#[test]
fn crc_mismatch_on_a_flipped_weight() {
    let mut b = blob();
    let last = b.len() - 20;
    b[last] ^= 1;
    assert_eq!(load(&b), Err(Error::CrcMismatch));
    let mut b = blob();
    b[12] ^= 0x80; // the CRC itself
    assert_eq!(load(&b), Err(Error::CrcMismatch));
}

#[test]
fn misaligned_buffer() {
    let b = blob();
    let mut storage = vec![0u32; b.len() / 4 + 2];
    let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut storage);
    raw[1..1 + b.len()].copy_from_slice(&b);
    assert_eq!(
        Model::from_bytes(&raw[1..1 + b.len()]).err(),
        Some(Error::MisalignedBuffer)
    );
}

#[test]
fn non_zero_reserved() {
    assert_eq!(edited(|b| b[50] = 1), Err(Error::NonZeroReserved));
    assert_eq!(
        edited(|b| put_u32(b, word_at(1, 5), 1)),
        Err(Error::NonZeroReserved)
    );
}

#[test]
fn bad_input_shape() {
    assert_eq!(edited(|b| put_u32(b, 16, 4)), Err(Error::BadInputShape));
    assert_eq!(edited(|b| put_u32(b, 24, 0)), Err(Error::BadInputShape));
}

#[test]
fn wrong_shape() {
    // Input [1, 4, 5] instead of [1, 4, 4]: the conv no longer fits.
    assert_eq!(edited(|b| put_u32(b, 28, 5)), Err(Error::ShapeMismatch));
    // Layer 3 claims Dense 18 -> 5 with in_dim 17: panel block length changes, and the
    // shape check or the block layout check must fire; in_dim is checked against the
    // input before anything is evaluated.
    let r = edited(|b| put_u32(b, word_at(3, 1), 17));
    assert!(
        matches!(r, Err(Error::ShapeMismatch | Error::BadBlockOffset)),
        "{r:?}"
    );
    // Output size in the header.
    assert_eq!(
        edited(|b| put_u32(b, 32, 4)),
        Err(Error::OutputSizeMismatch)
    );
}

#[test]
fn bad_layer_count() {
    assert_eq!(edited(|b| put_u32(b, 36, 0)), Err(Error::BadLayerCount));
    assert_eq!(
        edited(|b| put_u32(b, 36, 1_000_000)),
        Err(Error::BadLayerCount)
    );
}

#[test]
fn unknown_layer_kind() {
    assert_eq!(
        edited(|b| put_u32(b, word_at(2, 0), 99)),
        Err(Error::UnknownLayerKind)
    );
}

#[test]
fn bad_layer_parameters() {
    // LeakyReLU slope 2.0, then a zero conv stride.
    assert_eq!(
        edited(|b| put_u32(b, word_at(4, 1), 2.0f32.to_bits())),
        Err(Error::BadLayerParameters)
    );
    assert_eq!(
        edited(|b| put_u32(b, word_at(0, 7), 0)),
        Err(Error::BadLayerParameters)
    );
}

#[test]
fn misaligned_offset() {
    assert_eq!(
        edited(|b| add_u32(b, word_at(0, 13), 4)),
        Err(Error::MisalignedOffset)
    );
}

#[test]
fn bad_block_offset() {
    assert_eq!(
        edited(|b| add_u32(b, word_at(0, 13), 16)),
        Err(Error::BadBlockOffset)
    );
}

#[test]
fn block_out_of_range() {
    let len = blob().len() as u32;
    assert_eq!(
        edited(|b| put_u32(b, word_at(5, 4), len)),
        Err(Error::BlockOutOfRange)
    );
}

#[test]
fn non_finite_parameter() {
    let r = edited(|b| {
        let at = get_u32(b, word_at(5, 4)) as usize; // last bias block
        b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_eq!(r, Err(Error::NonFiniteParameter));
}

#[test]
fn header_totals_mismatch() {
    assert_eq!(edited(|b| add_u32(b, 40, 4)), Err(Error::ArenaSizeMismatch));
    assert_eq!(
        edited(|b| add_u32(b, 44, 1)),
        Err(Error::ParameterCountMismatch)
    );
}

/// The error a single bit flip at `byte` must give when the CRC is NOT recomputed.
fn expected_flip_error(byte: usize) -> &'static [Error] {
    match byte {
        0..=3 => &[Error::BadMagic],
        4..=5 => &[Error::UnsupportedVersion],
        6..=7 => &[Error::BadHeaderSize],
        8..=11 => &[Error::Truncated, Error::LengthMismatch],
        _ => &[Error::CrcMismatch],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_truncation_is_truncated(cut in 0usize..10_000) {
        let b = blob();
        let cut = cut % b.len();
        prop_assert_eq!(load(&b[..cut]), Err(Error::Truncated));
    }

    #[test]
    fn every_bit_flip_gives_its_error(bit in 0usize..100_000) {
        let mut b = blob();
        let bit = bit % (8 * b.len());
        b[bit / 8] ^= 1 << (bit % 8);
        let err = load(&b).expect_err("a flipped bit is always detected");
        prop_assert!(expected_flip_error(bit / 8).contains(&err), "byte {}: {:?}", bit / 8, err);
    }

    /// Flips with the CRC recomputed reach the structural checks: never a panic, and a
    /// blob that still validates evaluates without error.
    #[test]
    fn structural_damage_never_panics(flips in proptest::collection::vec(0usize..100_000, 1..4)) {
        let mut b = blob();
        for bit in flips {
            let bit = bit % (8 * b.len());
            b[bit / 8] ^= 1 << (bit % 8);
        }
        fix_crc(&mut b);
        let aligned = Aligned::new(&b);
        if let Ok(model) = Model::from_bytes(aligned.bytes()) {
            let mut arena = vec![0.0; model.required_arena_len()];
            let mut out = vec![0.0; model.output_len()];
            let input = vec![0.5; model.input_len()];
            prop_assert_eq!(model.evaluate(&input, &mut arena, &mut out), Ok(()));
            prop_assert_eq!(model.layers().count(), model.layer_count());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 64 {
            bytes[..4].copy_from_slice(b"PRMB");
            bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
            bytes[6..8].copy_from_slice(&64u16.to_le_bytes());
            let len = bytes.len() as u32;
            bytes[8..12].copy_from_slice(&len.to_le_bytes());
            fix_crc(&mut bytes);
        }
        let _ = load(&bytes);
    }
}
