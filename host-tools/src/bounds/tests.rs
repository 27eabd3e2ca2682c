//! Sampling soundness of whole-network bounds on random small networks of every layer
//! kind, every method, whole networks and sub-network ranges, with random spec matrices.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::model::{Conv2d, Dense, Layer, Pool2d};

const METHODS: [Method; 4] = [
    Method::Ibp,
    Method::CrownPure,
    Method::Crown,
    Method::AlphaCrown,
];

fn activation(kind: u8) -> Layer {
    match kind % 5 {
        0 => Layer::Relu,
        1 => Layer::LeakyRelu { alpha: 0.1 },
        2 => Layer::Sigmoid,
        3 => Layer::Tanh,
        _ => Layer::Gelu,
    }
}

fn dense(rng: &mut ChaCha8Rng, in_dim: usize, out_dim: usize) -> Layer {
    let scale = 1.5 / (in_dim as f64).sqrt();
    let weight = (0..in_dim * out_dim)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    let bias = (0..out_dim).map(|_| rng.random_range(-0.5..0.5)).collect();
    Layer::Dense(Dense::new(in_dim, out_dim, weight, bias).expect("sizes"))
}

/// A random network: either conv (conv, act, pool, flatten, dense, act, dense) or an MLP
/// with three hidden layers; activations chosen by `acts`.
fn random_network(seed: u64, conv: bool, max_pool: bool, acts: [u8; 3]) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if conv {
        let (c, h, w) = (2, 6, 6);
        let conv = Conv2d {
            in_channels: c,
            out_channels: 3,
            in_h: h,
            in_w: w,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
            weight: (0..3 * c * 9)
                .map(|_| rng.random_range(-0.5..0.5))
                .collect(),
            bias: (0..3).map(|_| rng.random_range(-0.2..0.2)).collect(),
        };
        let pool = Pool2d {
            channels: 3,
            in_h: 6,
            in_w: 6,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
        };
        let pool = if max_pool {
            Layer::MaxPool2d(pool)
        } else {
            Layer::AvgPool2d(pool)
        };
        let layers = vec![
            Layer::Conv2d(conv),
            activation(acts[0]),
            pool,
            Layer::Flatten,
            dense(&mut rng, 27, 10),
            activation(acts[1]),
            dense(&mut rng, 10, 4),
        ];
        Network::new(vec![c, h, w], layers).expect("valid conv net")
    } else {
        let layers = vec![
            dense(&mut rng, 4, 12),
            activation(acts[0]),
            dense(&mut rng, 12, 12),
            activation(acts[1]),
            dense(&mut rng, 12, 8),
            activation(acts[2]),
            dense(&mut rng, 8, 3),
        ];
        Network::new(vec![4], layers).expect("valid mlp")
    }
}

/// Sample points of a box: corners of a random sub-face, the centre, uniform points.
fn samples(rng: &mut ChaCha8Rng, b: &BoxBounds, n: usize) -> Vec<Vec<f64>> {
    let mut pts = vec![
        b.lower
            .iter()
            .zip(&b.upper)
            .map(|(l, u)| 0.5 * (l + u))
            .collect::<Vec<_>>(),
    ];
    for i in 0..n {
        pts.push(
            b.lower
                .iter()
                .zip(&b.upper)
                .map(|(&l, &u)| {
                    if i % 4 == 0 {
                        if rng.random_bool(0.5) { l } else { u }
                    } else {
                        l + (u - l) * rng.random::<f64>()
                    }
                })
                .collect(),
        );
    }
    pts
}

fn check_network(net: &Network, seed: u64, radius: f64) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let n_in = net.input_dim();
    let centre: Vec<f64> = (0..n_in).map(|_| rng.random_range(-1.0..1.0)).collect();
    let input = BoxBounds::ball(&centre, radius);
    let points = samples(&mut rng, &input, 150);
    // Whole network: concrete bounds contain sampled outputs.
    for method in METHODS {
        let b =
            output_bounds(net, &input, method).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for x in &points {
            let y = net.forward(x);
            prop_assert!(
                b.contains(&y, 1e-9),
                "{method:?}: f({x:?}) = {y:?} outside {b:?}"
            );
        }
    }
    // A sub-network range with a random spec: linear bounds hold pointwise.
    let layers = net.layers.len();
    let from = rng.random_range(0..layers);
    let to = rng.random_range(from + 1..=layers);
    let shapes = net.shapes().expect("valid");
    let (sub_in, sub_out): (usize, usize) =
        (shapes[from].iter().product(), shapes[to].iter().product());
    // The sub-network's input box: the forward images of the sampled points, padded.
    let images: Vec<Vec<f64>> = points
        .iter()
        .map(|x| net.forward_range(x, 0, from))
        .collect();
    let sub_box = BoxBounds {
        lower: (0..sub_in)
            .map(|i| images.iter().map(|v| v[i]).fold(f64::INFINITY, f64::min) - 0.05)
            .collect(),
        upper: (0..sub_in)
            .map(|i| {
                images
                    .iter()
                    .map(|v| v[i])
                    .fold(f64::NEG_INFINITY, f64::max)
                    + 0.05
            })
            .collect(),
    };
    let rows = 3;
    let spec: Vec<f64> = (0..rows * sub_out)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let sub_points = samples(&mut rng, &sub_box, 150);
    for method in METHODS {
        let lb = linear_bounds(net, from, to, &sub_box, Some(&spec), rows, method)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(lb.layer_bounds.len(), to - from + 1);
        for h in &sub_points {
            let y = net.forward_range(h, from, to);
            for r in 0..rows {
                let v: f64 = spec[r * sub_out..(r + 1) * sub_out]
                    .iter()
                    .zip(&y)
                    .map(|(c, y)| c * y)
                    .sum();
                let tol = 1e-9 * (1.0 + v.abs());
                prop_assert!(
                    lb.lower[r] <= v + tol && v <= lb.upper[r] + tol,
                    "{method:?} row {r}: {v} outside [{}, {}]",
                    lb.lower[r],
                    lb.upper[r]
                );
                let (lo, hi) = (lb.lower_at(r, h), lb.upper_at(r, h));
                prop_assert!(
                    lo <= v + tol && v <= hi + tol,
                    "{method:?} layers {from}..{to} row {r}: {v} outside linear [{lo}, {hi}]"
                );
            }
            // Intermediate bounds contain the intermediate values too.
            for k in 0..=(to - from) {
                let t = net.forward_range(h, from, from + k);
                prop_assert!(
                    lb.layer_bounds[k].contains(&t, 1e-9),
                    "{method:?}: tensor {k} of {from}..{to} outside its bounds"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_mlps_are_bounded_soundly(seed in any::<u64>(), acts in any::<[u8; 3]>(), radius in 0.0..1.5f64) {
        check_network(&random_network(seed, false, false, acts), seed, radius)?;
    }

    #[test]
    fn random_conv_nets_are_bounded_soundly(seed in any::<u64>(), max_pool in any::<bool>(), acts in any::<[u8; 3]>(), radius in 0.0..0.5f64) {
        check_network(&random_network(seed, true, max_pool, acts), seed, radius)?;
    }
}

#[test]
fn tighter_methods_are_not_looser_on_an_mlp() {
    // Crown intersects with IBP, alpha-CROWN intersects with Crown: widths must not grow.
    let net = random_network(7, false, false, [0, 0, 0]);
    let input = BoxBounds::ball(&[0.1, -0.2, 0.3, 0.0], 0.5);
    let ibp = output_bounds(&net, &input, Method::Ibp).unwrap();
    let crown = output_bounds(&net, &input, Method::Crown).unwrap();
    let alpha = output_bounds(&net, &input, Method::AlphaCrown).unwrap();
    for i in 0..3 {
        assert!(crown.upper[i] - crown.lower[i] <= ibp.upper[i] - ibp.lower[i] + 1e-12);
        assert!(alpha.upper[i] - alpha.lower[i] <= crown.upper[i] - crown.lower[i] + 1e-12);
    }
}

#[test]
fn point_boxes_give_the_forward_value() {
    let net = random_network(3, false, false, [0, 1, 0]);
    let x = [0.3, -0.7, 0.2, 0.9];
    let y = net.forward(&x);
    for method in [Method::Ibp, Method::CrownPure, Method::Crown] {
        let b = output_bounds(&net, &BoxBounds::point(&x), method).unwrap();
        for i in 0..y.len() {
            assert!(
                (b.lower[i] - y[i]).abs() < 1e-6 && (b.upper[i] - y[i]).abs() < 1e-6,
                "{method:?}: {b:?} vs {y:?}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let net = random_network(1, false, false, [0, 0, 0]);
    let ok = BoxBounds::ball(&[0.0; 4], 0.1);
    let short = BoxBounds::ball(&[0.0; 3], 0.1);
    assert!(matches!(
        output_bounds(&net, &short, Method::Crown),
        Err(BoundsError::InputLength { expected: 4, .. })
    ));
    let mut inverted = ok.clone();
    inverted.lower[2] = 1.0;
    assert!(matches!(
        output_bounds(&net, &inverted, Method::Crown),
        Err(BoundsError::EmptyBox { index: 2, .. })
    ));
    let mut nan = ok.clone();
    nan.upper[1] = f64::NAN;
    assert!(matches!(
        output_bounds(&net, &nan, Method::Ibp),
        Err(BoundsError::NotFinite { index: 1, .. })
    ));
    assert!(matches!(
        linear_bounds(&net, 3, 2, &ok, None, 0, Method::Crown),
        Err(BoundsError::LayerRange { .. })
    ));
    assert!(matches!(
        linear_bounds(&net, 0, 7, &ok, Some(&[1.0; 5]), 2, Method::Crown),
        Err(BoundsError::Spec(_))
    ));
    assert!(matches!(
        linear_bounds(&net, 0, 9, &ok, None, 0, Method::Crown),
        Err(BoundsError::LayerRange { .. })
    ));
}

#[test]
fn bound_ops_forward_agrees_with_the_model() {
    for (seed, conv) in [(5, false), (6, true)] {
        let net = random_network(seed, conv, seed % 2 == 0, [4, 2, 1]);
        let shapes = net.shapes().unwrap();
        let ops = ops::build(&net.layers, &shapes, 0).unwrap();
        let x: Vec<f64> = (0..net.input_dim())
            .map(|i| (i as f64 * 0.7).sin())
            .collect();
        let y = ops.iter().fold(x.clone(), |v, op| {
            assert_eq!(v.len(), op.input_dim(), "{}", op.kind());
            op.forward(&v)
        });
        assert_eq!(y, net.forward(&x));
    }
}
