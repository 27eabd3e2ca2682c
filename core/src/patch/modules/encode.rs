//! The patch-modules encoder (feature `encode`): the host writes kind-2 patches with the
//! core's own definition of the format. No allocation: [`encoded_len`] says how many
//! bytes to provide to [`write`].

use super::{IndicatorKind, MAX_MODULE_LAYERS, MAX_MODULES, MODULES_KIND};
use crate::model::Model;
use crate::patch::encode::Cursor;
use crate::patch::{
    PATCH_FORMAT_VERSION, PATCH_HEADER_SIZE, PATCH_MAGIC, SIGNATURE_SIZE, SignatureKind,
};
use crate::{Error, format};

/// The indicator of one module to encode.
#[derive(Debug, Clone, Copy)]
pub enum IndicatorSpec<'m> {
    /// An input box (`lower`, `upper`, each the model's input length).
    Box {
        /// Lower corner.
        lower: &'m [f32],
        /// Upper corner.
        upper: &'m [f32],
    },
    /// Argmax label.
    Label(usize),
    /// Top-two label pair.
    LabelPair(usize, usize),
}

/// One module to encode.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSpec<'m> {
    /// When it applies.
    pub indicator: IndicatorSpec<'m>,
    /// Widths: input, hidden..., output (2..=MAX_MODULE_LAYERS + 1 entries).
    pub dims: &'m [usize],
    /// Per layer: `out x in` row-major weights, then `out` biases.
    pub params: &'m [f32],
}

impl ModuleSpec<'_> {
    fn values(&self) -> Option<usize> {
        let mut n = 0usize;
        for w in self.dims.windows(2) {
            let (i, o) = (*w.first()?, *w.get(1)?);
            n = n.checked_add(i.checked_mul(o)?.checked_add(o)?)?;
        }
        Some(n)
    }

    fn encoded_len(&self, input_layer: usize) -> Result<usize, Error> {
        let layers = self.dims.len().saturating_sub(1);
        if !(1..=MAX_MODULE_LAYERS).contains(&layers) || self.dims.contains(&0) {
            return Err(Error::BadPatchModule);
        }
        let values = self.values().ok_or(Error::Overflow)?;
        if values != self.params.len() || self.params.iter().any(|v| !v.is_finite()) {
            return Err(Error::BadPatchModule);
        }
        let box_len = match self.indicator {
            IndicatorSpec::Box { lower, upper } => {
                // At a feature layer the box stays on the model input, so it has its
                // own length (a u32 before the corners).
                let n = if input_layer == 0 {
                    *self.dims.first().ok_or(Error::BadPatchModule)?
                } else {
                    lower.len()
                };
                if n == 0
                    || lower.len() != n
                    || upper.len() != n
                    || lower
                        .iter()
                        .zip(upper)
                        .any(|(l, u)| !(l.is_finite() && u.is_finite() && l <= u))
                {
                    return Err(Error::BadPatchModule);
                }
                8 * n + if input_layer == 0 { 0 } else { 4 }
            }
            IndicatorSpec::Label(_) => 0,
            IndicatorSpec::LabelPair(a, b) => {
                if a == b {
                    return Err(Error::BadPatchModule);
                }
                0
            }
        };
        (super::MODULE_RECORD_HEADER + 4 * self.dims.len())
            .checked_add(box_len)
            .and_then(|n| n.checked_add(values.checked_mul(4)?))
            .ok_or(Error::Overflow)
    }
}

/// Exact length of the patch for `modules` and `regions` (f32 values).
pub fn encoded_len(modules: &[ModuleSpec<'_>], regions: &[f32]) -> Result<usize, Error> {
    encoded_len_with_input_layers(modules, &[], regions)
}

/// The input layer of module `i` (see the record's `input_layer`): `input_layers[i]`, or 0
/// for all when `input_layers` is empty.
fn input_layer_of(input_layers: &[usize], count: usize, i: usize) -> Result<usize, Error> {
    if input_layers.is_empty() {
        return Ok(0);
    }
    if input_layers.len() != count {
        return Err(Error::BadPatchModule);
    }
    let k = *input_layers.get(i).ok_or(Error::BadPatchModule)?;
    u8::try_from(k).map_err(|_| Error::BadPatchModule)?;
    Ok(k)
}

/// [`encoded_len`] for modules reading feature layers: `input_layers[i]` is module `i`'s
/// input layer (0 = the model input, K = the K-th activation's output; empty = all 0).
pub fn encoded_len_with_input_layers(
    modules: &[ModuleSpec<'_>],
    input_layers: &[usize],
    regions: &[f32],
) -> Result<usize, Error> {
    if !(1..=MAX_MODULES).contains(&modules.len()) {
        return Err(Error::BadPatchModule);
    }
    let mut n = PATCH_HEADER_SIZE + SIGNATURE_SIZE;
    for (i, m) in modules.iter().enumerate() {
        let k = input_layer_of(input_layers, modules.len(), i)?;
        n = n.checked_add(m.encoded_len(k)?).ok_or(Error::Overflow)?;
    }
    let n = n
        .checked_add(regions.len().checked_mul(4).ok_or(Error::Overflow)?)
        .ok_or(Error::Overflow)?;
    u32::try_from(n).map_err(|_| Error::Overflow)?;
    Ok(n)
}

/// Write the patch binding `modules` to `base` into `out[..encoded_len]`; returns the
/// bytes written. `regions`: verified boxes, each `input_len` lower then `input_len`
/// upper values. `sequence` >= 1.
pub fn write(
    base: &Model<'_>,
    modules: &[ModuleSpec<'_>],
    sequence: u32,
    regions: &[f32],
    out: &mut [u8],
) -> Result<usize, Error> {
    write_with_input_layers(base, modules, &[], sequence, regions, out)
}

/// [`write`] for modules reading feature layers (`input_layers` as in
/// [`encoded_len_with_input_layers`]). Whether each input layer exists in `base` with
/// the module's input length is checked when the patch is bound
/// ([`super::ModulePatch::check_binding`]).
pub fn write_with_input_layers(
    base: &Model<'_>,
    modules: &[ModuleSpec<'_>],
    input_layers: &[usize],
    sequence: u32,
    regions: &[f32],
    out: &mut [u8],
) -> Result<usize, Error> {
    if sequence == 0 {
        return Err(Error::StalePatch);
    }
    let dim = base.input_len();
    if !regions.len().is_multiple_of(2 * dim.max(1))
        || regions.chunks_exact(2 * dim.max(1)).any(|r| {
            let (l, u) = r.split_at(dim);
            l.iter()
                .zip(u)
                .any(|(l, u)| !(l.is_finite() && u.is_finite() && l <= u))
        })
    {
        return Err(Error::BadPatchRegion);
    }
    let total = encoded_len_with_input_layers(modules, input_layers, regions)?;
    let out = out.get_mut(..total).ok_or(Error::BufferTooSmall)?;
    out.fill(0);
    let mut w = Cursor { out, at: 0 };
    w.put(&PATCH_MAGIC)?;
    w.put(&PATCH_FORMAT_VERSION.to_le_bytes())?;
    w.put(&(PATCH_HEADER_SIZE as u16).to_le_bytes())?;
    w.word(total)?;
    w.word(0)?; // CRC, filled in last
    w.put(&MODULES_KIND.to_le_bytes())?;
    w.put(&(SignatureKind::None as u16).to_le_bytes())?;
    w.put(&sequence.to_le_bytes())?;
    w.put(&base.sha256())?;
    w.word(base.as_bytes().len())?;
    w.word(total - PATCH_HEADER_SIZE - SIGNATURE_SIZE)?;
    w.word(modules.len())?;
    let region_count = if dim == 0 {
        0
    } else {
        regions.len() / (2 * dim)
    };
    w.word(region_count)?;
    w.word(if region_count == 0 { 0 } else { dim })?;
    w.at = PATCH_HEADER_SIZE;
    for (i, m) in modules.iter().enumerate() {
        let input_layer = input_layer_of(input_layers, modules.len(), i)?;
        let (kind, a, b) = match m.indicator {
            IndicatorSpec::Box { .. } => (IndicatorKind::Box, 0, 0),
            IndicatorSpec::Label(l) => (IndicatorKind::Label, l, 0),
            IndicatorSpec::LabelPair(l0, l1) => (IndicatorKind::LabelPair, l0, l1),
        };
        w.put(&(kind as u16).to_le_bytes())?;
        let layers = u8::try_from(m.dims.len() - 1).map_err(|_| Error::BadPatchModule)?;
        let input_layer = u8::try_from(input_layer).map_err(|_| Error::BadPatchModule)?;
        w.put(&[layers, input_layer])?;
        w.word(a)?;
        w.word(b)?;
        for &d in m.dims {
            w.word(d)?;
        }
        if let IndicatorSpec::Box { lower, upper } = m.indicator {
            if input_layer > 0 {
                w.word(lower.len())?;
            }
            for v in lower.iter().chain(upper) {
                w.put(&v.to_le_bytes())?;
            }
        }
        for v in m.params {
            w.put(&v.to_le_bytes())?;
        }
    }
    for v in regions {
        w.put(&v.to_le_bytes())?;
    }
    let crc = format::blob_crc(w.out);
    w.out
        .get_mut(format::CRC_FIELD)
        .ok_or(Error::BufferTooSmall)?
        .copy_from_slice(&crc.to_le_bytes());
    Ok(total)
}
