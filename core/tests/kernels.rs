//! Every SIMD kernel set agrees with the scalar reference (`kernels::generic`), on
//! random lengths (tails 1..17 included), wide value ranges (±80, denormals), and the
//! reference activations agree with f64 math.

use proptest::prelude::*;
use prorepair_core::format::{DENSE_PANEL, dense_panel_len};
use prorepair_core::kernels::{self, Kernels};

fn simd_sets() -> Vec<&'static Kernels> {
    kernels::available()
        .filter(|k| k.isa != "generic")
        .collect()
}

/// `|got - want| <= rel * |want| + abs`, NaN only where expected.
fn assert_close(got: f32, want: f32, rel: f32, abs: f32, what: &str) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: got {got}, want NaN");
        return;
    }
    assert!(
        (got - want).abs() <= rel * want.abs() + abs,
        "{what}: got {got:e}, want {want:e}"
    );
}

/// Finite values over a wide range: moderate, large (±80 and beyond), tiny, denormal.
fn wide() -> impl Strategy<Value = f32> {
    prop_oneof![
        -10.0f32..10.0,
        -100.0f32..100.0,
        Just(80.0f32),
        Just(-80.0f32),
        -1e-3f32..1e-3,
        (1u32..0x007f_ffff, any::<bool>())
            .prop_map(|(m, neg)| f32::from_bits(m | if neg { 1 << 31 } else { 0 })),
        Just(0.0f32),
        Just(-0.0f32),
    ]
}

fn vecs(max: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(wide(), 0..max)
}

type Activation = fn(&Kernels) -> fn(&[f32], &mut [f32]);

fn check_activation(x: &[f32], pick: Activation, rel: f32, name: &str) {
    let mut want = vec![0.0; x.len()];
    pick(kernels::generic())(x, &mut want);
    for k in simd_sets() {
        let mut got = vec![f32::NAN; x.len()];
        pick(k)(x, &mut got);
        for ((&g, &w), &v) in got.iter().zip(&want).zip(x) {
            assert_close(g, w, rel, 1e-37, &format!("{} {name}({v:e})", k.isa));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn relu_is_exact(x in vecs(70)) {
        check_activation(&x, |k| k.relu, 0.0, "relu");
    }

    #[test]
    fn leaky_relu_is_exact(x in vecs(70), alpha in 0.0f32..1.0) {
        let mut want = vec![0.0; x.len()];
        (kernels::generic().leaky_relu)(&x, &mut want, alpha);
        for k in simd_sets() {
            let mut got = vec![0.0; x.len()];
            (k.leaky_relu)(&x, &mut got, alpha);
            prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn sigmoid_within_1e6_of_libm(x in vecs(70)) {
        check_activation(&x, |k| k.sigmoid, 1e-6, "sigmoid");
    }

    #[test]
    fn tanh_within_1e6_of_libm(x in vecs(70)) {
        check_activation(&x, |k| k.tanh, 1e-6, "tanh");
    }

    #[test]
    fn gelu_within_1e6_of_libm(x in vecs(70)) {
        check_activation(&x, |k| k.gelu, 1e-6, "gelu");
    }

    #[test]
    fn axpy_matches(y in proptest::collection::vec(-10.0f32..10.0, 0..70), a in -5.0f32..5.0, seed in any::<u64>()) {
        let x: Vec<f32> = (0..y.len()).map(|i| ((seed.wrapping_add(i as u64 * 7919) % 2001) as f32 - 1000.0) / 100.0).collect();
        let mut want = y.clone();
        (kernels::generic().axpy)(&mut want, a, &x);
        for k in simd_sets() {
            let mut got = y.clone();
            (k.axpy)(&mut got, a, &x);
            for i in 0..y.len() {
                assert_close(got[i], want[i], 0.0, 1e-6 * (y[i].abs() + (a * x[i]).abs()), "axpy");
            }
        }
    }

    #[test]
    fn sum_matches(x in proptest::collection::vec(-10.0f32..10.0, 0..300)) {
        let want = (kernels::generic().sum)(&x);
        let scale: f32 = x.iter().map(|v| v.abs()).sum();
        let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
        for k in simd_sets() {
            let got = (k.sum)(&x);
            assert_close(got, want, 0.0, 1e-6 * scale + 1e-30, "sum");
        }
        prop_assert!((f64::from(want) - exact).abs() <= 1e-6 * f64::from(scale) + 1e-30);
    }

    /// Dense on random shapes (odd in/out sizes, partial panels), with and without
    /// the fused ReLU; also against an f64 matvec.
    #[test]
    fn dense_matches(in_dim in 1usize..70, out_dim in 1usize..40, relu in any::<bool>(), seed in any::<u64>()) {
        let mut s = seed | 1;
        let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0 };
        let n = dense_panel_len(in_dim, out_dim).unwrap();
        let panels: Vec<f32> = (0..n).map(|_| next()).collect();
        let bias: Vec<f32> = (0..out_dim).map(|_| next()).collect();
        let x: Vec<f32> = (0..in_dim).map(|_| next() * 4.0).collect();
        let w = |o: usize, i: usize| panels[(o / DENSE_PANEL * in_dim + i) * DENSE_PANEL + o % DENSE_PANEL];
        let mut want = vec![0.0; out_dim];
        prop_assert!((kernels::generic().dense)(&panels, &bias, &x, &mut want, relu));
        for o in 0..out_dim {
            let exact: f64 = f64::from(bias[o]) + (0..in_dim).map(|i| f64::from(w(o, i)) * f64::from(x[i])).sum::<f64>();
            let exact = if relu { exact.max(0.0) } else { exact };
            let scale: f64 = f64::from(bias[o].abs()) + (0..in_dim).map(|i| f64::from((w(o, i) * x[i]).abs())).sum::<f64>();
            prop_assert!((f64::from(want[o]) - exact).abs() <= 1e-6 * scale + 1e-30, "generic row {o}");
        }
        for k in simd_sets() {
            let mut got = vec![f32::NAN; out_dim];
            prop_assert!((k.dense)(&panels, &bias, &x, &mut got, relu));
            for o in 0..out_dim {
                let scale: f32 = bias[o].abs() + (0..in_dim).map(|i| (w(o, i) * x[i]).abs()).sum::<f32>();
                assert_close(got[o], want[o], 0.0, 1e-6 * scale + 1e-30, &format!("{} dense row {o}", k.isa));
            }
            // Too-short parameters: refused, nothing written.
            let mut untouched = vec![7.0f32; out_dim];
            prop_assert!(!(k.dense)(&panels[..n - 1], &bias, &x, &mut untouched, relu));
            prop_assert!(untouched.iter().all(|&v| v == 7.0));
        }
    }
}

#[test]
fn reference_activations_agree_with_f64_math() {
    for i in -2000..=2000 {
        let x = i as f32 * 0.05; // -100 .. 100
        let xd = f64::from(x);
        let sig = 1.0 / (1.0 + (-xd).exp());
        let mut y = [0.0f32];
        (kernels::generic().sigmoid)(&[x], &mut y);
        assert_close(y[0], sig as f32, 1e-6, 1e-37, "sigmoid vs f64");
        (kernels::generic().tanh)(&[x], &mut y);
        assert_close(y[0], xd.tanh() as f32, 1e-6, 1e-37, "tanh vs f64");
    }
    // GELU against erf values from A&S table 7.1: Phi(1) = 0.841344746, Phi(-2) = 0.022750132.
    let mut y = [0.0f32; 2];
    (kernels::generic().gelu)(&[1.0, -2.0], &mut y);
    assert_close(y[0], 0.841_344_7, 1e-6, 0.0, "gelu(1)");
    assert_close(y[1], -2.0 * 0.022_750_132, 1e-6, 0.0, "gelu(-2)");
}

#[test]
fn nan_propagates_like_the_reference() {
    let x = [f32::NAN, 1.0, -1.0, f32::NAN, 0.0, 3.0, -3.0, f32::NAN, 2.0];
    check_activation(&x, |k| k.sigmoid, 1e-6, "sigmoid");
    check_activation(&x, |k| k.tanh, 1e-6, "tanh");
    check_activation(&x, |k| k.relu, 0.0, "relu");
}

#[test]
fn the_best_kernels_are_available() {
    let best = kernels::best();
    assert!(
        kernels::available().any(|k| std::ptr::eq(k, best)),
        "best() = {}",
        best.isa
    );
    eprintln!(
        "kernels on this CPU: {:?}",
        kernels::available().map(|k| k.isa).collect::<Vec<_>>()
    );
}
