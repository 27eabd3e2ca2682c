//! Linear relaxations of scalar activations over a pre-activation interval `[l, u]`.
//!
//! Each function returns two lines with `lower(x) <= f(x) <= upper(x)` for every `x` in
//! `[l, u]`. ReLU and LeakyReLU follow auto_LiRPA exactly (so pure CROWN reproduces its
//! numbers); the S-shaped functions use the CROWN/DeepPoly tangent and secant lines;
//! GELU, which is not monotone, uses lines whose intercepts come from a certified
//! minimum/maximum over the interval (a fine grid plus an interpolation-error margin).
//!
//! The transcendental relaxations are widened by [`EVAL_SLACK`] so that the last-bit
//! errors of `exp`, `tanh` and `erf` cannot make a line cross the function.

use crate::model::erf;

/// Absolute widening of the intercepts of transcendental relaxations (sigmoid, tanh,
/// GELU): far above their evaluation error (~1e-16), far below anything that matters.
pub const EVAL_SLACK: f64 = 1e-12;

/// The line `slope * x + intercept`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    /// Slope.
    pub slope: f64,
    /// Value at `x = 0`.
    pub intercept: f64,
}

impl Line {
    /// The line's value at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.slope * x + self.intercept
    }

    fn through(x0: f64, y0: f64, slope: f64) -> Self {
        Self {
            slope,
            intercept: y0 - slope * x0,
        }
    }

    fn widened(self, by: f64) -> Self {
        Self {
            slope: self.slope,
            intercept: self.intercept + by,
        }
    }
}

/// A sound lower and upper line for one neuron.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalarRelaxation {
    /// `lower(x) <= f(x)` on the interval.
    pub lower: Line,
    /// `f(x) <= upper(x)` on the interval.
    pub upper: Line,
}

/// auto_LiRPA's ReLU relaxation (`activation_bound_option = "adaptive"`): upper line
/// `u/(u-l) * (x - l)` computed with `l` clamped to `<= 0`, `u` clamped to `>= 0` and
/// `>= l + 1e-8`; lower line `slope * x` with slope 1 if `u/(u-l) > 0.5` (i.e. `u > -l`)
/// else 0. Stable neurons come out exact.
pub fn relu(l: f64, u: f64) -> ScalarRelaxation {
    let lr = l.min(0.0);
    let ur = u.max(0.0).max(lr + 1e-8);
    let upper_slope = ur / (ur - lr);
    let upper_intercept = -lr * upper_slope;
    let lower_slope = if upper_slope > 0.5 { 1.0 } else { 0.0 };
    ScalarRelaxation {
        lower: Line {
            slope: lower_slope,
            intercept: 0.0,
        },
        upper: Line {
            slope: upper_slope,
            intercept: upper_intercept,
        },
    }
}

/// True when the ReLU-like neuron over `[l, u]` is unstable, so that any lower slope in
/// the activation's slope range gives a sound lower line through the origin.
pub fn relu_is_unstable(l: f64, u: f64) -> bool {
    l < 0.0 && u > 0.0
}

/// LeakyReLU with negative slope `alpha` in `[0, 1)`: exact when stable; otherwise the
/// chord as upper line and `slope * x` with slope 1 if `u > -l` else `alpha` as lower.
pub fn leaky_relu(alpha: f64, l: f64, u: f64) -> ScalarRelaxation {
    if l >= 0.0 {
        let line = Line {
            slope: 1.0,
            intercept: 0.0,
        };
        return ScalarRelaxation {
            lower: line,
            upper: line,
        };
    }
    if u <= 0.0 {
        let line = Line {
            slope: alpha,
            intercept: 0.0,
        };
        return ScalarRelaxation {
            lower: line,
            upper: line,
        };
    }
    let slope = (u - alpha * l) / (u - l);
    // The chord through (l, alpha*l) and (u, u); written through the right end point.
    let upper = Line {
        slope,
        intercept: u - slope * u,
    };
    // Guard the left end point against rounding: raise the intercept if needed.
    let upper = upper.widened((alpha * l - upper.at(l)).max(0.0));
    let lower_slope = if u > -l { 1.0 } else { alpha };
    ScalarRelaxation {
        lower: Line {
            slope: lower_slope,
            intercept: 0.0,
        },
        upper,
    }
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn sigmoid_derivative(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 - s)
}

fn tanh_derivative(x: f64) -> f64 {
    let t = x.tanh();
    1.0 - t * t
}

/// Sigmoid relaxation (CROWN tangent/secant lines, see [`s_shaped`]).
pub fn sigmoid_relaxation(l: f64, u: f64) -> ScalarRelaxation {
    s_shaped(l, u, sigmoid, sigmoid_derivative)
}

/// Tanh relaxation (CROWN tangent/secant lines, see [`s_shaped`]).
pub fn tanh_relaxation(l: f64, u: f64) -> ScalarRelaxation {
    s_shaped(l, u, f64::tanh, tanh_derivative)
}

/// Relaxation of an increasing function that is convex on `x <= 0` and concave on
/// `x >= 0` (sigmoid, tanh), as in CROWN (Zhang et al. 2018):
/// - convex region (`u <= 0`): upper = chord, lower = tangent at the midpoint;
/// - concave region (`l >= 0`): lower = chord, upper = tangent at the midpoint;
/// - mixed: each side is the chord when the chord is valid (upper iff
///   `f'(u) >= chord slope`, lower iff `f'(l) >= chord slope`), otherwise the tangent at
///   the point `d` whose tangent passes through the opposite end point, found by
///   bisection that always keeps the side where the line is still valid.
pub fn s_shaped(l: f64, u: f64, f: fn(f64) -> f64, df: fn(f64) -> f64) -> ScalarRelaxation {
    let (fl, fu) = (f(l), f(u));
    // Monotone, so [f(l), f(u)] always holds; for a (near-)point interval it is the best.
    let flat = ScalarRelaxation {
        lower: Line {
            slope: 0.0,
            intercept: fl - EVAL_SLACK,
        },
        upper: Line {
            slope: 0.0,
            intercept: fu + EVAL_SLACK,
        },
    };
    // NaN widths count as degenerate too.
    if (u - l).partial_cmp(&(1e-9 * (1.0 + l.abs().max(u.abs()))))
        != Some(std::cmp::Ordering::Greater)
    {
        return flat;
    }
    let chord_slope = (fu - fl) / (u - l);
    let chord = Line::through(l, fl, chord_slope);
    let tangent = |d: f64| Line::through(d, f(d), df(d));
    let mid = 0.5 * (l + u);
    let (lower, upper) = if u <= 0.0 {
        (tangent(mid), chord)
    } else if l >= 0.0 {
        (chord, tangent(mid))
    } else {
        let upper = if df(u) >= chord_slope {
            chord
        } else {
            // h(d) = tangent_d(l) - f(l): <= 0 at d = 0, > 0 at d = u; keep h >= 0.
            let (mut lo, mut hi) = (0.0, u);
            for _ in 0..60 {
                let m = 0.5 * (lo + hi);
                if tangent(m).at(l) >= fl {
                    hi = m;
                } else {
                    lo = m;
                }
            }
            tangent(hi)
        };
        let lower = if df(l) >= chord_slope {
            chord
        } else {
            // h(d) = f(u) - tangent_d(u): <= 0 at d = 0, > 0 at d = l; keep h >= 0.
            let (mut lo, mut hi) = (l, 0.0);
            for _ in 0..60 {
                let m = 0.5 * (lo + hi);
                if tangent(m).at(u) <= fu {
                    lo = m;
                } else {
                    hi = m;
                }
            }
            tangent(lo)
        };
        (lower, upper)
    };
    let relaxed = ScalarRelaxation {
        lower: lower.widened(-EVAL_SLACK),
        upper: upper.widened(EVAL_SLACK),
    };
    // The lines are valid but may be looser than the constant range on tiny intervals.
    if relaxed.lower.slope.is_finite() && relaxed.upper.slope.is_finite() {
        relaxed
    } else {
        flat
    }
}

/// Exact GELU, `x * Phi(x)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn gelu_derivative(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
        + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Where GELU is minimal (`Phi(x) + x phi(x) = 0`), and an upper bound on how far below
/// `gelu(GELU_ARGMIN)` the true minimum can lie (the point is accurate to ~1e-12, and the
/// derivative vanishes there, so the value error is far smaller).
const GELU_ARGMIN: f64 = -0.751_791_524_693_564_5;

/// Beyond this |x| GELU equals `x` (right) or `0` (left) to within [`GELU_TAIL_ERROR`].
const GELU_TAIL: f64 = 8.0;
/// `phi(8) ~ 5.1e-15` bounds `|gelu(x) - max(x, 0)|` for `|x| >= 8`.
const GELU_TAIL_ERROR: f64 = 1e-14;
/// `max |gelu''(x)| = max phi(x) |2 - x^2| = 2 phi(0) < 0.8`.
const GELU_MAX_CURVATURE: f64 = 0.8;
/// Grid segments over the core part `[max(l,-8), min(u,8)]`.
const GELU_GRID: usize = 128;

/// Certified `min` and `max` over `x` in `[l, u]` of `gelu(x) - slope * x`.
///
/// Core part (`|x| <= 8`): sampled on a uniform grid with spacing `h`; between two grid
/// points a C^2 function differs from its chord by at most `max|g''| h^2 / 8`, and
/// `g'' = gelu''`, so the extremes are the grid extremes widened by `0.8 h^2 / 8`.
/// Tails: `gelu(x)` is `x` (or `0`) to within 1e-14 there, so `g` is linear up to that
/// error and its extremes are at the tail end points.
fn gelu_minus_line_range(l: f64, u: f64, slope: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut take = |v: f64, err: f64| {
        lo = lo.min(v - err);
        hi = hi.max(v + err);
    };
    if l < -GELU_TAIL {
        let b = u.min(-GELU_TAIL);
        for x in [l, b] {
            take(-slope * x, GELU_TAIL_ERROR);
        }
    }
    if u > GELU_TAIL {
        let a = l.max(GELU_TAIL);
        for x in [a, u] {
            take((1.0 - slope) * x, GELU_TAIL_ERROR);
        }
    }
    let (a, b) = (l.max(-GELU_TAIL), u.min(GELU_TAIL));
    if a <= b {
        let h = (b - a) / GELU_GRID as f64;
        let margin = GELU_MAX_CURVATURE * h * h / 8.0;
        for i in 0..=GELU_GRID {
            let x = if i == GELU_GRID { b } else { a + h * i as f64 };
            take(gelu(x) - slope * x, margin);
        }
    }
    (lo, hi)
}

/// GELU relaxation. GELU is neither monotone nor convex, so the slopes are chosen
/// heuristically (upper: the chord; lower: the tangent slope at the midpoint) and the
/// intercepts are then made sound: `intercept = min/max over [l, u] of gelu(x) - slope*x`,
/// certified by [`gelu_minus_line_range`], widened by [`EVAL_SLACK`].
pub fn gelu_relaxation(l: f64, u: f64) -> ScalarRelaxation {
    let (gl, gu) = (gelu(l), gelu(u));
    // NaN widths count as degenerate too.
    if (u - l).partial_cmp(&(1e-9 * (1.0 + l.abs().max(u.abs()))))
        != Some(std::cmp::Ordering::Greater)
    {
        // Point interval: the value range over [l, u] is within the end values, widened
        // by what GELU's derivative (|gelu'| <= 1.13) allows over the tiny width.
        let spread = 1.2 * (u - l);
        return ScalarRelaxation {
            lower: Line {
                slope: 0.0,
                intercept: gl.min(gu) - spread - EVAL_SLACK,
            },
            upper: Line {
                slope: 0.0,
                intercept: gl.max(gu) + spread + EVAL_SLACK,
            },
        };
    }
    let upper_slope = (gu - gl) / (u - l);
    let mid = (0.5 * (l + u)).clamp(-GELU_TAIL, GELU_TAIL);
    let lower_slope = gelu_derivative(mid);
    let (lower_intercept, _) = gelu_minus_line_range(l, u, lower_slope);
    let (_, upper_intercept) = gelu_minus_line_range(l, u, upper_slope);
    ScalarRelaxation {
        lower: Line {
            slope: lower_slope,
            intercept: lower_intercept - EVAL_SLACK,
        },
        upper: Line {
            slope: upper_slope,
            intercept: upper_intercept + EVAL_SLACK,
        },
    }
}

/// Sound interval of GELU over `[l, u]`: GELU decreases up to [`GELU_ARGMIN`] and
/// increases after it, so the maximum is at an end point and the minimum at an end point
/// or at the argmin.
pub fn gelu_interval(l: f64, u: f64) -> (f64, f64) {
    let (gl, gu) = (gelu(l), gelu(u));
    let mut lo = gl.min(gu);
    if l <= GELU_ARGMIN && GELU_ARGMIN <= u {
        lo = lo.min(gelu(GELU_ARGMIN));
    }
    (lo - EVAL_SLACK, gl.max(gu) + EVAL_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Checks both lines against `f` at the end points and at `samples` points inside.
    fn check(
        f: impl Fn(f64) -> f64,
        r: ScalarRelaxation,
        l: f64,
        u: f64,
    ) -> Result<(), TestCaseError> {
        let n = 400;
        for i in 0..=n {
            let x = if i == n {
                u
            } else {
                l + (u - l) * (i as f64 / n as f64)
            };
            let x = x.clamp(l, u);
            let y = f(x);
            let tol = 1e-10 * (1.0 + y.abs() + x.abs());
            prop_assert!(
                r.lower.at(x) <= y + tol,
                "lower {:?} at {x}: {} > f = {y} on [{l}, {u}]",
                r.lower,
                r.lower.at(x)
            );
            prop_assert!(
                y <= r.upper.at(x) + tol,
                "upper {:?} at {x}: {} < f = {y} on [{l}, {u}]",
                r.upper,
                r.upper.at(x)
            );
        }
        Ok(())
    }

    /// Random intervals: ordinary, degenerate, tiny, wide, extreme and one-sided.
    fn interval() -> impl Strategy<Value = (f64, f64)> {
        prop_oneof![
            (-5.0..5.0f64, 0.0..5.0f64).prop_map(|(l, w)| (l, l + w)),
            (-5.0..5.0f64).prop_map(|x| (x, x)),
            (-5.0..5.0f64, 0.0..1e-7f64).prop_map(|(l, w)| (l, l + w)),
            (-200.0..200.0f64, 0.0..400.0f64).prop_map(|(l, w)| (l, l + w)),
            (-1e6..0.0f64, 0.0..1e6f64).prop_map(|(l, u)| (l, u)),
            (-30.0..-0.0f64, 0.0..30.0f64).prop_map(|(a, w)| (a - w, a)),
            (0.0..30.0f64, 0.0..30.0f64).prop_map(|(a, w)| (a, a + w)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        #[test]
        fn relu_lines_enclose_relu((l, u) in interval()) {
            check(|x| x.max(0.0), relu(l, u), l, u)?;
        }

        #[test]
        fn leaky_relu_lines_enclose_leaky_relu((l, u) in interval(), alpha in 0.0..1.0f64) {
            check(|x| if x >= 0.0 { x } else { alpha * x }, leaky_relu(alpha, l, u), l, u)?;
        }

        #[test]
        fn sigmoid_lines_enclose_sigmoid((l, u) in interval()) {
            check(sigmoid, sigmoid_relaxation(l, u), l, u)?;
        }

        #[test]
        fn tanh_lines_enclose_tanh((l, u) in interval()) {
            check(f64::tanh, tanh_relaxation(l, u), l, u)?;
        }

        #[test]
        fn gelu_lines_enclose_gelu((l, u) in interval()) {
            check(gelu, gelu_relaxation(l, u), l, u)?;
        }

        #[test]
        fn gelu_interval_encloses_gelu((l, u) in interval()) {
            let (lo, hi) = gelu_interval(l, u);
            for i in 0..=400 {
                let x = (l + (u - l) * (i as f64 / 400.0)).clamp(l, u);
                prop_assert!(lo <= gelu(x) && gelu(x) <= hi, "gelu({x}) = {} outside [{lo}, {hi}]", gelu(x));
            }
        }
    }

    #[test]
    fn relu_matches_auto_lirpa_cases() {
        // Unstable, u > -l: lower slope 1; tie u == -l: 0; stable neurons exact.
        let r = relu(-1.0, 3.0);
        assert_eq!(r.lower.slope, 1.0);
        assert!((r.upper.slope - 0.75).abs() < 1e-15 && (r.upper.intercept - 0.75).abs() < 1e-15);
        assert_eq!(relu(-2.0, 2.0).lower.slope, 0.0);
        assert_eq!(
            relu(1.0, 2.0).upper,
            Line {
                slope: 1.0,
                intercept: 0.0
            }
        );
        assert_eq!(
            relu(-2.0, -1.0).upper,
            Line {
                slope: 0.0,
                intercept: 0.0
            }
        );
    }

    #[test]
    fn gelu_argmin_is_a_minimum() {
        let m = gelu(GELU_ARGMIN);
        for d in [1e-6, 1e-4, 1e-2] {
            assert!(gelu(GELU_ARGMIN - d) >= m && gelu(GELU_ARGMIN + d) >= m);
        }
        assert!(gelu_derivative(GELU_ARGMIN).abs() < 1e-12);
    }

    #[test]
    fn s_shaped_tight_on_small_intervals() {
        // On a small interval the relaxation gap must be small (not just sound).
        let r = sigmoid_relaxation(-0.1, 0.1);
        assert!(r.upper.at(0.0) - r.lower.at(0.0) < 1e-3, "{r:?}");
        let r = gelu_relaxation(-0.1, 0.1);
        assert!(r.upper.at(0.0) - r.lower.at(0.0) < 1e-2, "{r:?}");
    }
}
