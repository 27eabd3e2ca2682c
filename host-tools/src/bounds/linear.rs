//! Dense linear algebra for back-substitution: f64 GEMM through `matrixmultiply`, and the
//! state of a backward (CROWN) pass, `A_lower x + c_lower <= C f(x) <= A_upper x + c_upper`
//! with respect to the current layer's input.

use super::BoxBounds;

/// `c = beta * c + a * b` with `a` `m x k`, `b` `k x n`, `c` `m x n`, all row-major.
pub(crate) fn gemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], beta: f64, c: &mut [f64]) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operand sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    // SAFETY: the assert above guarantees that a (row stride k), b (row stride n) and c
    // (row stride n) hold every element the kernel reads or writes; c is a unique borrow
    // so it aliases neither a nor b; matrixmultiply allows beta = 0 with any c contents.
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
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `out[r] += sum_j a[r, j] * x[j]` for `a` `rows x cols` (the model's dot product, so a
/// bound operation's forward pass equals [`crate::model::Network::forward`] exactly).
pub(crate) fn gemv_add(rows: usize, cols: usize, a: &[f64], x: &[f64], out: &mut [f64]) {
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        *o += crate::model::dot(&a[r * cols..(r + 1) * cols], x);
    }
}

/// Linear bounds of `rows` outputs with respect to a vector of `cols` variables, being
/// carried backward through the network.
#[derive(Clone, Debug)]
pub(crate) struct LinearState {
    /// Number of bounded quantities (rows of the spec).
    pub rows: usize,
    /// Number of variables the bounds are currently expressed in.
    pub cols: usize,
    /// `A` is the identity (`rows == cols`) and is not stored (start of an intermediate
    /// pass): the first affine layer then just copies its matrix.
    pub identity: bool,
    /// The upper `A` equals the lower one (no relaxation crossed yet): only `lower_a` is
    /// stored, which halves the work before the first nonlinearity.
    pub shared: bool,
    /// `rows x cols`, row-major.
    pub lower_a: Vec<f64>,
    /// `rows x cols`, row-major (unused while `shared`).
    pub upper_a: Vec<f64>,
    /// `rows` constants of the lower bounds.
    pub lower_c: Vec<f64>,
    /// `rows` constants of the upper bounds.
    pub upper_c: Vec<f64>,
    /// Reused product buffer.
    spare: Vec<f64>,
}

impl LinearState {
    /// Bounds of the identity map on `n` variables.
    pub fn identity(n: usize) -> Self {
        Self {
            rows: n,
            cols: n,
            identity: true,
            shared: true,
            lower_a: Vec::new(),
            upper_a: Vec::new(),
            lower_c: vec![0.0; n],
            upper_c: vec![0.0; n],
            spare: Vec::new(),
        }
    }

    /// Bounds of `spec * y` for a `rows x cols` spec matrix.
    pub fn from_spec(rows: usize, cols: usize, spec: &[f64]) -> Self {
        Self {
            rows,
            cols,
            identity: false,
            shared: true,
            lower_a: spec.to_vec(),
            upper_a: Vec::new(),
            lower_c: vec![0.0; rows],
            upper_c: vec![0.0; rows],
            spare: Vec::new(),
        }
    }

    /// Store the identity explicitly.
    pub fn materialise(&mut self) {
        if self.identity {
            self.lower_a = vec![0.0; self.rows * self.cols];
            for i in 0..self.rows {
                self.lower_a[i * self.cols + i] = 1.0;
            }
            self.identity = false;
        }
    }

    /// Give the upper bounds their own `A` (before a relaxation makes them differ).
    pub fn split(&mut self) {
        self.materialise();
        if self.shared {
            self.upper_a.clone_from(&self.lower_a);
            self.shared = false;
        }
    }

    /// Substitute `y = M x + b` (`M` is `out x in`, `out == cols`).
    pub fn apply_affine(&mut self, matrix: &[f64], bias: &[f64], out_dim: usize, in_dim: usize) {
        debug_assert_eq!(out_dim, self.cols);
        if self.identity {
            self.lower_a = matrix.to_vec();
            for (c, b) in self.lower_c.iter_mut().zip(bias) {
                *c += b;
            }
            for (c, b) in self.upper_c.iter_mut().zip(bias) {
                *c += b;
            }
            self.identity = false;
            self.cols = in_dim;
            return;
        }
        gemv_add(self.rows, out_dim, &self.lower_a, bias, &mut self.lower_c);
        if !self.shared {
            gemv_add(self.rows, out_dim, &self.upper_a, bias, &mut self.upper_c);
        }
        // Columns that are zero on both sides (e.g. inactive ReLU neurons) contribute
        // nothing: drop them and the matching matrix rows before the products.
        let rows = self.rows;
        let live: Vec<usize> = (0..out_dim)
            .filter(|&j| {
                (0..rows).any(|r| self.lower_a[r * out_dim + j] != 0.0)
                    || (!self.shared && (0..rows).any(|r| self.upper_a[r * out_dim + j] != 0.0))
            })
            .collect();
        let compact = live.len() < out_dim;
        let (k, m_used): (usize, std::borrow::Cow<'_, [f64]>) = if compact {
            let mut m = Vec::with_capacity(live.len() * in_dim);
            for &j in &live {
                m.extend_from_slice(&matrix[j * in_dim..(j + 1) * in_dim]);
            }
            (live.len(), std::borrow::Cow::Owned(m))
        } else {
            (out_dim, std::borrow::Cow::Borrowed(matrix))
        };
        let gather = |a: &[f64]| -> Vec<f64> {
            let mut g = Vec::with_capacity(rows * live.len());
            for r in 0..rows {
                g.extend(live.iter().map(|&j| a[r * out_dim + j]));
            }
            g
        };
        for upper in [false, true] {
            if upper && self.shared {
                break;
            }
            let a = if upper {
                &mut self.upper_a
            } else {
                &mut self.lower_a
            };
            if compact {
                *a = gather(a);
            }
            self.spare.resize(rows * in_dim, 0.0);
            gemm(rows, k, in_dim, a, &m_used, 0.0, &mut self.spare);
            std::mem::swap(a, &mut self.spare);
        }
        if self.shared {
            self.upper_c.clone_from(&self.lower_c);
        }
        self.cols = in_dim;
    }

    /// The upper `A`, whether stored separately or shared.
    pub fn upper_matrix(&self) -> &[f64] {
        if self.shared {
            &self.lower_a
        } else {
            &self.upper_a
        }
    }

    /// Concretise over a box with the centre/radius form (as auto_LiRPA):
    /// `lower = A c - |A| r + c_lower`, `upper = A c + |A| r + c_upper`.
    pub fn concretise(&mut self, input: &BoxBounds) -> BoxBounds {
        self.materialise();
        let (centre, radius) = input.centre_radius();
        let side = |a: &[f64], c: &[f64], sign: f64| -> Vec<f64> {
            (0..self.rows)
                .map(|r| {
                    let row = &a[r * self.cols..(r + 1) * self.cols];
                    let (mut mid, mut dev) = (0.0, 0.0);
                    for ((a, x), d) in row.iter().zip(&centre).zip(&radius) {
                        mid += a * x;
                        dev += a.abs() * d;
                    }
                    mid + sign * dev + c[r]
                })
                .collect()
        };
        BoxBounds {
            lower: side(&self.lower_a, &self.lower_c, -1.0),
            upper: side(self.upper_matrix(), &self.upper_c, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_product() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let mut c = vec![f64::NAN; m * n];
        gemm(m, k, n, &a, &b, 0.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-14);
            }
        }
    }
}
