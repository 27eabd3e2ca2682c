//! A validated model blob and its evaluation into caller memory.
//!
//! Like TensorFlow Lite Micro: everything is checked once, in [`Model::from_bytes`]
//! (lengths, CRC, version, every layer's parameters and shapes chained from input to
//! output, block offsets in range and aligned, finite parameters, no overflow). After
//! that, [`Model::evaluate`] only checks the lengths of the three caller slices and then
//! cannot fail. Memory is the caller's: the input, the output, and an arena of exactly
//! [`Model::required_arena_bytes`].

use crate::format::{
    self, ConvGeometry, DENSE_PANEL, HEADER_SIZE, LAYER_ENTRY_SIZE, LayerKind, MAGIC, PoolGeometry,
    Shape, read_u16, read_u32,
};
use crate::kernels::Kernels;
use crate::patch::{MAX_PATCH_LAYERS, Patch};
use crate::{Error, layers};

/// A fully connected layer read in place from a blob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dense<'a> {
    /// Number of inputs.
    pub in_dim: usize,
    /// Number of outputs.
    pub out_dim: usize,
    /// Panel-major weights (see [`crate::format`]), `out_dim` rounded up to 8 rows.
    pub panels: &'a [f32],
    /// `out_dim` biases.
    pub bias: &'a [f32],
}

impl Dense<'_> {
    /// Weight `W[o][i]`, or `None` outside the matrix.
    pub fn weight(&self, o: usize, i: usize) -> Option<f32> {
        if o >= self.out_dim || i >= self.in_dim {
            return None;
        }
        let panel = o / DENSE_PANEL;
        let index = panel
            .checked_mul(DENSE_PANEL)?
            .checked_mul(self.in_dim)?
            .checked_add(i.checked_mul(DENSE_PANEL)?)?
            .checked_add(o % DENSE_PANEL)?;
        self.panels.get(index).copied()
    }
}

/// A 2-D convolution read in place from a blob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2d<'a> {
    /// Shapes, strides and padding.
    pub geometry: ConvGeometry,
    /// OIHW weights.
    pub weight: &'a [f32],
    /// `out_channels` biases.
    pub bias: &'a [f32],
}

/// One layer of a model blob, its parameters borrowed from the blob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer<'a> {
    /// `y = W x + b` (input flattened row-major).
    Dense(Dense<'a>),
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu {
        /// Negative-side slope in `[0, 1)`.
        alpha: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Exact GELU, `x * Phi(x)` (erf form).
    Gelu,
    /// 2-D convolution.
    Conv2d(Conv2d<'a>),
    /// Average pooling, padding excluded from the count.
    AvgPool2d(PoolGeometry),
    /// Max pooling, padding ignored.
    MaxPool2d(PoolGeometry),
    /// `[c, h, w]` to `[c*h*w]`.
    Flatten,
}

impl Layer<'_> {
    /// The layer's kind.
    pub fn kind(&self) -> LayerKind {
        match self {
            Layer::Dense(_) => LayerKind::Dense,
            Layer::Relu => LayerKind::Relu,
            Layer::LeakyRelu { .. } => LayerKind::LeakyRelu,
            Layer::Sigmoid => LayerKind::Sigmoid,
            Layer::Tanh => LayerKind::Tanh,
            Layer::Gelu => LayerKind::Gelu,
            Layer::Conv2d(_) => LayerKind::Conv2d,
            Layer::AvgPool2d(_) => LayerKind::AvgPool2d,
            Layer::MaxPool2d(_) => LayerKind::MaxPool2d,
            Layer::Flatten => LayerKind::Flatten,
        }
    }

    /// Number of parameters (weights and biases, padding excluded).
    pub fn parameter_count(&self) -> usize {
        match self {
            Layer::Dense(d) => d.in_dim.saturating_mul(d.out_dim).saturating_add(d.out_dim),
            Layer::Conv2d(c) => c.weight.len().saturating_add(c.bias.len()),
            _ => 0,
        }
    }

    /// The output shape for `input`, checking that the layer accepts it.
    pub fn output_shape(&self, input: Shape) -> Result<Shape, Error> {
        match self {
            Layer::Dense(d) => {
                if d.in_dim == 0 || d.out_dim == 0 {
                    return Err(Error::BadLayerParameters);
                }
                if input.len() != d.in_dim {
                    return Err(Error::ShapeMismatch);
                }
                Ok(Shape::vector(d.out_dim))
            }
            Layer::Conv2d(c) => c.geometry.output_shape(input),
            Layer::AvgPool2d(p) | Layer::MaxPool2d(p) => p.output_shape(input),
            Layer::Flatten => Ok(Shape::vector(input.len())),
            Layer::LeakyRelu { alpha } if !(alpha.is_finite() && (0.0..1.0).contains(alpha)) => {
                Err(Error::BadLayerParameters)
            }
            _ => Ok(input),
        }
    }
}

/// A layer with the shapes it maps between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerInfo<'a> {
    /// The layer.
    pub layer: Layer<'a>,
    /// Its input shape.
    pub input: Shape,
    /// Its output shape.
    pub output: Shape,
}

/// The ping-pong activation buffers of an evaluation, in f32 values: evaluation writes
/// every intermediate result alternately to buffer A and buffer B (a Dense followed by a
/// ReLU is one fused step; a Flatten that is not last moves nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ArenaPlan {
    /// Values in buffer A.
    pub a: usize,
    /// Values in buffer B.
    pub b: usize,
}

impl ArenaPlan {
    /// Total f32 values.
    pub fn len(&self) -> Option<usize> {
        self.a.checked_add(self.b)
    }

    /// The plan for `count` layers with kinds `kind(i)` and output lengths `out_len(i)`.
    pub fn new(
        count: usize,
        kind: impl Fn(usize) -> LayerKind,
        out_len: impl Fn(usize) -> usize,
    ) -> Self {
        let mut plan = ArenaPlan::default();
        let mut writes_a = true;
        let mut i = 0;
        while i < count {
            let step = fused_step_len(count, i, &kind);
            let last = i + step >= count;
            let out = out_len(i + step - 1);
            if !last && kind(i) != LayerKind::Flatten {
                let slot = if writes_a { &mut plan.a } else { &mut plan.b };
                *slot = (*slot).max(out);
                writes_a = !writes_a;
            }
            i += step;
        }
        plan
    }
}

/// Layers consumed by the step starting at layer `i`: 2 for a Dense followed by a ReLU
/// (evaluated as one fused kernel), else 1.
fn fused_step_len(count: usize, i: usize, kind: impl Fn(usize) -> LayerKind) -> usize {
    if kind(i) == LayerKind::Dense && i + 1 < count && kind(i + 1) == LayerKind::Relu {
        2
    } else {
        1
    }
}

/// The patched layers of a model: their parameter blocks live in caller RAM, in the
/// blob's own layout, so evaluation runs the same kernels on them.
#[derive(Debug, Clone, Copy, Default)]
struct Overlay<'a> {
    /// Every patched layer's blocks (weights then bias), in layer order.
    ram: &'a [f32],
    /// Patched layer indices, ascending; `count` of them are used.
    layers: [u32; MAX_PATCH_LAYERS],
    /// Start of each patched layer's blocks in `ram`.
    offsets: [u32; MAX_PATCH_LAYERS],
    count: u8,
    /// Sequence number of the applied patch (0: none).
    sequence: u32,
}

impl<'a> Overlay<'a> {
    /// The RAM blocks replacing layer `index`'s, if it is patched.
    fn blocks(
        &self,
        index: usize,
        weight_len: usize,
        bias_len: usize,
    ) -> Option<(&'a [f32], &'a [f32])> {
        let slot = self
            .layers
            .get(..usize::from(self.count))?
            .iter()
            .position(|&l| l as usize == index)?;
        let start = *self.offsets.get(slot)? as usize;
        let mid = start.checked_add(weight_len)?;
        let end = mid.checked_add(bias_len)?;
        Some((self.ram.get(start..mid)?, self.ram.get(mid..end)?))
    }
}

/// A validated model blob, read in place (e.g. a `&'static [u8]` in flash), optionally
/// with a weight-delta patch applied ([`Model::with_patch`]).
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    bytes: &'a [u8],
    input_shape: Shape,
    output_len: usize,
    layer_count: usize,
    parameter_count: usize,
    arena: ArenaPlan,
    overlay: Overlay<'a>,
}

/// The entry points every device model type has, written once inside its `impl` block:
/// `evaluate` (the fastest kernels of this CPU), `evaluate_bytes` (the arena as bytes,
/// e.g. from C) and `required_arena_bytes`, all from the type's own `evaluate_with` and
/// `required_arena_len`. Plain inherent methods, so callers need no trait in scope.
macro_rules! evaluate_entry_points {
    ($ty:literal) => {
        #[doc = concat!(
                    "Evaluate on one input with the fastest kernels this CPU supports ([`",
                    $ty,
                    "::evaluate_with`] with [`kernels::best`](crate::kernels::best)); fails only \
             on the argument lengths."
                )]
        pub fn evaluate(
            &self,
            input: &[f32],
            arena: &mut [f32],
            output: &mut [f32],
        ) -> Result<(), $crate::Error> {
            self.evaluate_with($crate::kernels::best(), input, arena, output)
        }

        #[doc = concat!(
                    "[`", $ty, "::evaluate`] with the arena given as bytes (e.g. from C); it must \
             be 4-byte aligned and at least [`", $ty, "::required_arena_bytes`] long."
                )]
        pub fn evaluate_bytes(
            &self,
            input: &[f32],
            arena: &mut [u8],
            output: &mut [f32],
        ) -> Result<(), $crate::Error> {
            self.evaluate(input, $crate::model::f32_arena(arena)?, output)
        }

        #[doc = concat!(
                    "Caller scratch memory for [`", $ty, "::evaluate_bytes`], in bytes \
             (`4 * required_arena_len()`)."
                )]
        pub fn required_arena_bytes(&self) -> usize {
            self.required_arena_len().saturating_mul(4)
        }
    };
}
pub(crate) use evaluate_entry_points;

impl<'a> Model<'a> {
    /// Validate `bytes` completely and borrow it as a model.
    ///
    /// `bytes` must start at a 4-byte aligned address (16 recommended; see
    /// `c_array`'s `aligned(16)`), so that the f32 blocks can be read in place.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.as_ptr().align_offset(core::mem::align_of::<f32>()) != 0 {
            return Err(Error::MisalignedBuffer);
        }
        let header = parse_header(bytes)?;
        let model = Model {
            bytes,
            input_shape: header.input_shape,
            output_len: header.output_len,
            layer_count: header.layer_count,
            parameter_count: 0,
            arena: ArenaPlan::default(),
            overlay: Overlay::default(),
        };
        // Decode and check every layer, chaining shapes, and the exact block layout.
        let mut shape = header.input_shape;
        let mut next_block = header.data_start;
        let mut parameters = 0usize;
        for i in 0..header.layer_count {
            let words = model.entry(i)?;
            let layer = decode_layer(bytes, &words)?;
            check_reserved_words(&words, &layer)?;
            for (offset, block) in blocks(&words, &layer) {
                if offset != next_block {
                    return Err(Error::BadBlockOffset);
                }
                if block.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFiniteParameter);
                }
                let end = offset.checked_add(block.len().checked_mul(4).ok_or(Error::Overflow)?);
                next_block = end.and_then(format::align_block).ok_or(Error::Overflow)?;
            }
            shape = layer.output_shape(shape)?;
            parameters = parameters
                .checked_add(layer.parameter_count())
                .ok_or(Error::Overflow)?;
        }
        if next_block != bytes.len() {
            return Err(Error::BlockOutOfRange);
        }
        if shape.len() != header.output_len {
            return Err(Error::OutputSizeMismatch);
        }
        if parameters != header.parameter_count {
            return Err(Error::ParameterCountMismatch);
        }
        let arena = model.plan_arena();
        let arena_bytes = arena
            .len()
            .and_then(|n| n.checked_mul(4))
            .ok_or(Error::Overflow)?;
        if arena_bytes != header.arena_bytes {
            return Err(Error::ArenaSizeMismatch);
        }
        Ok(Model {
            parameter_count: parameters,
            arena,
            ..model
        })
    }

    /// The (base) blob's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Apply a weight-delta patch: check it against this model's base blob (SHA-256,
    /// layers, shapes, regions, a sequence number above [`Model::patch_sequence`]), then
    /// copy the patched layers' parameters into `ram` (at least
    /// [`Patch::required_ram_len`] values) and return the patched model. The base blob
    /// stays where it is (flash); every other layer is still read from it.
    ///
    /// On error nothing has been written to `ram` and `self` is unchanged, so the
    /// running model keeps running. Applying a newer patch to a patched model replaces
    /// the old patch (patches always apply to the base blob).
    pub fn with_patch(&self, patch: &Patch<'_>, ram: &'a mut [f32]) -> Result<Model<'a>, Error> {
        patch.check_binding(self)?;
        if patch.sequence() <= self.overlay.sequence {
            return Err(Error::StalePatch);
        }
        let needed = patch.required_ram_len();
        if ram.len() < needed {
            return Err(Error::PatchRamTooSmall);
        }
        let mut overlay = Overlay {
            sequence: patch.sequence(),
            ..Overlay::default()
        };
        let mut at = 0usize;
        for (slot, record) in patch.layers().enumerate() {
            *overlay
                .layers
                .get_mut(slot)
                .ok_or(Error::BadPatchLayerCount)? =
                u32::try_from(record.layer_index).map_err(|_| Error::Overflow)?;
            *overlay
                .offsets
                .get_mut(slot)
                .ok_or(Error::BadPatchLayerCount)? =
                u32::try_from(at).map_err(|_| Error::Overflow)?;
            overlay.count = overlay.count.saturating_add(1);
            at = at.checked_add(record.value_count).ok_or(Error::Overflow)?;
        }
        patch.fill_ram(self, ram)?;
        let ram: &'a [f32] = ram;
        overlay.ram = ram.get(..needed).ok_or(Error::PatchRamTooSmall)?;
        Ok(Model { overlay, ..*self })
    }

    /// [`Model::with_patch`] with the RAM given as bytes (e.g. from C); it must be
    /// 4-byte aligned and at least [`Patch::required_ram_bytes`] long.
    pub fn with_patch_bytes(
        &self,
        patch: &Patch<'_>,
        ram: &'a mut [u8],
    ) -> Result<Model<'a>, Error> {
        let usable = ram.len() / 4 * 4;
        let ram = ram.get_mut(..usable).ok_or(Error::PatchRamTooSmall)?;
        let ram: &mut [f32] =
            bytemuck::try_cast_slice_mut(ram).map_err(|_| Error::MisalignedPatchRam)?;
        self.with_patch(patch, ram)
    }

    /// Sequence number of the applied patch, 0 for the base model.
    pub fn patch_sequence(&self) -> u32 {
        self.overlay.sequence
    }

    /// The caller RAM holding the patched layers' parameters (empty without a patch).
    pub fn patch_ram(&self) -> &'a [f32] {
        self.overlay.ram
    }

    /// Indices of the patched layers, ascending (empty without a patch).
    pub fn patched_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.overlay
            .layers
            .iter()
            .take(usize::from(self.overlay.count))
            .map(|&l| l as usize)
    }

    /// The model without its patch (the base blob alone).
    pub fn base(&self) -> Model<'a> {
        Model {
            overlay: Overlay::default(),
            ..*self
        }
    }

    /// The blob format version.
    pub fn format_version(&self) -> u16 {
        format::FORMAT_VERSION
    }

    /// The input shape (without batch dimension).
    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    /// Number of input values.
    pub fn input_len(&self) -> usize {
        self.input_shape.len()
    }

    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// Number of parameters (weights and biases, padding excluded).
    pub fn parameter_count(&self) -> usize {
        self.parameter_count
    }

    /// Exact caller scratch memory needed by [`Model::evaluate`], in f32 values: two
    /// ping-pong activation buffers, each as large as the largest intermediate result
    /// written to it. Convolutions and pooling need no further scratch.
    pub fn required_arena_len(&self) -> usize {
        self.arena.a.saturating_add(self.arena.b)
    }

    /// SHA-256 of the exact blob bytes (what a patch binds to).
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.bytes).into()
    }

    /// The layers in order, with their input and output shapes.
    pub fn layers(&self) -> impl Iterator<Item = LayerInfo<'a>> + '_ {
        let mut shape = self.input_shape;
        (0..self.layer_count).map_while(move |i| {
            let layer = self.layer(i)?;
            let input = shape;
            shape = layer.output_shape(input).ok()?;
            Some(LayerInfo {
                layer,
                input,
                output: shape,
            })
        })
    }

    /// Layer `index` (with its patched parameters, if any), or `None` past the end.
    pub fn layer(&self, index: usize) -> Option<Layer<'a>> {
        let layer = self.base_layer(index)?;
        if self.overlay.count == 0 {
            return Some(layer);
        }
        Some(match layer {
            Layer::Dense(d) => match self.overlay.blocks(index, d.panels.len(), d.bias.len()) {
                Some((panels, bias)) => Layer::Dense(Dense { panels, bias, ..d }),
                None => layer,
            },
            Layer::Conv2d(c) => match self.overlay.blocks(index, c.weight.len(), c.bias.len()) {
                Some((weight, bias)) => Layer::Conv2d(Conv2d { weight, bias, ..c }),
                None => layer,
            },
            _ => layer,
        })
    }

    /// Layer `index` as the base blob stores it (ignoring any patch).
    pub fn base_layer(&self, index: usize) -> Option<Layer<'a>> {
        let words = self.entry(index).ok()?;
        decode_layer(self.bytes, &words).ok()
    }

    evaluate_entry_points!("Model");

    /// Evaluate the model on one input with an explicit kernel set (tests compare ISAs
    /// with this).
    ///
    /// Checks `input.len() == input_len()`, `output.len() == output_len()` and
    /// `arena.len() >= required_arena_len()`; after that it cannot fail.
    pub fn evaluate_with(
        &self,
        kernels: &Kernels,
        input: &[f32],
        arena: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), Error> {
        self.evaluate_tapped(kernels, input, arena, output, &mut |_, _| {})
    }

    /// [`Model::evaluate_with`], calling `tap(layer, values)` after every evaluation step
    /// with the index of the step's last layer and its result (so a fused Dense + ReLU
    /// reports the ReLU's index and output). Patch modules at a feature layer copy the
    /// activation they read this way, without a second buffer plan.
    pub(crate) fn evaluate_tapped(
        &self,
        kernels: &Kernels,
        input: &[f32],
        arena: &mut [f32],
        output: &mut [f32],
        tap: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), Error> {
        if input.len() != self.input_len() {
            return Err(Error::InputLength);
        }
        if output.len() != self.output_len {
            return Err(Error::OutputLength);
        }
        let (buf_a, rest) = arena
            .split_at_mut_checked(self.arena.a)
            .ok_or(Error::ArenaTooSmall)?;
        let buf_b = rest.get_mut(..self.arena.b).ok_or(Error::ArenaTooSmall)?;
        // From here on every failure below is impossible for a validated blob: the
        // `?`s only keep the code free of panicking paths.
        #[derive(Clone, Copy, PartialEq)]
        enum Current {
            Input,
            A,
            B,
        }
        let mut current = Current::Input;
        let mut current_len = input.len();
        let mut i = 0;
        while i < self.layer_count {
            let layer = self.layer(i).ok_or(Error::ShapeMismatch)?;
            let step = fused_step_len(self.layer_count, i, |j| self.kind(j));
            let fused_relu = step == 2;
            let last = i + step >= self.layer_count;
            i += step;
            if let (Layer::Flatten, false) = (layer, last) {
                continue;
            }
            let out_len = match layer {
                Layer::Dense(d) => d.out_dim,
                Layer::Conv2d(c) => {
                    let (oh, ow) = c.geometry.out_hw().ok_or(Error::ShapeMismatch)?;
                    c.geometry.out_channels * oh * ow
                }
                Layer::AvgPool2d(p) | Layer::MaxPool2d(p) => {
                    let (oh, ow) = p.out_hw().ok_or(Error::ShapeMismatch)?;
                    p.channels * oh * ow
                }
                _ => current_len,
            };
            let (src, dst, next): (&[f32], &mut [f32], Current) = match (current, last) {
                (Current::Input, true) => (input, &mut *output, Current::Input),
                (Current::A, true) => (sub(buf_a, current_len)?, &mut *output, Current::Input),
                (Current::B, true) => (sub(buf_b, current_len)?, &mut *output, Current::Input),
                (Current::Input, false) => (input, sub_mut(buf_a, out_len)?, Current::A),
                (Current::B, false) => (
                    sub(buf_b, current_len)?,
                    sub_mut(buf_a, out_len)?,
                    Current::A,
                ),
                (Current::A, false) => (
                    sub(buf_a, current_len)?,
                    sub_mut(buf_b, out_len)?,
                    Current::B,
                ),
            };
            layers::apply(kernels, &layer, fused_relu, src, &mut *dst)?;
            tap(i - 1, dst);
            current = next;
            current_len = out_len;
        }
        Ok(())
    }

    /// The 16 words of layer-table entry `index`.
    fn entry(&self, index: usize) -> Result<[u32; 16], Error> {
        let start = index
            .checked_mul(LAYER_ENTRY_SIZE)
            .and_then(|o| o.checked_add(HEADER_SIZE))
            .ok_or(Error::Overflow)?;
        let end = start.checked_add(LAYER_ENTRY_SIZE).ok_or(Error::Overflow)?;
        let raw = self.bytes.get(start..end).ok_or(Error::Truncated)?;
        // One bounds check for the whole entry, then 16 fixed-size reads.
        let mut words = [0u32; 16];
        for (w, b) in words.iter_mut().zip(raw.chunks_exact(4)) {
            *w = u32::from_le_bytes([
                b.first().copied().unwrap_or(0),
                b.get(1).copied().unwrap_or(0),
                b.get(2).copied().unwrap_or(0),
                b.get(3).copied().unwrap_or(0),
            ]);
        }
        Ok(words)
    }

    /// Kind of layer `index` (Flatten when unreadable, which cannot happen once validated).
    fn kind(&self, index: usize) -> LayerKind {
        let offset = index
            .saturating_mul(LAYER_ENTRY_SIZE)
            .saturating_add(HEADER_SIZE);
        read_u32(self.bytes, offset)
            .and_then(LayerKind::from_word)
            .unwrap_or(LayerKind::Flatten)
    }

    /// The arena plan; output lengths are recomputed per query (blobs have few layers
    /// and this runs once, at load, after every shape was checked).
    fn plan_arena(&self) -> ArenaPlan {
        ArenaPlan::new(
            self.layer_count,
            |i| self.kind(i),
            |i| self.layers().nth(i).map_or(0, |info| info.output.len()),
        )
    }
}

fn sub(buf: &[f32], len: usize) -> Result<&[f32], Error> {
    buf.get(..len).ok_or(Error::ArenaTooSmall)
}

fn sub_mut(buf: &mut [f32], len: usize) -> Result<&mut [f32], Error> {
    buf.get_mut(..len).ok_or(Error::ArenaTooSmall)
}

/// The checked fixed header.
struct Header {
    input_shape: Shape,
    output_len: usize,
    layer_count: usize,
    arena_bytes: usize,
    parameter_count: usize,
    data_start: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header, Error> {
    if bytes.len() < HEADER_SIZE {
        return Err(Error::Truncated);
    }
    if bytes.get(..4) != Some(&MAGIC[..]) {
        return Err(Error::BadMagic);
    }
    let word = |offset: usize| {
        read_u32(bytes, offset)
            .map(|w| w as usize)
            .ok_or(Error::Truncated)
    };
    if read_u16(bytes, 4) != Some(format::FORMAT_VERSION) {
        return Err(Error::UnsupportedVersion);
    }
    if read_u16(bytes, 6).map(usize::from) != Some(HEADER_SIZE) {
        return Err(Error::BadHeaderSize);
    }
    let total_len = word(8)?;
    if total_len > bytes.len() {
        return Err(Error::Truncated);
    }
    if total_len != bytes.len() {
        return Err(Error::LengthMismatch);
    }
    if read_u32(bytes, format::CRC_FIELD.start) != Some(format::blob_crc(bytes)) {
        return Err(Error::CrcMismatch);
    }
    if bytes
        .get(48..HEADER_SIZE)
        .is_none_or(|r| r.iter().any(|&b| b != 0))
    {
        return Err(Error::NonZeroReserved);
    }
    let rank = word(16)?;
    let dims = [word(20)?, word(24)?, word(28)?];
    if !(1..=3).contains(&rank)
        || dims
            .get(rank..)
            .is_none_or(|unused| unused.iter().any(|&d| d != 0))
    {
        return Err(Error::BadInputShape);
    }
    let input_shape = Shape::new(dims.get(..rank).ok_or(Error::BadInputShape)?)?;
    let layer_count = word(36)?;
    if layer_count == 0 {
        return Err(Error::BadLayerCount);
    }
    let data_start = layer_count
        .checked_mul(LAYER_ENTRY_SIZE)
        .and_then(|t| t.checked_add(HEADER_SIZE))
        .filter(|&end| end <= bytes.len())
        .ok_or(Error::BadLayerCount)?;
    Ok(Header {
        input_shape,
        output_len: word(32)?,
        layer_count,
        arena_bytes: word(40)?,
        parameter_count: word(44)?,
        data_start,
    })
}

fn usize_word(words: &[u32; 16], k: usize) -> usize {
    words.get(k).map_or(0, |&w| w as usize)
}

/// The f32 block of `len` values at `offset`.
fn f32_block(bytes: &[u8], offset: usize, len: usize) -> Result<&[f32], Error> {
    if !offset.is_multiple_of(format::BLOCK_ALIGN) {
        return Err(Error::MisalignedOffset);
    }
    let end = len
        .checked_mul(4)
        .and_then(|n| n.checked_add(offset))
        .ok_or(Error::Overflow)?;
    let raw = bytes.get(offset..end).ok_or(Error::BlockOutOfRange)?;
    bytemuck::try_cast_slice(raw).map_err(|_| Error::MisalignedBuffer)
}

fn decode_layer<'a>(bytes: &'a [u8], words: &[u32; 16]) -> Result<Layer<'a>, Error> {
    let w = |k: usize| usize_word(words, k);
    let kind = LayerKind::from_word(words[0]).ok_or(Error::UnknownLayerKind)?;
    Ok(match kind {
        LayerKind::Dense => {
            let (in_dim, out_dim) = (w(1), w(2));
            let panel_len = format::dense_panel_len(in_dim, out_dim).ok_or(Error::Overflow)?;
            Layer::Dense(Dense {
                in_dim,
                out_dim,
                panels: f32_block(bytes, w(3), panel_len)?,
                bias: f32_block(bytes, w(4), out_dim)?,
            })
        }
        LayerKind::Relu => Layer::Relu,
        LayerKind::LeakyRelu => Layer::LeakyRelu {
            alpha: f32::from_bits(words[1]),
        },
        LayerKind::Sigmoid => Layer::Sigmoid,
        LayerKind::Tanh => Layer::Tanh,
        LayerKind::Gelu => Layer::Gelu,
        LayerKind::Conv2d => {
            let geometry = ConvGeometry {
                in_channels: w(1),
                out_channels: w(2),
                in_h: w(3),
                in_w: w(4),
                kernel_h: w(5),
                kernel_w: w(6),
                stride_h: w(7),
                stride_w: w(8),
                pad_top: w(9),
                pad_left: w(10),
                pad_bottom: w(11),
                pad_right: w(12),
            };
            let weight_len = geometry.weight_len().ok_or(Error::Overflow)?;
            Layer::Conv2d(Conv2d {
                geometry,
                weight: f32_block(bytes, w(13), weight_len)?,
                bias: f32_block(bytes, w(14), geometry.out_channels)?,
            })
        }
        LayerKind::AvgPool2d | LayerKind::MaxPool2d => {
            let geometry = PoolGeometry {
                channels: w(1),
                in_h: w(2),
                in_w: w(3),
                kernel_h: w(4),
                kernel_w: w(5),
                stride_h: w(6),
                stride_w: w(7),
                pad_top: w(8),
                pad_left: w(9),
                pad_bottom: w(10),
                pad_right: w(11),
            };
            if kind == LayerKind::AvgPool2d {
                Layer::AvgPool2d(geometry)
            } else {
                Layer::MaxPool2d(geometry)
            }
        }
        LayerKind::Flatten => Layer::Flatten,
    })
}

/// Words 1.. that a kind uses; the rest must be zero.
fn used_words(kind: LayerKind) -> usize {
    match kind {
        LayerKind::Dense => 4,
        LayerKind::LeakyRelu => 1,
        LayerKind::Conv2d => 14,
        LayerKind::AvgPool2d | LayerKind::MaxPool2d => 11,
        _ => 0,
    }
}

fn check_reserved_words(words: &[u32; 16], layer: &Layer<'_>) -> Result<(), Error> {
    let used = used_words(layer.kind());
    if words.iter().skip(1 + used).any(|&w| w != 0) {
        return Err(Error::NonZeroReserved);
    }
    Ok(())
}

/// The parameter blocks of a decoded layer with their offsets, in blob order.
fn blocks<'a>(words: &[u32; 16], layer: &Layer<'a>) -> impl Iterator<Item = (usize, &'a [f32])> {
    let pair = match layer {
        Layer::Dense(d) => Some([
            (usize_word(words, 3), d.panels),
            (usize_word(words, 4), d.bias),
        ]),
        Layer::Conv2d(c) => Some([
            (usize_word(words, 13), c.weight),
            (usize_word(words, 14), c.bias),
        ]),
        _ => None,
    };
    pair.into_iter().flatten()
}

/// A byte arena (e.g. from C) viewed as f32: its whole 4-byte words, which must be
/// 4-byte aligned. Shared by the `evaluate_bytes` of both model kinds.
pub(crate) fn f32_arena(arena: &mut [u8]) -> Result<&mut [f32], Error> {
    let usable = arena.len() / 4 * 4;
    let arena = arena.get_mut(..usable).ok_or(Error::ArenaTooSmall)?;
    bytemuck::try_cast_slice_mut(arena).map_err(|_| Error::MisalignedArena)
}
