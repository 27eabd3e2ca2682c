//! Sampling soundness of every bound method on real MNIST networks (the ERAN sigmoid
//! 6x200 net and the ERAN ReLU 3x100 net) over small L-inf boxes: sampled outputs lie in
//! the concrete bounds, and the linear bounds of a margin spec (label minus every other
//! class) hold pointwise, for the whole network and for a sub-network `layers[k..]` over
//! a box around the intermediate feature (ProRepair's `f_c`).

use prorepair_host::Network;
use prorepair_host::bounds::{self, BoxBounds, Method};

const METHODS: [Method; 4] = [
    Method::Ibp,
    Method::CrownPure,
    Method::Crown,
    Method::AlphaCrown,
];

/// Deterministic sampler (splitmix64).
struct SplitMix(u64);
impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sparse stroke-like image in [0, 1] (the MNIST files are gzip; the bounds do not care).
fn pseudo_image(rng: &mut SplitMix, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            if rng.next_f64() < 0.2 {
                0.5 + 0.5 * rng.next_f64()
            } else {
                0.0
            }
        })
        .collect()
}

fn samples(rng: &mut SplitMix, b: &BoxBounds, n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            b.lower
                .iter()
                .zip(&b.upper)
                .map(|(&l, &u)| {
                    let t = rng.next_f64();
                    if i % 3 == 0 {
                        if t < 0.5 { l } else { u }
                    } else {
                        l + (u - l) * t
                    }
                })
                .collect()
        })
        .collect()
}

/// `label - j` for every other class `j`: rows x n_out.
fn margin_spec(label: usize, n_out: usize) -> Vec<f64> {
    let mut spec = Vec::new();
    for j in (0..n_out).filter(|&j| j != label) {
        let mut row = vec![0.0; n_out];
        row[label] = 1.0;
        row[j] = -1.0;
        spec.extend(row);
    }
    spec
}

fn check_range(net: &Network, from: usize, input: &BoxBounds, points: &[Vec<f64>], label: usize) {
    let to = net.layers.len();
    let n_out = net.output_dim();
    let spec = margin_spec(label, n_out);
    let rows = n_out - 1;
    for method in METHODS {
        let b = bounds::linear_bounds(net, from, to, input, Some(&spec), rows, method)
            .unwrap_or_else(|e| panic!("{method:?} layers {from}..{to}: {e}"));
        let out =
            bounds::linear_bounds(net, from, to, input, None, 0, method).expect("identity spec");
        let mut worst = f64::INFINITY;
        for h in points {
            let y = net.forward_range(h, from, to);
            let outputs = BoxBounds::new(out.lower.clone(), out.upper.clone());
            assert!(
                outputs.contains(&y, 1e-9),
                "{method:?} {from}..{to}: {y:?} outside {outputs:?}"
            );
            for r in 0..rows {
                let v: f64 = spec[r * n_out..(r + 1) * n_out]
                    .iter()
                    .zip(&y)
                    .map(|(c, y)| c * y)
                    .sum();
                let tol = 1e-9 * (1.0 + v.abs());
                let (lo, hi) = (b.lower_at(r, h), b.upper_at(r, h));
                assert!(
                    b.lower[r] <= v + tol && v <= b.upper[r] + tol,
                    "{method:?} {from}..{to} row {r}: {v} outside concrete [{}, {}]",
                    b.lower[r],
                    b.upper[r]
                );
                assert!(
                    lo <= v + tol && v <= hi + tol,
                    "{method:?} {from}..{to} row {r}: {v} outside linear [{lo}, {hi}]"
                );
                worst = worst.min(v - b.lower[r]);
            }
        }
        println!(
            "{method:?} layers {from}..{to}: mean margin lower bound {:.4}, closest sample gap {worst:.3e}",
            b.lower.iter().sum::<f64>() / rows as f64
        );
    }
}

fn check_net(relative: &str, eps: &[f64], split: usize) {
    let Some(path) = prorepair_host::testing::data_path(relative) else {
        return;
    };
    let net = prorepair_host::import::load(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    let mut rng = SplitMix(0xB0_0D5);
    for &e in eps {
        let image = pseudo_image(&mut rng, net.input_dim());
        let label = {
            let y = net.forward(&image);
            (0..y.len())
                .max_by(|&a, &b| y[a].total_cmp(&y[b]))
                .expect("outputs")
        };
        let input = BoxBounds::ball(&image, e);
        let points = samples(&mut rng, &input, 120);
        check_range(&net, 0, &input, &points, label);
        // Sub-network from layer `split` over a box around the feature of the image.
        let feature = net.forward_range(&image, 0, split);
        let feature_box = BoxBounds::ball(&feature, 4.0 * e);
        let feature_points = samples(&mut rng, &feature_box, 120);
        check_range(&net, split, &feature_box, &feature_points, label);
    }
}

#[test]
fn sigmoid_6x200_mnist_bounds_are_sound() {
    check_net(
        "mnist/nets/ffnnSIGMOID__Point_6x200.onnx",
        &[0.002, 0.01],
        4,
    );
}

#[test]
fn relu_3x100_mnist_bounds_are_sound() {
    check_net("mnist/nets/mnist_relu_3_100.onnx", &[0.005, 0.02], 2);
}

#[test]
fn acasxu_sub_network_linear_bounds_are_sound() {
    // f_c = the last three hidden layers and the output of N(1,1), over a box around the
    // feature of one input; spec: COC minus every other advisory.
    let Some(path) =
        prorepair_host::testing::data_path(&prorepair_host::testing::acasxu_onnx(1, 1))
    else {
        return;
    };
    let net = prorepair_host::import::load(&path).expect("ACAS Xu N(1,1)");
    let mut rng = SplitMix(11);
    let x = [0.62, 0.1, -0.2, 0.47, -0.47];
    let split = net.layers.len() - 7;
    let feature = net.forward_range(&x, 0, split);
    let feature_box = BoxBounds::ball(&feature, 0.05);
    let points = samples(&mut rng, &feature_box, 300);
    check_range(&net, split, &feature_box, &points, 0);
}
