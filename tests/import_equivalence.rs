//! The imported host IR (f64) computes what tract computes on the ONNX file (f32), on
//! every real network in ../shared/data, and the `.nnet` copies of ACAS Xu agree with
//! their ONNX files.
//!
//! Tolerance against tract: |host - tract| <= 1e-5 * (1 + |host|) on 1000 seeded random
//! inputs per network.

use std::path::Path;

use prorepair_host::import::{self, nnet, onnx::TractModel};
use prorepair_host::spec::Property;
use prorepair_host::testing::{acasxu_indices, acasxu_nnet, acasxu_onnx};
use prorepair_host::{Layer, Network, require_data};

const SAMPLES: usize = 1000;

/// SplitMix64: a tiny seeded generator, enough for test inputs.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// Largest `|host - tract| / (1 + |host|)` over the inputs; fails above `tolerance`.
fn check_against_tract(path: &Path, net: &Network, inputs: &[Vec<f64>], tolerance: f64) -> f64 {
    let tract = TractModel::load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tract.input_len(), net.input_dim(), "{}", path.display());
    let mut worst: f64 = 0.0;
    for x in inputs {
        let host = net.forward(x);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let reference = tract.run(&x32).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            host.len(),
            reference.len(),
            "{}: output length",
            path.display()
        );
        for (h, t) in host.iter().zip(&reference) {
            let err = (h - f64::from(*t)).abs() / (1.0 + h.abs());
            assert!(
                err <= tolerance,
                "{}: host {h} vs tract {t} on input {x:?}",
                path.display()
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// The union of the ACAS Xu property boxes (properties 1-10): half the inputs from
/// them, half from the normalised domain [-0.5, 0.5]^5.
fn acasxu_inputs(rng: &mut Rng) -> Option<Vec<Vec<f64>>> {
    let mut boxes = Vec::new();
    for p in 1..=10 {
        let path = prorepair_host::testing::data_path(&format!("acasxu/vnnlib/prop_{p}.vnnlib"))?;
        let prop = Property::from_vnnlib(&path).unwrap_or_else(|e| panic!("{e}"));
        boxes.extend(prop.cases.into_iter().map(|c| c.input));
    }
    let inputs = (0..SAMPLES)
        .map(|i| {
            if i % 2 == 0 {
                let b = &boxes[i / 2 % boxes.len()];
                (0..5)
                    .map(|k| rng.uniform(b.lower[k], b.upper[k]))
                    .collect()
            } else {
                (0..5).map(|_| rng.uniform(-0.5, 0.5)).collect()
            }
        })
        .collect();
    Some(inputs)
}

#[test]
fn acasxu_onnx_import_matches_tract_on_all_45_networks() {
    require_data!("acasxu/onnx");
    let mut rng = Rng(0xACA5);
    let Some(inputs) = acasxu_inputs(&mut rng) else {
        return;
    };
    let mut worst: f64 = 0.0;
    for (a, b) in acasxu_indices() {
        let path =
            prorepair_host::testing::data_path(&acasxu_onnx(a, b)).expect("data dir present");
        let net = import::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Sub(zeros) and Flatten vanish: 7 dense layers with ReLU between them.
        assert_eq!(net.input_shape, vec![5], "N{a},{b}");
        assert_eq!(net.layers.len(), 13, "N{a},{b}: {net}");
        assert!(matches!(net.layers.last(), Some(Layer::Dense(d)) if d.out_dim == 5));
        worst = worst.max(check_against_tract(&path, &net, &inputs, 1e-5));
    }
    eprintln!("ACAS Xu ONNX: worst relative difference host vs tract {worst:.2e}");
}

#[test]
fn acasxu_nnet_matches_onnx_on_all_45_networks() {
    require_data!("acasxu/nnet");
    let mut rng = Rng(0x22E7);
    let Some(inputs) = acasxu_inputs(&mut rng) else {
        return;
    };
    let mut worst: f64 = 0.0;
    for (a, b) in acasxu_indices() {
        let onnx_path =
            prorepair_host::testing::data_path(&acasxu_onnx(a, b)).expect("data dir present");
        let nnet_path =
            prorepair_host::testing::data_path(&acasxu_nnet(a, b)).expect("data dir present");
        let from_onnx = import::load(&onnx_path).unwrap_or_else(|e| panic!("{e}"));
        let (from_nnet, norm) = nnet::load(&nnet_path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_nnet.input_shape, from_onnx.input_shape);
        assert_eq!(from_nnet.layers.len(), from_onnx.layers.len());
        assert_eq!(norm.output_range, 373.94992, "N{a},{b}");
        assert_eq!(norm.input_mean, vec![19791.091, 0.0, 0.0, 650.0, 600.0]);
        for x in &inputs {
            for (p, q) in from_nnet.forward(x).iter().zip(from_onnx.forward(x)) {
                let diff = (p - q).abs();
                // The .nnet text keeps 6 significant digits of each weight.
                assert!(
                    diff <= 1e-5 * (1.0 + q.abs()),
                    "N{a},{b}: nnet {p} vs onnx {q} on {x:?}"
                );
                worst = worst.max(diff);
            }
        }
    }
    eprintln!("ACAS Xu .nnet vs ONNX: worst absolute difference {worst:.2e}");
}

#[test]
fn mnist_networks_match_tract() {
    let dir = require_data!("mnist/nets");
    let mut rng = Rng(0x3A15);
    let inputs: Vec<Vec<f64>> = (0..SAMPLES)
        .map(|_| (0..784).map(|_| rng.next_f64()).collect())
        .collect();
    // (file, IR input shape, last layer kind, an activation it must contain)
    let nets = [
        ("mnist_relu_3_100.onnx", vec![784], "ReLU", "ReLU"),
        ("mnist_relu_9_100.onnx", vec![784], "ReLU", "ReLU"),
        ("mnist_relu_9_200.onnx", vec![1, 28, 28], "ReLU", "ReLU"),
        (
            "ffnnSIGMOID__Point_6x200.onnx",
            vec![1, 28, 28],
            "Dense",
            "Sigmoid",
        ),
        ("mnist-net_256x2.onnx", vec![784], "Dense", "ReLU"),
        ("mnist-net_256x4.onnx", vec![784], "Dense", "ReLU"),
        ("mnist-net_256x6.onnx", vec![784], "Dense", "ReLU"),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("mnist/nets readable") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "onnx") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            assert!(
                nets.iter().any(|n| n.0 == name),
                "new network {name}: add it to this test"
            );
        }
    }
    for (file, shape, last, activation) in nets {
        // tract evaluates sigmoid in f32 with a rational approximation (~1e-6 per
        // neuron), which six sigmoid layers compound to ~1e-5; the host is exact f64.
        let tolerance = if activation == "Sigmoid" { 1e-4 } else { 1e-5 };
        let path = dir.join(file);
        let net = import::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(net.input_shape, shape, "{file}: {net}");
        assert_eq!(
            net.layers.last().map(Layer::kind),
            Some(last),
            "{file}: {net}"
        );
        assert!(
            net.layers.iter().any(|l| l.kind() == activation),
            "{file}: {net}"
        );
        assert_eq!(net.output_dim(), 10);
        let worst = check_against_tract(&path, &net, &inputs, tolerance);
        eprintln!("{file}: {net}\n  worst relative difference host vs tract {worst:.2e}");
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn vnncomp_test_networks_match_tract() {
    let dir = require_data!("vnncomp-test");
    let mut rng = Rng(0x7E57);
    for (file, inputs) in [
        ("test_nano.onnx", 1),
        ("test_tiny.onnx", 1),
        ("test_small.onnx", 1),
        ("test_sat.onnx", 5),
        ("test_unsat.onnx", 5),
    ] {
        let path = dir.join(file);
        let net = import::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(net.input_shape, vec![inputs], "{file}: {net}");
        let samples: Vec<Vec<f64>> = (0..SAMPLES)
            .map(|_| (0..inputs).map(|_| rng.uniform(-1.0, 1.0)).collect())
            .collect();
        let worst = check_against_tract(&path, &net, &samples, 1e-5);
        eprintln!("{file}: {net}; worst relative difference {worst:.2e}");
    }
}
