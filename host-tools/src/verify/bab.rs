//! Falsification driver and branch and bound over input boxes.
//!
//! The bounding step is abstracted as a [`BoundEngine`]: sound lower bounds of `C f(x)`
//! over a box for a spec matrix `C` (one row per unsafe constraint), optionally with the
//! linear lower-bound coefficients `A` (`A x + c <= C f(x)` on the box) that drive the
//! refine score and the candidate counterexamples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use super::falsify::{self, CandleNet};
use super::{Case, Conj, Method, Options, Stats, Verdict, rounding};
use crate::bounds;
use crate::model::Network;

/// Sound lower bounds of spec rows over a box.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecLower {
    /// `lower[k] <= min_x rows[k]·f(x)` over the box.
    pub lower: Vec<f64>,
    /// Linear lower-bound coefficients `A` (one row of input length per spec row) with
    /// `A x + c <= C f(x)` on the box, when the method has them (not IBP).
    pub coeffs: Option<Vec<Vec<f64>>>,
    /// The constants `c` of those linear lower bounds, with `coeffs`.
    pub consts: Option<Vec<f64>>,
    /// Sound bounds of every layer's input and of the output (`layers + 1` pairs) used by
    /// the relaxation, for the f32 error bound.
    pub layer_bounds: Vec<(Vec<f64>, Vec<f64>)>,
}

/// A sound bounding method for spec rows over input boxes.
pub trait BoundEngine: Sync {
    /// Method name, for reports.
    fn name(&self) -> &'static str;
    /// Sound lower bounds of `rows[k]·f(x)` for `x` in `[lower, upper]`.
    fn spec_lower(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
    ) -> Result<SpecLower, String>;
    /// [`Self::spec_lower`] given sound bounds `prior` of the layer inputs over a box
    /// containing this one (entries may be empty); engines may intersect with them.
    fn spec_lower_within(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
        _prior: Option<&[bounds::BoxBounds]>,
    ) -> Result<SpecLower, String> {
        self.spec_lower(lower, upper, rows)
    }
    /// The tightest layer bounds this engine has over the box (for the magnitudes of the
    /// f32 rounding-error bound), when they differ from `spec_lower`'s; `None` otherwise.
    fn tight_layer_bounds(
        &self,
        _lower: &[f64],
        _upper: &[f64],
        _prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Vec<(Vec<f64>, Vec<f64>)>> {
        None
    }
    /// Cheaper, possibly looser, sound bounds whose linear lower bounds still point at
    /// candidate counterexamples: for the halves that are bounded only for their
    /// minimisers' checks, not as split candidates (`None`: [`Self::spec_lower_within`]).
    fn spec_lower_probe(
        &self,
        _lower: &[f64],
        _upper: &[f64],
        _rows: &[Vec<f64>],
        _prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Result<SpecLower, String>> {
        None
    }
    /// Cheaper, possibly looser, sound bounds for ranking candidate splits, when the
    /// engine has them (`None`: rank with [`Self::spec_lower_within`]).
    fn spec_lower_rank(
        &self,
        _lower: &[f64],
        _upper: &[f64],
        _rows: &[Vec<f64>],
        _prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Result<SpecLower, String>> {
        None
    }
}

/// Interval bound propagation: `min c·y` from the output intervals.
#[derive(Debug)]
pub struct IbpEngine<'a> {
    /// The network.
    pub net: &'a Network,
}

impl BoundEngine for IbpEngine<'_> {
    fn name(&self) -> &'static str {
        "ibp"
    }

    fn spec_lower(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
    ) -> Result<SpecLower, String> {
        let b = rounding::interval_bounds(self.net, lower, upper);
        let (l, u) = b.last().ok_or("empty bounds")?;
        let lower = rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(j, &c)| if c >= 0.0 { c * l[j] } else { c * u[j] })
                    .sum()
            })
            .collect();
        Ok(SpecLower {
            lower,
            coeffs: None,
            consts: None,
            layer_bounds: b,
        })
    }
}

/// CROWN-family bounds of the spec rows through [`bounds::linear_bounds`] (the spec
/// matrix is bounded directly, which is much tighter than combining output bounds).
/// Dense/ReLU networks take the [`bounds::DenseReluChain`] fast path, prepared once.
#[derive(Debug)]
pub struct LinearEngine<'a> {
    /// The network.
    pub net: &'a Network,
    /// `Crown` or `AlphaCrown`.
    pub method: bounds::Method,
    chain: Option<bounds::DenseReluChain<'a>>,
    /// The chain with forward-only intermediate bounds (few inputs), for the halves
    /// bounded only for their minimisers (and for ranking splits with
    /// [`RANK_FORWARD_ONLY`]).
    forward_only: Option<bounds::DenseReluChain<'a>>,
}

impl<'a> LinearEngine<'a> {
    /// An engine for `net` with `method`.
    pub fn new(net: &'a Network, method: bounds::Method) -> Self {
        Self::with_forward(net, method, FORWARD)
    }

    /// [`Self::new`] with forward intermediate bounds on or off (off: dense CROWN, the
    /// numbers the repair loop's own sub-box proofs use).
    fn with_forward(net: &'a Network, method: bounds::Method, forward: bool) -> Self {
        let chain = matches!(method, bounds::Method::Crown | bounds::Method::CrownPure)
            .then(|| bounds::DenseReluChain::new(net, 0, net.layers.len()))
            .flatten()
            .map(|c| c.sparse_intermediate(SPARSE).forward_intermediate(forward));
        let forward_only = chain
            .as_ref()
            .filter(|c| c.forward_enabled())
            .map(|c| c.clone().forward_only(true));
        Self {
            net,
            method,
            chain,
            forward_only,
        }
    }
}

impl BoundEngine for LinearEngine<'_> {
    fn name(&self) -> &'static str {
        match self.method {
            bounds::Method::Ibp => "ibp",
            bounds::Method::CrownPure => "crown-pure",
            bounds::Method::Crown => "crown",
            bounds::Method::AlphaCrown => "alpha-crown",
        }
    }

    fn spec_lower(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
    ) -> Result<SpecLower, String> {
        self.spec_lower_within(lower, upper, rows, None)
    }

    /// Sparse intermediate bounds leave stable neurons with interval bounds, whose
    /// magnitudes inflate the f32 error bound: the dense pass gives CROWN's. Forward
    /// intermediate bounds leave stable neurons with looser forward intervals: the same.
    fn tight_layer_bounds(
        &self,
        lower: &[f64],
        upper: &[f64],
        prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Vec<(Vec<f64>, Vec<f64>)>> {
        // Forward intermediate bounds leave stable neurons with the forward intervals,
        // looser than CROWN's on deep layers: the same inflation.
        let forward = self.chain.as_ref().is_some_and(|c| c.forward_enabled());
        if !SPARSE && !forward {
            return None;
        }
        let chain = self
            .chain
            .clone()?
            .sparse_intermediate(false)
            .forward_intermediate(false);
        let input = bounds::BoxBounds::new(lower.to_vec(), upper.to_vec());
        let out = chain.output_dim();
        let spec: Vec<f64> = (0..out).map(|j| if j == 0 { 1.0 } else { 0.0 }).collect();
        let b = chain
            .linear_bounds_within(&input, &spec, 1, self.method, prior)
            .ok()?;
        Some(
            b.layer_bounds
                .into_iter()
                .map(|bb| (bb.lower, bb.upper))
                .collect(),
        )
    }

    fn spec_lower_rank(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
        prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Result<SpecLower, String>> {
        // The same forward-only bounds as the probes, when ranking with them is on.
        if !RANK_FORWARD_ONLY {
            return None;
        }
        self.spec_lower_probe(lower, upper, rows, prior)
    }

    fn spec_lower_probe(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
        prior: Option<&[bounds::BoxBounds]>,
    ) -> Option<Result<SpecLower, String>> {
        let chain = self.forward_only.as_ref()?;
        Some(self.spec_lower_chain(Some(chain), lower, upper, rows, prior))
    }

    fn spec_lower_within(
        &self,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
        prior: Option<&[bounds::BoxBounds]>,
    ) -> Result<SpecLower, String> {
        self.spec_lower_chain(self.chain.as_ref(), lower, upper, rows, prior)
    }
}

impl LinearEngine<'_> {
    /// [`BoundEngine::spec_lower_within`] through `chain` (the generic engine if `None`).
    fn spec_lower_chain(
        &self,
        chain: Option<&bounds::DenseReluChain<'_>>,
        lower: &[f64],
        upper: &[f64],
        rows: &[Vec<f64>],
        prior: Option<&[bounds::BoxBounds]>,
    ) -> Result<SpecLower, String> {
        let input = bounds::BoxBounds::new(lower.to_vec(), upper.to_vec());
        let spec = rows.concat();
        let b = match chain {
            Some(chain) => {
                chain.linear_bounds_within(&input, &spec, rows.len(), self.method, prior)
            }
            None => bounds::linear_bounds(
                self.net,
                0,
                self.net.layers.len(),
                &input,
                Some(&spec),
                rows.len(),
                self.method,
            ),
        }
        .map_err(|e| e.to_string())?;
        let coeffs = b
            .a_lower
            .chunks(b.cols.max(1))
            .map(<[f64]>::to_vec)
            .collect();
        let layer_bounds = b
            .layer_bounds
            .into_iter()
            .map(|bb| (bb.lower, bb.upper))
            .collect();
        Ok(SpecLower {
            lower: b.lower,
            coeffs: Some(coeffs),
            consts: Some(b.c_lower),
            layer_bounds,
        })
    }
}

/// Most of the wall time the whole-box PGD of [`Falsifier::step`] may take in branch and
/// bound (it runs between batches, on one thread). It was 1/10: on repaired ACAS Xu
/// networks, where the property holds, that was ~10% of every proof (release build, 2
/// threads: N4,5 1.08 -> 0.96 s with it off); the counterexamples it finds after the
/// initial sampling are rare, and PGD on open sub-boxes and the minimisers' checks go on
/// (VNN-COMP ACAS Xu: the same instances violated, BENCHMARKS.md, session 12).
const FALSIFIER_SHARE: f64 = 0.05;

/// Sparse intermediate bounds in branch and bound: off. Measured on ACAS Xu prop 1 they
/// are cheaper per sub-box but lose the IBP intersection of stable neurons, and the
/// looser relaxations cost more sub-boxes than they save (N1,3 prop 1: holds after 1965
/// sub-boxes in 4 s dense, unknown after 116 s sparse).
const SPARSE: bool = false;

/// Forward symbolic intermediate bounds with backward CROWN only for the neurons they
/// leave unstable ([`bounds::DenseReluChain::forward_intermediate`]; used only on inputs
/// of at most 32 dimensions). Spec bounds about as tight as dense CROWN's (usually
/// tighter, on a few boxes looser), cheaper per sub-box (~1.2x on ACAS Xu, measured).
const FORWARD: bool = true;

/// Rank candidate splits with forward-only intermediate bounds (no backward pass for any
/// intermediate neuron), then bound only the chosen halves fully. Off: measured on the
/// VNN-COMP ACAS Xu set (BENCHMARKS.md, session 5) it makes a Halves branch ~1.5x cheaper
/// and property 1 ~1.2-1.6x faster, but the looser ranking picks much worse splits on
/// some instances (N5,1 property 3: 179 -> 65,651 sub-boxes; N1,3 property 1: 135 ->
/// 1,539), and the whole set took longer.
const RANK_FORWARD_ONLY: bool = false;

/// The bounding engine for a method (`Complete` bounds sub-boxes with CROWN).
pub fn engine_for(net: &Network, method: Method) -> Box<dyn BoundEngine + '_> {
    match method {
        Method::Ibp => Box::new(IbpEngine { net }),
        Method::Crown | Method::Complete => Box::new(LinearEngine::new(net, bounds::Method::Crown)),
        Method::AlphaCrown => Box::new(LinearEngine::new(net, bounds::Method::AlphaCrown)),
    }
}

/// Seeded sampling of every case box (centre, corners, random points). Returns a
/// violated verdict with a forward-pass-confirmed counterexample, or for every
/// (case, conjunction) in order the best inputs as PGD starts.
pub fn sample_cases(
    net: &Network,
    cases: &[Case],
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Verdict, Vec<Vec<Vec<f64>>>> {
    let mut starts = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let n_random = if net.input_dim() <= 16 { 2000 } else { 200 };
        let pts = falsify::sample_points(rng, &case.lower, &case.upper, n_random);
        let outs: Vec<Vec<f64>> = pts.par_iter().map(|x| net.forward(x)).collect();
        for conj in &case.unsafe_set {
            let mut scored: Vec<(f64, &Vec<f64>)> = Vec::new();
            for (x, y) in pts.iter().zip(&outs) {
                let m = conj.worst_margin(y);
                // `Conj::contains`, on the margin already at hand.
                if m < 0.0 {
                    return Ok(violated(x.clone(), y.clone(), ci));
                }
                scored.push((m, x));
            }
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            starts.push(scored.iter().take(12).map(|(_, x)| (*x).clone()).collect());
        }
    }
    Err(starts)
}

/// Round-robin PGD over every (case, conjunction): round 0 descends from the sampled
/// `starts`, later rounds from fresh random points.
#[derive(Debug)]
pub struct Falsifier {
    rng: rand_chacha::ChaCha8Rng,
    starts: Vec<Vec<Vec<f64>>>,
    next: usize,
    round: usize,
}

impl Falsifier {
    /// A falsifier continuing from [`sample_cases`]' starts.
    pub fn new(rng: rand_chacha::ChaCha8Rng, starts: Vec<Vec<Vec<f64>>>) -> Self {
        Self {
            rng,
            starts,
            next: 0,
            round: 0,
        }
    }

    /// One PGD attempt on the next (case, conjunction); a confirmed counterexample or `None`.
    pub fn step(&mut self, net: &Network, cnet: &CandleNet, cases: &[Case]) -> Option<Verdict> {
        let pairs: Vec<(usize, usize)> = cases
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.unsafe_set.len()).map(move |k| (ci, k)))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let idx = self.next % pairs.len();
        let (ci, k) = pairs[idx];
        let case = &cases[ci];
        let pts: Vec<Vec<f64>> = if self.round == 0 {
            self.starts.get(idx).cloned().unwrap_or_default()
        } else {
            (0..32)
                .map(|_| falsify::random_point(&mut self.rng, &case.lower, &case.upper))
                .collect()
        };
        self.next += 1;
        if self.next.is_multiple_of(pairs.len()) {
            self.round += 1;
        }
        let a = falsify::pgd(
            cnet,
            net,
            &case.lower,
            &case.upper,
            &case.unsafe_set[k],
            &pts,
            100,
        )
        .ok()?;
        a.found.map(|(x, y)| violated(x, y, ci))
    }
}

/// Sampling then PGD on every case and conjunction until `deadline`. Returns a violated
/// verdict with a forward-pass-confirmed counterexample, or `None`.
pub fn falsify_cases(
    net: &Network,
    cases: &[Case],
    seed: u64,
    deadline: Instant,
) -> Option<Verdict> {
    let mut rng = falsify::rng(seed);
    let starts = match sample_cases(net, cases, &mut rng) {
        Ok(v) => return Some(v),
        Err(starts) => starts,
    };
    let Ok(cnet) = CandleNet::new(net) else {
        return None;
    };
    let mut f = Falsifier::new(rng, starts);
    let pairs: usize = cases.iter().map(|c| c.unsafe_set.len()).sum();
    for _ in 0..64 * pairs.max(1) {
        if Instant::now() >= deadline {
            return None;
        }
        if let Some(v) = f.step(net, &cnet, cases) {
            return Some(v);
        }
    }
    None
}

fn violated(counterexample: Vec<f64>, output: Vec<f64>, case: usize) -> Verdict {
    Verdict::Violated {
        counterexample,
        output,
        case,
    }
}

/// An open sub-box and the conjunctions not yet excluded on it.
#[derive(Debug, Clone)]
struct Domain {
    lower: Vec<f64>,
    upper: Vec<f64>,
    active: Vec<usize>,
    depth: usize,
    /// The parent's bounds of the ReLU inputs (sound on this sub-box too), shared by the
    /// two children; other entries empty.
    prior: Option<std::sync::Arc<Vec<bounds::BoxBounds>>>,
    /// This box's own bounds of the rows of `active`, when the parent already computed
    /// them while choosing its split (see [`choose_split`]).
    pre: Option<std::sync::Arc<SpecLower>>,
    /// The parent's worst open gap (`min` over open conjunctions of the best `lower - rhs`
    /// of their constraints): the most negative is explored first, where a counterexample
    /// is most likely; for a proof the order does not change the work.
    priority: f64,
}

impl PartialEq for Domain {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Domain {}
impl PartialOrd for Domain {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Domain {
    /// Max-heap order: the smallest priority, then the deepest, is the greatest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .priority
            .total_cmp(&self.priority)
            .then(self.depth.cmp(&other.depth))
    }
}

/// What bounding one domain concluded.
enum Outcome {
    /// Every active conjunction is excluded with the f32 margin; the smallest certified gap.
    Done(f64),
    /// A confirmed counterexample.
    Counterexample(Vec<f64>, Vec<f64>),
    /// Not decided: two halves to explore, and the volume fraction (for progress).
    Split(Box<(Domain, Domain)>),
    /// Cannot be refined further (degenerate box) or the bound failed.
    Stuck(String),
}

/// Per case: a sound bound on the f32 rounding error of every unsafe-constraint row over
/// the whole case box (`[conjunction][constraint]`). It is valid on every sub-box (the
/// root's intermediate bounds contain the sub-box's), so a sub-box whose gap clears it
/// needs no error bound of its own.
fn root_errors(net: &Network, case: &Case, engine: &dyn BoundEngine) -> Option<Vec<Vec<f64>>> {
    let rows: Vec<Vec<f64>> = case
        .unsafe_set
        .iter()
        .flat_map(|c| c.rows.iter().cloned())
        .collect();
    let b = engine.spec_lower(&case.lower, &case.upper, &rows).ok()?;
    let layer_bounds = engine
        .tight_layer_bounds(&case.lower, &case.upper, None)
        .unwrap_or(b.layer_bounds);
    let flat = row_errors(
        net,
        &layer_bounds,
        &case.lower,
        &case.upper,
        &rows,
        case.unsafe_set.iter().flat_map(|c| c.rhs.iter().copied()),
    );
    let mut it = flat.into_iter();
    Some(
        case.unsafe_set
            .iter()
            .map(|c| it.by_ref().take(c.rows.len()).collect())
            .collect(),
    )
}

/// The margin each row `c·y - rhs` must clear on a box with the given layer bounds: the
/// f32 rounding-error bound of the row (the tight backward form when the network allows
/// it, else `|c|·E`) plus `1e-9 (1 + |rhs|)`.
fn row_errors(
    net: &Network,
    layer_bounds: &[(Vec<f64>, Vec<f64>)],
    lower: &[f64],
    upper: &[f64],
    rows: &[Vec<f64>],
    rhs: impl Iterator<Item = f64>,
) -> Vec<f64> {
    match rounding::spec_error_bounds(net, layer_bounds, rows) {
        Some(v) => v
            .iter()
            .zip(rhs)
            .map(|(e, b)| e + 1e-9 * (1.0 + b.abs()))
            .collect(),
        None => {
            let err = if layer_bounds.len() == net.layers.len() + 1 {
                rounding::f32_error_bound_from(net, layer_bounds)
            } else {
                rounding::f32_error_bound(net, lower, upper)
            };
            rows.iter()
                .zip(rhs)
                .map(|(r, b)| required_margin(r, b, &err))
                .collect()
        }
    }
}

/// The leaf test of branch and bound on one sub-box, on its own: every unsafe
/// conjunction of `case` is excluded on `[lower, upper]` by the CROWN bound of one of its
/// constraints, or by a positive combination of them ([`combined_gap`]), with a gap that
/// exceeds the f32 rounding-error bound of the rows on this sub-box plus the f64 slack.
/// `true` means no input of the sub-box reaches the unsafe set, in exact arithmetic and in
/// the device's f32 evaluation; `false` means "not shown" (never "violated").
pub fn leaf_holds(net: &Network, case: &Case, lower: &[f64], upper: &[f64]) -> bool {
    if lower.len() != net.input_dim()
        || upper.len() != lower.len()
        || lower
            .iter()
            .zip(upper)
            .any(|(l, u)| !l.is_finite() || !u.is_finite() || l > u)
    {
        return false;
    }
    // Dense CROWN: the hybrid's adaptive lower slopes can differ on a few boxes, and the
    // region-wise repair proves its sub-boxes with dense CROWN (measured: with the hybrid,
    // 11 of the 631 sub-boxes of N2,1's region-wise repair failed this test).
    let engine = LinearEngine::with_forward(net, bounds::Method::Crown, false);
    let rows: Vec<Vec<f64>> = case
        .unsafe_set
        .iter()
        .flat_map(|c| c.rows.iter().cloned())
        .collect();
    if rows.iter().any(|r| r.len() != net.output_dim()) {
        return false;
    }
    let Ok(b) = engine.spec_lower(lower, upper, &rows) else {
        return false;
    };
    let tight = engine.tight_layer_bounds(lower, upper, None);
    let errs = row_errors(
        net,
        tight.as_deref().unwrap_or(&b.layer_bounds),
        lower,
        upper,
        &rows,
        case.unsafe_set.iter().flat_map(|c| c.rhs.iter().copied()),
    );
    let mut r0 = 0;
    case.unsafe_set.iter().all(|conj| {
        let rs = r0..r0 + conj.rows.len();
        r0 += conj.rows.len();
        let single = rs.clone().any(|r| {
            let gap = b.lower[r] - conj.rhs[r - rs.start];
            gap.is_finite() && gap > errs[r] + 1e-9 * b.lower[r].abs()
        });
        single
            || (conj.rows.len() >= 2
                && match (&b.coeffs, &b.consts) {
                    (Some(a), Some(c)) => {
                        let lines: Vec<(&[f64], f64, f64)> = rs
                            .clone()
                            .map(|r| {
                                let rhs = conj.rhs[r - rs.start];
                                (
                                    a[r].as_slice(),
                                    c[r] - rhs,
                                    errs[r] + 1e-9 * (c[r].abs() + rhs.abs()),
                                )
                            })
                            .collect();
                        combined_gap(&lines, lower, upper).is_some()
                    }
                    _ => false,
                })
    })
}

/// What every sub-box of one case shares.
struct Ctx<'a> {
    split: SplitRule,
    net: &'a Network,
    cnet: Option<&'a CandleNet>,
    case: &'a Case,
    engine: &'a dyn BoundEngine,
    root_err: Option<&'a [Vec<f64>]>,
    start: Instant,
    /// Nanoseconds spent in sub-box PGD, kept below a tenth of the elapsed time.
    pgd_nanos: &'a AtomicU64,
    /// Number of open sub-boxes (bounds the memory of the kept parent bounds).
    open: &'a AtomicU64,
}

/// Branch-and-bound diagnostics on stderr when `PROREPAIR_TRACE` is set, printed when a
/// case times out: split dimensions, depths, the open sub-boxes' gaps and widths.
struct Trace {
    start: Instant,
    branches0: u64,
    split_dims: Vec<u64>,
    depths: Vec<u64>,
    min_done_gap: f64,
}

impl Trace {
    fn from_env(n: usize, branches0: u64) -> Option<Self> {
        crate::trace_enabled().then(|| Self {
            start: Instant::now(),
            branches0,
            split_dims: vec![0; n],
            depths: Vec::new(),
            min_done_gap: f64::INFINITY,
        })
    }

    fn record(&mut self, d: &Domain, outcome: &Outcome) {
        if self.depths.len() <= d.depth {
            self.depths.resize(d.depth + 1, 0);
        }
        self.depths[d.depth] += 1;
        match outcome {
            Outcome::Split(ch) => {
                if let Some(i) = (0..d.lower.len()).find(|&i| ch.0.upper[i] != d.upper[i]) {
                    self.split_dims[i] += 1;
                }
            }
            Outcome::Done(g) => self.min_done_gap = self.min_done_gap.min(*g),
            _ => {}
        }
    }

    fn report(
        &self,
        ci: usize,
        open: &std::collections::BinaryHeap<Domain>,
        branches: u64,
        root_err: Option<&[Vec<f64>]>,
    ) {
        let n = branches - self.branches0;
        let t = self.start.elapsed().as_secs_f64();
        let gaps = open.iter().map(|d| d.priority);
        let worst = gaps.clone().fold(f64::INFINITY, f64::min);
        let best = gaps.fold(f64::NEG_INFINITY, f64::max);
        let min_widths: Vec<f64> = (0..self.split_dims.len())
            .map(|i| {
                open.iter()
                    .map(|d| d.upper[i] - d.lower[i])
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        eprintln!(
            "trace case {ci}: {n} branches in {t:.2} s ({:.0} us each), {} open (gaps {worst:.3e} ..= {best:.3e}), \
             smallest certified gap {:.3e}, root f32 margins {root_err:?}\n  split dims {:?}\n  \
             branches per depth {:?}\n  smallest open widths {min_widths:?}",
            1e6 * t / n.max(1) as f64,
            open.len(),
            self.min_done_gap,
            self.split_dims,
            self.depths,
        );
    }
}

/// How [`branch_and_bound`] searches: the bound engine, whether it splits, when it stops,
/// and how it splits.
pub struct Search<'a> {
    /// The bound engine of every sub-box.
    pub engine: &'a dyn BoundEngine,
    /// Split until decided (`false`: one bound pass per case box).
    pub complete: bool,
    /// When the search gives up ("unknown").
    pub deadline: Instant,
    /// The split rule to start with.
    pub split: SplitRule,
    /// A change to another rule, going on with the same open sub-boxes (a restart would
    /// throw away every bound so far).
    pub switch: Option<Switch>,
}

impl std::fmt::Debug for Search<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search")
            .field("engine", &self.engine.name())
            .field("complete", &self.complete)
            .field("deadline", &self.deadline)
            .field("split", &self.split)
            .field("switch", &self.switch)
            .finish()
    }
}

/// When [`Search`] changes its split rule: once `at` has passed and `min_branches`
/// sub-boxes were bounded under the first rule, or at `latest` whatever the count. Why
/// both: on a loaded machine a wall-clock switch alone comes after too little work
/// (repaired ACAS Xu N3,9: holds in 9.5 s alone, unknown at 60 s beside a build).
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    /// The earliest instant.
    pub at: Instant,
    /// The sub-boxes to bound before switching at `at` or later.
    pub min_branches: u64,
    /// The switch happens at this instant in any case.
    pub latest: Instant,
    /// The rule to go on with.
    pub rule: SplitRule,
}

/// Branch and bound over every case, as `search` says. PGD rounds ([`Falsifier`]) are
/// interleaved while they take less than [`FALSIFIER_SHARE`] of the elapsed time.
pub fn branch_and_bound(
    net: &Network,
    cases: &[Case],
    search: &Search<'_>,
    options: &Options,
    stats: &mut Stats,
    mut falsifier: Option<&mut Falsifier>,
) -> Verdict {
    let &Search {
        engine,
        complete,
        deadline,
        split,
        switch,
    } = search;
    let start = Instant::now();
    let cnet = CandleNet::new(net).ok();
    let batch_size = 4 * rayon::current_num_threads().max(1);
    let mut undecided: Option<String> = None;
    let pgd_nanos = AtomicU64::new(0);
    let mut fals_nanos = 0u128;
    if let Some(pb) = &options.progress {
        pb.set_length(1000 * cases.len() as u64);
    }
    for (ci, case) in cases.iter().enumerate() {
        let root_err = root_errors(net, case, engine);
        if let Some(e) = &root_err {
            stats.f32_error_bound = e
                .iter()
                .flatten()
                .copied()
                .fold(stats.f32_error_bound, f64::max);
        }
        let open = AtomicU64::new(1);
        let mut ctx = Ctx {
            net,
            cnet: cnet.as_ref(),
            case,
            engine,
            root_err: root_err.as_deref(),
            start,
            pgd_nanos: &pgd_nanos,
            open: &open,
            split,
        };
        let total_volume = log_volume(&case.lower, &case.upper);
        let mut done_fraction = 0.0f64;
        let mut stack = std::collections::BinaryHeap::from(vec![Domain {
            lower: case.lower.clone(),
            upper: case.upper.clone(),
            active: (0..case.unsafe_set.len()).collect(),
            depth: 0,
            prior: None,
            pre: None,
            priority: f64::NEG_INFINITY,
        }]);
        let mut trace = Trace::from_env(case.lower.len(), stats.branches);
        while !stack.is_empty() {
            if Instant::now() >= deadline
                && let Some(t) = &trace
            {
                t.report(ci, &stack, stats.branches, root_err.as_deref());
            }
            if Instant::now() >= deadline {
                return Verdict::Unknown {
                    reason: format!(
                        "timeout after {} branches ({} sub-boxes of case {ci} open, {:.1}% of its volume certified)",
                        stats.branches,
                        stack.len(),
                        100.0 * done_fraction
                    ),
                };
            }
            // Falsification in turn with the bounds, while it is cheap relative to them.
            if let (Some(f), Some(cn)) = (falsifier.as_deref_mut(), cnet.as_ref())
                && complete
                && stats.branches > 0
                && (fals_nanos as f64) < FALSIFIER_SHARE * start.elapsed().as_nanos() as f64
            {
                {
                    let t = Instant::now();
                    let found = f.step(net, cn, cases);
                    fals_nanos += t.elapsed().as_nanos();
                    if let Some(v) = found {
                        return v;
                    }
                }
            }
            if let Some(sw) = switch {
                let now = Instant::now();
                if now >= sw.latest || (now >= sw.at && stats.branches >= sw.min_branches) {
                    ctx.split = sw.rule;
                }
            }
            let take = stack.len().min(batch_size);
            let batch: Vec<Domain> = (0..take).filter_map(|_| stack.pop()).collect();
            open.store(stack.len() as u64, Ordering::Relaxed);
            let results: Vec<(Domain, Outcome)> = batch
                .into_par_iter()
                .map(|d| {
                    let o = bound_domain(&ctx, &d);
                    (d, o)
                })
                .collect();
            for (d, outcome) in results {
                if let Some(t) = &mut trace {
                    t.record(&d, &outcome);
                }
                stats.branches += 1;
                stats.max_depth = stats.max_depth.max(d.depth);
                match outcome {
                    Outcome::Done(gap) => {
                        if gap.is_finite() {
                            stats.min_certified_margin =
                                Some(stats.min_certified_margin.map_or(gap, |m| m.min(gap)));
                        }
                        done_fraction += (log_volume(&d.lower, &d.upper) - total_volume).exp();
                        if let Some(pb) = &options.progress {
                            pb.set_position(1000 * ci as u64 + (1000.0 * done_fraction) as u64);
                            pb.set_message(format!("{} branches", stats.branches));
                        }
                    }
                    Outcome::Counterexample(x, y) => return violated(x, y, ci),
                    Outcome::Split(children) => {
                        if complete {
                            let (a, b) = *children;
                            stack.push(a);
                            stack.push(b);
                        } else {
                            undecided.get_or_insert_with(|| {
                                format!(
                                    "{} bounds do not exclude the unsafe set on case {ci}",
                                    engine.name()
                                )
                            });
                        }
                    }
                    Outcome::Stuck(reason) => {
                        undecided.get_or_insert(format!("case {ci}: {reason}"));
                    }
                }
            }
        }
    }
    match undecided {
        Some(reason) => Verdict::Unknown { reason },
        None => Verdict::Holds,
    }
}

/// What [`open_leaves`] ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Frontier {
    /// The sub-boxes still open at the deadline (or when `max_open` was reached), worst
    /// gap first; empty when every sub-box closed.
    Open(Vec<(Vec<f64>, Vec<f64>)>),
    /// A counterexample confirmed by the forward pass: (input, output).
    Counterexample(Vec<f64>, Vec<f64>),
}

/// Repair's hook into branch and bound: the same bounding and splitting as
/// [`branch_and_bound`] (CROWN, [`SplitRule::Halves`], no falsifier) on one case, but
/// returning the sub-boxes it could not close by `deadline` (or once more than `max_open`
/// are open) instead of a verdict. Why: certified training wants the boxes the verifier
/// is stuck on. Nothing here claims a property holds: an empty frontier only steers the
/// caller, whose proof stays [`super::verify_cases`].
pub fn open_leaves(net: &Network, case: &Case, deadline: Instant, max_open: usize) -> Frontier {
    let engine = LinearEngine::new(net, bounds::Method::Crown);
    let cnet = CandleNet::new(net).ok();
    let root_err = root_errors(net, case, &engine);
    let pgd_nanos = AtomicU64::new(0);
    let open = AtomicU64::new(1);
    let ctx = Ctx {
        net,
        cnet: cnet.as_ref(),
        case,
        engine: &engine,
        root_err: root_err.as_deref(),
        start: Instant::now(),
        pgd_nanos: &pgd_nanos,
        open: &open,
        split: SplitRule::Halves,
    };
    let mut stack = std::collections::BinaryHeap::from(vec![Domain {
        lower: case.lower.clone(),
        upper: case.upper.clone(),
        active: (0..case.unsafe_set.len()).collect(),
        depth: 0,
        prior: None,
        pre: None,
        priority: f64::NEG_INFINITY,
    }]);
    let mut stuck: Vec<Domain> = Vec::new();
    let batch_size = 4 * rayon::current_num_threads().max(1);
    while !stack.is_empty() && Instant::now() < deadline && stack.len() <= max_open {
        let take = stack.len().min(batch_size);
        let batch: Vec<Domain> = (0..take).filter_map(|_| stack.pop()).collect();
        open.store(stack.len() as u64, Ordering::Relaxed);
        let results: Vec<(Domain, Outcome)> = batch
            .into_par_iter()
            .map(|d| {
                let o = bound_domain(&ctx, &d);
                (d, o)
            })
            .collect();
        for (d, outcome) in results {
            match outcome {
                Outcome::Done(_) => {}
                Outcome::Counterexample(x, y) => return Frontier::Counterexample(x, y),
                Outcome::Split(children) => {
                    let (a, b) = *children;
                    stack.push(a);
                    stack.push(b);
                }
                Outcome::Stuck(_) => stuck.push(d),
            }
        }
    }
    let mut left: Vec<Domain> = stack.into_sorted_vec();
    left.reverse();
    left.extend(stuck);
    Frontier::Open(left.into_iter().map(|d| (d.lower, d.upper)).collect())
}

/// Log of the box volume, counting degenerate dimensions as width 1 (they never split).
fn log_volume(lower: &[f64], upper: &[f64]) -> f64 {
    lower
        .iter()
        .zip(upper)
        .map(|(l, u)| if u > l { (u - l).ln() } else { 0.0 })
        .sum()
}

/// Required margin for constraint `row·y - rhs` given the f32 error bound `err`.
pub fn required_margin(row: &[f64], rhs: f64, err: &[f64]) -> f64 {
    row.iter().zip(err).map(|(c, e)| c.abs() * e).sum::<f64>() + 1e-9 * (1.0 + rhs.abs())
}

/// Given linear lower bounds `l_k(x) = a_k·x + b_k <= c_k·y - rhs_k` on the box and the
/// margins `e_k` they must clear (rounding-error bounds), search weights `λ` on the
/// simplex with `min_x Σ λ_k (l_k(x) - e_k) > 0`: then no `x` of the box meets every
/// constraint of the conjunction, even with the device's rounding (if all
/// `c_k·ŷ <= rhs_k` then `Σ λ_k (l_k(x) - e_k) <= 0`). Any `λ` gives a sound bound (weak
/// duality), so a plain exponentiated-gradient ascent is enough. Returns the positive
/// combined gap found, minus a slack for the f64 rounding of this sum.
fn combined_gap(lines: &[(&[f64], f64, f64)], lower: &[f64], upper: &[f64]) -> Option<f64> {
    let k = lines.len();
    let n = lower.len();
    let mut lambda = vec![1.0 / k as f64; k];
    let mut g = vec![0.0; n];
    let mut best: Option<f64> = None;
    for _ in 0..60 {
        // f(λ) = Σ λ_k (b_k - e_k) + Σ_i min over [l_i, u_i] of g_i x_i, g = Σ λ_k a_k.
        let (mut value, mut slack, x) = weigh_lines(lines, &lambda, lower, upper, &mut g);
        for i in 0..n {
            value += g[i] * x[i];
            slack += g[i].abs() * x[i].abs();
        }
        let sound = value - 1e-9 * (1.0 + slack);
        if sound > 0.0 {
            best = Some(best.map_or(sound, |b: f64| b.max(sound)));
            return best;
        }
        if !ascend(lines, &x, &mut lambda) {
            break;
        }
    }
    best
}

fn bound_domain(ctx: &Ctx<'_>, d: &Domain) -> Outcome {
    let (net, case) = (ctx.net, ctx.case);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut owner: Vec<(usize, usize)> = Vec::new();
    for &ci in &d.active {
        for (k, row) in case.unsafe_set[ci].rows.iter().enumerate() {
            rows.push(row.clone());
            owner.push((ci, k));
        }
    }
    let bounds: std::sync::Arc<SpecLower> = match &d.pre {
        Some(b) if b.lower.len() == rows.len() => b.clone(),
        _ => match ctx.engine.spec_lower_within(
            &d.lower,
            &d.upper,
            &rows,
            d.prior.as_deref().map(Vec::as_slice),
        ) {
            Ok(b) => std::sync::Arc::new(b),
            Err(e) => return Outcome::Stuck(format!("{} failed: {e}", ctx.engine.name())),
        },
    };
    // The sub-box's own rounding-error bounds, computed only when a gap clears zero but
    // not the root's (looser, equally sound) bound.
    let mut local_err: Option<Vec<f64>> = None;
    let mut cheap_err: Option<Vec<f64>> = None;
    let mut remaining = Vec::new();
    let mut min_gap = f64::INFINITY;
    let mut worst_open = f64::INFINITY;
    for &ci in &d.active {
        let conj: &Conj = &case.unsafe_set[ci];
        let mut best: Option<f64> = None;
        let open_gap = owner
            .iter()
            .enumerate()
            .filter(|(_, o)| o.0 == ci)
            .map(|(r, &(_, k))| bounds.lower[r] - conj.rhs[k])
            .fold(f64::NEG_INFINITY, f64::max);
        for (r, &(owner_ci, k)) in owner.iter().enumerate() {
            if owner_ci != ci {
                continue;
            }
            let gap = bounds.lower[r] - conj.rhs[k];
            // The f64 back-substitution is not rounded outward: keep 1e-9 relative slack.
            let f64_slack = 1e-9 * bounds.lower[r].abs();
            // NaN gaps are not excluded either.
            if gap.partial_cmp(&f64_slack) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let cleared = match ctx.root_err {
                Some(root) if gap > root[ci][k] + f64_slack => true,
                // The error bound from this box's own relaxation bounds first (free: they
                // are sound, only looser than the dense pass's on stable deep neurons);
                // the dense pass only when that one is not enough. Same verdicts, one
                // CROWN pass fewer per closed sub-box (BENCHMARKS.md, Repair, session 8).
                _ if gap
                    > cheap_err.get_or_insert_with(|| {
                        let rhs = owner.iter().map(|&(c, k)| case.unsafe_set[c].rhs[k]);
                        row_errors(net, &bounds.layer_bounds, &d.lower, &d.upper, &rows, rhs)
                    })[r]
                        + f64_slack =>
                {
                    true
                }
                _ => {
                    let e = local_err.get_or_insert_with(|| {
                        let rhs = owner.iter().map(|&(c, k)| case.unsafe_set[c].rhs[k]);
                        {
                            let prior = d.prior.as_deref().map(Vec::as_slice);
                            let tight = ctx.engine.tight_layer_bounds(&d.lower, &d.upper, prior);
                            row_errors(
                                net,
                                tight.as_deref().unwrap_or(&bounds.layer_bounds),
                                &d.lower,
                                &d.upper,
                                &rows,
                                rhs,
                            )
                        }
                    });
                    gap > e[r] + f64_slack
                }
            };
            if cleared {
                best = Some(best.map_or(gap, |b: f64| b.max(gap)));
            }
        }
        if best.is_none() && conj.rows.len() >= 2 {
            // No single constraint is excluded: try a positive combination of their linear
            // lower bounds (each already lowered by its rounding-error bound).
            if let (Some(a), Some(c)) = (&bounds.coeffs, &bounds.consts) {
                let rs: Vec<usize> = (0..owner.len()).filter(|&r| owner[r].0 == ci).collect();
                let errs: Vec<f64> = match ctx.root_err {
                    Some(root) => rs.iter().map(|&r| root[ci][owner[r].1]).collect(),
                    None => {
                        let e = local_err.get_or_insert_with(|| {
                            let rhs = owner.iter().map(|&(c, k)| case.unsafe_set[c].rhs[k]);
                            {
                                let prior = d.prior.as_deref().map(Vec::as_slice);
                                let tight =
                                    ctx.engine.tight_layer_bounds(&d.lower, &d.upper, prior);
                                row_errors(
                                    net,
                                    tight.as_deref().unwrap_or(&bounds.layer_bounds),
                                    &d.lower,
                                    &d.upper,
                                    &rows,
                                    rhs,
                                )
                            }
                        });
                        rs.iter().map(|&r| e[r]).collect()
                    }
                };
                let lines: Vec<(&[f64], f64, f64)> = rs
                    .iter()
                    .zip(&errs)
                    .map(|(&r, &e)| {
                        let k = owner[r].1;
                        (
                            a[r].as_slice(),
                            c[r] - conj.rhs[k],
                            e + 1e-9 * (c[r].abs() + conj.rhs[k].abs()),
                        )
                    })
                    .collect();
                if let Some(g) = combined_gap(&lines, &d.lower, &d.upper) {
                    best = Some(g);
                }
            }
        }
        match best {
            Some(g) => min_gap = min_gap.min(g),
            None => {
                remaining.push(ci);
                worst_open = worst_open.min(open_gap);
            }
        }
    }
    if remaining.is_empty() {
        return Outcome::Done(min_gap);
    }

    // Candidate counterexamples: the centre, and per open conjunction the box point that
    // minimises the summed linear lower bounds of its constraints (ProRepair Eq. 8).
    let n = d.lower.len();
    let mut candidates = vec![falsify::centre(&d.lower, &d.upper)];
    let mut score = vec![0.0; n];
    for &ci in &remaining {
        let mut dir = vec![0.0; n];
        // Refine score (Eq. 9): width x summed |coefficient| of the open constraints.
        for (r, &(owner_ci, _)) in owner.iter().enumerate() {
            if owner_ci != ci {
                continue;
            }
            if let Some(a) = &bounds.coeffs {
                for i in 0..n {
                    dir[i] += a[r][i];
                    score[i] += a[r][i].abs();
                }
            }
        }
        if bounds.coeffs.is_some() {
            candidates.push(
                (0..n)
                    .map(|i| if dir[i] > 0.0 { d.lower[i] } else { d.upper[i] })
                    .collect(),
            );
        }
    }
    for &ci in &remaining {
        let conj = &case.unsafe_set[ci];
        let mut a = falsify::check_points(net, conj, &candidates);
        let pgd_allowed =
            || ctx.pgd_nanos.load(Ordering::Relaxed) as u128 * 10 < ctx.start.elapsed().as_nanos();
        if a.found.is_none()
            && d.depth > 0
            && d.depth.is_multiple_of(4)
            && pgd_allowed()
            && let Some(cnet) = ctx.cnet
        {
            {
                let t = Instant::now();
                let starts = vec![a.best_input.clone(), falsify::centre(&d.lower, &d.upper)];
                if let Ok(p) = falsify::pgd(cnet, net, &d.lower, &d.upper, conj, &starts, 12) {
                    a = p;
                }
                ctx.pgd_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
        if let Some((x, y)) = a.found {
            return Outcome::Counterexample(x, y);
        }
    }

    // Keep the ReLU input bounds for the children (a few KB), unless the open list is
    // already long enough for that memory to matter.
    let prior = (ctx.open.load(Ordering::Relaxed) < 100_000
        && bounds.layer_bounds.len() == net.layers.len() + 1)
        .then(|| {
            let keep = |k: usize| matches!(net.layers.get(k), Some(crate::model::Layer::Relu));
            std::sync::Arc::new(
                bounds
                    .layer_bounds
                    .iter()
                    .enumerate()
                    .map(|(k, (l, u))| {
                        if keep(k) {
                            bounds::BoxBounds::new(l.clone(), u.clone())
                        } else {
                            bounds::BoxBounds::new(vec![], vec![])
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        });
    let child_rows: Vec<Vec<f64>> = owner
        .iter()
        .zip(&rows)
        .filter(|((ci, _), _)| remaining.contains(ci))
        .map(|(_, r)| r.clone())
        .collect();
    let child_owner: Vec<(usize, usize)> = owner
        .iter()
        .copied()
        .filter(|(ci, _)| remaining.contains(ci))
        .collect();
    let widths: Vec<f64> = d.lower.iter().zip(&d.upper).map(|(l, u)| u - l).collect();
    let smear: Vec<f64> = if bounds.coeffs.is_some() && score.iter().any(|&s| s > 0.0) {
        (0..n).map(|i| widths[i] * score[i]).collect()
    } else {
        widths.clone()
    };
    let Some(split) = choose_split(
        ctx,
        d,
        &bounds,
        &smear,
        &child_rows,
        &child_owner,
        prior.as_deref().map(Vec::as_slice),
    ) else {
        return Outcome::Stuck("sub-box too small to split further".into());
    };
    if let Some((x, y)) = split.counterexample {
        return Outcome::Counterexample(x, y);
    }
    let mut left = Domain {
        lower: d.lower.clone(),
        upper: d.upper.clone(),
        active: remaining,
        depth: d.depth + 1,
        prior,
        pre: None,
        priority: worst_open,
    };
    let mut right = left.clone();
    left.upper[split.dim] = split.mid;
    right.lower[split.dim] = split.mid;
    if let Some((l, r)) = split.children {
        left.priority = open_gap_of(&l, &child_owner, case, &left.lower, &left.upper);
        right.priority = open_gap_of(&r, &child_owner, case, &right.lower, &right.upper);
        if split.exact {
            left.pre = Some(std::sync::Arc::new(l));
            right.pre = Some(std::sync::Arc::new(r));
        }
    }
    Outcome::Split(Box::new((left, right)))
}

/// `min` over the open conjunctions of a lower bound on `min_x max_k (c_k·f(x) - rhs_k)`
/// on the box (the best single row, improved for several rows by a few steps of the
/// dual ascent of [`combined_gap`] without margins): positive when every conjunction is
/// (nearly) excluded, the most negative where the most work remains.
fn open_gap_of(
    b: &SpecLower,
    owner: &[(usize, usize)],
    case: &Case,
    lower: &[f64],
    upper: &[f64],
) -> f64 {
    let mut worst = f64::INFINITY;
    let mut seen: Vec<usize> = Vec::new();
    for &(ci, _) in owner {
        if seen.contains(&ci) {
            continue;
        }
        seen.push(ci);
        let rs: Vec<usize> = (0..owner.len()).filter(|&r| owner[r].0 == ci).collect();
        let conj = &case.unsafe_set[ci];
        let mut v = rs
            .iter()
            .map(|&r| b.lower[r] - conj.rhs[owner[r].1])
            .fold(f64::NEG_INFINITY, f64::max);
        if let (Some(a), Some(c)) = (&b.coeffs, &b.consts)
            && rs.len() >= 2
            && v <= 0.0
        {
            let lines: Vec<(&[f64], f64, f64)> = rs
                .iter()
                .map(|&r| (a[r].as_slice(), c[r] - conj.rhs[owner[r].1], 0.0))
                .collect();
            v = v.max(dual_value(&lines, lower, upper, 20));
        }
        worst = worst.min(if v.is_nan() { f64::NEG_INFINITY } else { v });
    }
    worst
}

/// The parts of the dual function of [`combined_gap`] and [`dual_value`] at weights
/// `λ`: sets `g = Σ λ_k a_k` and returns `Σ λ_k (b_k - e_k)`, the scale
/// `Σ λ_k (|b_k| + e_k)` of its rounding error, and the box corner minimising `g·x`.
fn weigh_lines(
    lines: &[(&[f64], f64, f64)],
    lambda: &[f64],
    lower: &[f64],
    upper: &[f64],
    g: &mut [f64],
) -> (f64, f64, Vec<f64>) {
    g.iter_mut().for_each(|v| *v = 0.0);
    let mut value = 0.0;
    let mut slack = 0.0;
    for (lam, (a, b, e)) in lambda.iter().zip(lines) {
        value += lam * (b - e);
        slack += lam * (b.abs() + e);
        for (gi, ai) in g.iter_mut().zip(a.iter()) {
            *gi += lam * ai;
        }
    }
    let x = (0..lower.len())
        .map(|i| if g[i] >= 0.0 { lower[i] } else { upper[i] })
        .collect();
    (value, slack, x)
}

/// One exponentiated-gradient step on `λ` along the supergradient `s_k = l_k(x) - e_k`
/// at the minimising corner `x`: raises the weights of the constraints hardest to meet
/// there. False (and `λ` untouched) when the supergradient vanishes or is not finite,
/// which ends the ascent.
fn ascend(lines: &[(&[f64], f64, f64)], x: &[f64], lambda: &mut [f64]) -> bool {
    let s: Vec<f64> = lines
        .iter()
        .map(|(a, b, e)| a.iter().zip(x).map(|(ai, xi)| ai * xi).sum::<f64>() + b - e)
        .collect();
    let scale = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return false;
    }
    let mut total = 0.0;
    for (lam, sk) in lambda.iter_mut().zip(&s) {
        *lam *= (0.5 * sk / scale).exp();
        total += *lam;
    }
    lambda.iter_mut().for_each(|l| *l /= total);
    true
}

/// The best value `min_x Σ λ_k (l_k(x) - e_k)` found by `iters` steps of the
/// exponentiated-gradient ascent of [`combined_gap`] (a lower bound of
/// `min_x max_k (l_k(x) - e_k)` for every `λ` on the simplex). For ranking only: no
/// rounding slack.
fn dual_value(lines: &[(&[f64], f64, f64)], lower: &[f64], upper: &[f64], iters: usize) -> f64 {
    let k = lines.len();
    let n = lower.len();
    let mut lambda = vec![1.0 / k as f64; k];
    let mut best = f64::NEG_INFINITY;
    let mut g = vec![0.0; n];
    for _ in 0..iters {
        let (mut value, _, x) = weigh_lines(lines, &lambda, lower, upper, &mut g);
        value += g.iter().zip(&x).map(|(gi, xi)| gi * xi).sum::<f64>();
        best = best.max(value);
        if !ascend(lines, &x, &mut lambda) {
            break;
        }
    }
    best
}

/// A chosen split: bisect `dim` at `mid`; `children` are the two halves' bounds when
/// they were computed to choose it.
struct Split {
    dim: usize,
    mid: f64,
    children: Option<(SpecLower, SpecLower)>,
    /// The children's bounds are the engine's own (else only for ranking and priority).
    exact: bool,
    /// A confirmed counterexample met on the way (at a minimiser of a half's linear
    /// lower bound).
    counterexample: Option<(Vec<f64>, Vec<f64>)>,
}

/// Per open conjunction, the vertex of `[lower, upper]` that minimises the summed linear
/// lower bounds of its rows (where a counterexample is most likely), checked by the f64
/// forward pass; a confirmed counterexample, if any.
fn check_minimisers(
    net: &Network,
    case: &Case,
    b: &SpecLower,
    owner: &[(usize, usize)],
    lower: &[f64],
    upper: &[f64],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let a = b.coeffs.as_ref()?;
    let mut seen: Vec<usize> = Vec::new();
    for &(ci, _) in owner {
        if seen.contains(&ci) {
            continue;
        }
        seen.push(ci);
        let mut dir = vec![0.0; lower.len()];
        for (r, _) in owner.iter().enumerate().filter(|(_, o)| o.0 == ci) {
            for (di, ai) in dir.iter_mut().zip(&a[r]) {
                *di += ai;
            }
        }
        let x: Vec<f64> = (0..lower.len())
            .map(|i| if dir[i] > 0.0 { lower[i] } else { upper[i] })
            .collect();
        if let Some(found) = falsify::check_points(net, &case.unsafe_set[ci], &[x]).found {
            return Some(found);
        }
    }
    None
}

/// Inputs of at most this many dimensions bound the halves of every dimension (for their
/// counterexample checks; the split is still chosen among [`SPLIT_CANDIDATES`]).
const SPLIT_TRY_ALL: usize = 8;
/// The split is chosen among this many best by smear, plus the widest dimension.
const SPLIT_CANDIDATES: usize = 3;
/// Sub-boxes this deep (at most `2^-depth` of the case box's volume) are split by smear
/// even under [`SplitRule::Halves`]: the halves' choice pays near the root, where smear
/// misses the dimensions whose effect sits in the relaxation offsets, but deep down its
/// five times dearer sub-boxes chase small gap improvements. Measured on 13 saved
/// repaired ACAS Xu prop_2 networks (verify, 60 s; BENCHMARKS.md, session 12): summed time
/// 66 s with Halves down to the time switch, 34-39 s with this depth at 24-28 (26: the
/// slowest 8.2 s instead of 10.1 s), but two networks took 27-44 s at 22 and never
/// finished at 20. VNN-COMP ACAS Xu: the same 184 of 186 decided, property 9 in 1.4 s
/// instead of 5.8 s.
const HALVES_MAX_DEPTH: usize = 26;

/// Choose the dimension to bisect by bounding both halves of each dimension (of the
/// candidates only, on inputs of more than [`SPLIT_TRY_ALL`] dimensions) and keeping,
/// among the candidates (the best few by smear, `width x |linear coefficient|`, and the
/// widest), the split whose halves leave the least open gap: the sum of the halves'
/// negative gaps, then the larger summed gap. Smear alone misses the dimensions whose
/// effect is hidden in the relaxation offsets rather than the linear coefficients (ACAS
/// Xu property 1 kept boxes of full width in the heading angle open for ever). The
/// chosen halves' bounds are kept, so they are not computed twice.
/// Smear decides instead under [`SplitRule::Smear`], on boxes whose gaps are all positive
/// (they only wait for the f32 margin), and when no candidate improves the gap by 1%.
fn choose_split(
    ctx: &Ctx<'_>,
    d: &Domain,
    parent: &SpecLower,
    smear: &[f64],
    rows: &[Vec<f64>],
    owner: &[(usize, usize)],
    prior: Option<&[bounds::BoxBounds]>,
) -> Option<Split> {
    let n = d.lower.len();
    let case = ctx.case;
    let splittable = |i: usize| {
        let mid = 0.5 * (d.lower[i] + d.upper[i]);
        mid > d.lower[i] && mid < d.upper[i]
    };
    let mut dims: Vec<usize> = (0..n).filter(|&i| splittable(i)).collect();
    dims.sort_by(|&a, &b| smear[b].total_cmp(&smear[a]));
    let mut smear_dim = *dims.first()?;
    // Width relative to the case box: a dimension already far thinner than the others
    // is not a candidate (bisecting it again only chases rounding noise in the bounds).
    let rel = |i: usize| {
        let w = case.upper[i] - case.lower[i];
        if w > 0.0 {
            (d.upper[i] - d.lower[i]) / w
        } else {
            0.0
        }
    };
    let widest_dim = dims
        .iter()
        .copied()
        .max_by(|&a, &b| rel(a).total_cmp(&rel(b)));
    // Smear never splits a dimension whose influence hides in the relaxation offsets:
    // once it is far wider (relative to the case box) than smear's pick, take it.
    if let Some(w) = widest_dim
        && rel(w) > SMEAR_WIDTH_GUARD * rel(smear_dim)
    {
        smear_dim = w;
    }
    let by_smear = Split {
        dim: smear_dim,
        mid: 0.5 * (d.lower[smear_dim] + d.upper[smear_dim]),
        children: None,
        counterexample: None,
        exact: false,
    };
    let widest = dims.iter().map(|&i| rel(i)).fold(0.0f64, f64::max);
    dims.retain(|&i| rel(i) >= 1e-3 * widest);
    // The split is chosen among the best SPLIT_CANDIDATES by smear and the widest
    // relative to the case box (the one smear overlooks when its effect sits in the
    // relaxation offsets). On a small input (ACAS Xu: 5) the halves of every dimension are
    // bounded all the same: their minimisers are checked as counterexamples (ACAS Xu N5,3
    // property 2: found in 1.8 s; unknown after 116 s when only the candidates' halves are
    // checked). Choosing among all five by the halves' gap alone is greedy: on repaired
    // ACAS Xu networks' prop_2 it proved N5,9 in 16.7 s against 2.0 s and N2,9 in 19.8 s
    // against 3.6 s, though N5,6 in 0.96 s against 1.15 s (BENCHMARKS.md, Repair,
    // session 10).
    let mut eligible = dims.clone();
    if eligible.len() > SPLIT_CANDIDATES {
        eligible.truncate(SPLIT_CANDIDATES);
        if let Some(w) = widest_dim
            && !eligible.contains(&w)
        {
            eligible.push(w);
        }
    }
    if dims.len() > SPLIT_TRY_ALL {
        dims = eligible.clone();
    }
    let base = open_gap_of(parent, owner, case, &d.lower, &d.upper);
    // A box whose conjunctions all have positive gaps waits only for the f32 margin,
    // which shrinks with the magnitudes along the most influential dimension: smear. So
    // does a deep sub-box (HALVES_MAX_DEPTH).
    if dims.len() < 2
        || rows.is_empty()
        || base >= 0.0
        || ctx.split == SplitRule::Smear
        || d.depth >= HALVES_MAX_DEPTH
    {
        return Some(by_smear);
    }
    #[allow(clippy::type_complexity)]
    let evaluated: Vec<(
        usize,
        f64,
        (f64, f64),
        SpecLower,
        SpecLower,
        Option<(Vec<f64>, Vec<f64>)>,
    )> = dims
        .par_iter()
        .filter_map(|&dim| {
            let mid = 0.5 * (d.lower[dim] + d.upper[dim]);
            let (mut lu, mut rl) = (d.upper.clone(), d.lower.clone());
            lu[dim] = mid;
            rl[dim] = mid;
            // Halves that cannot be chosen are bounded only for their minimisers' checks:
            // the cheaper probe bounds do (their coefficients still point at the same
            // corners; ACAS Xu N5,3 property 2 is still violated in 0.8 s), 3-7% less
            // time per proof on repaired ACAS Xu networks (BENCHMARKS.md, session 12).
            let candidate = eligible.contains(&dim);
            let bound = |lo: &[f64], hi: &[f64]| {
                let cheaper = if candidate {
                    ctx.engine.spec_lower_rank(lo, hi, rows, prior)
                } else {
                    ctx.engine.spec_lower_probe(lo, hi, rows, prior)
                };
                match cheaper {
                    Some(b) => b.ok(),
                    None => ctx.engine.spec_lower_within(lo, hi, rows, prior).ok(),
                }
            };
            let l = bound(&d.lower, &lu)?;
            let r = bound(&rl, &d.upper)?;
            let gl = open_gap_of(&l, owner, case, &d.lower, &lu);
            let gr = open_gap_of(&r, owner, case, &rl, &d.upper);
            let key = (gl.min(0.0) + gr.min(0.0), gl + gr);
            let cex = check_minimisers(ctx.net, case, &l, owner, &d.lower, &lu)
                .or_else(|| check_minimisers(ctx.net, case, &r, owner, &rl, &d.upper));
            Some((dim, mid, key, l, r, cex))
        })
        .collect();
    if let Some(cex) = evaluated.iter().find_map(|e| e.5.clone()) {
        return Some(Split {
            dim: smear_dim,
            mid: by_smear.mid,
            children: None,
            counterexample: Some(cex),
            exact: false,
        });
    }
    let Some(best) = evaluated
        .iter()
        .enumerate()
        .filter(|(_, e)| eligible.contains(&e.0))
        .max_by(|(_, a), (_, b)| a.2.0.total_cmp(&b.2.0).then(a.2.1.total_cmp(&b.2.1)))
        .map(|(i, _)| i)
    else {
        return Some(by_smear);
    };
    // No split improves the open gap noticeably (a plateau of the relaxation): smear.
    // Halves ranked with looser bounds are compared with the parent's gap under the same
    // bounds (against the exact gap they would rarely look like an improvement).
    let base = match ctx.engine.spec_lower_rank(&d.lower, &d.upper, rows, prior) {
        Some(Ok(b)) => open_gap_of(&b, owner, case, &d.lower, &d.upper),
        _ => base,
    };
    let improvement = evaluated[best].2.0 - 2.0 * base;
    let pick = if improvement > 0.01 * base.abs() {
        best
    } else {
        match evaluated.iter().position(|e| e.0 == smear_dim) {
            Some(p) => p,
            None => return Some(by_smear),
        }
    };
    let (dim, mid, _, l, r, _) = evaluated.into_iter().nth(pick)?;
    // Ranking bounds are looser than the engine's own: the halves are bounded afresh.
    let exact = ctx
        .engine
        .spec_lower_rank(&d.lower, &d.upper, &[], prior)
        .is_none();
    Some(Split {
        dim,
        mid,
        children: Some((l, r)),
        counterexample: None,
        exact,
    })
}

/// See [`choose_split`]: smear gives way to a dimension this many times wider.
const SMEAR_WIDTH_GUARD: f64 = 16.0;

/// How branch and bound picks the input dimension to bisect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitRule {
    /// Bound both halves of the best smear dimensions and of the widest one and keep the
    /// split that closes the most gap (fewer, costlier sub-boxes; best for proofs whose
    /// looseness sits in the relaxation offsets, e.g. ACAS Xu property 1).
    #[default]
    Halves,
    /// Largest smear (`width x |linear coefficient|`, ProRepair's refine score), unless a
    /// dimension is [`SMEAR_WIDTH_GUARD`] times wider: cheap sub-boxes; measured to find
    /// some counterexamples (ACAS Xu N5,3 property 2) and proofs (N3,3 property 9) much
    /// sooner than `Halves`.
    Smear,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The repair hook: a holding case leaves nothing open, a violated one returns a
    /// counterexample the forward pass confirms, and a spent deadline returns the root box.
    #[test]
    fn open_leaves_reports_the_frontier() {
        use crate::model::{Dense, Layer};
        // y = relu(x0 - x1) - relu(x1 - x0) = x0 - x1 on [0, 1]^2.
        let d1 = Dense::new(2, 2, vec![1.0, -1.0, -1.0, 1.0], vec![0.0; 2]).unwrap();
        let d2 = Dense::new(2, 1, vec![1.0, -1.0], vec![0.0]).unwrap();
        let net = Network::new(
            vec![2],
            vec![Layer::Dense(d1), Layer::Relu, Layer::Dense(d2)],
        )
        .unwrap();
        let case = |rhs: f64| Case {
            lower: vec![0.0, 0.0],
            upper: vec![1.0, 1.0],
            unsafe_set: vec![Conj {
                rows: vec![vec![1.0]],
                rhs: vec![rhs],
            }],
        };
        let later = Instant::now() + std::time::Duration::from_secs(30);
        assert_eq!(
            open_leaves(&net, &case(-5.0), later, 1000),
            Frontier::Open(vec![])
        );
        match open_leaves(&net, &case(-0.5), later, 1000) {
            Frontier::Counterexample(x, y) => {
                assert!(net.forward(&x)[0] <= -0.5 && y[0] <= -0.5, "{x:?} {y:?}");
            }
            other => panic!("expected a counterexample, got {other:?}"),
        }
        assert_eq!(
            open_leaves(&net, &case(-0.5), Instant::now(), 1000),
            Frontier::Open(vec![(vec![0.0, 0.0], vec![1.0, 1.0])])
        );
    }

    /// Whenever the combination claims a positive gap, no sampled point of the box meets
    /// every lowered line (`l_k(x) <= e_k` for all k); and it does find gaps that no
    /// single line has.
    #[test]
    fn combined_gap_is_sound_and_beats_single_lines() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut claims, mut beyond_single) = (0, 0);
        for _ in 0..2000 {
            let n = 3;
            let k = rng.random_range(2..5);
            let lower: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..0.0)).collect();
            let upper: Vec<f64> = lower
                .iter()
                .map(|l| l + rng.random_range(0.1..1.0))
                .collect();
            let coeffs: Vec<Vec<f64>> = (0..k)
                .map(|_| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            let lines: Vec<(&[f64], f64, f64)> = coeffs
                .iter()
                .map(|a| {
                    (
                        a.as_slice(),
                        rng.random_range(-0.5..1.5),
                        rng.random_range(0.0..0.01),
                    )
                })
                .collect();
            let Some(g) = combined_gap(&lines, &lower, &upper) else {
                continue;
            };
            assert!(g > 0.0);
            claims += 1;
            for _ in 0..500 {
                let x = crate::verify::falsify::random_point(&mut rng, &lower, &upper);
                let worst = lines
                    .iter()
                    .map(|(a, b, e)| a.iter().zip(&x).map(|(a, x)| a * x).sum::<f64>() + b - e)
                    .fold(f64::NEG_INFINITY, f64::max);
                assert!(
                    worst > 0.0,
                    "x {x:?} meets every line although the combined gap is {g}"
                );
            }
            let single = lines.iter().any(|(a, b, e)| {
                let min: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(i, &ai)| (ai * lower[i]).min(ai * upper[i]))
                    .sum();
                min + b - e > 0.0
            });
            if !single {
                beyond_single += 1;
            }
        }
        assert!(
            claims > 100 && beyond_single > 10,
            "claims {claims}, beyond single lines {beyond_single}"
        );
    }
}
