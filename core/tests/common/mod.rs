//! Shared helpers of the core's integration tests: building blobs with the encoder and
//! an f64 reference evaluation of `LayerSpec` lists.
#![allow(dead_code)]

use prorepair_core::format::encode::{LayerSpec, ModelWriter};
use prorepair_core::{ConvGeometry, PoolGeometry};

/// A 16-byte aligned byte buffer (blobs are read in place and need alignment).
pub struct Aligned {
    words: Vec<u128>,
    len: usize,
}

impl Aligned {
    /// Copy `bytes` into fresh aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        let len = bytes.len();
        bytemuck_bytes_mut(&mut words)[..len].copy_from_slice(bytes);
        Aligned { words, len }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck_bytes(&self.words)[..self.len]
    }
}

fn bytemuck_bytes(w: &[u128]) -> &[u8] {
    bytemuck::cast_slice(w)
}

fn bytemuck_bytes_mut(w: &mut [u128]) -> &mut [u8] {
    bytemuck::cast_slice_mut(w)
}

/// Encode `layers` into an aligned blob.
pub fn encode(input_shape: &[usize], layers: &[LayerSpec<'_>]) -> Aligned {
    let writer = ModelWriter::new(input_shape, layers).expect("valid layers");
    let mut bytes = vec![0u8; writer.encoded_len()];
    let n = writer
        .write(&mut bytes)
        .expect("buffer sized by encoded_len");
    assert_eq!(n, bytes.len());
    Aligned::new(&bytes)
}

/// f64 evaluation of a layer list (the test oracle; GELU through f32 `erfcf`).
pub fn reference(input_shape: &[usize], layers: &[LayerSpec<'_>], x: &[f32]) -> Vec<f64> {
    let mut v: Vec<f64> = x.iter().map(|&x| f64::from(x)).collect();
    let _ = input_shape;
    for layer in layers {
        v = match *layer {
            LayerSpec::Dense {
                in_dim,
                out_dim,
                weight,
                bias,
            } => (0..out_dim)
                .map(|o| {
                    f64::from(bias[o])
                        + (0..in_dim)
                            .map(|i| f64::from(weight[o * in_dim + i]) * v[i])
                            .sum::<f64>()
                })
                .collect(),
            LayerSpec::Relu => v.iter().map(|&a| a.max(0.0)).collect(),
            LayerSpec::LeakyRelu { alpha } => v
                .iter()
                .map(|&a| if a >= 0.0 { a } else { f64::from(alpha) * a })
                .collect(),
            LayerSpec::Sigmoid => v.iter().map(|&a| 1.0 / (1.0 + (-a).exp())).collect(),
            LayerSpec::Tanh => v.iter().map(|&a| a.tanh()).collect(),
            LayerSpec::Gelu => v.iter().map(|&a| f64::from(gelu_ref(a as f32))).collect(),
            LayerSpec::Conv2d {
                geometry: g,
                weight,
                bias,
            } => conv(&g, weight, bias, &v),
            LayerSpec::AvgPool2d(p) => pool(&p, false, &v),
            LayerSpec::MaxPool2d(p) => pool(&p, true, &v),
            LayerSpec::Flatten => v,
        };
    }
    v
}

fn gelu_ref(x: f32) -> f32 {
    0.5 * x * libm::erfcf(-x / std::f32::consts::SQRT_2)
}

fn conv(g: &ConvGeometry, weight: &[f32], bias: &[f32], x: &[f64]) -> Vec<f64> {
    let (oh, ow) = g.out_hw().unwrap();
    let mut y = vec![0.0; g.out_channels * oh * ow];
    for oc in 0..g.out_channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = f64::from(bias[oc]);
                for ic in 0..g.in_channels {
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let iy = (oy * g.stride_h + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride_w + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let w = weight
                                [((oc * g.in_channels + ic) * g.kernel_h + ky) * g.kernel_w + kx];
                            acc += f64::from(w)
                                * x[(ic * g.in_h + iy as usize) * g.in_w + ix as usize];
                        }
                    }
                }
                y[(oc * oh + oy) * ow + ox] = acc;
            }
        }
    }
    y
}

fn pool(p: &PoolGeometry, max: bool, x: &[f64]) -> Vec<f64> {
    let (oh, ow) = p.out_hw().unwrap();
    let mut y = Vec::new();
    for c in 0..p.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut acc, mut n) = (if max { f64::NEG_INFINITY } else { 0.0 }, 0);
                for ky in 0..p.kernel_h {
                    for kx in 0..p.kernel_w {
                        let iy = (oy * p.stride_h + ky) as isize - p.pad_top as isize;
                        let ix = (ox * p.stride_w + kx) as isize - p.pad_left as isize;
                        if iy < 0 || ix < 0 || iy >= p.in_h as isize || ix >= p.in_w as isize {
                            continue;
                        }
                        let v = x[(c * p.in_h + iy as usize) * p.in_w + ix as usize];
                        acc = if max { acc.max(v) } else { acc + v };
                        n += 1;
                    }
                }
                y.push(if max { acc } else { acc / n as f64 });
            }
        }
    }
    y
}
