//! Verification of a piecewise model (base network plus box-indicator patch modules,
//! [`crate::import::piecewise::Piecewise`]) by cell decomposition.
//!
//! Each case box is split along the indicator boxes' faces into closed cells, each with
//! a fixed set of active modules ([`cells`]). The indicator is `lower <= x <= upper`
//! (closed: a point on a face is inside). For every box `B` in turn, a cell `C` that
//! straddles it becomes `C ∩ B` (closed, `B` active) plus the closures of the pieces of
//! `C \ B` (`B` inactive). Every point `x` of the case box then lies in a cell whose
//! active set is exactly the boxes containing `x` (by induction over the boxes: `x ∈ B`
//! puts it in `C ∩ B`, `x ∉ B` in a piece of `C \ B`); the closures add face points
//! that are verified with the inactive network too, which only asks more. Where two
//! boxes share a face, the degenerate cell on the face carries both modules.
//!
//! On a cell the model is the straight-line network `N + sum of the active modules`
//! ([`combined_network`], exact in real arithmetic on the cell; nested once per active
//! module), or `N` itself when none is active, and [`super::verify_cases`] decides it.
//! "Holds" needs every cell to hold, and on a cell with modules also a second, bisection
//! proof ([`device_sound_cell`]) whose margins exceed the device's f32 rounding bound of
//! the piecewise graph as it runs (base, each module, each addition: the derivation of
//! the patch-module repair's sound check) on every sub-box, since the combined network's
//! own rounding bound describes a different evaluation order. A counterexample of a cell is reported only after the piecewise
//! model's own forward pass confirms it (a face point may belong to another cell's
//! active set). Too many cells (over `max_cells`) is "unknown".
//!
//! The graph decides the indicator on its f32 input, exactly (the corners are f32). A real
//! input of the case box reaches the graph rounded to f32, which may lie just outside the
//! box (by rounding monotonicity, never outside the box rounded outward to f32), so the
//! cells cover the case box rounded outward: the cell holding the f32 input, with its
//! exact active set, covers it, and no input rounding can select a module the proof did
//! not consider there. A counterexample is reported only inside the case box itself.

use std::time::{Duration, Instant};

use super::{Case, Options, Report, Stats, Verdict};
use crate::bounds::BoxBounds;
use crate::import::piecewise::Piecewise;
use crate::model::Network;
use crate::repair::patchmodules::{
    Indicator, combined_network, f32_down, f32_up, feature_layer_index, module_f32_error,
    module_f32_error_from,
};

/// Default cap on the number of cells per case.
pub const MAX_CELLS: usize = 4096;

/// A closed cell of a case box with the modules active on it (by index).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Lower corner.
    pub lower: Vec<f64>,
    /// Upper corner.
    pub upper: Vec<f64>,
    /// Indices of the boxes (modules) active on the cell.
    pub active: Vec<usize>,
}

/// Split `[lower, upper]` into closed cells on which the closed boxes `boxes` are each
/// either active or not (see the module docs). `Err(n)` when more than `max_cells` cells
/// would be needed (`n` cells found so far).
pub fn cells(
    lower: &[f64],
    upper: &[f64],
    boxes: &[&BoxBounds],
    max_cells: usize,
) -> Result<Vec<Cell>, usize> {
    let mut done = Vec::new();
    // (cell, next box to look at)
    let mut stack = vec![(
        Cell {
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            active: Vec::new(),
        },
        0usize,
    )];
    while let Some((mut cell, mut i)) = stack.pop() {
        loop {
            let Some(b) = boxes.get(i) else {
                done.push(cell);
                break;
            };
            let n = cell.lower.len();
            let disjoint = (0..n).any(|j| b.upper[j] < cell.lower[j] || b.lower[j] > cell.upper[j]);
            let inside = (0..n).all(|j| b.lower[j] <= cell.lower[j] && cell.upper[j] <= b.upper[j]);
            if disjoint {
                i += 1;
                continue;
            }
            if inside {
                cell.active.push(i);
                i += 1;
                continue;
            }
            // Straddles: the closures of C \ B (B inactive), then C ∩ B (B active).
            let (mut lo, mut hi) = (cell.lower.clone(), cell.upper.clone());
            for j in 0..n {
                if lo[j] < b.lower[j] {
                    let mut piece_hi = hi.clone();
                    piece_hi[j] = b.lower[j];
                    stack.push((
                        Cell {
                            lower: lo.clone(),
                            upper: piece_hi,
                            active: cell.active.clone(),
                        },
                        i + 1,
                    ));
                    lo[j] = b.lower[j];
                }
                if hi[j] > b.upper[j] {
                    let mut piece_lo = lo.clone();
                    piece_lo[j] = b.upper[j];
                    stack.push((
                        Cell {
                            lower: piece_lo,
                            upper: hi.clone(),
                            active: cell.active.clone(),
                        },
                        i + 1,
                    ));
                    hi[j] = b.upper[j];
                }
            }
            cell.lower = lo;
            cell.upper = hi;
            cell.active.push(i);
            i += 1;
            if done.len() + stack.len() + 1 > max_cells {
                return Err(done.len() + stack.len() + 1);
            }
        }
    }
    if done.len() > max_cells {
        return Err(done.len());
    }
    Ok(done)
}

/// A piecewise verification report: the verdict and statistics over all cells.
#[derive(Debug, Clone, PartialEq)]
pub struct PiecewiseReport {
    /// Verdict and statistics (summed over the cells; `f32_error_bound` the largest).
    pub report: Report,
    /// Cells verified (or found before the cap).
    pub cells: usize,
    /// Cells on which at least one module is active.
    pub cells_with_modules: usize,
}

/// The device's f32 rounding bound of every unsafe row `c_k . F(x)` on a cell with the
/// modules `active`: base rows as `verify` bounds them, each module (inputs rounded
/// too), and one f32 addition per active module.
fn device_row_errors(
    pw: &Piecewise,
    active: &[usize],
    lower: &[f64],
    upper: &[f64],
    base_bounds: Option<Vec<(Vec<f64>, Vec<f64>)>>,
    rows: &[Vec<f64>],
) -> Vec<f64> {
    use super::rounding::{self, U32};
    let base = &pw.base;
    let bounds = match base_bounds {
        Some(b) if b.len() == base.layers.len() + 1 => b,
        _ => rounding::interval_bounds(base, lower, upper),
    };
    let elem = rounding::f32_error_bound_from(base, &bounds);
    let mut errs = rounding::spec_error_bounds(base, &bounds, rows).unwrap_or_else(|| {
        rows.iter()
            .map(|r| r.iter().zip(&elem).map(|(c, e)| c.abs() * e).sum())
            .collect()
    });
    let (out_lo, out_hi) = bounds.last().cloned().unwrap_or_default();
    let mut total_abs: Vec<f64> = out_lo
        .iter()
        .zip(&out_hi)
        .zip(&elem)
        .map(|((l, u), e)| l.abs().max(u.abs()) + e)
        .collect();
    let mut module_errs = vec![0.0; total_abs.len()];
    for &i in active {
        let m = &pw.modules.entries[i].1;
        // A module at a feature layer reads the base's f32 activation there: its exact
        // range and its device error come from the base's bounds on this box.
        let (e, a) = match feature_layer_index(base, m.feature_layer) {
            Some(at) if at + 2 <= bounds.len() => {
                let (flo, fhi) = &bounds[at + 1];
                let ferr = match base.slice(0, at + 1) {
                    Ok(prefix) => rounding::f32_error_bound_from(&prefix, &bounds[..at + 2]),
                    Err(_) => vec![f64::INFINITY; flo.len()],
                };
                module_f32_error_from(m, flo, fhi, ferr)
            }
            _ => module_f32_error(m, lower, upper),
        };
        for j in 0..total_abs.len() {
            module_errs[j] += e.get(j).copied().unwrap_or(f64::INFINITY);
            total_abs[j] += a.get(j).copied().unwrap_or(f64::INFINITY);
        }
    }
    // Each addition rounds a partial sum no larger in magnitude than the total bound.
    let adds = active.len() as f64;
    for (r, err) in rows.iter().zip(errs.iter_mut()) {
        for (j, c) in r.iter().enumerate() {
            *err += c.abs() * (module_errs[j] + adds * U32 * (1.0 + U32) * total_abs[j]);
        }
    }
    errs
}

/// The device-rounding proof of a cell with modules, by bisection: on every sub-box,
/// each unsafe conjunction has a row whose CROWN lower bound on the cell network, minus
/// the right-hand side, exceeds the device's f32 rounding bound of that row on the
/// sub-box ([`device_row_errors`], base magnitudes from the base's CROWN layer bounds)
/// plus an f64 slack. Undecided sub-boxes are split along the dimension of largest
/// `width * sum |CROWN coefficient|` over the open rows. `Ok(sub-boxes)` when every
/// sub-box is done; `Err(why)` at the deadline, the sub-box cap, or a failing bound.
fn device_sound_cell(
    pw: &Piecewise,
    net: &Network,
    cell: &Cell,
    case: &Case,
    deadline: Instant,
    max_boxes: usize,
) -> Result<usize, String> {
    use super::bab::engine_for;
    let rows: Vec<Vec<f64>> = case
        .unsafe_set
        .iter()
        .flat_map(|c| c.rows.iter().cloned())
        .collect();
    let rhs: Vec<f64> = case
        .unsafe_set
        .iter()
        .flat_map(|c| c.rhs.iter().copied())
        .collect();
    let engine = engine_for(net, super::Method::Complete);
    let base_engine = engine_for(&pw.base, super::Method::Complete);
    let mut stack = vec![(cell.lower.clone(), cell.upper.clone())];
    let mut count = 0usize;
    while let Some((lo, hi)) = stack.pop() {
        if Instant::now() >= deadline {
            return Err(format!("timeout after {count} sub-boxes"));
        }
        count += 1;
        if count > max_boxes {
            return Err(format!("more than {max_boxes} sub-boxes"));
        }
        let b = engine.spec_lower(&lo, &hi, &rows)?;
        let base_bounds = base_engine.spec_lower(&lo, &hi, &rows)?.layer_bounds;
        let errs = device_row_errors(pw, &cell.active, &lo, &hi, Some(base_bounds), &rows);
        let mut r0 = 0;
        let mut open_rows = Vec::new();
        for conj in &case.unsafe_set {
            let rs = r0..r0 + conj.rows.len();
            r0 += conj.rows.len();
            let excluded = rs.clone().any(|r| {
                let gap = b.lower[r] - rhs[r];
                let slack = 1e-9 * (1.0 + b.lower[r].abs() + rhs[r].abs());
                gap.is_finite() && gap > errs[r] + slack
            });
            if !excluded {
                open_rows.extend(rs);
            }
        }
        if open_rows.is_empty() {
            continue;
        }
        let score = |d: usize| -> f64 {
            let w = hi[d] - lo[d];
            match &b.coeffs {
                Some(a) => w * open_rows.iter().map(|&r| a[r][d].abs()).sum::<f64>(),
                None => w,
            }
        };
        let Some(d) = (0..lo.len())
            .filter(|&d| hi[d] > lo[d])
            .max_by(|&x, &y| score(x).total_cmp(&score(y)))
        else {
            return Err("a point sub-box is not excluded".into());
        };
        let mid = 0.5 * (lo[d] + hi[d]);
        let (mut hi_a, mut lo_b) = (hi.clone(), lo.clone());
        hi_a[d] = mid;
        lo_b[d] = mid;
        stack.push((lo, hi_a));
        stack.push((lo_b, hi));
    }
    Ok(count)
}

/// Sub-boxes per cell at most in the device-rounding proof.
const MAX_DEVICE_BOXES: usize = 50_000;

/// Decide `cases` on the piecewise model `pw` (see the module docs). Budget:
/// `options.timeout` for everything, shared out over the cells still to do.
pub fn verify_piecewise(
    pw: &Piecewise,
    cases: &[Case],
    options: &Options,
    max_cells: usize,
) -> PiecewiseReport {
    let start = Instant::now();
    let deadline = start + options.timeout;
    let mut stats = Stats::default();
    let boxes: Vec<&BoxBounds> = pw
        .modules
        .entries
        .iter()
        .filter_map(|(ind, _)| match ind {
            Indicator::Box(b) => Some(b),
            _ => None,
        })
        .collect();
    let finish = |verdict: Verdict, mut stats: Stats, cells: usize, with: usize| {
        stats.time_s = start.elapsed().as_secs_f64();
        PiecewiseReport {
            report: Report { verdict, stats },
            cells,
            cells_with_modules: with,
        }
    };
    if boxes.len() != pw.modules.entries.len() {
        // Label indicators: no cells (the rule depends on the base output); the pattern
        // over-approximation of the label repair's proof instead.
        use crate::repair::patchmodules::{LabelProof, prove_label_cases};
        let verdict = match prove_label_cases(&pw.base, &pw.modules, cases, 50_000, deadline) {
            LabelProof::Holds { sub_boxes } => {
                stats.branches += sub_boxes as u64;
                Verdict::Holds
            }
            LabelProof::Violated {
                case,
                input,
                output,
            } => Verdict::Violated {
                counterexample: input,
                output,
                case,
            },
            LabelProof::Unknown(reason) => Verdict::Unknown {
                reason: format!("label indicators: {reason}"),
            },
        };
        let n = pw.modules.entries.len();
        return finish(verdict, stats, 0, n);
    }
    if let Some(ci) = cases.iter().position(|c| {
        boxes
            .iter()
            .any(|b| b.lower.len() != c.lower.len() || b.upper.len() != c.lower.len())
    }) {
        return finish(
            Verdict::Unknown {
                reason: format!("case {ci}: an indicator box does not have the input's length"),
            },
            stats,
            0,
            0,
        );
    }
    let mut all: Vec<(usize, Cell)> = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let lower: Vec<f64> = case.lower.iter().map(|&v| f32_down(v)).collect();
        let upper: Vec<f64> = case.upper.iter().map(|&v| f32_up(v)).collect();
        match cells(&lower, &upper, &boxes, max_cells) {
            Ok(cs) => all.extend(cs.into_iter().map(|c| (ci, c))),
            Err(n) => {
                return finish(
                    Verdict::Unknown {
                        reason: format!(
                            "too many cells: case {ci} needs more than {max_cells} (at least {n})"
                        ),
                    },
                    stats,
                    n,
                    0,
                );
            }
        }
    }
    let with_modules = all.iter().filter(|(_, c)| !c.active.is_empty()).count();
    let total = all.len();
    let mut undecided: Option<String> = None;
    for (k, (ci, cell)) in all.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            undecided.get_or_insert_with(|| format!("timeout after {k} of {total} cells"));
            break;
        }
        let share = (deadline - now).div_f64((total - k) as f64);
        let case = Case {
            lower: cell.lower.clone(),
            upper: cell.upper.clone(),
            unsafe_set: cases[*ci].unsafe_set.clone(),
        };
        let net = match cell_network(pw, cell) {
            Ok(n) => n,
            Err(e) => {
                undecided.get_or_insert(format!("cell {k}: {e}"));
                continue;
            }
        };
        let cell_options = Options {
            timeout: share.max(Duration::from_millis(1)),
            progress: None,
            ..options.clone()
        };
        let r = super::verify_cases(&net, std::slice::from_ref(&case), &cell_options);
        let s = &r.stats;
        stats.branches += s.branches;
        stats.falsification_s += s.falsification_s;
        stats.max_depth = stats.max_depth.max(s.max_depth);
        if let Some(m) = s.min_certified_margin {
            stats.min_certified_margin =
                Some(stats.min_certified_margin.map_or(m, |x: f64| x.min(m)));
        }
        stats.f32_error_bound = stats.f32_error_bound.max(s.f32_error_bound);
        match r.verdict {
            Verdict::Holds if cell.active.is_empty() => {}
            Verdict::Holds => {
                // Real arithmetic holds; now the margins against the rounding of the graph
                // as it runs, with the rest of this cell's share (at least a quarter of it,
                // within the total budget).
                let cell_deadline = (now + share)
                    .max(Instant::now() + share / 4)
                    .min(deadline.max(Instant::now() + Duration::from_millis(1)));
                match device_sound_cell(pw, &net, cell, &case, cell_deadline, MAX_DEVICE_BOXES) {
                    Ok(n) => stats.branches += n as u64,
                    Err(why) => {
                        undecided.get_or_insert(format!(
                            "cell {k}: holds in real arithmetic, but the margin over the f32 \
                             rounding of base + modules is not shown ({why})"
                        ));
                    }
                }
            }
            Verdict::Violated { counterexample, .. } => {
                let y = pw.forward(&counterexample);
                let own = &cases[*ci];
                let inside = super::in_box(&counterexample, &own.lower, &own.upper);
                if inside && case.unsafe_set.iter().any(|c| c.contains(&y)) {
                    return finish(
                        Verdict::Violated {
                            counterexample,
                            output: y,
                            case: *ci,
                        },
                        stats,
                        total,
                        with_modules,
                    );
                }
                undecided.get_or_insert(if inside {
                    format!(
                        "cell {k}: a counterexample of the cell's network is not one of the \
                         piecewise model (a face point decided by another indicator)"
                    )
                } else {
                    format!("cell {k}: unsafe only at the f32 rounding of the case box's edge")
                });
            }
            Verdict::Unknown { reason } => {
                undecided.get_or_insert(format!("cell {k} of {total}: {reason}"));
            }
        }
        if let Some(pb) = &options.progress {
            pb.set_position((1000 * (k + 1) / total.max(1)) as u64);
        }
    }
    let verdict = match undecided {
        Some(reason) => Verdict::Unknown { reason },
        None => Verdict::Holds,
    };
    finish(verdict, stats, total, with_modules)
}

/// The straight-line network equal to the piecewise model on `cell`. Modules at the
/// deepest feature layer are combined first: [`combined_network`] keeps the base's layers
/// up to a feature layer unchanged, so a later module's (shallower or input) layer is
/// still the base's there.
fn cell_network(pw: &Piecewise, cell: &Cell) -> Result<Network, String> {
    let domain = BoxBounds::new(cell.lower.clone(), cell.upper.clone());
    let mut net = pw.base.clone();
    let mut order = cell.active.clone();
    order.sort_by_key(|&i| std::cmp::Reverse(pw.modules.entries[i].1.feature_layer));
    for &i in &order {
        net =
            combined_network(&net, &pw.modules.entries[i].1, &domain).map_err(|e| e.to_string())?;
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dense, Layer};
    use crate::repair::patchmodules::{Module, PatchModules};
    use crate::verify::Conj;
    use rand::{Rng, SeedableRng};

    fn bx(lo: &[f64], hi: &[f64]) -> BoxBounds {
        BoxBounds::new(lo.to_vec(), hi.to_vec())
    }

    fn inside(b: &BoxBounds, x: &[f64]) -> bool {
        x.iter()
            .zip(b.lower.iter().zip(&b.upper))
            .all(|(v, (l, u))| l <= v && v <= u)
    }

    /// Every point (random, and on the faces and corners of the boxes) lies in a cell whose
    /// active set is exactly the set of boxes containing it.
    #[test]
    fn every_point_has_a_cell_with_its_exact_active_set() {
        let boxes = [
            bx(&[0.0, 0.0], &[0.5, 1.0]),
            bx(&[0.5, 0.0], &[1.0, 0.5]),
            bx(&[0.25, 0.25], &[0.75, 0.75]),
            bx(&[0.9, 0.9], &[2.0, 2.0]),
            bx(&[-1.0, 0.3], &[0.3, 0.3]),
        ];
        let refs: Vec<&BoxBounds> = boxes.iter().collect();
        let cs = cells(&[0.0, 0.0], &[1.0, 1.0], &refs, 10_000).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let grid = [0.0, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0];
        let mut points: Vec<[f64; 2]> = (0..2000)
            .map(|_| [rng.random_range(0.0..=1.0), rng.random_range(0.0..=1.0)])
            .collect();
        for &a in &grid {
            for &b in &grid {
                points.push([a, b]);
            }
        }
        for x in points {
            let want: Vec<usize> = (0..boxes.len())
                .filter(|&i| inside(&boxes[i], &x))
                .collect();
            let ok = cs.iter().any(|c| {
                let mut a = c.active.clone();
                a.sort_unstable();
                a == want && inside(&bx(&c.lower, &c.upper), &x)
            });
            assert!(ok, "{x:?} (active {want:?}) has no cell");
        }
        // The shared face x0 = 0.5 of boxes 0 and 1 gets a cell with both.
        assert!(cs.iter().any(|c| {
            let mut a = c.active.clone();
            a.sort_unstable();
            a == [0, 1]
        }));
    }

    #[test]
    fn too_many_cells_is_reported() {
        let boxes: Vec<BoxBounds> = (0..40)
            .map(|i| {
                let t = i as f64 / 40.0;
                bx(&[t, t, t], &[t + 0.01, t + 0.01, t + 0.01])
            })
            .collect();
        let refs: Vec<&BoxBounds> = boxes.iter().collect();
        assert!(cells(&[0.0; 3], &[1.0; 3], &refs, 50).is_err());
    }

    /// `y = x0 + x1` on [0, 1]^2 with two modules adding constants on the halves
    /// `x0 <= 0.5` and `x0 >= 0.5`: on the shared face both add up.
    fn two_halves(c0: f64, c1: f64) -> Piecewise {
        let base = Network::new(
            vec![2],
            vec![Layer::Dense(
                Dense::new(2, 1, vec![1.0, 1.0], vec![0.0]).unwrap(),
            )],
        )
        .unwrap();
        let constant = |c: f64| Module {
            feature_layer: 0,
            layers: vec![
                Dense::new(2, 1, vec![0.0, 0.0], vec![0.0]).unwrap(),
                Dense::new(1, 1, vec![0.0], vec![c]).unwrap(),
            ],
        };
        Piecewise {
            base,
            modules: PatchModules {
                entries: vec![
                    (Indicator::Box(bx(&[0.0, 0.0], &[0.5, 1.0])), constant(c0)),
                    (Indicator::Box(bx(&[0.5, 0.0], &[1.0, 1.0])), constant(c1)),
                ],
            },
        }
    }

    fn y_at_least(t: f64) -> Vec<Case> {
        vec![Case {
            lower: vec![0.0, 0.0],
            upper: vec![1.0, 1.0],
            unsafe_set: vec![Conj {
                rows: vec![vec![-1.0]],
                rhs: vec![-t],
            }],
        }]
    }

    fn opts() -> Options {
        Options {
            timeout: Duration::from_secs(20),
            threads: Some(1),
            ..Options::default()
        }
    }

    #[test]
    fn the_shared_face_sums_both_modules() {
        // max F off the face: 0.5 + 1 + 1 = 2.5 (left) or 2 + 1 = 3 (right); on the face
        // x0 = 0.5: 1.5 + 2 = 3.5. So y >= 3.2 is reachable only on the face.
        let pw = two_halves(1.0, 1.0);
        let r = verify_piecewise(&pw, &y_at_least(3.2), &opts(), MAX_CELLS);
        let Verdict::Violated {
            counterexample,
            output,
            ..
        } = &r.report.verdict
        else {
            panic!("{r:?}")
        };
        assert_eq!(counterexample[0], 0.5);
        assert_eq!(output, &pw.forward(counterexample));
        assert!(output[0] >= 3.2);
        // y >= 3.6 is unreachable everywhere, face included.
        let r = verify_piecewise(&pw, &y_at_least(3.6), &opts(), MAX_CELLS);
        assert_eq!(r.report.verdict, Verdict::Holds, "{r:?}");
        assert!(r.cells >= 3, "{r:?}");
        // The straight-line base alone reaches only 2.
        let r = verify_piecewise(
            &Piecewise {
                base: pw.base.clone(),
                modules: PatchModules { entries: vec![] },
            },
            &y_at_least(2.1),
            &opts(),
            MAX_CELLS,
        );
        assert_eq!(r.report.verdict, Verdict::Holds, "{r:?}");
    }

    #[test]
    fn a_module_the_rounded_input_reaches_is_in_the_proof() {
        // The case box ends at 0.1; the right module's box starts at f32(0.1), just above
        // it. The real input 0.1 reaches the device as f32(0.1), where the module adds 10,
        // so "holds" would be wrong; the point lies outside the case box, so it is not a
        // counterexample either: unknown.
        let start = f64::from(0.1f32);
        assert!(start > 0.1);
        let mut pw = two_halves(0.0, 10.0);
        pw.modules.entries.truncate(1);
        let right = Module {
            feature_layer: 0,
            layers: vec![
                Dense::new(2, 1, vec![0.0, 0.0], vec![0.0]).unwrap(),
                Dense::new(1, 1, vec![0.0], vec![10.0]).unwrap(),
            ],
        };
        pw.modules.entries[0].0 = Indicator::Box(bx(&[start, 0.0], &[1.0, 1.0]));
        pw.modules.entries[0].1 = right;
        let mut cases = y_at_least(5.0);
        cases[0].upper = vec![0.1, 1.0];
        let r = verify_piecewise(&pw, &cases, &opts(), MAX_CELLS);
        match &r.report.verdict {
            Verdict::Unknown { reason } => assert!(reason.contains("f32 rounding"), "{reason}"),
            v => panic!("{v:?}"),
        }
        // One f32 step higher, no input of the case box reaches the box: it holds.
        pw.modules.entries[0].0 =
            Indicator::Box(bx(&[f64::from(0.1f32.next_up()), 0.0], &[1.0, 1.0]));
        let r = verify_piecewise(&pw, &cases, &opts(), MAX_CELLS);
        assert_eq!(r.report.verdict, Verdict::Holds, "{r:?}");
    }

    #[test]
    fn a_cap_of_one_cell_is_unknown() {
        let pw = two_halves(1.0, 1.0);
        let r = verify_piecewise(&pw, &y_at_least(3.6), &opts(), 1);
        match &r.report.verdict {
            Verdict::Unknown { reason } => assert!(reason.contains("too many cells"), "{reason}"),
            v => panic!("{v:?}"),
        }
    }
}
