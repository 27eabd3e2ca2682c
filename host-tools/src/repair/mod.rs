//! ProRepair: provable repair of a network against VNN-LIB properties, on the host.
//!
//! [`repair`] takes a [`Network`] and a list of properties and returns a network whose
//! parameters differ in a small, measured set, together with the verdict of the SAME
//! sound checker as `prorepair-host verify` ([`crate::verify::verify_cases`]). Nothing is
//! claimed repaired unless that checker answers "holds" for every property.
//!
//! Procedure (Ma et al., ProRepair, Sections 5.1-5.2):
//!
//! 1. Every property is checked first. Those that already hold become *guards*: they are
//!    re-checked at the end and join the repair set if the repair breaks them. The
//!    others form the repair set; their desired output sets (the complements of the
//!    VNN-LIB unsafe sets) are reduced to conjunctions per sub-box ([`desired`]).
//! 2. The network is split `f = f_c ∘ f_e` at layer `K` ([`SplitLayer`]); only `f_e` is
//!    changed.
//! 3. Region-wise loop ([`regionwise`], Algorithm 2): CROWN linear bounds of the whole
//!    network over every sub-property give the violated constraints, a candidate
//!    counterexample (Eq. 8, confirmed by the forward pass) and the Refine Score (Eq. 9).
//!    Counterexamples get certified proxy boxes in feature space and `f_e` is trained
//!    toward them with Adam ([`pointwise`], Algorithm 1). Sub-properties that CROWN still
//!    cannot prove are bisected on the dimension of largest Refine Score, until every one
//!    is proven with the margin, the sub-property budget `T` is exhausted or time runs out.
//!    Counterexamples are kept across rounds (their proxy boxes live in the feature space
//!    of the frozen `f_c`, so they stay valid), which keeps earlier fixes in place.
//! 4. Complete-verification fallback (as in the paper's ACAS Xu setting): whenever the
//!    number of sub-properties reaches a threshold (100, then doubling), the sound checker
//!    runs on the whole properties; "holds" ends the repair, a counterexample becomes a
//!    new repair target.
//! 5. Final answer: the sound checker on every property (repair set and guards).
//!
//! Parameters: the number of changed parameters is capped at a fraction (5%) of the
//! network's parameters (see [`pointwise`] for the saliency mask); fidelity is kept by a
//! loss on sampled inputs outside the repaired boxes and measured on fresh samples.

pub mod desired;
pub mod pointwise;
pub mod regionwise;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::bounds::{BoundsError, BoxBounds};
use crate::model::{Layer, Network};
use crate::spec::Property;
use crate::verify::{self, Case, Conj, Verdict};
use desired::DesiredSet;
use pointwise::{Anchor, ProxyBoxOptions, Trainer};
use regionwise::SubProperty;

/// Errors that stop a repair before it produces a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Bound propagation failed (unsupported layer, non-finite bounds).
    #[error("bounds: {0}")]
    Bounds(#[from] BoundsError),
    /// A property does not fit the network, or cannot be satisfied at all.
    #[error("property {property}: {problem}")]
    Property {
        /// Property name.
        property: String,
        /// What is wrong.
        problem: String,
    },
    /// The split layer is not usable.
    #[error("split layer: {0}")]
    SplitLayer(String),
    /// A layer or network the repair cannot handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The gradient optimiser (candle) failed.
    #[error("optimiser: {0}")]
    Optimiser(String),
}

/// Where to split `f = f_c ∘ f_e`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitLayer {
    /// As in the paper: `f_c` holds one activation layer (the last hidden affine layer,
    /// its activation and the output layer) for networks under 10^6 parameters, two for
    /// larger ones. For ACAS Xu: `f_c` = last hidden Dense + ReLU + output Dense.
    #[default]
    Auto,
    /// `f_e = layers[..K]`, `f_c = layers[K..]`.
    Layer(usize),
}

impl SplitLayer {
    /// The layer index `K` for `net`, checked: `f_e` must contain a Dense layer and `f_c`
    /// must be non-empty.
    pub fn resolve(self, net: &Network) -> Result<usize, RepairError> {
        let n = net.layers.len();
        let k = match self {
            SplitLayer::Layer(k) => k,
            SplitLayer::Auto => {
                let activations = if net.parameter_count() < 1_000_000 {
                    1
                } else {
                    2
                };
                let act: Vec<usize> = (0..n).filter(|&i| net.layers[i].is_activation()).collect();
                let Some(&a) = act.len().checked_sub(activations).and_then(|i| act.get(i)) else {
                    return Err(RepairError::SplitLayer(format!(
                        "auto: the network has {} activation layers, need at least {activations}",
                        act.len()
                    )));
                };
                // The affine layer feeding activation `a`.
                (0..a)
                    .rev()
                    .find(|&i| matches!(net.layers[i], Layer::Dense(_) | Layer::Conv2d(_)))
                    .unwrap_or(0)
            }
        };
        if k == 0 || k >= n {
            return Err(RepairError::SplitLayer(format!(
                "{k} is out of range: f_e = layers[..K] and f_c = layers[K..] must both be non-empty (1 <= K <= {})",
                n.saturating_sub(1)
            )));
        }
        if !net.layers[..k].iter().any(|l| matches!(l, Layer::Dense(_))) {
            return Err(RepairError::SplitLayer(format!(
                "f_e = layers[..{k}] has no Dense layer to repair"
            )));
        }
        Ok(k)
    }
}

/// Repair settings (defaults: the paper's `r = 0.1`, `T = 10000`, Appendix B).
#[derive(Clone, Debug)]
pub struct RepairOptions {
    /// Split of the network.
    pub split_layer: SplitLayer,
    /// Proxy-box radius `r` (L∞, feature space).
    pub radius: f64,
    /// Wall-clock budget for everything, the final verification included.
    pub timeout: Duration,
    /// Floor `ε_0` of the margin every desired constraint must reach (`c·y + d >= ε`);
    /// `None`: `1e-4`. On each sub-box the margin is `max(ε_0, 2 |c|·E)` with `E` the f32
    /// rounding bound that `verify` demands there, so the repaired network passes the
    /// sound checker on the device's arithmetic.
    pub margin: Option<f64>,
    /// Sub-property budget `T`.
    pub max_subproperties: usize,
    /// Initial threshold for the complete-verification fallback (doubles each time).
    pub complete_threshold: usize,
    /// Fraction of the network's parameters that may change.
    pub change_fraction: f64,
    /// Proxy-box centre shifts `T_b`.
    pub box_iterations: usize,
    /// Adam steps per round `T_r`.
    pub repair_steps: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Cap of the margin a counterexample's proxy box is certified with (the sub-box
    /// margin doubled, at most this): larger pushes repaired points deeper into the
    /// desired set.
    pub anchor_margin: f64,
    /// How many of the last Dense layers of `f_e` may change (the saliency mask picks the
    /// budget among their parameters).
    pub trainable_layers: usize,
    /// Inputs for fidelity sampling (training term and measurement); `None`: the bounding
    /// box of all property boxes, widened by its own width on every side.
    pub fidelity_domain: Option<BoxBounds>,
    /// Sampled inputs in the fidelity loss term.
    pub fidelity_train_samples: usize,
    /// Weight λ of the fidelity loss term.
    pub fidelity_weight: f64,
    /// Fresh samples for the fidelity measurement.
    pub fidelity_eval_samples: usize,
    /// Seed of all sampling.
    pub seed: u64,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            split_layer: SplitLayer::Auto,
            radius: 0.1,
            timeout: Duration::from_secs(60),
            margin: None,
            max_subproperties: 10_000,
            complete_threshold: 100,
            change_fraction: 0.05,
            box_iterations: 50,
            repair_steps: 300,
            learning_rate: 0.01,
            trainable_layers: 1,
            anchor_margin: 1e-2,
            fidelity_domain: None,
            fidelity_train_samples: 256,
            fidelity_weight: 10.0,
            fidelity_eval_samples: 10_000,
            seed: 0,
        }
    }
}

/// A property in the form the repair works on.
#[derive(Clone, Debug, PartialEq)]
pub struct RepairProperty {
    /// Name for reports (e.g. the file name).
    pub name: String,
    /// The cases (input box and unsafe set) in the verifier's form.
    pub cases: Vec<Case>,
}

impl RepairProperty {
    /// From a parsed VNN-LIB property, checked against the network's dimensions.
    pub fn from_spec(name: &str, property: &Property, net: &Network) -> Result<Self, RepairError> {
        let bad = |problem: String| RepairError::Property {
            property: name.to_string(),
            problem,
        };
        let (n_in, n_out) = (net.input_dim(), net.output_dim());
        if property.n_inputs != n_in || property.n_outputs != n_out {
            return Err(bad(format!(
                "{} inputs and {} outputs, the network has {n_in} and {n_out}",
                property.n_inputs, property.n_outputs
            )));
        }
        let mut cases = Vec::new();
        for (i, c) in property.cases.iter().enumerate() {
            if c.input.lower.len() != n_in || c.input.upper.len() != n_in {
                return Err(bad(format!(
                    "case {i}: the input box does not have {n_in} entries"
                )));
            }
            if let Some(j) = (0..n_in).find(|&j| {
                let (l, u) = (c.input.lower[j], c.input.upper[j]);
                !(l.is_finite() && u.is_finite() && l <= u)
            }) {
                return Err(bad(format!(
                    "case {i}: input {j} has an empty or infinite interval"
                )));
            }
            let mut unsafe_set = Vec::new();
            for conj in &c.unsafe_set {
                if conj.constraints.iter().any(|k| k.coeffs.len() != n_out) {
                    return Err(bad(format!(
                        "case {i}: a constraint does not have {n_out} coefficients"
                    )));
                }
                unsafe_set.push(Conj {
                    rows: conj.constraints.iter().map(|k| k.coeffs.clone()).collect(),
                    rhs: conj.constraints.iter().map(|k| k.rhs).collect(),
                });
            }
            cases.push(Case {
                lower: c.input.lower.clone(),
                upper: c.input.upper.clone(),
                unsafe_set,
            });
        }
        Ok(Self {
            name: name.to_string(),
            cases,
        })
    }
}

/// Per-property outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyOutcome {
    /// Property name.
    pub name: String,
    /// Verdict of the sound checker before the repair ("holds" / "violated" / "unknown").
    pub before: String,
    /// A confirmed counterexample before the repair, when one was found.
    pub counterexample_before: Option<Vec<f64>>,
    /// Verdict of the sound checker on the final network.
    pub after: String,
    /// Why the final verdict is not "holds", when it is not.
    pub reason: Option<String>,
    /// Whether the property was repaired (false: it was a guard that held before).
    pub repaired: bool,
    /// Sub-properties of this property at the end of the region-wise loop.
    pub subproperties: usize,
}

/// Fidelity of the repaired network to the original outside the repaired boxes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// Sampled inputs (all outside every repaired box).
    pub samples: usize,
    /// Fraction with the same argmin output (ACAS Xu advisory convention).
    pub argmin_agreement: f64,
    /// Fraction with the same argmax output (classifier convention).
    pub argmax_agreement: f64,
    /// Largest absolute output change.
    pub max_abs_output_change: f64,
}

/// The result of [`repair`].
#[derive(Clone, Debug)]
pub struct RepairOutcome {
    /// The final network (the original when nothing had to change).
    pub network: Network,
    /// True when the sound checker proves every property on `network`.
    pub verified: bool,
    /// Per property.
    pub properties: Vec<PropertyOutcome>,
    /// The split layer `K` used.
    pub split_layer: usize,
    /// The margin floor `ε_0` used.
    pub margin: f64,
    /// Region-wise rounds.
    pub rounds: usize,
    /// Total sub-properties at the end.
    pub subproperties: usize,
    /// Repair targets (counterexamples with proxy boxes) collected.
    pub anchors: usize,
    /// Counterexamples whose proxy-box synthesis failed.
    pub proxy_box_failures: usize,
    /// Parameters that differ from the original.
    pub changed_parameters: usize,
    /// The cap on changed parameters.
    pub parameter_budget: usize,
    /// Total parameters of the network.
    pub total_parameters: usize,
    /// Fidelity figures.
    pub fidelity: Fidelity,
    /// Wall-clock seconds.
    pub time_s: f64,
}

/// Sample `n` points of `domain` outside every box of `exclude` (seeded rejection
/// sampling, bounded tries: fewer points when the boxes cover almost all of `domain`).
pub fn sample_outside(domain: &BoxBounds, exclude: &[&Case], n: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n && tries < 100 * n + 1000 {
        tries += 1;
        let x: Vec<f64> = domain
            .lower
            .iter()
            .zip(&domain.upper)
            .map(|(&l, &u)| if u > l { rng.random_range(l..=u) } else { l })
            .collect();
        let inside = exclude.iter().any(|c| {
            x.iter()
                .zip(c.lower.iter().zip(&c.upper))
                .all(|(v, (l, u))| l <= v && v <= u)
        });
        if !inside {
            out.push(x);
        }
    }
    out
}

fn arg_by(y: &[f64], better: impl Fn(f64, f64) -> bool) -> usize {
    (1..y.len()).fold(0, |best, i| if better(y[i], y[best]) { i } else { best })
}

/// Fidelity of `repaired` to `original` on `points`.
pub fn measure_fidelity(original: &Network, repaired: &Network, points: &[Vec<f64>]) -> Fidelity {
    let results: Vec<(bool, bool, f64)> = points
        .par_iter()
        .map(|x| {
            let (a, b) = (original.forward(x), repaired.forward(x));
            let argmin = arg_by(&a, |p, q| p < q) == arg_by(&b, |p, q| p < q);
            let argmax = arg_by(&a, |p, q| p > q) == arg_by(&b, |p, q| p > q);
            let dev = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            (argmin, argmax, dev)
        })
        .collect();
    let n = results.len().max(1) as f64;
    Fidelity {
        samples: results.len(),
        argmin_agreement: results.iter().filter(|r| r.0).count() as f64 / n,
        argmax_agreement: results.iter().filter(|r| r.1).count() as f64 / n,
        max_abs_output_change: results.iter().map(|r| r.2).fold(0.0, f64::max),
    }
}

/// The default fidelity domain: the bounding box of all case boxes, widened by its own
/// width on every side.
fn default_domain(props: &[RepairProperty]) -> BoxBounds {
    let mut lower: Vec<f64> = Vec::new();
    let mut upper: Vec<f64> = Vec::new();
    for c in props.iter().flat_map(|p| &p.cases) {
        if lower.is_empty() {
            lower.clone_from(&c.lower);
            upper.clone_from(&c.upper);
        }
        for i in 0..lower.len() {
            lower[i] = lower[i].min(c.lower[i]);
            upper[i] = upper[i].max(c.upper[i]);
        }
    }
    let w: Vec<f64> = lower
        .iter()
        .zip(&upper)
        .map(|(l, u)| (u - l).max(1e-3))
        .collect();
    BoxBounds::new(
        lower.iter().zip(&w).map(|(l, w)| l - w).collect(),
        upper.iter().zip(&w).map(|(u, w)| u + w).collect(),
    )
}

fn verify_options(timeout: Duration, seed: u64) -> verify::Options {
    verify::Options {
        method: verify::Method::Complete,
        timeout,
        threads: None,
        seed,
        progress: None,
    }
}

/// Mutable state of the region-wise loop.
struct Loop<'a> {
    original: &'a Network,
    props: Vec<RepairProperty>,
    desired: Vec<DesiredSet>,
    subs: Vec<SubProperty>,
    anchors: Vec<Anchor>,
    split: usize,
    margin: f64,
    box_options: ProxyBoxOptions,
    proxy_box_failures: usize,
}

impl Loop<'_> {
    /// Sub-properties of a newly added property: one per case, full box.
    fn add_property(&mut self, current: &Network, prop: RepairProperty) -> Result<(), RepairError> {
        let index = self.props.len();
        let desired = DesiredSet::from_unsafe(
            &prop
                .cases
                .iter()
                .flat_map(|c| c.unsafe_set.clone())
                .collect::<Vec<_>>(),
        );
        // Cases may differ in their unsafe sets: keep one desired set per property built
        // from the first case, and check the others agree.
        let first = prop
            .cases
            .first()
            .map(|c| DesiredSet::from_unsafe(&c.unsafe_set));
        if prop
            .cases
            .iter()
            .any(|c| Some(DesiredSet::from_unsafe(&c.unsafe_set)) != first)
        {
            return Err(RepairError::Unsupported(format!(
                "property {}: cases with different unsafe sets are not supported by repair yet",
                prop.name
            )));
        }
        let desired = first.unwrap_or(desired);
        if !desired.is_satisfiable() {
            return Err(RepairError::Property {
                property: prop.name.clone(),
                problem: "an unsafe conjunction has no constraints: every output is unsafe".into(),
            });
        }
        for (ci, c) in prop.cases.iter().enumerate() {
            let chosen = regionwise::choose_constraints(
                current,
                self.original,
                &desired,
                &c.lower,
                &c.upper,
            )?;
            self.subs.push(SubProperty {
                property: index,
                case: ci,
                lower: c.lower.clone(),
                upper: c.upper.clone(),
                chosen,
                depth: 0,
            });
        }
        self.props.push(prop);
        self.desired.push(desired);
        Ok(())
    }

    /// Proxy box for a counterexample `x` of `sub`'s constraints; an anchor when found.
    fn anchor_for(
        &mut self,
        current: &Network,
        x: Vec<f64>,
        sub: &SubProperty,
        margin: f64,
    ) -> Result<(), RepairError> {
        if self.anchors.iter().any(|a| a.x == x) {
            return Ok(());
        }
        let h0 = current.forward_range(&x, 0, self.split);
        let options = ProxyBoxOptions {
            margin: margin.max(self.box_options.margin),
            ..self.box_options.clone()
        };
        match pointwise::synthesise_proxy_box(current, self.split, &h0, &sub.chosen, &options)? {
            Some(h_star) => self.anchors.push(Anchor {
                x,
                h_star,
                constraints: sub.chosen.clone(),
            }),
            None => self.proxy_box_failures += 1,
        }
        Ok(())
    }

    /// The sub-property whose box contains `x` in property `p` (the first such).
    fn sub_containing(&self, p: usize, x: &[f64]) -> Option<SubProperty> {
        self.subs
            .iter()
            .find(|s| {
                s.property == p
                    && x.iter()
                        .zip(s.lower.iter().zip(&s.upper))
                        .all(|(v, (l, u))| l <= v && v <= u)
            })
            .cloned()
    }

    /// Examine every sub-property (parallel).
    fn examine_all(&self, current: &Network) -> Result<Vec<regionwise::Examination>, RepairError> {
        self.subs
            .par_iter()
            .map(|s| regionwise::examine(current, s, self.margin))
            .collect()
    }
}

/// Repair `net` so that every property holds (see the module docs).
pub fn repair(
    net: &Network,
    properties: &[RepairProperty],
    options: &RepairOptions,
) -> Result<RepairOutcome, RepairError> {
    let start = Instant::now();
    // Progress on stderr for tuning, with PROREPAIR_TRACE set.
    let trace = std::env::var_os("PROREPAIR_TRACE").is_some();
    let deadline = start + options.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let split = options.split_layer.resolve(net)?;
    let total_parameters = net.parameter_count();
    let parameter_budget = ((total_parameters as f64) * options.change_fraction).floor() as usize;

    // Margin floor; each sub-box adds twice its own f32 rounding bound (regionwise::examine).
    let margin = options.margin.unwrap_or(1e-4);

    // 1. Status before.
    let per_prop_budget = remaining().mul_f64(0.15 / properties.len().max(1) as f64);
    let mut outcomes: Vec<PropertyOutcome> = Vec::new();
    let mut befores: Vec<Verdict> = Vec::new();
    for (i, p) in properties.iter().enumerate() {
        let v = verify::verify_cases(
            net,
            &p.cases,
            &verify_options(per_prop_budget, options.seed + i as u64),
        )
        .verdict;
        let cex = match &v {
            Verdict::Violated { counterexample, .. } => Some(counterexample.clone()),
            _ => None,
        };
        outcomes.push(PropertyOutcome {
            name: p.name.clone(),
            before: v.status().to_string(),
            counterexample_before: cex,
            after: String::new(),
            reason: None,
            repaired: v != Verdict::Holds,
            subproperties: 0,
        });
        befores.push(v);
    }

    let domain = options
        .fidelity_domain
        .clone()
        .unwrap_or_else(|| default_domain(properties));
    let all_cases: Vec<&Case> = properties.iter().flat_map(|p| &p.cases).collect();
    let fid_train = sample_outside(
        &domain,
        &all_cases,
        options.fidelity_train_samples,
        options.seed,
    );
    let fid_eval = sample_outside(
        &domain,
        &all_cases,
        options.fidelity_eval_samples,
        options.seed ^ 0x5eed_f1de,
    );

    let non_negative = matches!(net.layers[split - 1], Layer::Relu);
    let box_options = ProxyBoxOptions {
        radius: options.radius,
        max_iterations: options.box_iterations,
        margin: 2.0 * margin,
        non_negative,
    };
    let mut state = Loop {
        original: net,
        props: Vec::new(),
        desired: Vec::new(),
        subs: Vec::new(),
        anchors: Vec::new(),
        split,
        margin,
        box_options,
        proxy_box_failures: 0,
    };
    // Map from property index in `properties` to index in the repair set.
    let mut repair_index: Vec<Option<usize>> = vec![None; properties.len()];
    let mut current = net.clone();
    for (i, p) in properties.iter().enumerate() {
        if outcomes[i].repaired {
            repair_index[i] = Some(state.props.len());
            state.add_property(&current, p.clone())?;
            if let Some(x) = outcomes[i].counterexample_before.clone() {
                let ri = state.props.len() - 1;
                if let Some(sub) = state.sub_containing(ri, &x) {
                    state.anchor_for(&current, x, &sub, 2.0 * margin)?;
                }
            }
        }
    }

    if trace {
        eprintln!(
            "repair: split {split}, margin {margin:e}, budget {parameter_budget}, before {:?}, {} anchors",
            outcomes
                .iter()
                .map(|o| o.before.as_str())
                .collect::<Vec<_>>(),
            state.anchors.len()
        );
    }
    let mut trainer = Trainer::new(
        net,
        split,
        parameter_budget,
        &fid_train,
        options.fidelity_weight,
        options.learning_rate,
    )?;
    trainer.trainable_layers = options.trainable_layers;
    let mut rounds = 0usize;
    let mut threshold = options.complete_threshold;
    let mut final_reason: Option<String> = None;
    let mut finished = state.props.is_empty();
    let mut verified = false;

    'outer: loop {
        while !finished {
            if remaining().is_zero() {
                final_reason = Some("timeout in the region-wise loop".into());
                break;
            }
            rounds += 1;
            // Counterexample generation on every sub-property.
            let exams = state.examine_all(&current)?;
            if exams.iter().all(|e| e.proven()) {
                finished = true;
                break;
            }
            if trace {
                eprintln!(
                    "repair round {rounds}: {} sub-properties, {} proven, {} counterexamples, {} anchors, {} proxy-box failures, {:.2} s",
                    state.subs.len(),
                    exams.iter().filter(|e| e.proven()).count(),
                    exams.iter().map(|e| e.counterexamples.len()).sum::<usize>(),
                    state.anchors.len(),
                    state.proxy_box_failures,
                    start.elapsed().as_secs_f64()
                );
            }
            let subs_snapshot = state.subs.clone();
            for (sub, e) in subs_snapshot.iter().zip(&exams) {
                for x in &e.counterexamples {
                    // Point targets: twice the sub-box margin, capped (a big box's f32 bound is loose).
                    state.anchor_for(
                        &current,
                        x.clone(),
                        sub,
                        (2.0 * e.margin)
                            .min(options.anchor_margin)
                            .max(2.0 * margin),
                    )?;
                }
            }
            // Point-wise repair toward every anchor so far.
            let check_margin = 2.0 * margin;
            let anchors = state.anchors.clone();
            // Done when every anchor's feature is inside its certified proxy box (Theorem 1)
            // or its output already meets the constraints with the margin.
            let radius = options.radius;
            trainer.train(net, &anchors, options.repair_steps, 10, |n| {
                anchors.iter().all(|a| {
                    let h = n.forward_range(&a.x, 0, split);
                    let inside = h
                        .iter()
                        .zip(&a.h_star)
                        .all(|(v, c)| (v - c).abs() <= radius);
                    inside || {
                        let y = n.forward_range(&h, split, n.layers.len());
                        a.constraints.iter().all(|c| c.value(&y) >= check_margin)
                    }
                })
            })?;
            current = trainer.network(net)?;
            // Counterexample generation again; refine what is still not proven.
            let exams = state.examine_all(&current)?;
            if exams.iter().all(|e| e.proven()) {
                finished = true;
                break;
            }
            let mut next = Vec::with_capacity(state.subs.len() + 16);
            let mut to_split = Vec::new();
            for (sub, e) in state.subs.iter().zip(&exams) {
                if e.proven() {
                    next.push(sub.clone());
                } else {
                    to_split.push((
                        sub.clone(),
                        regionwise::split_dimension(sub, &e.refine_score),
                    ));
                }
            }
            let children: Vec<[SubProperty; 2]> = to_split
                .par_iter()
                .map(|(s, d)| regionwise::bisect(&current, net, &state.desired[s.property], s, *d))
                .collect::<Result<_, _>>()?;
            next.extend(children.into_iter().flatten());
            state.subs = next;
            if state.subs.len() > options.max_subproperties {
                final_reason = Some(format!(
                    "sub-property budget T = {} exhausted",
                    options.max_subproperties
                ));
                break;
            }
            // Complete-verification fallback when the number of sub-properties doubles.
            if state.subs.len() >= threshold {
                threshold *= 2;
                let budget = remaining().mul_f64(0.25);
                let mut all_hold = true;
                for (pi, p) in state.props.clone().iter().enumerate() {
                    let v = verify::verify_cases(
                        &current,
                        &p.cases,
                        &verify_options(budget, options.seed),
                    )
                    .verdict;
                    match v {
                        Verdict::Holds => {}
                        Verdict::Violated { counterexample, .. } => {
                            all_hold = false;
                            if let Some(sub) = state.sub_containing(pi, &counterexample) {
                                state.anchor_for(&current, counterexample, &sub, 2.0 * margin)?;
                            }
                        }
                        Verdict::Unknown { .. } => all_hold = false,
                    }
                }
                if all_hold {
                    finished = true;
                }
            }
        }

        // 5. Final answer from the sound checker, on every property (guards included).
        if !finished {
            for o in outcomes.iter_mut() {
                o.after = if o.repaired {
                    "unknown".into()
                } else {
                    o.before.clone()
                };
                if o.repaired {
                    o.reason.clone_from(&final_reason);
                }
            }
            break 'outer;
        }
        verified = true;
        let mut retry = false;
        for (i, p) in properties.iter().enumerate() {
            let budget = remaining()
                .max(Duration::from_secs(1))
                .mul_f64(1.0 / (properties.len() - i) as f64);
            let v = verify::verify_cases(
                &current,
                &p.cases,
                &verify_options(budget, options.seed + 1000 + i as u64),
            )
            .verdict;
            outcomes[i].after = v.status().to_string();
            outcomes[i].reason = None;
            match v {
                Verdict::Holds => {}
                Verdict::Unknown { reason } => {
                    verified = false;
                    outcomes[i].reason = Some(reason);
                }
                Verdict::Violated { counterexample, .. } => {
                    verified = false;
                    outcomes[i].reason = Some(if outcomes[i].repaired {
                        "the sound checker found a counterexample after the repair".into()
                    } else {
                        "held before; broken by the repair".into()
                    });
                    if remaining().is_zero() {
                        continue;
                    }
                    // A broken guard joins the repair set; a counterexample becomes a target.
                    let ri = match repair_index[i] {
                        Some(ri) => ri,
                        None => {
                            repair_index[i] = Some(state.props.len());
                            outcomes[i].repaired = true;
                            state.add_property(&current, p.clone())?;
                            retry = true;
                            state.props.len() - 1
                        }
                    };
                    if let Some(sub) = state.sub_containing(ri, &counterexample) {
                        let before = state.anchors.len();
                        state.anchor_for(&current, counterexample, &sub, 2.0 * margin)?;
                        retry |= state.anchors.len() > before;
                    }
                }
            }
        }
        if verified || !retry {
            break 'outer;
        }
        finished = false;
    }
    for (i, o) in outcomes.iter_mut().enumerate() {
        if let Some(ri) = repair_index[i] {
            o.subproperties = state.subs.iter().filter(|s| s.property == ri).count();
        }
    }
    let fidelity = measure_fidelity(net, &current, &fid_eval);
    Ok(RepairOutcome {
        changed_parameters: pointwise::changed_parameters(net, &current),
        network: current,
        verified,
        properties: outcomes,
        split_layer: split,
        margin,
        rounds,
        subproperties: state.subs.len(),
        anchors: state.anchors.len(),
        proxy_box_failures: state.proxy_box_failures,
        parameter_budget,
        total_parameters,
        fidelity,
        time_s: start.elapsed().as_secs_f64(),
    })
}
