//! ProRepair Algorithm 2 (region-wise repair): counterexample generation from CROWN
//! linear bounds of the whole network (Eq. 7-8), and property refinement by the Refine
//! Score (Eq. 9).

use super::RepairError;
use super::desired::{Constraint, DesiredSet};
use super::pointwise::spec_of;
use crate::bounds::{self, BoxBounds, Method};
use crate::model::Network;

/// A sub-property: a sub-box of one case of one property, with the conjunction of
/// desired constraints chosen for it (one alternative per clause of the desired set).
#[derive(Clone, Debug, PartialEq)]
pub struct SubProperty {
    /// Index of the property in the repair set.
    pub property: usize,
    /// Index of the case (input box) within the property.
    pub case: usize,
    /// Sub-box lower corner.
    pub lower: Vec<f64>,
    /// Sub-box upper corner.
    pub upper: Vec<f64>,
    /// The chosen desired constraints (a conjunction).
    pub chosen: Vec<Constraint>,
    /// Number of bisections from the case box.
    pub depth: usize,
    /// Version of the repaired network on which it was last proven (0: never).
    pub version: usize,
}

/// What counterexample generation concluded on one sub-property.
#[derive(Clone, Debug, PartialEq)]
pub struct Examination {
    /// `Vio(φ)`: indices (into `chosen`) of the constraints whose CROWN lower bound over
    /// the sub-box is below the margin. Empty means the sub-property is proven.
    pub violated: Vec<usize>,
    /// Counterexamples confirmed by the forward pass (the minimiser of Eq. 8 over the box,
    /// and the box centre when it also violates).
    pub counterexamples: Vec<Vec<f64>>,
    /// Refine Score of every input dimension (Eq. 9).
    pub refine_score: Vec<f64>,
    /// Smallest certified `lower bound - margin` over the chosen constraints (negative
    /// when not proven).
    pub worst_gap: f64,
    /// The margin required on this sub-box.
    pub margin: f64,
    /// When proven: the alternative certified for each clause (may differ from the
    /// sub-property's chosen ones).
    pub proven_with: Option<Vec<Constraint>>,
}

impl Examination {
    /// True when CROWN certifies every chosen constraint with the margin on the sub-box.
    pub fn proven(&self) -> bool {
        self.proven_with.is_some()
    }
}

/// Counterexample generation for one sub-property (Algorithm 2, lines 3-9): CROWN linear
/// lower bounds `w_ψ x + b_ψ <= c_ψ f(x) + d_ψ` over the sub-box; `Vio` = constraints with
/// `min_box (w_ψ x + b_ψ) < margin`; the candidate `x* = argmin_box Σ_{ψ∈Vio} w_ψ x`
/// (closed form per dimension) is a counterexample when the forward pass gives some
/// `c_ψ f(x*) + d_ψ < margin`.
///
/// Every alternative of every clause of `desired` is bounded in the same CROWN pass: the
/// sub-property is proven when each clause has SOME alternative certified (then
/// [`Examination::proven_with`] names them, which may differ from `sub.chosen`); the
/// counterexample and the Refine Score use the sub-property's chosen constraints.
///
/// The margin is `max(min_margin, 2 e_ψ)` per constraint and sub-box, where `e_ψ` is the
/// sound bound on the f32 rounding error of `c_ψ · f(x)` on the sub-box that `verify`
/// demands ([`crate::verify::rounding::spec_error_bounds`] from the same CROWN layer
/// bounds): it shrinks with the sub-box.
pub fn examine(
    net: &Network,
    desired: &DesiredSet,
    sub: &SubProperty,
    min_margin: f64,
    target_margin: f64,
) -> Result<Examination, RepairError> {
    // Without a desired set, the chosen constraints form one (a plain conjunction).
    let own;
    let desired = if desired.clauses.is_empty() {
        own = DesiredSet {
            clauses: sub
                .chosen
                .iter()
                .map(|c| super::desired::Clause {
                    options: vec![c.clone()],
                })
                .collect(),
        };
        &own
    } else {
        desired
    };
    let options: Vec<Constraint> = desired.all_options().cloned().collect();
    let (spec, d) = spec_of(&options);
    let rows = options.len();
    let input = BoxBounds::new(sub.lower.clone(), sub.upper.clone());
    let b = bounds::linear_bounds(
        net,
        0,
        net.layers.len(),
        &input,
        Some(&spec),
        rows,
        Method::Crown,
    )?;
    // The f32 rounding bound `verify` demands on this box, from the same CROWN layer bounds.
    let layer_bounds: Vec<(Vec<f64>, Vec<f64>)> = b
        .layer_bounds
        .iter()
        .map(|l| (l.lower.clone(), l.upper.clone()))
        .collect();
    let c_rows: Vec<Vec<f64>> = options.iter().map(|c| c.c.clone()).collect();
    let row_err = crate::verify::rounding::spec_error_bounds(net, &layer_bounds, &c_rows)
        .unwrap_or_else(|| {
            let e = crate::verify::rounding::f32_error_bound_from(net, &layer_bounds);
            c_rows
                .iter()
                .map(|r| r.iter().zip(&e).map(|(c, e)| c.abs() * e).sum())
                .collect()
        });
    let row_margin: Vec<f64> = row_err.iter().map(|e| (2.0 * e).max(min_margin)).collect();
    let gap = |r: usize| b.lower[r] + d[r] - row_margin[r];
    // Proof by any alternative per clause.
    let mut proven_with = Some(Vec::new());
    let mut offset = 0;
    for clause in &desired.clauses {
        let n = clause.options.len();
        let best = (offset..offset + n).max_by(|&p, &q| gap(p).total_cmp(&gap(q)));
        match (best, proven_with.as_mut()) {
            (Some(r), Some(v)) if gap(r) >= 0.0 => v.push(options[r].clone()),
            _ => proven_with = None,
        }
        offset += n;
    }
    // The chosen constraints' rows among the options.
    let chosen_rows: Vec<usize> = sub
        .chosen
        .iter()
        .filter_map(|c| options.iter().position(|o| o == c))
        .collect();
    let margin = chosen_rows
        .iter()
        .map(|&r| row_margin[r])
        .fold(min_margin, f64::max);
    let cols = b.cols;
    let mut violated = Vec::new();
    let mut worst_gap = f64::INFINITY;
    for (i, &r) in chosen_rows.iter().enumerate() {
        worst_gap = worst_gap.min(gap(r));
        if gap(r) < 0.0 {
            violated.push(i);
        }
    }
    if proven_with.is_some() {
        violated.clear();
    }
    let mut refine_score = vec![0.0; cols];
    let mut counterexamples = Vec::new();
    if !violated.is_empty() {
        let mut direction = vec![0.0; cols];
        for &i in &violated {
            let r = chosen_rows[i];
            for (k, a) in b.a_lower[r * cols..(r + 1) * cols].iter().enumerate() {
                direction[k] += a;
                refine_score[k] += a.abs();
            }
        }
        for (k, s) in refine_score.iter_mut().enumerate() {
            *s *= sub.upper[k] - sub.lower[k];
        }
        let x_star: Vec<f64> = (0..cols)
            .map(|k| match direction[k].partial_cmp(&0.0) {
                Some(std::cmp::Ordering::Greater) => sub.lower[k],
                Some(std::cmp::Ordering::Less) => sub.upper[k],
                _ => 0.5 * (sub.lower[k] + sub.upper[k]),
            })
            .collect();
        let centre: Vec<f64> = sub
            .lower
            .iter()
            .zip(&sub.upper)
            .map(|(l, u)| 0.5 * (l + u))
            .collect();
        // A point is a counterexample when it misses `target_margin` (a fixed point margin,
        // not the sub-box's f32 margin, which reflects loose bounds on big boxes: splitting
        // cures that, not repair).
        for x in [x_star, centre] {
            let y = net.forward(&x);
            if chosen_rows
                .iter()
                .any(|&r| options[r].value(&y) < target_margin)
                && !counterexamples.contains(&x)
            {
                counterexamples.push(x);
            }
        }
    }
    Ok(Examination {
        violated,
        counterexamples,
        refine_score,
        worst_gap,
        margin,
        proven_with,
    })
}

/// The dimension with the largest Refine Score (Eq. 9); the widest dimension when every
/// score is zero (a degenerate linear bound).
pub fn split_dimension(sub: &SubProperty, refine_score: &[f64]) -> usize {
    let best = (0..refine_score.len()).max_by(|&a, &b| refine_score[a].total_cmp(&refine_score[b]));
    match best {
        Some(d) if refine_score[d] > 0.0 => d,
        _ => (0..sub.lower.len())
            .max_by(|&a, &b| {
                (sub.upper[a] - sub.lower[a]).total_cmp(&(sub.upper[b] - sub.lower[b]))
            })
            .unwrap_or(0),
    }
}

/// Probe points of a box: the centre, the face centres and the corners (at most 64
/// corners, spread deterministically, for wide inputs).
pub fn probe_points(lower: &[f64], upper: &[f64]) -> Vec<Vec<f64>> {
    let n = lower.len();
    let centre: Vec<f64> = lower
        .iter()
        .zip(upper)
        .map(|(l, u)| 0.5 * (l + u))
        .collect();
    let mut pts = vec![centre.clone()];
    for i in 0..n {
        for v in [lower[i], upper[i]] {
            let mut p = centre.clone();
            p[i] = v;
            pts.push(p);
        }
    }
    let corners: u64 = if n < 6 { 1 << n } else { 64 };
    for k in 0..corners {
        // Corner k: bit i of a hashed k picks lower/upper in dimension i.
        let bits = if n < 6 {
            k
        } else {
            k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        pts.push(
            (0..n)
                .map(|i| {
                    if (bits >> (i % 64)) & 1 == 0 {
                        lower[i]
                    } else {
                        upper[i]
                    }
                })
                .collect(),
        );
    }
    pts
}

/// Choose the desired-set alternatives for a sub-box (see [`super::desired`]): per clause
/// the alternative whose smallest value over the probe points ([`probe_points`]) of the
/// `current` network is largest (the one it comes closest to meeting on the whole
/// sub-box; CROWN bounds of big boxes are too loose to rank alternatives), ties by the
/// `original` network at the centre.
pub fn choose_constraints(
    current: &Network,
    original: &Network,
    desired: &DesiredSet,
    lower: &[f64],
    upper: &[f64],
) -> Result<Vec<Constraint>, RepairError> {
    let options: Vec<Constraint> = desired.all_options().cloned().collect();
    if desired.is_conjunction() {
        return Ok(options);
    }
    let mut worst = vec![f64::INFINITY; options.len()];
    for p in probe_points(lower, upper) {
        let y = current.forward(&p);
        for (w, c) in worst.iter_mut().zip(&options) {
            *w = w.min(c.value(&y));
        }
    }
    let centre: Vec<f64> = lower
        .iter()
        .zip(upper)
        .map(|(l, u)| 0.5 * (l + u))
        .collect();
    let y = original.forward(&centre);
    let centre_values: Vec<f64> = options.iter().map(|c| c.value(&y)).collect();
    Ok(desired.choose(&worst, &centre_values))
}

/// Bisect `sub` at the middle of dimension `dim` (Algorithm 2, lines 14-16); the children
/// re-choose their disjuncts.
pub fn bisect(
    current: &Network,
    original: &Network,
    desired: &DesiredSet,
    sub: &SubProperty,
    dim: usize,
) -> Result<[SubProperty; 2], RepairError> {
    let mid = 0.5 * (sub.lower[dim] + sub.upper[dim]);
    let mut low = sub.clone();
    low.upper[dim] = mid;
    low.depth += 1;
    let mut high = sub.clone();
    high.lower[dim] = mid;
    high.depth += 1;
    low.chosen = choose_constraints(current, original, desired, &low.lower, &low.upper)?;
    high.chosen = choose_constraints(current, original, desired, &high.lower, &high.upper)?;
    Ok([low, high])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dense, Layer};

    #[test]
    fn refine_score_picks_the_dimension_with_most_influence_times_width() {
        // f(x) = 5 x0 + 1 x1 + 0.1 x2 on the box [0,1] x [0,10] x [0,100]: the influence
        // times width is 5, 10, 10.0001 -> dimension 2 ... make it unambiguous:
        // widths 1, 10, 20 give scores 5, 10, 2 -> dimension 1.
        let d = Dense::new(3, 1, vec![5.0, 1.0, 0.1], vec![0.0]).unwrap();
        let net = Network::new(vec![3], vec![Layer::Dense(d)]).unwrap();
        let sub = SubProperty {
            property: 0,
            case: 0,
            lower: vec![0.0, 0.0, 0.0],
            upper: vec![1.0, 10.0, 20.0],
            // Desired f(x) - 100 >= 0: violated on the box (max is 5 + 10 + 2 = 17).
            chosen: vec![Constraint {
                c: vec![1.0],
                d: -100.0,
            }],
            depth: 0,
            version: 0,
        };
        let e = examine(&net, &DesiredSet { clauses: vec![] }, &sub, 1e-6, 1e-6).unwrap();
        assert_eq!(e.violated, vec![0]);
        assert!((e.refine_score[0] - 5.0).abs() < 1e-12);
        assert!((e.refine_score[1] - 10.0).abs() < 1e-12);
        assert!((e.refine_score[2] - 2.0).abs() < 1e-12);
        assert_eq!(split_dimension(&sub, &e.refine_score), 1);
        // The Eq. 8 minimiser is the lower corner, and it is a confirmed counterexample.
        assert_eq!(e.counterexamples[0], vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn proven_when_crown_certifies_the_margin() {
        let d = Dense::new(1, 1, vec![2.0], vec![1.0]).unwrap();
        let net = Network::new(vec![1], vec![Layer::Dense(d)]).unwrap();
        let sub = SubProperty {
            property: 0,
            case: 0,
            lower: vec![0.0],
            upper: vec![1.0],
            chosen: vec![Constraint {
                c: vec![1.0],
                d: -0.5,
            }],
            depth: 0,
            version: 0,
        };
        let e = examine(&net, &DesiredSet { clauses: vec![] }, &sub, 1e-3, 1e-3).unwrap();
        assert!(e.proven() && e.counterexamples.is_empty());
        assert!((e.worst_gap - (1.0 - 0.5 - 1e-3)).abs() < 1e-12);
    }
}
