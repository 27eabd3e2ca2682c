//! Falsification: seeded sampling and projected gradient descent (PGD) in search of an
//! input that reaches the unsafe set.
//!
//! Gradients come from candle: the network is rebuilt from candle tensor ops
//! ([`CandleNet`]) and a batch of restarts descends together. Every candidate is then
//! re-evaluated with the plain f64 forward pass ([`Network::forward`]); only a point that
//! the forward pass confirms is ever returned as a counterexample.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Conj;
use crate::model::{Layer, Network};

/// The network as candle tensor ops (f64, CPU), for gradients of the PGD objective.
///
/// Pooling with padding is approximated (zero padding) here: PGD only proposes
/// candidates, the f64 forward pass decides.
#[derive(Debug)]
pub struct CandleNet {
    input_shape: Vec<usize>,
    layers: Vec<CandleLayer>,
}

#[derive(Debug)]
enum CandleLayer {
    /// `x W^T + b`, `w_t` is `in x out`.
    Dense {
        w_t: Tensor,
        b: Tensor,
    },
    /// Convolution with explicit (possibly asymmetric) zero padding.
    Conv {
        w: Tensor,
        b: Tensor,
        pad: [usize; 4],
        stride: (usize, usize),
    },
    Pool {
        max: bool,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: [usize; 4],
    },
    Act(Layer),
    Flatten,
}

impl CandleNet {
    /// Rebuild `net` from candle ops.
    pub fn new(net: &Network) -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let mut layers = Vec::new();
        for layer in &net.layers {
            layers.push(match layer {
                Layer::Dense(d) => CandleLayer::Dense {
                    w_t: Tensor::from_vec(d.weight.clone(), (d.out_dim, d.in_dim), &dev)?
                        .t()?
                        .contiguous()?,
                    b: Tensor::from_vec(d.bias.clone(), (1, d.out_dim), &dev)?,
                },
                Layer::Conv2d(c) => CandleLayer::Conv {
                    w: Tensor::from_vec(
                        c.weight.clone(),
                        (c.out_channels, c.in_channels, c.kernel_h, c.kernel_w),
                        &dev,
                    )?,
                    b: Tensor::from_vec(c.bias.clone(), (1, c.out_channels, 1, 1), &dev)?,
                    pad: [c.pad_top, c.pad_bottom, c.pad_left, c.pad_right],
                    stride: (c.stride_h, c.stride_w),
                },
                Layer::AvgPool2d(p) | Layer::MaxPool2d(p) => CandleLayer::Pool {
                    max: matches!(layer, Layer::MaxPool2d(_)),
                    kernel: (p.kernel_h, p.kernel_w),
                    stride: (p.stride_h, p.stride_w),
                    pad: [p.pad_top, p.pad_bottom, p.pad_left, p.pad_right],
                },
                Layer::Flatten => CandleLayer::Flatten,
                act => CandleLayer::Act(act.clone()),
            });
        }
        Ok(Self {
            input_shape: net.input_shape.clone(),
            layers,
        })
    }

    /// Outputs `[batch, n_out]` for inputs `[batch, n_in]` (flattened rows).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let batch = x.dim(0)?;
        let mut shape = vec![batch];
        shape.extend(&self.input_shape);
        let mut v = x.reshape(shape)?;
        for layer in &self.layers {
            v = match layer {
                CandleLayer::Dense { w_t, b } => {
                    v.flatten_from(1)?.matmul(w_t)?.broadcast_add(b)?
                }
                CandleLayer::Conv { w, b, pad, stride } => {
                    let p = v
                        .pad_with_zeros(2, pad[0], pad[1])?
                        .pad_with_zeros(3, pad[2], pad[3])?;
                    if stride.0 == stride.1 {
                        p.conv2d(w, 0, stride.0, 1, 1)?.broadcast_add(b)?
                    } else {
                        // candle's conv2d has one stride: convolve densely, then subsample.
                        let full = p.conv2d(w, 0, 1, 1, 1)?.broadcast_add(b)?;
                        subsample(&full, *stride)?
                    }
                }
                CandleLayer::Pool {
                    max,
                    kernel,
                    stride,
                    pad,
                } => {
                    let p = v
                        .pad_with_zeros(2, pad[0], pad[1])?
                        .pad_with_zeros(3, pad[2], pad[3])?;
                    if *max {
                        p.max_pool2d_with_stride(*kernel, *stride)?
                    } else {
                        p.avg_pool2d_with_stride(*kernel, *stride)?
                    }
                }
                CandleLayer::Flatten => v.flatten_from(1)?,
                CandleLayer::Act(act) => match act {
                    Layer::Relu => v.relu()?,
                    Layer::LeakyRelu { alpha } => {
                        (v.relu()? - v.neg()?.relu()?.affine(*alpha, 0.0)?)?
                    }
                    Layer::Sigmoid => v.neg()?.exp()?.affine(1.0, 1.0)?.recip()?,
                    Layer::Tanh => v.tanh()?,
                    Layer::Gelu => v.gelu_erf()?,
                    _ => v,
                },
            };
        }
        v.flatten_from(1)
    }
}

fn subsample(t: &Tensor, (sh, sw): (usize, usize)) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = t.dims4()?;
    let rows: Vec<u32> = (0..h).step_by(sh).map(|i| i as u32).collect();
    let cols: Vec<u32> = (0..w).step_by(sw).map(|i| i as u32).collect();
    let dev = t.device();
    let r = Tensor::from_vec(rows.clone(), rows.len(), dev)?;
    let c = Tensor::from_vec(cols.clone(), cols.len(), dev)?;
    t.index_select(&r, 2)?.index_select(&c, 3)
}

/// A seeded random point of the box.
pub fn random_point(rng: &mut ChaCha8Rng, lower: &[f64], upper: &[f64]) -> Vec<f64> {
    lower
        .iter()
        .zip(upper)
        .map(|(&l, &u)| if u > l { rng.random_range(l..=u) } else { l })
        .collect()
}

/// The box centre.
pub fn centre(lower: &[f64], upper: &[f64]) -> Vec<f64> {
    lower
        .iter()
        .zip(upper)
        .map(|(l, u)| 0.5 * (l + u))
        .collect()
}

/// Candidate points of a box: centre, corners (all of them up to 2^10, random ones
/// beyond), and `n_random` uniform samples.
pub fn sample_points(
    rng: &mut ChaCha8Rng,
    lower: &[f64],
    upper: &[f64],
    n_random: usize,
) -> Vec<Vec<f64>> {
    let n = lower.len();
    let mut pts = vec![centre(lower, upper)];
    let corner = |bits: &dyn Fn(usize) -> bool| -> Vec<f64> {
        (0..n)
            .map(|i| if bits(i) { upper[i] } else { lower[i] })
            .collect()
    };
    if n <= 10 {
        for mask in 0..(1usize << n) {
            pts.push(corner(&|i| mask >> i & 1 == 1));
        }
    } else {
        for _ in 0..64 {
            let bits: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
            pts.push(corner(&|i| bits[i]));
        }
    }
    pts.extend((0..n_random).map(|_| random_point(rng, lower, upper)));
    pts
}

/// Result of a falsification attempt on one conjunction.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// A confirmed counterexample (input, output), if found.
    pub found: Option<(Vec<f64>, Vec<f64>)>,
    /// The smallest worst-constraint margin seen (<= 0 means violated).
    pub best_margin: f64,
    /// The input that achieved it.
    pub best_input: Vec<f64>,
}

/// Evaluate `points` with the f64 forward pass; returns the best (smallest margin) and a
/// confirmed counterexample if any point satisfies the conjunction.
pub fn check_points(net: &Network, conj: &Conj, points: &[Vec<f64>]) -> Attempt {
    let mut best = Attempt {
        found: None,
        best_margin: f64::INFINITY,
        best_input: Vec::new(),
    };
    for x in points {
        let y = net.forward(x);
        let m = conj.worst_margin(&y);
        if m < best.best_margin || best.best_input.is_empty() {
            best.best_margin = m;
            best.best_input = x.clone();
        }
        // `Conj::contains`, on the margin already at hand.
        if m < 0.0 {
            best.found = Some((x.clone(), y));
            return best;
        }
    }
    best
}

/// PGD from `starts` (one restart each, all descending in one batch), minimising the worst
/// constraint margin `max_k (c_k·y - rhs_k)` of the conjunction by signed-gradient steps
/// projected onto the box. Candidates are confirmed by the f64 forward pass.
pub fn pgd(
    cnet: &CandleNet,
    net: &Network,
    lower: &[f64],
    upper: &[f64],
    conj: &Conj,
    starts: &[Vec<f64>],
    steps: usize,
) -> candle_core::Result<Attempt> {
    let dev = Device::Cpu;
    let (r, n, k) = (starts.len(), lower.len(), conj.rows.len());
    let mut best = check_points(net, conj, starts);
    if best.found.is_some() || r == 0 || k == 0 {
        return Ok(best);
    }
    let m = conj.rows[0].len();
    let c_t = Tensor::from_vec(conj.rows.concat(), (k, m), &dev)?
        .t()?
        .contiguous()?;
    let rhs = Tensor::from_vec(conj.rhs.clone(), (1, k), &dev)?;
    let mut x: Vec<f64> = starts.concat();
    let width: Vec<f64> = lower.iter().zip(upper).map(|(l, u)| u - l).collect();
    for step in 0..steps {
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (r, n), &dev)?)?;
        let y = cnet.forward(xv.as_tensor())?;
        let margins = y.matmul(&c_t)?.broadcast_sub(&rhs)?;
        let loss = margins.max_keepdim(1)?.sum_all()?;
        let grads = loss.backward()?;
        let Some(grad) = grads.get(xv.as_tensor()) else {
            break;
        };
        let grad: Vec<f64> = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        // Step size decays from 10% to 0.01% of the box width: unsafe regions can be thin.
        let t = step as f64 / steps as f64;
        let frac = 0.1 * (1.0 - t) * (1.0 - t) + 1e-4;
        for (idx, (xi, gi)) in x.iter_mut().zip(&grad).enumerate() {
            let d = idx % n;
            let s = if *gi > 0.0 {
                -1.0
            } else if *gi < 0.0 {
                1.0
            } else {
                0.0
            };
            *xi = (*xi + s * frac * width[d]).clamp(lower[d], upper[d]);
        }
        if step % 10 == 9 || step + 1 == steps {
            let pts: Vec<Vec<f64>> = x.chunks(n).map(<[f64]>::to_vec).collect();
            let a = check_points(net, conj, &pts);
            if a.best_margin < best.best_margin {
                best = a;
            }
            if best.found.is_some() {
                break;
            }
        }
    }
    Ok(best)
}

/// Seeded RNG for falsification.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
