//! Verification of VNN-LIB properties: falsification, sound bounds, branch and bound.
//!
//! [`verify`] decides whether a [`Property`] holds on a [`Network`]:
//!
//! 1. **Falsification** ([`falsify`]): seeded sampling of every input box (centre, corners,
//!    random points), then PGD with candle gradients on the most promising points,
//!    minimising the worst constraint margin of each unsafe conjunction. A counterexample
//!    is reported only after the plain f64 forward pass confirms it.
//! 2. **Sound bounds** ([`BoundEngine`]): for each conjunction `∧_k c_k·y <= rhs_k` of the
//!    unsafe set, the spec rows `c_k` are bounded directly (CROWN bounds `c_k·y`, not
//!    `y`). The conjunction is excluded on a box if some `min c_k·y - rhs_k` exceeds the
//!    required margin.
//! 3. **Branch and bound** ([`bab`]): input splitting, best-first on the most negative
//!    gap. For the first half of the budget the split dimension is chosen by bounding both
//!    halves of every candidate dimension ([`bab::SplitRule::Halves`]); if undecided, the
//!    same search goes on with the largest refine score ([`bab::SplitRule::Smear`],
//!    ProRepair Eq. 9: width times the summed `|linear coefficient|` of the not-yet-excluded
//!    constraints). Dense/ReLU chains with few inputs (ACAS Xu) bound their intermediate
//!    layers forward symbolically and run backward CROWN only for the neurons left
//!    unstable ([`crate::bounds::DenseReluChain::forward_intermediate`]). Falsification on every sub-box (centre and the minimisers of the linear
//!    lower bounds, also of every evaluated half), in parallel with rayon. A sub-box is
//!    done only on a sound bound ([`leaf_holds`] is that test on its own).
//!
//! "Holds" additionally requires every certified margin `min c_k·y - rhs_k` to exceed a
//! sound bound on the f32 rounding error of `c_k·y` in the device evaluation on that
//! sub-box ([`rounding::spec_error_bounds`] for Dense/ReLU networks, `|c_k|·E` with
//! [`rounding::f32_error_bound`] otherwise), plus `1e-9 (1 + |rhs_k| + |bound|)` for the
//! f64 rounding of the bound computation itself (not rounded outward by the bounds
//! module). Otherwise the answer is "unknown".

pub mod bab;
pub mod falsify;
pub mod piecewise;
pub mod rounding;

pub use bab::leaf_holds;

use std::time::{Duration, Instant};

use crate::model::Network;
use crate::spec::Property;

/// How to bound the unsafe set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// One interval-bound (IBP) pass after falsification (incomplete).
    Ibp,
    /// One CROWN pass after falsification (incomplete).
    Crown,
    /// One alpha-CROWN pass after falsification (incomplete).
    AlphaCrown,
    /// Falsification, then branch and bound with CROWN until the timeout.
    #[default]
    Complete,
}

impl Method {
    /// Lower-case name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ibp => "ibp",
            Method::Crown => "crown",
            Method::AlphaCrown => "alpha-crown",
            Method::Complete => "complete",
        }
    }
}

/// Verification options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bounding method.
    pub method: Method,
    /// Wall-clock budget for the whole run.
    pub timeout: Duration,
    /// Worker threads for branch and bound (`None`: rayon's default, all cores).
    pub threads: Option<usize>,
    /// Seed of the falsification RNG.
    pub seed: u64,
    /// Progress bar to update (the CLI passes one on a terminal only).
    pub progress: Option<indicatif::ProgressBar>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            method: Method::Complete,
            timeout: Duration::from_secs(60),
            threads: None,
            seed: 0,
            progress: None,
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No input of any case box reaches the unsafe set (sound bound, with the f32 margin).
    Holds,
    /// A confirmed counterexample.
    Violated {
        /// The input (flattened).
        counterexample: Vec<f64>,
        /// The f64 forward-pass output at that input, which satisfies the conjunction.
        output: Vec<f64>,
        /// Index of the case (input box) it belongs to.
        case: usize,
    },
    /// Undecided (timeout, incomplete method, or margin below the f32 error bound).
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// `"holds"`, `"violated"` or `"unknown"`.
    pub fn status(&self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Violated { .. } => "violated",
            Verdict::Unknown { .. } => "unknown",
        }
    }
}

/// Run statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Total wall-clock time in seconds.
    pub time_s: f64,
    /// Seconds spent in the initial falsification.
    pub falsification_s: f64,
    /// Sub-boxes bounded (branch-and-bound nodes).
    pub branches: u64,
    /// Deepest split level reached.
    pub max_depth: usize,
    /// Smallest certified margin `min c·y - rhs` over the excluded (sub-box, conjunction)
    /// pairs, when any.
    pub min_certified_margin: Option<f64>,
    /// Largest bound on the f32 rounding error of an unsafe-constraint row `c·y` over a
    /// whole case box (the margin a certificate must exceed there).
    pub f32_error_bound: f64,
}

/// Verdict plus statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Statistics.
    pub stats: Stats,
}

/// Errors that prevent verification from starting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    /// The property's variable counts do not match the network.
    #[error(
        "the property has {prop_in} inputs and {prop_out} outputs, the network {net_in} and {net_out}"
    )]
    Mismatch {
        /// Property inputs.
        prop_in: usize,
        /// Property outputs.
        prop_out: usize,
        /// Network inputs.
        net_in: usize,
        /// Network outputs.
        net_out: usize,
    },
    /// A case box or constraint has the wrong length or a NaN / inverted interval.
    #[error("case {case}: {problem}")]
    BadCase {
        /// Case index.
        case: usize,
        /// What is wrong.
        problem: String,
    },
}

/// One unsafe conjunction `∧_k rows[k]·y <= rhs[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conj {
    /// Constraint coefficient rows, one per constraint, each of output length.
    pub rows: Vec<Vec<f64>>,
    /// Right-hand sides.
    pub rhs: Vec<f64>,
}

impl Conj {
    /// `max_k (rows[k]·y - rhs[k])`: `<= 0` iff `y` satisfies the conjunction (is unsafe).
    /// NaN when any row is NaN (an output that overflowed), so that no comparison with it
    /// holds.
    pub fn worst_margin(&self, y: &[f64]) -> f64 {
        self.rows
            .iter()
            .zip(&self.rhs)
            .map(|(r, b)| r.iter().zip(y).map(|(c, v)| c * v).sum::<f64>() - b)
            .fold(f64::NEG_INFINITY, |a, v| {
                if a.is_nan() || v.is_nan() {
                    f64::NAN
                } else {
                    a.max(v)
                }
            })
    }

    /// True when `y` is unsafe for certain: every constraint holds strictly. The file's
    /// `<` and `<=` are both read as `<=` (the unsafe set over-approximated, which keeps
    /// "holds" sound); a counterexample must then avoid the ties a strict `<` excludes.
    pub fn contains(&self, y: &[f64]) -> bool {
        self.worst_margin(y) < 0.0
    }
}

/// One case of a property in the verifier's form: an input box and a disjunction of
/// unsafe conjunctions.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Box lower corner.
    pub lower: Vec<f64>,
    /// Box upper corner.
    pub upper: Vec<f64>,
    /// The unsafe set: a disjunction of conjunctions.
    pub unsafe_set: Vec<Conj>,
}

/// True when `x` lies in the box `[lower, upper]` (bounds included).
pub fn in_box(x: &[f64], lower: &[f64], upper: &[f64]) -> bool {
    x.iter()
        .zip(lower.iter().zip(upper))
        .all(|(v, (l, u))| l <= v && v <= u)
}

/// Convert and check a property against the network's dimensions.
pub fn cases_of(net: &Network, property: &Property) -> Result<Vec<Case>, VerifyError> {
    let (net_in, net_out) = (net.input_dim(), net.output_dim());
    if property.n_inputs != net_in || property.n_outputs != net_out {
        return Err(VerifyError::Mismatch {
            prop_in: property.n_inputs,
            prop_out: property.n_outputs,
            net_in,
            net_out,
        });
    }
    let mut cases = Vec::new();
    for (i, c) in property.cases.iter().enumerate() {
        let bad = |problem: String| VerifyError::BadCase { case: i, problem };
        let (lower, upper) = (c.input.lower.clone(), c.input.upper.clone());
        if lower.len() != net_in || upper.len() != net_in {
            return Err(bad(format!(
                "box has {}/{} bounds, expected {net_in}",
                lower.len(),
                upper.len()
            )));
        }
        if let Some(j) = (0..net_in)
            .find(|&j| !lower[j].is_finite() || !upper[j].is_finite() || lower[j] > upper[j])
        {
            return Err(bad(format!(
                "input {j}: interval [{}, {}] is empty or not finite",
                lower[j], upper[j]
            )));
        }
        let mut unsafe_set = Vec::new();
        for conj in &c.unsafe_set {
            let mut rows = Vec::new();
            let mut rhs = Vec::new();
            for lc in &conj.constraints {
                if !lc.rhs.is_finite() || lc.coeffs.iter().any(|c| !c.is_finite()) {
                    return Err(bad(
                        "a constraint has a coefficient or bound that is not finite".into(),
                    ));
                }
                if lc.coeffs.len() != net_out {
                    return Err(bad(format!(
                        "a constraint has {} coefficients, expected {net_out}",
                        lc.coeffs.len()
                    )));
                }
                rows.push(lc.coeffs.clone());
                rhs.push(lc.rhs);
            }
            unsafe_set.push(Conj { rows, rhs });
        }
        cases.push(Case {
            lower,
            upper,
            unsafe_set,
        });
    }
    Ok(cases)
}

/// candle asks for the thread count on every matrix product and, unless
/// `RAYON_NUM_THREADS` is set, re-reads /proc/cpuinfo each time (a fifth of the time of a
/// PGD run): set it once, to the worker count (`None`: all cores), unless already set.
///
/// # Safety
/// Changes the process environment: call it before any other thread that could read or
/// write the environment exists (e.g. first thing in `main`).
pub unsafe fn cache_thread_count(threads: Option<usize>) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // SAFETY: the caller guarantees that no other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
}

/// Decide `property` on `net` (see the module docs for the procedure and its guarantees).
pub fn verify(
    net: &Network,
    property: &Property,
    options: &Options,
) -> Result<Report, VerifyError> {
    let cases = cases_of(net, property)?;
    Ok(verify_cases(net, &cases, options))
}

/// [`verify`] on cases already in the verifier's form.
///
/// Order: sampling (cheap), then branch and bound, whose first node is one bound pass
/// over each case box (easy properties end there), with PGD rounds interleaved while they
/// cost less than a tenth of the elapsed time. Everything runs in a pool of
/// `options.threads` workers.
pub fn verify_cases(net: &Network, cases: &[Case], options: &Options) -> Report {
    let run = || verify_in_pool(net, cases, options);
    match rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads.unwrap_or(0))
        .build()
    {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    }
}

/// Share of the budget branch and bound splits by bounding the halves
/// ([`bab::SplitRule::Halves`]) before it goes on with the same open sub-boxes by smear.
/// Measured (`examples/bab_profile.rs`): going on instead of restarting decides N4,9
/// property 1 in 3.8 s (unknown at 10 s with a restart), and a larger share proves
/// lifted property-2 networks that 0.3 leaves open.
const HALVES_SHARE: f64 = 0.5;

/// The earliest smear takes over from the halves (with [`HALVES_MIN_BRANCHES`] done;
/// at [`HALVES_SHARE`] of the budget in any case). Measured (BENCHMARKS.md, Repair,
/// session 11): with half of a 60 s budget, 8 of the 39 repaired prop_2 networks took
/// 35-41 s, finishing just after the switch; switching at 5 s proves them in 6-12 s. On
/// VNN-COMP ACAS Xu (116 s budgets) it decides N1,1 property 5 (82 s; unknown before) and
/// cuts property 9 from 66 s to 6 s, the other properties unchanged. Switching at 2 s is
/// too early: repaired N3,9 and N4,9 stay unknown at 60 s. Still needed beside
/// `bab::HALVES_MAX_DEPTH` (session 12: without it, saved N4,8 takes 29.5 s, not 8.1 s).
const HALVES_MAX: Duration = Duration::from_secs(5);

/// Sub-boxes bounded by halves before smear may take over after [`HALVES_MAX`] (about
/// 5 s of work on this 2-core machine when it is not loaded): on a loaded machine the
/// switch waits for the work, up to half the budget.
const HALVES_MIN_BRANCHES: u64 = 10_000;

fn verify_in_pool(net: &Network, cases: &[Case], options: &Options) -> Report {
    let start = Instant::now();
    let deadline = start + options.timeout;
    let mut stats = Stats::default();
    let engine = bab::engine_for(net, options.method);
    let finish = |verdict: Verdict, mut stats: Stats| {
        stats.time_s = start.elapsed().as_secs_f64();
        Report { verdict, stats }
    };

    // 1. Falsification by sampling.
    let mut rng = falsify::rng(options.seed);
    let starts = match bab::sample_cases(net, cases, &mut rng) {
        Ok(v) => {
            stats.falsification_s = start.elapsed().as_secs_f64();
            return finish(v, stats);
        }
        Err(starts) => starts,
    };
    let mut falsifier = bab::Falsifier::new(rng, starts);
    stats.falsification_s = start.elapsed().as_secs_f64();

    // 2./3. Bounds, then branch and bound (with PGD in turn): first splitting by bounding
    // the halves, then, if undecided after HALVES_SHARE of the budget, by smear on the
    // same open sub-boxes (see bab::SplitRule: each decides instances the other does not
    // within the budget).
    let complete = options.method == Method::Complete;
    let switch = complete.then(|| {
        let latest = start + options.timeout.mul_f64(HALVES_SHARE);
        bab::Switch {
            at: (start + HALVES_MAX).min(latest),
            min_branches: HALVES_MIN_BRANCHES,
            latest,
            rule: bab::SplitRule::Smear,
        }
    });
    let search = bab::Search {
        engine: engine.as_ref(),
        complete,
        deadline,
        split: bab::SplitRule::Halves,
        switch,
    };
    let verdict = bab::branch_and_bound(
        net,
        cases,
        &search,
        options,
        &mut stats,
        Some(&mut falsifier),
    );
    // Incomplete methods still get a short PGD search before answering "unknown".
    let verdict = match verdict {
        Verdict::Unknown { reason } if !complete => {
            let budget = options.timeout.mul_f64(0.05).min(Duration::from_secs(3));
            match bab::falsify_cases(net, cases, options.seed, Instant::now() + budget) {
                Some(v) => v,
                None => Verdict::Unknown { reason },
            }
        }
        v => v,
    };
    finish(verdict, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dense, Layer};

    /// `y = relu(x0 - x1) - relu(x1 - x0) = x0 - x1` on R^2, and `y2 = relu(x0) + relu(x1)`.
    fn small_net() -> Network {
        let d1 = Dense::new(
            2,
            4,
            vec![1.0, -1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 1.0],
            vec![0.0; 4],
        )
        .unwrap();
        let d2 = Dense::new(
            4,
            2,
            vec![1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
            vec![0.0; 2],
        )
        .unwrap();
        Network::new(
            vec![2],
            vec![Layer::Dense(d1), Layer::Relu, Layer::Dense(d2)],
        )
        .unwrap()
    }

    fn case(rows: Vec<Vec<f64>>, rhs: Vec<f64>) -> Vec<Case> {
        vec![Case {
            lower: vec![-1.0, -1.0],
            upper: vec![1.0, 1.0],
            unsafe_set: vec![Conj { rows, rhs }],
        }]
    }

    fn opts(method: Method) -> Options {
        Options {
            method,
            timeout: Duration::from_secs(20),
            threads: Some(2),
            ..Options::default()
        }
    }

    #[test]
    fn holds_when_unsafe_set_is_out_of_reach() {
        // y0 = x0 - x1 <= 2 on the box, so y0 >= 2.5 (-y0 <= -2.5) is unreachable.
        let r = verify_cases(
            &small_net(),
            &case(vec![vec![-1.0, 0.0]], vec![-2.5]),
            &opts(Method::Complete),
        );
        assert_eq!(r.verdict, Verdict::Holds, "{r:?}");
        assert!(r.stats.min_certified_margin.is_some_and(|m| m > 0.0));
    }

    #[test]
    fn violated_comes_with_a_confirmed_counterexample() {
        // y0 >= 1.9 and y1 <= 2.1: reachable near x = (1, -0.95).
        let cases = case(vec![vec![-1.0, 0.0], vec![0.0, 1.0]], vec![-1.9, 2.1]);
        let net = small_net();
        let r = verify_cases(&net, &cases, &opts(Method::Complete));
        let Verdict::Violated {
            counterexample,
            output,
            case,
        } = r.verdict
        else {
            panic!("{r:?}")
        };
        assert_eq!(case, 0);
        assert_eq!(net.forward(&counterexample), output);
        assert!(cases[0].unsafe_set[0].contains(&output));
    }

    #[test]
    fn a_counterexample_needs_every_constraint_strictly_and_no_nan() {
        // y0 >= y1 (as -y0 + y1 <= 0): a tie is outside the strict reading `>`, so it is
        // no counterexample; an overflowed output (NaN) is none either.
        let conj = Conj {
            rows: vec![vec![-1.0, 1.0]],
            rhs: vec![0.0],
        };
        assert!(conj.contains(&[2.0, 1.0]));
        assert!(!conj.contains(&[1.0, 1.0]));
        assert!(!conj.contains(&[1.0, 2.0]));
        assert!(!conj.contains(&[f64::NAN, 1.0]));
        assert!(!conj.contains(&[f64::INFINITY, f64::INFINITY]));
        // A NaN row is not hidden behind a safe one either.
        let two = Conj {
            rows: vec![vec![0.0, 1.0], vec![-1.0, 0.0]],
            rhs: vec![5.0, 0.0],
        };
        assert!(two.worst_margin(&[f64::NAN, 1.0]).is_nan());
    }

    #[test]
    fn constraints_that_are_not_finite_are_refused() {
        let mut p = crate::spec::vnnlib::parse_str(
            "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\
             (declare-const Y_1 Real)(assert (>= X_0 -1))(assert (<= X_0 1))\
             (assert (>= X_1 -1))(assert (<= X_1 1))(assert (>= Y_0 Y_1))",
            std::path::Path::new("t.vnnlib"),
        )
        .unwrap();
        assert!(cases_of(&small_net(), &p).is_ok());
        p.cases[0].unsafe_set[0].constraints[0].rhs = f64::INFINITY;
        let err = cases_of(&small_net(), &p).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }

    #[test]
    fn branch_and_bound_proves_what_one_pass_cannot() {
        // y1 = relu(x0) + relu(x1) >= 0 everywhere; y1 <= -0.01 unreachable. y0 + y1 =
        // x0 - x1 + relu(x0) + relu(x1) >= -2: the unsafe set y0 + y1 <= -2.2 needs the
        // relaxation of two unstable ReLUs to be refined by splitting.
        let cases = case(vec![vec![1.0, 1.0]], vec![-1.99]);
        let net = small_net();
        let complete = verify_cases(&net, &cases, &opts(Method::Complete));
        assert_eq!(complete.verdict, Verdict::Holds, "{complete:?}");
        let ibp = verify_cases(&net, &cases, &opts(Method::Ibp));
        assert!(matches!(ibp.verdict, Verdict::Unknown { .. }), "{ibp:?}");
    }

    #[test]
    fn tiny_margins_below_the_f32_error_bound_are_unknown() {
        // y0 >= 2 is reached only at the corner (1, -1); y0 >= 2 + 1e-12 is unreachable in
        // exact arithmetic but closer than the f32 rounding error: never "holds".
        let cases = case(vec![vec![-1.0, 0.0]], vec![-(2.0 + 1e-12)]);
        let mut o = opts(Method::Complete);
        o.timeout = Duration::from_secs(3);
        let r = verify_cases(&small_net(), &cases, &o);
        assert!(matches!(r.verdict, Verdict::Unknown { .. }), "{r:?}");
    }
}
