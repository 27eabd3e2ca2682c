//! The model-blob encoder (feature `encode`): the host writes blobs with the core's own
//! definition of the format. No allocation: [`ModelWriter::encoded_len`] says how many
//! bytes to provide, [`ModelWriter::write`] fills a caller slice.

#![allow(clippy::indexing_slicing)] // Fixed-size word arrays with constant ranges only.

use super::{
    BLOCK_ALIGN, ConvGeometry, DENSE_PANEL, FORMAT_VERSION, HEADER_SIZE, LAYER_ENTRY_SIZE,
    LayerKind, MAGIC, PoolGeometry, Shape,
};
use crate::Error;
use crate::model::ArenaPlan;

/// One layer to encode, its parameters borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerSpec<'p> {
    /// `y = W x + b`.
    Dense {
        /// Number of inputs.
        in_dim: usize,
        /// Number of outputs.
        out_dim: usize,
        /// `out_dim x in_dim`, ROW-MAJOR (`weight[o * in_dim + i]`); the writer packs
        /// it into panels.
        weight: &'p [f32],
        /// `out_dim` biases.
        bias: &'p [f32],
    },
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `alpha * x`, `alpha` in `[0, 1)`.
    LeakyRelu {
        /// Negative-side slope.
        alpha: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Exact GELU.
    Gelu,
    /// 2-D convolution with OIHW weights.
    Conv2d {
        /// Shapes, strides, padding.
        geometry: ConvGeometry,
        /// `out * in * kh * kw` weights, OIHW row-major.
        weight: &'p [f32],
        /// `out_channels` biases.
        bias: &'p [f32],
    },
    /// Average pooling (padding excluded from the count).
    AvgPool2d(PoolGeometry),
    /// Max pooling.
    MaxPool2d(PoolGeometry),
    /// `[c, h, w]` to `[c*h*w]`.
    Flatten,
}

impl LayerSpec<'_> {
    fn kind(&self) -> LayerKind {
        match self {
            LayerSpec::Dense { .. } => LayerKind::Dense,
            LayerSpec::Relu => LayerKind::Relu,
            LayerSpec::LeakyRelu { .. } => LayerKind::LeakyRelu,
            LayerSpec::Sigmoid => LayerKind::Sigmoid,
            LayerSpec::Tanh => LayerKind::Tanh,
            LayerSpec::Gelu => LayerKind::Gelu,
            LayerSpec::Conv2d { .. } => LayerKind::Conv2d,
            LayerSpec::AvgPool2d(_) => LayerKind::AvgPool2d,
            LayerSpec::MaxPool2d(_) => LayerKind::MaxPool2d,
            LayerSpec::Flatten => LayerKind::Flatten,
        }
    }

    /// Check parameters against the input shape; the output shape.
    fn output_shape(&self, input: Shape) -> Result<Shape, Error> {
        let finite = |v: &[f32]| {
            if v.iter().all(|x| x.is_finite()) {
                Ok(())
            } else {
                Err(Error::NonFiniteParameter)
            }
        };
        match *self {
            LayerSpec::Dense {
                in_dim,
                out_dim,
                weight,
                bias,
            } => {
                if in_dim == 0
                    || out_dim == 0
                    || Some(weight.len()) != in_dim.checked_mul(out_dim)
                    || bias.len() != out_dim
                {
                    return Err(Error::BadLayerParameters);
                }
                if input.len() != in_dim {
                    return Err(Error::ShapeMismatch);
                }
                finite(weight)?;
                finite(bias)?;
                Ok(Shape::vector(out_dim))
            }
            LayerSpec::Conv2d {
                geometry,
                weight,
                bias,
            } => {
                let out = geometry.output_shape(input)?;
                if Some(weight.len()) != geometry.weight_len()
                    || bias.len() != geometry.out_channels
                {
                    return Err(Error::BadLayerParameters);
                }
                finite(weight)?;
                finite(bias)?;
                Ok(out)
            }
            LayerSpec::AvgPool2d(p) | LayerSpec::MaxPool2d(p) => p.output_shape(input),
            LayerSpec::Flatten => Ok(Shape::vector(input.len())),
            LayerSpec::LeakyRelu { alpha } => {
                if alpha.is_finite() && (0.0..1.0).contains(&alpha) {
                    Ok(input)
                } else {
                    Err(Error::BadLayerParameters)
                }
            }
            _ => Ok(input),
        }
    }

    /// Lengths (in f32) of the layer's parameter blocks in blob order.
    fn block_lens(&self) -> [usize; 2] {
        match *self {
            LayerSpec::Dense {
                in_dim, out_dim, ..
            } => [
                super::dense_panel_len(in_dim, out_dim).unwrap_or(0),
                out_dim,
            ],
            LayerSpec::Conv2d { weight, bias, .. } => [weight.len(), bias.len()],
            _ => [0, 0],
        }
    }

    fn parameter_count(&self) -> usize {
        match *self {
            LayerSpec::Dense { weight, bias, .. } | LayerSpec::Conv2d { weight, bias, .. } => {
                weight.len() + bias.len()
            }
            _ => 0,
        }
    }
}

/// Encodes a checked list of layers as a model blob.
#[derive(Debug, Clone, Copy)]
pub struct ModelWriter<'p> {
    input_shape: Shape,
    layers: &'p [LayerSpec<'p>],
    output_len: usize,
    parameter_count: usize,
    arena_bytes: usize,
    encoded_len: usize,
}

impl<'p> ModelWriter<'p> {
    /// Check the layers (parameter lengths, finite values, shapes chained from
    /// `input_shape`) and size the blob. Fails with the same errors the decoder would.
    pub fn new(input_shape: &[usize], layers: &'p [LayerSpec<'p>]) -> Result<Self, Error> {
        let input_shape = Shape::new(input_shape)?;
        if layers.is_empty() {
            return Err(Error::BadLayerCount);
        }
        let mut shape = input_shape;
        let mut parameter_count = 0usize;
        let mut end = layers
            .len()
            .checked_mul(LAYER_ENTRY_SIZE)
            .and_then(|t| t.checked_add(HEADER_SIZE))
            .ok_or(Error::Overflow)?;
        for layer in layers {
            shape = layer.output_shape(shape)?;
            parameter_count = parameter_count
                .checked_add(layer.parameter_count())
                .ok_or(Error::Overflow)?;
            for len in layer.block_lens().into_iter().filter(|&l| l > 0) {
                end = len
                    .checked_mul(4)
                    .and_then(|b| b.checked_add(end))
                    .and_then(super::align_block)
                    .ok_or(Error::Overflow)?;
            }
        }
        let out_len = |i: usize| {
            let mut s = input_shape;
            for l in layers.iter().take(i + 1) {
                s = l.output_shape(s).unwrap_or(s);
            }
            s.len()
        };
        let plan = ArenaPlan::new(
            layers.len(),
            |i| layers.get(i).map_or(LayerKind::Flatten, LayerSpec::kind),
            out_len,
        );
        let arena_bytes = plan
            .len()
            .and_then(|n| n.checked_mul(4))
            .ok_or(Error::Overflow)?;
        // Every header field is a u32.
        for v in [end, shape.len(), layers.len(), arena_bytes, parameter_count] {
            u32::try_from(v).map_err(|_| Error::Overflow)?;
        }
        Ok(ModelWriter {
            input_shape,
            layers,
            output_len: shape.len(),
            parameter_count,
            arena_bytes,
            encoded_len: end,
        })
    }

    /// Exact length of the blob in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Arena bytes the decoded model will require.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Write the blob into `out[..encoded_len()]`; returns the number of bytes written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, Error> {
        let out = out
            .get_mut(..self.encoded_len)
            .ok_or(Error::BufferTooSmall)?;
        out.fill(0);
        let mut w = Cursor { out };
        w.bytes(0, &MAGIC)?;
        w.bytes(4, &FORMAT_VERSION.to_le_bytes())?;
        w.bytes(6, &(HEADER_SIZE as u16).to_le_bytes())?;
        w.word(8, self.encoded_len)?;
        w.word(16, self.input_shape.dims().len())?;
        for (k, &d) in self.input_shape.dims().iter().enumerate() {
            w.word(20 + 4 * k, d)?;
        }
        w.word(32, self.output_len)?;
        w.word(36, self.layers.len())?;
        w.word(40, self.arena_bytes)?;
        w.word(44, self.parameter_count)?;
        let mut next = HEADER_SIZE + LAYER_ENTRY_SIZE * self.layers.len();
        for (index, layer) in self.layers.iter().enumerate() {
            let entry = HEADER_SIZE + LAYER_ENTRY_SIZE * index;
            let mut words = [0usize; 16];
            words[0] = layer.kind() as usize;
            // Block offsets, in blob order.
            let mut offsets = [0usize; 2];
            for (slot, len) in offsets.iter_mut().zip(layer.block_lens()) {
                if len > 0 {
                    *slot = next;
                    next = super::align_block(next + 4 * len).ok_or(Error::Overflow)?;
                }
            }
            match *layer {
                LayerSpec::Dense {
                    in_dim,
                    out_dim,
                    weight,
                    bias,
                } => {
                    words[1..5].copy_from_slice(&[in_dim, out_dim, offsets[0], offsets[1]]);
                    // Panel-major: panel p, input i, row r -> W[8p + r][i].
                    for (o, row) in weight.chunks_exact(in_dim).enumerate() {
                        let (panel, r) = (o / DENSE_PANEL, o % DENSE_PANEL);
                        for (i, &v) in row.iter().enumerate() {
                            let index = (panel * in_dim + i) * DENSE_PANEL + r;
                            w.f32(offsets[0] + 4 * index, v)?;
                        }
                    }
                    w.f32s(offsets[1], bias)?;
                }
                LayerSpec::LeakyRelu { alpha } => words[1] = alpha.to_bits() as usize,
                LayerSpec::Conv2d {
                    geometry: g,
                    weight,
                    bias,
                } => {
                    words[1..15].copy_from_slice(&[
                        g.in_channels,
                        g.out_channels,
                        g.in_h,
                        g.in_w,
                        g.kernel_h,
                        g.kernel_w,
                        g.stride_h,
                        g.stride_w,
                        g.pad_top,
                        g.pad_left,
                        g.pad_bottom,
                        g.pad_right,
                        offsets[0],
                        offsets[1],
                    ]);
                    w.f32s(offsets[0], weight)?;
                    w.f32s(offsets[1], bias)?;
                }
                LayerSpec::AvgPool2d(p) | LayerSpec::MaxPool2d(p) => {
                    words[1..12].copy_from_slice(&[
                        p.channels,
                        p.in_h,
                        p.in_w,
                        p.kernel_h,
                        p.kernel_w,
                        p.stride_h,
                        p.stride_w,
                        p.pad_top,
                        p.pad_left,
                        p.pad_bottom,
                        p.pad_right,
                    ]);
                }
                _ => {}
            }
            for (k, &v) in words.iter().enumerate() {
                w.word(entry + 4 * k, v)?;
            }
        }
        debug_assert_eq!(next, self.encoded_len);
        debug_assert_eq!(next % BLOCK_ALIGN, 0);
        let crc = super::blob_crc(w.out);
        w.bytes(super::CRC_FIELD.start, &crc.to_le_bytes())?;
        Ok(self.encoded_len)
    }
}

/// Bounds-checked little-endian writes.
struct Cursor<'o> {
    out: &'o mut [u8],
}

impl Cursor<'_> {
    fn bytes(&mut self, at: usize, b: &[u8]) -> Result<(), Error> {
        let end = at.checked_add(b.len()).ok_or(Error::Overflow)?;
        self.out
            .get_mut(at..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(b);
        Ok(())
    }

    fn word(&mut self, at: usize, v: usize) -> Result<(), Error> {
        let v = u32::try_from(v).map_err(|_| Error::Overflow)?;
        self.bytes(at, &v.to_le_bytes())
    }

    fn f32(&mut self, at: usize, v: f32) -> Result<(), Error> {
        self.bytes(at, &v.to_le_bytes())
    }

    fn f32s(&mut self, at: usize, values: &[f32]) -> Result<(), Error> {
        for (k, &v) in values.iter().enumerate() {
            self.f32(at + 4 * k, v)?;
        }
        Ok(())
    }
}
