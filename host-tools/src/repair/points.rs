//! Point properties and their repair (ProRepair Section 5.1, Algorithm 1 on points).
//!
//! A point property is an input with its required label: "`x` must be classified as
//! `label`" (argmax of the outputs). Files: CSV rows `v_1, ..., v_n, label` (the model's
//! input row as it is, then the label), or IDX images plus IDX labels (pixels / 255, the
//! ERAN MNIST convention).
//!
//! [`repair_points`] repairs all points together: every point that fails gets a proxy box
//! in feature space certified by CROWN over `f_c` ([`pointwise::synthesise_proxy_box`]),
//! and `f_e` is trained toward all of them at once with the bounded-distance loss, Adam
//! via candle (in f32 by default: training only steers, the proof below is f64), the
//! saliency mask and the fidelity term ([`pointwise::Trainer`]). Rounds repeat (new boxes
//! from the current features of the points still failing) until every point holds or the
//! budget runs out; the proofs run when they can end the repair (see [`repair_points`]).
//!
//! **What "holds" means for a point.** A point's proof is the forward pass of the
//! repaired network in f64 with every gap `y_label - y_j` above a sound bound on
//! `|row·(f32 device output - f64 host output)|` at that point
//! ([`crate::verify::rounding::point_error_bounds`]: signed error propagation, valid for
//! every kernel of the core). So a point that holds is classified as required on the
//! device's f32 arithmetic too.

use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::desired::Constraint;
use super::pointwise::{self, Anchor, ProxyBoxOptions, Trainer};
use super::{RepairError, SplitLayer};
use crate::model::{Layer, Network};
use crate::verify::{Case, Conj};

/// "`x` must be classified as `label`".
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The input, flattened like an input row.
    pub x: Vec<f64>,
    /// The required label (an output index).
    pub label: usize,
}

impl Point {
    /// The desired constraints `y_label - y_j >= margin`, one per other output `j`.
    pub fn constraints(&self, n_out: usize) -> Vec<Constraint> {
        (0..n_out)
            .filter(|&j| j != self.label)
            .map(|j| {
                let mut c = vec![0.0; n_out];
                c[self.label] = 1.0;
                c[j] = -1.0;
                Constraint { c, d: 0.0 }
            })
            .collect()
    }

    /// The point as a verifier case: the box `[x, x]` and the unsafe set
    /// `OR_j (y_label - y_j <= 0)` (a tie counts as unsafe).
    pub fn case(&self, n_out: usize) -> Case {
        Case {
            lower: self.x.clone(),
            upper: self.x.clone(),
            unsafe_set: self
                .constraints(n_out)
                .into_iter()
                .map(|k| Conj {
                    rows: vec![k.c],
                    rhs: vec![0.0],
                })
                .collect(),
        }
    }
}

/// Whether `net` provably classifies the point as required (see the module docs): every
/// `y_label - y_j`, computed in f64, exceeds the f32 rounding bound of that row at the
/// point plus verify's slack ([`crate::verify::bab::required_margin`]'s `1e-9`) and a
/// relative `1e-9`. The rounding bound is the sharp signed one at the point
/// ([`crate::verify::rounding::point_error_bounds`], which also covers the host pass's own
/// f64 rounding); layer kinds it does not handle fall back to verify's whole-network
/// bound ([`crate::verify::rounding::f32_error_bound`] on `[x, x]`).
pub fn point_holds(net: &Network, p: &Point) -> bool {
    point_margin(net, p) > 0.0
}

/// Per constraint row of the point: the host output `y` and the rounding margin each
/// row `y_label - y_j` must clear (module docs).
fn output_and_margins(net: &Network, p: &Point) -> (Vec<f64>, Vec<Constraint>, Vec<f64>) {
    let constraints = p.constraints(net.output_dim());
    let rows: Vec<Vec<f64>> = constraints.iter().map(|k| k.c.clone()).collect();
    match crate::verify::rounding::point_forward_with_error(net, &p.x, &rows) {
        Some((y, bounds)) => {
            let margins = bounds.iter().map(|b| b + 1e-9).collect();
            (y, constraints, margins)
        }
        None => {
            let y = net.forward(&p.x);
            let err = crate::verify::rounding::f32_error_bound(net, &p.x, &p.x);
            let margins = constraints
                .iter()
                .map(|k| crate::verify::bab::required_margin(&k.c, 0.0, &err))
                .collect();
            (y, constraints, margins)
        }
    }
}

/// The smallest proof gap of a point: `min_j (y_label - y_j) - required margin - slack`;
/// positive iff [`point_holds`].
pub fn point_margin(net: &Network, p: &Point) -> f64 {
    let (y, constraints, margins) = output_and_margins(net, p);
    proof_gap(&y, &constraints, &margins)
}

/// `min_j (y_label - y_j) - margin_j - slack` (see [`point_margin`]).
fn proof_gap(y: &[f64], constraints: &[Constraint], margins: &[f64]) -> f64 {
    constraints
        .iter()
        .zip(margins)
        .map(|(k, m)| {
            let gap = k.value(y);
            if gap.is_finite() {
                gap - m - 1e-9 * gap.abs()
            } else {
                f64::NEG_INFINITY
            }
        })
        .fold(f64::INFINITY, f64::min)
}

/// Points whose rounding margin is computed to stand in for the misclassified ones'
/// (see [`repair_points`]).
const ROUNDING_SAMPLE: usize = 8;

/// Most copies of a failing point in the anchors of a later round (see
/// [`repair_points`]).
const MAX_REPEAT: usize = 20;

/// Largest f32 rounding margin the proxy boxes are asked to clear (logit units).
const MAX_ROUNDING_MARGIN: f64 = 5.0;

/// The largest rounding margin a row `y_label - y_j` must clear at the point (see
/// [`point_holds`]).
pub fn rounding_margin(net: &Network, p: &Point) -> f64 {
    output_and_margins(net, p).2.into_iter().fold(0.0, f64::max)
}

/// Per point: [`point_holds`], and the rounding margin ([`rounding_margin`]) when it was
/// computed: only for the points the f64 forward pass classifies as required (the bound
/// costs ~100 forward passes on 9_200; a misclassified point fails whatever it is).
fn proven_with_rounding(net: &Network, points: &[Point]) -> Vec<(bool, Option<f64>)> {
    points
        .par_iter()
        .map(|p| {
            let y = net.forward(&p.x);
            if !p.constraints(y.len()).iter().all(|k| k.value(&y) > 0.0) {
                return (false, None);
            }
            let (y, constraints, margins) = output_and_margins(net, p);
            (
                proof_gap(&y, &constraints, &margins) > 0.0,
                Some(margins.into_iter().fold(0.0, f64::max)),
            )
        })
        .collect()
}

/// Per point: classified with every gap above 1.5 times `rounding` (its last known
/// rounding margin): a guess of [`point_holds`] at the cost of one forward pass.
fn likely_proven(net: &Network, points: &[Point], rounding: &[f64]) -> Vec<bool> {
    points
        .par_iter()
        .zip(rounding)
        .map(|(p, r)| {
            let y = net.forward(&p.x);
            p.constraints(y.len())
                .iter()
                .all(|k| k.value(&y) > 1.5 * r + 1e-6)
        })
        .collect()
}

/// Per point: the f64 forward pass gives the label strictly above every other output.
fn classified(net: &Network, points: &[Point]) -> Vec<bool> {
    points
        .par_iter()
        .map(|p| {
            let y = net.forward(&p.x);
            p.constraints(y.len()).iter().all(|k| k.value(&y) > 0.0)
        })
        .collect()
}

/// Check points against a network's dimensions.
pub fn check_points(points: &[Point], net: &Network, file: &str) -> Result<(), String> {
    let (n_in, n_out) = (net.input_dim(), net.output_dim());
    for (i, p) in points.iter().enumerate() {
        if p.x.len() != n_in {
            return Err(format!(
                "{file}: point {}: {} input values, the network has {n_in} inputs",
                i + 1,
                p.x.len()
            ));
        }
        if p.label >= n_out {
            return Err(format!(
                "{file}: point {}: label {} but the network has {n_out} outputs",
                i + 1,
                p.label
            ));
        }
    }
    Ok(())
}

/// Read CSV point rows `v_1, ..., v_n, label` (gzip or plain; blank lines and lines
/// starting with `#` are skipped). Errors name the file and line.
pub fn read_points_csv(path: &Path) -> Result<Vec<Point>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let bytes =
        crate::tasks::gzip::decompress(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let mut points = Vec::new();
    let mut width = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("{}: line {}: {m}", path.display(), i + 1);
        let v: Vec<f64> = line
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| at(format!("`{s}` is not a finite number")))
            })
            .collect::<Result<_, _>>()?;
        if v.len() < 2 {
            return Err(at("need the input values then the label".into()));
        }
        if *width.get_or_insert(v.len()) != v.len() {
            return Err(at(format!(
                "{} values, earlier rows have {}",
                v.len(),
                width.unwrap_or(0)
            )));
        }
        let (&label, x) = v.split_last().expect("two or more values");
        if label < 0.0 || label.fract() != 0.0 || label > u32::MAX as f64 {
            return Err(at(format!("label `{label}` is not a non-negative integer")));
        }
        points.push(Point {
            x: x.to_vec(),
            label: label as usize,
        });
    }
    if points.is_empty() {
        return Err(format!("{}: no point rows", path.display()));
    }
    Ok(points)
}

/// IDX images (pixels / 255) plus IDX labels as points.
pub fn read_points_idx(images: &Path, labels: &Path) -> Result<Vec<Point>, String> {
    let d = crate::tasks::mnist::read_idx(images, labels)?;
    Ok(d.images
        .into_iter()
        .zip(d.labels)
        .map(|(x, label)| Point { x, label })
        .collect())
}

/// Point-repair settings.
#[derive(Clone, Debug)]
pub struct PointOptions {
    /// Split of the network (default as in the paper, see [`SplitLayer::Auto`]).
    pub split_layer: SplitLayer,
    /// Proxy-box radius `r` (L∞, feature space; the paper's 0.1).
    pub radius: f64,
    /// Margin `y_label - y_j` each proxy box certifies (well above the f32 rounding bound,
    /// so the forward-pass proof has room).
    pub anchor_margin: f64,
    /// Proxy-box centre shifts `T_b`.
    pub box_iterations: usize,
    /// Fraction of the network's parameters that may change.
    pub change_fraction: f64,
    /// How many of the last Dense layers of `f_e` may change; 0: every Dense layer of
    /// `f_e` but the input layer (at least one). Spreading the change over the depth
    /// keeps each layer's change small: on mnist_relu_9_100 one layer proves 94/100 fog
    /// points at a 3.4% accuracy drop, seven prove 100/100 at 0.5% (BENCHMARKS.md).
    pub trainable_layers: usize,
    /// Cap of the changed parameters per failing point (the budget is the smaller of
    /// this times the failing points and `change_fraction` of the network).
    pub parameters_per_point: usize,
    /// Adam steps per round.
    pub repair_steps: usize,
    /// Adam steps per round after the first (the few points left, with a wider mask).
    pub later_repair_steps: usize,
    /// Rounds (new proxy boxes for the points still failing).
    pub rounds: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Adam learning rate of the rounds after the first, where a few points are left
    /// (their anchors repeated). 0.1 took 9_200 zigzag from 4-5 rounds to 2 (drop 0.33%
    /// -> 0.72%) but cost 3_100 (one trainable layer) 6.6% on stripe; 0.03 did not
    /// shorten 9_200 zigzag (BENCHMARKS.md). So the same as `learning_rate`.
    pub later_learning_rate: f64,
    /// Weight of the fidelity term.
    pub fidelity_weight: f64,
    /// Weight of the output hinge term (see [`Trainer::output_weight`]).
    pub output_weight: f64,
    /// Weight of the decision-preserving term on the fidelity inputs (see
    /// [`Trainer::decision_weight`]; 0: off).
    pub decision_weight: f64,
    /// Inputs whose features are kept (fidelity term); e.g. correctly classified data.
    pub fidelity_inputs: Vec<Vec<f64>>,
    /// Fidelity inputs per Adam step, a rotating window (0: all every step; see
    /// [`Trainer::fidelity_batch`]).
    pub fidelity_batch: usize,
    /// Wall-clock budget.
    pub timeout: Duration,
    /// Train in f32 ([`Trainer::set_dtype`]); the proofs are f64 either way.
    pub f32_training: bool,
    /// A round's training also stops once every point is classified with every gap
    /// above 1.5 times its rounding margin plus this (0: off; the anchors' own rule
    /// only).
    pub stop_gap: f64,
    /// Rank mask candidates by repair gradient over influence on the fidelity inputs
    /// ([`Trainer::local_mask`]); false: by repair gradient alone.
    pub local_mask: bool,
    /// Train the output hinge through a final ReLU as a leaky one
    /// ([`Trainer::leaky_output`]; the ERAN MNIST networks end with a ReLU).
    pub leaky_output: bool,
}

impl Default for PointOptions {
    fn default() -> Self {
        Self {
            split_layer: SplitLayer::Auto,
            radius: 0.1,
            // Tuned on the fog task of mnist_relu_3_100 (BENCHMARKS.md, Repair (MNIST)):
            // the last Dense layer of f_e only, 5% of the parameters, a strong output hinge
            // and a fidelity term on clean images keep the clean accuracy.
            // 0.5: about what 0.3 plus 1.5x the old |W| rounding bound came to on 3_100,
            // where these settings were tuned (the sharp point bound is ~1e-2).
            anchor_margin: 0.5,
            box_iterations: 50,
            change_fraction: 0.05,
            trainable_layers: 0,
            parameters_per_point: 45,
            // Short rounds: the few points a round leaves failing get their repeated
            // anchors sooner (9_200 zigzag 42 s vs 55 s with 5 x 500; BENCHMARKS.md).
            repair_steps: 250,
            // A later round that cannot fix its few points in 50 steps rarely does in 250;
            // the next round's wider mask does, in 10-40 (9_200 rotate: 250 steps left
            // one point, the next round took 10; BENCHMARKS.md).
            later_repair_steps: 50,
            rounds: 10,
            // 0.02: Adam moves every masked parameter by about this much per step; 0.1
            // cost 3.4% accuracy on 3_100 stripe and 9_100 fog; 0.02 proves 9_200 rotate
            // and shear in one or two rounds fewer than 0.01 at about the same accuracy
            // (mean drop 0.06% vs 0.03% on 3_100, 0.11% vs 0.04% on 9_100, 8 kinds).
            learning_rate: 0.02,
            later_learning_rate: 0.02,
            fidelity_weight: 2.0,
            output_weight: 100.0,
            decision_weight: 0.0,
            fidelity_inputs: Vec::new(),
            // Fidelity inputs per step: the whole set's accuracy at a fifth of the cost on
            // 9_100 (0.19% mean drop, 8 kinds; BENCHMARKS.md).
            fidelity_batch: 100,
            timeout: Duration::from_secs(60),
            // f32: ~1.75x faster Adam steps on 9_200 (27 vs 15.5 ms at load ~5), the
            // same points proven, the same accuracy (BENCHMARKS.md).
            f32_training: true,
            // Training stops once every point is classified with room over its rounding
            // margin: fewer steps on 9_200 (brightness 250 -> 160, rotate 380 -> 260), the
            // same Gene (70.6% vs 70.9%, 8 kinds; BENCHMARKS.md).
            stop_gap: 0.1,
            local_mask: true,
            // 9_200 zigzag 4 rounds (900 steps) -> 3 (510), scale 3 -> 2 (BENCHMARKS.md).
            leaky_output: true,
        }
    }
}

/// The result of [`repair_points`].
#[derive(Clone, Debug)]
pub struct PointOutcome {
    /// The repaired network (the original when every point held).
    pub network: Network,
    /// True when every point holds on `network` (verify's leaf rule, module docs).
    pub verified: bool,
    /// Per point, before the repair.
    pub before: Vec<bool>,
    /// Per point, on `network`: proven (module docs).
    pub after: Vec<bool>,
    /// Per point, on `network`: classified as required by the f64 forward pass (argmax,
    /// ties count as wrong); true wherever `after` is, and may be true where the proof
    /// fails only on the f32 rounding bound.
    pub classified: Vec<bool>,
    /// Split layer `K`.
    pub split_layer: usize,
    /// Rounds run.
    pub rounds: usize,
    /// Proxy boxes certified (anchors trained toward, all rounds).
    pub anchors: usize,
    /// Points whose proxy-box synthesis failed.
    pub proxy_box_failures: usize,
    /// Adam steps, all rounds.
    pub steps: usize,
    /// Parameters that differ from the original.
    pub changed_parameters: usize,
    /// The cap on changed parameters.
    pub parameter_budget: usize,
    /// Total parameters.
    pub total_parameters: usize,
    /// Wall-clock seconds.
    pub time_s: f64,
}

/// Repair `net` so that every point holds (see the module docs). Points that hold before
/// are kept holding (re-checked at the end, and trained toward a box if they break).
pub fn repair_points(
    net: &Network,
    points: &[Point],
    options: &PointOptions,
) -> Result<PointOutcome, RepairError> {
    let start = Instant::now();
    let trace = crate::trace_enabled();
    check_points(points, net, "points").map_err(|problem| RepairError::Property {
        property: "points".into(),
        problem,
    })?;
    let split = options.split_layer.resolve(net)?;
    let n_out = net.output_dim();
    let total_parameters = net.parameter_count();
    // Which points hold on the original network, and their rounding margins, which also
    // set the proxy boxes' margins. The bound costs ~100 forward passes on 9_200, so it
    // is computed for the classified points only (a misclassified point fails whatever
    // the bound); the others get the largest margin of a sample of `ROUNDING_SAMPLE`
    // points (a training target, not a proof), and their own once a round classifies
    // them.
    let checked = proven_with_rounding(net, points);
    let before: Vec<bool> = checked.iter().map(|c| c.0).collect();
    let unknown: Vec<usize> = (0..points.len())
        .filter(|&i| checked[i].1.is_none())
        .take(ROUNDING_SAMPLE)
        .collect();
    let sampled = unknown
        .par_iter()
        .map(|&i| rounding_margin(net, &points[i]))
        .reduce(|| 0.0, f64::max);
    let mut rounding: Vec<f64> = checked.iter().map(|c| c.1.unwrap_or(sampled)).collect();
    // Few points need few parameters: Adam moves every selected parameter by about the
    // learning rate per step, so a large mask for a handful of points costs accuracy.
    let failing_before = before.iter().filter(|&&b| !b).count();
    let parameter_budget = (((total_parameters as f64) * options.change_fraction).floor() as usize)
        .min(
            options
                .parameters_per_point
                .saturating_mul(failing_before.max(1)),
        );
    let mut outcome = PointOutcome {
        network: net.clone(),
        verified: before.iter().all(|&b| b),
        after: before.clone(),
        classified: Vec::new(),
        before,
        split_layer: split,
        rounds: 0,
        anchors: 0,
        proxy_box_failures: 0,
        steps: 0,
        changed_parameters: 0,
        parameter_budget,
        total_parameters,
        time_s: 0.0,
    };
    if outcome.verified {
        outcome.classified = classified(net, points);
        outcome.time_s = start.elapsed().as_secs_f64();
        return Ok(outcome);
    }
    let box_options = ProxyBoxOptions {
        radius: options.radius,
        max_iterations: options.box_iterations,
        margin: options.anchor_margin,
        // Features after a ReLU cannot be negative: a target there is unreachable.
        non_negative: matches!(net.layers[split - 1], Layer::Relu),
    };
    let mut trainer = Trainer::new(
        net,
        split,
        parameter_budget,
        &options.fidelity_inputs,
        options.fidelity_weight,
        options.learning_rate,
    )?;
    trainer.trainable_layers = match options.trainable_layers {
        0 => {
            let dense = net.layers[..split]
                .iter()
                .filter(|l| matches!(l, Layer::Dense(_)))
                .count();
            dense.saturating_sub(1).max(1)
        }
        n => n,
    };
    if options.f32_training {
        trainer.set_dtype(candle_core::DType::F32)?;
    }
    trainer.fidelity_batch = options.fidelity_batch;
    trainer.local_mask = options.local_mask;
    trainer.leaky_output = options.leaky_output;
    trainer.output_weight = options.output_weight;
    trainer.decision_weight = options.decision_weight;
    let mut current = net.clone();
    // One anchor per failing point, replaced by a fresh box when the point fails again.
    let mut anchors: Vec<Option<Anchor>> = vec![None; points.len()];
    let deadline = start + options.timeout;
    // Rounds can re-break points that an earlier round proved (the points share the
    // trained weights): when no round proves them all, hand back the round that proved
    // the most, not merely the last one.
    let mut best: Option<(usize, Network, Vec<bool>)> = None;
    // `outcome.after` holds the cheap test, not proofs (see below).
    let mut provisional = false;
    while outcome.rounds < options.rounds && Instant::now() < deadline {
        outcome.rounds += 1;
        let round_start = Instant::now();
        let failing: Vec<usize> = (0..points.len()).filter(|&i| !outcome.after[i]).collect();
        #[allow(clippy::type_complexity)]
        let boxes: Vec<(usize, Vec<f64>, Option<Vec<f64>>, f64)> = failing
            .par_iter()
            .map(|&i| {
                let p = &points[i];
                let h0 = current.forward_range(&p.x, 0, split);
                // The proof needs y_label - y_j above the f32 rounding margin at the
                // point: certify the box with the anchor margin on top of 1.5 times it
                // (slack for the change of the bound as the weights move).
                // When that bound is hopeless (a network the sharp point bound does not
                // cover, where the |W|-product fallback reaches 1e4-1e5), no margin can
                // prove the point: train to the anchor margin only, so the forward pass
                // is fixed, and report the point as not proven.
                let rounding = rounding[i];
                let margin = if rounding <= MAX_ROUNDING_MARGIN {
                    options.anchor_margin + 1.5 * rounding
                } else {
                    options.anchor_margin
                };
                let opts = ProxyBoxOptions {
                    margin,
                    ..box_options.clone()
                };
                pointwise::synthesise_proxy_box(&current, split, &h0, &p.constraints(n_out), &opts)
                    .map(|h| (i, h0, h, margin))
            })
            .collect::<Result<_, _>>()?;
        for (i, h0, h, margin) in boxes {
            if h.is_some() {
                outcome.anchors += 1;
            } else {
                outcome.proxy_box_failures += 1;
            }
            anchors[i] = Some(Anchor {
                x: points[i].x.clone(),
                // A certified proxy box: its distance term counts in full. Without one,
                // the point is still trained by the output hinge alone (weight 0 on a
                // target at its current feature): the proof is the forward pass, not the
                // box, and dropping the point left it misclassified (9_200 stripe: 11 of
                // 100 points had no box).
                box_weight: if h.is_some() { 1.0 } else { 0.0 },
                h_star: h.unwrap_or(h0),
                constraints: points[i].constraints(n_out),
                margin,
            });
        }
        // Points proven in an earlier round keep only their output hinge: pulling their
        // features on toward a box they no longer need costs fidelity. The few points
        // still failing after a round are repeated (up to `MAX_REPEAT` times) so they
        // weigh about as much as the proven ones in the mean loss: otherwise one point's
        // hinge is 1/900 of it and never beats the fidelity term (3_100 rotate: 2 points
        // stuck for 4 rounds).
        let repeat = if outcome.rounds > 1 && !failing.is_empty() {
            ((points.len() - failing.len()) / failing.len()).clamp(1, MAX_REPEAT)
        } else {
            1
        };
        let active: Vec<Anchor> = anchors
            .iter()
            .zip(&outcome.after)
            .flat_map(|(a, &ok)| {
                let a = a.clone().map(|a| Anchor {
                    box_weight: if ok { 0.0 } else { a.box_weight },
                    ..a
                });
                std::iter::repeat_n(a, if ok { 1 } else { repeat }).flatten()
            })
            .collect();
        let box_time = round_start.elapsed().as_secs_f64();
        if trace {
            eprintln!(
                "points round {}: {} failing, {} proxy-box failures so far, boxes {box_time:.2} s",
                outcome.rounds,
                failing.len(),
                outcome.proxy_box_failures
            );
        }
        if active.is_empty() {
            break;
        }
        let radius = options.radius;
        if outcome.rounds > 1 {
            trainer.learning_rate = options.later_learning_rate;
        }
        let mut check_time = 0.0;
        let round_steps = if outcome.rounds > 1 {
            options.later_repair_steps
        } else {
            options.repair_steps
        };
        // Done when every point is classified with room over its rounding margin
        // (`stop_gap`), or every anchor's feature is in its certified box (Theorem 1) or
        // its output already meets the constraints with the box's margin.
        let steps = trainer.train(net, &active, round_steps, 10, |n| {
            let t0 = Instant::now();
            let done = Instant::now() >= deadline
                || (options.stop_gap > 0.0
                    && points.iter().zip(&rounding).all(|(p, r)| {
                        let y = n.forward(&p.x);
                        p.constraints(n_out)
                            .iter()
                            .all(|k| k.value(&y) > 1.5 * r + options.stop_gap)
                    }))
                || active.iter().all(|a| {
                    let h = n.forward_range(&a.x, 0, split);
                    (a.box_weight > 0.0
                        && h.iter()
                            .zip(&a.h_star)
                            .all(|(v, c)| (v - c).abs() <= radius))
                        || {
                            let y = n.forward_range(&h, split, n.layers.len());
                            a.constraints.iter().all(|c| c.value(&y) >= a.margin)
                        }
                });
            check_time += t0.elapsed().as_secs_f64();
            done
        })?;
        if trace {
            eprintln!(
                "points round {}: stopping-rule checks {check_time:.2} s",
                outcome.rounds
            );
        }
        outcome.steps += steps;
        let train_time = round_start.elapsed().as_secs_f64() - box_time;
        current = trainer.network(net)?;
        // The proofs (the sharp rounding bound, ~2 s for 100 points on 9_200) run only when
        // they can end the repair: every point looks proven (classified with its last
        // known rounding margin, times 1.5, to spare), or this is the last round. In
        // between, that cheap test picks the failing points; it is never reported as a
        // proof.
        let likely = likely_proven(&current, points, &rounding);
        let last = outcome.rounds >= options.rounds || Instant::now() >= deadline;
        provisional = !(last || likely.iter().all(|&b| b));
        if provisional {
            outcome.after = likely;
        } else {
            let checked = proven_with_rounding(&current, points);
            outcome.after = checked.iter().map(|c| c.0).collect();
            for (r, c) in rounding.iter_mut().zip(&checked) {
                if let Some(m) = c.1 {
                    *r = m;
                }
            }
        }
        if trace {
            // Why the points that fail still fail: misclassified, or classified but the
            // gap is under the rounding margin; and whether their feature reached the box.
            let class = classified(&current, points);
            let (mut wrong, mut rounding, mut in_box, mut no_box) = (0, 0, 0, 0);
            for i in (0..points.len()).filter(|&i| !outcome.after[i]) {
                if class[i] {
                    rounding += 1
                } else {
                    wrong += 1
                }
                match &anchors[i] {
                    Some(a) if a.box_weight > 0.0 => {
                        let h = current.forward_range(&a.x, 0, split);
                        if h.iter()
                            .zip(&a.h_star)
                            .all(|(v, c)| (v - c).abs() <= radius)
                        {
                            in_box += 1;
                        }
                    }
                    _ => no_box += 1,
                }
            }
            eprintln!(
                "points round {}: train {train_time:.2} s ({:.1} ms/step), proofs {:.2} s{}; unproven: {wrong} misclassified, {rounding} under the rounding margin, {in_box} in their box, {no_box} without a box",
                outcome.rounds,
                1e3 * train_time / steps.max(1) as f64,
                round_start.elapsed().as_secs_f64() - box_time - train_time,
                if provisional {
                    " (skipped: cheap test)"
                } else {
                    ""
                },
            );
            eprintln!(
                "points round {}: {} anchors, {steps} steps, {}/{} hold, {} changed, {:.2} s",
                outcome.rounds,
                active.len(),
                outcome.after.iter().filter(|&&b| b).count(),
                points.len(),
                pointwise::changed_parameters(net, &current),
                start.elapsed().as_secs_f64()
            );
        }
        if outcome.after.iter().all(|&b| b) {
            break;
        }
        // The anchors are replaced in place, so the trainer sees no new ones: widen the
        // mask for the points the current one could not fix.
        trainer.widen_next();
        let proven = outcome.after.iter().filter(|&&b| b).count();
        if !provisional && best.as_ref().is_none_or(|(n, _, _)| proven > *n) {
            best = Some((proven, current.clone(), outcome.after.clone()));
        }
    }
    if provisional {
        outcome.after = proven_with_rounding(&current, points)
            .into_iter()
            .map(|c| c.0)
            .collect();
    }
    let proven_last = outcome.after.iter().filter(|&&b| b).count();
    if let Some((proven, network, after)) = best
        && proven > proven_last
    {
        current = network;
        outcome.after = after;
    }
    outcome.verified = outcome.after.iter().all(|&b| b);
    outcome.classified = classified(&current, points);
    outcome.changed_parameters = pointwise::changed_parameters(net, &current);
    outcome.network = current;
    outcome.time_s = start.elapsed().as_secs_f64();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("prorepair-points-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_points_and_errors_name_file_and_line() {
        let p = scratch("ok.csv", "# x1, x2, label\n0.5, 1, 2\n\n0, -1e-3, 0\n");
        let pts = read_points_csv(&p).unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(
            pts[0],
            Point {
                x: vec![0.5, 1.0],
                label: 2
            }
        );
        for (name, text, want) in [
            ("nan.csv", "0.5, 1, 2\n0.1, nan, 1\n", "line 2"),
            ("word.csv", "0.5, x, 2\n", "`x`"),
            ("label.csv", "0.5, 1, 1.5\n", "label"),
            ("ragged.csv", "0.5, 1, 2\n1, 0\n", "line 2: 2 values"),
            ("empty.csv", "\n# nothing\n", "no point rows"),
        ] {
            let e = read_points_csv(&scratch(name, text)).unwrap_err();
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
    }

    /// Repair `n` fog-corrupted misclassified test images of `net_rel`; checks the
    /// proof (at least `min_proven` points), the forward pass and the clean accuracy on
    /// held-out test images.
    fn repair_fog_points(
        net_rel: &str,
        n: usize,
        max_drop: f64,
        min_proven: usize,
        per_point: usize,
    ) {
        repair_fog_points_in(net_rel, n, max_drop, min_proven, per_point, None);
    }

    /// [`repair_fog_points`] with the training precision set (`None`: the default).
    fn repair_fog_points_in(
        net_rel: &str,
        n: usize,
        max_drop: f64,
        min_proven: usize,
        per_point: usize,
        f32_training: Option<bool>,
    ) {
        use crate::tasks::{self, corrupt::Corruption, mnist};
        let net_path = crate::require_data!(net_rel);
        let dir = crate::require_data!("mnist");
        let net = crate::import::load(&net_path).unwrap();
        let test = mnist::test_set(&dir).unwrap();
        let train = mnist::read_csv_255(&dir.join("mnist_5k.csv.gz")).unwrap();
        let task = tasks::corruption_task(&net, &test, Corruption::Fog, n, 2024);
        assert_eq!(task.repair.len(), n);
        assert!(task.repair.iter().all(|p| !point_holds(&net, p)));
        let defaults = PointOptions::default();
        let options = PointOptions {
            fidelity_inputs: tasks::every(&train, 10),
            parameters_per_point: per_point,
            f32_training: f32_training.unwrap_or(defaults.f32_training),
            ..defaults
        };
        let out = repair_points(&net, &task.repair, &options).unwrap();
        let fixed = task
            .repair
            .iter()
            .filter(|p| mnist::argmax(&out.network.forward(&p.x)) == p.label)
            .count();
        assert_eq!(fixed, out.classified.iter().filter(|&&b| b).count());
        assert!(fixed >= min_proven, "forward pass: {:?}", out.classified);
        let held_out = mnist::Dataset {
            images: test.images[1000..3000].to_vec(),
            labels: test.labels[1000..3000].to_vec(),
        };
        let drop = mnist::accuracy(&net, &held_out) - mnist::accuracy(&out.network, &held_out);
        assert!(drop <= max_drop, "accuracy drop {drop}");
        assert!(out.changed_parameters > 0 && out.changed_parameters <= out.parameter_budget);
        let held = out.after.iter().filter(|&&b| b).count();
        assert!(held >= min_proven, "{held} of {n} hold");
        assert_eq!(out.verified, held == n);
        for (p, &ok) in task.repair.iter().zip(&out.after) {
            assert_eq!(point_holds(&out.network, p), ok);
            assert_eq!(point_margin(&out.network, p) > 0.0, ok);
            // Sound or silent: a proven point is classified as required.
            assert!(!ok || mnist::argmax(&out.network.forward(&p.x)) == p.label);
        }
    }

    #[test]
    fn repairs_corrupted_mnist_points_relu_3_100() {
        repair_fog_points("mnist/nets/mnist_relu_3_100.onnx", 10, 0.02, 10, 45);
    }

    /// Both training precisions prove real corrupted points: the proofs are the same
    /// f64 rule on the returned f64 network, whatever the trainer computed in.
    #[test]
    fn repairs_corrupted_mnist_points_in_f32_and_f64() {
        for f32_training in [true, false] {
            repair_fog_points_in(
                "mnist/nets/mnist_relu_3_100.onnx",
                10,
                0.02,
                10,
                45,
                Some(f32_training),
            );
        }
    }

    /// The deep path: 9 Dense layers, f_e's last seven trained together (the default
    /// `trainable_layers`); one trained layer left 6 of 100 fog points misclassified at
    /// a 3.4% accuracy drop (BENCHMARKS.md, Repair (MNIST)).
    #[test]
    fn repairs_corrupted_mnist_points_relu_9_100() {
        repair_fog_points("mnist/nets/mnist_relu_9_100.onnx", 20, 0.02, 20, 45);
    }

    /// The non-ReLU path: sigmoid activations in f_e and f_c, CROWN's sigmoid
    /// relaxation for the proxy boxes, candle's sigmoid in the trainer, and the proof at
    /// the points by the sharp signed rounding bound (~6.5e-3 logits at MNIST points on
    /// this 6-layer network, where the |W|-product bound is ~1.3e5).
    #[test]
    fn repairs_corrupted_mnist_points_sigmoid_6x200() {
        let net = crate::import::load(&crate::require_data!(
            "mnist/nets/ffnnSIGMOID__Point_6x200.onnx"
        ))
        .unwrap();
        let dir = crate::require_data!("mnist");
        let test = crate::tasks::mnist::test_set(&dir).unwrap();
        let p = Point {
            x: test.images[0].clone(),
            label: test.labels[0],
        };
        assert!(rounding_margin(&net, &p) < 0.1);
        // Every point proven, the accuracy kept: the defaults train f_e's last four
        // Dense layers; a point whose proxy box is not certified in 50 shifts is trained
        // by the output hinge alone.
        repair_fog_points("mnist/nets/ffnnSIGMOID__Point_6x200.onnx", 10, 0.02, 10, 45);
    }
}
