//! x86_64 kernels with AVX2 and FMA (8 f32 lanes).
//!
//! Every public entry is a safe function that checks lengths and then calls an
//! `#[target_feature(enable = "avx2,fma")]` body. Those functions are reachable only
//! through [`kernels`], which hands out the table only when the CPU has AVX2 and FMA.
//! GELU uses the scalar reference (a vector erfc accurate to 1e-6 relative in the far
//! negative tail is not worth its code size yet).
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::Kernels;
use crate::format::DENSE_PANEL;

static KERNELS: Kernels = Kernels {
    isa: "x86_64-avx2-fma",
    dense,
    axpy,
    relu,
    leaky_relu,
    sigmoid,
    tanh,
    gelu: super::generic::gelu,
    sum,
};

/// The AVX2+FMA kernels, when this CPU has both features.
pub fn kernels() -> Option<&'static Kernels> {
    supported().then_some(&KERNELS)
}

#[cfg(feature = "std")]
fn supported() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(feature = "std"))]
fn supported() -> bool {
    cfg!(all(target_feature = "avx2", target_feature = "fma"))
}

const LANES: usize = 8;

fn dense(panels: &[f32], bias: &[f32], x: &[f32], y: &mut [f32], relu: bool) -> bool {
    let (in_dim, out_dim) = (x.len(), y.len());
    match crate::format::dense_panel_len(in_dim, out_dim) {
        Some(n) if panels.len() >= n && bias.len() >= out_dim => {}
        _ => return false,
    }
    // SAFETY: the table holding this function is only handed out when the CPU has
    // AVX2 and FMA; `panels` holds ceil(out/8)*8*in values, `bias` >= out, `x` in,
    // `y` out, which is all `dense_avx2` reads and writes.
    unsafe {
        dense_avx2(
            panels.as_ptr(),
            bias.as_ptr(),
            x.as_ptr(),
            y.as_mut_ptr(),
            in_dim,
            out_dim,
            relu,
        )
    };
    true
}

/// Bias, optional ReLU, store the `min(8, out - base)` live rows of one panel.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_panel(
    acc: __m256,
    bias: *const f32,
    y: *mut f32,
    base: usize,
    out_dim: usize,
    relu: bool,
) {
    let live = (out_dim - base).min(LANES);
    let mut tmp = [0.0f32; LANES];
    // SAFETY: rows base..base+live are inside `bias` and `y` (base < out_dim).
    unsafe {
        let b = if live == LANES {
            _mm256_loadu_ps(bias.add(base))
        } else {
            core::ptr::copy_nonoverlapping(bias.add(base), tmp.as_mut_ptr(), live);
            _mm256_loadu_ps(tmp.as_ptr())
        };
        let mut v = _mm256_add_ps(acc, b);
        if relu {
            v = _mm256_max_ps(v, _mm256_setzero_ps());
        }
        if live == LANES {
            _mm256_storeu_ps(y.add(base), v);
        } else {
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            core::ptr::copy_nonoverlapping(tmp.as_ptr(), y.add(base), live);
        }
    }
}

/// Panel-major matvec: two panels (16 rows) at a time, the input unrolled by 4, so
/// eight independent FMA chains hide the FMA latency; weights stream linearly.
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx2(
    w: *const f32,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    in_dim: usize,
    out_dim: usize,
    relu: bool,
) {
    let panels = out_dim.div_ceil(DENSE_PANEL);
    let stride = DENSE_PANEL * in_dim;
    let mut p = 0;
    // SAFETY: (whole body) panel p reads w[p*stride .. (p+1)*stride] for p < panels and
    // x[0..in_dim]; the caller checked those lengths. Stores go through `store_panel`.
    unsafe {
        while p + 2 <= panels {
            let w0 = w.add(p * stride);
            let w1 = w0.add(stride);
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let (mut c0, mut c1, mut c2, mut c3) = (z, z, z, z);
            let mut i = 0;
            // Eight inputs per vector load, broadcast lane by lane with a shuffle
            // (port 5), so the load ports only stream weights.
            while i + LANES <= in_dim {
                let xv = _mm256_loadu_ps(x.add(i));
                macro_rules! step {
                    ($k:expr, $a:ident, $c:ident) => {
                        let xb = _mm256_permutevar8x32_ps(xv, _mm256_set1_epi32($k));
                        let o = (i + $k) * LANES;
                        $a = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(o)), xb, $a);
                        $c = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(o)), xb, $c);
                    };
                }
                step!(0, a0, c0);
                step!(1, a1, c1);
                step!(2, a2, c2);
                step!(3, a3, c3);
                step!(4, a0, c0);
                step!(5, a1, c1);
                step!(6, a2, c2);
                step!(7, a3, c3);
                i += LANES;
            }
            while i + 4 <= in_dim {
                let x0 = _mm256_broadcast_ss(&*x.add(i));
                let x1 = _mm256_broadcast_ss(&*x.add(i + 1));
                let x2 = _mm256_broadcast_ss(&*x.add(i + 2));
                let x3 = _mm256_broadcast_ss(&*x.add(i + 3));
                let o = i * LANES;
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(o)), x0, a0);
                c0 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(o)), x0, c0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(o + 8)), x1, a1);
                c1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(o + 8)), x1, c1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(o + 16)), x2, a2);
                c2 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(o + 16)), x2, c2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(o + 24)), x3, a3);
                c3 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(o + 24)), x3, c3);
                i += 4;
            }
            while i < in_dim {
                let xi = _mm256_broadcast_ss(&*x.add(i));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(i * LANES)), xi, a0);
                c0 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(i * LANES)), xi, c0);
                i += 1;
            }
            let a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            let c = _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3));
            store_panel(a, bias, y, p * DENSE_PANEL, out_dim, relu);
            store_panel(c, bias, y, (p + 1) * DENSE_PANEL, out_dim, relu);
            p += 2;
        }
        if p < panels {
            let w0 = w.add(p * stride);
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let mut i = 0;
            while i + LANES <= in_dim {
                let xv = _mm256_loadu_ps(x.add(i));
                macro_rules! step {
                    ($k:expr, $a:ident) => {
                        let xb = _mm256_permutevar8x32_ps(xv, _mm256_set1_epi32($k));
                        $a = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add((i + $k) * LANES)), xb, $a);
                    };
                }
                step!(0, a0);
                step!(1, a1);
                step!(2, a2);
                step!(3, a3);
                step!(4, a0);
                step!(5, a1);
                step!(6, a2);
                step!(7, a3);
                i += LANES;
            }
            while i + 4 <= in_dim {
                let o = i * LANES;
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w0.add(o)),
                    _mm256_broadcast_ss(&*x.add(i)),
                    a0,
                );
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w0.add(o + 8)),
                    _mm256_broadcast_ss(&*x.add(i + 1)),
                    a1,
                );
                a2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w0.add(o + 16)),
                    _mm256_broadcast_ss(&*x.add(i + 2)),
                    a2,
                );
                a3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w0.add(o + 24)),
                    _mm256_broadcast_ss(&*x.add(i + 3)),
                    a3,
                );
                i += 4;
            }
            while i < in_dim {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w0.add(i * LANES)),
                    _mm256_broadcast_ss(&*x.add(i)),
                    a0,
                );
                i += 1;
            }
            let a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            store_panel(a, bias, y, p * DENSE_PANEL, out_dim, relu);
        }
    }
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: AVX2+FMA present (see `kernels`); both pointers valid for n values.
    unsafe { axpy_avx2(y.as_mut_ptr(), a, x.as_ptr(), n) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: *mut f32, a: f32, x: *const f32, n: usize) {
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: i + 8 <= n in the loop; the tail is scalar within n.
    unsafe {
        while i + LANES <= n {
            let v = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), av, _mm256_loadu_ps(y.add(i)));
            _mm256_storeu_ps(y.add(i), v);
            i += LANES;
        }
        while i < n {
            *y.add(i) += a * *x.add(i);
            i += 1;
        }
    }
}

/// Apply an 8-lane function to `min(x.len(), y.len())` values, the tail through a
/// zero-padded temporary.
#[inline(always)]
unsafe fn map8(x: &[f32], y: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let n = x.len().min(y.len());
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    // SAFETY: full vectors at i + 8 <= n; the tail (< 8 values) is copied through `tmp`.
    unsafe {
        while i + LANES <= n {
            _mm256_storeu_ps(yp.add(i), f(_mm256_loadu_ps(xp.add(i))));
            i += LANES;
        }
        if i < n {
            let mut tmp = [0.0f32; LANES];
            core::ptr::copy_nonoverlapping(xp.add(i), tmp.as_mut_ptr(), n - i);
            let v = f(_mm256_loadu_ps(tmp.as_ptr()));
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            core::ptr::copy_nonoverlapping(tmp.as_ptr(), yp.add(i), n - i);
        }
    }
}

fn relu(x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX2+FMA present (see `kernels`).
    unsafe { relu_avx2(x, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn relu_avx2(x: &[f32], y: &mut [f32]) {
    // SAFETY: `map8` stays within both slices; the closure only uses AVX intrinsics.
    unsafe { map8(x, y, |v| _mm256_max_ps(v, _mm256_setzero_ps())) }
}

fn leaky_relu(x: &[f32], y: &mut [f32], alpha: f32) {
    // SAFETY: AVX2+FMA present (see `kernels`).
    unsafe { leaky_relu_avx2(x, y, alpha) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn leaky_relu_avx2(x: &[f32], y: &mut [f32], alpha: f32) {
    let a = _mm256_set1_ps(alpha);
    // SAFETY: `map8` stays within both slices.
    unsafe {
        map8(x, y, |v| {
            let nonneg = _mm256_cmp_ps::<_CMP_GE_OQ>(v, _mm256_setzero_ps());
            _mm256_blendv_ps(_mm256_mul_ps(v, a), v, nonneg)
        })
    }
}

/// `exp(x)` for `x <= 0` (Cephes `expf`: range reduction by ln 2, degree-5 polynomial,
/// about 1 ulp). Results below 2^-126 flush towards 0 (absolute error < 2^-126).
#[inline(always)]
unsafe fn exp_nonpositive(x: __m256) -> __m256 {
    // SAFETY: pure register arithmetic; the caller has AVX2+FMA.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(core::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(fx);
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(e, scale)
    }
}

/// `x` where `x` is NaN, else `v`.
#[inline(always)]
unsafe fn keep_nan(x: __m256, v: __m256) -> __m256 {
    // SAFETY: register arithmetic; the caller has AVX2.
    unsafe { _mm256_blendv_ps(v, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) }
}

fn sigmoid(x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX2+FMA present (see `kernels`).
    unsafe { sigmoid_avx2(x, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_avx2(x: &[f32], y: &mut [f32]) {
    // SAFETY: `map8` stays within both slices; the rest is register arithmetic.
    unsafe {
        map8(x, y, |v| {
            // e = exp(-|x|) <= 1; sigmoid = 1/(1+e) for x >= 0, e/(1+e) otherwise.
            let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
            let e = exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), abs));
            let one = _mm256_set1_ps(1.0);
            let denom = _mm256_add_ps(one, e);
            let nonneg = _mm256_cmp_ps::<_CMP_GE_OQ>(v, _mm256_setzero_ps());
            let num = _mm256_blendv_ps(e, one, nonneg);
            keep_nan(v, _mm256_div_ps(num, denom))
        })
    }
}

fn tanh(x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX2+FMA present (see `kernels`).
    unsafe { tanh_avx2(x, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_avx2(x: &[f32], y: &mut [f32]) {
    // SAFETY: `map8` stays within both slices; the rest is register arithmetic.
    unsafe {
        map8(x, y, |v| {
            let sign = _mm256_and_ps(_mm256_set1_ps(-0.0), v);
            let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
            // |x| < 0.625: Cephes tanhf polynomial x + x^3 P(x^2) (no cancellation).
            let z = _mm256_mul_ps(v, v);
            let mut p = _mm256_set1_ps(-5.704_988_7e-3);
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.063_909e-2));
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.373_971_6e-2));
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(0.133_314_42));
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-0.333_332_8));
            let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), v, v);
            // Otherwise: (1 - e) / (1 + e) with e = exp(-2|x|) <= exp(-1.25).
            let e = exp_nonpositive(_mm256_mul_ps(abs, _mm256_set1_ps(-2.0)));
            let one = _mm256_set1_ps(1.0);
            let large = _mm256_or_ps(
                _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e)),
                sign,
            );
            let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(abs, _mm256_set1_ps(0.625));
            keep_nan(v, _mm256_blendv_ps(large, small, is_small))
        })
    }
}

fn sum(x: &[f32]) -> f32 {
    // SAFETY: AVX2+FMA present (see `kernels`).
    unsafe { sum_avx2(x) }
}

/// Eight independent accumulators: two loads per cycle, no add-latency stall.
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    let n = x.len();
    let p = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    // SAFETY: every load is at i + 64 <= n or i + 8 <= n; the tail is read by `get`.
    unsafe {
        while i + 8 * LANES <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(i + k * LANES)));
            }
            i += 8 * LANES;
        }
        while i + LANES <= n {
            acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(p.add(i)));
            i += LANES;
        }
        let mut total = _mm256_setzero_ps();
        for a in acc {
            total = _mm256_add_ps(total, a);
        }
        let mut lanes = [0.0f32; LANES];
        _mm256_storeu_ps(lanes.as_mut_ptr(), total);
        lanes.iter().sum::<f32>() + x.get(i..).unwrap_or(&[]).iter().sum::<f32>()
    }
}
