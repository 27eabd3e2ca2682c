//! Patch kind 2, "patch modules" (AdvRepair's indicator-plus-patch modules): the base
//! model stays untouched; small MLPs, each selected by an indicator, add their outputs to
//! the logits. `F(x) = N(x) + sum over modules whose indicator fires of P_i(x)`, and
//! `F(x) = N(x)` bit for bit where no indicator fires.
//!
//! Same 96-byte header and trailing 64-byte signature field as kind 1 (see
//! [`crate::patch`]), with kind = 2 and these kind-specific header words:
//!
//! ```text
//!  64  module_count     u32 in 1..=MAX_MODULES
//!  68  region_count     u32, verified input boxes (as kind 1)
//!  72  region_dim       u32 (as kind 1)
//!  76  key_id / reserved as kind 1 (signer key id when signed, then zeros)
//! Payload
//!   module_count records, each:
//!     0  indicator     u16: 1 = input box, 2 = label (argmax of N(x) is label0),
//!                      3 = label pair (N(x) ranks label0 first and label1 second)
//!     2  layer_count   u8 in 1..=MAX_MODULE_LAYERS (ReLU between layers)
//!     3  input_layer   u8: what the module reads. 0 = the model input; K >= 1 = the
//!                      output of the base's K-th activation layer (Relu, LeakyRelu,
//!                      Sigmoid, Tanh or Gelu entries of its layer table, counted from 1
//!                      in table order; a fused Dense + ReLU is two entries, the ReLU
//!                      counts). Offsets 2..4 were one u16 layer_count before feature
//!                      layers existed; its high byte was always 0, so those patches
//!                      read unchanged as input_layer 0.
//!     4  label0        u32 (0 for a box)
//!     8  label1        u32 (0 unless a label pair; label1 != label0)
//!    12  dims          (layer_count + 1) u32, each >= 1: the length of what the module
//!                      reads (the model's input length, or that activation's length),
//!                      the hidden widths, the model's output length
//!        box only:     input_layer >= 1 only: box_len u32 >= 1, the model's input
//!                      length (the indicator stays on the input); box_len = dims[0]
//!                      when input_layer is 0. Then box_len f32 lower, box_len f32
//!                      upper (finite, lower <= upper)
//!        per layer:    out x in f32 weights (row-major), then out f32 biases (finite)
//!   region_count x (region_dim f32 lower, region_dim f32 upper), as kind 1
//! ```
//!
//! Binding ([`ModulePatch::check_binding`]) checks every input_layer against the base:
//! it must exist and dims[0] must equal its output length; one patch reads at most
//! [`MAX_FEATURE_LAYERS`] distinct feature layers.
//!
//! Evaluation ([`ModulesModel`]) copies the boxes and the module weights once into
//! caller RAM ([`ModulePatch::required_ram_len`]; weights repacked panel-major for the
//! SIMD dense kernel) and then evaluates base + indicators + modules with no allocation
//! and no failure after the length checks. The base forward pass copies each feature
//! layer's activation into the arena as it passes it
//! ([`ModulesModel::required_arena_len`] counts them).

#[cfg(feature = "encode")]
pub mod encode;

use super::{
    PATCH_HEADER_SIZE, PATCH_MAGIC, PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SignatureKind, check_base,
    copy_region, region_corners,
};
use crate::Error;
use crate::format::{DENSE_PANEL, LayerKind, dense_panel_len, read_u16, read_u32};
use crate::kernels::Kernels;
use crate::model::Model;

/// The kind word of a patch-modules patch (offset 16).
pub const MODULES_KIND: u16 = 2;
/// Most modules one patch may carry.
pub const MAX_MODULES: usize = 4096;
/// Most affine layers per module.
pub const MAX_MODULE_LAYERS: usize = 4;
/// Fixed part of a module record, before the dims.
pub const MODULE_RECORD_HEADER: usize = 12;
/// Most distinct feature layers (input_layer >= 1) the modules of one patch may read.
pub const MAX_FEATURE_LAYERS: usize = 4;

/// When a module applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum IndicatorKind {
    /// The input lies in a box.
    Box = 1,
    /// The base network's argmax is `label0`.
    Label = 2,
    /// The base network ranks `label0` first and `label1` second.
    LabelPair = 3,
}

impl IndicatorKind {
    const fn from_word(w: u16) -> Option<Self> {
        match w {
            1 => Some(IndicatorKind::Box),
            2 => Some(IndicatorKind::Label),
            3 => Some(IndicatorKind::LabelPair),
            _ => None,
        }
    }

    /// Short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            IndicatorKind::Box => "box",
            IndicatorKind::Label => "label",
            IndicatorKind::LabelPair => "label pair",
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    read_u32(bytes, at).unwrap_or(0)
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(bytes, at))
}

/// One validated module record.
#[derive(Debug, Clone, Copy)]
pub struct ModuleRecord<'a> {
    /// The indicator kind.
    pub indicator: IndicatorKind,
    /// `label0` (label indicators).
    pub label0: usize,
    /// `label1` (label-pair indicators).
    pub label1: usize,
    layer_count: usize,
    /// What the module reads: 0 = the model input, K = the K-th activation's output.
    pub input_layer: usize,
    dims: [usize; MAX_MODULE_LAYERS + 1],
    /// Values per box corner (0 unless a box).
    box_len: usize,
    /// Box corners (empty unless a box).
    box_data: &'a [u8],
    /// Weights and biases, layer by layer.
    params: &'a [u8],
    encoded_len: usize,
}

impl ModuleRecord<'_> {
    /// Layer widths: input, hidden..., output.
    pub fn dims(&self) -> &[usize] {
        self.dims.get(..=self.layer_count).unwrap_or(&[])
    }

    /// Number of affine layers.
    pub fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// Input length (of what the module reads).
    pub fn in_dim(&self) -> usize {
        self.dims[0]
    }

    /// Values per box corner: the model's input length (0 unless a box).
    pub fn box_len(&self) -> usize {
        self.box_len
    }

    /// Output length.
    pub fn out_dim(&self) -> usize {
        self.dims().last().copied().unwrap_or(0)
    }

    /// Bytes of the record in the patch.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Weights plus biases.
    pub fn parameter_count(&self) -> usize {
        self.params.len() / 4
    }

    /// Box corner `j`: `(lower, upper)` (boxes only).
    pub fn box_bounds(&self, j: usize) -> Option<(f32, f32)> {
        if self.indicator != IndicatorKind::Box || j >= self.box_len {
            return None;
        }
        Some((
            f32_at(self.box_data, 4 * j),
            f32_at(self.box_data, 4 * (self.box_len + j)),
        ))
    }

    /// Parameter `k` of the concatenated (row-major weights, biases) per layer.
    pub fn param(&self, k: usize) -> Option<f32> {
        (k < self.parameter_count()).then(|| f32_at(self.params, 4 * k))
    }

    /// f32 values this module takes in caller RAM: box corners, then per layer the
    /// panel-major weights and the biases.
    pub fn ram_len(&self) -> Option<usize> {
        let mut n = self.box_len.checked_mul(2)?;
        for w in self.dims().windows(2) {
            let (i, o) = (*w.first()?, *w.get(1)?);
            n = n.checked_add(dense_panel_len(i, o)?)?.checked_add(o)?;
        }
        Some(n)
    }
}

/// Decode and check the record at `at` (ending at or before `end`); `validate` also checks every value (off for records of an already validated patch: evaluation walks them every time).
fn module_at(
    bytes: &[u8],
    at: usize,
    end: usize,
    validate: bool,
) -> Result<ModuleRecord<'_>, Error> {
    let region = bytes.get(..end).ok_or(Error::BadPatchModule)?;
    let indicator = read_u16(region, at)
        .and_then(IndicatorKind::from_word)
        .ok_or(Error::BadPatchModule)?;
    let layer_count = region
        .get(at.checked_add(2).ok_or(Error::Overflow)?)
        .copied()
        .map(usize::from)
        .ok_or(Error::BadPatchModule)?;
    let input_layer = region
        .get(at.checked_add(3).ok_or(Error::Overflow)?)
        .copied()
        .map(usize::from)
        .ok_or(Error::BadPatchModule)?;
    if !(1..=MAX_MODULE_LAYERS).contains(&layer_count) {
        return Err(Error::BadPatchModule);
    }
    let label0 = read_u32(region, at + 4).ok_or(Error::BadPatchModule)? as usize;
    let label1 = read_u32(region, at + 8).ok_or(Error::BadPatchModule)? as usize;
    let labels_ok = match indicator {
        IndicatorKind::Box => label0 == 0 && label1 == 0,
        IndicatorKind::Label => label1 == 0,
        IndicatorKind::LabelPair => label0 != label1,
    };
    if !labels_ok {
        return Err(Error::BadPatchModule);
    }
    let mut dims = [0usize; MAX_MODULE_LAYERS + 1];
    let mut p = at
        .checked_add(MODULE_RECORD_HEADER)
        .ok_or(Error::Overflow)?;
    for d in dims.iter_mut().take(layer_count + 1) {
        *d = read_u32(region, p).ok_or(Error::BadPatchModule)? as usize;
        if *d == 0 {
            return Err(Error::BadPatchModule);
        }
        p += 4;
    }
    let box_dim = match (indicator, input_layer) {
        (IndicatorKind::Box, 0) => dims[0],
        (IndicatorKind::Box, _) => {
            let n = read_u32(region, p).ok_or(Error::BadPatchModule)? as usize;
            p = p.checked_add(4).ok_or(Error::Overflow)?;
            if n == 0 {
                return Err(Error::BadPatchModule);
            }
            n
        }
        _ => 0,
    };
    let box_bytes = box_dim.checked_mul(8).ok_or(Error::Overflow)?;
    let box_end = p.checked_add(box_bytes).ok_or(Error::Overflow)?;
    let box_data = region.get(p..box_end).ok_or(Error::BadPatchModule)?;
    for j in 0..if validate { box_dim } else { 0 } {
        let (l, u) = (f32_at(box_data, 4 * j), f32_at(box_data, 4 * (box_dim + j)));
        if !(l.is_finite() && u.is_finite() && l <= u) {
            return Err(Error::BadPatchModule);
        }
    }
    let mut values = 0usize;
    for w in dims.get(..=layer_count).unwrap_or(&[]).windows(2) {
        let &[i, o] = w else { continue };
        values = i
            .checked_mul(o)
            .and_then(|v| v.checked_add(o))
            .and_then(|v| v.checked_add(values))
            .ok_or(Error::Overflow)?;
    }
    let params_end = values
        .checked_mul(4)
        .and_then(|v| v.checked_add(box_end))
        .ok_or(Error::Overflow)?;
    let params = region
        .get(box_end..params_end)
        .ok_or(Error::BadPatchModule)?;
    if validate
        && params
            .chunks_exact(4)
            .any(|c| !f32::from_bits(u32_at(c, 0)).is_finite())
    {
        return Err(Error::NonFiniteParameter);
    }
    let record = ModuleRecord {
        indicator,
        label0,
        label1,
        layer_count,
        input_layer,
        dims,
        box_len: box_dim,
        box_data,
        params,
        encoded_len: params_end - at,
    };
    record.ram_len().ok_or(Error::Overflow)?;
    Ok(record)
}

/// A structurally valid patch-modules patch, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct ModulePatch<'a> {
    bytes: &'a [u8],
    sequence: u32,
    base_sha256: [u8; 32],
    base_len: usize,
    module_count: usize,
    region_count: usize,
    region_dim: usize,
    regions_start: usize,
    ram_values: usize,
    max_width: usize,
    signature_kind: SignatureKind,
}

/// The kind word of a patch's header, if the bytes are long enough to hold one.
pub fn patch_kind_word(bytes: &[u8]) -> Option<u16> {
    if bytes.get(..4) != Some(&PATCH_MAGIC[..]) {
        return None;
    }
    read_u16(bytes, 16)
}

impl<'a> ModulePatch<'a> {
    /// Validate `bytes` completely as a patch-modules patch: the common header checks of
    /// kind 1 in the same order (length, magic, version, header size, total length, CRC,
    /// kind, signature, reserved, payload length), then the module count, every module
    /// record, every region.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = super::parse_header(bytes, MODULES_KIND)?;
        let total_len = bytes.len();
        let word = |at: usize| read_u32(bytes, at).map_or(0, |w| w as usize);
        let signed = total_len - SIGNATURE_SIZE;
        let module_count = word(64);
        if !(1..=MAX_MODULES).contains(&module_count) {
            return Err(Error::BadPatchModule);
        }
        let (region_count, region_dim) = (word(68), word(72));
        if (region_count == 0) != (region_dim == 0) {
            return Err(Error::BadPatchRegion);
        }
        let mut at = PATCH_HEADER_SIZE;
        let mut ram_values = 0usize;
        let mut max_width = 0usize;
        for _ in 0..module_count {
            let m = module_at(bytes, at, signed, true)?;
            ram_values = ram_values
                .checked_add(m.ram_len().ok_or(Error::Overflow)?)
                .ok_or(Error::Overflow)?;
            max_width = m.dims().iter().skip(1).fold(max_width, |a, &d| a.max(d));
            at = at.checked_add(m.encoded_len()).ok_or(Error::Overflow)?;
        }
        let region_bytes = region_count
            .checked_mul(region_dim)
            .and_then(|n| n.checked_mul(8))
            .ok_or(Error::Overflow)?;
        if at.checked_add(region_bytes) != Some(signed) {
            return Err(Error::BadPatchPayload);
        }
        ram_values.checked_mul(4).ok_or(Error::Overflow)?;
        let patch = ModulePatch {
            bytes,
            sequence: header.sequence,
            base_sha256: header.base_sha256,
            base_len: header.base_len,
            signature_kind: header.signature_kind,
            module_count,
            region_count,
            region_dim,
            regions_start: at,
            ram_values,
            max_width,
        };
        for k in 0..region_count {
            let (lo, up) = patch.region_raw(k).ok_or(Error::BadPatchRegion)?;
            for j in 0..region_dim {
                let (l, u) = (f32_at(lo, 4 * j), f32_at(up, 4 * j));
                if !(l.is_finite() && u.is_finite() && l <= u) {
                    return Err(Error::BadPatchRegion);
                }
            }
        }
        Ok(patch)
    }

    /// The patch's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The monotonic sequence number.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// SHA-256 of the base model blob.
    pub fn base_sha256(&self) -> [u8; 32] {
        self.base_sha256
    }

    /// Length of the base model blob.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// The signature kind.
    pub fn signature_kind(&self) -> SignatureKind {
        self.signature_kind
    }

    /// The id of the key that signed the patch, `None` when unsigned (not proof by
    /// itself: [`ModulePatch::check_signature`] is).
    pub fn signer_key_id(&self) -> Option<[u8; 8]> {
        super::signer_key_id(self.bytes, self.signature_kind)
    }

    /// The device's signature policy, exactly as for weight-delta patches
    /// ([`super::Patch::check_signature`]).
    pub fn check_signature(&self, public_key: Option<&[u8; PUBLIC_KEY_SIZE]>) -> Result<(), Error> {
        super::check_signature(self.bytes, self.signature_kind, public_key)
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &'a [u8] {
        self.bytes
            .get(..self.bytes.len().saturating_sub(SIGNATURE_SIZE))
            .unwrap_or(&[])
    }

    /// Number of modules.
    pub fn module_count(&self) -> usize {
        self.module_count
    }

    /// Widest hidden or output layer over all modules.
    pub fn max_width(&self) -> usize {
        self.max_width
    }

    /// The module records in order.
    pub fn modules(&self) -> impl Iterator<Item = ModuleRecord<'a>> + '_ {
        let end = self.bytes.len().saturating_sub(SIGNATURE_SIZE);
        let bytes = self.bytes;
        let mut at = PATCH_HEADER_SIZE;
        (0..self.module_count).map_while(move |_| {
            let m = module_at(bytes, at, end, false).ok()?;
            at = at.checked_add(m.encoded_len())?;
            Some(m)
        })
    }

    /// Number of verified regions.
    pub fn region_count(&self) -> usize {
        self.region_count
    }

    /// Values per region corner.
    pub fn region_dim(&self) -> usize {
        self.region_dim
    }

    /// Region `k`'s corners copied into `lower` and `upper`.
    pub fn region(&self, k: usize, lower: &mut [f32], upper: &mut [f32]) -> Result<(), Error> {
        let (lo, up) = self.region_raw(k).ok_or(Error::BadPatchRegion)?;
        copy_region(lo, up, self.region_dim, lower, upper)
    }

    /// True when the proof covers `input`: it lies in a box indicator's box (where a
    /// module acts) AND in one of the verified regions (the sub-boxes the repair proved,
    /// rounded inward to f32). Both, because the format does not tie the two together
    /// (the host's repair partitions exactly the indicator box, so there they coincide)
    /// and a label indicator has no proof at all. A patch without regions covers
    /// nothing.
    pub fn covers(&self, input: &[f32]) -> bool {
        let in_region = input.len() == self.region_dim
            && (0..self.region_count).any(|k| {
                self.region_raw(k)
                    .is_some_and(|(lo, up)| inside_raw(input, lo, up))
            });
        in_region
            && self.modules().any(|m| {
                m.indicator == IndicatorKind::Box
                    && m.box_len == input.len()
                    && m.box_data
                        .split_at_checked(4 * input.len())
                        .is_some_and(|(lo, up)| inside_raw(input, lo, up))
            })
    }

    fn region_raw(&self, k: usize) -> Option<(&'a [u8], &'a [u8])> {
        region_corners(
            self.bytes,
            self.regions_start,
            self.region_count,
            self.region_dim,
            k,
        )
    }

    /// Caller RAM for [`ModulesModel`], in f32 values.
    pub fn required_ram_len(&self) -> usize {
        self.ram_values
    }

    /// Caller RAM for [`ModulesModel`], in bytes.
    pub fn required_ram_bytes(&self) -> usize {
        self.ram_values.saturating_mul(4)
    }

    /// Check that the patch applies to `model`: blob length and SHA-256, every module's
    /// input and output length, every label, the regions' dimension.
    pub fn check_binding(&self, model: &Model<'_>) -> Result<(), Error> {
        check_base(
            model,
            self.base_len,
            &self.base_sha256,
            self.region_count,
            self.region_dim,
        )?;
        let out = model.output_len();
        for m in self.modules() {
            let labels_ok = match m.indicator {
                IndicatorKind::Box => m.box_len == model.input_len(),
                IndicatorKind::Label => m.label0 < out,
                IndicatorKind::LabelPair => m.label0 < out && m.label1 < out,
            };
            let reads = if m.input_layer == 0 {
                Some(model.input_len())
            } else {
                feature_layer(model, m.input_layer).map(|(_, len)| len)
            };
            if reads != Some(m.in_dim()) || m.out_dim() != out || !labels_ok {
                return Err(Error::PatchModuleMismatch);
            }
        }
        self.feature_slots(model).map(|_| ())
    }

    /// The distinct feature layers the modules read, in order of first use, with their
    /// place in the arena's feature area; at most [`MAX_FEATURE_LAYERS`].
    fn feature_slots(&self, model: &Model<'_>) -> Result<FeatureSlots, Error> {
        let mut slots = FeatureSlots::default();
        for m in self.modules() {
            let k = m.input_layer;
            if k == 0 || slots.get(k).is_some() {
                continue;
            }
            let (layer, len) = feature_layer(model, k).ok_or(Error::PatchModuleMismatch)?;
            let slot = slots
                .slots
                .get_mut(slots.count)
                .ok_or(Error::PatchModuleMismatch)?;
            *slot = FeatureSlot {
                k,
                layer,
                offset: slots.total,
                len,
            };
            slots.count += 1;
            slots.total = slots.total.checked_add(len).ok_or(Error::Overflow)?;
        }
        Ok(slots)
    }
}

/// True for the layer kinds a feature layer index counts.
fn is_activation(kind: LayerKind) -> bool {
    matches!(
        kind,
        LayerKind::Relu
            | LayerKind::LeakyRelu
            | LayerKind::Sigmoid
            | LayerKind::Tanh
            | LayerKind::Gelu
    )
}

/// `(layer index, output length)` of `model`'s `k`-th activation layer (`k` >= 1).
fn feature_layer(model: &Model<'_>, k: usize) -> Option<(usize, usize)> {
    model
        .layers()
        .enumerate()
        .filter(|(_, info)| is_activation(info.layer.kind()))
        .nth(k.checked_sub(1)?)
        .map(|(i, info)| (i, info.output.len()))
}

/// Where one feature layer's activation is kept during an evaluation.
#[derive(Debug, Clone, Copy, Default)]
struct FeatureSlot {
    /// The feature layer number (input_layer).
    k: usize,
    /// Its index in the base's layer table.
    layer: usize,
    /// Start in the arena's feature area.
    offset: usize,
    /// Values.
    len: usize,
}

/// The feature layers of a bound patch.
#[derive(Debug, Clone, Copy, Default)]
struct FeatureSlots {
    slots: [FeatureSlot; MAX_FEATURE_LAYERS],
    count: usize,
    /// Values of the whole feature area.
    total: usize,
}

impl FeatureSlots {
    fn get(&self, k: usize) -> Option<&FeatureSlot> {
        self.slots.get(..self.count)?.iter().find(|s| s.k == k)
    }
}

/// A base model with a patch-modules patch applied: evaluates base + indicators +
/// modules. Module parameters live in caller RAM.
#[derive(Debug, Clone, Copy)]
pub struct ModulesModel<'m, 'p> {
    model: Model<'m>,
    patch: ModulePatch<'p>,
    ram: &'m [f32],
    features: FeatureSlots,
}

impl<'m, 'p> ModulesModel<'m, 'p> {
    /// Bind `patch` to `model` ([`ModulePatch::check_binding`]) and copy the boxes and
    /// module weights into `ram` (at least [`ModulePatch::required_ram_len`] values).
    pub fn new(
        model: &Model<'m>,
        patch: &ModulePatch<'p>,
        ram: &'m mut [f32],
    ) -> Result<Self, Error> {
        patch.check_binding(model)?;
        let features = patch.feature_slots(model)?;
        let ram = ram
            .get_mut(..patch.required_ram_len())
            .ok_or(Error::PatchRamTooSmall)?;
        ram.fill(0.0);
        let mut at = 0usize;
        for m in patch.modules() {
            let len = m.ram_len().ok_or(Error::Overflow)?;
            let end = at.checked_add(len).ok_or(Error::Overflow)?;
            let dst = ram.get_mut(at..end).ok_or(Error::PatchRamTooSmall)?;
            let mut d = 0usize;
            if m.indicator == IndicatorKind::Box {
                let n = m.box_len();
                for j in 0..n {
                    let (l, u) = m.box_bounds(j).ok_or(Error::BadPatchModule)?;
                    *dst.get_mut(j).ok_or(Error::Overflow)? = l;
                    *dst.get_mut(n + j).ok_or(Error::Overflow)? = u;
                }
                d = 2 * n;
            }
            let mut k = 0usize;
            for w in m.dims().windows(2) {
                let &[i, o] = w else { continue };
                let panel_len = dense_panel_len(i, o).ok_or(Error::Overflow)?;
                for row in 0..o {
                    for col in 0..i {
                        let slot = d
                            + (row / DENSE_PANEL) * DENSE_PANEL * i
                            + col * DENSE_PANEL
                            + row % DENSE_PANEL;
                        *dst.get_mut(slot).ok_or(Error::Overflow)? =
                            m.param(k).ok_or(Error::BadPatchModule)?;
                        k += 1;
                    }
                }
                d += panel_len;
                for row in 0..o {
                    *dst.get_mut(d + row).ok_or(Error::Overflow)? =
                        m.param(k).ok_or(Error::BadPatchModule)?;
                    k += 1;
                }
                d += o;
            }
            at = end;
        }
        Ok(ModulesModel {
            model: *model,
            patch: *patch,
            ram,
            features,
        })
    }

    /// The base model.
    pub fn base(&self) -> Model<'m> {
        self.model
    }

    /// The patch.
    pub fn patch(&self) -> ModulePatch<'p> {
        self.patch
    }

    /// The caller RAM holding the boxes and module weights.
    pub fn ram(&self) -> &'m [f32] {
        self.ram
    }

    /// Arena for [`ModulesModel::evaluate`]: the base model's arena, a copy of the base
    /// output, a copy of each feature layer's activation the modules read, and two
    /// buffers of the widest module layer.
    pub fn required_arena_len(&self) -> usize {
        self.model
            .required_arena_len()
            .saturating_add(self.model.output_len())
            .saturating_add(self.features.total)
            .saturating_add(self.patch.max_width().saturating_mul(2))
    }

    crate::model::evaluate_entry_points!("ModulesModel");

    /// Evaluate base + modules with an explicit kernel set. Checks the input, output
    /// and arena lengths; cannot fail after that.
    pub fn evaluate_with(
        &self,
        kernels: &Kernels,
        input: &[f32],
        arena: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), Error> {
        if arena.len() < self.required_arena_len() {
            return Err(Error::ArenaTooSmall);
        }
        let (base_arena, rest) = arena
            .split_at_mut_checked(self.model.required_arena_len())
            .ok_or(Error::ArenaTooSmall)?;
        let (base_out, rest) = rest
            .split_at_mut_checked(self.model.output_len())
            .ok_or(Error::ArenaTooSmall)?;
        let (feats, rest) = rest
            .split_at_mut_checked(self.features.total)
            .ok_or(Error::ArenaTooSmall)?;
        let slots = self.features;
        let mut keep = |layer: usize, values: &[f32]| {
            for s in slots.slots.iter().take(slots.count) {
                if s.layer == layer
                    && let Some(dst) = feats.get_mut(s.offset..s.offset.saturating_add(s.len))
                    && dst.len() == values.len()
                {
                    dst.copy_from_slice(values);
                }
            }
        };
        self.model
            .evaluate_tapped(kernels, input, base_arena, output, &mut keep)?;
        let feats: &[f32] = feats;
        base_out.copy_from_slice(output);
        let w = self.patch.max_width();
        let (buf_a, rest) = rest.split_at_mut_checked(w).ok_or(Error::ArenaTooSmall)?;
        let buf_b = rest.get_mut(..w).ok_or(Error::ArenaTooSmall)?;
        let mut at = 0usize;
        for m in self.patch.modules() {
            let len = m.ram_len().unwrap_or(0);
            let ram = self.ram.get(at..at.saturating_add(len)).unwrap_or(&[]);
            at = at.saturating_add(len);
            let n = m.box_len();
            let (fires, params) = match m.indicator {
                IndicatorKind::Box => {
                    let (lo, rest) = ram.split_at(n.min(ram.len()));
                    let (up, params) = rest.split_at(n.min(rest.len()));
                    let inside = input
                        .iter()
                        .zip(lo.iter().zip(up))
                        .all(|(&x, (&l, &u))| l <= x && x <= u);
                    (inside && lo.len() == n, params)
                }
                IndicatorKind::Label => (argmax(base_out) == Some(m.label0), ram),
                IndicatorKind::LabelPair => (top_two(base_out) == Some((m.label0, m.label1)), ram),
            };
            if !fires {
                continue;
            }
            // Layers alternate between the two buffers; the first reads the input or the
            // kept feature.
            let source: &[f32] = match self.features.get(m.input_layer) {
                Some(s) if m.input_layer > 0 => feats
                    .get(s.offset..s.offset.saturating_add(s.len))
                    .unwrap_or(&[]),
                _ => input,
            };
            let mut p = 0usize;
            let mut in_a = false; // where the current activation is (false: source)
            let mut cur_len = m.in_dim();
            let layers = m.layer_count();
            for (k, dims) in m.dims().windows(2).enumerate() {
                let &[i, o] = dims else { continue };
                let panel_len = dense_panel_len(i, o).unwrap_or(usize::MAX);
                let panels = params.get(p..p.saturating_add(panel_len)).unwrap_or(&[]);
                p = p.saturating_add(panel_len);
                let bias = params.get(p..p.saturating_add(o)).unwrap_or(&[]);
                p = p.saturating_add(o);
                let relu = k + 1 < layers;
                let ok = if k == 0 {
                    let dst = buf_a.get_mut(..o).unwrap_or(&mut []);
                    (kernels.dense)(panels, bias, source, dst, relu)
                } else if in_a {
                    let src = buf_a.get(..cur_len).unwrap_or(&[]);
                    let dst = buf_b.get_mut(..o).unwrap_or(&mut []);
                    (kernels.dense)(panels, bias, src, dst, relu)
                } else {
                    let src = buf_b.get(..cur_len).unwrap_or(&[]);
                    let dst = buf_a.get_mut(..o).unwrap_or(&mut []);
                    (kernels.dense)(panels, bias, src, dst, relu)
                };
                if !ok {
                    // Impossible for a bound patch: the RAM layout matches the dims.
                    return Err(Error::PatchRamTooSmall);
                }
                in_a = k == 0 || !in_a;
                cur_len = o;
            }
            let out = if in_a { &buf_a[..] } else { &buf_b[..] };
            for (y, &v) in output.iter_mut().zip(out.get(..cur_len).unwrap_or(&[])) {
                *y += v;
            }
        }
        Ok(())
    }
}

/// `lo[j] <= x[j] <= up[j]` for every j, the corners as raw little-endian f32 (a NaN
/// input is never inside).
fn inside_raw(x: &[f32], lo: &[u8], up: &[u8]) -> bool {
    x.iter()
        .enumerate()
        .all(|(j, &v)| f32_at(lo, 4 * j) <= v && v <= f32_at(up, 4 * j))
}

/// Index of the largest value (the first on ties; NaN never wins): the rule of
/// [`IndicatorKind::Label`] on the base output. Generic so that the host applies the
/// same rule to its f64 outputs (`T` is f32 or f64; a value unordered with itself is a
/// NaN).
pub fn argmax<T: PartialOrd + Copy>(y: &[T]) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    for (i, &v) in y.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) && !is_nan(v) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// NaN for a float type: the value that is not ordered with itself.
fn is_nan<T: PartialOrd>(v: T) -> bool {
    v.partial_cmp(&v).is_none()
}

/// `(first, second)` when the ranking's top two are strict (`y0 > y1 > every other`;
/// any NaN among the others, or a tie, gives `None`): the rule of
/// [`IndicatorKind::LabelPair`] on the base output. Generic like [`argmax`].
pub fn top_two<T: PartialOrd + Copy>(y: &[T]) -> Option<(usize, usize)> {
    let first = argmax(y)?;
    let mut second: Option<(usize, T)> = None;
    for (i, &v) in y.iter().enumerate() {
        if i != first && !is_nan(v) && second.is_none_or(|(_, b)| v > b) {
            second = Some((i, v));
        }
    }
    let (s, sv) = second?;
    let fv = *y.get(first)?;
    let strict = fv > sv
        && y.iter()
            .enumerate()
            .all(|(i, &v)| i == first || i == s || sv > v);
    strict.then_some((first, s))
}
