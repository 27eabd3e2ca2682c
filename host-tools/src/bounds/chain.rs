//! A fast path of IBP-intersected and pure CROWN for chains of Dense and ReLU layers
//! (Flatten allowed anywhere): ACAS Xu, the MNIST MLPs, and the sub-networks ProRepair
//! bounds. It computes the same quantities as the generic engine ([`super::engine`]) in
//! the same order of operations, but
//!
//! - borrows the weights from the network instead of rebuilding bound operations,
//! - relaxes each ReLU once per box and gathers the weight rows of its live (not surely
//!   inactive) neurons once, reused by every backward pass that crosses it,
//! - stacks the lower and upper coefficient matrices so that every step is one GEMM,
//! - reuses its buffers across the passes of one call.
//!
//! Dead columns only ever hold zeros, so dropping them changes no result beyond the
//! summation order of the GEMM (last-bit differences).

use super::relax;
use super::{BoundsError, BoxBounds, LinearBounds, Method};
use crate::model::{Dense, Layer, Network};

/// Small dense products without packing: the matrices of a backward pass through an MLP
/// (tens to hundreds of rows and columns) stay in L1, where packing costs as much as the
/// product. AVX2+FMA code is selected at run time.
mod kernel {
    /// `out = a * b` with `a` `m x k`, `b` `k x n`, `out` `m x n`, row-major.
    pub(super) fn gemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], out: &mut [f64]) {
        assert!(
            a.len() >= m * k && b.len() >= k * n && out.len() >= m * n,
            "gemm operand sizes"
        );
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for (just
            // detected); it has no other requirement (slices are bounds-checked).
            unsafe { gemm_avx2(m, k, n, a, b, out) };
            return;
        }
        body::<false>(m, k, n, a, b, out);
    }

    /// A hand-written 4 x 8 AVX2 register block over the whole product. The last column
    /// block of `b` is read with masked loads (no padded copy of `b`) and the last row
    /// block repeats the last row, so edges take the same path; only the valid part of
    /// each block is stored.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gemm_avx2(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], out: &mut [f64]) {
        use std::arch::x86_64::{
            __m256d, __m256i, _mm256_fmadd_pd, _mm256_loadu_pd, _mm256_maskload_pd,
            _mm256_maskstore_pd, _mm256_set1_pd, _mm256_setr_epi64x, _mm256_setzero_pd,
            _mm256_storeu_pd,
        };
        if m == 0 || n == 0 || k == 0 {
            out[..m * n].iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        for i0 in (0..m).step_by(4) {
            let r = |d: usize| (i0 + d).min(m - 1) * k;
            let (r0, r1, r2, r3) = (
                &a[r(0)..r(0) + k],
                &a[r(1)..r(1) + k],
                &a[r(2)..r(2) + k],
                &a[r(3)..r(3) + k],
            );
            for j0 in (0..n).step_by(8) {
                let w = (n - j0).min(8);
                // Lane masks of a partial column block: lane i is read when i < w (first
                // four) or i + 4 < w (last four).
                let on = |i: usize| if i < w { -1i64 } else { 0 };
                let mask0: __m256i = _mm256_setr_epi64x(on(0), on(1), on(2), on(3));
                let mask1: __m256i = _mm256_setr_epi64x(on(4), on(5), on(6), on(7));
                let (mut c00, mut c01, mut c10, mut c11) = (
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                );
                let (mut c20, mut c21, mut c30, mut c31) = (
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                    _mm256_setzero_pd(),
                );
                for t in 0..k {
                    let row = &b[t * n + j0..t * n + j0 + w];
                    let p = row.as_ptr();
                    let (b0, b1): (__m256d, __m256d) = if w == 8 {
                        // SAFETY: `row` has exactly 8 elements: loads of 4 at offsets 0 and 4.
                        unsafe { (_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
                    } else if w > 4 {
                        // SAFETY: lanes 0..4 are in `row` (w > 4); from `p + 4` (inside
                        // `row`) only the lanes under `mask1` (in `row`) are read: masked
                        // lanes are not accessed.
                        unsafe { (_mm256_loadu_pd(p), _mm256_maskload_pd(p.add(4), mask1)) }
                    } else {
                        // SAFETY: only the lanes under `mask0` (all in `row`) are read.
                        unsafe { (_mm256_maskload_pd(p, mask0), _mm256_setzero_pd()) }
                    };
                    let a0 = _mm256_set1_pd(r0[t]);
                    c00 = _mm256_fmadd_pd(a0, b0, c00);
                    c01 = _mm256_fmadd_pd(a0, b1, c01);
                    let a1 = _mm256_set1_pd(r1[t]);
                    c10 = _mm256_fmadd_pd(a1, b0, c10);
                    c11 = _mm256_fmadd_pd(a1, b1, c11);
                    let a2 = _mm256_set1_pd(r2[t]);
                    c20 = _mm256_fmadd_pd(a2, b0, c20);
                    c21 = _mm256_fmadd_pd(a2, b1, c21);
                    let a3 = _mm256_set1_pd(r3[t]);
                    c30 = _mm256_fmadd_pd(a3, b0, c30);
                    c31 = _mm256_fmadd_pd(a3, b1, c31);
                }
                // Straight into `out`, masked like the loads: a copy through a stack block
                // cost a `memmove` call per row (~7% of a verify on ACAS Xu).
                let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31)];
                for (d, &(lo, hi)) in rows.iter().enumerate().take((m - i0).min(4)) {
                    let o = (i0 + d) * n + j0;
                    let dst = &mut out[o..o + w];
                    let p = dst.as_mut_ptr();
                    if w == 8 {
                        // SAFETY: `dst` has exactly 8 elements: stores of 4 at offsets 0, 4.
                        unsafe {
                            _mm256_storeu_pd(p, lo);
                            _mm256_storeu_pd(p.add(4), hi);
                        }
                    } else if w > 4 {
                        // SAFETY: lanes 0..4 are in `dst` (w > 4); from `p + 4` (inside `dst`)
                        // only the lanes under `mask1` (in `dst`) are written.
                        unsafe {
                            _mm256_storeu_pd(p, lo);
                            _mm256_maskstore_pd(p.add(4), mask1, hi);
                        }
                    } else {
                        // SAFETY: only the lanes under `mask0` (all in `dst`) are written.
                        unsafe { _mm256_maskstore_pd(p, mask0, lo) };
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
        if FMA { a.mul_add(b, c) } else { c + a * b }
    }

    /// 4 x 8 register blocks; edges row by row.
    #[inline(always)]
    fn body<const FMA: bool>(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], out: &mut [f64]) {
        const MR: usize = 4;
        const NR: usize = 8;
        let m_full = m - m % MR;
        let n_full = n - n % NR;
        for i0 in (0..m_full).step_by(MR) {
            for j0 in (0..n_full).step_by(NR) {
                let mut acc = [[0.0f64; NR]; MR];
                for t in 0..k {
                    let brow: &[f64; NR] =
                        b[t * n + j0..t * n + j0 + NR].try_into().expect("NR wide");
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = a[(i0 + r) * k + t];
                        for c in 0..NR {
                            acc_r[c] = madd::<FMA>(av, brow[c], acc_r[c]);
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    out[(i0 + r) * n + j0..(i0 + r) * n + j0 + NR].copy_from_slice(acc_r);
                }
            }
            if n_full < n {
                for r in i0..i0 + MR {
                    row_tail::<FMA>(
                        k,
                        n,
                        n_full,
                        &a[r * k..(r + 1) * k],
                        b,
                        &mut out[r * n..(r + 1) * n],
                    );
                }
            }
        }
        for r in m_full..m {
            row_tail::<FMA>(
                k,
                n,
                0,
                &a[r * k..(r + 1) * k],
                b,
                &mut out[r * n..(r + 1) * n],
            );
        }
    }

    /// Columns `j0..n` of one output row (axpy form).
    #[inline(always)]
    fn row_tail<const FMA: bool>(
        k: usize,
        n: usize,
        j0: usize,
        a_row: &[f64],
        b: &[f64],
        out_row: &mut [f64],
    ) {
        let o = &mut out_row[j0..n];
        o.iter_mut().for_each(|v| *v = 0.0);
        for (t, &av) in a_row.iter().enumerate().take(k) {
            let brow = &b[t * n + j0..t * n + n];
            for (v, &bv) in o.iter_mut().zip(brow) {
                *v = madd::<FMA>(av, bv, *v);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn gemm_matches_naive_product_on_all_edge_shapes() {
            for (m, k, n) in [
                (1, 1, 1),
                (4, 3, 8),
                (5, 7, 9),
                (9, 50, 17),
                (100, 50, 50),
                (3, 0, 4),
                // Partial last column blocks of every width 1..7 (masked loads and stores).
                (6, 5, 12),
                (2, 4, 13),
                (7, 3, 6),
                (5, 2, 15),
                (3, 6, 3),
                (3, 4, 10),
            ] {
                let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
                let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
                // A sentinel tail after the output: the masked stores must not reach it.
                let mut c = vec![f64::NAN; m * n + 8];
                super::gemm(m, k, n, &a, &b, &mut c[..m * n]);
                assert!(
                    c[m * n..].iter().all(|v| v.is_nan()),
                    "{m}x{k}x{n} wrote past"
                );
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
                        assert!(
                            (c[i * n + j] - want).abs() < 1e-12,
                            "{m}x{k}x{n} at {i},{j}"
                        );
                    }
                }
            }
        }
    }
}

/// One layer of the chain.
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    Dense(&'a Dense),
    Relu(usize),
    Flatten,
}

/// A Dense/ReLU chain borrowed from a network (layers `from..to`).
#[derive(Debug, Clone)]
pub struct DenseReluChain<'a> {
    ops: Vec<Op<'a>>,
    from: usize,
    n_in: usize,
    n_out: usize,
    sparse: bool,
    forward: bool,
    /// With `forward`: no backward pass for any intermediate bound (see
    /// [`Self::forward_only`]).
    forward_only: bool,
    /// Per op, `[W+ | W-]` of a Dense op when `forward` (else empty).
    split: Vec<Vec<f64>>,
}

/// ReLU relaxation over one box plus the gathered live rows of the Dense layer below.
#[derive(Debug, Default, Clone)]
struct ReluStep {
    /// Indices of the neurons that are not surely inactive.
    live: Vec<usize>,
    /// Rows `live` of the weight matrix of the Dense layer feeding this ReLU
    /// (`live.len() x in_dim`), and the matching biases.
    weight_live: Vec<f64>,
    bias_live: Vec<f64>,
    /// Lower slope, upper slope and upper intercept of the live neurons, in `live` order.
    lower_live: Vec<f64>,
    upper_live: Vec<f64>,
    intercept_live: Vec<f64>,
}

impl ReluStep {
    /// Empty, keeping the buffers.
    fn clear(&mut self) {
        self.live.clear();
        self.weight_live.clear();
        self.bias_live.clear();
        self.lower_live.clear();
        self.upper_live.clear();
        self.intercept_live.clear();
    }
}

/// Linear bounds being carried backward: `a` holds `rows` coefficient rows (shared
/// lower/upper) or `2 * rows` (lower rows, then upper rows) once split.
#[derive(Debug, Default)]
struct State {
    rows: usize,
    cols: usize,
    split: bool,
    a: Vec<f64>,
    /// `2 * rows` constants: lower, then upper.
    c: Vec<f64>,
    spare: Vec<f64>,
    gather: Vec<f64>,
}

impl State {
    fn stacked_rows(&self) -> usize {
        if self.split { 2 * self.rows } else { self.rows }
    }

    /// `y = W x + b` with `W` given row-major `k x in_dim` (the state's columns).
    fn affine(&mut self, w: &[f64], b: &[f64], in_dim: usize) {
        let k = self.cols;
        let m = self.stacked_rows();
        for r in 0..m {
            let row = &self.a[r * k..(r + 1) * k];
            let add: f64 = row.iter().zip(b).map(|(a, b)| a * b).sum();
            self.c[r] += add;
            if !self.split {
                self.c[self.rows + r] += add;
            }
        }
        self.spare.clear();
        self.spare.resize(m * in_dim, 0.0);
        kernel::gemm(m, k, in_dim, &self.a, w, &mut self.spare);
        std::mem::swap(&mut self.a, &mut self.spare);
        self.cols = in_dim;
    }

    /// Back through a ReLU: lower rows take the lower line where the coefficient is
    /// non-negative and the upper line elsewhere, upper rows the opposite (written
    /// branch-free with the positive and negative parts); only the `live` columns are kept.
    fn relu(&mut self, s: &ReluStep) {
        let (rows, n, nl) = (self.rows, self.cols, s.live.len());
        self.spare.clear();
        self.spare.resize(2 * rows * nl, 0.0);
        let all_live = nl == n;
        let mut gathered = std::mem::take(&mut self.gather);
        gathered.resize(nl, 0.0);
        for side in 0..2 {
            let lower_side = side == 0;
            for r in 0..rows {
                let src_row = if self.split && !lower_side {
                    rows + r
                } else {
                    r
                };
                let src = &self.a[src_row * n..(src_row + 1) * n];
                let src: &[f64] = if all_live {
                    src
                } else {
                    gathered
                        .iter_mut()
                        .zip(&s.live)
                        .for_each(|(g, &j)| *g = src[j]);
                    &gathered
                };
                let dst = &mut self.spare[(side * rows + r) * nl..(side * rows + r + 1) * nl];
                let (own, other) = if lower_side {
                    (&s.lower_live, &s.upper_live)
                } else {
                    (&s.upper_live, &s.lower_live)
                };
                let mut constant = 0.0;
                for ((((d, &k), &own), &other), &ui) in dst
                    .iter_mut()
                    .zip(src)
                    .zip(own)
                    .zip(other)
                    .zip(&s.intercept_live)
                {
                    let (pos, neg) = (k.max(0.0), k.min(0.0));
                    if lower_side {
                        // k >= 0: lower slope; k < 0: upper line.
                        *d = pos * own + neg * other;
                        constant += neg * ui;
                    } else {
                        // k < 0: lower slope; k >= 0: upper line.
                        *d = neg * other + pos * own;
                        constant += pos * ui;
                    }
                }
                self.c[side * rows + r] += constant;
            }
        }
        self.gather = gathered;
        std::mem::swap(&mut self.a, &mut self.spare);
        self.split = true;
        self.cols = nl;
    }

    /// Centre/radius concretisation over `input` (as auto_LiRPA): `(lower, upper)`.
    fn concretise(&self, centre: &[f64], radius: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = self.cols;
        let side = |r_a: usize, r_c: usize, sign: f64| {
            let row = &self.a[r_a * n..(r_a + 1) * n];
            let (mut mid, mut dev) = (0.0, 0.0);
            for ((a, x), d) in row.iter().zip(centre).zip(radius) {
                mid += a * x;
                dev += a.abs() * d;
            }
            mid + sign * dev + self.c[r_c]
        };
        let upper_row = |r: usize| if self.split { self.rows + r } else { r };
        let lower = (0..self.rows).map(|r| side(r, r, -1.0)).collect();
        let upper = (0..self.rows)
            .map(|r| side(upper_row(r), self.rows + r, 1.0))
            .collect();
        (lower, upper)
    }
}

/// The buffers of one [`DenseReluChain::linear_bounds_within`] call, kept per thread
/// between calls: branch and bound makes tens of thousands of calls of the same shapes,
/// and growing these buffers afresh every time cost ~10% of a call in allocation.
#[derive(Debug, Default)]
struct Scratch {
    state: State,
    forward: Forward,
    steps: Vec<Option<ReluStep>>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Inputs above which [`DenseReluChain::forward_intermediate`] is ignored: the forward
/// functions have one coefficient per input, so wide inputs lose the advantage.
pub const FORWARD_MAX_INPUTS: usize = 32;

/// Forward symbolic bounds: per neuron, `lower` and `upper` linear functions of the chain
/// input, row-major `dim x (n_in + 1)`, the last column the constant.
#[derive(Debug, Default)]
struct Forward {
    m: usize,
    lower: Vec<f64>,
    upper: Vec<f64>,
    spare_l: Vec<f64>,
    spare_u: Vec<f64>,
}

impl Forward {
    /// The identity on `n` inputs.
    fn identity(&mut self, n: usize) {
        self.m = n + 1;
        self.lower.clear();
        self.lower.resize(n * self.m, 0.0);
        for i in 0..n {
            self.lower[i * self.m + i] = 1.0;
        }
        self.upper.clone_from(&self.lower);
    }

    /// Through `y = W x + b`: positive weights carry each side to the same side,
    /// negative ones to the other. One product `[W+ | W-] x [[L, U], [U, L]]` with
    /// `split = [W+ | W-]` (`out x 2 in`, see [`split_weights`]).
    fn affine(&mut self, d: &Dense, split: &[f64]) {
        let (m, n) = (self.m, d.in_dim);
        // [[L, U], [U, L]]: `2 in x 2m`.
        let stacked = &mut self.spare_l;
        stacked.clear();
        stacked.resize(2 * n * 2 * m, 0.0);
        for j in 0..n {
            let (l, u) = (
                &self.lower[j * m..(j + 1) * m],
                &self.upper[j * m..(j + 1) * m],
            );
            let top = &mut stacked[j * 2 * m..(j + 1) * 2 * m];
            top[..m].copy_from_slice(l);
            top[m..].copy_from_slice(u);
            let bottom = &mut stacked[(n + j) * 2 * m..(n + j + 1) * 2 * m];
            bottom[..m].copy_from_slice(u);
            bottom[m..].copy_from_slice(l);
        }
        let out = &mut self.spare_u;
        out.clear();
        out.resize(d.out_dim * 2 * m, 0.0);
        kernel::gemm(d.out_dim, 2 * n, 2 * m, split, stacked, out);
        self.lower.clear();
        self.upper.clear();
        for (o, row) in out.chunks(2 * m).enumerate() {
            self.lower.extend_from_slice(&row[..m]);
            self.upper.extend_from_slice(&row[m..]);
            self.lower[(o + 1) * m - 1] += d.bias[o];
            self.upper[(o + 1) * m - 1] += d.bias[o];
        }
    }

    /// Through a ReLU relaxed over the pre-activation bounds `b`: `lower slope x lower`,
    /// `upper slope x upper + intercept` (both slopes are non-negative).
    fn relu(&mut self, b: &BoxBounds) {
        let m = self.m;
        for (i, (&l, &u)) in b.lower.iter().zip(&b.upper).enumerate() {
            let r = relax::relu(l, u);
            let (ls, us) = (r.lower.slope, r.upper.slope);
            self.lower[i * m..(i + 1) * m]
                .iter_mut()
                .for_each(|v| *v *= ls);
            self.upper[i * m..(i + 1) * m]
                .iter_mut()
                .for_each(|v| *v *= us);
            self.upper[(i + 1) * m - 1] += r.upper.intercept;
        }
    }

    /// The intervals of the functions over the input box (centre/radius form).
    fn concretise(&self, centre: &[f64], radius: &[f64]) -> BoxBounds {
        let m = self.m;
        let side = |row: &[f64], sign: f64| {
            let (mut mid, mut dev) = (row[m - 1], 0.0);
            for ((a, x), r) in row.iter().zip(centre).zip(radius) {
                mid += a * x;
                dev += a.abs() * r;
            }
            mid + sign * dev
        };
        BoxBounds {
            lower: self.lower.chunks(m).map(|r| side(r, -1.0)).collect(),
            upper: self.upper.chunks(m).map(|r| side(r, 1.0)).collect(),
        }
    }
}

/// `[W+ | W-]` of a Dense layer, row-major `out x 2 in`.
fn split_weights(d: &Dense) -> Vec<f64> {
    let mut v = Vec::with_capacity(2 * d.weight.len());
    for o in 0..d.out_dim {
        v.extend(d.row(o).iter().map(|w| w.max(0.0)));
        v.extend(d.row(o).iter().map(|w| w.min(0.0)));
    }
    v
}

/// IBP through a dense layer in the centre/radius form.
fn dense_interval(d: &Dense, input: &BoxBounds) -> BoxBounds {
    let (centre, radius) = input.centre_radius();
    let mut lower = Vec::with_capacity(d.out_dim);
    let mut upper = Vec::with_capacity(d.out_dim);
    for o in 0..d.out_dim {
        let row = d.row(o);
        let mid = d.bias[o] + row.iter().zip(&centre).map(|(w, x)| w * x).sum::<f64>();
        let dev: f64 = row.iter().zip(&radius).map(|(w, r)| w.abs() * r).sum();
        lower.push(mid - dev);
        upper.push(mid + dev);
    }
    BoxBounds { lower, upper }
}

fn check_finite(b: &BoxBounds, layer: usize) -> Result<(), BoundsError> {
    if b.lower.iter().chain(&b.upper).all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(BoundsError::NonFinite { layer })
    }
}

impl<'a> DenseReluChain<'a> {
    /// The chain of layers `from..to`, or `None` when a layer is not Dense, ReLU or
    /// Flatten, or a ReLU does not directly follow a Dense layer (the generic engine
    /// handles those). The range must be valid.
    pub fn new(net: &'a Network, from: usize, to: usize) -> Option<Self> {
        let layers = net.layers.get(from..to)?;
        let shapes = net.shapes().ok()?;
        let mut ops = Vec::with_capacity(layers.len());
        for (k, layer) in layers.iter().enumerate() {
            ops.push(match layer {
                Layer::Dense(d) => Op::Dense(d),
                Layer::Relu => {
                    if k == 0 || !matches!(layers[k - 1], Layer::Dense(_)) {
                        return None;
                    }
                    Op::Relu(shapes[from + k].iter().product())
                }
                Layer::Flatten => Op::Flatten,
                _ => return None,
            });
        }
        let n_in = shapes[from].iter().product();
        let n_out = shapes[to].iter().product();
        Some(Self {
            ops,
            from,
            n_in,
            n_out,
            sparse: false,
            forward: false,
            forward_only: false,
            split: Vec::new(),
        })
    }

    /// Back-substitute `state` from the output of op `top` down to the chain's input.
    fn back_substitute(&self, steps: &[Option<ReluStep>], top: usize, state: &mut State) {
        for k in (0..=top).rev() {
            match self.ops[k] {
                Op::Flatten => {}
                Op::Relu(_) => state.relu(steps[k].as_ref().expect("relaxed before use")),
                Op::Dense(d) => {
                    // After a ReLU the columns are that ReLU's live neurons.
                    match k
                        .checked_add(1)
                        .and_then(|j| steps.get(j))
                        .and_then(Option::as_ref)
                    {
                        Some(s) if state.cols == s.live.len() && state.split => {
                            state.affine(&s.weight_live, &s.bias_live, d.in_dim)
                        }
                        _ => state.affine(&d.weight, &d.bias, d.in_dim),
                    }
                }
            }
        }
    }

    /// Sparse intermediate bounds (as auto_LiRPA's default): CROWN only for the neurons
    /// that the interval bound leaves unstable, the interval bound for the others. Much
    /// cheaper on small boxes, where most neurons are stable; sound, but no longer
    /// exactly the `Crown` numbers (usually a little looser), so off unless asked for.
    pub fn sparse_intermediate(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// Forward symbolic intermediate bounds (as Neurify/DeepPoly without back-substitution):
    /// every neuron's lower and upper linear function of the chain input, carried forward
    /// through each Dense layer and ReLU relaxation in one pass, `O(L n^2 (d + 1))` for
    /// `d` inputs instead of backward CROWN's `O(L^2 n^3)`. Their intervals (intersected
    /// with IBP and `prior`) decide which neurons are stable; backward CROWN then runs
    /// only for the neurons they leave unstable. The relaxation of a stable neuron is exact
    /// whatever its bounds and the unstable ones get CROWN's bound intersected with the
    /// forward one, so the spec bounds are usually CROWN's or tighter, but not always: the
    /// adaptive lower slope follows the interval, and a tighter interval can flip it to a
    /// looser line (seen on a few ACAS Xu sub-boxes). The stable neurons' intervals are the
    /// forward ones (looser than CROWN's on deep layers, for the f32 error magnitudes). Worth it only for few
    /// inputs (ACAS Xu: 5): ignored when the chain has more than [`FORWARD_MAX_INPUTS`].
    pub fn forward_intermediate(mut self, forward: bool) -> Self {
        self.forward = forward && self.n_in <= FORWARD_MAX_INPUTS;
        self.split = if self.forward {
            self.ops
                .iter()
                .map(|op| match op {
                    Op::Dense(d) => split_weights(d),
                    _ => Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        self
    }

    /// With [`Self::forward_intermediate`] on: take the forward intervals (with IBP and
    /// `prior`) as they are, without the backward pass for unstable neurons. Sound and
    /// several times cheaper, but looser on deep layers: for ranking candidate splits.
    pub fn forward_only(mut self, on: bool) -> Self {
        self.forward_only = on;
        self
    }

    /// Whether forward symbolic intermediate bounds are in use (asked for, and few inputs).
    pub fn forward_enabled(&self) -> bool {
        self.forward
    }

    /// Number of input elements of the chain.
    pub fn input_dim(&self) -> usize {
        self.n_in
    }

    /// Number of output elements of the chain.
    pub fn output_dim(&self) -> usize {
        self.n_out
    }

    /// Linear bounds of `spec * f(x)` over `input` (`spec` is `rows x n_out`,
    /// row-major) with `Method::CrownPure` or `Method::Crown` (any other method gives
    /// `Crown`); the same contract and numbers as [`super::linear_bounds`].
    pub fn linear_bounds(
        &self,
        input: &BoxBounds,
        spec: &[f64],
        rows: usize,
        method: Method,
    ) -> Result<LinearBounds, BoundsError> {
        self.linear_bounds_within(input, spec, rows, method, None)
    }

    /// [`Self::linear_bounds`] intersecting every intermediate bound with `prior`: sound
    /// bounds of the same tensors over a box that contains `input` (e.g. the parent box
    /// in branch and bound), one per layer input and output like `layer_bounds`; an entry
    /// with no elements is skipped. Tighter bounds, and with sparse intermediate bounds
    /// fewer neurons to bound.
    pub fn linear_bounds_within(
        &self,
        input: &BoxBounds,
        spec: &[f64],
        rows: usize,
        method: Method,
        prior: Option<&[BoxBounds]>,
    ) -> Result<LinearBounds, BoundsError> {
        // A nested call (none today) would find the buffers taken and use fresh ones.
        let mut scratch = SCRATCH
            .with(|s| s.try_borrow_mut().map(|mut s| std::mem::take(&mut *s)))
            .unwrap_or_default();
        let result = self.bounds_with(input, spec, rows, method, prior, &mut scratch);
        SCRATCH.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                *s = scratch;
            }
        });
        result
    }

    /// [`Self::linear_bounds_within`] with its buffers.
    fn bounds_with(
        &self,
        input: &BoxBounds,
        spec: &[f64],
        rows: usize,
        method: Method,
        prior: Option<&[BoxBounds]>,
        scratch: &mut Scratch,
    ) -> Result<LinearBounds, BoundsError> {
        let Scratch {
            state,
            forward,
            steps,
        } = scratch;
        input.validate(self.n_in)?;
        if spec.len() != rows * self.n_out {
            return Err(BoundsError::Spec(format!(
                "{} values, expected {rows} rows x {} outputs = {}",
                spec.len(),
                self.n_out,
                rows * self.n_out
            )));
        }
        if let Some(i) = spec.iter().position(|v| !v.is_finite()) {
            return Err(BoundsError::Spec(format!("entry {i} is not finite")));
        }
        let intersect = method != Method::CrownPure;
        let n = self.ops.len();
        let (centre, radius) = input.centre_radius();
        let mut bounds: Vec<BoxBounds> = Vec::with_capacity(n + 1);
        bounds.push(input.clone());
        steps.truncate(n);
        steps.resize_with(n, || None);
        let mut fwd = self.forward.then(|| {
            forward.identity(self.n_in);
            forward
        });
        for k in 0..n {
            if let Op::Relu(dim) = self.ops[k] {
                let Op::Dense(d) = self.ops[k - 1] else {
                    unreachable!("checked in new")
                };
                let b = &bounds[k];
                let s = steps[k].get_or_insert_with(ReluStep::default);
                s.clear();
                for j in 0..dim {
                    let r = relax::relu(b.lower[j], b.upper[j]);
                    // Surely inactive: both lines vanish, the column only holds zeros.
                    let dead =
                        r.lower.slope == 0.0 && r.upper.slope == 0.0 && r.upper.intercept == 0.0;
                    if !dead {
                        s.live.push(j);
                        s.weight_live.extend_from_slice(d.row(j));
                        s.bias_live.push(d.bias[j]);
                        s.lower_live.push(r.lower.slope);
                        s.upper_live.push(r.upper.slope);
                        s.intercept_live.push(r.upper.intercept);
                    }
                }
            } else {
                steps[k] = None;
            }
            let interval = match self.ops[k] {
                Op::Dense(d) => dense_interval(d, &bounds[k]),
                Op::Relu(_) => BoxBounds {
                    lower: bounds[k].lower.iter().map(|v| v.max(0.0)).collect(),
                    upper: bounds[k].upper.iter().map(|v| v.max(0.0)).collect(),
                },
                Op::Flatten => bounds[k].clone(),
            };
            let prior_next = prior
                .and_then(|p| p.get(k + 1))
                .filter(|b| b.len() == interval.len());
            let mut interval = interval;
            if let Some(p) = prior_next {
                interval.intersect_with(p);
            }
            // The forward functions of this op's output (ReLU: relaxed over the bounds
            // of its input, the same relaxation as the backward passes use).
            let interval = match &mut fwd {
                Some(f) => {
                    match self.ops[k] {
                        Op::Dense(d) => f.affine(d, &self.split[k]),
                        Op::Relu(_) => f.relu(&bounds[k]),
                        Op::Flatten => {}
                    }
                    interval.intersect_with(&f.concretise(&centre, &radius));
                    interval
                }
                None => interval,
            };
            let next = match (self.ops[k], self.ops.get(k + 1)) {
                (Op::Dense(d), Some(Op::Relu(_))) => {
                    // CROWN bound of this Dense output: start from W (the identity
                    // pushed through the layer) and go down to the input. Sparse: only
                    // the neurons the interval leaves unstable.
                    let picked: Option<Vec<usize>> = (self.sparse || self.forward).then(|| {
                        (0..d.out_dim)
                            .filter(|&i| {
                                !(self.forward && self.forward_only)
                                    && relax::relu_is_unstable(interval.lower[i], interval.upper[i])
                            })
                            .collect()
                    });
                    state.split = false;
                    state.cols = d.in_dim;
                    state.a.clear();
                    state.c.clear();
                    match &picked {
                        None => {
                            state.rows = d.out_dim;
                            state.a.extend_from_slice(&d.weight);
                            state.c.extend_from_slice(&d.bias);
                            state.c.extend_from_slice(&d.bias);
                        }
                        Some(p) => {
                            state.rows = p.len();
                            p.iter().for_each(|&i| state.a.extend_from_slice(d.row(i)));
                            state.c.extend(p.iter().map(|&i| d.bias[i]));
                            state.c.extend(p.iter().map(|&i| d.bias[i]));
                        }
                    }
                    if k > 0 && state.rows > 0 {
                        self.back_substitute(steps, k - 1, state);
                    }
                    let (lower, upper) = state.concretise(&centre, &radius);
                    match picked {
                        None if intersect => BoxBounds { lower, upper }.intersect(&interval),
                        None => BoxBounds { lower, upper },
                        Some(p) => {
                            let mut b = interval;
                            for (t, &i) in p.iter().enumerate() {
                                b.lower[i] = b.lower[i].max(lower[t]);
                                b.upper[i] = b.upper[i].min(upper[t]);
                            }
                            b
                        }
                    }
                }
                _ => interval,
            };
            check_finite(&next, self.from + k)?;
            bounds.push(next);
        }

        // The spec through the whole chain.
        state.rows = rows;
        state.cols = self.n_out;
        state.split = false;
        state.a.clear();
        state.a.extend_from_slice(spec);
        state.c.clear();
        state.c.resize(2 * rows, 0.0);
        if n > 0 {
            self.back_substitute(steps, n - 1, state);
        }
        let (mut lower, mut upper) = state.concretise(&centre, &radius);
        if intersect {
            // IBP of the spec over the output bounds: C centre +- |C| radius.
            let (oc, or) = bounds.last().expect("n + 1 entries").centre_radius();
            for r in 0..rows {
                let row = &spec[r * self.n_out..(r + 1) * self.n_out];
                let (mut mid, mut dev) = (0.0, 0.0);
                for ((a, x), d) in row.iter().zip(&oc).zip(&or) {
                    mid += a * x;
                    dev += a.abs() * d;
                }
                lower[r] = lower[r].max(mid - dev);
                upper[r] = upper[r].min(mid + dev);
            }
        }
        if lower.iter().chain(&upper).any(|v| !v.is_finite()) {
            return Err(BoundsError::NonFinite {
                layer: (self.from + n).saturating_sub(1),
            });
        }
        // Materialise the coefficient matrices over the input.
        let (a_lower, a_upper) = if state.split {
            let (l, u) = state.a.split_at(rows * self.n_in);
            (l.to_vec(), u.to_vec())
        } else {
            (state.a.clone(), state.a.clone())
        };
        let (c_lower, c_upper) = state.c.split_at(rows);
        Ok(LinearBounds {
            rows,
            cols: self.n_in,
            a_lower,
            c_lower: c_lower.to_vec(),
            a_upper,
            c_upper: c_upper.to_vec(),
            lower,
            upper,
            layer_bounds: bounds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;
    use crate::verify::falsify::random_point;
    use rand::{Rng, SeedableRng};

    fn random_net(
        rng: &mut rand_chacha::ChaCha8Rng,
        dims: &[usize],
        flatten_first: bool,
    ) -> Network {
        let mut layers = Vec::new();
        if flatten_first {
            layers.push(Layer::Flatten);
        }
        for (i, w) in dims.windows(2).enumerate() {
            let weight = (0..w[0] * w[1])
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let bias = (0..w[1]).map(|_| rng.random_range(-0.5..0.5)).collect();
            layers.push(Layer::Dense(Dense::new(w[0], w[1], weight, bias).unwrap()));
            if i + 2 < dims.len() {
                layers.push(Layer::Relu);
            }
        }
        Network::new(vec![dims[0]], layers).unwrap()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-10 * (1.0 + x.abs().max(y.abs())))
    }

    /// The chain path gives the generic engine's numbers (bounds, linear coefficients and
    /// intermediate bounds) for pure and intersected CROWN, whole networks and slices.
    #[test]
    fn chain_matches_the_generic_engine() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for trial in 0..12 {
            let net = random_net(&mut rng, &[5, 20, 20, 20, 4], trial % 2 == 0);
            let c: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = [0.05, 0.3, 1.0][trial % 3];
            let input = BoxBounds::ball(&c, w);
            let spec: Vec<f64> = (0..3 * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let n = net.layers.len();
            for (from, to) in [(0, n), (0, n - 1), (n - 3, n), (0, 1)] {
                let sub_in = if from == 0 {
                    input.clone()
                } else {
                    let b =
                        crate::bounds::linear_bounds(&net, 0, from, &input, None, 0, Method::Crown)
                            .unwrap();
                    b.layer_bounds.last().unwrap().clone()
                };
                let out = net.shapes().unwrap()[to].iter().product::<usize>();
                let s: Vec<f64> = spec
                    .iter()
                    .copied()
                    .take(3 * out)
                    .chain(std::iter::repeat(0.5))
                    .take(3 * out)
                    .collect();
                for method in [Method::CrownPure, Method::Crown] {
                    let opts = crate::bounds::AlphaOptions::default();
                    // The same call with the chain path allowed, then forbidden.
                    let run = |fast| {
                        super::super::linear_bounds_impl(
                            &net,
                            from,
                            to,
                            &sub_in,
                            Some(&s),
                            3,
                            method,
                            &opts,
                            fast,
                        )
                        .unwrap()
                    };
                    let (fast, slow) = (run(true), run(false));
                    let what = format!("trial {trial} {from}..{to} {method:?}");
                    assert!(
                        close(&fast.lower, &slow.lower),
                        "{what}: {:?} vs {:?}",
                        fast.lower,
                        slow.lower
                    );
                    assert!(close(&fast.upper, &slow.upper), "{what}");
                    assert!(close(&fast.a_lower, &slow.a_lower), "{what}");
                    assert!(close(&fast.a_upper, &slow.a_upper), "{what}");
                    assert!(close(&fast.c_lower, &slow.c_lower), "{what}");
                    assert!(close(&fast.c_upper, &slow.c_upper), "{what}");
                    assert_eq!(fast.layer_bounds.len(), slow.layer_bounds.len());
                    for (a, b) in fast.layer_bounds.iter().zip(&slow.layer_bounds) {
                        assert!(
                            close(&a.lower, &b.lower) && close(&a.upper, &b.upper),
                            "{what}"
                        );
                    }
                }
            }
        }
    }

    /// 300 points sampled in `input`: every layer's value lies in `b`'s intermediate
    /// bounds, and every spec row (`spec` holds rows of the network's output width) in
    /// `b`'s bounds and between its linear bounds at the point.
    fn assert_contains_samples(
        rng: &mut rand_chacha::ChaCha8Rng,
        net: &Network,
        input: &BoxBounds,
        spec: &[f64],
        b: &LinearBounds,
        trial: usize,
    ) {
        let width = net.output_dim();
        for _ in 0..300 {
            let x = random_point(rng, &input.lower, &input.upper);
            let mut v = x.clone();
            for (k, layer) in net.layers.iter().enumerate() {
                v = layer.apply(&v);
                assert!(
                    b.layer_bounds[k + 1].contains(&v, 1e-9),
                    "trial {trial} layer {k}"
                );
            }
            for (r, row) in spec.chunks(width).enumerate() {
                let y: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                let t = 1e-9 * (1.0 + y.abs());
                assert!(
                    b.lower[r] <= y + t && y <= b.upper[r] + t,
                    "trial {trial} row {r}"
                );
                assert!(b.lower_at(r, &x) <= y + t && y <= b.upper_at(r, &x) + t);
            }
        }
    }

    /// Sparse intermediate bounds stay sound: sampled spec values and activations lie
    /// inside them.
    #[test]
    fn sparse_intermediate_bounds_contain_sampled_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for trial in 0..6 {
            let net = random_net(&mut rng, &[5, 20, 20, 20, 4], false);
            let c: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let input = BoxBounds::ball(&c, [0.05, 0.3][trial % 2]);
            let spec: Vec<f64> = (0..2 * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let chain = DenseReluChain::new(&net, 0, net.layers.len())
                .unwrap()
                .sparse_intermediate(true);
            let b = chain
                .linear_bounds(&input, &spec, 2, Method::Crown)
                .unwrap();
            assert_contains_samples(&mut rng, &net, &input, &spec, &b, trial);
        }
    }

    /// Bounds of a sub-box intersected with the parent box's bounds stay sound and are
    /// never looser than the parent's.
    #[test]
    fn forward_intermediate_bounds_contain_sampled_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for trial in 0..8 {
            let net = random_net(&mut rng, &[5, 20, 20, 20, 4], trial % 4 == 3);
            let c: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let parent = BoxBounds::ball(&c, [0.05, 0.3, 1.0][trial % 3]);
            let spec: Vec<f64> = (0..2 * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let dense = DenseReluChain::new(&net, 0, net.layers.len()).unwrap();
            let chain = dense
                .clone()
                .forward_intermediate(true)
                .forward_only(trial % 2 == 1);
            let pb = chain
                .linear_bounds(&parent, &spec, 2, Method::Crown)
                .unwrap();
            // A child box with the parent's bounds as prior, as branch and bound uses it.
            let mut input = parent.clone();
            input.upper[trial % 5] = c[trial % 5];
            let b = chain
                .linear_bounds_within(&input, &spec, 2, Method::Crown, Some(&pb.layer_bounds))
                .unwrap();
            // Not looser than dense CROWN on these boxes, beyond f64 noise (not guaranteed in
            // general, see `forward_intermediate`; forward only may be looser).
            let d = dense
                .linear_bounds(&input, &spec, 2, Method::Crown)
                .unwrap();
            for r in (0..2).filter(|_| trial % 2 == 0) {
                assert!(b.lower[r] >= d.lower[r] - 1e-9 * (1.0 + d.lower[r].abs()));
                assert!(b.upper[r] <= d.upper[r] + 1e-9 * (1.0 + d.upper[r].abs()));
            }
            assert_contains_samples(&mut rng, &net, &input, &spec, &b, trial);
        }
    }

    #[test]
    fn forward_intermediate_is_ignored_on_wide_inputs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let net = random_net(&mut rng, &[40, 10, 3], false);
        let input = BoxBounds::ball(&[0.1; 40], 0.2);
        let spec = vec![1.0, -1.0, 0.0];
        let chain = DenseReluChain::new(&net, 0, net.layers.len()).unwrap();
        let a = chain
            .linear_bounds(&input, &spec, 1, Method::Crown)
            .unwrap();
        let b = chain
            .forward_intermediate(true)
            .linear_bounds(&input, &spec, 1, Method::Crown)
            .unwrap();
        assert_eq!(a.lower, b.lower);
        assert_eq!(a.upper, b.upper);
    }

    #[test]
    fn bounds_within_a_parent_box_contain_sampled_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for trial in 0..6 {
            let net = random_net(&mut rng, &[5, 20, 20, 4], false);
            let c: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let parent = BoxBounds::ball(&c, 0.4);
            let chain = DenseReluChain::new(&net, 0, net.layers.len())
                .unwrap()
                .sparse_intermediate(trial % 2 == 0);
            let spec = vec![1.0, -1.0, 0.0, 0.0];
            let pb = chain
                .linear_bounds(&parent, &spec, 1, Method::Crown)
                .unwrap();
            let mut child = parent.clone();
            child.upper[0] = c[0];
            child.lower[3] = c[3];
            let b = chain
                .linear_bounds_within(&child, &spec, 1, Method::Crown, Some(&pb.layer_bounds))
                .unwrap();
            for (k, (cb, p)) in b
                .layer_bounds
                .iter()
                .zip(&pb.layer_bounds)
                .enumerate()
                .skip(1)
            {
                assert!(
                    cb.lower.iter().zip(&p.lower).all(|(a, b)| a >= b),
                    "trial {trial} layer {k}"
                );
                assert!(
                    cb.upper.iter().zip(&p.upper).all(|(a, b)| a <= b),
                    "trial {trial} layer {k}"
                );
            }
            assert_contains_samples(&mut rng, &net, &child, &spec, &b, trial);
        }
    }

    #[test]
    fn other_layers_are_left_to_the_generic_engine() {
        let d = Dense::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![0.0; 2]).unwrap();
        let net = Network::new(
            vec![2],
            vec![
                Layer::Dense(d.clone()),
                Layer::Tanh,
                Layer::Dense(d.clone()),
            ],
        )
        .unwrap();
        assert!(DenseReluChain::new(&net, 0, 3).is_none());
        let net = Network::new(vec![2], vec![Layer::Relu, Layer::Dense(d)]).unwrap();
        assert!(DenseReluChain::new(&net, 0, 2).is_none());
        assert!(DenseReluChain::new(&net, 1, 2).is_some());
    }
}
