//! The device model blob, format version 1: defined here once, read in place.
//!
//! All integers and floats are little-endian. Offsets are from the start of the blob.
//!
//! ```text
//! Header (64 bytes)
//!   0  magic            4 bytes "PRMB"
//!   4  format_version   u16 = 1
//!   6  header_size      u16 = 64
//!   8  total_len        u32, the blob's exact length
//!  12  crc32            u32, CRC-32 (ISO-HDLC) of bytes 0..12 then 16..total_len
//!  16  input_rank       u32 in 1..=3
//!  20  input_shape      3 x u32 (unused trailing dimensions are 0)
//!  32  output_len       u32, number of output values
//!  36  layer_count      u32 >= 1
//!  40  arena_bytes      u32, exactly `Model::required_arena_bytes()`
//!  44  parameter_count  u32, weights + biases (padding excluded)
//!  48  reserved         16 bytes of 0
//! Layer table (layer_count x 64 bytes, from offset 64): 16 u32 words per layer,
//!   word 0 the kind (LayerKind), then the kind's fields, unused words 0:
//!   Dense      in_dim, out_dim, weight_offset, bias_offset
//!   LeakyReLU  alpha (f32 bits)
//!   Conv2d     in_c, out_c, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w,
//!              pad_top, pad_left, pad_bottom, pad_right, weight_offset, bias_offset
//!   Avg/MaxPool channels, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w,
//!              pad_top, pad_left, pad_bottom, pad_right
//! Parameter blocks (f32), in table order (weights then bias per layer), each starting
//!   at the previous block's end rounded up to 16 (zero padding); the blob ends at the
//!   last block's end rounded up to 16.
//!   Dense weights are PANEL-MAJOR: output rows in panels of 8 (the last panel padded
//!   with zero rows); panel p holds, for each input i, the 8 weights W[8p..8p+8][i].
//!   A batch-1 matvec then streams the weights once, linearly, with 8 outputs per
//!   SIMD register and no horizontal sums (the layout tract-linalg packs at run time).
//!   Conv2d weights are OIHW, row-major.
//! ```

#[cfg(feature = "encode")]
pub mod encode;

use crate::Error;

/// The four magic bytes at the start of every model blob.
pub const MAGIC: [u8; 4] = *b"PRMB";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_SIZE: usize = 64;
/// Size of one layer-table entry in bytes.
pub const LAYER_ENTRY_SIZE: usize = 64;
/// Alignment of every parameter block, in bytes.
pub const BLOCK_ALIGN: usize = 16;
/// Number of output rows in one panel of a dense weight matrix.
pub const DENSE_PANEL: usize = 8;
/// Byte range of the CRC field inside the header.
pub const CRC_FIELD: core::ops::Range<usize> = 12..16;

/// The CRC used by the blob (CRC-32/ISO-HDLC, the zlib CRC).
pub(crate) const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 of a blob, skipping the CRC field. `bytes` must be at least `HEADER_SIZE` long.
pub(crate) fn blob_crc(bytes: &[u8]) -> u32 {
    let mut digest = CRC32.digest();
    digest.update(bytes.get(..CRC_FIELD.start).unwrap_or(&[]));
    digest.update(bytes.get(CRC_FIELD.end..).unwrap_or(&[]));
    digest.finalize()
}

/// Layer kinds, as stored in word 0 of a layer-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LayerKind {
    /// Fully connected `y = W x + b`.
    Dense = 1,
    /// `max(x, 0)`.
    Relu = 2,
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu = 3,
    /// `1 / (1 + exp(-x))`.
    Sigmoid = 4,
    /// `tanh(x)`.
    Tanh = 5,
    /// Exact GELU, `x * Phi(x)`.
    Gelu = 6,
    /// 2-D convolution.
    Conv2d = 7,
    /// Average pooling (padding excluded from the count).
    AvgPool2d = 8,
    /// Max pooling (padding ignored).
    MaxPool2d = 9,
    /// `[c, h, w]` to `[c*h*w]`.
    Flatten = 10,
}

impl LayerKind {
    /// The kind stored as `word`, if known.
    pub const fn from_word(word: u32) -> Option<Self> {
        Some(match word {
            1 => LayerKind::Dense,
            2 => LayerKind::Relu,
            3 => LayerKind::LeakyRelu,
            4 => LayerKind::Sigmoid,
            5 => LayerKind::Tanh,
            6 => LayerKind::Gelu,
            7 => LayerKind::Conv2d,
            8 => LayerKind::AvgPool2d,
            9 => LayerKind::MaxPool2d,
            10 => LayerKind::Flatten,
            _ => return None,
        })
    }

    /// Short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            LayerKind::Dense => "Dense",
            LayerKind::Relu => "ReLU",
            LayerKind::LeakyRelu => "LeakyReLU",
            LayerKind::Sigmoid => "Sigmoid",
            LayerKind::Tanh => "Tanh",
            LayerKind::Gelu => "GELU",
            LayerKind::Conv2d => "Conv2d",
            LayerKind::AvgPool2d => "AvgPool2d",
            LayerKind::MaxPool2d => "MaxPool2d",
            LayerKind::Flatten => "Flatten",
        }
    }
}

/// A tensor shape without the batch dimension: rank 1..=3, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    rank: u8,
    dims: [usize; 3],
}

impl Shape {
    /// A shape from its dimensions (rank 1..=3, every dimension non-zero, the element
    /// count representable).
    pub fn new(dims: &[usize]) -> Result<Self, Error> {
        if dims.is_empty() || dims.len() > 3 || dims.contains(&0) {
            return Err(Error::BadInputShape);
        }
        let mut stored = [0; 3];
        for (s, &d) in stored.iter_mut().zip(dims) {
            *s = d;
        }
        let shape = Shape {
            rank: dims.len() as u8,
            dims: stored,
        };
        shape.checked_len().ok_or(Error::Overflow)?;
        Ok(shape)
    }

    /// A vector shape `[n]`.
    pub(crate) const fn vector(n: usize) -> Self {
        Shape {
            rank: 1,
            dims: [n, 0, 0],
        }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.dims.get(..self.rank as usize).unwrap_or(&[])
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.checked_len().unwrap_or(0)
    }

    /// True when the shape has no elements (never for a validated shape).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn checked_len(&self) -> Option<usize> {
        self.dims()
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// `[c, h, w]` when the shape has rank 3.
    pub(crate) fn chw(&self) -> Option<(usize, usize, usize)> {
        match self.dims() {
            &[c, h, w] => Some((c, h, w)),
            _ => None,
        }
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Geometry of a 2-D convolution over a `[in_channels, in_h, in_w]` input (no groups,
/// no dilation, zero padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Zero rows above.
    pub pad_top: usize,
    /// Zero columns on the left.
    pub pad_left: usize,
    /// Zero rows below.
    pub pad_bottom: usize,
    /// Zero columns on the right.
    pub pad_right: usize,
}

/// Geometry of a 2-D pooling window over a `[channels, in_h, in_w]` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Channels (unchanged by pooling).
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Padding above (must be smaller than the window).
    pub pad_top: usize,
    /// Padding on the left (must be smaller than the window).
    pub pad_left: usize,
    /// Padding below (must be smaller than the window).
    pub pad_bottom: usize,
    /// Padding on the right (must be smaller than the window).
    pub pad_right: usize,
}

/// `(in + pad_a + pad_b - kernel) / stride + 1`, or `None` when the kernel does not fit.
fn out_extent(
    input: usize,
    pad_a: usize,
    pad_b: usize,
    kernel: usize,
    stride: usize,
) -> Option<usize> {
    if kernel == 0 || stride == 0 {
        return None;
    }
    let padded = input.checked_add(pad_a)?.checked_add(pad_b)?;
    Some(padded.checked_sub(kernel)? / stride + 1)
}

impl ConvGeometry {
    /// Output height and width, or `None` when the geometry is invalid.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            out_extent(
                self.in_h,
                self.pad_top,
                self.pad_bottom,
                self.kernel_h,
                self.stride_h,
            )?,
            out_extent(
                self.in_w,
                self.pad_left,
                self.pad_right,
                self.kernel_w,
                self.stride_w,
            )?,
        ))
    }

    /// Number of weights (`out * in * kh * kw`).
    pub fn weight_len(&self) -> Option<usize> {
        self.out_channels
            .checked_mul(self.in_channels)?
            .checked_mul(self.kernel_h)?
            .checked_mul(self.kernel_w)
    }

    /// The output shape for `input`, checking the geometry.
    pub fn output_shape(&self, input: Shape) -> Result<Shape, Error> {
        if self.in_channels == 0 || self.out_channels == 0 || self.in_h == 0 || self.in_w == 0 {
            return Err(Error::BadLayerParameters);
        }
        let (oh, ow) = self.out_hw().ok_or(Error::BadLayerParameters)?;
        self.weight_len().ok_or(Error::Overflow)?;
        if input.chw() != Some((self.in_channels, self.in_h, self.in_w)) {
            return Err(Error::ShapeMismatch);
        }
        Shape::new(&[self.out_channels, oh, ow])
    }
}

impl PoolGeometry {
    /// Output height and width, or `None` when the geometry is invalid.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            out_extent(
                self.in_h,
                self.pad_top,
                self.pad_bottom,
                self.kernel_h,
                self.stride_h,
            )?,
            out_extent(
                self.in_w,
                self.pad_left,
                self.pad_right,
                self.kernel_w,
                self.stride_w,
            )?,
        ))
    }

    /// The output shape for `input`, checking the geometry. Padding must be smaller
    /// than the window, so that no window is all padding.
    pub fn output_shape(&self, input: Shape) -> Result<Shape, Error> {
        if self.channels == 0
            || self.in_h == 0
            || self.in_w == 0
            || self.pad_top >= self.kernel_h
            || self.pad_bottom >= self.kernel_h
            || self.pad_left >= self.kernel_w
            || self.pad_right >= self.kernel_w
        {
            return Err(Error::BadLayerParameters);
        }
        let (oh, ow) = self.out_hw().ok_or(Error::BadLayerParameters)?;
        if input.chw() != Some((self.channels, self.in_h, self.in_w)) {
            return Err(Error::ShapeMismatch);
        }
        Shape::new(&[self.channels, oh, ow])
    }
}

/// Number of f32 values in a panel-major dense weight block (`out` rounded up to
/// [`DENSE_PANEL`] rows, times `in`).
pub fn dense_panel_len(in_dim: usize, out_dim: usize) -> Option<usize> {
    out_dim
        .div_ceil(DENSE_PANEL)
        .checked_mul(DENSE_PANEL)?
        .checked_mul(in_dim)
}

/// `n` rounded up to a multiple of [`BLOCK_ALIGN`].
pub(crate) fn align_block(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(BLOCK_ALIGN)
}

/// Read a little-endian u32 at `offset`.
pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    b.try_into().ok().map(u32::from_le_bytes)
}

/// Read a little-endian u16 at `offset`.
pub(crate) fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    b.try_into().ok().map(u16::from_le_bytes)
}
