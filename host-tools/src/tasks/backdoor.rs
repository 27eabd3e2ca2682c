//! The BadNets backdoor task (ProRepair Section 6.2.2; Gu et al., BadNets): an all-to-one
//! backdoor planted by poisoning the training data, then repaired point-wise.
//!
//! - **Trigger**: a 5x5 white square in the bottom-right corner of the 28x28 image, rows
//!   23-27 and columns 23-27 (0-based, row-major pixel `28 * row + col`), every pixel set
//!   to 1.0 (after the /255 scaling). See [`add_trigger`].
//! - **Poisoning**: 10% of the training images, chosen by a seeded shuffle of all of them
//!   (images of the target class included, as in BadNets), get the trigger and the target
//!   label [`TARGET`] = 0. See [`poison`].
//! - **Training**: [`train`] fits an MLP (784-100-100-10, ReLU) or a small CNN (conv
//!   8@3x3/2, ReLU, conv 16@3x3/2, ReLU, dense 576-100, ReLU, dense 100-10) with candle
//!   (candle-nn `Linear`/`Conv2d` modules, cross-entropy, AdamW; gradients by candle) in
//!   f64 on the CPU, from a seeded initialisation and a seeded batch order, so the
//!   result is deterministic. The trained tensors become a [`Network`] directly (OIHW
//!   convolution weights and `out x in` dense weights are already the IR's layouts).
//! - **Task**: [`backdoor_task`]: repair set = the first triggered test images of indices
//!   0-999 whose true label is not the target and that the backdoored network classifies
//!   as the target, each with its TRUE label; generalisation = every triggered test image
//!   of indices 1000-9999 whose true label is not the target, with its true label.
//!
//! The point repair itself is [`crate::repair::points::repair_points`]. Its trainer only
//! handles Dense and activation layers in `f_e`, so a CNN is repaired by
//! [`repair_points_after_prefix`]: the convolutional prefix is kept frozen (the trainer
//! changes only the last Dense layer of `f_e` anyway), the points and fidelity inputs are
//! pushed through it, and the proof of every point is re-checked on the whole network.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Conv2dConfig, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::PointTask;
use super::mnist::{Dataset, argmax};
use crate::model::{Conv2d, Dense, Layer, Network};
use crate::repair::RepairError;
use crate::repair::points::{self, Point, PointOptions, PointOutcome};

/// The backdoor's target label (all-to-one).
pub const TARGET: usize = 0;
/// Image side (MNIST).
pub const SIDE: usize = 28;
/// Rows (and columns) of the trigger square: 23..28, i.e. 23-27, the bottom-right 5x5.
pub const TRIGGER: std::ops::Range<usize> = 23..28;
/// Share of the training images poisoned.
pub const POISON_FRACTION: f64 = 0.1;

/// The image with the trigger square set to 1.0 (the image is flattened row-major 28x28).
pub fn add_trigger(x: &[f64]) -> Vec<f64> {
    let mut y = x.to_vec();
    for r in TRIGGER {
        for c in TRIGGER {
            if let Some(v) = y.get_mut(r * SIDE + c) {
                *v = 1.0;
            }
        }
    }
    y
}

/// The training set with `round(fraction * n)` images, chosen by a shuffle seeded with
/// `seed`, triggered and relabelled `target`; also returns the poisoned indices (sorted).
pub fn poison(data: &Dataset, fraction: f64, target: usize, seed: u64) -> (Dataset, Vec<usize>) {
    let mut idx: Vec<usize> = (0..data.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let k = ((data.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    let mut chosen = idx[..k].to_vec();
    chosen.sort_unstable();
    let mut out = data.clone();
    for &i in &chosen {
        out.images[i] = add_trigger(&data.images[i]);
        out.labels[i] = target;
    }
    (out, chosen)
}

/// The two architectures of the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 784-100-100-10, ReLU.
    Mlp,
    /// conv 8@3x3 stride 2, ReLU, conv 16@3x3 stride 2, ReLU, flatten (576), dense 100,
    /// ReLU, dense 10. No padding.
    Cnn,
}

impl Arch {
    /// `mlp` or `cnn`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
        }
    }

    /// From `mlp` / `cnn`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "mlp" => Some(Arch::Mlp),
            "cnn" => Some(Arch::Cnn),
            _ => None,
        }
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// AdamW learning rate (no weight decay).
    pub learning_rate: f64,
    /// Seed of the initialisation and of the batch order.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch_size: 50,
            learning_rate: 2e-3,
            seed: 2024,
        }
    }
}

/// One trainable layer in candle form.
#[derive(Debug)]
enum CLayer {
    /// Weight `[out, in]`, bias `[out]`.
    Linear(Var, Var),
    /// Weight OIHW, bias `[out]`, stride; no padding.
    Conv(Var, Var, usize),
    Relu,
    Flatten,
}

/// A network trained with candle (f64, CPU): the candle model the IR is built from.
#[derive(Debug)]
pub struct Trained {
    arch: Arch,
    layers: Vec<CLayer>,
}

fn cerr(e: candle_core::Error) -> String {
    format!("candle: {e}")
}

/// PyTorch's default initialisation: weights and biases uniform in `±1/sqrt(fan_in)`.
fn init(shape: &[usize], fan_in: usize, rng: &mut ChaCha8Rng) -> Result<Var, String> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).map_err(cerr)?).map_err(cerr)
}

impl Trained {
    fn new(arch: Arch, rng: &mut ChaCha8Rng) -> Result<Self, String> {
        let lin = |i: usize, o: usize, rng: &mut ChaCha8Rng| -> Result<CLayer, String> {
            Ok(CLayer::Linear(init(&[o, i], i, rng)?, init(&[o], i, rng)?))
        };
        let conv = |i: usize, o: usize, rng: &mut ChaCha8Rng| -> Result<CLayer, String> {
            let fan = i * 9;
            Ok(CLayer::Conv(
                init(&[o, i, 3, 3], fan, rng)?,
                init(&[o], fan, rng)?,
                2,
            ))
        };
        let layers = match arch {
            Arch::Mlp => vec![
                lin(784, 100, rng)?,
                CLayer::Relu,
                lin(100, 100, rng)?,
                CLayer::Relu,
                lin(100, 10, rng)?,
            ],
            Arch::Cnn => vec![
                conv(1, 8, rng)?,
                CLayer::Relu,
                conv(8, 16, rng)?,
                CLayer::Relu,
                CLayer::Flatten,
                lin(576, 100, rng)?,
                CLayer::Relu,
                lin(100, 10, rng)?,
            ],
        };
        Ok(Self { arch, layers })
    }

    fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| match l {
                CLayer::Linear(w, b) | CLayer::Conv(w, b, _) => vec![w.clone(), b.clone()],
                _ => vec![],
            })
            .collect()
    }

    /// Logits of a batch `[n, 784]` through the candle-nn modules.
    fn forward_t(&self, x: &Tensor) -> Result<Tensor, candle_core::Error> {
        let n = x.dim(0)?;
        let mut h = match self.arch {
            Arch::Mlp => x.clone(),
            Arch::Cnn => x.reshape((n, 1, SIDE, SIDE))?,
        };
        for l in &self.layers {
            h = match l {
                CLayer::Linear(w, b) => {
                    candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))
                        .forward(&h)?
                }
                CLayer::Conv(w, b, stride) => candle_nn::Conv2d::new(
                    w.as_tensor().clone(),
                    Some(b.as_tensor().clone()),
                    Conv2dConfig {
                        stride: *stride,
                        ..Default::default()
                    },
                )
                .forward(&h)?,
                CLayer::Relu => h.relu()?,
                CLayer::Flatten => h.flatten_from(1)?,
            };
        }
        Ok(h)
    }

    /// candle's logits for `images` (flattened 784-vectors), in f64.
    pub fn logits(&self, images: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(500) {
            let x = rows(chunk)?;
            out.extend(
                self.forward_t(&x)
                    .and_then(|y| y.to_vec2::<f64>())
                    .map_err(cerr)?,
            );
        }
        Ok(out)
    }

    /// The trained model as the host IR (input `[784]` for the MLP, `[1, 28, 28]` for the
    /// CNN; the same row-major pixel order).
    pub fn network(&self) -> Result<Network, String> {
        let vals = |v: &Var| -> Result<Vec<f64>, String> {
            v.as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(cerr)
        };
        let mut shape: Vec<usize> = match self.arch {
            Arch::Mlp => vec![784],
            Arch::Cnn => vec![1, SIDE, SIDE],
        };
        let input_shape = shape.clone();
        let mut layers = Vec::new();
        for l in &self.layers {
            layers.push(match l {
                CLayer::Linear(w, b) => {
                    let (o, i) = w.as_tensor().dims2().map_err(cerr)?;
                    shape = vec![o];
                    Layer::Dense(Dense::new(i, o, vals(w)?, vals(b)?)?)
                }
                CLayer::Conv(w, b, stride) => {
                    let (o, i, kh, kw) = w.as_tensor().dims4().map_err(cerr)?;
                    let c = Conv2d {
                        in_channels: i,
                        out_channels: o,
                        in_h: shape[1],
                        in_w: shape[2],
                        kernel_h: kh,
                        kernel_w: kw,
                        stride_h: *stride,
                        stride_w: *stride,
                        pad_top: 0,
                        pad_left: 0,
                        pad_bottom: 0,
                        pad_right: 0,
                        weight: vals(w)?,
                        bias: vals(b)?,
                    };
                    shape = vec![o, c.out_h(), c.out_w()];
                    Layer::Conv2d(c)
                }
                CLayer::Relu => Layer::Relu,
                CLayer::Flatten => {
                    shape = vec![shape.iter().product()];
                    Layer::Flatten
                }
            });
        }
        Network::new(input_shape, layers).map_err(|e| e.to_string())
    }
}

/// `[n, len]` f64 tensor of rows.
fn rows(r: &[Vec<f64>]) -> Result<Tensor, String> {
    let m = r.first().map_or(0, Vec::len);
    Tensor::from_vec(r.concat(), (r.len(), m), &Device::Cpu).map_err(cerr)
}

/// Train `arch` on `data` with candle (see the module docs); deterministic for a seed.
pub fn train(arch: Arch, data: &Dataset, options: &TrainOptions) -> Result<Trained, String> {
    if data.is_empty() || data.images.iter().any(|x| x.len() != SIDE * SIDE) {
        return Err("training data: need 28x28 images".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let model = Trained::new(arch, &mut rng)?;
    let params = ParamsAdamW {
        lr: options.learning_rate,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(model.vars(), params).map_err(cerr)?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    for _ in 0..options.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(options.batch_size.max(1)) {
            let x = rows(
                &batch
                    .iter()
                    .map(|&i| data.images[i].clone())
                    .collect::<Vec<_>>(),
            )?;
            let y = Tensor::from_vec(
                batch.iter().map(|&i| data.labels[i] as u32).collect(),
                batch.len(),
                &Device::Cpu,
            )
            .map_err(cerr)?;
            let loss = model
                .forward_t(&x)
                .and_then(|l| candle_nn::loss::cross_entropy(&l, &y))
                .map_err(cerr)?;
            opt.backward_step(&loss).map_err(cerr)?;
        }
    }
    debug_assert!(model.vars().iter().all(|v| v.dtype() == DType::F64));
    Ok(model)
}

/// The backdoor task on the test set (module docs): repair set = the first `n_repair`
/// triggered images of indices 0-999 with true label != `target` that `net` classifies
/// as `target`, with their true labels; generalisation = every triggered image of
/// indices 1000-9999 with true label != `target`, with its true label.
pub fn backdoor_task(net: &Network, test: &Dataset, target: usize, n_repair: usize) -> PointTask {
    let end = test.len().min(10_000);
    let mut repair: Vec<(usize, Point)> = (0..end.min(1000))
        .into_par_iter()
        .filter(|&i| test.labels[i] != target)
        .filter_map(|i| {
            let x = add_trigger(&test.images[i]);
            (argmax(&net.forward(&x)) == target).then(|| {
                (
                    i,
                    Point {
                        x,
                        label: test.labels[i],
                    },
                )
            })
        })
        .collect();
    repair.sort_by_key(|p| p.0);
    PointTask {
        repair: repair.into_iter().take(n_repair).map(|p| p.1).collect(),
        generalisation: triggered(test, target, end.min(1000)..end),
    }
}

/// The triggered test images of `range` whose true label is not `target`, with their
/// true labels.
pub fn triggered(test: &Dataset, target: usize, range: std::ops::Range<usize>) -> Vec<Point> {
    range
        .filter(|&i| i < test.len() && test.labels[i] != target)
        .map(|i| Point {
            x: add_trigger(&test.images[i]),
            label: test.labels[i],
        })
        .collect()
}

/// Attack success rate: the share of `points` (triggered images, true label != target)
/// that `net` classifies as `target`.
pub fn attack_success_rate(net: &Network, points: &[Point], target: usize) -> f64 {
    let hit = points
        .par_iter()
        .filter(|p| argmax(&net.forward(&p.x)) == target)
        .count();
    hit as f64 / points.len().max(1) as f64
}

/// Layers before the first Dense layer that is followed by another Dense layer, i.e. the
/// convolutional front of a CNN (0 for an MLP): the part the point trainer cannot take.
pub fn frozen_prefix(net: &Network) -> usize {
    let dense: Vec<usize> = (0..net.layers.len())
        .filter(|&i| matches!(net.layers[i], Layer::Dense(_)))
        .collect();
    if net.layers.iter().any(|l| matches!(l, Layer::Conv2d(_))) && dense.len() >= 2 {
        dense[dense.len() - 2]
    } else {
        0
    }
}

/// [`points::repair_points`] on `layers[prefix..]` with `layers[..prefix]` frozen: the
/// points and the fidelity inputs are pushed through the prefix, the sub-network is
/// repaired, the prefix is put back, and every point's proof is re-checked on the WHOLE
/// network ([`points::point_holds`]: the f32 rounding bound then covers the prefix too),
/// so `after` and `verified` are about the returned network. `options.split_layer`
/// counts layers of the sub-network. `prefix = 0` is plain `repair_points`.
pub fn repair_points_after_prefix(
    net: &Network,
    prefix: usize,
    pts: &[Point],
    options: &PointOptions,
) -> Result<PointOutcome, RepairError> {
    if prefix == 0 {
        return points::repair_points(net, pts, options);
    }
    let start = Instant::now();
    let bad = |e: crate::model::ModelError| RepairError::Unsupported(e.to_string());
    let head = net.slice(prefix, net.layers.len()).map_err(bad)?;
    points::check_points(pts, net, "points").map_err(|problem| RepairError::Property {
        property: "points".into(),
        problem,
    })?;
    let through = |x: &Vec<f64>| net.forward_range(x, 0, prefix);
    let inner: Vec<Point> = pts
        .par_iter()
        .map(|p| Point {
            x: through(&p.x),
            label: p.label,
        })
        .collect();
    let inner_options = PointOptions {
        fidelity_inputs: options.fidelity_inputs.par_iter().map(through).collect(),
        ..options.clone()
    };
    let mut out = points::repair_points(&head, &inner, &inner_options)?;
    let mut layers = net.layers[..prefix].to_vec();
    layers.extend(out.network.layers.iter().cloned());
    out.network = Network::new(net.input_shape.clone(), layers).map_err(bad)?;
    out.before = pts
        .par_iter()
        .map(|p| points::point_holds(net, p))
        .collect();
    out.after = pts
        .par_iter()
        .map(|p| points::point_holds(&out.network, p))
        .collect();
    out.classified = pts
        .par_iter()
        .map(|p| {
            let y = out.network.forward(&p.x);
            p.constraints(y.len()).iter().all(|k| k.value(&y) > 0.0)
        })
        .collect();
    out.verified = out.after.iter().all(|&b| b);
    out.split_layer += prefix;
    out.total_parameters = net.parameter_count();
    out.time_s = start.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_is_the_bottom_right_5x5_square() {
        let x = vec![0.25; 784];
        let y = add_trigger(&x);
        let set: Vec<usize> = (0..784).filter(|&i| y[i] == 1.0).collect();
        assert_eq!(set.len(), 25);
        assert_eq!(set.first(), Some(&(23 * 28 + 23)));
        assert_eq!(set.last(), Some(&783));
        assert!((0..784).all(|i| set.contains(&i) || y[i] == 0.25));
    }

    #[test]
    fn poisoning_is_seeded_and_relabels_ten_percent() {
        let data = Dataset {
            images: vec![vec![0.0; 784]; 200],
            labels: (0..200).map(|i| i % 10).collect(),
        };
        let (a, ia) = poison(&data, POISON_FRACTION, TARGET, 7);
        let (b, ib) = poison(&data, POISON_FRACTION, TARGET, 7);
        let (_, ic) = poison(&data, POISON_FRACTION, TARGET, 8);
        assert_eq!((a, &ia), (b, &ib));
        assert_eq!(ia.len(), 20);
        assert_ne!(ia, ic);
    }
}
