//! The patch encoder (feature `encode`): the host writes patches with the core's own
//! definition of the format. It diffs two models of the same structure (the base blob
//! and the repaired one, both from the same compiler) and records every layer whose
//! parameter blocks differ, each in the smaller of the full and sparse encodings.
//! No allocation: [`PatchWriter::encoded_len`] says how many bytes to provide.

use super::{
    LayerEncoding, MAX_PATCH_LAYERS, PATCH_FORMAT_VERSION, PATCH_HEADER_SIZE, PATCH_MAGIC,
    PatchKind, RECORD_HEADER_SIZE, SIGNATURE_SIZE, SignatureKind, mask_bytes, param_blocks,
};
use crate::model::{Layer, Model};
use crate::{Error, format};

/// One planned record.
#[derive(Debug, Clone, Copy)]
struct Planned {
    layer_index: usize,
    value_count: usize,
    changed: usize,
    encoding: LayerEncoding,
}

impl Default for Planned {
    fn default() -> Self {
        Planned {
            layer_index: 0,
            value_count: 0,
            changed: 0,
            encoding: LayerEncoding::Full,
        }
    }
}

/// Data bytes of a record of `n` values with `k` changed, in `encoding`.
fn data_len(encoding: LayerEncoding, n: usize, k: usize) -> usize {
    match encoding {
        LayerEncoding::Full => 4 * n,
        LayerEncoding::Sparse => 8 * k,
        LayerEncoding::Masked => mask_bytes(n) + 4 * k,
    }
}

impl Planned {
    fn encoded_len(&self) -> usize {
        RECORD_HEADER_SIZE + data_len(self.encoding, self.value_count, self.changed)
    }

    fn entry_count(&self) -> usize {
        match self.encoding {
            LayerEncoding::Full => self.value_count,
            _ => self.changed,
        }
    }
}

/// Encodes the weight delta from a base model to a repaired model of the same structure.
#[derive(Debug, Clone, Copy)]
pub struct PatchWriter<'m> {
    base: Model<'m>,
    repaired: Model<'m>,
    sequence: u32,
    regions: &'m [f32],
    region_dim: usize,
    planned: [Planned; MAX_PATCH_LAYERS],
    count: usize,
    encoded_len: usize,
}

/// A layer's (weight, bias) blocks in blob layout.
type Blocks<'b> = (&'b [f32], &'b [f32]);

/// The two layers' parameter blocks, or why the layers differ in structure.
fn same_structure<'b>(a: &Layer<'b>, b: &Layer<'b>) -> Result<Option<[Blocks<'b>; 2]>, Error> {
    let same = match (a, b) {
        (Layer::Dense(x), Layer::Dense(y)) => x.in_dim == y.in_dim && x.out_dim == y.out_dim,
        (Layer::Conv2d(x), Layer::Conv2d(y)) => x.geometry == y.geometry,
        (Layer::LeakyRelu { alpha: x }, Layer::LeakyRelu { alpha: y }) => {
            x.to_bits() == y.to_bits()
        }
        (Layer::AvgPool2d(x), Layer::AvgPool2d(y)) | (Layer::MaxPool2d(x), Layer::MaxPool2d(y)) => {
            x == y
        }
        _ => a.kind() == b.kind(),
    };
    if !same {
        return Err(Error::WrongBaseModel);
    }
    Ok(match (param_blocks(a), param_blocks(b)) {
        (Some(x), Some(y)) => Some([x, y]),
        _ => None,
    })
}

impl<'m> PatchWriter<'m> {
    /// Plan the patch from `base` to `repaired` (same layers and shapes; an error
    /// [`Error::WrongBaseModel`] otherwise). `regions` holds the verified input boxes,
    /// each as `input_len` lower values then `input_len` upper values (may be empty).
    /// `sequence` must be at least 1.
    pub fn new(
        base: &Model<'m>,
        repaired: &Model<'m>,
        sequence: u32,
        regions: &'m [f32],
    ) -> Result<Self, Error> {
        if base.layer_count() != repaired.layer_count()
            || base.input_shape() != repaired.input_shape()
            || base.output_len() != repaired.output_len()
        {
            return Err(Error::WrongBaseModel);
        }
        if sequence == 0 {
            return Err(Error::StalePatch);
        }
        let dim = base.input_len();
        let corner_pairs = dim.checked_mul(2).ok_or(Error::Overflow)?;
        if !regions.len().is_multiple_of(corner_pairs) {
            return Err(Error::BadPatchRegion);
        }
        for region in regions.chunks_exact(corner_pairs) {
            let (lower, upper) = region.split_at(dim);
            if lower
                .iter()
                .zip(upper)
                .any(|(l, u)| !(l.is_finite() && u.is_finite() && l <= u))
            {
                return Err(Error::BadPatchRegion);
            }
        }
        let mut planned = [Planned::default(); MAX_PATCH_LAYERS];
        let mut count = 0;
        for i in 0..base.layer_count() {
            let (a, b) = (
                base.base_layer(i).ok_or(Error::ShapeMismatch)?,
                repaired.layer(i).ok_or(Error::ShapeMismatch)?,
            );
            let Some([(wa, ba), (wb, bb)]) = same_structure(&a, &b)? else {
                continue;
            };
            let changed = wa
                .iter()
                .chain(ba)
                .zip(wb.iter().chain(bb))
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            if changed == 0 {
                continue;
            }
            let value_count = wa.len() + ba.len();
            let slot = planned.get_mut(count).ok_or(Error::BadPatchLayerCount)?;
            // The smallest encoding (ties: the earlier in this list).
            let encoding = [
                LayerEncoding::Full,
                LayerEncoding::Masked,
                LayerEncoding::Sparse,
            ]
            .into_iter()
            .min_by_key(|&e| data_len(e, value_count, changed))
            .unwrap_or(LayerEncoding::Full);
            *slot = Planned {
                layer_index: i,
                value_count,
                changed,
                encoding,
            };
            count += 1;
        }
        if count == 0 {
            return Err(Error::BadPatchLayerCount);
        }
        let payload = planned
            .iter()
            .take(count)
            .map(Planned::encoded_len)
            .sum::<usize>()
            .checked_add(regions.len().checked_mul(4).ok_or(Error::Overflow)?)
            .ok_or(Error::Overflow)?;
        let encoded_len = PATCH_HEADER_SIZE + payload + SIGNATURE_SIZE;
        for v in [encoded_len, base.as_bytes().len(), dim] {
            u32::try_from(v).map_err(|_| Error::Overflow)?;
        }
        Ok(PatchWriter {
            base: *base,
            repaired: *repaired,
            sequence,
            regions,
            region_dim: if regions.is_empty() { 0 } else { dim },
            planned,
            count,
            encoded_len,
        })
    }

    /// Exact length of the patch in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The planned records: `(layer index, encoding, values in the layer, values changed)`.
    pub fn layers(&self) -> impl Iterator<Item = (usize, LayerEncoding, usize, usize)> + '_ {
        self.planned
            .iter()
            .take(self.count)
            .map(|p| (p.layer_index, p.encoding, p.value_count, p.changed))
    }

    /// Write the patch into `out[..encoded_len()]`; returns the number of bytes written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, Error> {
        let out = out
            .get_mut(..self.encoded_len)
            .ok_or(Error::BufferTooSmall)?;
        out.fill(0);
        let mut w = Cursor { out, at: 0 };
        w.put(&PATCH_MAGIC)?;
        w.put(&PATCH_FORMAT_VERSION.to_le_bytes())?;
        w.put(&(PATCH_HEADER_SIZE as u16).to_le_bytes())?;
        w.word(self.encoded_len)?;
        w.word(0)?; // CRC, filled in last
        w.put(&(PatchKind::WeightDelta as u16).to_le_bytes())?;
        w.put(&(SignatureKind::None as u16).to_le_bytes())?;
        w.put(&self.sequence.to_le_bytes())?;
        w.put(&self.base.sha256())?;
        w.word(self.base.as_bytes().len())?;
        w.word(self.encoded_len - PATCH_HEADER_SIZE - SIGNATURE_SIZE)?;
        w.word(self.count)?;
        let corner_pairs = 2 * self.base.input_len();
        w.word(self.regions.len() / corner_pairs.max(1))?;
        w.word(self.region_dim)?;
        w.at = PATCH_HEADER_SIZE;
        for p in self.planned.iter().take(self.count) {
            let (Some(a), Some(b)) = (
                self.base.base_layer(p.layer_index),
                self.repaired.layer(p.layer_index),
            ) else {
                return Err(Error::ShapeMismatch);
            };
            let (Some((wa, ba)), Some((wb, bb))) = (param_blocks(&a), param_blocks(&b)) else {
                return Err(Error::ShapeMismatch);
            };
            w.word(p.layer_index)?;
            w.put(&(p.encoding as u16).to_le_bytes())?;
            w.put(&0u16.to_le_bytes())?;
            w.word(p.value_count)?;
            w.word(p.entry_count())?;
            let pairs = || wa.iter().chain(ba).zip(wb.iter().chain(bb)).enumerate();
            if p.encoding == LayerEncoding::Masked {
                // The mask, word by word.
                let mut word = 0u32;
                for (index, (old, new)) in pairs() {
                    if old.to_bits() != new.to_bits() {
                        word |= 1 << (index % 32);
                    }
                    if index % 32 == 31 || index + 1 == p.value_count {
                        w.put(&word.to_le_bytes())?;
                        word = 0;
                    }
                }
            }
            for (index, (old, new)) in pairs() {
                match p.encoding {
                    LayerEncoding::Full => w.put(&new.to_le_bytes())?,
                    _ if old.to_bits() == new.to_bits() => {}
                    LayerEncoding::Sparse => {
                        w.word(index)?;
                        w.put(&new.to_le_bytes())?;
                    }
                    LayerEncoding::Masked => w.put(&new.to_le_bytes())?,
                }
            }
        }
        for v in self.regions {
            w.put(&v.to_le_bytes())?;
        }
        let crc = super::patch_crc(w.out);
        w.out
            .get_mut(format::CRC_FIELD)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(&crc.to_le_bytes());
        Ok(self.encoded_len)
    }
}

/// Turn the unsigned patch in `patch` (as [`PatchWriter::write`] made it) into an
/// Ed25519-signed one by the holder of `public_key`: set signature_kind 1 and the
/// signer's key id, recompute the CRC, then store `sign(bytes before the signature
/// field)` in the signature field. The signer is a closure so that the host keeps its
/// secret key in its own crypto library.
pub fn seal_ed25519(
    patch: &mut [u8],
    public_key: &[u8; super::PUBLIC_KEY_SIZE],
    sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_SIZE],
) -> Result<(), Error> {
    // Validates the unsigned patch first: only well-formed patches get signed.
    let signature_kind = match super::modules::patch_kind_word(patch) {
        Some(super::modules::MODULES_KIND) => {
            super::modules::ModulePatch::from_bytes(patch)?.signature_kind()
        }
        _ => super::Patch::from_bytes(patch)?.signature_kind(),
    };
    if signature_kind != SignatureKind::None {
        return Err(Error::UnsupportedSignature);
    }
    let kind = patch.get_mut(18..20).ok_or(Error::Truncated)?;
    kind.copy_from_slice(&(SignatureKind::Ed25519 as u16).to_le_bytes());
    patch
        .get_mut(super::KEY_ID_FIELD)
        .ok_or(Error::Truncated)?
        .copy_from_slice(&super::key_id(public_key));
    let crc = super::patch_crc(patch);
    patch
        .get_mut(format::CRC_FIELD)
        .ok_or(Error::Truncated)?
        .copy_from_slice(&crc.to_le_bytes());
    let split = patch
        .len()
        .checked_sub(SIGNATURE_SIZE)
        .ok_or(Error::Truncated)?;
    let (signed, field) = patch.split_at_mut(split);
    field.copy_from_slice(&sign(signed));
    Ok(())
}

/// Sequential bounds-checked little-endian writes (both patch encoders use it).
pub(super) struct Cursor<'o> {
    pub(super) out: &'o mut [u8],
    pub(super) at: usize,
}

impl Cursor<'_> {
    pub(super) fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = self.at.checked_add(b.len()).ok_or(Error::Overflow)?;
        self.out
            .get_mut(self.at..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(b);
        self.at = end;
        Ok(())
    }

    pub(super) fn word(&mut self, v: usize) -> Result<(), Error> {
        let v = u32::try_from(v).map_err(|_| Error::Overflow)?;
        self.put(&v.to_le_bytes())
    }
}
