//! Soundness by sampling of the sharp f32 error bound at a point
//! (`verify::rounding::point_error_bounds`) against the device core itself, every kernel
//! set this CPU has (the generic scalar one and AVX2/FMA here), on the real networks:
//! the observed `|device f32 - host f64|` must never exceed the bound, and the bound must
//! be far tighter than the layer-by-layer `|W|` one it replaces.

use prorepair_host::compile::{AlignedBlob, compile};
use prorepair_host::model::Network;
use prorepair_host::require_data;
use prorepair_host::tasks::mnist;
use prorepair_host::verify::rounding;
use rand::{Rng, SeedableRng};

/// Worst ratios seen on one network.
#[derive(Default, Debug)]
struct Figures {
    points: usize,
    /// max over points and outputs of observed error / new bound (must be <= 1).
    worst_ratio: f64,
    /// max observed |device - host| over outputs, points and kernels.
    max_observed: f64,
    /// mean over points of max_j new bound_j.
    mean_new: f64,
    /// mean over points of max_j old element-wise bound_j.
    mean_old: f64,
    /// mean over points of max over label rows of the old per-row bound.
    mean_old_rows: f64,
    /// mean over points of max over label rows of the new per-row bound.
    mean_new_rows: f64,
}

/// Check the bound at every point against every kernel set; returns the figures.
fn check(net: &Network, points: &[Vec<f64>]) -> Figures {
    let blob = AlignedBlob::new(&compile(net).expect("compile"));
    let model = blob.model().expect("model blob");
    let mut arena = vec![0.0f32; model.required_arena_len()];
    let n_out = net.output_dim();
    let kernels: Vec<_> = prorepair_core::kernels::available().collect();
    assert!(!kernels.is_empty());
    let mut f = Figures::default();
    for x in points {
        let y = net.forward(x);
        // Unit rows, then the label-vs-other rows the point proofs use (label = argmax).
        let label = mnist::argmax(&y);
        let mut rows: Vec<Vec<f64>> = (0..n_out)
            .map(|j| (0..n_out).map(|k| f64::from(u8::from(j == k))).collect())
            .collect();
        for j in (0..n_out).filter(|&j| j != label) {
            let mut c = vec![0.0; n_out];
            c[label] = 1.0;
            c[j] = -1.0;
            rows.push(c);
        }
        let (y2, bound) = rounding::point_forward_with_error(net, x, &rows).expect("supported");
        assert_eq!(y, y2, "the bound refers to Network::forward's values");
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        for k in &kernels {
            let mut out = vec![0.0f32; n_out];
            model.evaluate_with(k, &xf, &mut arena, &mut out).unwrap();
            for (r, c) in rows.iter().enumerate() {
                let err: f64 = c
                    .iter()
                    .zip(&out)
                    .zip(&y)
                    .map(|((c, d), y)| c * (f64::from(*d) - y))
                    .sum::<f64>()
                    .abs();
                assert!(
                    err <= bound[r],
                    "{}: row {r}: observed {err:e} > bound {:e}",
                    k.isa,
                    bound[r]
                );
                f.worst_ratio = f.worst_ratio.max(err / bound[r]);
                if r < n_out {
                    f.max_observed = f.max_observed.max(err);
                }
            }
        }
        let old = rounding::f32_error_bound(net, x, x);
        let old_rows =
            rounding::spec_error_bounds(net, &rounding::interval_bounds(net, x, x), &rows[n_out..]);
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        f.points += 1;
        f.mean_new += max(&bound[..n_out]);
        f.mean_old += max(&old);
        f.mean_new_rows += max(&bound[n_out..]);
        f.mean_old_rows += old_rows.map_or(f64::INFINITY, |o| max(&o));
        for j in 0..n_out {
            assert!(bound[j] <= old[j], "never looser than the |W| bound");
        }
    }
    let n = f.points as f64;
    f.mean_new /= n;
    f.mean_old /= n;
    f.mean_new_rows /= n;
    f.mean_old_rows /= n;
    eprintln!("{f:?}");
    f
}

/// MNIST points: test images and, around them, random ±0.1 perturbations clipped to [0, 1].
fn mnist_points(count: usize, seed: u64) -> Option<Vec<Vec<f64>>> {
    let dir = prorepair_host::testing::data_path("mnist")?;
    let test = mnist::test_set(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Some(
        (0..count)
            .map(|i| {
                let x = &test.images[i * 37 % test.images.len()];
                if i % 2 == 0 {
                    x.clone()
                } else {
                    x.iter()
                        .map(|v| (v + rng.random_range(-0.1..0.1)).clamp(0.0, 1.0))
                        .collect()
                }
            })
            .collect(),
    )
}

fn mnist_case(rel: &str, count: usize, min_gain: f64) {
    let net = prorepair_host::import::load(&require_data!(rel)).unwrap();
    let Some(points) = mnist_points(count, 5) else {
        return;
    };
    let f = check(&net, &points);
    assert!(f.worst_ratio <= 1.0);
    assert!(
        f.mean_old / f.mean_new >= min_gain,
        "{rel}: old {:e} vs new {:e}",
        f.mean_old,
        f.mean_new
    );
}

#[test]
fn point_bound_covers_device_mnist_relu_3_100() {
    mnist_case("mnist/nets/mnist_relu_3_100.onnx", 40, 10.0);
}

#[test]
fn point_bound_covers_device_mnist_relu_9_100() {
    mnist_case("mnist/nets/mnist_relu_9_100.onnx", 40, 1e3);
}

#[test]
fn point_bound_covers_device_mnist_relu_9_200() {
    mnist_case("mnist/nets/mnist_relu_9_200.onnx", 30, 1e3);
}

#[test]
fn point_bound_covers_device_sigmoid_6x200() {
    mnist_case("mnist/nets/ffnnSIGMOID__Point_6x200.onnx", 30, 1e3);
}

#[test]
fn point_bound_covers_device_acasxu() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for (a, b) in prorepair_host::testing::acasxu_indices() {
        let net = prorepair_host::import::load(&require_data!(
            &prorepair_host::testing::acasxu_onnx(a, b)
        ))
        .unwrap();
        // Normalised inputs: the property boxes lie within [-0.5, 0.7].
        let points: Vec<Vec<f64>> = (0..10)
            .map(|_| (0..5).map(|_| rng.random_range(-0.5..0.7)).collect())
            .collect();
        let f = check(&net, &points);
        assert!(f.worst_ratio <= 1.0);
    }
}
