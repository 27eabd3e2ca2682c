//! Compute kernels: one scalar reference and one file per ISA, picked by CPU features.
//!
//! As in tract-linalg, each ISA provides a [`Kernels`] table of safe functions with the
//! same contract as [`generic`], the scalar reference (which uses `libm`), and every
//! table is property-tested against it. Selection ([`best`]):
//! - x86_64: AVX2+FMA when the CPU has them: detected at run time with `std`
//!   (`is_x86_feature_detected!`), decided at compile time
//!   (`cfg(target_feature = "avx2", "fma")`) without it;
//! - aarch64: NEON, always (it is part of the base ISA);
//! - everything else (Cortex-M, ...): the generic kernels.
//!
//! Contracts, shared by every table:
//! - element-wise kernels map `x` to `y` over `min(x.len(), y.len())` values;
//! - `dense(panels, bias, x, y, relu)` computes `y = W x + b` (then `max(y, 0)` when
//!   `relu`) with `in = x.len()`, `out = y.len()`, `W` panel-major (see
//!   [`crate::format`]); it returns `false` and writes nothing when `panels` or `bias`
//!   are too short;
//! - `axpy(y, a, x)` does `y += a * x` over `min` of the lengths;
//! - `sum(x)` adds all values (the weight-streaming roofline of the benchmarks).

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod generic;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// `dense(panels, bias, x, y, relu) -> bool`, see the module documentation.
pub type DenseFn = fn(panels: &[f32], bias: &[f32], x: &[f32], y: &mut [f32], relu: bool) -> bool;

/// A set of kernels for one ISA.
#[derive(Debug)]
pub struct Kernels {
    /// Name of the ISA variant, for reports (`"generic"`, `"x86_64-avx2-fma"`, `"aarch64-neon"`).
    pub isa: &'static str,
    /// `y = W x + b`, optionally fused with ReLU; `false` when the parameters are too short.
    pub dense: DenseFn,
    /// `y += a * x`.
    pub axpy: fn(y: &mut [f32], a: f32, x: &[f32]),
    /// `y = max(x, 0)` (NaN gives 0, as `maxps`).
    pub relu: fn(x: &[f32], y: &mut [f32]),
    /// `y = x >= 0 ? x : alpha * x`.
    pub leaky_relu: fn(x: &[f32], y: &mut [f32], alpha: f32),
    /// `y = 1 / (1 + exp(-x))`.
    pub sigmoid: fn(x: &[f32], y: &mut [f32]),
    /// `y = tanh(x)`.
    pub tanh: fn(x: &[f32], y: &mut [f32]),
    /// `y = x * Phi(x)`, exact (erf) GELU.
    pub gelu: fn(x: &[f32], y: &mut [f32]),
    /// Sum of all values.
    pub sum: fn(x: &[f32]) -> f32,
}

/// The scalar reference kernels (every target).
pub fn generic() -> &'static Kernels {
    &generic::KERNELS
}

/// The fastest kernels this CPU supports.
pub fn best() -> &'static Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(k) = x86_64::kernels() {
            return k;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return &aarch64::KERNELS;
    }
    #[allow(unreachable_code)]
    &generic::KERNELS
}

/// Every kernel set usable on this CPU, the generic reference first (for tests and
/// benchmarks).
pub fn available() -> impl Iterator<Item = &'static Kernels> {
    let simd: Option<&'static Kernels> = {
        #[cfg(target_arch = "x86_64")]
        {
            x86_64::kernels()
        }
        #[cfg(target_arch = "aarch64")]
        {
            Some(&aarch64::KERNELS)
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            None
        }
    };
    core::iter::once(&generic::KERNELS).chain(simd)
}
