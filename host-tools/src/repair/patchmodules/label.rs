//! Label-guided indicators (AdvRepair Section 3.1, "untargeted label" and "targeted
//! label"): a module fires where the BASE network's output has a given argmax label
//! ([`Indicator::Label`]) or a given strict top-two pair ([`Indicator::LabelPair`]),
//! evaluated on the input actually presented, exactly as the device does
//! (`core/src/patch/modules.rs`: `argmax` = first index on ties, NaN never wins;
//! `top_two` = `(l0, l1)` only when `y_l0 > y_l1 > y_j` for all other `j`, else no
//! pair module fires).
//!
//! Choice: ONE module per label (per pair). Modules sharing a label would always fire
//! together, so separate per-property modules would have to be trained jointly anyway;
//! one module per label keeps the firing patterns singletons (the argmax, or the strict
//! top two, is unique), which is what the per-pattern proof below checks. The modules are
//! trained jointly over every property: the module for label `l` takes part wherever `l`
//! can be the base's argmax.
//!
//! Proof (sound or silent). On a sub-box, from sound lower bounds of every output
//! difference `y_j - y_l` of the base (CROWN, minus the device's f32 rounding bound of
//! that row) we know pairs `j > l` that hold at every point of the sub-box on the device.
//! Label `l` can be the device argmax only if no `j` is known above it (ties are never
//! excluded, which covers the first-index tie rule); pair `(l0, l1)` can fire only if `l1`
//! is not known above `l0` and no other `j` is known above `l0` or `l1`. A sub-box is
//! proven only if, for EVERY possibly-firing pattern (one module, or none: for pairs,
//! ties make "no module" possible unless one strict pair is known everywhere), base +
//! that module passes the parent's sound check (`sum_check`, with device rounding) on the
//! whole sub-box. Ignoring that a pattern fires only on part of the sub-box is an
//! over-approximation, hence sound. Bisection shrinks the pattern sets.
//!
//! Consequence for the pair form: a robustness box in which the base changes its
//! prediction contains a point where the top two tie (continuity), where the device
//! applies no pair module, so `F = N` there and the tie itself is unsafe for the usual
//! `y_j >= y_t` unsafe set. Such boxes can never be proven with the strict pair rule;
//! the prover reports them as unknown rather than claiming them.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use super::{
    Indicator, Module, ModuleOptions, ModuleOutcome, ModulesRepair, PatchModules, SubBox,
    TrainModule, adam, bisect_box, bisect_dimension, candle, case_rows, check_hidden, conj_ranges,
    last_round, module_box_tensors, module_dims, refine_choice, replace_chosen, rhs_vec, sub_box,
    sum_check, train_epochs, zero_module,
};
use crate::model::Network;
use crate::repair::RepairError;
use crate::verify::Case;

/// Which label-guided indicator form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    /// Untargeted: the module for `l` fires where the base's argmax is `l`.
    Label,
    /// Targeted: the module for `(l0, l1)` fires where the base ranks `l0` first and
    /// `l1` second, strictly.
    LabelPair,
}

/// A firing pattern key: a label, or a pair.
type Key = (usize, usize);

/// Which patterns can fire on a sub-box, from the sound device bounds of the output
/// differences. `above[j * n_out + l]` is true when `y_j > y_l` holds on the device at
/// every point of the sub-box. `None` in the result means "no module fires".
fn possible_keys(kind: LabelKind, above: &[bool], n_out: usize) -> Vec<Option<Key>> {
    let gt = |j: usize, l: usize| above[j * n_out + l];
    let maybe_first = |l: usize| (0..n_out).all(|j| j == l || !gt(j, l));
    match kind {
        LabelKind::Label => (0..n_out)
            .filter(|&l| maybe_first(l))
            .map(|l| Some((l, l)))
            .collect(),
        LabelKind::LabelPair => {
            let mut out = Vec::new();
            for l0 in 0..n_out {
                for l1 in 0..n_out {
                    if l0 == l1 || gt(l1, l0) {
                        continue;
                    }
                    let others_below =
                        (0..n_out).all(|j| j == l0 || j == l1 || (!gt(j, l0) && !gt(j, l1)));
                    if others_below {
                        out.push(Some((l0, l1)));
                    }
                }
            }
            // Exactly one strict top-two known everywhere: no tie is possible, some
            // module always fires. Otherwise a tie (no pair module) cannot be excluded.
            let strict_everywhere = out.len() == 1
                && out[0].is_some_and(|(l0, l1)| {
                    gt(l0, l1) && (0..n_out).all(|j| j == l0 || j == l1 || gt(l1, j))
                });
            if !strict_everywhere {
                out.push(None);
            }
            out
        }
    }
}

/// Rows `e_j - e_l` for every ordered pair `j != l`, row index `j * n_out + l` (the
/// diagonal rows are zero and unused).
fn difference_rows(n_out: usize) -> Vec<Vec<f64>> {
    let mut rows = Vec::with_capacity(n_out * n_out);
    for j in 0..n_out {
        for l in 0..n_out {
            let mut r = vec![0.0; n_out];
            if j != l {
                r[j] += 1.0;
                r[l] -= 1.0;
            }
            rows.push(r);
        }
    }
    rows
}

/// One sub-box of one case with its possible firing patterns.
struct LabelSub {
    case: usize,
    sb: SubBox,
    keys: Vec<Option<Key>>,
}

/// Build a sub-box: base CROWN data for the case rows followed by the difference rows,
/// and the possible patterns (intersected with the parent's, both being supersets).
#[allow(clippy::too_many_arguments)]
fn label_sub(
    base: &Network,
    kind: LabelKind,
    case: usize,
    rows_all: &[Vec<f64>],
    n_case_rows: usize,
    lower: Vec<f64>,
    upper: Vec<f64>,
    parent: Option<&[Option<Key>]>,
) -> Result<LabelSub, RepairError> {
    let n_out = base.output_dim();
    let sb = sub_box(base, rows_all, lower, upper, None)?;
    let above: Vec<bool> = (0..n_out * n_out)
        .map(|k| {
            let (j, l) = (k / n_out, k % n_out);
            let r = n_case_rows + k;
            let lo = sb.base_lower[r];
            let slack = 1e-9 * (1.0 + lo.abs());
            j != l && lo.is_finite() && lo > sb.base_err[r] + slack
        })
        .collect();
    let mut keys = possible_keys(kind, &above, n_out);
    if let Some(p) = parent {
        keys.retain(|k| p.contains(k));
    }
    Ok(LabelSub { case, sb, keys })
}

/// The loss structure of one round: items (a case row under a pattern on a sub-box) and
/// terms (one unsafe conjunction under one pattern on one sub-box: the min over its items).
struct LossPlan {
    /// Per item: index into the stacked module intervals (`pattern * S + s`).
    idx: Tensor,
    cpos: Tensor,
    cneg: Tensor,
    /// Per item: `base_lower - rhs - base_err - margin`.
    konst: Tensor,
    /// `T x kmax` item indices, padding = the item count (a huge hinge).
    terms: Tensor,
    /// Sub-box of each term.
    term_sub: Vec<usize>,
}

fn loss_plan(
    subs: &[LabelSub],
    cases: &[(String, Case)],
    key_index: &BTreeMap<Key, usize>,
    n_modules: usize,
    dev: &Device,
) -> candle_core::Result<LossPlan> {
    let s_count = subs.len();
    let n_out = cases
        .first()
        .and_then(|(_, c)| c.unsafe_set.first())
        .and_then(|c| c.rows.first())
        .map_or(0, |r| r.len());
    let (mut idx, mut cpos, mut cneg, mut konst) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut terms: Vec<Vec<u32>> = Vec::new();
    let mut term_sub = Vec::new();
    for (s, sub) in subs.iter().enumerate() {
        let case = &cases[sub.case].1;
        for key in &sub.keys {
            let p = key.map_or(n_modules, |k| key_index[&k]);
            let mut r = 0;
            for conj in &case.unsafe_set {
                let mut t = Vec::new();
                for (c, rhs) in conj.rows.iter().zip(&conj.rhs) {
                    t.push(idx.len() as u32);
                    idx.push((p * s_count + s) as u32);
                    cpos.extend(c.iter().map(|v| v.max(0.0)));
                    cneg.extend(c.iter().map(|v| v.min(0.0)));
                    konst.push(sub.sb.base_lower[r] - rhs - sub.sb.base_err[r] - sub.sb.margin);
                    r += 1;
                }
                terms.push(t);
                term_sub.push(s);
            }
        }
    }
    let items = idx.len();
    let kmax = terms.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let flat: Vec<u32> = terms
        .iter()
        .flat_map(|t| (0..kmax).map(move |i| t.get(i).copied().unwrap_or(items as u32)))
        .collect();
    Ok(LossPlan {
        idx: Tensor::from_vec(idx, items, dev)?,
        cpos: Tensor::from_vec(cpos, (items, n_out), dev)?,
        cneg: Tensor::from_vec(cneg, (items, n_out), dev)?,
        konst: Tensor::from_vec(konst, items, dev)?,
        terms: Tensor::from_vec(flat, (term_sub.len(), kmax), dev)?,
        term_sub,
    })
}

/// L* per term: `min over the conjunction's rows of relu(-(lower bound - rhs - margins))`.
fn loss_terms(
    plan: &LossPlan,
    tms: &[TrainModule],
    lo: &Tensor,
    hi: &Tensor,
    n_out: usize,
) -> candle_core::Result<Tensor> {
    let s = lo.dim(0)?;
    let mut los = Vec::new();
    let mut his = Vec::new();
    for tm in tms {
        let (l, h) = tm.interval(lo, hi)?;
        los.push(l);
        his.push(h);
    }
    // The "no module" pattern.
    let z = Tensor::zeros((s, n_out), DType::F64, lo.device())?;
    los.push(z.clone());
    his.push(z);
    let lo_all = Tensor::cat(&los, 0)?.index_select(&plan.idx, 0)?;
    let hi_all = Tensor::cat(&his, 0)?.index_select(&plan.idx, 0)?;
    let lower = ((&plan.cpos * lo_all)? + (&plan.cneg * hi_all)?)?.sum(1)?;
    let hinge = (lower + &plan.konst)?.neg()?.relu()?;
    let pad = Tensor::new(&[1e30f64], lo.device())?;
    let hinge = Tensor::cat(&[hinge, pad], 0)?;
    let t = plan.terms.dim(0)?;
    let kmax = plan.terms.dim(1)?;
    hinge
        .index_select(&plan.terms.flatten_all()?, 0)?
        .reshape((t, kmax))?
        .min(1)
}

/// Repair every case with label-guided modules (one per label, or per pair, that can fire
/// on some case box), trained jointly on L* and proven per sub-box and pattern.
pub fn repair_modules_label(
    base: &Network,
    cases: &[(String, Case)],
    options: &ModuleOptions,
    kind: LabelKind,
) -> Result<ModulesRepair, RepairError> {
    check_hidden(options)?;
    if options.feature_layer != 0 {
        // Label modules are trained and proven on the network input only.
        return Err(RepairError::Unsupported(format!(
            "feature layer {}: label-indicator modules read the network input (0)",
            options.feature_layer
        )));
    }
    let start = Instant::now();
    let deadline = start + options.timeout;
    let trace = crate::trace_enabled();
    let dev = Device::Cpu;
    let n = base.input_dim();
    let n_out = base.output_dim();
    if n_out < 2 {
        return Err(RepairError::Unsupported(
            "label indicators need a network with at least two outputs".into(),
        ));
    }
    if cases.is_empty() {
        return Ok(ModulesRepair {
            modules: PatchModules { entries: vec![] },
            outcomes: vec![],
            time_s: 0.0,
        });
    }
    let diff = difference_rows(n_out);
    let mut rows_of = Vec::new();
    let mut rhs_of = Vec::new();
    for (name, c) in cases {
        if c.lower.len() != n
            || c.upper.len() != n
            || c.unsafe_set
                .iter()
                .any(|k| k.rows.iter().any(|r| r.len() != n_out) || k.rows.len() != k.rhs.len())
        {
            return Err(RepairError::Property {
                property: name.clone(),
                problem: format!("does not fit the network ({n} inputs, {n_out} outputs)"),
            });
        }
        if c.unsafe_set.is_empty() || conj_ranges(c).iter().any(|r| r.is_empty()) {
            return Err(RepairError::Property {
                property: name.clone(),
                problem: "an unsafe conjunction without constraints cannot be excluded".into(),
            });
        }
        let mut rows = case_rows(c);
        let rhs = rhs_vec(c);
        let n_case = rows.len();
        rows.extend(diff.iter().cloned());
        rows_of.push((rows, n_case));
        rhs_of.push(rhs);
    }
    let mut subs: Vec<LabelSub> = cases
        .par_iter()
        .enumerate()
        .map(|(i, (_, c))| {
            let (rows, n_case) = &rows_of[i];
            label_sub(
                base,
                kind,
                i,
                rows,
                *n_case,
                c.lower.clone(),
                c.upper.clone(),
                None,
            )
            .map(|mut s| {
                s.sb.margin = options.margin;
                s
            })
        })
        .collect::<Result<_, _>>()?;
    // One module per key that can fire on some case box (sub-boxes only shrink the sets).
    let mut key_index: BTreeMap<Key, usize> = BTreeMap::new();
    for s in &subs {
        for k in s.keys.iter().flatten() {
            let next = key_index.len();
            key_index.entry(*k).or_insert(next);
        }
    }
    let keys: Vec<Key> = {
        let mut v = vec![(0, 0); key_index.len()];
        for (k, &i) in &key_index {
            v[i] = *k;
        }
        v
    };
    let dims = module_dims(n, options, n_out);
    let tms: Vec<TrainModule> = (0..keys.len())
        .map(|i| TrainModule::new(&dims, options.seed.wrapping_add(i as u64), &dev))
        .collect::<Result<_, _>>()?;
    let vars: Vec<Var> = tms
        .iter()
        .flat_map(|t| t.weights.iter().chain(&t.biases).cloned())
        .collect();
    let zero = zero_module(n, n_out).map_err(RepairError::Unsupported)?;
    // Label modules read the input: the module box is the sub-box itself.
    let tensors = |subs: &[LabelSub]| module_box_tensors(subs.iter().map(|b| &b.sb), n, &dev);
    let mut lr = options.learning_rate;
    if options.auto_learning_rate && !subs.is_empty() {
        let (lo, hi) = tensors(&subs)?;
        let plan = loss_plan(&subs, cases, &key_index, keys.len(), &dev).map_err(candle)?;
        let worst = loss_terms(&plan, &tms, &lo, &hi, n_out)
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar::<f64>())
            .map_err(candle)?;
        lr = lr.max(worst / 100.0);
    }
    let mut opt = adam(vars, lr)?;
    let mut rounds = 0;
    let mut loss_now;
    let modules: Vec<Module>;
    let mut proven: Vec<bool>;
    loop {
        rounds += 1;
        let (lo, hi) = tensors(&subs)?;
        let plan = loss_plan(&subs, cases, &key_index, keys.len(), &dev).map_err(candle)?;
        let per_term;
        (per_term, loss_now) = train_epochs(&mut opt, options.epochs, deadline, || {
            loss_terms(&plan, &tms, &lo, &hi, n_out)
        })?;
        let mut per_box = vec![0.0; subs.len()];
        for (t, &s) in plan.term_sub.iter().enumerate() {
            per_box[s] += per_term.get(t).copied().unwrap_or(0.0);
        }
        // Sound check on the f32-rounded modules: every possible pattern, whole sub-box.
        let current: Vec<Module> = tms
            .iter()
            .map(TrainModule::to_module)
            .collect::<Result<_, _>>()?;
        let module_of = |k: &Option<Key>| k.map_or(&zero, |k| &current[key_index[&k]]);
        proven = subs
            .par_iter()
            .map(|b| {
                let (rows, _) = &rows_of[b.case];
                b.keys.iter().all(|k| {
                    sum_check(&b.sb, module_of(k), &cases[b.case].1, rows, &rhs_of[b.case])
                })
            })
            .collect();
        let open: Vec<usize> = (0..subs.len()).filter(|&i| !proven[i]).collect();
        if trace {
            eprintln!(
                "[modules/label] round {rounds}: {} sub-boxes, {} open, {} modules, L* {loss_now:.3e}",
                subs.len(),
                open.len(),
                keys.len()
            );
        }
        if last_round(open.is_empty(), rounds, subs.len(), options, deadline) {
            modules = current;
            break;
        }
        let (zero_loss, chosen) = refine_choice(open, &per_box, subs.len(), options);
        for &i in &zero_loss {
            subs[i].sb.margin *= 4.0;
        }
        if chosen.is_empty() {
            continue;
        }
        let mut halves = Vec::new();
        for &i in &chosen {
            let b = &subs[i];
            let case = &cases[b.case].1;
            let (rows, _) = &rows_of[b.case];
            let c_flat: Vec<f64> = rows.iter().flatten().copied().collect();
            // Score the split with the pattern whose module has the lowest interval
            // bound of a case row on this sub-box (the likeliest to fail).
            let worst = b
                .keys
                .iter()
                .map(&module_of)
                .min_by(|x, y| {
                    let g = |m: &Module| {
                        let (ml, mh) = m.interval(&b.sb.lower, &b.sb.upper);
                        rows.iter()
                            .take(rhs_of[b.case].len())
                            .map(|c| {
                                c.iter()
                                    .zip(ml.iter().zip(&mh))
                                    .map(|(&cv, (&l, &h))| if cv >= 0.0 { cv * l } else { cv * h })
                                    .sum::<f64>()
                            })
                            .fold(f64::INFINITY, f64::min)
                    };
                    g(x).total_cmp(&g(y))
                })
                .unwrap_or(&zero);
            let d = bisect_dimension(
                &b.sb,
                &conj_ranges(case),
                &rhs_of[b.case],
                n,
                worst,
                &c_flat,
            );
            for (l, u) in bisect_box(&b.sb.lower, &b.sb.upper, d) {
                halves.push((b.case, l, u, b.sb.margin, b.keys.clone()));
            }
        }
        let new: Vec<LabelSub> = halves
            .into_par_iter()
            .map(|(c, l, u, m, parent)| {
                let (rows, n_case) = &rows_of[c];
                label_sub(base, kind, c, rows, *n_case, l, u, Some(parent.as_slice())).map(
                    |mut s| {
                        s.sb.margin = m;
                        s
                    },
                )
            })
            .collect::<Result<_, _>>()?;
        subs = replace_chosen(subs, &chosen, new);
    }
    let time_s = start.elapsed().as_secs_f64();
    let outcomes = cases
        .iter()
        .enumerate()
        .map(|(ci, (name, _))| {
            let mine: Vec<usize> = (0..subs.len()).filter(|&i| subs[i].case == ci).collect();
            let ok = mine.iter().filter(|&&i| proven[i]).count();
            ModuleOutcome {
                name: name.clone(),
                status: if ok == mine.len() { "holds" } else { "unknown" },
                sub_boxes: mine.len(),
                proven_sub_boxes: ok,
                rounds,
                loss: loss_now,
                time_s,
                partition: mine
                    .iter()
                    .map(|&i| (subs[i].sb.lower.clone(), subs[i].sb.upper.clone()))
                    .collect(),
            }
        })
        .collect();
    let entries = keys
        .iter()
        .zip(modules)
        .map(|(&(a, b), m)| {
            let ind = match kind {
                LabelKind::Label => Indicator::Label(a),
                LabelKind::LabelPair => Indicator::LabelPair(a, b),
            };
            (ind, m)
        })
        .collect();
    Ok(ModulesRepair {
        modules: PatchModules { entries },
        outcomes,
        time_s,
    })
}

/// The outcome of [`prove_label_cases`].
#[derive(Clone, Debug, PartialEq)]
pub enum LabelProof {
    /// Every case proven on every sub-box for every possible firing pattern.
    Holds {
        /// Sub-boxes of the final partitions.
        sub_boxes: usize,
    },
    /// An input of case `case` where the repaired function (host f64 evaluation) is in the
    /// unsafe set.
    Violated {
        /// Case index.
        case: usize,
        /// The input.
        input: Vec<f64>,
        /// The repaired output there.
        output: Vec<f64>,
    },
    /// Neither (budget, or a patch this prover does not cover).
    Unknown(String),
}

/// Prove `cases` on base + FIXED label-indicator modules (e.g. read back from an exported
/// ONNX graph): the same pattern over-approximation and sound per-sub-box check as the
/// repair, with bisection up to `max_sub_boxes` sub-boxes per case or `deadline`. A
/// failing sub-box's centre is evaluated; if the repaired output is unsafe there, that is
/// a confirmed counterexample. Covers patches with one module per label, or one per pair
/// (what the repair writes): there at most one module fires at any input.
pub fn prove_label_cases(
    base: &Network,
    modules: &PatchModules,
    cases: &[Case],
    max_sub_boxes: usize,
    deadline: Instant,
) -> LabelProof {
    let n = base.input_dim();
    let n_out = base.output_dim();
    let mut key_index: BTreeMap<Key, usize> = BTreeMap::new();
    let mut kinds = (0, 0);
    for (i, (ind, m)) in modules.entries.iter().enumerate() {
        let key = match ind {
            Indicator::Label(l) => {
                kinds.0 += 1;
                (*l, *l)
            }
            Indicator::LabelPair(a, b) => {
                kinds.1 += 1;
                (*a, *b)
            }
            Indicator::Box(_) => {
                return LabelProof::Unknown("a box indicator among label indicators".into());
            }
        };
        if m.input_dim() != n || m.output_dim() != n_out {
            return LabelProof::Unknown(format!("module {i} does not fit the network"));
        }
        if key_index.insert(key, i).is_some() {
            return LabelProof::Unknown(format!(
                "two modules share the rule {key:?}: they fire together, which this prover does not cover"
            ));
        }
    }
    let kind = match kinds {
        (_, 0) => LabelKind::Label,
        (0, _) => LabelKind::LabelPair,
        _ => {
            return LabelProof::Unknown(
                "label and label-pair indicators mixed: modules may fire together, which this prover does not cover"
                    .into(),
            );
        }
    };
    let zero = match zero_module(n, n_out) {
        Ok(m) => m,
        Err(e) => return LabelProof::Unknown(e),
    };
    let module_of = |k: &Option<Key>| {
        k.and_then(|k| key_index.get(&k))
            .map_or(&zero, |&i| &modules.entries[i].1)
    };
    let diff = difference_rows(n_out);
    let mut total = 0;
    for (ci, case) in cases.iter().enumerate() {
        if case.lower.len() != n
            || case.unsafe_set.is_empty()
            || case.unsafe_set.iter().any(|k| {
                k.rows.is_empty()
                    || k.rows.len() != k.rhs.len()
                    || k.rows.iter().any(|r| r.len() != n_out)
            })
        {
            return LabelProof::Unknown(format!("case {ci} does not fit the network"));
        }
        let mut rows = case_rows(case);
        let rhs = rhs_vec(case);
        let n_case = rows.len();
        rows.extend(diff.iter().cloned());
        let c_flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let ranges = conj_ranges(case);
        let mut work = vec![(
            case.lower.clone(),
            case.upper.clone(),
            None::<Vec<Option<Key>>>,
        )];
        let mut done = 0usize;
        while !work.is_empty() {
            if Instant::now() > deadline {
                return LabelProof::Unknown(format!("timeout in case {ci}"));
            }
            if done + work.len() > max_sub_boxes {
                return LabelProof::Unknown(format!(
                    "case {ci}: more than {max_sub_boxes} sub-boxes needed"
                ));
            }
            let batch: Vec<_> = std::mem::take(&mut work);
            let results: Vec<Result<(LabelSub, bool), RepairError>> = batch
                .into_par_iter()
                .map(|(l, u, parent)| {
                    let sub = label_sub(base, kind, ci, &rows, n_case, l, u, parent.as_deref())?;
                    let ok = sub
                        .keys
                        .iter()
                        .all(|k| sum_check(&sub.sb, module_of(k), case, &rows, &rhs));
                    Ok((sub, ok))
                })
                .collect();
            for r in results {
                let (sub, ok) = match r {
                    Ok(v) => v,
                    Err(e) => return LabelProof::Unknown(e.to_string()),
                };
                if ok {
                    done += 1;
                    continue;
                }
                let centre: Vec<f64> = sub
                    .sb
                    .lower
                    .iter()
                    .zip(&sub.sb.upper)
                    .map(|(l, u)| 0.5 * (l + u))
                    .collect();
                let y = modules.eval(base, &centre);
                if case.unsafe_set.iter().any(|c| c.contains(&y)) {
                    return LabelProof::Violated {
                        case: ci,
                        input: centre,
                        output: y,
                    };
                }
                let worst = sub.keys.first().map_or(&zero, module_of);
                let d = bisect_dimension(&sub.sb, &ranges, &rhs, n, worst, &c_flat);
                if sub.sb.upper[d] <= sub.sb.lower[d] {
                    return LabelProof::Unknown(format!(
                        "case {ci}: a point sub-box is not proven"
                    ));
                }
                let mid = 0.5 * (sub.sb.lower[d] + sub.sb.upper[d]);
                let mut u1 = sub.sb.upper.clone();
                u1[d] = mid;
                let mut l2 = sub.sb.lower.clone();
                l2[d] = mid;
                work.push((sub.sb.lower.clone(), u1, Some(sub.keys.clone())));
                work.push((l2, sub.sb.upper.clone(), Some(sub.keys)));
            }
        }
        total += done;
    }
    LabelProof::Holds { sub_boxes: total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;

    fn above_from(y_lo: &[f64], y_hi: &[f64]) -> Vec<bool> {
        let n = y_lo.len();
        (0..n * n)
            .map(|k| {
                let (j, l) = (k / n, k % n);
                j != l && y_lo[j] > y_hi[l]
            })
            .collect()
    }

    #[test]
    fn possible_labels_keep_ties_and_drop_dominated() {
        // y0 in [0, 1], y1 in [0.5, 2], y2 in [3, 4]: only label 2 can be the argmax.
        let a = above_from(&[0.0, 0.5, 3.0], &[1.0, 2.0, 4.0]);
        assert_eq!(possible_keys(LabelKind::Label, &a, 3), vec![Some((2, 2))]);
        // Overlapping ranges: both possible (a tie is possible, the first index wins).
        let a = above_from(&[0.0, 0.5], &[1.0, 2.0]);
        assert_eq!(
            possible_keys(LabelKind::Label, &a, 2),
            vec![Some((0, 0)), Some((1, 1))]
        );
    }

    #[test]
    fn possible_pairs_include_no_module_unless_strict_everywhere() {
        let a = above_from(&[5.0, 3.0, 0.0], &[6.0, 4.0, 1.0]);
        assert_eq!(
            possible_keys(LabelKind::LabelPair, &a, 3),
            vec![Some((0, 1))]
        );
        let a = above_from(&[5.0, 3.0, 0.0], &[6.0, 4.0, 3.5]);
        assert_eq!(
            possible_keys(LabelKind::LabelPair, &a, 3),
            vec![Some((0, 1)), Some((0, 2)), None]
        );
    }

    #[test]
    fn patterns_cover_the_device_rule_on_samples() {
        // Random intervals and points inside them: the device's pattern is always listed.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..2000 {
            let n = 4;
            let lo: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let hi: Vec<f64> = lo.iter().map(|l| l + rng.random_range(0.0..1.5)).collect();
            let y: Vec<f32> = lo
                .iter()
                .zip(&hi)
                .map(|(l, h)| {
                    // Sometimes exactly a corner, to exercise ties.
                    if rng.random_bool(0.3) {
                        *l as f32
                    } else {
                        rng.random_range(*l..=*h) as f32
                    }
                })
                .collect();
            let (lo, hi): (Vec<f64>, Vec<f64>) = y
                .iter()
                .zip(lo.iter().zip(&hi))
                .map(|(&v, (&l, &h))| (l.min(v as f64), h.max(v as f64)))
                .unzip();
            let a = above_from(&lo, &hi);
            let yd: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            let labels = possible_keys(LabelKind::Label, &a, n);
            let first = (0..n).fold(0, |b, i| if yd[i] > yd[b] { i } else { b });
            assert!(labels.contains(&Some((first, first))));
            assert!(Indicator::Label(first).fires(&[], &yd));
            let pairs = possible_keys(LabelKind::LabelPair, &a, n);
            let fired: Vec<Option<Key>> = (0..n)
                .flat_map(|a| (0..n).map(move |b| (a, b)))
                .filter(|&(a, b)| a != b && Indicator::LabelPair(a, b).fires(&[], &yd))
                .map(Some)
                .collect();
            assert!(fired.len() <= 1);
            assert!(
                pairs.contains(fired.first().unwrap_or(&None)),
                "{yd:?} {pairs:?}"
            );
        }
    }

    /// Base with exact f32 arithmetic on the grid below: `y0 = x0`, `y1 = x1`,
    /// `y2 = (x0 + x1) / 4`, so `x0 == x1` gives an exact tie of labels 0 and 1.
    fn tie_base() -> Network {
        use crate::model::Layer;
        Network::new(
            vec![2],
            vec![
                Layer::Dense(Dense::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![8.0, 8.0]).unwrap()),
                Layer::Relu,
                Layer::Dense(
                    Dense::new(
                        2,
                        3,
                        vec![1.0, 0.0, 0.0, 1.0, 0.25, 0.25],
                        vec![-8.0, -8.0, -4.0],
                    )
                    .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    fn random_module(seed: u64) -> Module {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v = |k: usize| -> Vec<f64> {
            (0..k)
                .map(|_| rng.random_range(-1.0f32..1.0) as f64)
                .collect()
        };
        Module {
            layers: vec![
                Dense::new(2, 4, v(8), v(4)).unwrap(),
                Dense::new(4, 3, v(12), v(3)).unwrap(),
            ],
            feature_layer: 0,
        }
    }

    #[test]
    fn exported_label_graph_equals_the_device_core() {
        let base = tie_base();
        let pm = PatchModules {
            entries: vec![
                (Indicator::Label(0), random_module(1)),
                (Indicator::Label(2), random_module(2)),
                (Indicator::LabelPair(1, 0), random_module(3)),
                (Indicator::LabelPair(0, 2), random_module(4)),
            ],
        };
        let emitted = crate::patch::modules::emit(&base, &pm, 1, &[]).unwrap();
        assert_eq!(
            crate::patch::modules::read(&base, &emitted.bytes).unwrap(),
            pm
        );
        let dir = std::env::temp_dir();
        let path = dir.join(format!("prorepair-label-base-{}.onnx", std::process::id()));
        std::fs::write(&path, crate::export::to_onnx_bytes(&base, None).unwrap()).unwrap();
        let graph = crate::patch::modules::load_tract(&path, &emitted.bytes, "t").unwrap();
        let _ = std::fs::remove_file(&path);
        // A quarter-step grid (exact in f32): many exact ties (x0 == x1, and all three at
        // the origin), points where each rule fires and where none does.
        let mut inputs = Vec::new();
        for a in -8..=8 {
            for b in -8..=8 {
                inputs.push(vec![a as f32 * 0.25, b as f32 * 0.25]);
            }
        }
        let device = crate::patch::modules::eval_device(&base, &emitted.bytes, &inputs).unwrap();
        let mut fired = [0usize; 4];
        for (x, yd) in inputs.iter().zip(&device) {
            let yt = graph.run(x).unwrap();
            let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let y0 = base.forward(&xf);
            let yh = pm.eval(&base, &xf);
            for (k, (ind, _)) in pm.entries.iter().enumerate() {
                fired[k] += usize::from(ind.fires(&xf, &y0));
            }
            for k in 0..3 {
                assert!(
                    (yd[k] - yt[k]).abs() <= 1e-5,
                    "core {yd:?} vs tract {yt:?} at {x:?}"
                );
                assert!(
                    (yd[k] as f64 - yh[k]).abs() <= 1e-4,
                    "core {yd:?} vs host {yh:?} at {x:?}"
                );
            }
        }
        // The exported graph reads back strictly as the same modules; a changed
        // comparison is a clear error naming the file and the node.
        let onnx = crate::patch::modules::to_onnx(&base, &pm, None).unwrap();
        let path = dir.join(format!("prorepair-label-graph-{}.onnx", std::process::id()));
        std::fs::write(&path, &onnx).unwrap();
        let pw = crate::import::piecewise::load(&path).unwrap();
        assert_eq!(pw.modules, pm);
        use prost::Message;
        let mut proto = tract_onnx::pb::ModelProto::decode(onnx.as_slice()).unwrap();
        let node = proto
            .graph
            .as_mut()
            .unwrap()
            .node
            .iter_mut()
            .find(|n| n.op_type == "GreaterOrEqual")
            .unwrap();
        node.op_type = "LessOrEqual".into();
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        let err = crate::import::piecewise::load(&path)
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains("prorepair-label-graph") && err.contains("LessOrEqual"),
            "{err}"
        );
        // Every rule fires somewhere and not everywhere.
        for (k, &f) in fired.iter().enumerate() {
            assert!(
                f > 0 && f < inputs.len(),
                "entry {k} fired on {f} of {}",
                inputs.len()
            );
        }
    }
}
