//! Scalar reference kernels, in safe Rust with `libm`: the definition every SIMD
//! kernel is tested against, and the kernels of targets without SIMD (Cortex-M).

use super::Kernels;
use crate::format::DENSE_PANEL;

/// The generic kernel table.
pub static KERNELS: Kernels = Kernels {
    isa: "generic",
    dense,
    axpy,
    relu,
    leaky_relu,
    sigmoid,
    tanh,
    gelu,
    sum,
};

/// `y = W x + b` with panel-major `W`, optionally followed by ReLU.
pub fn dense(panels: &[f32], bias: &[f32], x: &[f32], y: &mut [f32], relu: bool) -> bool {
    let (in_dim, out_dim) = (x.len(), y.len());
    let panel_len = DENSE_PANEL * in_dim;
    match crate::format::dense_panel_len(in_dim, out_dim) {
        Some(n) if panels.len() >= n && bias.len() >= out_dim => {}
        _ => return false,
    }
    for ((ys, bs), panel) in y
        .chunks_mut(DENSE_PANEL)
        .zip(bias.chunks(DENSE_PANEL))
        .zip(panels.chunks(panel_len.max(1)))
    {
        let mut acc = [0.0f32; DENSE_PANEL];
        for (a, &b) in acc.iter_mut().zip(bs) {
            *a = b;
        }
        for (column, &xi) in panel.chunks_exact(DENSE_PANEL).zip(x) {
            for (a, &w) in acc.iter_mut().zip(column) {
                *a += w * xi;
            }
        }
        for (out, a) in ys.iter_mut().zip(acc) {
            *out = if relu { relu1(a) } else { a };
        }
    }
    true
}

/// `y += a * x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn relu1(v: f32) -> f32 {
    // Same rule as x86 `maxps(v, 0)`: NaN and -0 give +0.
    if v > 0.0 { v } else { 0.0 }
}

/// `y = max(x, 0)`.
pub fn relu(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = relu1(x);
    }
}

/// `y = x >= 0 ? x : alpha * x`.
pub fn leaky_relu(x: &[f32], y: &mut [f32], alpha: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x >= 0.0 { x } else { alpha * x };
    }
}

/// Logistic sigmoid of one value, accurate in both tails (`e / (1 + e)` with
/// `e = exp(x)` for negative `x`, so tiny results are not rounded to 0).
pub fn sigmoid1(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::expf(-x))
    } else {
        let e = libm::expf(x);
        e / (1.0 + e)
    }
}

/// `y = 1 / (1 + exp(-x))`.
pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = sigmoid1(x);
    }
}

/// `y = tanh(x)`.
pub fn tanh(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = libm::tanhf(x);
    }
}

/// Exact GELU of one value: `x * Phi(x) = x/2 * erfc(-x / sqrt 2)`; the erfc form of
/// `x/2 * (1 + erf(x / sqrt 2))` keeps full relative accuracy for negative `x`.
pub fn gelu1(x: f32) -> f32 {
    0.5 * x * libm::erfcf(-x * core::f32::consts::FRAC_1_SQRT_2)
}

/// `y = x * Phi(x)`.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu1(x);
    }
}

/// Sum of all values (four partial sums, like the SIMD kernels).
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let chunks = x.chunks_exact(4);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}
