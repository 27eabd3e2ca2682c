//! AdvRepair-style repair by indicator-plus-patch modules (Yu et al., AdvRepair, Section 3).
//!
//! The base network `N` never changes. Each repaired case box `X_i` gets an *indicator*
//! (the box itself, rounded outward to f32 so that every f32 input the property covers is
//! selected) and a *patch module* `P_i`, a small MLP (Dense, ReLU, ..., Dense) on the
//! network input whose output is added to the logits when the indicator fires:
//! `F(x) = N(x) + sum_{i: x in X_i} P_i(x)`. Outside every box `F(x) = N(x)` exactly,
//! so accuracy elsewhere cannot drop (Definition 3.2, property-guided form).
//!
//! Training (Algorithms 1 and 2): per module, the case box is kept as a list of sub-boxes.
//! On every sub-box the base network's CROWN lower bound of each unsafe-constraint row
//! `c_k . N(x)` is computed once (the base is fixed); the module's bound of `c_k . P(x)`
//! is interval bound propagation written in candle ops, so it is differentiable in the
//! module's weights. Their sum is a sound lower bound of `c_k . F(x)` on the sub-box.
//! The loss is the sound bound loss L* (Definition 3.3 / Theorem 3.4, for the VNN-LIB
//! form): per sub-box and unsafe conjunction, the smallest hinge
//! `max(0, rhs_k + margin - lower_k)` over the conjunction's rows (one excluded row
//! suffices). Adam runs until L* = 0 or `epochs` steps; then every sub-box is checked
//! soundly (below); failing sub-boxes, worst first, are bisected along the dimension of
//! largest gradient-times-width score `|d lower_k / d x_d| * width_d` (the CROWN
//! coefficient of the chosen row), and training resumes.
//!
//! Why the final check is separate: L* = 0 is judged in f64 on the trained (f64)
//! weights. The claim "holds" for a sub-box comes only from `sum_check`, on the module
//! weights rounded to f32 as the patch stores them: the base's CROWN lower bound of each
//! row, plus the module's interval lower bound, must exceed the right-hand side by the
//! device's f32 rounding bound of the base row (`verify::rounding`, as verify's leaf test
//! uses), of the module (same derivation, `module_f32_error`) and of the final f32
//! addition. [`combined_network`] (one straight-line network equal to `N + P` on the box)
//! lets `verify` re-check a repair independently (the ACAS Xu test and example do).
//!
//! Options not in the paper's property-guided core:
//! - [`Indicator::Label`] / [`Indicator::LabelPair`] (untargeted / targeted label
//!   indicators): trained and proven by [`repair_modules_label`] (submodule `label`:
//!   one module per label, proof over every possibly-firing pattern).
//! - [`allocate`] is the paper's patch allocation `tau` for inputs outside every box:
//!   among the modules trained for the same label, the ten whose anchor output `N(x_i)`
//!   has the largest cosine similarity with `N(x')`. It is a documented helper, not part
//!   of the shipped semantics (the device applies modules only inside their boxes).
//! - Indicator boxes may not overlap (the proof of one module assumes it acts alone).
//! - Modules at a feature layer ([`ModuleOptions::feature_layer`], AdvRepair Section 3.4):
//!   the module reads the base's K-th activation `h_K(x)` (a ReLU output) instead of `x`;
//!   the indicator stays the input box. Unlike the paper's sampled feature boxes, the
//!   proof stays sound: on each sub-box the module is bounded over CROWN's bounds of
//!   `h_K` on that sub-box, and its f32 error starts from the base's rounding bound of
//!   `h_K` (`verify::rounding` on the base up to layer K). This bounds base and module
//!   separately (sound, looser than bounding [`combined_network`], which `verify` on the
//!   exported graph uses to re-check the repair).

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

// The label rules are the device's own functions (generic over f32 and f64), so host
// and device indicators fire identically, ties and NaN included.
use prorepair_core::patch::modules::{argmax, top_two};

use super::RepairError;
use crate::bounds::BoxBounds;

mod label;
use crate::model::{Dense, Layer, Network};
use crate::verify::{self, Case};
pub use label::{LabelKind, LabelProof, prove_label_cases, repair_modules_label};

/// A patch module: `Dense (ReLU Dense)*`, reading the network input (or, with
/// `feature_layer` K > 0, the base network's activation after its K-th activation layer;
/// see [`feature_layer_index`]), writing one value per network output.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    /// The affine layers; a ReLU sits between consecutive ones.
    pub layers: Vec<Dense>,
    /// What the module reads: 0 = the network input, K >= 1 = the output of the base's
    /// K-th activation layer (counting ReLU, LeakyReLU, Sigmoid, Tanh and GELU layers in
    /// order, exactly as the device core counts them in its layer table).
    pub feature_layer: usize,
}

/// Index in `base.layers` of the K-th activation layer (`k` >= 1; see
/// [`Module::feature_layer`]), `None` when the network has fewer.
pub fn feature_layer_index(base: &Network, k: usize) -> Option<usize> {
    if k == 0 {
        return None;
    }
    base.layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_activation())
        .nth(k - 1)
        .map(|(i, _)| i)
}

/// Width of what a module at feature layer `k` reads (the input length for 0), or what is
/// wrong with `k`.
pub fn feature_width(base: &Network, k: usize) -> Result<usize, RepairError> {
    if k == 0 {
        return Ok(base.input_dim());
    }
    let count = base.layers.iter().filter(|l| l.is_activation()).count();
    let at = feature_layer_index(base, k).ok_or_else(|| {
        RepairError::Unsupported(format!(
            "feature layer {k}: the network has {count} activation layer(s) (valid: 0..={count})"
        ))
    })?;
    let shapes = base
        .shapes()
        .map_err(|e| RepairError::Unsupported(e.to_string()))?;
    Ok(shapes[at + 1].iter().product())
}

/// [`feature_width`], and a feature layer must be a ReLU: the combined network that
/// re-verifies the repair (and the exported graph's verifier) carry the feature through
/// ReLUs, which needs it non-negative.
pub fn check_feature_layer(base: &Network, k: usize) -> Result<usize, RepairError> {
    let width = feature_width(base, k)?;
    if let Some(at) = feature_layer_index(base, k)
        && !matches!(base.layers[at], Layer::Relu)
    {
        return Err(RepairError::Unsupported(format!(
            "feature layer {k} is a {} layer: patch modules read only ReLU outputs",
            base.layers[at].kind()
        )));
    }
    Ok(width)
}

/// What a module at feature layer `k` reads on input `x`: `x` itself for 0, else the base
/// activation after its K-th activation layer (`x` when `k` is out of range; callers
/// validate `k` with [`feature_width`]).
pub fn feature_of(base: &Network, k: usize, x: &[f64]) -> Vec<f64> {
    match feature_layer_index(base, k) {
        Some(at) => base.forward_range(x, 0, at + 1),
        None => x.to_vec(),
    }
}

impl Module {
    /// Evaluate on one input.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        let mut h = x.to_vec();
        for (i, d) in self.layers.iter().enumerate() {
            h = d.apply(&h);
            if i + 1 < self.layers.len() {
                h.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        h
    }

    /// Weights plus biases.
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|d| d.weight.len() + d.bias.len())
            .sum()
    }

    /// Input width.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |d| d.in_dim)
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(0, |d| d.out_dim)
    }

    /// Interval bounds of the module output over a box (f64, sound in real arithmetic).
    pub fn interval(&self, lower: &[f64], upper: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut lo = lower.to_vec();
        let mut hi = upper.to_vec();
        for (i, d) in self.layers.iter().enumerate() {
            let mut nl = d.bias.clone();
            let mut nh = d.bias.clone();
            for o in 0..d.out_dim {
                for (j, &w) in d.row(o).iter().enumerate() {
                    let (a, b) = (w * lo[j], w * hi[j]);
                    nl[o] += a.min(b);
                    nh[o] += a.max(b);
                }
            }
            if i + 1 < self.layers.len() {
                nl.iter_mut().for_each(|v| *v = v.max(0.0));
                nh.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            lo = nl;
            hi = nh;
        }
        (lo, hi)
    }
}

/// When a patch module applies.
#[derive(Clone, Debug, PartialEq)]
pub enum Indicator {
    /// Property-guided: `lower <= x <= upper` element-wise.
    Box(BoxBounds),
    /// Untargeted label: the base network classifies `x` as this label (argmax).
    Label(usize),
    /// Targeted label pair `(l0, l1)`: `N(x)_l0 > N(x)_l1 > N(x)_l` for every other `l`.
    LabelPair(usize, usize),
}

impl Indicator {
    /// Does the indicator fire on input `x` with base output `y`?
    pub fn fires(&self, x: &[f64], y: &[f64]) -> bool {
        match self {
            Indicator::Box(b) => {
                x.len() == b.len()
                    && x.iter()
                        .zip(b.lower.iter().zip(&b.upper))
                        .all(|(&v, (&l, &u))| l <= v && v <= u)
            }
            Indicator::Label(l) => argmax(y) == Some(*l),
            Indicator::LabelPair(l0, l1) => top_two(y) == Some((*l0, *l1)),
        }
    }
}

/// The repaired network's add-on: indicators with their modules.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchModules {
    /// `(indicator, module)` pairs, applied in order; their outputs add up.
    pub entries: Vec<(Indicator, Module)>,
}

impl PatchModules {
    /// `F(x) = N(x) + sum of the modules whose indicator fires` (Definition 3.2).
    pub fn eval(&self, base: &Network, x: &[f64]) -> Vec<f64> {
        let y0 = base.forward(x);
        let mut y = y0.clone();
        for (ind, m) in &self.entries {
            if ind.fires(x, &y0) {
                let h = feature_of(base, m.feature_layer, x);
                y.iter_mut().zip(m.forward(&h)).for_each(|(a, b)| *a += b);
            }
        }
        y
    }

    /// Total module parameters.
    pub fn parameter_count(&self) -> usize {
        self.entries.iter().map(|(_, m)| m.parameter_count()).sum()
    }
}

/// Patch-module repair settings.
#[derive(Clone, Debug)]
pub struct ModuleOptions {
    /// Hidden layer widths of each module (`[]`: a single affine layer).
    pub hidden: Vec<usize>,
    /// Adam steps per training round (the paper's `R`).
    pub epochs: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Margin every excluded row must clear in the loss, at first; a sub-box whose loss is
    /// 0 but which fails the sound check (the f32 rounding bound exceeds the margin) gets
    /// four times its margin in the next round.
    pub margin: f64,
    /// Scale the learning rate to the initial violation: `max(learning_rate, worst
    /// initial hinge / 100)`, so that bound gaps of tens (MNIST at r = 0.1) do not need
    /// thousands of Adam steps.
    pub auto_learning_rate: bool,
    /// Sub-boxes bisected per module and round at most (the paper's `K`).
    pub refine_per_round: usize,
    /// Rounds per module (the paper's `M`).
    pub max_rounds: usize,
    /// Sub-boxes per module at most.
    pub max_sub_boxes: usize,
    /// Wall-clock limit of the whole repair.
    pub timeout: Duration,
    /// Seed of the module initialisation.
    pub seed: u64,
    /// What the modules read ([`Module::feature_layer`]): 0 = the network input, K >= 1 =
    /// the output of the base's K-th activation layer, which must be a ReLU. The
    /// indicator stays the input box and the proof stays sound: the module is bounded on
    /// sound bounds of that activation over each sub-box.
    pub feature_layer: usize,
}

impl Default for ModuleOptions {
    fn default() -> Self {
        Self {
            hidden: vec![8],
            epochs: 300,
            learning_rate: 0.01,
            margin: 1e-4,
            auto_learning_rate: false,
            refine_per_round: 256,
            max_rounds: 60,
            max_sub_boxes: 20_000,
            timeout: Duration::from_secs(300),
            seed: 0,
            feature_layer: 0,
        }
    }
}

/// One repaired case: its status and figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleOutcome {
    /// Property name (with `#case` when a property has several boxes).
    pub name: String,
    /// "holds" when every sub-box passed the sound check, else "unknown".
    pub status: &'static str,
    /// Sub-boxes of the final partition.
    pub sub_boxes: usize,
    /// Sub-boxes that passed the sound check.
    pub proven_sub_boxes: usize,
    /// Training rounds used.
    pub rounds: usize,
    /// L* (with margin) at the end.
    pub loss: f64,
    /// Wall-clock time of this case.
    pub time_s: f64,
    /// The sub-boxes, for the patch's verified regions: `(lower, upper)`.
    pub partition: Vec<(Vec<f64>, Vec<f64>)>,
}

/// The result of a patch-module repair.
#[derive(Clone, Debug)]
pub struct ModulesRepair {
    /// The add-on (one box indicator and module per case box).
    pub modules: PatchModules,
    /// Per case.
    pub outcomes: Vec<ModuleOutcome>,
    /// Total time.
    pub time_s: f64,
}

impl ModulesRepair {
    /// True when every case holds.
    pub fn all_hold(&self) -> bool {
        self.outcomes.iter().all(|o| o.status == "holds")
    }
}

fn candle(e: candle_core::Error) -> RepairError {
    RepairError::Unsupported(format!("candle: {e}"))
}

/// Round `v` to f32 toward -inf / +inf (the indicator box must contain the property box).
pub(crate) fn f32_down(v: f64) -> f64 {
    let f = v as f32;
    if (f as f64) <= v {
        f as f64
    } else {
        f.next_down() as f64
    }
}

/// See [`f32_down`].
pub(crate) fn f32_up(v: f64) -> f64 {
    let f = v as f32;
    if (f as f64) >= v {
        f as f64
    } else {
        f.next_up() as f64
    }
}

/// The straight-line network computing `N(x) + P(x)` on `domain` (exact in real
/// arithmetic there): the module runs first beside a copy of the input shifted to be
/// non-negative on the domain (so the ReLUs that carry it are stable), its output is
/// shifted non-negative by its interval lower bound and carried through the base's
/// ReLUs, and a final affine layer adds it to the base output.
/// The base must be made of Dense, ReLU and Flatten layers.
pub fn combined_network(
    base: &Network,
    module: &Module,
    domain: &BoxBounds,
) -> Result<Network, RepairError> {
    if module.feature_layer > 0 {
        return combined_network_at_feature(base, module, domain);
    }
    let n = base.input_dim();
    let n_out = base.output_dim();
    if module.input_dim() != n || module.output_dim() != n_out || domain.len() != n {
        return Err(RepairError::Unsupported(format!(
            "module {}->{} or box of {} does not fit the network {n}->{n_out}",
            module.input_dim(),
            module.output_dim(),
            domain.len()
        )));
    }
    let (olo, _) = module.interval(&domain.lower, &domain.upper);
    let mut layers = Vec::new();
    // Stage 1: [x - L ; module hidden] ... ; last module layer -> [x - L ; o - olo].
    module_beside_track(module, n, Some(&domain.lower), &olo, &mut layers)?;
    // Stage 2: the base on the input track (which holds x - L), the module output
    // carried alongside.
    let (track, any_dense) = base_beside_module(
        &base.layers,
        n,
        n_out,
        Some(&domain.lower),
        &mut layers,
        &|kind| format!("patch modules need a Dense/ReLU base network, found {kind}"),
    )?;
    if !any_dense || track != n_out {
        return Err(RepairError::Unsupported(
            "the base network has no output Dense layer".into(),
        ));
    }
    // Stage 3: y + (o - olo) + olo.
    layers.push(sum_layer(n_out, olo)?);
    Network::new(vec![n], layers).map_err(|e| RepairError::Unsupported(e.to_string()))
}

/// [`combined_network`] for a module at feature layer K >= 1: the base's layers up to
/// and including its K-th activation (which must be a ReLU, so the feature `h` is
/// non-negative and the carrying ReLUs pass it unchanged), then the module beside a copy
/// of `h`, its output shifted non-negative by its interval lower bound over the feature
/// box (sound interval bounds of `h` on `domain`), then the rest of the base with the
/// module output carried alongside, and a final affine layer adding the two. Exact in
/// real arithmetic on `domain`. The base after layer K must be Dense/ReLU/Flatten.
pub fn combined_network_at_feature(
    base: &Network,
    module: &Module,
    domain: &BoxBounds,
) -> Result<Network, RepairError> {
    let k = module.feature_layer;
    let n = base.input_dim();
    let n_out = base.output_dim();
    let width = feature_width(base, k)?;
    let at = feature_layer_index(base, k).unwrap_or(0);
    if !matches!(base.layers.get(at), Some(Layer::Relu)) {
        return Err(RepairError::Unsupported(format!(
            "feature layer {k} is a {} layer: modules read only ReLU outputs (non-negative, \
             so they can be carried through ReLUs soundly)",
            base.layers.get(at).map_or("missing", |l| l.kind())
        )));
    }
    if module.input_dim() != width || module.output_dim() != n_out || domain.len() != n {
        return Err(RepairError::Unsupported(format!(
            "module {}->{} or box of {} does not fit the network {n}->{n_out} at feature \
             layer {k} (width {width})",
            module.input_dim(),
            module.output_dim(),
            domain.len()
        )));
    }
    let bounds = verify::rounding::interval_bounds(base, &domain.lower, &domain.upper);
    let (hlo, hhi) = &bounds[at + 1];
    let (olo, _) = module.interval(hlo, hhi);
    // Stage 0: the base up to its K-th activation, unchanged.
    let mut layers: Vec<Layer> = base.layers[..=at].to_vec();
    // Stage 1: [h ; module hidden] ... ; last module layer -> [h ; o - olo].
    module_beside_track(module, width, None, &olo, &mut layers)?;
    // Stage 2: the rest of the base on the feature track, the module output alongside.
    let (track, _) = base_beside_module(
        &base.layers[at + 1..],
        width,
        n_out,
        None,
        &mut layers,
        &|kind| {
            format!(
                "patch modules at a feature layer need Dense/ReLU layers after it, found {kind}"
            )
        },
    )?;
    if track != n_out {
        return Err(RepairError::Unsupported(
            "the base network's output does not follow from its feature layer".into(),
        ));
    }
    // Stage 3: y + (o - olo) + olo.
    layers.push(sum_layer(n_out, olo)?);
    Network::new(base.input_shape.clone(), layers)
        .map_err(|e| RepairError::Unsupported(e.to_string()))
}

/// Stage 1 of both combined networks: the module's layers, each beside an identity copy
/// of the `width`-wide track the module reads (minus `shift` from the first layer on, when
/// given, so the copy is non-negative), the last layer's outputs lowered by `olo` (their
/// interval lower bound), each layer followed by a ReLU that is the identity on the domain.
fn module_beside_track(
    module: &Module,
    width: usize,
    shift: Option<&[f64]>,
    olo: &[f64],
    layers: &mut Vec<Layer>,
) -> Result<(), RepairError> {
    let depth = module.layers.len();
    let mut width_h = width; // width of the module track entering the next module layer
    for (i, d) in module.layers.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == depth;
        let in_w = width + if first { 0 } else { width_h };
        let out_w = width + d.out_dim;
        let mut w = vec![0.0; out_w * in_w];
        let mut b = vec![0.0; out_w];
        for j in 0..width {
            w[j * in_w + j] = 1.0;
            if let (true, Some(shift)) = (first, shift) {
                b[j] = -shift[j];
            }
        }
        for o in 0..d.out_dim {
            let row = width + o;
            let lowered = if last {
                olo.get(o).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            b[row] = d.bias[o] - lowered;
            for (jj, &wv) in d.row(o).iter().enumerate() {
                // The first module layer reads the track itself, later ones the hidden
                // track beside it.
                let col = if first { jj } else { width + jj };
                w[row * in_w + col] = wv;
            }
        }
        layers.push(Layer::Dense(
            Dense::new(in_w, out_w, w, b).map_err(RepairError::Unsupported)?,
        ));
        layers.push(Layer::Relu);
        width_h = d.out_dim;
    }
    Ok(())
}

/// Stage 2 of both combined networks: `base_layers` (Dense, ReLU, Flatten) on a track of
/// width `track`, the module output (`n_out` wide, non-negative) carried alongside by
/// identity rows. When the track holds `x - shift`, the first Dense layer adds
/// `W shift` to its bias. Returns the final track width and whether any Dense layer was
/// seen; any other layer is an error worded by `unsupported(kind)`.
fn base_beside_module(
    base_layers: &[Layer],
    mut track: usize,
    n_out: usize,
    mut shift: Option<&[f64]>,
    layers: &mut Vec<Layer>,
    unsupported: &dyn Fn(&str) -> String,
) -> Result<(usize, bool), RepairError> {
    let mut any_dense = false;
    for layer in base_layers {
        match layer {
            Layer::Flatten => {}
            Layer::Relu => layers.push(Layer::Relu),
            Layer::Dense(d) => {
                let in_w = track + n_out;
                let out_w = d.out_dim + n_out;
                let mut w = vec![0.0; out_w * in_w];
                let mut b = vec![0.0; out_w];
                for o in 0..d.out_dim {
                    let mut bias = d.bias[o];
                    for (j, &wv) in d.row(o).iter().enumerate() {
                        w[o * in_w + j] = wv;
                        if let Some(shift) = shift {
                            bias += wv * shift[j];
                        }
                    }
                    b[o] = bias;
                }
                for j in 0..n_out {
                    w[(d.out_dim + j) * in_w + track + j] = 1.0;
                }
                layers.push(Layer::Dense(
                    Dense::new(in_w, out_w, w, b).map_err(RepairError::Unsupported)?,
                ));
                track = d.out_dim;
                any_dense = true;
                shift = None;
            }
            other => return Err(RepairError::Unsupported(unsupported(other.kind()))),
        }
    }
    Ok((track, any_dense))
}

/// Stage 3 of both combined networks: `[y ; o - olo] -> y + (o - olo) + olo`.
fn sum_layer(n_out: usize, olo: Vec<f64>) -> Result<Layer, RepairError> {
    let in_w = 2 * n_out;
    let mut w = vec![0.0; n_out * in_w];
    for j in 0..n_out {
        w[j * in_w + j] = 1.0;
        w[j * in_w + n_out + j] = 1.0;
    }
    Ok(Layer::Dense(
        Dense::new(in_w, n_out, w, olo).map_err(RepairError::Unsupported)?,
    ))
}

/// One sub-box of a case with the base network's fixed CROWN data.
struct SubBox {
    lower: Vec<f64>,
    upper: Vec<f64>,
    /// Sound lower bound of every unsafe row `c_k . N(x)` on the sub-box.
    base_lower: Vec<f64>,
    /// CROWN lower-bound coefficients (row-major `rows x n`), for the refine score.
    coeffs: Vec<f64>,
    /// Margin the loss asks of this sub-box beyond `base_err` (raised when the sound
    /// check needs more).
    margin: f64,
    /// Bound on the f32 rounding error of every unsafe row `c_k . N(x)` on the device.
    base_err: Vec<f64>,
    /// Bound on `|N(x)|` per output on the device (exact bound plus rounding error).
    base_abs: Vec<f64>,
    /// Feature-layer modules: sound bounds of the feature over the sub-box and a bound
    /// on its device f32 rounding error (all empty for input modules).
    feature_lower: Vec<f64>,
    feature_upper: Vec<f64>,
    feature_err: Vec<f64>,
}

impl SubBox {
    /// The box the module's input ranges over: the feature box, or the sub-box itself.
    fn module_box(&self) -> (&[f64], &[f64]) {
        if self.feature_lower.is_empty() {
            (&self.lower, &self.upper)
        } else {
            (&self.feature_lower, &self.feature_upper)
        }
    }

    /// Bound on the device rounding error of the module's input.
    fn module_input_err(&self) -> Vec<f64> {
        if self.feature_lower.is_empty() {
            self.lower
                .iter()
                .zip(&self.upper)
                .map(|(l, u)| verify::rounding::U32 * l.abs().max(u.abs()))
                .collect()
        } else {
            self.feature_err.clone()
        }
    }
}

/// `feature`: for a feature-layer module, the index in `base.layers` of the activation it
/// reads ([`feature_layer_index`]).
fn sub_box(
    base: &Network,
    rows: &[Vec<f64>],
    lower: Vec<f64>,
    upper: Vec<f64>,
    feature: Option<usize>,
) -> Result<SubBox, RepairError> {
    let engine = verify::bab::engine_for(base, verify::Method::Complete);
    let b = engine
        .spec_lower(&lower, &upper, rows)
        .map_err(|e| RepairError::Unsupported(format!("base bounds: {e:?}")))?;
    let n = lower.len();
    let coeffs = match b.coeffs {
        Some(c) => c.into_iter().flatten().collect(),
        None => vec![0.0; rows.len() * n],
    };
    // Device rounding of the base network on this sub-box, as verify's leaf test.
    let bounds = if b.layer_bounds.len() == base.layers.len() + 1 {
        b.layer_bounds
    } else {
        verify::rounding::interval_bounds(base, &lower, &upper)
    };
    let elem_err = verify::rounding::f32_error_bound_from(base, &bounds);
    let base_err = verify::rounding::spec_error_bounds(base, &bounds, rows).unwrap_or_else(|| {
        rows.iter()
            .map(|r| r.iter().zip(&elem_err).map(|(c, e)| c.abs() * e).sum())
            .collect()
    });
    let (out_lo, out_hi) = bounds.last().cloned().unwrap_or_default();
    let base_abs = out_lo
        .iter()
        .zip(&out_hi)
        .zip(&elem_err)
        .map(|((l, u), e)| l.abs().max(u.abs()) + e)
        .collect();
    // The feature's sound bounds (CROWN's intermediate bounds) and its device rounding
    // error: the same derivation on the base's prefix up to that activation.
    let (mut feature_lower, mut feature_upper, mut feature_err) = (vec![], vec![], vec![]);
    if let Some(at) = feature {
        let (fl, fu) = bounds
            .get(at + 1)
            .cloned()
            .ok_or_else(|| RepairError::Unsupported("feature layer out of range".into()))?;
        let prefix = base
            .slice(0, at + 1)
            .map_err(|e| RepairError::Unsupported(e.to_string()))?;
        feature_err = verify::rounding::f32_error_bound_from(&prefix, &bounds[..at + 2]);
        feature_lower = fl;
        feature_upper = fu;
    }
    Ok(SubBox {
        lower,
        upper,
        base_lower: b.lower,
        coeffs,
        margin: 0.0,
        base_err,
        base_abs,
        feature_lower,
        feature_upper,
        feature_err,
    })
}

/// Bound on the device's f32 rounding error of every module output over a box (inputs
/// rounded to f32 too), and bounds on `|P(x)|`: per dense layer
/// `e' = |W| e + g (|W| (M + e) + |b|)` with `g = (1 + u) gamma_{n+1} + u` and `M` the
/// interval magnitude of the layer input (verify::rounding's derivation; any summation
/// order, FMA or not); ReLU does not increase the error.
pub(crate) fn module_f32_error(m: &Module, lower: &[f64], upper: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let e: Vec<f64> = lower
        .iter()
        .zip(upper)
        .map(|(l, u)| verify::rounding::U32 * l.abs().max(u.abs()))
        .collect();
    module_f32_error_from(m, lower, upper, e)
}

/// [`module_f32_error`] for a module input in `[lower, upper]` (exact values) whose device
/// value is off by at most `input_err` (a feature computed by the base in f32).
pub(crate) fn module_f32_error_from(
    m: &Module,
    lower: &[f64],
    upper: &[f64],
    input_err: Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    use verify::rounding::{U32, gamma};
    let mut lo = lower.to_vec();
    let mut hi = upper.to_vec();
    let mut e = input_err;
    for (i, d) in m.layers.iter().enumerate() {
        let g = (1.0 + U32) * gamma(d.in_dim + 1) + U32;
        let mag: Vec<f64> = lo
            .iter()
            .zip(&hi)
            .map(|(l, u)| l.abs().max(u.abs()))
            .collect();
        let mut ne = vec![0.0; d.out_dim];
        for (o, ne) in ne.iter_mut().enumerate() {
            let row = d.row(o);
            let prop: f64 = row.iter().zip(&e).map(|(w, e)| w.abs() * e).sum();
            let local: f64 = row
                .iter()
                .zip(mag.iter().zip(&e))
                .map(|(w, (m, e))| w.abs() * (m + e))
                .sum();
            *ne = prop + g * (local + d.bias[o].abs());
        }
        let single = Module {
            layers: vec![d.clone()],
            feature_layer: 0,
        };
        let (mut nl, mut nh) = single.interval(&lo, &hi);
        if i + 1 < m.layers.len() {
            nl.iter_mut().for_each(|v| *v = v.max(0.0));
            nh.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        lo = nl;
        hi = nh;
        e = ne;
    }
    let abs = lo
        .iter()
        .zip(&hi)
        .zip(&e)
        .map(|((l, u), e)| l.abs().max(u.abs()) + e)
        .collect();
    (e, abs)
}

/// The sound per-sub-box check of base + module: for every unsafe conjunction, one row
/// `c` with `lower(c.N) + lower(c.P) - rhs` above the device rounding bound of `c.N`, of
/// `c.P` and of their f32 sum, plus an f64 slack. `lower(c.N)` is CROWN's (with the IBP
/// intersection), `lower(c.P)` interval arithmetic on the f32 module weights.
fn sum_check(b: &SubBox, module: &Module, case: &Case, rows: &[Vec<f64>], rhs: &[f64]) -> bool {
    use verify::rounding::U32;
    let (flo, fhi) = b.module_box();
    let (mlo, mhi) = module.interval(flo, fhi);
    let (merr, mabs) = module_f32_error_from(module, flo, fhi, b.module_input_err());
    let mut r = 0;
    case.unsafe_set.iter().all(|conj| {
        let mut excluded = false;
        for _ in 0..conj.rows.len() {
            let c = &rows[r];
            let mod_lower: f64 = c
                .iter()
                .zip(mlo.iter().zip(&mhi))
                .map(|(&cv, (&l, &h))| if cv >= 0.0 { cv * l } else { cv * h })
                .sum();
            let mod_err: f64 = c.iter().zip(&merr).map(|(cv, e)| cv.abs() * e).sum();
            let add_err: f64 = c
                .iter()
                .zip(b.base_abs.iter().zip(&mabs))
                .map(|(cv, (a, m))| cv.abs() * U32 * (a + m) * (1.0 + U32))
                .sum();
            let gap = b.base_lower[r] + mod_lower - rhs[r];
            let slack = 1e-9 * (1.0 + b.base_lower[r].abs() + mod_lower.abs() + rhs[r].abs());
            excluded |= gap.is_finite() && gap > b.base_err[r] + mod_err + add_err + slack;
            r += 1;
        }
        excluded
    })
}

/// Candle form of a module under training.
struct TrainModule {
    weights: Vec<Var>,
    biases: Vec<Var>,
    /// Copied into the trained [`Module`].
    feature_layer: usize,
}

impl TrainModule {
    fn new(dims: &[usize], seed: u64, dev: &Device) -> Result<Self, RepairError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for w in dims.windows(2) {
            let (i, o) = (w[0], w[1]);
            let scale = 0.5 / (i as f64).sqrt();
            let v: Vec<f64> = (0..i * o)
                .map(|_| rng.random_range(-scale..=scale))
                .collect();
            weights.push(
                Var::from_tensor(&Tensor::from_vec(v, (o, i), dev).map_err(candle)?)
                    .map_err(candle)?,
            );
            biases.push(Var::zeros((1, o), DType::F64, dev).map_err(candle)?);
        }
        Ok(Self {
            weights,
            biases,
            feature_layer: 0,
        })
    }

    /// Interval lower bounds of `C P(x)` over each box: `S x rows`.
    fn spec_lower(
        &self,
        lo: &Tensor,
        hi: &Tensor,
        c: &Tensor,
        c_abs: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (mid, rad) = self.mid_rad(lo, hi)?;
        mid.matmul(&c.t()?)? - rad.matmul(&c_abs.t()?)?
    }

    /// Output interval over each box (`S x n_out`): `(lo, hi)`.
    fn interval(&self, lo: &Tensor, hi: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (mid, rad) = self.mid_rad(lo, hi)?;
        Ok(((&mid - &rad)?, (&mid + &rad)?))
    }

    /// Interval bound propagation in centre-radius form over `S` boxes (`S x width`
    /// corners), differentiable in the weights: the output centres and radii.
    fn mid_rad(&self, lo: &Tensor, hi: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut mid = ((lo + hi)? * 0.5)?;
        let mut rad = ((hi - lo)? * 0.5)?;
        let k = self.weights.len();
        for i in 0..k {
            let w = self.weights[i].as_tensor();
            mid = mid
                .matmul(&w.t()?)?
                .broadcast_add(self.biases[i].as_tensor())?;
            rad = rad.matmul(&w.abs()?.t()?)?;
            if i + 1 < k {
                let l = (&mid - &rad)?.relu()?;
                let u = (&mid + &rad)?.relu()?;
                mid = ((&l + &u)? * 0.5)?;
                rad = ((&u - &l)? * 0.5)?;
            }
        }
        Ok((mid, rad))
    }

    /// The module with its weights rounded to f32 (as the patch stores them).
    fn to_module(&self) -> Result<Module, RepairError> {
        let mut layers = Vec::new();
        for (w, b) in self.weights.iter().zip(&self.biases) {
            let (o, i) = w.as_tensor().dims2().map_err(candle)?;
            let r = |t: &Tensor| -> Result<Vec<f64>, RepairError> {
                Ok(t.flatten_all()
                    .and_then(|t| t.to_vec1::<f64>())
                    .map_err(candle)?
                    .into_iter()
                    .map(|v| v as f32 as f64)
                    .collect())
            };
            layers.push(
                Dense::new(i, o, r(w.as_tensor())?, r(b.as_tensor())?)
                    .map_err(RepairError::Unsupported)?,
            );
        }
        Ok(Module {
            layers,
            feature_layer: self.feature_layer,
        })
    }
}

/// Per-sub-box, per-conjunction hinge data: row index ranges of each conjunction.
fn conj_ranges(case: &Case) -> Vec<std::ops::Range<usize>> {
    let mut r = 0;
    case.unsafe_set
        .iter()
        .map(|c| {
            let s = r..r + c.rows.len();
            r += c.rows.len();
            s
        })
        .collect()
}

/// L* per sub-box (with margin), as a `S` tensor.
fn loss_per_box(
    total_lower: &Tensor,
    rhs: &Tensor,
    ranges: &[std::ops::Range<usize>],
    margin: &Tensor,
) -> candle_core::Result<Tensor> {
    // hinge_k = relu(rhs_k + margin_k - lower_k); `margin` is `S x rows`.
    let hinge = total_lower
        .broadcast_sub(rhs)?
        .broadcast_sub(margin)?
        .neg()?
        .relu()?;
    let mut parts = Vec::new();
    for r in ranges {
        parts.push(hinge.narrow(1, r.start, r.len())?.min(1)?);
    }
    let stacked = Tensor::stack(&parts, 1)?;
    stacked.sum(1)
}

/// Repair every case of `cases` (named) with one box indicator and module each.
pub fn repair_modules(
    base: &Network,
    cases: &[(String, Case)],
    options: &ModuleOptions,
) -> Result<ModulesRepair, RepairError> {
    check_hidden(options)?;
    let start = Instant::now();
    let deadline = start + options.timeout;
    let n = base.input_dim();
    let n_out = base.output_dim();
    let module_in = check_feature_layer(base, options.feature_layer)?;
    // Indicator boxes: outward f32 rounding; they must be pairwise disjoint.
    let boxes: Vec<BoxBounds> = cases
        .iter()
        .map(|(_, c)| {
            BoxBounds::new(
                c.lower.iter().map(|&v| f32_down(v)).collect(),
                c.upper.iter().map(|&v| f32_up(v)).collect(),
            )
        })
        .collect();
    for (i, (name, c)) in cases.iter().enumerate() {
        if c.lower.len() != n
            || c.unsafe_set
                .iter()
                .any(|k| k.rows.iter().any(|r| r.len() != n_out))
        {
            return Err(RepairError::Property {
                property: name.clone(),
                problem: format!("does not fit the network ({n} inputs, {n_out} outputs)"),
            });
        }
        for (j, other) in boxes.iter().enumerate().take(i) {
            let b = &boxes[i];
            let overlap =
                (0..n).all(|d| b.lower[d] <= other.upper[d] && other.lower[d] <= b.upper[d]);
            if overlap {
                return Err(RepairError::Property {
                    property: name.clone(),
                    problem: format!(
                        "its box overlaps the box of {}: overlapping indicators are not supported",
                        cases[j].0
                    ),
                });
            }
        }
    }
    // Modules are independent (disjoint boxes): repaired in parallel.
    let results: Vec<(Module, ModuleOutcome)> = cases
        .par_iter()
        .enumerate()
        .map(|(i, (name, case))| {
            let case_start = Instant::now();
            let dims = module_dims(module_in, options, n_out);
            let (module, mut outcome) = repair_case(
                base,
                name,
                case,
                &boxes[i],
                &dims,
                options.seed.wrapping_add(i as u64),
                options,
                deadline,
            )?;
            outcome.time_s = case_start.elapsed().as_secs_f64();
            Ok((module, outcome))
        })
        .collect::<Result<_, RepairError>>()?;
    let mut entries = Vec::new();
    let mut outcomes = Vec::new();
    for ((module, outcome), domain) in results.into_iter().zip(boxes) {
        entries.push((Indicator::Box(domain), module));
        outcomes.push(outcome);
    }
    Ok(ModulesRepair {
        modules: PatchModules { entries },
        outcomes,
        time_s: start.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn repair_case(
    base: &Network,
    name: &str,
    case: &Case,
    domain: &BoxBounds,
    dims: &[usize],
    seed: u64,
    options: &ModuleOptions,
    deadline: Instant,
) -> Result<(Module, ModuleOutcome), RepairError> {
    let trace = crate::trace_enabled();
    let dev = Device::Cpu;
    let n = domain.len();
    let rows = case_rows(case);
    let rhs_v = rhs_vec(case);
    let n_rows = rows.len();
    let ranges = conj_ranges(case);
    if n_rows == 0 || ranges.iter().any(|r| r.is_empty()) {
        return Err(RepairError::Property {
            property: name.into(),
            problem: "an unsafe conjunction without constraints cannot be excluded".into(),
        });
    }
    let c_flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let c =
        Tensor::from_vec(c_flat.clone(), (n_rows, dims[dims.len() - 1]), &dev).map_err(candle)?;
    let c_abs = c.abs().map_err(candle)?;
    let rhs = Tensor::from_vec(rhs_v, (1, n_rows), &dev).map_err(candle)?;

    let feature = feature_layer_index(base, options.feature_layer);
    let m_in = dims[0];
    let mut subs = vec![sub_box(
        base,
        &rows,
        domain.lower.clone(),
        domain.upper.clone(),
        feature,
    )?];
    subs[0].margin = options.margin;
    let mut tm = TrainModule::new(dims, seed, &dev)?;
    tm.feature_layer = options.feature_layer;
    let vars: Vec<Var> = tm.weights.iter().chain(&tm.biases).cloned().collect();
    let mut lr = options.learning_rate;
    if options.auto_learning_rate {
        let (flo, fhi) = subs[0].module_box();
        let lo = Tensor::from_vec(flo.to_vec(), (1, m_in), &dev).map_err(candle)?;
        let hi = Tensor::from_vec(fhi.to_vec(), (1, m_in), &dev).map_err(candle)?;
        let m: Vec<f64> = tm
            .spec_lower(&lo, &hi, &c, &c_abs)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(candle)?;
        let worst = m
            .iter()
            .zip(&subs[0].base_lower)
            .zip(&rhs_vec(case))
            .map(|((m, b), r)| r - (m + b))
            .fold(0.0f64, f64::max);
        lr = lr.max(worst / 100.0);
    }
    let mut opt = adam(vars, lr)?;
    let mut rounds = 0;
    loop {
        rounds += 1;
        // Training (Algorithm 2) on every sub-box of this module.
        let s = subs.len();
        let (lo, hi) = module_box_tensors(subs.iter(), m_in, &dev)?;
        let base_lower = Tensor::from_vec(
            subs.iter().flat_map(|b| b.base_lower.clone()).collect(),
            (s, n_rows),
            &dev,
        )
        .map_err(candle)?;
        // Per sub-box and row: the base's device rounding bound plus the sub-box margin.
        let margins = Tensor::from_vec(
            subs.iter()
                .flat_map(|b| b.base_err.iter().map(move |e| e + b.margin))
                .collect(),
            (s, n_rows),
            &dev,
        )
        .map_err(candle)?;
        let (per_box, loss_now) = train_epochs(&mut opt, options.epochs, deadline, || {
            let total = (&base_lower + tm.spec_lower(&lo, &hi, &c, &c_abs)?)?;
            loss_per_box(&total, &rhs, &ranges, &margins)
        })?;
        let t_train = Instant::now();
        // Sound check of every sub-box on the f32-rounded module.
        let module = tm.to_module()?;
        let rhs_all = rhs_vec(case);
        let proven: Vec<bool> = subs
            .par_iter()
            .map(|b| sum_check(b, &module, case, &rows, &rhs_all))
            .collect();
        let open: Vec<usize> = (0..subs.len()).filter(|&i| !proven[i]).collect();
        if trace {
            eprintln!(
                "[modules] {name} round {rounds}: {} sub-boxes, {} open, L* {loss_now:.3e}, check {:.2} s, margin max {:.1e}",
                subs.len(),
                open.len(),
                t_train.elapsed().as_secs_f64(),
                subs.iter().map(|b| b.margin).fold(0.0, f64::max)
            );
        }
        if last_round(open.is_empty(), rounds, subs.len(), options, deadline) {
            let status = if open.is_empty() { "holds" } else { "unknown" };
            let outcome = ModuleOutcome {
                name: name.into(),
                status,
                sub_boxes: subs.len(),
                proven_sub_boxes: proven.iter().filter(|p| **p).count(),
                rounds,
                loss: loss_now,
                time_s: 0.0,
                partition: subs
                    .iter()
                    .map(|b| (b.lower.clone(), b.upper.clone()))
                    .collect(),
            };
            return Ok((module, outcome));
        }
        let (zero, chosen) = refine_choice(open, &per_box, subs.len(), options);
        for &i in &zero {
            subs[i].margin *= 4.0;
        }
        if chosen.is_empty() {
            continue;
        }
        let mut halves = Vec::new();
        for &i in &chosen {
            let b = &subs[i];
            let d = bisect_dimension(b, &ranges, &rhs_vec(case), n, &module, &c_flat);
            for (l, u) in bisect_box(&b.lower, &b.upper, d) {
                halves.push((l, u, b.margin));
            }
        }
        let new: Vec<SubBox> = halves
            .into_par_iter()
            .map(|(l, u, m)| {
                sub_box(base, &rows, l, u, feature).map(|mut b| {
                    b.margin = m;
                    b
                })
            })
            .collect::<Result<_, _>>()?;
        subs = replace_chosen(subs, &chosen, new);
    }
}

// Steps shared by the box trainer above and the label trainer (submodule `label`).

/// The device format holds modules of 1..=MAX_MODULE_LAYERS affine layers, none empty.
fn check_hidden(options: &ModuleOptions) -> Result<(), RepairError> {
    let max_hidden = prorepair_core::patch::modules::MAX_MODULE_LAYERS - 1;
    if options.hidden.contains(&0) || options.hidden.len() > max_hidden {
        return Err(RepairError::Unsupported(format!(
            "module hidden widths {:?}: each must be at least 1, and at most {max_hidden} hidden layers",
            options.hidden
        )));
    }
    Ok(())
}

/// Layer widths of a module: `input`, the hidden widths, `n_out`.
fn module_dims(input: usize, options: &ModuleOptions, n_out: usize) -> Vec<usize> {
    let mut dims = vec![input];
    dims.extend(&options.hidden);
    dims.push(n_out);
    dims
}

/// The unsafe rows of every conjunction of `case`, in order.
fn case_rows(case: &Case) -> Vec<Vec<f64>> {
    case.unsafe_set
        .iter()
        .flat_map(|c| c.rows.iter().cloned())
        .collect()
}

/// Adam (no weight decay) over the module parameters.
fn adam(vars: Vec<Var>, lr: f64) -> Result<AdamW, RepairError> {
    AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(candle)
}

/// The module-box corners of `subs` as two `S x width` tensors.
fn module_box_tensors<'a>(
    subs: impl ExactSizeIterator<Item = &'a SubBox> + Clone,
    width: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor), RepairError> {
    let s = subs.len();
    let corner = |hi: bool| {
        let v: Vec<f64> = subs
            .clone()
            .flat_map(|b| {
                let (l, u) = b.module_box();
                if hi { u.to_vec() } else { l.to_vec() }
            })
            .collect();
        Tensor::from_vec(v, (s, width), dev).map_err(candle)
    };
    Ok((corner(false)?, corner(true)?))
}

/// One training round (Algorithm 2): Adam steps on the sum of `loss()` (one L* value per
/// item) until it is 0, `epochs` steps (at least one evaluation) or `deadline`. Returns
/// the last per-item losses and their sum.
fn train_epochs(
    opt: &mut AdamW,
    epochs: usize,
    deadline: Instant,
    mut loss: impl FnMut() -> candle_core::Result<Tensor>,
) -> Result<(Vec<f64>, f64), RepairError> {
    let mut per_item: Vec<f64> = Vec::new();
    let mut total = f64::INFINITY;
    for _ in 0..epochs.max(1) {
        let l = loss().map_err(candle)?;
        per_item = l.to_vec1::<f64>().map_err(candle)?;
        total = per_item.iter().sum();
        if total == 0.0 || Instant::now() > deadline {
            break;
        }
        let sum = l.sum_all().map_err(candle)?;
        opt.backward_step(&sum).map_err(candle)?;
    }
    Ok((per_item, total))
}

/// Whether this round is the last: everything proven, or a budget is spent.
fn last_round(
    all_proven: bool,
    rounds: usize,
    sub_boxes: usize,
    options: &ModuleOptions,
    deadline: Instant,
) -> bool {
    all_proven
        || rounds >= options.max_rounds
        || Instant::now() > deadline
        || sub_boxes >= options.max_sub_boxes
}

/// Of the `open` (unproven) sub-boxes, those whose loss is already 0 only miss the
/// rounding margin (the caller asks more margin of them instead of splitting); of the
/// rest, the worst by loss, up to the round's budget, are to be bisected (Algorithm 1,
/// lines 14-19). Returns `(zero_loss, chosen)`; `chosen` is empty only when every open
/// sub-box has zero loss.
fn refine_choice(
    open: Vec<usize>,
    per_box: &[f64],
    sub_boxes: usize,
    options: &ModuleOptions,
) -> (Vec<usize>, Vec<usize>) {
    let loss = |i: usize| per_box.get(i).copied().unwrap_or(0.0);
    let (zero, mut order): (Vec<usize>, Vec<usize>) = open
        .into_iter()
        .partition(|&i| per_box.get(i) == Some(&0.0));
    order.sort_by(|&a, &b| loss(b).total_cmp(&loss(a)));
    let budget = options
        .refine_per_round
        .min(options.max_sub_boxes.saturating_sub(sub_boxes))
        .max(1);
    order.truncate(budget);
    (zero, order)
}

/// The two halves of `[lower, upper]` split at the middle of dimension `d`.
fn bisect_box(lower: &[f64], upper: &[f64], d: usize) -> [(Vec<f64>, Vec<f64>); 2] {
    let mid = 0.5 * (lower[d] + upper[d]);
    let mut u1 = upper.to_vec();
    u1[d] = mid;
    let mut l2 = lower.to_vec();
    l2[d] = mid;
    [(lower.to_vec(), u1), (l2, upper.to_vec())]
}

/// `subs` without the `chosen` ones (order kept), then `new`.
fn replace_chosen<T>(subs: Vec<T>, chosen: &[usize], new: Vec<T>) -> Vec<T> {
    let mut keep = Vec::with_capacity(subs.len() + new.len());
    for (i, b) in subs.into_iter().enumerate() {
        if !chosen.contains(&i) {
            keep.push(b);
        }
    }
    keep.extend(new);
    keep
}

/// The module that adds nothing (`n -> n_out`, all zero): the "no module fires" pattern.
fn zero_module(n: usize, n_out: usize) -> Result<Module, String> {
    Ok(Module {
        layers: vec![Dense::new(
            n,
            n_out,
            vec![0.0; n * n_out],
            vec![0.0; n_out],
        )?],
        feature_layer: 0,
    })
}

fn rhs_vec(case: &Case) -> Vec<f64> {
    case.unsafe_set
        .iter()
        .flat_map(|c| c.rhs.iter().copied())
        .collect()
}

/// The gradient-times-width score: for each conjunction, the row whose bound is closest
/// to excluding it (base CROWN plus module interval), then `|a_d| * width_d` summed over
/// those rows; the module's interval width is added per dimension through `|C W1|`.
fn bisect_dimension(
    b: &SubBox,
    ranges: &[std::ops::Range<usize>],
    rhs: &[f64],
    n: usize,
    module: &Module,
    c_flat: &[f64],
) -> usize {
    let n_out = module.output_dim();
    let (flo, fhi) = b.module_box();
    let (mlo, mhi) = module.interval(flo, fhi);
    let mut score = vec![0.0; n];
    for r in ranges {
        let best = r
            .clone()
            .max_by(|&x, &y| {
                let row_m = |k: usize| {
                    let c = &c_flat[k * n_out..(k + 1) * n_out];
                    c.iter()
                        .zip(mlo.iter().zip(&mhi))
                        .map(|(&cv, (&l, &h))| if cv >= 0.0 { cv * l } else { cv * h })
                        .sum::<f64>()
                };
                (b.base_lower[x] + row_m(x) - rhs[x])
                    .total_cmp(&(b.base_lower[y] + row_m(y) - rhs[y]))
            })
            .unwrap_or(r.start);
        for (d, sc) in score.iter_mut().enumerate() {
            let w = b.upper[d] - b.lower[d];
            let a = b.coeffs.get(best * n + d).copied().unwrap_or(0.0);
            *sc += a.abs() * w;
        }
    }
    // A dimension of zero width can never be split.
    (0..n)
        .filter(|&d| b.upper[d] > b.lower[d])
        .max_by(|&x, &y| score[x].total_cmp(&score[y]))
        .unwrap_or(0)
}

/// The paper's patch allocation `tau` for an input `x'` outside every box: among the
/// modules whose anchor has the same label as `x'`, the (up to) ten with the largest
/// cosine similarity between `N(x')` and the anchor output `N(x_i)`. `anchors[i]` is
/// `(label, N(x_i))` for module `i`; returns module indices, most similar first.
///
/// A heuristic, NOT part of the proof: each module is proven only inside its own box,
/// so what an allocated module does outside it is not claimed (and the device and the
/// exported ONNX never apply it there). [`Allocation`] evaluates with it on the host.
pub fn allocate(base_output: &[f64], label: usize, anchors: &[(usize, Vec<f64>)]) -> Vec<usize> {
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let ny = norm(base_output);
    let mut scored: Vec<(usize, f64)> = anchors
        .iter()
        .enumerate()
        .filter(|(_, (l, _))| *l == label)
        .map(|(i, (_, a))| {
            let dot: f64 = a.iter().zip(base_output).map(|(p, q)| p * q).sum();
            let den = ny * norm(a);
            (i, if den > 0.0 { dot / den } else { 0.0 })
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(10).map(|(i, _)| i).collect()
}

/// Host-side evaluation with the patch allocation `tau` (AdvRepair Section 3.3), an
/// option for measuring generalisation: the proven semantics inside the boxes, and
/// outside every box the modules that [`allocate`] assigns.
///
/// Outside the boxes nothing is proven and the shipped patch does not do this (the
/// device, the tract adapter and the exported ONNX apply a module only inside its box,
/// so there `F(x) = N(x)` bit for bit). Use it to measure how the local repairs
/// generalise, not as the repaired network's specification.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// Per module entry: `(label, N(x_i))` of its anchor `x_i`.
    pub anchors: Vec<(usize, Vec<f64>)>,
}

impl Allocation {
    /// Anchors from the inputs the modules were trained around (`anchor_inputs[i]` for
    /// entry `i`, e.g. the centre of robustness box `i` before clipping): label
    /// `argmax N(x_i)` and output `N(x_i)`.
    pub fn new(base: &Network, anchor_inputs: &[Vec<f64>]) -> Self {
        let anchors = anchor_inputs
            .iter()
            .map(|x| {
                let y = base.forward(x);
                (argmax(&y).unwrap_or(0), y)
            })
            .collect();
        Allocation { anchors }
    }

    /// Module indices allocated to the neighbourhood of `at` (the paper allocates at a
    /// clean input `x'` and uses the same modules on all of `B(x', r)`): same predicted
    /// label `argmax N(at)`, top ten by cosine similarity of `N(at)` to the anchors'
    /// outputs.
    pub fn modules_for(&self, base: &Network, at: &[f64]) -> Vec<usize> {
        let y = base.forward(at);
        allocate(&y, argmax(&y).unwrap_or(0), &self.anchors)
    }

    /// `F_tau(x)`: where an indicator of `modules` fires on `x`, exactly
    /// [`PatchModules::eval`] (the proven semantics); elsewhere
    /// `N(x) + sum of P_j(x) over j in tau(at)`, the modules allocated at `at` (`x`
    /// itself when `None`).
    pub fn eval(
        &self,
        modules: &PatchModules,
        base: &Network,
        x: &[f64],
        at: Option<&[f64]>,
    ) -> Vec<f64> {
        let y0 = base.forward(x);
        if modules.entries.iter().any(|(ind, _)| ind.fires(x, &y0)) {
            return modules.eval(base, x);
        }
        let mut y = y0;
        for j in self.modules_for(base, at.unwrap_or(x)) {
            if let Some((_, m)) = modules.entries.get(j) {
                let h = feature_of(base, m.feature_layer, x);
                y.iter_mut().zip(m.forward(&h)).for_each(|(a, b)| *a += b);
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_module() -> Module {
        Module {
            feature_layer: 0,
            layers: vec![
                Dense::new(
                    2,
                    3,
                    vec![1.0, -2.0, 0.5, 0.5, -1.0, 1.0],
                    vec![0.1, -0.2, 0.3],
                )
                .unwrap(),
                Dense::new(3, 2, vec![1.0, 0.0, -1.0, 0.5, 2.0, 1.0], vec![0.0, 1.0]).unwrap(),
            ],
        }
    }

    fn tiny_base() -> Network {
        Network::new(
            vec![2],
            vec![
                Layer::Dense(Dense::new(2, 2, vec![1.0, 1.0, -1.0, 2.0], vec![0.0, -0.5]).unwrap()),
                Layer::Relu,
                Layer::Dense(Dense::new(2, 2, vec![1.0, -1.0, 0.5, 1.0], vec![0.2, 0.0]).unwrap()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn combined_network_equals_base_plus_module_on_the_box() {
        let (base, m) = (tiny_base(), tiny_module());
        let domain = BoxBounds::new(vec![-1.0, -0.5], vec![1.0, 2.0]);
        let comb = combined_network(&base, &m, &domain).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let x: Vec<f64> = (0..2)
                .map(|d| rng.random_range(domain.lower[d]..=domain.upper[d]))
                .collect();
            let want: Vec<f64> = base
                .forward(&x)
                .iter()
                .zip(m.forward(&x))
                .map(|(a, b)| a + b)
                .collect();
            let got = comb.forward(&x);
            for (a, b) in want.iter().zip(&got) {
                assert!((a - b).abs() < 1e-9, "{want:?} vs {got:?}");
            }
        }
    }

    /// Dense 2->3, ReLU, Dense 3->3, ReLU, Dense 3->2: two ReLU feature layers of width 3.
    fn deep_base() -> Network {
        Network::new(
            vec![2],
            vec![
                Layer::Dense(
                    Dense::new(
                        2,
                        3,
                        vec![1.0, 1.0, -1.0, 2.0, 0.5, -0.3],
                        vec![0.0, -0.5, 0.2],
                    )
                    .unwrap(),
                ),
                Layer::Relu,
                Layer::Dense(
                    Dense::new(
                        3,
                        3,
                        vec![1.0, -1.0, 0.5, 0.3, 1.0, -0.7, -0.4, 0.6, 1.1],
                        vec![0.2, 0.0, -0.1],
                    )
                    .unwrap(),
                ),
                Layer::Relu,
                Layer::Dense(
                    Dense::new(3, 2, vec![1.0, -0.5, 0.25, -1.0, 0.5, 2.0], vec![0.1, -0.2])
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    fn feature_module(k: usize) -> Module {
        Module {
            feature_layer: k,
            layers: vec![
                Dense::new(
                    3,
                    4,
                    (0..12).map(|i| (i as f64 * 0.7).sin()).collect(),
                    vec![0.1, -0.3, 0.2, 0.0],
                )
                .unwrap(),
                Dense::new(
                    4,
                    2,
                    (0..8).map(|i| (i as f64 * 1.3).cos()).collect(),
                    vec![0.5, -0.5],
                )
                .unwrap(),
            ],
        }
    }

    #[test]
    fn feature_layers_count_activations() {
        let base = deep_base();
        assert_eq!(feature_layer_index(&base, 0), None);
        assert_eq!(feature_layer_index(&base, 1), Some(1));
        assert_eq!(feature_layer_index(&base, 2), Some(3));
        assert_eq!(feature_layer_index(&base, 3), None);
        assert_eq!(feature_width(&base, 0).unwrap(), 2);
        assert_eq!(feature_width(&base, 2).unwrap(), 3);
        let e = feature_width(&base, 3).unwrap_err().to_string();
        assert!(e.contains("2 activation layer"), "{e}");
        assert_eq!(
            feature_of(&base, 2, &[0.3, -0.2]),
            base.forward_range(&[0.3, -0.2], 0, 4)
        );
    }

    #[test]
    fn combined_network_at_a_feature_layer_equals_base_plus_module_of_the_feature() {
        let base = deep_base();
        let domain = BoxBounds::new(vec![-1.0, -0.5], vec![1.0, 2.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for k in [1, 2] {
            let m = feature_module(k);
            let comb = combined_network(&base, &m, &domain).unwrap();
            let bounds = verify::rounding::interval_bounds(&comb, &domain.lower, &domain.upper);
            let (lo, hi) = bounds.last().unwrap();
            let pm = PatchModules {
                entries: vec![(Indicator::Box(domain.clone()), m.clone())],
            };
            for _ in 0..300 {
                let x: Vec<f64> = (0..2)
                    .map(|d| rng.random_range(domain.lower[d]..=domain.upper[d]))
                    .collect();
                let h = feature_of(&base, k, &x);
                let want: Vec<f64> = base
                    .forward(&x)
                    .iter()
                    .zip(m.forward(&h))
                    .map(|(a, b)| a + b)
                    .collect();
                let got = comb.forward(&x);
                for (j, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert!((a - b).abs() < 1e-9, "K={k}: {want:?} vs {got:?}");
                    assert!(
                        lo[j] <= *b && *b <= hi[j],
                        "K={k}: {b} outside [{}, {}]",
                        lo[j],
                        hi[j]
                    );
                }
                assert_eq!(pm.eval(&base, &x), want);
            }
        }
        // A feature layer that is not a ReLU is refused with a reason.
        let mut tanh = deep_base();
        tanh.layers[3] = Layer::Tanh;
        let e = combined_network(&tanh, &feature_module(2), &domain).unwrap_err();
        assert!(e.to_string().contains("Tanh"), "{e}");
    }

    #[test]
    fn repairs_a_tiny_violated_property_at_a_feature_layer() {
        let base = deep_base();
        let case = Case {
            lower: vec![-1.0, -0.5],
            upper: vec![1.0, 2.0],
            unsafe_set: vec![verify::Conj {
                rows: vec![vec![1.0, -1.0]],
                rhs: vec![0.0],
            }],
        };
        let before = verify::verify_cases(
            &base,
            std::slice::from_ref(&case),
            &verify::Options::default(),
        );
        assert!(
            matches!(before.verdict, verify::Verdict::Violated { .. }),
            "{:?}",
            before.verdict
        );
        let opts = ModuleOptions {
            timeout: Duration::from_secs(60),
            feature_layer: 2,
            ..Default::default()
        };
        let r = repair_modules(&base, &[("p".into(), case.clone())], &opts).unwrap();
        assert!(r.all_hold(), "{:?}", r.outcomes);
        let m = &r.modules.entries[0].1;
        assert_eq!((m.feature_layer, m.input_dim()), (2, 3));
        // The proof is independent of the training bound: verify the combined network.
        let comb = combined_network(
            &base,
            m,
            &BoxBounds::new(case.lower.clone(), case.upper.clone()),
        )
        .unwrap();
        let v = verify::verify_cases(
            &comb,
            std::slice::from_ref(&case),
            &verify::Options::default(),
        );
        assert_eq!(v.verdict, verify::Verdict::Holds, "{:?}", v.verdict);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let x = vec![rng.random_range(-1.0..=1.0), rng.random_range(-0.5..=2.0)];
            let y = r.modules.eval(&base, &x);
            assert!(y[0] > y[1]);
        }
        let x = [1.5, 0.0];
        assert_eq!(r.modules.eval(&base, &x), base.forward(&x));
        // Non-ReLU feature layers and out-of-range K are refused.
        let bad_k = ModuleOptions {
            feature_layer: 3,
            ..opts.clone()
        };
        assert!(repair_modules(&base, &[("p".into(), case.clone())], &bad_k).is_err());
    }

    #[test]
    fn module_interval_contains_samples() {
        let m = tiny_module();
        let (l, u) = (vec![-1.0, 0.0], vec![0.5, 1.0]);
        let (lo, hi) = m.interval(&l, &u);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            let x = vec![rng.random_range(-1.0..=0.5), rng.random_range(0.0..=1.0)];
            for (k, v) in m.forward(&x).into_iter().enumerate() {
                assert!(lo[k] <= v && v <= hi[k]);
            }
        }
    }

    /// Label and pair indicators fire exactly where the device's rules do, on ties, NaN
    /// (either sign, any position), infinities and values in general position.
    #[test]
    fn label_indicators_follow_the_device_rule_on_ties_and_nan() {
        use prorepair_core::patch::modules::{argmax as dev_argmax, top_two as dev_top_two};
        let nan = f64::NAN;
        let mut outputs: Vec<Vec<f64>> = vec![
            vec![],
            vec![1.0],
            vec![nan],
            vec![2.0, 2.0],
            vec![1.0, 2.0, 2.0],
            vec![3.0, 2.0, 2.0],
            vec![3.0, 3.0, 1.0],
            vec![3.0, 2.0, 1.0, 0.0],
            vec![nan, 3.0, 2.0, 1.0],
            vec![3.0, nan, 2.0, 1.0],
            vec![3.0, 2.0, 1.0, nan],
            vec![3.0, 2.0, 1.0, -nan],
            vec![-nan, 3.0, 2.0, 1.0],
            vec![3.0, nan, nan, nan],
            vec![nan, nan, nan],
            vec![f64::INFINITY, 1.0, f64::NEG_INFINITY],
            vec![f64::INFINITY, f64::INFINITY, 0.0],
            vec![0.0, -0.0, -1.0],
            vec![-0.0, 0.0, -1.0],
        ];
        // Small integers make ties common; every third entry a NaN of either sign.
        let mut state = 7u64;
        for _ in 0..400 {
            let row = (0..5)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    match (state >> 33) % 9 {
                        0 => nan,
                        1 => -nan,
                        k => (k % 4) as f64,
                    }
                })
                .collect();
            outputs.push(row);
        }
        for y in &outputs {
            // Every value is an f32 exactly, so the device sees the same vector.
            let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
            for l0 in 0..y.len() {
                assert_eq!(
                    Indicator::Label(l0).fires(&[], y),
                    dev_argmax(&yf) == Some(l0),
                    "label {l0} on {y:?}"
                );
                for l1 in 0..y.len() {
                    assert_eq!(
                        Indicator::LabelPair(l0, l1).fires(&[], y),
                        dev_top_two(&yf) == Some((l0, l1)),
                        "pair ({l0}, {l1}) on {y:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn indicators_fire_only_where_they_should() {
        let b = Indicator::Box(BoxBounds::new(vec![0.0, 0.0], vec![1.0, 1.0]));
        assert!(b.fires(&[0.5, 1.0], &[]));
        assert!(!b.fires(&[0.5, 1.0000001], &[]));
        assert!(Indicator::Label(1).fires(&[], &[0.1, 0.9, 0.3]));
        assert!(Indicator::LabelPair(1, 2).fires(&[], &[0.1, 0.9, 0.3]));
        assert!(!Indicator::LabelPair(1, 0).fires(&[], &[0.1, 0.9, 0.3]));
    }

    #[test]
    fn allocation_picks_same_label_by_cosine() {
        let anchors = vec![
            (0, vec![1.0, 0.0]),
            (1, vec![1.0, 0.1]),
            (0, vec![0.0, 1.0]),
            (0, vec![1.0, 1.0]),
        ];
        assert_eq!(allocate(&[1.0, 0.05], 0, &anchors), vec![0, 3, 2]);
    }

    #[test]
    fn allocation_applies_modules_only_outside_the_boxes() {
        let base = tiny_base();
        let m = tiny_module();
        let b = BoxBounds::new(vec![0.0, 0.0], vec![0.5, 0.5]);
        let modules = PatchModules {
            entries: vec![(Indicator::Box(b), m.clone())],
        };
        let alloc = Allocation::new(&base, &[vec![0.25, 0.25]]);
        // Inside the box: the proven semantics, bit for bit.
        let inside = [0.1, 0.4];
        assert_eq!(
            alloc.eval(&modules, &base, &inside, None),
            modules.eval(&base, &inside)
        );
        // Outside: N(x) + the allocated module when the label matches, N(x) otherwise.
        let out = [0.9, 0.8];
        let y = base.forward(&out);
        let same_label = argmax(&y) == Some(alloc.anchors[0].0);
        let want: Vec<f64> = if same_label {
            y.iter().zip(m.forward(&out)).map(|(a, b)| a + b).collect()
        } else {
            y.clone()
        };
        assert_eq!(alloc.eval(&modules, &base, &out, None), want);
        assert_eq!(modules.eval(&base, &out), y, "without allocation: N(x)");
        assert_eq!(alloc.modules_for(&base, &out).is_empty(), !same_label);
    }

    #[test]
    fn repairs_a_tiny_violated_property() {
        // Unsafe: y0 - y1 <= 0 anywhere in the box, i.e. we want y0 > y1 everywhere.
        let base = tiny_base();
        let case = Case {
            lower: vec![-1.0, -0.5],
            upper: vec![1.0, 2.0],
            unsafe_set: vec![verify::Conj {
                rows: vec![vec![1.0, -1.0]],
                rhs: vec![0.0],
            }],
        };
        // The base violates it somewhere: y0 - y1 at (1, 2).
        let y = base.forward(&[1.0, 2.0]);
        assert!(y[0] <= y[1], "{y:?}");
        let opts = ModuleOptions {
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let r = repair_modules(&base, &[("p".into(), case.clone())], &opts).unwrap();
        assert!(r.all_hold(), "{:?}", r.outcomes);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let x = vec![rng.random_range(-1.0..=1.0), rng.random_range(-0.5..=2.0)];
            let y = r.modules.eval(&base, &x);
            assert!(y[0] > y[1]);
        }
        // Outside the box nothing changes, bit for bit.
        let x = [1.5, 0.0];
        assert_eq!(r.modules.eval(&base, &x), base.forward(&x));
    }
}
