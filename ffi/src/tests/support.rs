//! Test blobs built with the core's encoder, in aligned storage, and blob surgery.

use prorepair_core::format::encode::{LayerSpec, ModelWriter};
use prorepair_core::{ConvGeometry, Model};

use crate::{pr_model, pr_model_load, pr_status};

/// A byte buffer starting at a 16-byte aligned address.
pub struct Aligned {
    words: Vec<u128>,
    len: usize,
}

impl Aligned {
    /// A fresh aligned copy of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16) + 1];
        let len = bytes.len();
        // SAFETY: `words` holds at least `len` bytes; u128 has no invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), len)
        };
        Aligned { words, len }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// The encoded blob of `layers` over `input_shape`.
pub fn encode(input_shape: &[usize], layers: &[LayerSpec<'_>]) -> Vec<u8> {
    let writer = ModelWriter::new(input_shape, layers).expect("valid test layers");
    let mut bytes = vec![0u8; writer.encoded_len()];
    writer.write(&mut bytes).expect("sized by encoded_len");
    bytes
}

/// 1x4x4 -> Conv2d(2, 2x2) -> ReLU -> Flatten -> Dense 18->5 -> LeakyReLU -> Dense 5->3:
/// every kind of step (conv, fused dense+relu is not here, activation, dense).
pub fn conv_mlp_blob() -> Vec<u8> {
    let geometry = ConvGeometry {
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
    let conv_w: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
    let w1: Vec<f32> = (0..90)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
        .collect();
    let w2: Vec<f32> = (0..15).map(|i| ((i * 11 % 7) as f32 - 3.0) / 4.0).collect();
    encode(
        &[1, 4, 4],
        &[
            LayerSpec::Conv2d {
                geometry,
                weight: &conv_w,
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
        ],
    )
}

/// 5 -> Dense 5->7 -> ReLU -> Dense 7->5 (an ACAS Xu-like MLP, fused dense+relu step).
pub fn mlp_blob() -> Vec<u8> {
    let w1: Vec<f32> = (0..35)
        .map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0)
        .collect();
    let w2: Vec<f32> = (0..35).map(|i| ((i * 5 % 9) as f32 - 4.0) / 6.0).collect();
    encode(
        &[5],
        &[
            LayerSpec::Dense {
                in_dim: 5,
                out_dim: 7,
                weight: &w1,
                bias: &[0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.0],
            },
            LayerSpec::Relu,
            LayerSpec::Dense {
                in_dim: 7,
                out_dim: 5,
                weight: &w2,
                bias: &[0.5, 0.4, 0.3, 0.2, 0.1],
            },
        ],
    )
}

/// A single Dense 3->2 layer: needs no arena at all.
pub fn single_dense_blob() -> Vec<u8> {
    encode(
        &[3],
        &[LayerSpec::Dense {
            in_dim: 3,
            out_dim: 2,
            weight: &[1.0, 2.0, 3.0, -1.0, -2.0, -3.0],
            bias: &[0.5, -0.5],
        }],
    )
}

/// Write the little-endian u32 `value` at byte `at`.
pub fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Recompute the header CRC (CRC-32/ISO-HDLC over bytes 0..12 and 16..).
pub fn fix_crc(bytes: &mut [u8]) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut digest = crc.digest();
    digest.update(&bytes[..12]);
    digest.update(&bytes[16..]);
    let value = digest.finalize();
    put_u32(bytes, 12, value);
}

/// A `pr_model` whose storage holds a recognisable pattern, to see writes.
pub fn sentinel_model() -> pr_model {
    // SAFETY: pr_model is plain integers; every bit pattern is a valid value.
    unsafe {
        std::mem::transmute::<[u8; crate::PR_MODEL_SIZE], pr_model>([0xA5; crate::PR_MODEL_SIZE])
    }
}

/// The storage bytes of `model`.
pub fn model_bytes(model: &pr_model) -> [u8; crate::PR_MODEL_SIZE] {
    // SAFETY: pr_model is PR_MODEL_SIZE bytes of plain integers.
    unsafe { std::mem::transmute_copy(model) }
}

/// Load `bytes` (copied to aligned storage) through the C API; the status and the
/// `pr_model` storage, which started as the sentinel pattern.
pub fn load_status(bytes: &[u8]) -> (pr_status, [u8; crate::PR_MODEL_SIZE]) {
    let aligned = Aligned::new(bytes);
    let mut model = sentinel_model();
    // SAFETY: the blob and the model storage are valid for the call.
    let status = unsafe { pr_model_load(aligned.bytes().as_ptr(), bytes.len(), &mut model) };
    (status, model_bytes(&model))
}

/// The core's model of an aligned blob (the reference the C API must agree with).
pub fn core_model(blob: &Aligned) -> Model<'_> {
    Model::from_bytes(blob.bytes()).expect("valid test blob")
}
