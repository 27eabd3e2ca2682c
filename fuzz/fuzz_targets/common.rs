//! Shared by the fuzz targets: a small valid model, patches of it, aligned copies.

#![allow(dead_code)]

use prorepair_core::Model;
use prorepair_core::format::encode::{LayerSpec, ModelWriter};
use prorepair_core::patch::encode::{PatchWriter, seal_ed25519};

/// Bytes starting at a 16-byte aligned address (model blobs are read in place).
pub struct Aligned {
    words: Vec<u128>,
    len: usize,
}

impl Aligned {
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        for (i, b) in bytes.iter().enumerate() {
            let w = &mut words[i / 16];
            *w |= u128::from(*b) << (8 * (i % 16));
        }
        Aligned {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes (little-endian order
        // matches the byte order written above on this little-endian host).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Dense 3->4, ReLU, Dense 4->2 with the last bias shifted by `shift`.
pub fn blob(shift: f32) -> Vec<u8> {
    let w1: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) / 7.0).collect();
    let b1 = [0.1f32, -0.2, 0.3, 0.0];
    let w2: Vec<f32> = (0..8).map(|i| (3.0 - i as f32) / 5.0).collect();
    let b2 = [0.05f32 + shift, -0.05];
    let layers = [
        LayerSpec::Dense {
            in_dim: 3,
            out_dim: 4,
            weight: &w1,
            bias: &b1,
        },
        LayerSpec::Relu,
        LayerSpec::Dense {
            in_dim: 4,
            out_dim: 2,
            weight: &w2,
            bias: &b2,
        },
    ];
    let writer = ModelWriter::new(&[3], &layers).unwrap();
    let mut out = vec![0u8; writer.encoded_len()];
    writer.write(&mut out).unwrap();
    out
}

/// The vendor key pair of the apply target (a fixed seed: fuzzing is deterministic).
pub fn keypair() -> salty::Keypair {
    salty::Keypair::from(&[7u8; 32])
}

/// An unsigned patch from `base` to the model with the last bias shifted by `shift`,
/// with one verified region.
pub fn unsigned_patch(base: &Model<'_>, shift: f32, sequence: u32) -> Vec<u8> {
    let repaired_bytes = Aligned::new(&blob(shift));
    let repaired = Model::from_bytes(repaired_bytes.bytes()).unwrap();
    let regions = [-1.0f32, -1.0, -1.0, 1.0, 1.0, 1.0];
    let writer = PatchWriter::new(base, &repaired, sequence, &regions).unwrap();
    let mut out = vec![0u8; writer.encoded_len()];
    writer.write(&mut out).unwrap();
    out
}

/// The same, signed with [`keypair`].
pub fn signed_patch(base: &Model<'_>, shift: f32, sequence: u32) -> Vec<u8> {
    let mut p = unsigned_patch(base, shift, sequence);
    let kp = keypair();
    let public = kp.public.compressed.to_bytes();
    seal_ed25519(&mut p, &public, |m| kp.sign(m).to_bytes()).unwrap();
    p
}

/// The fuzzer's input as a buffer to decode: mode byte even = the rest as-is; odd = a
/// built-in valid `seed` with the rest applied as (offset hi, offset lo, xor) edits.
/// Either way `fix_crc` then makes the CRC match, so the checks after it are reached.
pub fn shape_input(data: &[u8], seed: &[u8], fix_crc: impl Fn(&mut [u8])) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut b = seed.to_vec();
        for e in rest.chunks_exact(3) {
            let at = (usize::from(e[0]) << 8 | usize::from(e[1])) % b.len().max(1);
            if let Some(x) = b.get_mut(at) {
                *x ^= e[2];
            }
        }
        if mode & 2 != 0 && !rest.is_empty() {
            // Also truncate or extend.
            let len = usize::from(rest[0]) * 4;
            b.resize(len.min(b.len() + 64), 0);
        }
        b
    };
    if mode & 4 == 0 {
        fix_crc(&mut bytes);
    }
    bytes
}

/// Blob CRC: CRC-32 (ISO-HDLC) of bytes 0..12 then 16..end, stored at 12.
pub fn fix_blob_crc(b: &mut [u8]) {
    if b.len() < 16 {
        return;
    }
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = crc.digest();
    d.update(&b[..12]);
    d.update(&b[16..]);
    let v = d.finalize().to_le_bytes();
    b[12..16].copy_from_slice(&v);
}

/// Patch CRC (the core's definition), stored at 12.
pub fn fix_patch_crc(b: &mut [u8]) {
    if b.len() < 16 {
        return;
    }
    let v = prorepair_core::patch::patch_crc(b).to_le_bytes();
    b[12..16].copy_from_slice(&v);
}
