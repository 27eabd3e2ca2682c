//! Sound bound propagation in f64: IBP, CROWN and alpha-CROWN over a [`Network`] or
//! any sub-network `layers[from..to]`.
//!
//! - [`output_bounds`]: concrete bounds of every output over an input box.
//! - [`linear_bounds`]: the linear bounds themselves,
//!   `A_lower x + c_lower <= C f(x) <= A_upper x + c_upper` for all `x` in the box, for a
//!   spec matrix `C`, with the concrete bounds and the bounds of every intermediate
//!   tensor (ProRepair's `LINEARBOUNDS`, ReLU splitting, refine scores).
//!
//! [`Method`] selects the algorithm:
//! - `Ibp`: interval bound propagation (centre/radius form, as auto_LiRPA).
//! - `CrownPure`: auto_LiRPA's `crown_nosparse`: every input of a nonlinear layer is
//!   bounded by a full backward CROWN pass to the input; ReLU relaxed as auto_LiRPA's
//!   adaptive CROWN ([`relax::relu`]). Reproduces auto_LiRPA's numbers.
//! - `Crown` (default): like `CrownPure`, but every intermediate bound is the
//!   intersection of CROWN's and the one-step interval bound, and the output bounds are
//!   intersected with IBP's. Sound and at least as tight per intermediate neuron.
//! - `AlphaCrown`: auto_LiRPA's `CROWN-Optimized`: lower slopes of unstable
//!   ReLU/LeakyReLU neurons optimised with Adam through candle, one set per (layer,
//!   start node), with the pre-activation bounds of later ReLU layers recomputed in the
//!   same graph ([`AlphaOptions`], `alpha.rs`); the best bound per row over the
//!   iterations, intersected with `Crown`'s.
//!
//! Soundness: every relaxation is sound in real arithmetic; the transcendental ones are
//! widened by [`relax::EVAL_SLACK`]. Floating-point rounding of the f64
//! back-substitution itself (~1e-13 relative on ACAS Xu) is not rounded outward:
//! callers that certify must keep a margin (see DESIGN.md, "Numerics and soundness").

mod alpha;
mod chain;
mod engine;
mod linear;
mod ops;
pub mod relax;
#[cfg(test)]
mod tests;

use crate::model::{ModelError, Network};
pub use chain::DenseReluChain;
use engine::{Intermediate, Propagation};
use linear::LinearState;

/// Errors of bound propagation (bad boxes, specs or layer ranges; never a panic).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BoundsError {
    /// The network itself is malformed.
    #[error("invalid network: {0}")]
    Model(#[from] ModelError),
    /// `from..to` is not a valid, non-empty-input layer range.
    #[error("layer range {from}..{to} is invalid for a network of {layers} layers")]
    LayerRange {
        /// First layer.
        from: usize,
        /// One past the last layer.
        to: usize,
        /// Number of layers of the network.
        layers: usize,
    },
    /// The input box has the wrong number of elements.
    #[error(
        "input box has {lower} lower and {upper} upper values, the (sub-)network expects {expected}"
    )]
    InputLength {
        /// Expected number of elements.
        expected: usize,
        /// Length of the lower bounds.
        lower: usize,
        /// Length of the upper bounds.
        upper: usize,
    },
    /// A bound is NaN or infinite.
    #[error("input box element {index} is not finite: [{lower}, {upper}]")]
    NotFinite {
        /// Element index.
        index: usize,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
    /// A lower bound exceeds its upper bound.
    #[error("input box element {index} is empty: lower {lower} > upper {upper}")]
    EmptyBox {
        /// Element index.
        index: usize,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
    /// The spec matrix has the wrong size or non-finite entries.
    #[error("spec matrix: {0}")]
    Spec(String),
    /// Bounds overflowed (the network amplifies the box beyond f64).
    #[error("bounds became non-finite after layer {layer}")]
    NonFinite {
        /// Index of the layer whose output bounds are not finite.
        layer: usize,
    },
    /// A layer this engine cannot bound.
    #[error("layer {index} ({kind}): {problem}")]
    Unsupported {
        /// Layer index.
        index: usize,
        /// Layer kind.
        kind: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The alpha-CROWN optimiser (candle) failed.
    #[error("alpha-CROWN optimisation failed: {0}")]
    Optimiser(String),
}

/// The bounding algorithm (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// Interval bound propagation.
    Ibp,
    /// auto_LiRPA's pure CROWN (`crown_nosparse`).
    CrownPure,
    /// CROWN with intermediate bounds intersected with IBP (default).
    #[default]
    Crown,
    /// Optimised lower slopes (alpha-CROWN), intermediate ReLU bounds re-optimised too.
    AlphaCrown,
}

/// alpha-CROWN optimiser settings; the defaults are the reference's.
#[derive(Clone, Debug, PartialEq)]
pub struct AlphaOptions {
    /// Number of bound evaluations (Adam steps = iterations - 1).
    pub iterations: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Learning-rate factor applied after every step.
    pub lr_decay: f64,
}

impl Default for AlphaOptions {
    fn default() -> Self {
        Self {
            iterations: 20,
            learning_rate: 0.5,
            lr_decay: 0.98,
        }
    }
}

/// An axis-aligned box: `lower[i] <= x[i] <= upper[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxBounds {
    /// Lower bounds.
    pub lower: Vec<f64>,
    /// Upper bounds.
    pub upper: Vec<f64>,
}

impl BoxBounds {
    /// Centre and radius of each interval, the form auto_LiRPA's linear IBP and
    /// concretisation use; one definition so every caller rounds the same way.
    pub(crate) fn centre_radius(&self) -> (Vec<f64>, Vec<f64>) {
        let centre = self
            .lower
            .iter()
            .zip(&self.upper)
            .map(|(l, u)| 0.5 * (u + l))
            .collect();
        let radius = self
            .lower
            .iter()
            .zip(&self.upper)
            .map(|(l, u)| 0.5 * (u - l))
            .collect();
        (centre, radius)
    }

    /// A box from its bounds (not validated; the bound functions validate).
    pub fn new(lower: Vec<f64>, upper: Vec<f64>) -> Self {
        Self { lower, upper }
    }

    /// The box containing exactly one point.
    pub fn point(x: &[f64]) -> Self {
        Self {
            lower: x.to_vec(),
            upper: x.to_vec(),
        }
    }

    /// The L-infinity ball of radius `radius` around `centre`.
    pub fn ball(centre: &[f64], radius: f64) -> Self {
        Self {
            lower: centre.iter().map(|c| c - radius).collect(),
            upper: centre.iter().map(|c| c + radius).collect(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.lower.len()
    }

    /// True for a box of no elements.
    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// Mean of `upper - lower`.
    pub fn mean_width(&self) -> f64 {
        self.lower
            .iter()
            .zip(&self.upper)
            .map(|(l, u)| u - l)
            .sum::<f64>()
            / self.len().max(1) as f64
    }

    /// True when `y` lies in the box up to `tol * (1 + |y_i|)` per element.
    pub fn contains(&self, y: &[f64], tol: f64) -> bool {
        y.len() == self.len()
            && y.iter()
                .zip(self.lower.iter().zip(&self.upper))
                .all(|(&v, (&l, &u))| {
                    let t = tol * (1.0 + v.abs());
                    l <= v + t && v <= u + t
                })
    }

    /// Element-wise intersection (both must be sound; the result is sound and tighter).
    pub fn intersect(&self, other: &BoxBounds) -> BoxBounds {
        let mut b = self.clone();
        // The common length, as element-wise pairs.
        b.lower.truncate(other.lower.len());
        b.upper.truncate(other.upper.len());
        b.intersect_with(other);
        b
    }

    /// [`Self::intersect`] in place: `self = self ∩ other`.
    pub fn intersect_with(&mut self, other: &BoxBounds) {
        for (a, o) in self.lower.iter_mut().zip(&other.lower) {
            *a = a.max(*o);
        }
        for (a, o) in self.upper.iter_mut().zip(&other.upper) {
            *a = a.min(*o);
        }
    }

    fn validate(&self, expected: usize) -> Result<(), BoundsError> {
        if self.lower.len() != expected || self.upper.len() != expected {
            return Err(BoundsError::InputLength {
                expected,
                lower: self.lower.len(),
                upper: self.upper.len(),
            });
        }
        for (index, (&lower, &upper)) in self.lower.iter().zip(&self.upper).enumerate() {
            if !lower.is_finite() || !upper.is_finite() {
                return Err(BoundsError::NotFinite {
                    index,
                    lower,
                    upper,
                });
            }
            if lower > upper {
                return Err(BoundsError::EmptyBox {
                    index,
                    lower,
                    upper,
                });
            }
        }
        Ok(())
    }
}

/// Linear bounds of `C f(x)` over a box, with `rows` = rows of `C` and `cols` = input
/// elements of the (sub-)network: for every `x` in the box and row `r`,
/// `a_lower[r] . x + c_lower[r] <= (C f(x))[r] <= a_upper[r] . x + c_upper[r]`,
/// and `lower[r] <= (C f(x))[r] <= upper[r]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearBounds {
    /// Rows of the spec.
    pub rows: usize,
    /// Input elements of the (sub-)network.
    pub cols: usize,
    /// `rows x cols`, row-major.
    pub a_lower: Vec<f64>,
    /// `rows` constants.
    pub c_lower: Vec<f64>,
    /// `rows x cols`, row-major.
    pub a_upper: Vec<f64>,
    /// `rows` constants.
    pub c_upper: Vec<f64>,
    /// Concrete lower bounds: the linear lower bounds minimised over the box, for
    /// `Crown`/`AlphaCrown` also intersected with IBP (so possibly tighter than the
    /// concretised linear bounds; never looser).
    pub lower: Vec<f64>,
    /// Concrete upper bounds (see `lower`).
    pub upper: Vec<f64>,
    /// Bounds of the tensor entering each layer of the range and, last, of the
    /// sub-network's output (`to - from + 1` entries): the intermediate bounds the
    /// relaxations used (CROWN or intersected for inputs of nonlinear layers, IBP from
    /// the previous bounds elsewhere); for `AlphaCrown`, the inputs of ReLU-like layers
    /// are further tightened by the optimised bounds of every iteration (all sound).
    pub layer_bounds: Vec<BoxBounds>,
}

impl LinearBounds {
    /// The lower linear bound of row `r` at `x`.
    pub fn lower_at(&self, r: usize, x: &[f64]) -> f64 {
        let row = &self.a_lower[r * self.cols..(r + 1) * self.cols];
        row.iter().zip(x).map(|(a, x)| a * x).sum::<f64>() + self.c_lower[r]
    }

    /// The upper linear bound of row `r` at `x`.
    pub fn upper_at(&self, r: usize, x: &[f64]) -> f64 {
        let row = &self.a_upper[r * self.cols..(r + 1) * self.cols];
        row.iter().zip(x).map(|(a, x)| a * x).sum::<f64>() + self.c_upper[r]
    }
}

/// Concrete bounds of every output of `net` over `input`.
pub fn output_bounds(
    net: &Network,
    input: &BoxBounds,
    method: Method,
) -> Result<BoxBounds, BoundsError> {
    let b = linear_bounds(net, 0, net.layers.len(), input, None, 0, method)?;
    Ok(BoxBounds {
        lower: b.lower,
        upper: b.upper,
    })
}

/// Linear bounds of `spec * f(x)` for the sub-network `f = layers[from..to]` over the box
/// `input` (flattened input of layer `from`). `spec` is `rows x n_out` row-major; `None`
/// means the identity (then `rows` is ignored). alpha-CROWN uses the default
/// [`AlphaOptions`].
pub fn linear_bounds(
    net: &Network,
    from: usize,
    to: usize,
    input: &BoxBounds,
    spec: Option<&[f64]>,
    rows: usize,
    method: Method,
) -> Result<LinearBounds, BoundsError> {
    linear_bounds_with(
        net,
        from,
        to,
        input,
        spec,
        rows,
        method,
        &AlphaOptions::default(),
    )
}

/// [`linear_bounds`] with explicit alpha-CROWN settings.
#[allow(clippy::too_many_arguments)]
pub fn linear_bounds_with(
    net: &Network,
    from: usize,
    to: usize,
    input: &BoxBounds,
    spec: Option<&[f64]>,
    rows: usize,
    method: Method,
    alpha_options: &AlphaOptions,
) -> Result<LinearBounds, BoundsError> {
    linear_bounds_impl(
        net,
        from,
        to,
        input,
        spec,
        rows,
        method,
        alpha_options,
        true,
    )
}

/// [`linear_bounds_with`]; `fast` allows the Dense/ReLU chain path (the generic engine
/// otherwise, which the tests compare it with).
#[allow(clippy::too_many_arguments)]
fn linear_bounds_impl(
    net: &Network,
    from: usize,
    to: usize,
    input: &BoxBounds,
    spec: Option<&[f64]>,
    rows: usize,
    method: Method,
    alpha_options: &AlphaOptions,
    fast: bool,
) -> Result<LinearBounds, BoundsError> {
    let layers = net.layers.len();
    if from > to || to > layers {
        return Err(BoundsError::LayerRange { from, to, layers });
    }
    let shapes = net.shapes()?;
    let n_in: usize = shapes[from].iter().product();
    let n_out: usize = shapes[to].iter().product();
    input.validate(n_in)?;
    let (spec, rows): (Vec<f64>, usize) = match spec {
        None => {
            let mut id = vec![0.0; n_out * n_out];
            (0..n_out).for_each(|i| id[i * n_out + i] = 1.0);
            (id, n_out)
        }
        Some(s) => {
            if s.len() != rows * n_out {
                return Err(BoundsError::Spec(format!(
                    "{} values, expected {rows} rows x {n_out} outputs = {}",
                    s.len(),
                    rows * n_out
                )));
            }
            if let Some(i) = s.iter().position(|v| !v.is_finite()) {
                return Err(BoundsError::Spec(format!("entry {i} is not finite")));
            }
            (s.to_vec(), rows)
        }
    };
    if fast
        && matches!(method, Method::CrownPure | Method::Crown)
        && let Some(chain) = DenseReluChain::new(net, from, to)
    {
        return chain.linear_bounds(input, &spec, rows, method);
    }
    let ops = ops::build(&net.layers[from..to], &shapes[from..=to], from)?;
    let mode = match method {
        Method::Ibp => Intermediate::Ibp,
        Method::CrownPure => Intermediate::CrownPure,
        Method::Crown | Method::AlphaCrown => Intermediate::CrownIntersect,
    };
    let prop = Propagation::run(ops, input, mode, from)?;
    let output_box = prop
        .bounds
        .last()
        .expect("bounds has ops.len() + 1 entries");
    // IBP of the spec over the output bounds: C centre +- |C| radius.
    let spec_interval = LinearState::from_spec(rows, n_out, &spec).concretise(output_box);

    let (state, concrete) = match method {
        Method::Ibp => {
            let zeros = vec![0.0; rows * n_in];
            let b = LinearBounds {
                rows,
                cols: n_in,
                a_lower: zeros.clone(),
                c_lower: spec_interval.lower.clone(),
                a_upper: zeros,
                c_upper: spec_interval.upper.clone(),
                lower: spec_interval.lower,
                upper: spec_interval.upper,
                layer_bounds: prop.bounds,
            };
            return Ok(b);
        }
        Method::CrownPure => {
            let mut state = prop.linear(&spec, rows, None);
            let concrete = state.concretise(input);
            (state, concrete)
        }
        Method::Crown => {
            let mut state = prop.linear(&spec, rows, None);
            let concrete = state.concretise(input).intersect(&spec_interval);
            (state, concrete)
        }
        Method::AlphaCrown => {
            // Start from CROWN's linear bounds; alpha-CROWN only replaces rows it improves.
            let mut state = prop.linear(&spec, rows, None);
            let crown = state.concretise(input);
            let start = alpha::Optimised {
                upper_a: state.upper_matrix().to_vec(),
                lower_a: state.lower_a,
                lower_c: state.lower_c,
                upper_c: state.upper_c,
                lower: crown.lower.clone(),
                upper: crown.upper.clone(),
                layer_bounds: prop.bounds.clone(),
            };
            let best = alpha::optimise(&prop, &spec, rows, alpha_options, start)?;
            let concrete = BoxBounds::new(best.lower, best.upper)
                .intersect(&crown)
                .intersect(&spec_interval);
            if concrete
                .lower
                .iter()
                .chain(&concrete.upper)
                .any(|v| !v.is_finite())
            {
                return Err(BoundsError::NonFinite {
                    layer: to.saturating_sub(1),
                });
            }
            return Ok(LinearBounds {
                rows,
                cols: n_in,
                a_lower: best.lower_a,
                c_lower: best.lower_c,
                a_upper: best.upper_a,
                c_upper: best.upper_c,
                lower: concrete.lower,
                upper: concrete.upper,
                layer_bounds: best.layer_bounds,
            });
        }
    };
    if concrete
        .lower
        .iter()
        .chain(&concrete.upper)
        .any(|v| !v.is_finite())
    {
        return Err(BoundsError::NonFinite {
            layer: to.saturating_sub(1),
        });
    }
    let upper_a = state.upper_matrix().to_vec();
    Ok(LinearBounds {
        rows,
        cols: n_in,
        a_lower: state.lower_a,
        c_lower: state.lower_c,
        a_upper: upper_a,
        c_upper: state.upper_c,
        lower: concrete.lower,
        upper: concrete.upper,
        layer_bounds: prop.bounds,
    })
}
