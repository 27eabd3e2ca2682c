//! Lowering the host IR ([`Network`], f64) to the device model blob (f32) that
//! `prorepair-core` reads, with the core's own encoder, and emitting it as a C array.

use prorepair_core::format::encode::{LayerSpec, ModelWriter};
use prorepair_core::{ConvGeometry, PoolGeometry};

use crate::model::{Conv2d, Layer, ModelError, Network, Pool2d};

/// Why a network cannot be lowered to a model blob.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The network's shapes are inconsistent.
    #[error("invalid network: {0}")]
    Model(#[from] ModelError),
    /// The input tensor has more than three non-unit dimensions (the core reads
    /// `[n]`, `[h, w]` or `[c, h, w]`).
    #[error("input shape {0:?} has more than 3 dimensions after dropping leading 1s")]
    InputRank(Vec<usize>),
    /// A parameter is not finite once rounded to f32.
    #[error("layer {layer} ({kind}): parameter {value} is not finite in f32")]
    NotF32 {
        /// Layer index.
        layer: usize,
        /// Layer kind.
        kind: &'static str,
        /// The f64 value.
        value: f64,
    },
    /// The core's encoder or decoder rejects the model.
    #[error("the device core rejects the model: {0}")]
    Core(#[from] prorepair_core::Error),
}

/// A model blob in 16-byte aligned memory, so that `prorepair_core::Model` can read
/// its f32 blocks in place (a `Vec<u8>` only guarantees byte alignment).
#[derive(Debug, Clone)]
pub struct AlignedBlob {
    words: Vec<u128>,
    len: usize,
}

impl AlignedBlob {
    /// Copy `bytes` into aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        let len = bytes.len();
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        dst[..len].copy_from_slice(bytes);
        Self { words, len }
    }

    /// The blob's bytes (16-byte aligned).
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.words)[..self.len]
    }

    /// Validate and borrow as a device model.
    pub fn model(&self) -> Result<prorepair_core::Model<'_>, prorepair_core::Error> {
        prorepair_core::Model::from_bytes(self.bytes())
    }
}

/// The device input shape: the IR shape without leading unit dimensions beyond rank 3.
pub fn device_input_shape(net: &Network) -> Result<Vec<usize>, CompileError> {
    let mut shape = net.input_shape.as_slice();
    while shape.len() > 3 && shape.first() == Some(&1) {
        shape = &shape[1..];
    }
    if shape.len() > 3 {
        return Err(CompileError::InputRank(net.input_shape.clone()));
    }
    Ok(shape.to_vec())
}

/// f64 parameters rounded to f32, each checked finite.
fn to_f32(values: &[f64], layer: usize, kind: &'static str) -> Result<Vec<f32>, CompileError> {
    values
        .iter()
        .map(|&value| {
            let v = value as f32;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(CompileError::NotF32 { layer, kind, value })
            }
        })
        .collect()
}

fn conv_geometry(c: &Conv2d) -> ConvGeometry {
    ConvGeometry {
        in_channels: c.in_channels,
        out_channels: c.out_channels,
        in_h: c.in_h,
        in_w: c.in_w,
        kernel_h: c.kernel_h,
        kernel_w: c.kernel_w,
        stride_h: c.stride_h,
        stride_w: c.stride_w,
        pad_top: c.pad_top,
        pad_left: c.pad_left,
        pad_bottom: c.pad_bottom,
        pad_right: c.pad_right,
    }
}

fn pool_geometry(p: &Pool2d) -> PoolGeometry {
    PoolGeometry {
        channels: p.channels,
        in_h: p.in_h,
        in_w: p.in_w,
        kernel_h: p.kernel_h,
        kernel_w: p.kernel_w,
        stride_h: p.stride_h,
        stride_w: p.stride_w,
        pad_top: p.pad_top,
        pad_left: p.pad_left,
        pad_bottom: p.pad_bottom,
        pad_right: p.pad_right,
    }
}

/// Lower `net` to a model blob: parameters rounded to f32, Dense weights packed into
/// panels by the core's encoder. The result is decoded once by the core before it is
/// returned, so a blob from `compile` always loads on the device.
pub fn compile(net: &Network) -> Result<Vec<u8>, CompileError> {
    net.shapes()?;
    let input_shape = device_input_shape(net)?;
    // f32 parameter storage first; the specs borrow it.
    let params: Vec<(Vec<f32>, Vec<f32>)> = net
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            Ok(match layer {
                Layer::Dense(d) => (
                    to_f32(&d.weight, i, layer.kind())?,
                    to_f32(&d.bias, i, layer.kind())?,
                ),
                Layer::Conv2d(c) => (
                    to_f32(&c.weight, i, layer.kind())?,
                    to_f32(&c.bias, i, layer.kind())?,
                ),
                _ => (Vec::new(), Vec::new()),
            })
        })
        .collect::<Result<_, CompileError>>()?;
    let specs: Vec<LayerSpec<'_>> = net
        .layers
        .iter()
        .zip(&params)
        .enumerate()
        .map(|(i, (layer, (weight, bias)))| {
            Ok(match layer {
                Layer::Dense(d) => LayerSpec::Dense {
                    in_dim: d.in_dim,
                    out_dim: d.out_dim,
                    weight,
                    bias,
                },
                Layer::Relu => LayerSpec::Relu,
                Layer::LeakyRelu { alpha } => {
                    let a = *alpha as f32;
                    if !a.is_finite() {
                        return Err(CompileError::NotF32 {
                            layer: i,
                            kind: layer.kind(),
                            value: *alpha,
                        });
                    }
                    LayerSpec::LeakyRelu { alpha: a }
                }
                Layer::Sigmoid => LayerSpec::Sigmoid,
                Layer::Tanh => LayerSpec::Tanh,
                Layer::Gelu => LayerSpec::Gelu,
                Layer::Conv2d(c) => LayerSpec::Conv2d {
                    geometry: conv_geometry(c),
                    weight,
                    bias,
                },
                Layer::AvgPool2d(p) => LayerSpec::AvgPool2d(pool_geometry(p)),
                Layer::MaxPool2d(p) => LayerSpec::MaxPool2d(pool_geometry(p)),
                Layer::Flatten => LayerSpec::Flatten,
            })
        })
        .collect::<Result<_, CompileError>>()?;
    let writer = ModelWriter::new(&input_shape, &specs)?;
    let mut blob = vec![0u8; writer.encoded_len()];
    writer.write(&mut blob)?;
    AlignedBlob::new(&blob).model()?;
    Ok(blob)
}

/// A C identifier from `name`: other characters become `_`, a leading digit gets a `_`.
pub fn c_identifier(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert(0, '_');
    }
    id
}

/// A C header holding `blob` as `static const unsigned char NAME[]`, 16-byte aligned
/// (the core reads the f32 blocks in place), and its length `NAME_len`.
pub fn c_array(blob: &[u8], name: &str) -> String {
    use std::fmt::Write;
    let name = c_identifier(name);
    let guard = format!("{}_H", name.to_ascii_uppercase());
    let mut out = String::with_capacity(blob.len() * 6 + 512);
    let _ = writeln!(
        out,
        "/* prorepair device model blob ({} bytes), generated by prorepair-host compile. */",
        blob.len()
    );
    let _ = writeln!(
        out,
        "#ifndef {guard}\n#define {guard}\n\n#include <stddef.h>\n"
    );
    let _ = writeln!(
        out,
        "static const unsigned char {name}[] __attribute__((aligned(16))) = {{"
    );
    for line in blob.chunks(12) {
        out.push_str("   ");
        for b in line {
            let _ = write!(out, " 0x{b:02x},");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "}};\n\nstatic const size_t {name}_len = {};\n\n#endif /* {guard} */",
        blob.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;

    fn small_net() -> Network {
        let d1 = Dense::new(
            3,
            4,
            (0..12).map(|i| f64::from(i) * 0.1 - 0.5).collect(),
            vec![0.1, 0.2, -0.3, 0.0],
        )
        .unwrap();
        let d2 = Dense::new(
            4,
            2,
            (0..8).map(|i| 0.25 - f64::from(i) * 0.05).collect(),
            vec![1.0, -1.0],
        )
        .unwrap();
        Network::new(
            vec![1, 1, 1, 3],
            vec![Layer::Dense(d1), Layer::Relu, Layer::Dense(d2), Layer::Tanh],
        )
        .unwrap()
    }

    #[test]
    fn compiled_blob_evaluates_like_the_f64_network() {
        let net = small_net();
        let blob = AlignedBlob::new(&compile(&net).unwrap());
        let model = blob.model().unwrap();
        assert_eq!(model.input_shape().dims(), &[1, 1, 3]); // leading unit dims are dropped only beyond rank 3
        assert_eq!(model.parameter_count(), net.parameter_count());
        let x = [0.3f32, -1.2, 2.0];
        let mut arena = vec![0.0; model.required_arena_len()];
        let mut out = [0.0f32; 2];
        model.evaluate(&x, &mut arena, &mut out).unwrap();
        let want = net.forward(&x.map(f64::from));
        for (g, w) in out.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        let mut net = small_net();
        if let Layer::Dense(d) = &mut net.layers[0] {
            d.weight[5] = 1e300;
        }
        assert!(matches!(
            compile(&net),
            Err(CompileError::NotF32 { layer: 0, .. })
        ));
    }

    #[test]
    fn c_array_is_aligned_and_complete() {
        let text = c_array(&[1, 2, 255], "3-model.h");
        assert!(
            text.contains(
                "static const unsigned char _3_model_h[] __attribute__((aligned(16))) = {"
            )
        );
        assert!(text.contains("0x01, 0x02, 0xff,"));
        assert!(text.contains("static const size_t _3_model_h_len = 3;"));
    }
}
