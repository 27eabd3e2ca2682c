//! ProRepair Algorithm 1 (point-wise repair): proxy-box synthesis in feature space and
//! the Adam repair of the feature extractor `f_e`.
//!
//! The network is split as `f = f_c ∘ f_e` at layer `K`: `f_e = layers[..K]` (repaired),
//! `f_c = layers[K..]` (frozen). For a point `x` that must satisfy constraints `ψ`,
//! [`synthesise_proxy_box`] looks for a feature-space box `B(h*, r)` on which CROWN over
//! `f_c` certifies every `ψ` (Eq. 3-5, iterative centre shift); the [`Trainer`] then moves
//! `f_e(x)` toward `h*` with the bounded distance `||f_e(x) - h*||_2` (Theorem 1): once
//! `||f_e(x) - h*||_∞ <= r`, `f(x)` satisfies `ψ` because the whole box is certified.
//!
//! **Small change.** Only a budget of `k` parameters of `f_e` may change (5% of the
//! network's parameters by default, so the weight patch stays small). The trainer picks
//! them once, by saliency: the `k` largest `|∂L/∂θ|` of the first repair loss over every
//! Dense layer of `f_e`, and trains the delta `θ = θ_0 + mask ⊙ Δ` with Adam through
//! candle (no hand-written backprop). Masked-out entries get zero gradient and zero Adam
//! moments, so they stay exactly at their original values.
//!
//! **Fidelity.** The loss adds `λ · mean ||f_e(s) - f_e^0(s)||²` over sampled inputs `s`
//! outside the repair region, keeping the original features (hence the original outputs)
//! there.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::RepairError;
use super::desired::Constraint;
use crate::bounds::{self, BoxBounds, Method};
use crate::model::{Layer, Network};

/// A repair target: input `x` whose feature must move into the certified proxy box
/// `B(h_star, radius)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Anchor {
    /// The input (a counterexample of the constraints).
    pub x: Vec<f64>,
    /// Centre of the certified proxy box in feature space.
    pub h_star: Vec<f64>,
    /// The constraints the box certifies.
    pub constraints: Vec<Constraint>,
    /// The margin the box certifies them with.
    pub margin: f64,
    /// Weight of this anchor's proxy-box distance term: 1 when `h_star` is a certified
    /// proxy box, 0 for an anchor trained by the output hinge alone (no box was found).
    pub box_weight: f64,
}

/// Proxy-box synthesis settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyBoxOptions {
    /// Box radius `r` (L∞).
    pub radius: f64,
    /// Maximum centre shifts `T_b`.
    pub max_iterations: usize,
    /// Certified margin every constraint must reach on the box.
    pub margin: f64,
    /// Keep the centre in the non-negative orthant (features after a ReLU-like layer
    /// cannot be negative, so a target there is unreachable).
    pub non_negative: bool,
}

/// The spec matrix (rows `c_ψ`) and constants `d_ψ` of a list of constraints.
pub(crate) fn spec_of(constraints: &[Constraint]) -> (Vec<f64>, Vec<f64>) {
    let spec = constraints
        .iter()
        .flat_map(|c| c.c.iter().copied())
        .collect();
    let d = constraints.iter().map(|c| c.d).collect();
    (spec, d)
}

/// Algorithm 1, lines 1-8: starting from the box `B(h0, r)`, shift the centre to the
/// maximiser over the box of the summed CROWN linear lower bounds of the constraints not
/// yet certified (Eq. 5, closed form on a box: `h_i ± r` by the sign of the summed
/// coefficient) until CROWN over `f_c = layers[split..]` certifies every constraint with
/// the margin on the whole box. Returns the centre `h*`, or `None` after
/// `max_iterations` shifts.
pub fn synthesise_proxy_box(
    net: &Network,
    split: usize,
    h0: &[f64],
    constraints: &[Constraint],
    options: &ProxyBoxOptions,
) -> Result<Option<Vec<f64>>, RepairError> {
    let (spec, d) = spec_of(constraints);
    let rows = constraints.len();
    let to = net.layers.len();
    let mut h = h0.to_vec();
    if options.non_negative {
        h.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    for _ in 0..=options.max_iterations {
        let b = bounds::linear_bounds(
            net,
            split,
            to,
            &BoxBounds::ball(&h, options.radius),
            Some(&spec),
            rows,
            Method::Crown,
        )?;
        let mut direction = vec![0.0; h.len()];
        let mut certified = true;
        for (r, dr) in d.iter().enumerate().take(rows) {
            if b.lower[r] + dr < options.margin {
                certified = false;
                for (g, a) in direction
                    .iter_mut()
                    .zip(&b.a_lower[r * b.cols..(r + 1) * b.cols])
                {
                    *g += a;
                }
            }
        }
        if certified {
            return Ok(Some(h));
        }
        for (v, g) in h.iter_mut().zip(&direction) {
            if *g > 0.0 {
                *v += options.radius;
            } else if *g < 0.0 {
                *v -= options.radius;
            }
            if options.non_negative {
                *v = v.max(0.0);
            }
        }
    }
    Ok(None)
}

/// One layer of `f_e` in candle form.
#[derive(Debug)]
enum TrainLayer {
    Dense {
        /// Index of the layer in the network.
        index: usize,
        /// Original weight, `out x in`.
        w0: Tensor,
        /// Original bias, `[1, out]`.
        b0: Tensor,
        /// Trainable deltas.
        dw: Var,
        db: Var,
        /// 0/1 masks of the same shapes (all zeros until [`Trainer::grow_mask`]).
        mw: Tensor,
        mb: Tensor,
    },
    Activation(Layer),
    Flatten,
}

/// One layer of the frozen `f_c`, in candle form (for the output hinge term).
#[derive(Debug)]
enum HeadLayer {
    /// Weight transposed (`in x out`) and bias `[1, out]`.
    Dense(Tensor, Tensor),
    Activation(Layer),
    Flatten,
}

/// The anchors' constraints flattened to (anchor, constraint) pairs for the hinge term.
#[derive(Debug)]
struct HingeData {
    /// Anchor index of each pair, `[P]`.
    index: Tensor,
    /// Constraint rows `c`, `[P, out]`.
    c: Tensor,
    /// `margin - d`, `[P]`: the hinge is `relu(margin - d - c·y)`.
    m_minus_d: Tensor,
}

/// Adam repair of `f_e = layers[..split]` toward proxy-box centres, with a saliency mask
/// limiting how many parameters change (see the module docs).
#[derive(Debug)]
pub struct Trainer {
    layers: Vec<TrainLayer>,
    /// Parameter budget `k`.
    budget: usize,
    /// Parameters selected so far (the mask's ones).
    selected: usize,
    /// Anchors at the last [`Trainer::train`] call.
    anchors_seen: usize,
    /// Evaluate without the mask (saliency of every parameter).
    probe: bool,
    /// `f_c` in candle form, when every layer of it is supported.
    head: Option<Vec<HeadLayer>>,
    /// Weight of the output hinge term `mean relu(m - c·f(x) - d)` over the anchors'
    /// constraints (0: the paper's loss alone).
    pub output_weight: f64,
    /// Rank mask candidates by repair gradient over influence on the fidelity inputs.
    pub local_mask: bool,
    /// Fidelity inputs `[n, in]` and their original features `[n, s]`.
    fidelity: Option<(Tensor, Tensor)>,
    /// The fidelity inputs (rows), for the prefix cache.
    fidelity_inputs: Vec<Vec<f64>>,
    /// Fidelity inputs pushed through the frozen layers before the first trainable one:
    /// (that layer's index, `[n, width]`).
    fidelity_prefix: Option<(usize, Tensor)>,
    /// Fidelity weight λ.
    fidelity_weight: f64,
    /// Adam learning rate.
    learning_rate: f64,
    /// How many of the last Dense layers of `f_e` may change.
    pub trainable_layers: usize,
}

fn candle(e: candle_core::Error) -> RepairError {
    RepairError::Optimiser(e.to_string())
}

impl Trainer {
    /// A trainer for `f_e = net.layers[..split]` that may change at most `budget`
    /// parameters; `fidelity_inputs` are kept at their original features with weight
    /// `fidelity_weight`.
    pub fn new(
        net: &Network,
        split: usize,
        budget: usize,
        fidelity_inputs: &[Vec<f64>],
        fidelity_weight: f64,
        learning_rate: f64,
    ) -> Result<Self, RepairError> {
        let dev = Device::Cpu;
        let mut layers = Vec::new();
        for (index, layer) in net.layers[..split].iter().enumerate() {
            layers.push(match layer {
                Layer::Dense(d) => {
                    let w0 = Tensor::from_vec(d.weight.clone(), (d.out_dim, d.in_dim), &dev).map_err(candle)?;
                    let b0 = Tensor::from_vec(d.bias.clone(), (1, d.out_dim), &dev).map_err(candle)?;
                    TrainLayer::Dense {
                        index,
                        dw: Var::zeros((d.out_dim, d.in_dim), DType::F64, &dev).map_err(candle)?,
                        db: Var::zeros((1, d.out_dim), DType::F64, &dev).map_err(candle)?,
                        mw: Tensor::zeros((d.out_dim, d.in_dim), DType::F64, &dev).map_err(candle)?,
                        mb: Tensor::zeros((1, d.out_dim), DType::F64, &dev).map_err(candle)?,
                        w0,
                        b0,
                    }
                }
                Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh => {
                    TrainLayer::Activation(layer.clone())
                }
                Layer::Flatten => TrainLayer::Flatten,
                other => {
                    return Err(RepairError::Unsupported(format!(
                        "layer {index} ({}) in the repaired part f_e: the trainer handles Dense, Flatten and \
                         ReLU/LeakyReLU/Sigmoid/Tanh",
                        other.kind()
                    )));
                }
            });
        }
        let mut trainer = Self {
            layers,
            budget,
            selected: 0,
            anchors_seen: 0,
            probe: false,
            head: head_of(net, split)?,
            output_weight: 0.0,
            local_mask: true,
            fidelity: None,
            fidelity_inputs: fidelity_inputs.to_vec(),
            fidelity_prefix: None,
            fidelity_weight,
            learning_rate,
            trainable_layers: 1,
        };
        if !fidelity_inputs.is_empty() {
            let xs = batch(fidelity_inputs)?;
            let target = trainer.features(&xs)?.detach();
            trainer.fidelity = Some((xs, target));
        }
        Ok(trainer)
    }

    /// `f_e` on a batch `[n, in]`.
    fn features(&self, x: &Tensor) -> Result<Tensor, RepairError> {
        self.features_from(x, 0)
    }

    /// `layers[start..split]` on a batch of that layer's inputs (the layers before
    /// `start` are frozen, so their outputs are computed once in f64).
    fn features_from(&self, x: &Tensor, start: usize) -> Result<Tensor, RepairError> {
        let mut h = x.clone();
        for layer in &self.layers[start..] {
            h = match layer {
                TrainLayer::Dense {
                    w0,
                    b0,
                    dw,
                    db,
                    mw,
                    mb,
                    ..
                } => {
                    // The saliency probe sees every parameter (deltas outside the mask
                    // are zero: they never get a gradient).
                    let (w, b) = if self.probe {
                        (
                            (w0 + dw.as_tensor()).map_err(candle)?,
                            (b0 + db.as_tensor()).map_err(candle)?,
                        )
                    } else {
                        (
                            (w0 + (dw.as_tensor() * mw).map_err(candle)?).map_err(candle)?,
                            (b0 + (db.as_tensor() * mb).map_err(candle)?).map_err(candle)?,
                        )
                    };
                    h.matmul(&w.t().map_err(candle)?)
                        .map_err(candle)?
                        .broadcast_add(&b)
                        .map_err(candle)?
                }
                TrainLayer::Activation(Layer::Relu) => h.relu().map_err(candle)?,
                TrainLayer::Activation(Layer::LeakyRelu { alpha }) => {
                    let neg = h.minimum(0.0).map_err(candle)?;
                    (h.relu().map_err(candle)? + neg.affine(*alpha, 0.0).map_err(candle)?)
                        .map_err(candle)?
                }
                TrainLayer::Activation(Layer::Sigmoid) => {
                    candle_nn::ops::sigmoid(&h).map_err(candle)?
                }
                TrainLayer::Activation(Layer::Tanh) => h.tanh().map_err(candle)?,
                TrainLayer::Activation(_) | TrainLayer::Flatten => h,
            };
        }
        Ok(h)
    }

    /// The repair loss: `mean ||f_e(x) - h*||_2` over the anchors plus the fidelity term.
    /// `xs` are the anchors' inputs to layer `start` (see [`Trainer::first_trainable`]).
    fn loss(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        start: usize,
        hinge: Option<&HingeData>,
        box_weight: Option<&Tensor>,
    ) -> Result<Tensor, RepairError> {
        let feats = self.features_from(xs, start)?;
        let diff = (&feats - targets).map_err(candle)?;
        // +1e-12 keeps the gradient of the norm finite at 0.
        let dist = diff
            .sqr()
            .map_err(candle)?
            .sum_keepdim(1)
            .map_err(candle)?
            .affine(1.0, 1e-12)
            .map_err(candle)?;
        let dist = dist.sqrt().map_err(candle)?;
        let dist = match box_weight {
            Some(w) => dist.broadcast_mul(w).map_err(candle)?,
            None => dist,
        };
        let mut loss = dist.mean_all().map_err(candle)?;
        if let (Some(h), Some(head)) = (hinge, &self.head)
            && self.output_weight > 0.0
        {
            let mut y = feats;
            for l in head {
                y = match l {
                    HeadLayer::Dense(w, b) => y
                        .matmul(w)
                        .map_err(candle)?
                        .broadcast_add(b)
                        .map_err(candle)?,
                    HeadLayer::Activation(a) => activate(&y, a)?,
                    HeadLayer::Flatten => y,
                };
            }
            let sel = y.index_select(&h.index, 0).map_err(candle)?;
            let v = (sel * &h.c).map_err(candle)?.sum(1).map_err(candle)?;
            let hinge = (&h.m_minus_d - v)
                .map_err(candle)?
                .relu()
                .map_err(candle)?
                .mean_all()
                .map_err(candle)?;
            loss =
                (loss + hinge.affine(self.output_weight, 0.0).map_err(candle)?).map_err(candle)?;
        }
        if let Some((fx, f0)) = &self.fidelity {
            let fd = match &self.fidelity_prefix {
                Some((k, px)) if *k == start => self.features_from(px, start)? - f0,
                _ => self.features(fx)? - f0,
            }
            .map_err(candle)?;
            let fid = fd
                .sqr()
                .map_err(candle)?
                .sum_keepdim(1)
                .map_err(candle)?
                .mean_all()
                .map_err(candle)?;
            loss =
                (loss + fid.affine(self.fidelity_weight, 0.0).map_err(candle)?).map_err(candle)?;
        }
        Ok(loss)
    }

    /// Index (in `layers`, the same as in the network) of the first Dense layer that may
    /// change: the last `trainable_layers` Dense layers of `f_e` are trainable.
    fn first_trainable(&self) -> usize {
        let dense: Vec<usize> = (0..self.layers.len())
            .filter(|&i| matches!(self.layers[i], TrainLayer::Dense { .. }))
            .collect();
        dense[dense.len().saturating_sub(self.trainable_layers.max(1))..]
            .first()
            .copied()
            .unwrap_or(0)
    }

    fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| match l {
                TrainLayer::Dense { dw, db, .. } => vec![dw.clone(), db.clone()],
                _ => vec![],
            })
            .collect()
    }

    /// Add up to `quota` parameters to the mask: those with the largest `|∂L/∂θ|` of the
    /// loss on these anchors among the not yet selected ones of the last
    /// `trainable_layers` Dense layers of `f_e`, never beyond the budget. Selected
    /// parameters stay selected (their deltas carry earlier fixes).
    fn grow_mask(
        &mut self,
        xs: &Tensor,
        targets: &Tensor,
        start: usize,
        hinge: Option<&HingeData>,
        quota: usize,
    ) -> Result<(), RepairError> {
        let quota = quota.min(self.budget.saturating_sub(self.selected));
        if quota == 0 {
            return Ok(());
        }
        self.probe = true;
        let loss = self.loss(xs, targets, start, hinge, None);
        self.probe = false;
        let grads = loss?.backward().map_err(candle)?;
        // Influence of each parameter on the features of the fidelity inputs (gradient of
        // their sum, per input): parameters that matter for the anchors but little
        // elsewhere are preferred, which keeps the repair local.
        let influence = match &self.fidelity_prefix {
            Some((k, px)) if *k == start => {
                self.probe = true;
                let f = self.features_from(px, start);
                self.probe = false;
                let n = px.dim(0).map_err(candle)?.max(1) as f64;
                Some((f?
                    .sum_all()
                    .map_err(candle)?
                    .affine(1.0 / n, 0.0)
                    .map_err(candle)?
                    .backward()
                    .map_err(candle)?,))
            }
            _ => None,
        };
        let mut saliency: Vec<(f64, usize, bool, usize)> = Vec::new(); // (score, layer, is_bias, flat)
        // Only the last `trainable_layers` Dense layers of f_e compete for the budget.
        let first_trainable = self.first_trainable();
        for (li, layer) in self.layers.iter().enumerate() {
            if li < first_trainable {
                continue;
            }
            if let TrainLayer::Dense { dw, db, mw, mb, .. } = layer {
                for (is_bias, v, m) in [(false, dw, mw), (true, db, mb)] {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let g = g
                            .flatten_all()
                            .map_err(candle)?
                            .to_vec1::<f64>()
                            .map_err(candle)?;
                        let m = m
                            .flatten_all()
                            .map_err(candle)?
                            .to_vec1::<f64>()
                            .map_err(candle)?;
                        let inf = match influence.as_ref().and_then(|(gi,)| gi.get(v.as_tensor())) {
                            Some(t) => t
                                .flatten_all()
                                .map_err(candle)?
                                .to_vec1::<f64>()
                                .map_err(candle)?,
                            None => vec![0.0; g.len()],
                        };
                        let mean_inf =
                            inf.iter().map(|x| x.abs()).sum::<f64>() / inf.len().max(1) as f64;
                        let eps = 1e-2 * mean_inf + 1e-12;
                        saliency.extend(
                            g.iter()
                                .zip(&m)
                                .zip(&inf)
                                .enumerate()
                                .filter(|(_, ((x, m), _))| **m == 0.0 && **x != 0.0)
                                .map(|(i, ((x, _), f))| {
                                    let score = if self.local_mask {
                                        x.abs() / (f.abs() + eps)
                                    } else {
                                        x.abs()
                                    };
                                    (score, li, is_bias, i)
                                }),
                        );
                    }
                }
            }
        }
        saliency.sort_by(|a, b| b.0.total_cmp(&a.0));
        saliency.truncate(quota);
        self.selected += saliency.len();
        let dev = Device::Cpu;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            if let TrainLayer::Dense { mw, mb, .. } = layer {
                if !saliency.iter().any(|s| s.1 == li) {
                    continue;
                }
                let mut w = mw
                    .flatten_all()
                    .map_err(candle)?
                    .to_vec1::<f64>()
                    .map_err(candle)?;
                let mut b = mb
                    .flatten_all()
                    .map_err(candle)?
                    .to_vec1::<f64>()
                    .map_err(candle)?;
                for &(_, _, is_bias, i) in saliency.iter().filter(|s| s.1 == li) {
                    if is_bias { b[i] = 1.0 } else { w[i] = 1.0 }
                }
                *mw = Tensor::from_vec(w, mw.shape(), &dev).map_err(candle)?;
                *mb = Tensor::from_vec(b, mb.shape(), &dev).map_err(candle)?;
            }
        }
        Ok(())
    }

    /// Train toward the anchors for at most `steps` Adam steps, stopping early when
    /// `done(net)` holds for the network with the current weights (checked every
    /// `check_every` steps). Returns the number of steps taken.
    pub fn train(
        &mut self,
        base: &Network,
        anchors: &[Anchor],
        steps: usize,
        check_every: usize,
        mut done: impl FnMut(&Network) -> bool,
    ) -> Result<usize, RepairError> {
        if anchors.is_empty() {
            return Ok(0);
        }
        let start = self.first_trainable();
        let xs = batch(
            &anchors
                .iter()
                .map(|a| base.forward_range(&a.x, 0, start))
                .collect::<Vec<_>>(),
        )?;
        let targets = batch(&anchors.iter().map(|a| a.h_star.clone()).collect::<Vec<_>>())?;
        let box_weight = Tensor::from_vec(
            anchors.iter().map(|a| a.box_weight).collect::<Vec<_>>(),
            (anchors.len(), 1),
            &Device::Cpu,
        )
        .map_err(candle)?;
        if self.fidelity.is_some() && self.fidelity_prefix.as_ref().map(|p| p.0) != Some(start) {
            let rows: Vec<Vec<f64>> = self
                .fidelity_inputs
                .iter()
                .map(|x| base.forward_range(x, 0, start))
                .collect();
            self.fidelity_prefix = Some((start, batch(&rows)?));
        }
        // Three quarters of the budget at the first call, then an eighth more per call as
        // new counterexamples arrive (other regions may need other parameters).
        let quota = if self.selected == 0 {
            (3 * self.budget).div_ceil(4)
        } else if anchors.len() > self.anchors_seen {
            self.budget.div_ceil(8)
        } else {
            0
        };
        self.anchors_seen = anchors.len();
        let hinge = hinge_data(anchors)?;
        self.grow_mask(&xs, &targets, start, Some(&hinge), quota)?;
        let params = ParamsAdamW {
            lr: self.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(self.vars(), params).map_err(candle)?;
        for step in 0..steps {
            if step % check_every.max(1) == 0 && done(&self.network(base)?) {
                return Ok(step);
            }
            let loss = self.loss(&xs, &targets, start, Some(&hinge), Some(&box_weight))?;
            opt.backward_step(&loss).map_err(candle)?;
        }
        Ok(steps)
    }

    /// The network with the current (repaired) weights of `f_e`.
    pub fn network(&self, base: &Network) -> Result<Network, RepairError> {
        let mut net = base.clone();
        for layer in &self.layers {
            if let TrainLayer::Dense {
                index,
                w0,
                b0,
                dw,
                db,
                mw,
                mb,
            } = layer
            {
                let w = (w0 + (dw.as_tensor() * mw).map_err(candle)?).map_err(candle)?;
                let b = (b0 + (db.as_tensor() * mb).map_err(candle)?).map_err(candle)?;
                if let Layer::Dense(d) = &mut net.layers[*index] {
                    d.weight = w
                        .flatten_all()
                        .map_err(candle)?
                        .to_vec1::<f64>()
                        .map_err(candle)?;
                    d.bias = b
                        .flatten_all()
                        .map_err(candle)?
                        .to_vec1::<f64>()
                        .map_err(candle)?;
                }
            }
        }
        Ok(net)
    }
}

/// `f_c = layers[split..]` as constant candle layers, or `None` when a layer of it is not
/// supported by the hinge term (the paper's loss then works alone).
fn head_of(net: &Network, split: usize) -> Result<Option<Vec<HeadLayer>>, RepairError> {
    let dev = Device::Cpu;
    let mut head = Vec::new();
    for layer in &net.layers[split..] {
        head.push(match layer {
            Layer::Dense(d) => HeadLayer::Dense(
                Tensor::from_vec(d.weight.clone(), (d.out_dim, d.in_dim), &dev)
                    .and_then(|w| w.t()?.contiguous())
                    .map_err(candle)?,
                Tensor::from_vec(d.bias.clone(), (1, d.out_dim), &dev).map_err(candle)?,
            ),
            Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh => {
                HeadLayer::Activation(layer.clone())
            }
            Layer::Flatten => HeadLayer::Flatten,
            _ => return Ok(None),
        });
    }
    Ok(Some(head))
}

/// An activation layer on a candle tensor.
fn activate(h: &Tensor, layer: &Layer) -> Result<Tensor, RepairError> {
    Ok(match layer {
        Layer::Relu => h.relu().map_err(candle)?,
        Layer::LeakyRelu { alpha } => {
            let neg = h.minimum(0.0).map_err(candle)?;
            (h.relu().map_err(candle)? + neg.affine(*alpha, 0.0).map_err(candle)?)
                .map_err(candle)?
        }
        Layer::Sigmoid => candle_nn::ops::sigmoid(h).map_err(candle)?,
        Layer::Tanh => h.tanh().map_err(candle)?,
        _ => h.clone(),
    })
}

/// The anchors' (anchor, constraint) pairs as tensors.
fn hinge_data(anchors: &[Anchor]) -> Result<HingeData, RepairError> {
    let dev = Device::Cpu;
    let mut index = Vec::new();
    let mut c = Vec::new();
    let mut m = Vec::new();
    let mut width = 0;
    for (i, a) in anchors.iter().enumerate() {
        for k in &a.constraints {
            index.push(i as u32);
            c.extend_from_slice(&k.c);
            width = k.c.len();
            m.push(a.margin - k.d);
        }
    }
    let p = index.len();
    Ok(HingeData {
        index: Tensor::from_vec(index, p, &dev).map_err(candle)?,
        c: Tensor::from_vec(c, (p, width), &dev).map_err(candle)?,
        m_minus_d: Tensor::from_vec(m, p, &dev).map_err(candle)?,
    })
}

/// Rows as a `[n, len]` f64 tensor.
fn batch(rows: &[Vec<f64>]) -> Result<Tensor, RepairError> {
    let n = rows.len();
    let m = rows.first().map_or(0, Vec::len);
    Tensor::from_vec(rows.concat(), (n, m), &Device::Cpu).map_err(candle)
}

/// Number of parameters that differ between two networks of the same structure.
pub fn changed_parameters(original: &Network, repaired: &Network) -> usize {
    original
        .layers
        .iter()
        .zip(&repaired.layers)
        .map(|(a, b)| match (a, b) {
            (Layer::Dense(a), Layer::Dense(b)) => a
                .weight
                .iter()
                .zip(&b.weight)
                .chain(a.bias.iter().zip(&b.bias))
                .filter(|(x, y)| x != y)
                .count(),
            (Layer::Conv2d(a), Layer::Conv2d(b)) => a
                .weight
                .iter()
                .zip(&b.weight)
                .chain(a.bias.iter().zip(&b.bias))
                .filter(|(x, y)| x != y)
                .count(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;
    use rand::{Rng, SeedableRng};

    /// f_e = Dense(2 -> 3) + ReLU, f_c = Dense(3 -> 3) + ReLU + Dense(3 -> 2) with
    /// `y0 = relu(h1 + 0.1 h2)`, `y1 = relu(h0 - 0.1 h2)`: `y1 - y0 >= 0.05` is reachable by
    /// moving the features, and fails at the test input.
    fn small_net() -> Network {
        let fe = Dense::new(2, 3, vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5], vec![0.0; 3]).unwrap();
        let fc1 = Dense::new(
            3,
            3,
            vec![0.0, 1.0, 0.1, 1.0, 0.0, -0.1, 0.3, -0.2, 0.5],
            vec![0.0, 0.0, 0.1],
        )
        .unwrap();
        let fc2 = Dense::new(3, 2, vec![1.0, 0.0, 0.05, 0.0, 1.0, -0.05], vec![0.0, 0.0]).unwrap();
        let layers = vec![
            Layer::Dense(fe),
            Layer::Relu,
            Layer::Dense(fc1),
            Layer::Relu,
            Layer::Dense(fc2),
        ];
        Network::new(vec![2], layers).unwrap()
    }

    #[test]
    fn proxy_box_is_certified_and_sampling_agrees() {
        let net = small_net();
        let split = 2; // f_e = Dense+ReLU, f_c = Dense, ReLU, Dense; features are post-ReLU
        // Require output 1 to exceed output 0 by 0.05 (y1 - y0 - 0.05 >= 0), starting from a
        // feature where it fails.
        let want = Constraint {
            c: vec![-1.0, 1.0],
            d: -0.05,
        };
        let x = [0.2, 0.6];
        let h0 = net.forward_range(&x, 0, split);
        let y0 = net.forward(&x);
        assert!(want.value(&y0) < 0.0, "start must violate");
        let options = ProxyBoxOptions {
            radius: 0.1,
            max_iterations: 200,
            margin: 1e-6,
            non_negative: true,
        };
        let h = synthesise_proxy_box(&net, split, &h0, std::slice::from_ref(&want), &options)
            .unwrap()
            .expect("a proxy box is found");
        // CROWN certifies it (independently recomputed).
        let (spec, d) = spec_of(std::slice::from_ref(&want));
        let b = bounds::linear_bounds(
            &net,
            split,
            net.layers.len(),
            &BoxBounds::ball(&h, 0.1),
            Some(&spec),
            1,
            Method::Crown,
        )
        .unwrap();
        assert!(b.lower[0] + d[0] >= 1e-6);
        // Sampling: every sampled feature in the box satisfies the constraint.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..5000 {
            let p: Vec<f64> = h.iter().map(|c| c + rng.random_range(-0.1..=0.1)).collect();
            let y = net.forward_range(&p, split, net.layers.len());
            assert!(want.value(&y) >= 0.0, "sample {p:?} -> {y:?}");
        }
        // And the box moved: the original feature was not certified.
        assert_ne!(h, h0);
    }

    #[test]
    fn trainer_moves_the_feature_into_the_box_within_budget() {
        let net = small_net();
        let split = 2;
        let x = vec![0.2, 0.6];
        let y0 = net.forward(&x);
        let want = Constraint {
            c: vec![-1.0, 1.0],
            d: -0.05,
        };
        assert!(want.value(&y0) < 0.0, "start must violate");
        let options = ProxyBoxOptions {
            radius: 0.1,
            max_iterations: 200,
            margin: 1e-6,
            non_negative: true,
        };
        let h0 = net.forward_range(&x, 0, split);
        let h = synthesise_proxy_box(&net, split, &h0, std::slice::from_ref(&want), &options)
            .unwrap()
            .unwrap();
        let anchor = Anchor {
            x: x.clone(),
            h_star: h,
            constraints: vec![want.clone()],
            margin: 1e-6,
            box_weight: 1.0,
        };
        let mut trainer = Trainer::new(&net, split, 6, &[], 0.0, 0.05).unwrap();
        trainer
            .train(&net, std::slice::from_ref(&anchor), 2000, 5, |n| {
                want.value(&n.forward(&x)) >= 1e-6
            })
            .unwrap();
        let repaired = trainer.network(&net).unwrap();
        assert!(
            want.value(&repaired.forward(&x)) >= 1e-6,
            "repaired output {:?}",
            repaired.forward(&x)
        );
        let changed = changed_parameters(&net, &repaired);
        assert!(changed > 0 && changed <= 6, "changed {changed}");
    }
}
