//! aarch64 kernels with NEON (4 f32 lanes; part of the base ISA, so always used).
//!
//! Dense (one 8-row panel is two q-registers, the input unrolled by 2: four FMA
//! chains), axpy, ReLU, LeakyReLU and sum are vectorised; sigmoid, tanh and GELU use
//! the scalar reference for now.
#![allow(unsafe_code)]

use core::arch::aarch64::*;

use super::Kernels;
use crate::format::DENSE_PANEL;

/// The NEON kernel table.
pub static KERNELS: Kernels = Kernels {
    isa: "aarch64-neon",
    dense,
    axpy,
    relu,
    leaky_relu,
    sigmoid: super::generic::sigmoid,
    tanh: super::generic::tanh,
    gelu: super::generic::gelu,
    sum,
};

fn dense(panels: &[f32], bias: &[f32], x: &[f32], y: &mut [f32], relu: bool) -> bool {
    let (in_dim, out_dim) = (x.len(), y.len());
    match crate::format::dense_panel_len(in_dim, out_dim) {
        Some(n) if panels.len() >= n && bias.len() >= out_dim => {}
        _ => return false,
    }
    // SAFETY: NEON is part of aarch64; `panels` holds ceil(out/8)*8*in values, `bias`
    // >= out, `x` in, `y` out: exactly what `dense_neon` reads and writes.
    unsafe {
        dense_neon(
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

#[target_feature(enable = "neon")]
unsafe fn dense_neon(
    w: *const f32,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    in_dim: usize,
    out_dim: usize,
    relu: bool,
) {
    let stride = DENSE_PANEL * in_dim;
    let mut p = 0;
    // SAFETY: (whole body) panel p < ceil(out/8) reads w[p*stride..(p+1)*stride] and
    // x[0..in_dim]; rows base..base+live are inside `bias` and `y`.
    unsafe {
        while p * DENSE_PANEL < out_dim {
            let w0 = w.add(p * stride);
            let z = vdupq_n_f32(0.0);
            let (mut lo0, mut hi0, mut lo1, mut hi1) = (z, z, z, z);
            let mut i = 0;
            while i + 2 <= in_dim {
                let x0 = vdupq_n_f32(*x.add(i));
                let x1 = vdupq_n_f32(*x.add(i + 1));
                let o = i * DENSE_PANEL;
                lo0 = vfmaq_f32(lo0, vld1q_f32(w0.add(o)), x0);
                hi0 = vfmaq_f32(hi0, vld1q_f32(w0.add(o + 4)), x0);
                lo1 = vfmaq_f32(lo1, vld1q_f32(w0.add(o + 8)), x1);
                hi1 = vfmaq_f32(hi1, vld1q_f32(w0.add(o + 12)), x1);
                i += 2;
            }
            if i < in_dim {
                let xi = vdupq_n_f32(*x.add(i));
                let o = i * DENSE_PANEL;
                lo0 = vfmaq_f32(lo0, vld1q_f32(w0.add(o)), xi);
                hi0 = vfmaq_f32(hi0, vld1q_f32(w0.add(o + 4)), xi);
            }
            let base = p * DENSE_PANEL;
            let live = (out_dim - base).min(DENSE_PANEL);
            let mut tmp = [0.0f32; DENSE_PANEL];
            core::ptr::copy_nonoverlapping(bias.add(base), tmp.as_mut_ptr(), live);
            let mut lo = vaddq_f32(vaddq_f32(lo0, lo1), vld1q_f32(tmp.as_ptr()));
            let mut hi = vaddq_f32(vaddq_f32(hi0, hi1), vld1q_f32(tmp.as_ptr().add(4)));
            if relu {
                lo = vmaxq_f32(lo, z);
                hi = vmaxq_f32(hi, z);
            }
            vst1q_f32(tmp.as_mut_ptr(), lo);
            vst1q_f32(tmp.as_mut_ptr().add(4), hi);
            core::ptr::copy_nonoverlapping(tmp.as_ptr(), y.add(base), live);
            p += 1;
        }
    }
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: NEON is part of aarch64; full vectors at i + 4 <= n, scalar tail < n.
    unsafe {
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        let av = vdupq_n_f32(a);
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                yp.add(i),
                vfmaq_f32(vld1q_f32(yp.add(i)), vld1q_f32(xp.add(i)), av),
            );
            i += 4;
        }
        while i < n {
            *yp.add(i) += a * *xp.add(i);
            i += 1;
        }
    }
}

fn relu(x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: NEON is part of aarch64; full vectors at i + 4 <= n, scalar tail < n.
    unsafe {
        let z = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                y.as_mut_ptr().add(i),
                vmaxnmq_f32(vld1q_f32(x.as_ptr().add(i)), z),
            );
            i += 4;
        }
    }
    let done = n / 4 * 4;
    super::generic::relu(
        x.get(done..n).unwrap_or(&[]),
        y.get_mut(done..n).unwrap_or(&mut []),
    );
}

fn leaky_relu(x: &[f32], y: &mut [f32], alpha: f32) {
    let n = x.len().min(y.len());
    // SAFETY: NEON is part of aarch64; full vectors at i + 4 <= n, scalar tail < n.
    unsafe {
        let z = vdupq_n_f32(0.0);
        let a = vdupq_n_f32(alpha);
        let mut i = 0;
        while i + 4 <= n {
            let v = vld1q_f32(x.as_ptr().add(i));
            let nonneg = vcgeq_f32(v, z);
            vst1q_f32(y.as_mut_ptr().add(i), vbslq_f32(nonneg, v, vmulq_f32(v, a)));
            i += 4;
        }
    }
    let done = n / 4 * 4;
    super::generic::leaky_relu(
        x.get(done..n).unwrap_or(&[]),
        y.get_mut(done..n).unwrap_or(&mut []),
        alpha,
    );
}

fn sum(x: &[f32]) -> f32 {
    let n = x.len();
    // SAFETY: NEON is part of aarch64; loads at i + 16 <= n; the tail is read by `get`.
    unsafe {
        let p = x.as_ptr();
        let z = vdupq_n_f32(0.0);
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let mut i = 0;
        while i + 16 <= n {
            a0 = vaddq_f32(a0, vld1q_f32(p.add(i)));
            a1 = vaddq_f32(a1, vld1q_f32(p.add(i + 4)));
            a2 = vaddq_f32(a2, vld1q_f32(p.add(i + 8)));
            a3 = vaddq_f32(a3, vld1q_f32(p.add(i + 12)));
            i += 16;
        }
        let total = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
        total + x.get(i..).unwrap_or(&[]).iter().sum::<f32>()
    }
}
