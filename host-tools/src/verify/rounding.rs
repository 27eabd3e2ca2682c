//! A sound bound on the f32 rounding error of evaluating a network on the device.
//!
//! The verifier proves properties of the exact (real-arithmetic) network `f` with f64
//! bound propagation, but the device evaluates `f̂`, the same network in f32. A verdict
//! "holds" is only given when the certified margin of every excluded constraint
//! `c·y - rhs` exceeds `|c|·E`, where `E` bounds `|f̂(x) - f(x)|` element-wise over the box.
//! This module computes `E` with the standard model of floating-point arithmetic
//! (Higham, *Accuracy and Stability of Numerical Algorithms*, §2.2 and §3.1).
//!
//! # Derivation
//!
//! Let `u = 2^-24` (unit roundoff of f32, round to nearest) and
//! `γ_n = n u / (1 - n u)`. Every computed f32 operation satisfies
//! `fl(a op b) = (a op b)(1 + δ)`, `|δ| <= u` (no underflow to subnormals at the
//! magnitudes involved; gradual underflow only adds an absolute error below 2^-149 per
//! operation, far below the slack used here). Any summation order (including SIMD lanes
//! and fused multiply-adds) of an `n`-term sum of products satisfies
//! `|fl(Σ a_i b_i) - Σ a_i b_i| <= γ_n Σ |a_i b_i|`.
//!
//! We propagate two element-wise bounds through the layers: `M`, a bound on the exact
//! activation magnitudes `|x|` over the box (from interval bound propagation, IBP), and `e`,
//! a bound on the device error `|x̂ - x|`. At the input, the device receives `fl32(x)`, so
//! `e_0 = u |x|`.
//!
//! * **Dense / Conv2d** (`z = W x + b`, `n` products per output; for a convolution
//!   `n = in_channels · kernel_h · kernel_w`). The device stores `Ŵ = fl32(W)`,
//!   `b̂ = fl32(b)` (`|Ŵ - W| <= u|W|`) and computes `ẑ = fl(Ŵ x̂ + b̂)`, an `(n+1)`-term
//!   sum. Then
//!   `|ẑ - z| <= |ẑ - (Ŵx̂ + b̂)| + |Ŵ - W||x̂| + |W||x̂ - x| + |b̂ - b|`
//!   `        <= γ_{n+1}(|Ŵ||x̂| + |b̂|) + u|W|(M + e) + |W| e + u|b|`
//!   `        <= |W| e + g_{n+1} (|W|(M + e) + |b|)`, with `g_k = (1 + u) γ_k + u`,
//!   using `|Ŵ| <= (1+u)|W|`, `|b̂| <= (1+u)|b|` and `|x̂| <= M + e`.
//! * **ReLU, MaxPool, Flatten**: exact operations that are 1-Lipschitz in the max norm:
//!   `e_out = e` (max over the window for MaxPool).
//! * **LeakyReLU**: 1-Lipschitz, plus one rounded product `α x̂`:
//!   `e_out = e + u α (M + e)`.
//! * **AvgPool** over `k` cells: a `k`-term sum then a division:
//!   `e_out <= max_window e + g_k max_window (M + e)`.
//! * **Sigmoid** (Lipschitz 1/4), **Tanh** (1), **GELU** (Lipschitz
//!   `max |GELU'| = 1.1289 < 1.13`): `e_out = L e + ε_act` where `ε_act` is the
//!   accuracy contract of the device's transcendental kernels, taken as
//!   [`TRANSCENDENTAL_ABS_ERROR`] (absolute) plus `8u` relative to the result magnitude.
//!   A device kernel less accurate than that voids the claim; ReLU networks (ACAS Xu,
//!   the MNIST nets) do not depend on it.
//!
//! Magnitudes `M` come from sound bounds of every layer's input over the same box: the
//! bound engine's intermediate bounds (CROWN's, intersected with IBP) when available
//! ([`f32_error_bound_from`]), else an IBP pass ([`interval_bounds`]). Their own f64
//! rounding (~1e-16 relative) is absorbed by the factor [`SLACK`].
//!
//! The bound is checked by sampling against an actual f32 evaluation ([`forward_f32`],
//! and tract in the integration tests).
//!
//! At a single input, [`point_error_bounds`] is far sharper (signed propagation along the
//! known activation pattern instead of `|W|` products: ~5e-3 instead of 1e4-5e6 logits on
//! the deep MNIST networks); it is checked against the device core's kernels in
//! `host-tools/tests/point_error_bound.rs`.

use crate::model::{Conv2d, Layer, Network, Pool2d};

/// Unit roundoff of f32.
pub const U32: f64 = 1.0 / 16_777_216.0;

/// Assumed absolute accuracy of the device's sigmoid/tanh/GELU kernels (see module docs).
pub const TRANSCENDENTAL_ABS_ERROR: f64 = 1e-6;

/// Multiplicative slack on the final bound, absorbing the f64 rounding of this computation.
pub const SLACK: f64 = 1.0 + 1e-6;

/// Lipschitz bound of exact GELU.
const GELU_LIPSCHITZ: f64 = 1.13;

/// `γ_n = n u / (1 - n u)` for f32.
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U32;
    if nu >= 1.0 {
        f64::INFINITY
    } else {
        nu / (1.0 - nu)
    }
}

/// `g_n = (1 + u) γ_n + u`: the factor of the rounding terms of a dense or conv layer.
fn g(n: usize) -> f64 {
    (1.0 + U32) * gamma(n) + U32
}

/// Sound interval bounds `[lower, upper]` of every layer's input and of the output
/// (`layers.len() + 1` pairs) of the exact network over the box (interval bound
/// propagation in f64).
pub fn interval_bounds(net: &Network, lower: &[f64], upper: &[f64]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut out = vec![(lower.to_vec(), upper.to_vec())];
    for layer in &net.layers {
        let (l, u) = out.last().expect("non-empty");
        let next = match layer {
            Layer::Dense(d) => {
                let (mid, rad) = mid_rad(l, u);
                let c = d.apply(&mid);
                let r: Vec<f64> = (0..d.out_dim)
                    .map(|o| {
                        d.row(o)
                            .iter()
                            .zip(&rad)
                            .map(|(w, r)| w.abs() * r)
                            .sum::<f64>()
                    })
                    .collect();
                widen(&c, &r)
            }
            Layer::Conv2d(conv) => {
                let (mid, rad) = mid_rad(l, u);
                let c = conv.apply(&mid);
                let r = abs_conv(conv).apply(&rad);
                widen(&c, &r)
            }
            // Monotone (non-decreasing) maps: apply to both ends.
            Layer::AvgPool2d(_) | Layer::MaxPool2d(_) | Layer::Flatten => {
                (layer.apply(l), layer.apply(u))
            }
            Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh => {
                (layer.apply(l), layer.apply(u))
            }
            Layer::Gelu => {
                // GELU decreases on (-inf, x*] and increases on [x*, inf), x* ~ -0.7518,
                // with minimum value ~ -0.16997: use -0.17 as a sound floor there.
                const ARGMIN: f64 = -0.751_791_524_693_564_5;
                let lo = l
                    .iter()
                    .zip(u)
                    .map(|(&a, &b)| {
                        if a <= ARGMIN && ARGMIN <= b {
                            -0.17
                        } else {
                            layer.activate(a).min(layer.activate(b))
                        }
                    })
                    .collect();
                let hi = l
                    .iter()
                    .zip(u)
                    .map(|(&a, &b)| layer.activate(a).max(layer.activate(b)))
                    .collect();
                (lo, hi)
            }
        };
        out.push(next);
    }
    out
}

fn mid_rad(l: &[f64], u: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mid = l.iter().zip(u).map(|(a, b)| 0.5 * (a + b)).collect();
    let rad = l.iter().zip(u).map(|(a, b)| 0.5 * (b - a)).collect();
    (mid, rad)
}

/// `[c - r, c + r]`, widened by a relative 1e-12 for the f64 rounding of the IBP itself.
fn widen(c: &[f64], r: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let pad = |c: f64, r: f64| r + 1e-12 * (c.abs() + r);
    (
        c.iter().zip(r).map(|(&c, &r)| c - pad(c, r)).collect(),
        c.iter().zip(r).map(|(&c, &r)| c + pad(c, r)).collect(),
    )
}

/// The convolution with `|W|` and no bias.
fn abs_conv(conv: &Conv2d) -> Conv2d {
    Conv2d {
        weight: conv.weight.iter().map(|w| w.abs()).collect(),
        bias: vec![0.0; conv.bias.len()],
        ..conv.clone()
    }
}

/// Element-wise bound on `|f̂(x) - f(x)|` over the box, where `f̂` is the network evaluated
/// in f32 on the device (see the module docs for the derivation and its assumptions).
pub fn f32_error_bound(net: &Network, lower: &[f64], upper: &[f64]) -> Vec<f64> {
    f32_error_bound_from(net, &interval_bounds(net, lower, upper))
}

/// [`f32_error_bound`] from given sound bounds of every layer's input and of the output
/// (`layers.len() + 1` pairs, e.g. CROWN's intermediate bounds, much tighter than IBP's
/// on deep networks).
pub fn f32_error_bound_from(net: &Network, bounds: &[(Vec<f64>, Vec<f64>)]) -> Vec<f64> {
    let magnitude = |(l, u): &(Vec<f64>, Vec<f64>)| -> Vec<f64> {
        l.iter().zip(u).map(|(a, b)| a.abs().max(b.abs())).collect()
    };
    let mut err: Vec<f64> = magnitude(&bounds[0]).iter().map(|m| U32 * m).collect();
    for (layer, b) in net.layers.iter().zip(bounds) {
        let m = magnitude(b);
        err = match layer {
            Layer::Dense(d) => {
                let gn = g(d.in_dim + 1);
                (0..d.out_dim)
                    .map(|o| {
                        let (mut prop, mut mag) = (0.0, d.bias[o].abs());
                        for ((w, e), m) in d.row(o).iter().zip(&err).zip(&m) {
                            prop += w.abs() * e;
                            mag += w.abs() * (m + e);
                        }
                        prop + gn * mag
                    })
                    .collect()
            }
            Layer::Conv2d(conv) => {
                let gn = g(conv.in_channels * conv.kernel_h * conv.kernel_w + 1);
                let abs = abs_conv(conv);
                let prop = abs.apply(&err);
                let me: Vec<f64> = m.iter().zip(&err).map(|(m, e)| m + e).collect();
                let mag = abs.apply(&me);
                let bias_of = |i: usize| conv.bias[i / (conv.out_h() * conv.out_w())].abs();
                (0..prop.len())
                    .map(|i| prop[i] + gn * (mag[i] + bias_of(i)))
                    .collect()
            }
            Layer::Relu | Layer::Flatten => err,
            Layer::LeakyRelu { alpha } => err
                .iter()
                .zip(&m)
                .map(|(e, m)| e + U32 * alpha * (m + e))
                .collect(),
            Layer::MaxPool2d(p) => pool_max(p, &err),
            Layer::AvgPool2d(p) => {
                let k = p.kernel_h * p.kernel_w;
                let me: Vec<f64> = m.iter().zip(&err).map(|(m, e)| m + e).collect();
                pool_max(p, &err)
                    .iter()
                    .zip(pool_max(p, &me))
                    .map(|(e, me)| e + g(k) * me)
                    .collect()
            }
            Layer::Sigmoid | Layer::Tanh | Layer::Gelu => {
                let lip = match layer {
                    Layer::Sigmoid => 0.25,
                    Layer::Tanh => 1.0,
                    _ => GELU_LIPSCHITZ,
                };
                // Result magnitude: sigmoid, tanh <= 1; |GELU(x)| <= |x|.
                let out_mag = |m: f64| if matches!(layer, Layer::Gelu) { m } else { 1.0 };
                err.iter()
                    .zip(&m)
                    .map(|(e, m)| lip * e + TRANSCENDENTAL_ABS_ERROR + 8.0 * U32 * (out_mag(m + e)))
                    .collect()
            }
        };
    }
    err.iter().map(|e| e * SLACK).collect()
}

/// Bounds on `|rows[k]·(f̂(x) - f(x))|` over the box, much tighter than `|rows[k]|·E`
/// for Dense/ReLU networks; `None` for other layer kinds (use [`f32_error_bound_from`]).
///
/// Write the device error of every layer as the propagated input error plus a local
/// rounding term: for a dense layer `ẑ - z = W(x̂ - x) + δ` with
/// `|δ| <= g_{n+1}(|W|(M + e) + |b|)` (the derivation above), and for ReLU
/// `relu(x̂) - relu(x) = s (x̂ - x)` with `s ∈ [0, 1]`, where `s = 1` when the neuron and
/// its device value are both surely positive (`l - e > 0`) and `s = 0` when both are
/// surely non-positive (`u + e <= 0`); any other `s` is `1/2 + ρ` with
/// `|ρ (x̂ - x)| <= e / 2`, a local term of the ReLU layer. Then the output error is
/// `Σ_k J_k δ_k + J_0 e_0` with `J_k = W_L S ... S W_{k+1}` (S the diagonal point slopes
/// 0, 1/2 or 1), and `|c·J_k δ_k| <= |c J_k| |δ_k|`, where `c J_k` is computed by
/// backward propagation of the row `c` (in intervals only to enclose its f64 rounding).
/// The `e` that decides a neuron's slope is the smaller of the forward `|W|`-product
/// bound and the same backward bound of that neuron's own error.
pub fn spec_error_bounds(
    net: &Network,
    bounds: &[(Vec<f64>, Vec<f64>)],
    rows: &[Vec<f64>],
) -> Option<Vec<f64>> {
    if bounds.len() != net.layers.len() + 1 {
        return None;
    }
    let magnitude = |(l, u): &(Vec<f64>, Vec<f64>)| -> Vec<f64> {
        l.iter().zip(u).map(|(a, b)| a.abs().max(b.abs())).collect()
    };
    let e0: Vec<f64> = magnitude(&bounds[0]).iter().map(|m| U32 * m).collect();
    let mut err = e0.clone();
    let mut steps = Vec::new();
    let col_sums = layer_abs_column_sums(&net.layers);
    for (k, (layer, b)) in net.layers.iter().zip(bounds).enumerate() {
        let m = magnitude(b);
        match layer {
            Layer::Dense(d) => {
                let gn = g(d.in_dim + 1);
                let mut local = Vec::with_capacity(d.out_dim);
                let mut next = Vec::with_capacity(d.out_dim);
                for o in 0..d.out_dim {
                    let (mut prop, mut mag) = (0.0, d.bias[o].abs());
                    for ((w, e), m) in d.row(o).iter().zip(&err).zip(&m) {
                        prop += w.abs() * e;
                        mag += w.abs() * (m + e);
                    }
                    local.push(gn * mag);
                    next.push(prop + gn * mag);
                }
                err = next;
                steps.push(ErrorStep::Dense(local));
            }
            Layer::Relu => {
                let (l, u) = b;
                // Per neuron, `relu(x̂) - relu(x) = s (x̂ - x)` with `s ∈ [0, 1]`: `s = 1`
                // when the neuron and its device value are surely positive (`l - e > 0`),
                // `s = 0` when both are surely non-positive (`u + e <= 0`). Otherwise `s` is
                // written `1/2 + (s - 1/2)`: the backward products keep the point slope
                // 1/2 (signed, as in `point_error_bounds`) and the remainder, at most
                // `e / 2` in size, enters as a local term of this layer. An interval slope
                // would turn every product below it into `|W|` products instead.
                //
                // The forward error `err` (`|W|` products) grows like `‖|W|‖^L`; on the
                // neurons it leaves undecided, the signed backward bound of the neuron's own
                // error (the bound used for the spec rows, with a unit row) is usually far
                // smaller (a repaired ACAS Xu network, a box 4e-3 wide: 2.6e-3 against
                // 1.4e-4 for its spec row).
                let decide = |i: usize, e: f64| {
                    if l[i] - e > 0.0 {
                        Some(1.0)
                    } else if u[i] + e <= 0.0 {
                        Some(0.0)
                    } else {
                        None
                    }
                };
                // SLACK covers the f64 rounding of the sums that gave `err`.
                err.iter_mut().for_each(|e| *e *= SLACK);
                // The neurons the forward bound leaves undecided get the backward bound of
                // their own error, all in one batched pass (one unit row each).
                let undecided: Vec<usize> = (0..err.len())
                    .filter(|&i| decide(i, err[i]).is_none())
                    .collect();
                let units: Vec<Vec<f64>> = undecided
                    .iter()
                    .map(|&i| {
                        (0..err.len())
                            .map(|j| f64::from(u8::from(i == j)))
                            .collect()
                    })
                    .collect();
                let sharp =
                    backward_error_bounds(&net.layers[..k], &col_sums[..k], &steps, &e0, &units);
                for (&i, s) in undecided.iter().zip(sharp) {
                    err[i] = err[i].min(SLACK * s);
                }
                let mut remainder = vec![0.0; err.len()];
                let slopes: Vec<f64> = (0..err.len())
                    .map(|i| {
                        decide(i, err[i]).unwrap_or_else(|| {
                            remainder[i] = 0.5 * err[i];
                            0.5
                        })
                    })
                    .collect();
                // The forward bound: `|s (x̂ - x)| <= e` for any `s` in `[0, 1]`.
                err = err
                    .iter()
                    .zip(&slopes)
                    .map(|(e, &s)| if s == 0.0 { 0.0 } else { *e })
                    .collect();
                steps.push(ErrorStep::Relu { slopes, remainder });
            }
            Layer::Flatten => steps.push(ErrorStep::Identity),
            _ => return None,
        }
    }
    Some(
        backward_error_bounds(&net.layers, &col_sums, &steps, &e0, rows)
            .into_iter()
            .map(|b| {
                let b = SLACK * b;
                // Non-finite bounds or weights must never pass for a small error.
                if b.is_nan() { f64::INFINITY } else { b }
            })
            .collect(),
    )
}

/// One layer of [`spec_error_bounds`]' error model: a dense layer's local rounding bounds,
/// a ReLU's point slopes (0, 1/2 or 1) with the bounds of the remainders of the 1/2
/// slopes, or an exact identity.
enum ErrorStep {
    Dense(Vec<f64>),
    Relu {
        slopes: Vec<f64>,
        remainder: Vec<f64>,
    },
    Identity,
}

/// Per layer, `|W|`'s column sums of a dense layer (empty for other layers).
fn layer_abs_column_sums(layers: &[Layer]) -> Vec<Vec<f64>> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Dense(d) => abs_column_sums(d),
            _ => Vec::new(),
        })
        .collect()
}

/// `|W|`'s column sums, rounded up by the relative `γ_n` of their own f64 sums.
fn abs_column_sums(d: &crate::model::Dense) -> Vec<f64> {
    let mut sums = vec![0.0; d.in_dim];
    for o in 0..d.out_dim {
        for (c, w) in sums.iter_mut().zip(d.row(o)) {
            *c += w.abs();
        }
    }
    let up = 1.0 + 2.0 * gamma64(d.out_dim);
    sums.iter_mut().for_each(|c| *c *= up);
    sums
}

/// One dense layer `W` of a backward interval pass over `r` rows `mid ± rad`
/// (`r x out_dim`): `mid W ± rad'` (`r x in_dim`). `|computed(mid W) - mid W| <= γ_n
/// |mid||W|` in any summation order (FMA or not), and `rad W` is enclosed by `rad |W|`;
/// `rad` only carries f64 rounding (~1e-16 relative), so per row its widest entry (with
/// that rounding) times `col_sums` ([`abs_column_sums`]) encloses both: O(dim) per row
/// instead of a second GEMM, which halved the point bound's cost (BENCHMARKS.md, "Sharp
/// f32 rounding bound at a point").
fn dense_step_back(
    d: &crate::model::Dense,
    col_sums: &[f64],
    r: usize,
    mid: &[f64],
    rad: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let gm = gamma64(d.out_dim);
    let new_mid = matmul(r, d.out_dim, d.in_dim, mid, &d.weight);
    let mut new_rad = vec![0.0; r * d.in_dim];
    for row in 0..r {
        let span = row * d.out_dim..(row + 1) * d.out_dim;
        let widest = mid[span.clone()]
            .iter()
            .zip(&rad[span])
            .map(|(m, q)| (1.0 + gm) * q + gm * m.abs())
            .fold(0.0, f64::max);
        // The product's own rounding (non-negative terms: relative γ_n).
        let scale = widest * (1.0 + 2.0 * gm);
        for (q, c) in new_rad[row * d.in_dim..(row + 1) * d.in_dim]
            .iter_mut()
            .zip(col_sums)
        {
            *q = scale * c;
        }
    }
    (new_mid, new_rad)
}

/// Per row `c` of `rows` (over the output of the last of `layers`):
/// `Σ_k |c J_k| δ_k + |c J_0| e_0` (without [`SLACK`]), `δ_k` the dense layers' local
/// rounding and the ReLU slopes' remainders. `c J` is carried backward through the point
/// slopes and each dense layer for all rows at once (one GEMM per dense layer), as
/// `mid ± rad` with `rad` only enclosing the f64 rounding of the propagation.
/// `col_sums` are the layers' [`abs_column_sums`] (computed once per box, not once per
/// ReLU layer).
fn backward_error_bounds(
    layers: &[Layer],
    col_sums: &[Vec<f64>],
    steps: &[ErrorStep],
    e0: &[f64],
    rows: &[Vec<f64>],
) -> Vec<f64> {
    let r = rows.len();
    let mut total = vec![0.0; r];
    let Some(width) = rows.first().map(Vec::len) else {
        return total;
    };
    // Every layer must have its step and column sums (a shorter list would skip layers).
    if rows.iter().any(|c| c.len() != width)
        || steps.len() != layers.len()
        || col_sums.len() != layers.len()
    {
        return vec![f64::INFINITY; r];
    }
    let mut dim = width;
    let mut mid: Vec<f64> = rows.concat();
    let mut rad = vec![0.0; r * dim];
    // Per row, `Σ_i (|mid_i| + rad_i) t_i`: the largest `|c J|` in the interval, times `t`.
    let add_weighted = |total: &mut [f64], mid: &[f64], rad: &[f64], t: &[f64]| {
        let dim = t.len();
        for (row, sum) in total.iter_mut().enumerate() {
            let span = row * dim..(row + 1) * dim;
            *sum += mid[span.clone()]
                .iter()
                .zip(&rad[span])
                .zip(t)
                .map(|((m, q), t)| (m.abs() + q) * t)
                .sum::<f64>();
        }
    };
    for ((layer, step), col_sums) in layers.iter().zip(steps).zip(col_sums).rev() {
        match (layer, step) {
            (Layer::Dense(d), ErrorStep::Dense(local)) => {
                if d.out_dim != dim || col_sums.len() != d.in_dim {
                    return vec![f64::INFINITY; r];
                }
                add_weighted(&mut total, &mid, &rad, local);
                (mid, rad) = dense_step_back(d, col_sums, r, &mid, &rad);
                dim = d.in_dim;
            }
            (Layer::Relu, ErrorStep::Relu { slopes, remainder }) => {
                if slopes.len() != dim {
                    return vec![f64::INFINITY; r];
                }
                add_weighted(&mut total, &mid, &rad, remainder);
                // A product by 0, 1/2 or 1 is exact in f64.
                for row in 0..r {
                    for (i, &sl) in slopes.iter().enumerate() {
                        mid[row * dim + i] *= sl;
                        rad[row * dim + i] *= sl;
                    }
                }
            }
            (Layer::Flatten, ErrorStep::Identity) => {}
            // A step that does not belong to its layer: no bound claimed.
            _ => return vec![f64::INFINITY; r],
        }
    }
    if e0.len() != dim {
        return vec![f64::INFINITY; r];
    }
    add_weighted(&mut total, &mid, &rad, e0);
    total
}

/// Dense layers the per-layer error bounds of [`point_forward_with_error`] are traced back
/// through before the earlier error is taken from the bound already known there.
const ERROR_WINDOW: usize = 3;

/// Unit roundoff of f64 (the host's own forward pass).
const U64: f64 = 1.0 / 9_007_199_254_740_992.0;

/// `γ_n` for f64.
fn gamma64(n: usize) -> f64 {
    let nu = n as f64 * U64;
    nu / (1.0 - nu)
}

/// One step of the error recurrence at a point (see [`point_error_bounds`]).
enum PointStep<'a> {
    /// A dense layer `W` (device error in: `W δ`).
    Dense(&'a crate::model::Dense),
    /// An element-wise activation with slopes in `[lo_i, hi_i]` (`δ_out = D δ_in`).
    Slopes(Vec<f64>, Vec<f64>),
}

/// The local rounding term added at a step's output (`ε_k` of [`point_error_bounds`]).
struct Local<'a> {
    step: PointStep<'a>,
    eps: Vec<f64>,
}

/// `c = a b` (`a` `m x k`, `b` `k x n`, row-major) through `matrixmultiply`.
fn matmul(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    assert!(a.len() >= m * k && b.len() >= k * n, "matmul operand sizes");
    // SAFETY: the assert guarantees a (row stride k) and b (row stride n) hold every
    // element read, c was allocated with m * n elements (row stride n), and c is a fresh
    // buffer aliasing neither operand.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

/// Backward pass of the signed error recurrence: for `r` rows `Λ` (an interval matrix
/// `mid ± rad`, `r x dim` over the output of `steps.last()`), returns per row
/// `Σ_k |Λ_k| ε_k` where `Λ_k = Λ · (the product of the later steps)`, enclosed soundly
/// (interval slopes by interval arithmetic; the f64 rounding of every product widens
/// `rad` by its `γ_n` bound, Higham §3.5).
/// `floor` (a step index and a bound on the device error at that step's output) ends the
/// pass there: the error entering at and before that step is enclosed by `|Λ_floor|`
/// times the bound, instead of being traced back to the input.
fn backward_error(
    steps: &[Local<'_>],
    abs_col_sums: &[Vec<f64>],
    r: usize,
    mut mid: Vec<f64>,
    mut rad: Vec<f64>,
    floor: Option<(usize, &[f64])>,
) -> Vec<f64> {
    let mut total = vec![0.0; r];
    let mut dense_index = abs_col_sums.len();
    for (s, local) in steps.iter().enumerate().rev() {
        let dim = local.eps.len();
        let (bound, last) = match floor {
            Some((f, bound)) if f == s => (bound, true),
            _ => (&local.eps[..], s == 0),
        };
        for (row, t) in total.iter_mut().enumerate() {
            let (m, q) = (
                &mid[row * dim..(row + 1) * dim],
                &rad[row * dim..(row + 1) * dim],
            );
            *t += m
                .iter()
                .zip(q)
                .zip(bound)
                .map(|((m, q), e)| (m.abs() + q) * e)
                .sum::<f64>();
        }
        if last {
            break;
        }
        match &local.step {
            PointStep::Dense(d) => {
                dense_index -= 1;
                (mid, rad) = dense_step_back(d, &abs_col_sums[dense_index], r, &mid, &rad);
            }
            PointStep::Slopes(lo, hi) => {
                for row in 0..r {
                    for i in 0..dim {
                        let j = row * dim + i;
                        let (m, q) = (mid[j], rad[j]);
                        if lo[i] == hi[i] {
                            mid[j] = m * lo[i];
                            rad[j] = q * lo[i].abs();
                            // One rounded product each: 2u relative covers both.
                            rad[j] += 2.0 * U64 * (mid[j].abs() + rad[j]);
                        } else {
                            let (a, b) = (m - q, m + q);
                            let c = [a * lo[i], a * hi[i], b * lo[i], b * hi[i]];
                            let l = c.iter().copied().fold(f64::INFINITY, f64::min);
                            let h = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            mid[j] = 0.5 * (l + h);
                            rad[j] = 0.5 * (h - l) + 4.0 * U64 * (l.abs() + h.abs());
                        }
                    }
                }
            }
        }
    }
    total
}

/// Slope interval `[min f', max f']` over `[z - e, z + e]` of sigmoid or tanh (both have
/// even derivatives decreasing in `|t|`), padded for the f64 evaluation.
fn smooth_slopes(layer: &Layer, z: f64, e: f64) -> (f64, f64) {
    // Tail-accurate forms (no `1 - s` cancellation): σ' = q/(1+q)² with q = e^-|t|,
    // tanh' = 4q/(1+q)² with q = e^-2|t|; a few ulps each, inside the padding.
    let deriv = |t: f64| match layer {
        Layer::Sigmoid => {
            let q = (-t.abs()).exp();
            q / ((1.0 + q) * (1.0 + q))
        }
        _ => {
            let q = (-2.0 * t.abs()).exp();
            4.0 * q / ((1.0 + q) * (1.0 + q))
        }
    };
    let (a, b) = (z - e, z + e);
    let near = if a <= 0.0 && b >= 0.0 {
        0.0
    } else {
        a.abs().min(b.abs())
    };
    let far = a.abs().max(b.abs());
    let (lo, hi) = (deriv(far), deriv(near));
    (
        (lo * (1.0 - 1e-12) - 1e-300).max(0.0),
        hi * (1.0 + 1e-12) + 1e-300,
    )
}

/// Sharp a-posteriori bounds on `|rows[k]·(f̂(x) - y(x))|` at one input `x`, where `f̂` is
/// the device's f32 evaluation (any kernel obeying the module's contract: any summation
/// order, FMA or not) and `y` the host's f64 forward pass [`Network::forward`] (so a gap
/// `rows[k]·y > bound` proves `rows[k]·f̂(x) > 0`). `None` for layer kinds other than
/// Dense, ReLU, LeakyReLU, Sigmoid, Tanh, Flatten, or a network not starting with a
/// Dense layer (use [`f32_error_bound`]).
///
/// Instead of multiplying `|W|` row sums layer by layer (which grows like `‖|W|‖^L`, 8.9e4
/// on mnist_relu_9_100 where the observed error is ~1e-6), the device error `δ_k` of
/// layer `k`'s output is written with SIGNED propagation:
/// `δ_k = W_k D_{k-1} δ_{k-1} + ε_k`, where
/// * `ε_k` is the local rounding of dense layer `k` (module derivation, with the known
///   values `|x̃|` at the point: `g_{n+1}(|W|(|x̃| + e) + |b|)`) plus the f64 host pass's
///   own rounding `γ^{64}_{n+1}(|W||x̃| + |b|)` (so the bound covers `|f̂ - y|`, both
///   measured from the exact network), and for smooth activations the kernel contract
///   [`TRANSCENDENTAL_ABS_ERROR`] + `8u`;
/// * `D` holds the activations' mean-value slopes between the exact, host and device
///   values: exactly 0 or 1 for a ReLU neuron with `|z| > e` (stable), `[0, 1]` if it may
///   flip, `[min σ', max σ']` over `[z - e, z + e]` for sigmoid (tanh alike);
/// * the input rounding `u|x|` enters the first dense layer's `ε` as `|W_1| u |x|`.
///
/// An uncertain slope `s ∈ [lo, hi]` is split as `m + (s - m)`, `m` the midpoint: the
/// remainder enters `ε` as `(hi - lo)/2 · e` and `D` holds `m`, so the backward products
/// stay signed point matrices (kept general: interval slopes are still handled).
///
/// Unrolled, `δ_L = Σ_k M_k ε_k` with `M_k = W_L D ... W_{k+1} D_k`, and
/// `|c·δ_L| <= Σ_k |c M_k| ε_k`, computed by one backward pass per row set (CROWN-style:
/// plain products through fixed slopes, interval products through interval slopes). The
/// per-layer bounds `e_k` that decide stability come from the same backward pass with
/// the identity rows of layer `k` (one pass per layer).
pub fn point_error_bounds(net: &Network, x: &[f64], rows: &[Vec<f64>]) -> Option<Vec<f64>> {
    point_forward_with_error(net, x, rows).map(|(_, bounds)| bounds)
}

/// [`point_error_bounds`] together with the host output `y(x)` the bounds refer to (the
/// f64 forward pass, the same `Layer::apply` calls as [`Network::forward`]).
pub fn point_forward_with_error(
    net: &Network,
    x: &[f64],
    rows: &[Vec<f64>],
) -> Option<(Vec<f64>, Vec<f64>)> {
    if x.len() != net.input_dim() {
        return None;
    }
    let mut steps: Vec<Local<'_>> = Vec::new();
    // Per dense layer, `Σ_o |W_oi|` rounded up (non-negative sums: relative γ_n).
    let mut abs_col_sums: Vec<Vec<f64>> = Vec::new();
    // Per step, the bound `e` on the device error at its output.
    let mut step_bounds: Vec<Vec<f64>> = Vec::new();
    let mut v: Vec<f64> = x.to_vec();
    let mut e: Vec<f64> = x.iter().map(|a| U32 * a.abs()).collect();
    for layer in &net.layers {
        match layer {
            Layer::Flatten => {}
            Layer::Dense(d) => {
                let first = steps.is_empty();
                let n = d.in_dim + 1;
                let (g32, g64) = (g(n), gamma64(n));
                let z = d.apply(&v);
                let eps: Vec<f64> = (0..d.out_dim)
                    .map(|o| {
                        let (mut mag, mut host, mut input) =
                            (d.bias[o].abs(), d.bias[o].abs(), 0.0);
                        for ((w, a), err) in d.row(o).iter().zip(&v).zip(&e) {
                            mag += w.abs() * (a.abs() + err);
                            host += w.abs() * a.abs();
                            input += w.abs() * err;
                        }
                        let local = g32 * mag + g64 * host + if first { input } else { 0.0 };
                        local * (1.0 + 1e-12)
                    })
                    .collect();
                abs_col_sums.push(abs_column_sums(d));
                steps.push(Local {
                    step: PointStep::Dense(d),
                    eps,
                });
                e = if first {
                    steps[0].eps.clone()
                } else {
                    // Traced back `ERROR_WINDOW` dense layers only, from the bound
                    // there (module docs).
                    let k = d.out_dim;
                    let mut eye = vec![0.0; k * k];
                    (0..k).for_each(|i| eye[i * k + i] = 1.0);
                    let floor = (steps.len() - 1).saturating_sub(2 * ERROR_WINDOW);
                    let floor = (floor > 0).then(|| (floor, &step_bounds[floor][..]));
                    backward_error(&steps, &abs_col_sums, k, eye, vec![0.0; k * k], floor)
                        .iter()
                        .map(|t| t * SLACK)
                        .collect()
                };
                step_bounds.push(e.clone());
                v = z;
            }
            Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh => {
                if steps.is_empty() {
                    return None;
                }
                let n = v.len();
                let (mut lo, mut hi, mut eps) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                for i in 0..n {
                    let (z, err) = (v[i], e[i]);
                    match layer {
                        Layer::Relu | Layer::LeakyRelu { .. } => {
                            let alpha = if let Layer::LeakyRelu { alpha } = layer {
                                *alpha
                            } else {
                                0.0
                            };
                            (lo[i], hi[i]) = if z - err > 0.0 {
                                (1.0, 1.0)
                            } else if z + err <= 0.0 {
                                (alpha, alpha)
                            } else {
                                (alpha, 1.0)
                            };
                            if lo[i] < 1.0 && alpha > 0.0 {
                                // The rounded product fl(fl32(α) x̂) (device), α x̃ (host).
                                eps[i] =
                                    (2.0 * U32 + U64) * alpha * (z.abs() + err) * (1.0 + 1e-12);
                            }
                        }
                        _ => {
                            (lo[i], hi[i]) = smooth_slopes(layer, z, err);
                            // Device kernel contract (results <= 1 in magnitude) plus the
                            // host's exp/tanh (a few f64 ulps).
                            eps[i] = TRANSCENDENTAL_ABS_ERROR + 8.0 * U32 + 8.0 * U64;
                        }
                    }
                }
                let e_out: Vec<f64> = (0..n)
                    .map(|i| hi[i].max(lo[i].abs()) * e[i] + eps[i])
                    .collect();
                // Split an uncertain slope s ∈ [lo, hi] into its midpoint m and a local term:
                // s δ = m δ + (s - m) δ with |(s - m) δ| <= (hi - lo)/2 · e. The backward
                // pass then stays a signed point matrix: an interval slope would widen into
                // |W| products again at every later layer (many unstable ReLUs at deep layers
                // of 9_100/9_200 corrupted images made that bound ~30 logits).
                for i in 0..n {
                    if lo[i] != hi[i] {
                        let m = 0.5 * (lo[i] + hi[i]);
                        let r = 0.5 * (hi[i] - lo[i]) + 2.0 * U64 * m.abs();
                        eps[i] += r * e[i] * (1.0 + 1e-12);
                        (lo[i], hi[i]) = (m, m);
                    }
                }
                e = e_out;
                step_bounds.push(e.clone());
                v = layer.apply(&v);
                steps.push(Local {
                    step: PointStep::Slopes(lo, hi),
                    eps,
                });
            }
            _ => return None,
        }
    }
    if steps.is_empty() || rows.iter().any(|c| c.len() != v.len()) {
        return None;
    }
    let dim = v.len();
    let r = rows.len();
    let mid: Vec<f64> = rows.iter().flatten().copied().collect();
    let total = backward_error(&steps, &abs_col_sums, r, mid, vec![0.0; r * dim], None);
    Some((v, total.iter().map(|t| t * SLACK).collect()))
}

/// [`point_error_bounds`] for every output (the unit rows): `|f̂_j(x) - y_j(x)| <= E_j`.
pub fn point_error_bound(net: &Network, x: &[f64]) -> Option<Vec<f64>> {
    let n = net.output_dim();
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|k| f64::from(u8::from(j == k))).collect())
        .collect();
    point_error_bounds(net, x, &rows)
}

/// Max of `v` over each pooling window (padding excluded).
fn pool_max(p: &Pool2d, v: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(p.channels * p.out_h() * p.out_w());
    for c in 0..p.channels {
        for oy in 0..p.out_h() {
            for ox in 0..p.out_w() {
                out.push(p.window(c, oy, ox).map(|i| v[i]).fold(0.0, f64::max));
            }
        }
    }
    out
}

/// A plain f32 evaluation of the network (weights rounded to f32, every operation in f32,
/// sequential sums): one concrete instance of the device arithmetic that
/// [`f32_error_bound`] covers. Used by the sampling tests.
pub fn forward_f32(net: &Network, x: &[f64]) -> Vec<f32> {
    let mut v: Vec<f32> = x.iter().map(|&a| a as f32).collect();
    for layer in &net.layers {
        v = match layer {
            Layer::Dense(d) => (0..d.out_dim)
                .map(|o| {
                    d.row(o)
                        .iter()
                        .zip(&v)
                        .fold(d.bias[o] as f32, |acc, (&w, &a)| acc + (w as f32) * a)
                })
                .collect(),
            Layer::Relu => v.iter().map(|&a| a.max(0.0)).collect(),
            Layer::LeakyRelu { alpha } => v
                .iter()
                .map(|&a| if a >= 0.0 { a } else { *alpha as f32 * a })
                .collect(),
            Layer::Sigmoid => v.iter().map(|&a| 1.0 / (1.0 + (-a).exp())).collect(),
            Layer::Tanh => v.iter().map(|&a| a.tanh()).collect(),
            // Other layers: evaluate in f64 and round (exact ops or not needed by the tests).
            other => other
                .apply(&v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>())
                .iter()
                .map(|&a| a as f32)
                .collect(),
        };
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;
    use crate::verify::falsify::random_point;
    use rand::{Rng, SeedableRng};

    fn random_net(rng: &mut rand_chacha::ChaCha8Rng, dims: &[usize], act: Layer) -> Network {
        let mut layers = Vec::new();
        for (i, w) in dims.windows(2).enumerate() {
            let weight = (0..w[0] * w[1])
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let bias = (0..w[1]).map(|_| rng.random_range(-1.0..1.0)).collect();
            layers.push(Layer::Dense(Dense::new(w[0], w[1], weight, bias).unwrap()));
            if i + 2 < dims.len() {
                layers.push(act.clone());
            }
        }
        Network::new(vec![dims[0]], layers).unwrap()
    }

    #[test]
    fn interval_bounds_contain_sampled_activations() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for act in [
            Layer::Relu,
            Layer::Tanh,
            Layer::Sigmoid,
            Layer::Gelu,
            Layer::LeakyRelu { alpha: 0.1 },
        ] {
            let net = random_net(&mut rng, &[4, 8, 8, 3], act);
            let (lo, hi) = (vec![-1.0, -0.5, 0.0, 0.2], vec![0.5, 0.5, 1.0, 0.3]);
            let b = interval_bounds(&net, &lo, &hi);
            for _ in 0..500 {
                let x = random_point(&mut rng, &lo, &hi);
                let mut v = x.clone();
                for (k, layer) in net.layers.iter().enumerate() {
                    v = layer.apply(&v);
                    for (j, a) in v.iter().enumerate() {
                        assert!(
                            b[k + 1].0[j] <= *a && *a <= b[k + 1].1[j],
                            "layer {k} {}",
                            layer.kind()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f32_error_bound_covers_sampled_f32_evaluations() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for act in [Layer::Relu, Layer::Tanh, Layer::Sigmoid] {
            let net = random_net(&mut rng, &[5, 50, 50, 50, 5], act);
            let (lo, hi) = (vec![-1.0; 5], vec![1.0; 5]);
            let bound = f32_error_bound(&net, &lo, &hi);
            let mut worst: f64 = 0.0;
            for _ in 0..2000 {
                let x = random_point(&mut rng, &lo, &hi);
                let exact = net.forward(&x);
                let dev = forward_f32(&net, &x);
                for j in 0..exact.len() {
                    let err = (f64::from(dev[j]) - exact[j]).abs();
                    assert!(
                        err <= bound[j],
                        "output {j}: error {err} > bound {}",
                        bound[j]
                    );
                    worst = worst.max(err / bound[j]);
                }
            }
            // The spec-row form (output rows and a random row) covers the same errors.
            let mut rows: Vec<Vec<f64>> = (0..5)
                .map(|j| (0..5).map(|k| f64::from(u8::from(j == k))).collect())
                .collect();
            rows.push((0..5).map(|_| rng.random_range(-1.0..1.0)).collect());
            let spec = matches!(net.layers[1], Layer::Relu)
                .then(|| spec_error_bounds(&net, &interval_bounds(&net, &lo, &hi), &rows).unwrap());
            if let Some(spec) = &spec {
                for _ in 0..2000 {
                    let x = random_point(&mut rng, &lo, &hi);
                    assert_rows_cover(&rows, spec, &forward_f32(&net, &x), &net.forward(&x));
                }
                for j in 0..5 {
                    assert!(spec[j] <= bound[j], "the spec form is never looser");
                }
            }
            // The bound is sound but should not be absurdly loose either.
            assert!(
                worst > 1e-5,
                "bound looser than expected: worst ratio {worst}"
            );
        }
    }

    /// Small boxes around random points, where neurons sit near zero: the undecided ones
    /// take the 1/2 slope with its remainder term, the others the sharpened error. Sampled
    /// f32 evaluations (two summation orders) stay inside the bound.
    #[test]
    fn spec_error_bounds_cover_f32_evaluations_on_small_boxes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let net = random_net(&mut rng, &[5, 40, 40, 40, 4], Layer::Relu);
        let rows: Vec<Vec<f64>> = (0..4)
            .map(|j| (0..4).map(|k| f64::from(u8::from(j == k))).collect())
            .chain(std::iter::once(
                (0..4).map(|_| rng.random_range(-1.0..1.0)).collect(),
            ))
            .collect();
        let mut boxes_with_unstable = 0;
        for _ in 0..40 {
            let centre = random_point(&mut rng, &[-1.0; 5], &[1.0; 5]);
            let lo: Vec<f64> = centre.iter().map(|c| c - 0.02).collect();
            let hi: Vec<f64> = centre.iter().map(|c| c + 0.02).collect();
            let bounds = interval_bounds(&net, &lo, &hi);
            let unstable = net
                .layers
                .iter()
                .zip(&bounds)
                .filter(|(l, _)| matches!(l, Layer::Relu))
                .any(|(_, (l, u))| l.iter().zip(u).any(|(a, b)| *a < 0.0 && *b > 0.0));
            boxes_with_unstable += usize::from(unstable);
            let spec = spec_error_bounds(&net, &bounds, &rows).unwrap();
            for _ in 0..300 {
                let x = random_point(&mut rng, &lo, &hi);
                let exact = net.forward(&x);
                for dev in [forward_f32(&net, &x), forward_f32_reversed(&net, &x)] {
                    assert_rows_cover(&rows, &spec, &dev, &exact);
                }
            }
        }
        assert!(
            boxes_with_unstable >= 10,
            "only {boxes_with_unstable} of 40 boxes exercise undecided neurons"
        );
    }

    /// The bound against the worst evaluation the model allows, not a sampled f32 pass
    /// (whose errors sit ~1% under it and would miss a dropped term): every dense output
    /// is moved by `0.999999 g_{n+1}(|W||x̂| + |b|)` and the input by `u|x|`, each in the
    /// direction that raises `c·f̂`, the signs taken from `c` pushed back along the exact
    /// activation pattern. Small boxes around random points of a random network.
    #[test]
    fn spec_error_bounds_hold_against_the_worst_model_evaluation() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(47);
        let net = random_net(&mut rng, &[5, 40, 40, 40, 4], Layer::Relu);
        // Over point boxes the magnitudes are the point's own, so the bound should be
        // reached almost exactly; over small boxes it is only sound.
        let mut worst_on_points: f64 = 0.0;
        for trial in 0..40 {
            let c: Vec<f64> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let centre = random_point(&mut rng, &[-1.0; 5], &[1.0; 5]);
            let half = if trial % 2 == 0 { 0.0 } else { 0.01 };
            let lo: Vec<f64> = centre.iter().map(|v| v - half).collect();
            let hi: Vec<f64> = centre.iter().map(|v| v + half).collect();
            let bound = spec_error_bounds(
                &net,
                &interval_bounds(&net, &lo, &hi),
                std::slice::from_ref(&c),
            )
            .unwrap()[0];
            for _ in 0..20 {
                let x = random_point(&mut rng, &lo, &hi);
                // Exact pass, keeping every ReLU's input.
                let mut pre = Vec::new();
                let mut v = x.clone();
                for (k, layer) in net.layers.iter().enumerate() {
                    if matches!(layer, Layer::Relu) {
                        pre.push(v.clone());
                    }
                    v = net.forward_range(&v, k, k + 1);
                }
                let exact: f64 = c.iter().zip(&v).map(|(a, b)| a * b).sum();
                // Signs: `c` pushed back through the layers along the exact pattern.
                let mut signs: Vec<Vec<f64>> = vec![Vec::new(); net.layers.len()];
                let mut row = c.clone();
                let mut relu = pre.len();
                for (k, layer) in net.layers.iter().enumerate().rev() {
                    match layer {
                        Layer::Dense(d) => {
                            signs[k] = row.iter().map(|r| r.signum()).collect();
                            let mut back = vec![0.0; d.in_dim];
                            for (o, r) in row.iter().enumerate() {
                                for (b, w) in back.iter_mut().zip(d.row(o)) {
                                    *b += r * w;
                                }
                            }
                            row = back;
                        }
                        Layer::Relu => {
                            relu -= 1;
                            for (r, z) in row.iter_mut().zip(&pre[relu]) {
                                if *z <= 0.0 {
                                    *r = 0.0;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                // The worst evaluation the model allows in those directions.
                let mut v: Vec<f64> = x
                    .iter()
                    .zip(&row)
                    .map(|(a, r)| a + (r * a).signum() * U32 * a.abs())
                    .collect();
                for (k, layer) in net.layers.iter().enumerate() {
                    v = match layer {
                        Layer::Dense(d) => {
                            let gn = g(d.in_dim + 1);
                            (0..d.out_dim)
                                .map(|o| {
                                    let (mut z, mut size) = (d.bias[o], d.bias[o].abs());
                                    for (w, a) in d.row(o).iter().zip(&v) {
                                        z += w * a;
                                        size += (w * a).abs();
                                    }
                                    z + signs[k][o] * 0.999_999 * gn * size
                                })
                                .collect()
                        }
                        _ => net.forward_range(&v, k, k + 1),
                    };
                }
                let device: f64 = c.iter().zip(&v).map(|(a, b)| a * b).sum();
                let err = (device - exact).abs();
                assert!(err <= bound, "error {err} > bound {bound}");
                if half == 0.0 {
                    worst_on_points = worst_on_points.max(err / bound);
                }
            }
        }
        // Tight: a bound 5% lower would already be wrong (so a dropped term is caught).
        assert!(
            worst_on_points > 0.95,
            "bound looser than expected on point boxes: {worst_on_points}"
        );
    }

    /// Every row's error `|row·(dev - exact)|` is within its bound.
    fn assert_rows_cover(rows: &[Vec<f64>], bound: &[f64], dev: &[f32], exact: &[f64]) {
        for (r, row) in rows.iter().enumerate() {
            let err: f64 = row
                .iter()
                .zip(dev.iter().zip(exact))
                .map(|(c, (d, e))| c * (f64::from(*d) - e))
                .sum();
            assert!(
                err.abs() <= bound[r],
                "row {r}: error {err} > bound {}",
                bound[r]
            );
        }
    }

    /// The f32 forward pass with every dot product summed in reverse order (another
    /// order a device kernel may use).
    fn forward_f32_reversed(net: &Network, x: &[f64]) -> Vec<f32> {
        let mut v: Vec<f32> = x.iter().map(|&a| a as f32).collect();
        for layer in &net.layers {
            v = match layer {
                Layer::Dense(d) => (0..d.out_dim)
                    .map(|o| {
                        let mut acc = 0.0f32;
                        for (w, a) in d.row(o).iter().zip(&v).rev() {
                            acc += *w as f32 * a;
                        }
                        acc + d.bias[o] as f32
                    })
                    .collect(),
                Layer::Relu => v.iter().map(|&a| a.max(0.0)).collect(),
                _ => unreachable!("dense/relu test network"),
            };
        }
        v
    }

    #[test]
    fn point_bound_covers_sampled_f32_evaluations_and_beats_the_abs_bound() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        for act in [
            Layer::Relu,
            Layer::Sigmoid,
            Layer::Tanh,
            Layer::LeakyRelu { alpha: 0.1 },
        ] {
            let net = random_net(&mut rng, &[5, 40, 40, 40, 40, 5], act.clone());
            let (mut worst, mut gain): (f64, f64) = (0.0, f64::INFINITY);
            for _ in 0..300 {
                let x: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (y, bound) = point_forward_with_error(
                    &net,
                    &x,
                    &(0..5)
                        .map(|j| (0..5).map(|k| f64::from(u8::from(j == k))).collect())
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                assert_eq!(y, net.forward(&x));
                let dev = forward_f32(&net, &x);
                let old = f32_error_bound(&net, &x, &x);
                for j in 0..5 {
                    let err = (f64::from(dev[j]) - y[j]).abs();
                    assert!(
                        err <= bound[j],
                        "{}: output {j}: {err:e} > {:e}",
                        act.kind(),
                        bound[j]
                    );
                    assert!(
                        bound[j] <= old[j],
                        "{}: looser than the |W| bound",
                        act.kind()
                    );
                    worst = worst.max(err / bound[j]);
                    gain = gain.min(old[j] / bound[j]);
                }
            }
            // Sound, not absurdly loose, and never looser than the old bound.
            assert!(worst > 1e-4, "{}: worst ratio {worst}", act.kind());
            assert!(gain >= 1.0, "{}", act.kind());
        }
    }

    #[test]
    fn point_bound_declines_unsupported_layers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let net = random_net(&mut rng, &[4, 6, 3], Layer::Gelu);
        assert!(point_error_bound(&net, &[0.1; 4]).is_none());
        let net = random_net(&mut rng, &[4, 6, 3], Layer::Relu);
        assert!(
            point_error_bound(&net, &[0.1; 3]).is_none(),
            "wrong input length"
        );
        assert!(point_error_bounds(&net, &[0.1; 4], &[vec![1.0; 2]]).is_none());
    }

    /// Reference for [`backward_error_bounds`], one row at a time with per-entry intervals:
    /// `Σ_k |c J_k| δ_k + |c J_0| e_0` for the row `c` over the output of the last of `layers`
    /// (without [`SLACK`]), `δ_k` the dense layers' local rounding and the ReLU slopes'
    /// remainders: `c J` is carried backward through the point slopes and each dense layer,
    /// as an interval only to enclose the f64 rounding of the propagation.
    fn backward_error_bound(layers: &[Layer], steps: &[ErrorStep], e0: &[f64], c: &[f64]) -> f64 {
        let (mut lo, mut hi) = (c.to_vec(), c.to_vec());
        let mut total = 0.0;
        for (layer, step) in layers.iter().zip(steps).rev() {
            match (layer, step) {
                (Layer::Dense(d), ErrorStep::Dense(local)) => {
                    total += lo
                        .iter()
                        .zip(&hi)
                        .zip(local)
                        .map(|((a, b), l)| a.abs().max(b.abs()) * l)
                        .sum::<f64>();
                    let (mut nlo, mut nhi) = (vec![0.0; d.in_dim], vec![0.0; d.in_dim]);
                    // Per entry, the summed magnitude of its terms: the f64 rounding of these
                    // sums (and of `mid`, `rad` and the products) is at most
                    // `γ64(out_dim + 3)` times it, whatever cancels.
                    let mut size = vec![0.0; d.in_dim];
                    for o in 0..d.out_dim {
                        let (mid, rad) = (0.5 * (lo[o] + hi[o]), 0.5 * (hi[o] - lo[o]));
                        if mid == 0.0 && rad == 0.0 {
                            continue;
                        }
                        let scale = mid.abs() + rad;
                        for (i, w) in d.row(o).iter().enumerate() {
                            let (cm, cr) = (mid * w, rad * w.abs());
                            nlo[i] += cm - cr;
                            nhi[i] += cm + cr;
                            size[i] += scale * w.abs();
                        }
                    }
                    let pad_factor = 2.0 * gamma64(d.out_dim + 3);
                    for ((a, b), m) in nlo.iter_mut().zip(nhi.iter_mut()).zip(&size) {
                        let pad = pad_factor * m;
                        *a -= pad;
                        *b += pad;
                    }
                    lo = nlo;
                    hi = nhi;
                }
                (_, ErrorStep::Relu { slopes, remainder }) => {
                    for (i, (&sl, &r)) in slopes.iter().zip(remainder).enumerate() {
                        total += lo[i].abs().max(hi[i].abs()) * r;
                        // A product by 0, 1/2 or 1 is exact in f64.
                        lo[i] *= sl;
                        hi[i] *= sl;
                    }
                }
                _ => {}
            }
        }
        total
            + lo.iter()
                .zip(&hi)
                .zip(e0)
                .map(|((a, b), e)| a.abs().max(b.abs()) * e)
                .sum::<f64>()
    }

    /// The batched backward pass against the per-row reference, on the steps of real
    /// boxes (slopes 0, 1/2 and 1 all occur): equal up to the f64 rounding both enclose,
    /// and never below the reference by more than that.
    #[test]
    fn batched_backward_error_bounds_match_the_per_row_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(53);
        let net = random_net(&mut rng, &[5, 30, 30, 30, 4], Layer::Relu);
        let mut compared = 0;
        for _ in 0..20 {
            let centre = random_point(&mut rng, &[-1.0; 5], &[1.0; 5]);
            let lo: Vec<f64> = centre.iter().map(|c| c - 0.05).collect();
            let hi: Vec<f64> = centre.iter().map(|c| c + 0.05).collect();
            let bounds = interval_bounds(&net, &lo, &hi);
            let e0: Vec<f64> = bounds[0].1.iter().map(|m| U32 * m.abs().max(1.0)).collect();
            // The error model's steps with mixed slopes, built directly.
            let mut steps = Vec::new();
            for (layer, (l, u)) in net.layers.iter().zip(&bounds) {
                steps.push(match layer {
                    Layer::Dense(d) => ErrorStep::Dense(
                        (0..d.out_dim)
                            .map(|_| rng.random_range(0.0..1e-6))
                            .collect(),
                    ),
                    _ => ErrorStep::Relu {
                        slopes: l
                            .iter()
                            .zip(u)
                            .map(|(a, b)| {
                                if *a > 0.0 {
                                    1.0
                                } else if *b <= 0.0 {
                                    0.0
                                } else {
                                    0.5
                                }
                            })
                            .collect(),
                        remainder: (0..l.len()).map(|_| rng.random_range(0.0..1e-5)).collect(),
                    },
                });
            }
            let rows: Vec<Vec<f64>> = (0..6)
                .map(|_| (0..4).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            let sums = layer_abs_column_sums(&net.layers);
            let batched = backward_error_bounds(&net.layers, &sums, &steps, &e0, &rows);
            for (c, b) in rows.iter().zip(&batched) {
                let reference = backward_error_bound(&net.layers, &steps, &e0, c);
                assert!(reference > 0.0);
                assert!(
                    (b - reference).abs() <= 1e-9 * reference,
                    "batched {b} against reference {reference}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 120);
        // No rows, and rows that do not fit the output: no bound claimed.
        assert!(backward_error_bounds(&net.layers, &[], &[], &[], &[]).is_empty());
        let wrong = backward_error_bounds(
            &net.layers[..1],
            &[Vec::new()],
            &[ErrorStep::Identity],
            &[0.0; 5],
            &[vec![1.0; 3]],
        );
        assert_eq!(wrong, vec![f64::INFINITY]);
        // Steps or column sums missing for a layer.
        let row = vec![vec![1.0; 4]];
        let sums = layer_abs_column_sums(&net.layers);
        assert_eq!(
            backward_error_bounds(&net.layers, &sums[..1], &[], &[0.0; 5], &row),
            vec![f64::INFINITY]
        );
    }
}
