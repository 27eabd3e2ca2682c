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
use super::desired::{Constraint, DesiredSet};
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
        /// During [`Trainer::train`], the masked deltas as compact variables (Adam and
        /// the mask products then touch the few thousand selected entries, not every
        /// weight); written back to `dw`/`db` before every check and at the end.
        sparse: Option<Sparse>,
    },
    Activation(Layer),
    Flatten,
}

/// The selected entries of one Dense layer's deltas: flat indices and their values.
#[derive(Debug)]
struct Sparse {
    iw: Tensor,
    vw: Var,
    ib: Tensor,
    vb: Var,
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
    /// In the output hinge, a ReLU that ends the network counts as a leaky ReLU (slope
    /// 0.01 below 0): with the plain ReLU a point whose outputs are all negative before
    /// it has all outputs 0 (a tie, misclassified) and no gradient (9_200 zigzag: one
    /// point stuck so for 3 rounds). Training only; proofs see the network as it is.
    pub leaky_output: bool,
    /// Fidelity inputs `[n, in]` and their original features `[n, s]`.
    fidelity: Option<(Tensor, Tensor)>,
    /// The fidelity inputs (rows), for the prefix cache.
    fidelity_inputs: Vec<Vec<f64>>,
    /// Fidelity inputs pushed through the frozen layers before the first trainable one:
    /// (that layer's index, `[n, width]`).
    fidelity_prefix: Option<(usize, Tensor)>,
    /// Fidelity weight λ.
    pub fidelity_weight: f64,
    /// Weight of the decision-preserving term on the fidelity inputs (0: off).
    pub decision_weight: f64,
    /// Per fidelity input, the original argmin and argmax outputs `[n, 1]` and the
    /// original gaps `y0 - y0[argmin]`, `y0[argmax] - y0` `[n, out]`, halved.
    decisions: Option<(Tensor, Tensor, Tensor, Tensor)>,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// How many of the last Dense layers of `f_e` may change.
    pub trainable_layers: usize,
    /// Certified-training term: input boxes whose sound lower bound of the desired margin
    /// (CROWN's backward pass through the whole network, a function of the trainable
    /// weights) is
    /// hinged at a target ([`Trainer::set_bound_boxes`]).
    bound: Vec<BoundData>,
    /// Weight of that term.
    pub bound_weight: f64,
    /// Boxes at the last [`Trainer::train`] call (new ones widen the mask).
    boxes_seen: usize,
    /// Parameters the next [`Trainer::train`] call adds to the mask on top of its usual
    /// quota ([`Trainer::raise_budget`]).
    extra_quota: usize,
    /// [`Trainer::train`] returns at this instant whatever its `done` test says (its
    /// callers' time budgets; `None`: no limit).
    pub deadline: Option<std::time::Instant>,
    /// Fidelity inputs per Adam step (0: all of them every step). A rotating window
    /// over the inputs: a large fidelity set at the cost per step of a small one.
    pub fidelity_batch: usize,
    /// The window `(first row, rows)` of the current step (see `fidelity_batch`).
    fidelity_window: Option<(usize, usize)>,
    /// Precision of the training arithmetic ([`Trainer::set_dtype`]; F64 unless set).
    dtype: DType,
}

/// Input boxes of one property for the certified-training term.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundGroup {
    /// `(lower, upper)` input corners.
    pub boxes: Vec<(Vec<f64>, Vec<f64>)>,
    /// The property's desired set (a conjunction of clauses of alternatives).
    pub desired: DesiredSet,
    /// The hinge target of the bound: `relu(target - lower bound)`.
    pub target: f64,
}

/// A [`BoundGroup`] as tensors.
#[derive(Debug)]
struct BoundData {
    /// `[B, in]` corners.
    lo: Tensor,
    hi: Tensor,
    /// Spec rows `[R, out]` (every alternative of every clause, then the mean of each
    /// clause's alternatives: a convex combination, so its lower bound is still a lower
    /// bound of the clause's max, and often a tighter one).
    spec: Tensor,
    /// Constants `[1, R]`.
    d: Tensor,
    /// Per clause, the row indices of its alternatives (mean row included).
    clauses: Vec<Tensor>,
    target: f64,
    /// Per box `[B]`, `1 / max(target - bound, target)` at collection: each box's hinge
    /// counts relative to its own initial gap (a box off by 50 must not drown the ones
    /// off by 0.01, which training can close).
    scale: Tensor,
    /// The boxes and spec rows in f64 (for refreshing `relax`).
    boxes: Vec<(Vec<f64>, Vec<f64>)>,
    rows: Vec<Vec<f64>>,
    /// Per ReLU layer (in order), CROWN's bounds `[B, n]` of its input on every box, for
    /// the network at the last refresh (constants: see [`crown_fixed`]).
    relax: Vec<(Tensor, Tensor)>,
}

/// One step of the whole network for bound propagation.
enum BoundStep {
    /// Weight transposed `[in, out]`, bias `[1, out]`.
    Affine(Tensor, Tensor),
    Relu,
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
                        sparse: None,
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
            leaky_output: false,
            fidelity: None,
            fidelity_inputs: fidelity_inputs.to_vec(),
            fidelity_prefix: None,
            fidelity_weight,
            decision_weight: 0.0,
            decisions: None,
            learning_rate,
            trainable_layers: 1,
            bound: Vec::new(),
            bound_weight: 0.0,
            boxes_seen: 0,
            extra_quota: 0,
            deadline: None,
            fidelity_batch: 0,
            fidelity_window: None,
            dtype: DType::F64,
        };
        if !fidelity_inputs.is_empty() {
            let xs = batch(fidelity_inputs)?;
            let target = trainer.features(&xs)?.detach();
            trainer.fidelity = Some((xs, target));
            let ys: Vec<Vec<f64>> = fidelity_inputs.iter().map(|x| net.forward(x)).collect();
            let arg = |y: &[f64], better: fn(f64, f64) -> bool| {
                (1..y.len()).fold(0usize, |b, i| if better(y[i], y[b]) { i } else { b })
            };
            let amin: Vec<u32> = ys.iter().map(|y| arg(y, |p, q| p < q) as u32).collect();
            let amax: Vec<u32> = ys.iter().map(|y| arg(y, |p, q| p > q) as u32).collect();
            let gmin: Vec<Vec<f64>> = ys
                .iter()
                .zip(&amin)
                .map(|(y, &a)| y.iter().map(|v| 0.5 * (v - y[a as usize])).collect())
                .collect();
            let gmax: Vec<Vec<f64>> = ys
                .iter()
                .zip(&amax)
                .map(|(y, &b)| y.iter().map(|v| 0.5 * (y[b as usize] - v)).collect())
                .collect();
            let n = ys.len();
            trainer.decisions = Some((
                Tensor::from_vec(amin, (n, 1), &dev).map_err(candle)?,
                batch(&gmin)?,
                Tensor::from_vec(amax, (n, 1), &dev).map_err(candle)?,
                batch(&gmax)?,
            ));
        }
        Ok(trainer)
    }

    /// Train in `dtype` (F32: about half the cost per Adam step of F64). Every tensor of
    /// the trainer (weights, deltas, masks, `f_c`, fidelity data, bound terms) is
    /// converted; call it before the first [`Trainer::train`]. Training only steers the
    /// weights: [`Trainer::network`] returns f64 weights (the untouched ones exactly the
    /// base network's), and callers prove that network in f64, so the precision of
    /// training cannot weaken a proof.
    pub fn set_dtype(&mut self, dtype: DType) -> Result<(), RepairError> {
        let cv = |t: &Tensor| t.to_dtype(dtype).map_err(candle);
        let var = |v: &Var| {
            v.as_tensor()
                .to_dtype(dtype)
                .and_then(|t| Var::from_tensor(&t))
                .map_err(candle)
        };
        for l in &mut self.layers {
            if let TrainLayer::Dense {
                w0,
                b0,
                dw,
                db,
                mw,
                mb,
                ..
            } = l
            {
                (*w0, *b0, *mw, *mb) = (cv(w0)?, cv(b0)?, cv(mw)?, cv(mb)?);
                (*dw, *db) = (var(dw)?, var(db)?);
            }
        }
        for l in self.head.iter_mut().flatten() {
            if let HeadLayer::Dense(w, b) = l {
                (*w, *b) = (cv(w)?, cv(b)?);
            }
        }
        if let Some((x, f)) = &mut self.fidelity {
            (*x, *f) = (cv(x)?, cv(f)?);
        }
        if let Some((_, x)) = &mut self.fidelity_prefix {
            *x = cv(x)?;
        }
        if let Some((_, gmin, _, gmax)) = &mut self.decisions {
            (*gmin, *gmax) = (cv(gmin)?, cv(gmax)?);
        }
        for g in &mut self.bound {
            (g.lo, g.hi, g.spec, g.d, g.scale) = (
                cv(&g.lo)?,
                cv(&g.hi)?,
                cv(&g.spec)?,
                cv(&g.d)?,
                cv(&g.scale)?,
            );
            for (l, u) in &mut g.relax {
                (*l, *u) = (cv(l)?, cv(u)?);
            }
        }
        self.dtype = dtype;
        Ok(())
    }

    /// `t` in the training precision.
    fn cast(&self, t: Tensor) -> Result<Tensor, RepairError> {
        t.to_dtype(self.dtype).map_err(candle)
    }

    /// `f_e` on a batch `[n, in]`.
    fn features(&self, x: &Tensor) -> Result<Tensor, RepairError> {
        self.features_from(x, 0)
    }

    /// A dense layer's weight and bias as trained: base plus the masked delta. The
    /// saliency probe sees every parameter (deltas outside the mask are zero: they never
    /// get a gradient).
    #[allow(clippy::too_many_arguments)]
    fn dense_parameters(
        &self,
        w0: &Tensor,
        b0: &Tensor,
        dw: &Var,
        db: &Var,
        mw: &Tensor,
        mb: &Tensor,
        sparse: &Option<Sparse>,
    ) -> Result<(Tensor, Tensor), RepairError> {
        if let (Some(sp), false) = (sparse, self.probe) {
            let add = |t: &Tensor, i: &Tensor, v: &Var| {
                if i.dim(0)? == 0 {
                    return Ok(t.clone());
                }
                t.flatten_all()?
                    .index_add(i, v.as_tensor(), 0)?
                    .reshape(t.shape())
            };
            return Ok((
                add(w0, &sp.iw, &sp.vw).map_err(candle)?,
                add(b0, &sp.ib, &sp.vb).map_err(candle)?,
            ));
        }
        if self.probe {
            Ok((
                (w0 + dw.as_tensor()).map_err(candle)?,
                (b0 + db.as_tensor()).map_err(candle)?,
            ))
        } else {
            Ok((
                (w0 + (dw.as_tensor() * mw).map_err(candle)?).map_err(candle)?,
                (b0 + (db.as_tensor() * mb).map_err(candle)?).map_err(candle)?,
            ))
        }
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
                    sparse,
                    ..
                } => {
                    let (w, b) = self.dense_parameters(w0, b0, dw, db, mw, mb, sparse)?;
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
        let rows = |t: &Tensor| match self.fidelity_window {
            Some((at, n)) => t.narrow(0, at, n).map_err(candle),
            None => Ok(t.clone()),
        };
        // The anchors and the fidelity inputs go through f_e as one batch when both start
        // at `start`: one pass, one copy of the masked weights (on 9_200 the step cost
        // is these small matmuls and the weight updates, not the FLOPs).
        let (feats, fid_feats) = match (&self.fidelity, &self.fidelity_prefix) {
            (Some(_), Some((k, px))) if *k == start => {
                let n = xs.dim(0).map_err(candle)?;
                let all = Tensor::cat(&[xs, &rows(px)?], 0).map_err(candle)?;
                let all = self.features_from(&all, start)?;
                let m = all.dim(0).map_err(candle)? - n;
                (
                    all.narrow(0, 0, n).map_err(candle)?,
                    Some(all.narrow(0, n, m).map_err(candle)?),
                )
            }
            _ => (self.features_from(xs, start)?, None),
        };
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
            for (i, l) in head.iter().enumerate() {
                y = match l {
                    HeadLayer::Dense(w, b) => y
                        .matmul(w)
                        .map_err(candle)?
                        .broadcast_add(b)
                        .map_err(candle)?,
                    HeadLayer::Activation(Layer::Relu)
                        if self.leaky_output && i + 1 == head.len() =>
                    {
                        activate(&y, &Layer::LeakyRelu { alpha: 0.01 })?
                    }
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
        if self.bound_weight > 0.0
            && let Some(b) = self.bound_hinge()?
        {
            loss = (loss + b.affine(self.bound_weight, 0.0).map_err(candle)?).map_err(candle)?;
        }
        if let Some((fx, f0)) = &self.fidelity {
            let f0 = &rows(f0)?;
            let fd = match fid_feats {
                Some(f) => f - f0,
                None => self.features(&rows(fx)?)? - f0,
            }
            .map_err(candle)?;
            if self.decision_weight > 0.0
                && let Some((amin, gmin, amax, gmax)) = &self.decisions
                && let Some(head) = &self.head
            {
                let (amin, gmin, amax, gmax) =
                    (&rows(amin)?, &rows(gmin)?, &rows(amax)?, &rows(gmax)?);
                // Keep each fidelity input's argmin and argmax output (the advisory and the
                // class): every other output stays on the same side with at least half
                // its original gap. Zero on the original network.
                let feats = (&fd + f0).map_err(candle)?;
                let y = head_forward(head, feats)?;
                let ya = y.gather(amin, 1).map_err(candle)?;
                let yb = y.gather(amax, 1).map_err(candle)?;
                let lo = (gmin - y.broadcast_sub(&ya).map_err(candle)?)
                    .and_then(|t| t.relu()?.sum_keepdim(1)?.mean_all())
                    .map_err(candle)?;
                let hi = (gmax
                    - y.broadcast_sub(&yb)
                        .map_err(candle)?
                        .neg()
                        .map_err(candle)?)
                .and_then(|t| t.relu()?.sum_keepdim(1)?.mean_all())
                .map_err(candle)?;
                let d = (lo + hi)
                    .and_then(|t| t.affine(self.decision_weight, 0.0))
                    .map_err(candle)?;
                loss = (loss + d).map_err(candle)?;
            }
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

    /// Recompute the ReLU relaxations of the bound term for `net` (the current network):
    /// CROWN's intermediate bounds on every box, by `verify`'s engine.
    pub fn refresh_bounds(&mut self, net: &Network) -> Result<(), RepairError> {
        use rayon::prelude::*;
        let relus: Vec<usize> = (0..net.layers.len())
            .filter(|&i| matches!(net.layers[i], Layer::Relu))
            .collect();
        let dtype = self.dtype;
        for g in &mut self.bound {
            let engine = crate::verify::bab::LinearEngine::new(net, Method::Crown);
            let per_box: Vec<Vec<(Vec<f64>, Vec<f64>)>> = g
                .boxes
                .par_iter()
                .map(|(lo, hi)| {
                    use crate::verify::bab::BoundEngine;
                    engine
                        .spec_lower(lo, hi, &g.rows)
                        .map(|b| relus.iter().map(|&i| b.layer_bounds[i].clone()).collect())
                        .map_err(|e| RepairError::Optimiser(format!("bound refresh: {e}")))
                })
                .collect::<Result<_, _>>()?;
            g.relax = (0..relus.len())
                .map(|k| {
                    let l: Vec<Vec<f64>> = per_box.iter().map(|b| b[k].0.clone()).collect();
                    let u: Vec<Vec<f64>> = per_box.iter().map(|b| b[k].1.clone()).collect();
                    let cv = |t: Tensor| t.to_dtype(dtype).map_err(candle);
                    Ok((cv(batch(&l)?)?, cv(batch(&u)?)?))
                })
                .collect::<Result<_, RepairError>>()?;
        }
        Ok(())
    }

    /// Replace the boxes of the certified-training term; `net` is the current network
    /// (for the relaxations).
    pub fn set_bound_boxes(
        &mut self,
        groups: &[BoundGroup],
        net: &Network,
    ) -> Result<(), RepairError> {
        let dev = Device::Cpu;
        self.bound.clear();
        for g in groups.iter().filter(|g| !g.boxes.is_empty()) {
            let lo = self.cast(batch(
                &g.boxes.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
            )?)?;
            let hi = self.cast(batch(
                &g.boxes.iter().map(|b| b.1.clone()).collect::<Vec<_>>(),
            )?)?;
            let mut rows: Vec<Vec<f64>> = Vec::new();
            let mut d = Vec::new();
            let mut clauses = Vec::new();
            for cl in &g.desired.clauses {
                let mut idx: Vec<u32> = Vec::new();
                for o in &cl.options {
                    idx.push(rows.len() as u32);
                    rows.push(o.c.clone());
                    d.push(o.d);
                }
                if cl.options.len() > 1 {
                    let k = cl.options.len() as f64;
                    let width = cl.options[0].c.len();
                    idx.push(rows.len() as u32);
                    rows.push(
                        (0..width)
                            .map(|j| cl.options.iter().map(|o| o.c[j]).sum::<f64>() / k)
                            .collect(),
                    );
                    d.push(cl.options.iter().map(|o| o.d).sum::<f64>() / k);
                }
                let n = idx.len();
                clauses.push(Tensor::from_vec(idx, n, &dev).map_err(candle)?);
            }
            let r = rows.len();
            self.bound.push(BoundData {
                lo,
                hi,
                spec: self.cast(batch(&rows)?)?,
                d: self.cast(Tensor::from_vec(d, (1, r), &dev).map_err(candle)?)?,
                clauses,
                target: g.target,
                boxes: g.boxes.clone(),
                rows,
                relax: Vec::new(),
                scale: Tensor::ones(g.boxes.len(), self.dtype, &dev).map_err(candle)?,
            });
        }
        self.refresh_bounds(net)?;
        let lbs = self.bound_margins()?;
        let dtype = self.dtype;
        for (g, lb) in self.bound.iter_mut().zip(lbs) {
            let t = g.target.max(1e-9);
            let sc: Vec<f64> = lb.iter().map(|v| 1.0 / (t - v).max(t)).collect();
            g.scale = Tensor::from_vec(sc, lb.len(), &dev)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(candle)?;
        }
        Ok(())
    }

    /// The whole network (current `f_e`, frozen `f_c`) as bound steps; `None` when a
    /// layer other than Dense, ReLU and Flatten occurs (no bound term then).
    fn bound_steps(&self) -> Result<Option<Vec<BoundStep>>, RepairError> {
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        for l in &self.layers {
            match l {
                TrainLayer::Dense {
                    w0,
                    b0,
                    dw,
                    db,
                    mw,
                    mb,
                    sparse,
                    ..
                } => {
                    let (w, b) = self.dense_parameters(w0, b0, dw, db, mw, mb, sparse)?;
                    steps.push(BoundStep::Affine(w.t().map_err(candle)?, b));
                }
                TrainLayer::Activation(Layer::Relu) => steps.push(BoundStep::Relu),
                TrainLayer::Flatten => {}
                TrainLayer::Activation(_) => return Ok(None),
            }
        }
        for l in head {
            match l {
                HeadLayer::Dense(wt, b) => steps.push(BoundStep::Affine(wt.clone(), b.clone())),
                HeadLayer::Activation(Layer::Relu) => steps.push(BoundStep::Relu),
                HeadLayer::Flatten => {}
                HeadLayer::Activation(_) => return Ok(None),
            }
        }
        Ok(Some(steps))
    }

    /// Per group, a lower bound `[B]` of the desired score
    /// `min_clause max_alternative (c·f(x) + d)` over each box: CROWN's backward pass for
    /// the spec rows as a differentiable function of the trainable weights, with the ReLU
    /// relaxations of the last refresh held fixed (see [`crown_fixed`]). It steers
    /// training only: proofs come from `verify`.
    fn bound_lower(&self) -> Result<Option<Vec<Tensor>>, RepairError> {
        if self.bound.is_empty() {
            return Ok(None);
        }
        let Some(steps) = self.bound_steps()? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for g in &self.bound {
            out.push(crown_fixed(&steps, g)?);
        }
        Ok(Some(out))
    }

    /// `mean relu(target - lower bound) · scale` over all boxes of all groups.
    fn bound_hinge(&self) -> Result<Option<Tensor>, RepairError> {
        let Some(lbs) = self.bound_lower()? else {
            return Ok(None);
        };
        let mut total: Option<Tensor> = None;
        let n: usize = lbs.iter().map(|t| t.dim(0).unwrap_or(0)).sum();
        for (lb, g) in lbs.iter().zip(&self.bound) {
            let h = lb
                .affine(-1.0, g.target)
                .and_then(|t| t.relu()?.mul(&g.scale)?.sum_all())
                .map_err(candle)?;
            total = Some(match total {
                Some(t) => (t + h).map_err(candle)?,
                None => h,
            });
        }
        total
            .map(|t| t.affine(1.0 / n.max(1) as f64, 0.0).map_err(candle))
            .transpose()
    }

    /// The current bound-term lower bounds of every box (group by group), for reports.
    pub fn bound_margins(&self) -> Result<Vec<Vec<f64>>, RepairError> {
        let Some(lbs) = self.bound_lower()? else {
            return Ok(Vec::new());
        };
        lbs.iter().map(f64s).collect()
    }

    /// True when every box's bound meets half its target (or there are no boxes).
    fn bounds_met(&self) -> Result<bool, RepairError> {
        let m = self.bound_margins()?;
        Ok(m.iter()
            .zip(&self.bound)
            .all(|(v, g)| v.iter().all(|&x| x >= 0.5 * g.target)))
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
                TrainLayer::Dense {
                    sparse: Some(sp), ..
                } => vec![sp.vw.clone(), sp.vb.clone()],
                TrainLayer::Dense { dw, db, .. } => vec![dw.clone(), db.clone()],
                _ => vec![],
            })
            .collect()
    }

    /// Compact variables for the selected deltas of every Dense layer with any (see
    /// `TrainLayer::Dense::sparse`), starting from the current deltas.
    fn make_sparse(&mut self) -> Result<(), RepairError> {
        for l in &mut self.layers {
            if let TrainLayer::Dense {
                dw,
                db,
                mw,
                mb,
                sparse,
                ..
            } = l
            {
                let pick = |m: &Tensor, d: &Var| -> Result<(Tensor, Var), RepairError> {
                    let idx: Vec<u32> = f64s(m)?
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v != 0.0)
                        .map(|(i, _)| i as u32)
                        .collect();
                    let n = idx.len();
                    let idx = Tensor::from_vec(idx, n, &Device::Cpu).map_err(candle)?;
                    let vals = d
                        .as_tensor()
                        .flatten_all()
                        .and_then(|t| t.index_select(&idx, 0))
                        .and_then(|t| Var::from_tensor(&t))
                        .map_err(candle)?;
                    Ok((idx, vals))
                };
                let (iw, vw) = pick(mw, dw)?;
                let (ib, vb) = pick(mb, db)?;
                *sparse = (iw.dim(0).map_err(candle)? + ib.dim(0).map_err(candle)? > 0)
                    .then_some(Sparse { iw, vw, ib, vb });
            }
        }
        Ok(())
    }

    /// Copy the compact deltas back into `dw`/`db`; with `done`, drop them.
    fn write_back(&mut self, done: bool) -> Result<(), RepairError> {
        for l in &mut self.layers {
            if let TrainLayer::Dense { dw, db, sparse, .. } = l {
                if let Some(sp) = sparse.as_ref() {
                    let put = |d: &Var, i: &Tensor, v: &Var| {
                        if i.dim(0)? == 0 {
                            return Ok(());
                        }
                        d.as_tensor()
                            .zeros_like()?
                            .flatten_all()?
                            .index_add(i, v.as_tensor(), 0)?
                            .reshape(d.shape())
                            .and_then(|t| d.set(&t))
                    };
                    put(dw, &sp.iw, &sp.vw).map_err(candle)?;
                    put(db, &sp.ib, &sp.vb).map_err(candle)?;
                }
                if done {
                    *sparse = None;
                }
            }
        }
        Ok(())
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
                        let g = f64s(g)?;
                        let m = f64s(m)?;
                        let inf = match influence.as_ref().and_then(|(gi,)| gi.get(v.as_tensor())) {
                            Some(t) => f64s(t)?,
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
        let dtype = self.dtype;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            if let TrainLayer::Dense { mw, mb, .. } = layer {
                if !saliency.iter().any(|s| s.1 == li) {
                    continue;
                }
                let mut w = f64s(mw)?;
                let mut b = f64s(mb)?;
                for &(_, _, is_bias, i) in saliency.iter().filter(|s| s.1 == li) {
                    if is_bias { b[i] = 1.0 } else { w[i] = 1.0 }
                }
                *mw = Tensor::from_vec(w, mw.shape(), &dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .map_err(candle)?;
                *mb = Tensor::from_vec(b, mb.shape(), &dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .map_err(candle)?;
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
        let xs = self.cast(batch(
            &anchors
                .iter()
                .map(|a| base.forward_range(&a.x, 0, start))
                .collect::<Vec<_>>(),
        )?)?;
        let targets = self.cast(batch(
            &anchors.iter().map(|a| a.h_star.clone()).collect::<Vec<_>>(),
        )?)?;
        let box_weight = self.cast(
            Tensor::from_vec(
                anchors.iter().map(|a| a.box_weight).collect::<Vec<_>>(),
                (anchors.len(), 1),
                &Device::Cpu,
            )
            .map_err(candle)?,
        )?;
        if self.fidelity.is_some() && self.fidelity_prefix.as_ref().map(|p| p.0) != Some(start) {
            let rows: Vec<Vec<f64>> = self
                .fidelity_inputs
                .iter()
                .map(|x| base.forward_range(x, 0, start))
                .collect();
            self.fidelity_prefix = Some((start, self.cast(batch(&rows)?)?));
        }
        // Three quarters of the budget at the first call, then an eighth more per call as
        // new counterexamples arrive (other regions may need other parameters).
        let quota = if self.selected == 0 {
            (3 * self.budget).div_ceil(4)
        } else if anchors.len() > self.anchors_seen || self.bound_count() > self.boxes_seen {
            self.budget.div_ceil(8)
        } else {
            0
        };
        let quota = quota + std::mem::take(&mut self.extra_quota);
        self.anchors_seen = anchors.len();
        self.boxes_seen = self.bound_count();
        let hinge = hinge_data(anchors, self.dtype)?;
        self.grow_mask(&xs, &targets, start, Some(&hinge), quota)?;
        self.make_sparse()?;
        let steps = self.adam(
            base,
            steps,
            check_every,
            &mut done,
            &xs,
            &targets,
            start,
            &hinge,
            &box_weight,
        );
        // Whatever happened, the deltas end up in `dw`/`db` and the compact copies go.
        self.write_back(true)?;
        steps
    }

    /// The Adam loop of [`Trainer::train`].
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &mut self,
        base: &Network,
        steps: usize,
        check_every: usize,
        done: &mut impl FnMut(&Network) -> bool,
        xs: &Tensor,
        targets: &Tensor,
        start: usize,
        hinge: &HingeData,
        box_weight: &Tensor,
    ) -> Result<usize, RepairError> {
        let params = ParamsAdamW {
            lr: self.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(self.vars(), params).map_err(candle)?;
        for step in 0..steps {
            if self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            {
                return Ok(step);
            }
            if step % check_every.max(1) == 0 {
                self.write_back(false)?;
                let now = self.network(base)?;
                if self.bound_weight > 0.0 && step > 0 {
                    self.refresh_bounds(&now)?;
                }
                if done(&now) && (self.bound_weight == 0.0 || self.bounds_met()?) {
                    return Ok(step);
                }
            }
            let n = self.fidelity_inputs.len();
            self.fidelity_window =
                (self.fidelity_batch > 0 && n > self.fidelity_batch).then(|| {
                    let windows = n.div_ceil(self.fidelity_batch);
                    let at = (step % windows) * self.fidelity_batch;
                    (at, self.fidelity_batch.min(n - at))
                });
            let loss = self.loss(xs, targets, start, Some(hinge), Some(box_weight));
            self.fidelity_window = None;
            opt.backward_step(&loss?).map_err(candle)?;
        }
        Ok(steps)
    }

    /// Raise the parameter budget to `budget` (never lowers it); the next
    /// [`Trainer::train`] call selects the new parameters by saliency. Why: a box the
    /// first budget cannot certify may need more of the layer (measured on the VNN-COMP
    /// mnist_fc boxes: 150 changed weights leave CROWN's margin at -0.75, 1,500 prove it).
    pub fn raise_budget(&mut self, budget: usize) {
        if budget > self.budget {
            self.extra_quota += budget - self.budget;
            self.budget = budget;
        }
    }

    /// Let the next [`Trainer::train`] call add the next eighth of the budget to the mask
    /// even when no new anchor arrives (a caller that replaces anchors in place, whose
    /// points still fail with the current mask).
    pub fn widen_next(&mut self) {
        self.anchors_seen = 0;
    }

    /// Boxes in the certified-training term.
    fn bound_count(&self) -> usize {
        self.bound.iter().map(|g| g.lo.dim(0).unwrap_or(0)).sum()
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
                ..
            } = layer
            {
                let Layer::Dense(d) = &mut net.layers[*index] else {
                    continue;
                };
                if self.dtype == DType::F64 {
                    let w = (w0 + (dw.as_tensor() * mw).map_err(candle)?).map_err(candle)?;
                    let b = (b0 + (db.as_tensor() * mb).map_err(candle)?).map_err(candle)?;
                    d.weight = f64s(&w)?;
                    d.bias = f64s(&b)?;
                } else {
                    // Lower precision: the base's f64 weights plus the trained deltas, so
                    // every weight outside the mask stays exactly the base's.
                    for (v, m, dv) in [(&mut d.weight, mw, dw), (&mut d.bias, mb, db)] {
                        let (m, dv) = (f64s(m)?, f64s(dv.as_tensor())?);
                        for ((v, m), dv) in v.iter_mut().zip(m).zip(dv) {
                            if m != 0.0 {
                                *v += dv;
                            }
                        }
                    }
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

/// `f_c` on a batch of features.
fn head_forward(head: &[HeadLayer], feats: Tensor) -> Result<Tensor, RepairError> {
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
    Ok(y)
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
fn hinge_data(anchors: &[Anchor], dtype: DType) -> Result<HingeData, RepairError> {
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
        c: Tensor::from_vec(c, (p, width), &dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(candle)?,
        m_minus_d: Tensor::from_vec(m, p, &dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(candle)?,
    })
}

/// Lower bound `[B]` of `min_clause max_row (spec·f(x) + d)` over the boxes of `g`: a
/// CROWN backward pass through `steps` with the ReLU input bounds of `g.relax` (CROWN's
/// own intermediate bounds at the last refresh; IBP ones are off by thousands on ACAS Xu
/// sub-boxes, measured). Relaxation of a ReLU with input bounds `[l, u]`: upper line
/// `u⁺/(u⁺ - l⁻) (z - l⁻)` (`u⁺ = max(u, 0)`, `l⁻ = min(l, 0)`: exact when stable), lower
/// line `z` when `u⁺ > -l⁻` else `0` (CROWN's adaptive choice). Sound for the network
/// of the last refresh; in between, the relaxations are held fixed (stop-gradient, as
/// CROWN-IBP does with its slopes), so the value only steers training. The gradient
/// with respect to the weights comes from candle.
fn crown_fixed(steps: &[BoundStep], g: &BoundData) -> Result<Tensor, RepairError> {
    let c = |e: candle_core::Error| RepairError::Optimiser(e.to_string());
    let bsz = g.lo.dim(0).map_err(c)?;
    let (r, out) = g.spec.dims2().map_err(c)?;
    let mut lam = g
        .spec
        .unsqueeze(0)
        .and_then(|t| t.broadcast_as((bsz, r, out))?.contiguous())
        .map_err(c)?;
    let mut cst = Tensor::zeros((bsz, r), g.lo.dtype(), &Device::Cpu).map_err(c)?;
    let mut relus = g.relax.iter().rev();
    for s in steps.iter().rev() {
        match s {
            BoundStep::Affine(wt, b) => {
                let n_out = lam.dim(2).map_err(c)?;
                let flat = lam.reshape((bsz * r, n_out)).map_err(c)?;
                let add = flat
                    .matmul(&b.t().map_err(c)?)
                    .and_then(|t| t.reshape((bsz, r)))
                    .map_err(c)?;
                cst = (cst + add).map_err(c)?;
                let n_in = wt.dim(0).map_err(c)?;
                lam = flat
                    .matmul(&wt.t().map_err(c)?)
                    .and_then(|t| t.reshape((bsz, r, n_in)))
                    .map_err(c)?;
            }
            BoundStep::Relu => {
                let Some((l, u)) = relus.next() else {
                    return Err(RepairError::Optimiser(
                        "bound: fewer ReLU relaxations than ReLU layers".into(),
                    ));
                };
                let up = u.relu().map_err(c)?;
                let ln = l.minimum(0.0).map_err(c)?;
                let su = up
                    .broadcast_div(&(&up - &ln).and_then(|t| t.affine(1.0, 1e-12)).map_err(c)?)
                    .map_err(c)?;
                let tu = (&su * &ln).and_then(|t| t.neg()).map_err(c)?;
                let sl = up
                    .gt(&ln.neg().map_err(c)?)
                    .and_then(|t| t.to_dtype(lam.dtype()))
                    .map_err(c)?;
                let pos = lam.relu().map_err(c)?;
                let neg = lam.minimum(0.0).map_err(c)?;
                let add = neg
                    .broadcast_mul(&tu.unsqueeze(1).map_err(c)?)
                    .and_then(|t| t.sum(2))
                    .map_err(c)?;
                cst = (cst + add).map_err(c)?;
                lam = (pos.broadcast_mul(&sl.unsqueeze(1).map_err(c)?).map_err(c)?
                    + neg.broadcast_mul(&su.unsqueeze(1).map_err(c)?).map_err(c)?)
                .map_err(c)?;
            }
        }
    }
    let pos = lam.relu().map_err(c)?;
    let neg = lam.minimum(0.0).map_err(c)?;
    let inp = (pos
        .broadcast_mul(&g.lo.unsqueeze(1).map_err(c)?)
        .map_err(c)?
        + neg
            .broadcast_mul(&g.hi.unsqueeze(1).map_err(c)?)
            .map_err(c)?)
    .and_then(|t| t.sum(2))
    .map_err(c)?;
    let rows = (cst + inp).and_then(|t| t.broadcast_add(&g.d)).map_err(c)?;
    // Per clause the best row, then the worst clause.
    let per_clause: Vec<Tensor> = g
        .clauses
        .iter()
        .map(|idx| rows.index_select(idx, 1)?.max_keepdim(1))
        .collect::<candle_core::Result<_>>()
        .map_err(c)?;
    Tensor::cat(&per_clause, 1)
        .and_then(|t| t.min(1))
        .map_err(c)
}

/// A tensor's values, flattened, as f64.
fn f64s(t: &Tensor) -> Result<Vec<f64>, RepairError> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(candle)
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

    /// The certified-training bound: at a refresh it is below the desired score of every
    /// sampled point of its box (sound), and training on it raises it.
    #[test]
    fn bound_term_is_sound_and_training_raises_it() {
        use crate::repair::desired::Clause;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut dense = |i: usize, o: usize| {
            let w = (0..i * o).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b = (0..o).map(|_| rng.random_range(-0.2..0.2)).collect();
            Layer::Dense(Dense::new(i, o, w, b).unwrap())
        };
        let layers = vec![
            dense(3, 8),
            Layer::Relu,
            dense(8, 8),
            Layer::Relu,
            dense(8, 8),
            Layer::Relu,
            dense(8, 3),
        ];
        let net = Network::new(vec![3], layers).unwrap();
        let k = |c: Vec<f64>| Constraint { c, d: 0.0 };
        let desired = DesiredSet {
            clauses: vec![Clause {
                options: vec![k(vec![-1.0, 1.0, 0.0]), k(vec![-1.0, 0.0, 1.0])],
            }],
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let boxes: Vec<(Vec<f64>, Vec<f64>)> = (0..16)
            .map(|_| {
                let lo: Vec<f64> = (0..3).map(|_| rng.random_range(-1.0..0.8)).collect();
                let hi = lo.iter().map(|l| l + rng.random_range(0.05..0.3)).collect();
                (lo, hi)
            })
            .collect();
        let score = |n: &Network, x: &[f64]| {
            let y = n.forward(x);
            (y[1] - y[0]).max(y[2] - y[0])
        };
        let check = |n: &Network, lbs: &[f64], rng: &mut rand_chacha::ChaCha8Rng| {
            for ((lo, hi), lb) in boxes.iter().zip(lbs) {
                for _ in 0..200 {
                    let x: Vec<f64> = (0..3).map(|i| rng.random_range(lo[i]..=hi[i])).collect();
                    assert!(
                        score(n, &x) >= lb - 1e-9,
                        "bound {lb} above the score at {x:?}"
                    );
                }
            }
        };
        let mut trainer = Trainer::new(&net, 4, 60, &[], 0.0, 0.01).unwrap();
        trainer.trainable_layers = 2;
        let group = BoundGroup {
            boxes: boxes.clone(),
            desired: desired.clone(),
            target: 0.5,
        };
        trainer.set_bound_boxes(&[group], &net).unwrap();
        trainer.bound_weight = 1.0;
        let before = trainer.bound_margins().unwrap().remove(0);
        check(&net, &before, &mut rng);
        // An anchor whose constraint always holds: the bound term alone drives training.
        let x0 = boxes[0].0.clone();
        let anchor = Anchor {
            h_star: net.forward_range(&x0, 0, 4),
            x: x0,
            constraints: vec![Constraint {
                c: vec![0.0; 3],
                d: 1e9,
            }],
            margin: 0.0,
            box_weight: 0.0,
        };
        trainer.train(&net, &[anchor], 200, 20, |_| false).unwrap();
        let after_net = trainer.network(&net).unwrap();
        trainer.refresh_bounds(&after_net).unwrap();
        let after = trainer.bound_margins().unwrap().remove(0);
        check(&after_net, &after, &mut rng);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(
            mean(&after) > mean(&before) + 0.1,
            "mean bound {} -> {}",
            mean(&before),
            mean(&after)
        );
        assert!(changed_parameters(&net, &after_net) <= 60);
    }

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
        trainer_moves_the_feature(DType::F64);
    }

    /// The f32 path: the same repair, and every weight outside the mask is exactly the
    /// base network's f64 value (the f32 copies are only used for training).
    #[test]
    fn f32_trainer_moves_the_feature_and_keeps_the_other_weights() {
        let net = small_net();
        let repaired = trainer_moves_the_feature(DType::F32);
        let (Layer::Dense(a), Layer::Dense(b)) = (&net.layers[0], &repaired.layers[0]) else {
            panic!("dense layer 0")
        };
        let kept = a
            .weight
            .iter()
            .zip(&b.weight)
            .filter(|(x, y)| x == y)
            .count()
            + a.bias.iter().zip(&b.bias).filter(|(x, y)| x == y).count();
        assert_eq!(kept + changed_parameters(&net, &repaired), 9);
        assert_eq!(net.layers[2..], repaired.layers[2..]);
    }

    fn trainer_moves_the_feature(dtype: DType) -> Network {
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
        trainer.set_dtype(dtype).unwrap();
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
        repaired
    }
}
