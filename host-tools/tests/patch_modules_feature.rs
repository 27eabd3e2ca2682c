//! Patch modules at a feature layer (issue 6, `--feature-layer K`) on real data:
//! mnist_relu_3_100, local robustness at r = 0.05 around two test images where PGD finds
//! an adversarial example, repaired with modules reading the last hidden ReLU layer
//! (K = 2, the second of its three ReLU layers; the third follows the output layer:
//! 100 -> 8 -> 10). Every repair is proven; the kind-2 patch records the layer;
//! the device core, the host evaluation, tract on the exported ONNX graph and the
//! piecewise importer agree; `verify` says "holds" on the exported graph; outside the
//! boxes the outputs are the base's, bit for bit.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use prorepair_host::import::{self, Model};
use prorepair_host::repair::patchmodules::{self, ModuleOptions};
use prorepair_host::verify::falsify::{self, CandleNet};
use prorepair_host::verify::{self, Case, Conj, Verdict, piecewise};
use prorepair_host::{patch, require_data, tasks};

fn argmax(y: &[f64]) -> usize {
    (0..y.len())
        .max_by(|&a, &b| y[a].total_cmp(&y[b]))
        .unwrap_or(0)
}

/// Label `l0` must stay on `B(x, r)` clipped to [0, 1]: one unsafe conjunction per other
/// label.
fn robustness_case(x: &[f64], l0: usize, r: f64) -> Case {
    Case {
        lower: x.iter().map(|v| (v - r).max(0.0)).collect(),
        upper: x.iter().map(|v| (v + r).min(1.0)).collect(),
        unsafe_set: (0..10)
            .filter(|&l| l != l0)
            .map(|l| {
                let mut row = vec![0.0; 10];
                row[l0] = 1.0;
                row[l] = -1.0;
                Conj {
                    rows: vec![row],
                    rhs: vec![0.0],
                }
            })
            .collect(),
    }
}

#[test]
fn feature_layer_modules_on_mnist_are_proven_and_agree_everywhere() {
    let onnx = require_data!("mnist/nets/mnist_relu_3_100.onnx");
    let mnist = require_data!("mnist");
    let net = import::load(&onnx).expect("imports");
    let test = tasks::mnist::test_set(&mnist).expect("reads the test set");
    let cnet = CandleNet::new(&net).expect("candle");
    // Two correctly classified images with a PGD adversarial example at r = 0.05.
    let mut cases = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (i, (x, &l0)) in test.images.iter().zip(&test.labels).enumerate() {
        if cases.len() == 2 {
            break;
        }
        let y = net.forward(x);
        if argmax(&y) != l0 {
            continue;
        }
        let c = robustness_case(x, l0, 0.05);
        let starts: Vec<Vec<f64>> = (0..5)
            .map(|_| {
                c.lower
                    .iter()
                    .zip(&c.upper)
                    .map(|(&l, &u)| if u > l { rng.random_range(l..=u) } else { l })
                    .collect()
            })
            .collect();
        let found = c.unsafe_set.iter().any(|conj| {
            falsify::pgd(&cnet, &net, &c.lower, &c.upper, conj, &starts[..1], 30)
                .is_ok_and(|a| a.found.is_some())
        });
        if found {
            cases.push((format!("img{i}"), c));
        }
    }
    assert_eq!(cases.len(), 2, "PGD finds adversarial examples");

    let options = ModuleOptions {
        feature_layer: 2,
        auto_learning_rate: true,
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let r = patchmodules::repair_modules(&net, &cases, &options).expect("repairs");
    assert!(r.all_hold(), "{:?}", r.outcomes);
    for (_, m) in &r.modules.entries {
        assert_eq!(m.feature_layer, 2);
        assert_eq!(
            m.parameter_count(),
            100 * 8 + 8 + 8 * 10 + 10,
            "898 parameters"
        );
    }

    // The kind-2 patch says what each module reads, and reads back the same.
    let regions: Vec<(Vec<f64>, Vec<f64>)> = r
        .outcomes
        .iter()
        .flat_map(|o| o.partition.iter().cloned())
        .collect();
    let emitted = patch::modules::emit(&net, &r.modules, 1, &regions).expect("emits");
    let info = patch::modules::inspect(&emitted.bytes).expect("inspects");
    assert!(info.modules.iter().all(|m| m.input_layer == 2));
    assert!(info.modules.iter().all(|m| m.widths == [100, 8, 10]));
    assert_eq!(
        patch::modules::read(&net, &emitted.bytes).expect("reads"),
        r.modules
    );

    // Inputs: inside each box (corners, centre, random) and outside every box.
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    for (_, c) in &cases {
        inputs.push(c.lower.iter().map(|&v| v as f32).collect());
        inputs.push(c.upper.iter().map(|&v| v as f32).collect());
        for _ in 0..4 {
            inputs.push(
                c.lower
                    .iter()
                    .zip(&c.upper)
                    .map(|(&l, &u)| rng.random_range(l..=u) as f32)
                    .collect(),
            );
        }
    }
    let outside: Vec<Vec<f32>> = test.images[100..104]
        .iter()
        .map(|x| x.iter().map(|&v| v as f32).collect())
        .collect();
    inputs.extend(outside.iter().cloned());
    let device = patch::modules::eval_device(&net, &emitted.bytes, &inputs).expect("device");
    let dir = std::env::temp_dir().join(format!("prorepair-pm-feature-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tract =
        patch::modules::load_tract(&onnx, &emitted.bytes, "feature.patch").expect("tract loads");
    for (x, yd) in inputs.iter().zip(&device) {
        let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let host = r.modules.eval(&net, &xf);
        let yt = tract.run(x).expect("tract runs");
        for ((h, d), t) in host.iter().zip(yd).zip(&yt) {
            let tol = 1e-4 * (1.0 + h.abs());
            assert!(
                (h - f64::from(*d)).abs() < tol,
                "host {host:?} device {yd:?}"
            );
            assert!((d - t).abs() as f64 <= tol, "device {yd:?} tract {yt:?}");
        }
    }
    // Outside the boxes: the device output is the base model's, bit for bit.
    let n_in = inputs.len() - outside.len();
    let blob = prorepair_host::compile::compile(&net).expect("compiles");
    let aligned = prorepair_host::compile::AlignedBlob::new(&blob);
    let model = aligned.model().expect("loads");
    let mut arena = vec![0f32; model.required_arena_len()];
    for (x, yd) in outside.iter().zip(&device[n_in..]) {
        let mut y = vec![0f32; 10];
        model.evaluate(x, &mut arena, &mut y).unwrap();
        assert_eq!(
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            yd.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    // `apply --onnx-out`'s graph is read back as base + feature modules, and holds.
    let path = dir.join("repaired.onnx");
    std::fs::write(
        &path,
        patch::modules::to_onnx(&net, &r.modules, None).unwrap(),
    )
    .unwrap();
    let pw = match import::load_model(&path).expect("reads the exported graph") {
        Model::Piecewise(p) => p,
        Model::Network(_) => panic!("read as a straight-line network"),
    };
    assert_eq!(pw.modules, r.modules, "boxes, weights and feature layers");
    let opts = verify::Options {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let case = &cases[0].1;
    let report = piecewise::verify_piecewise(&pw, std::slice::from_ref(case), &opts, 64);
    assert_eq!(report.report.verdict, Verdict::Holds, "{report:?}");
    // The base alone is violated there (the repair was needed).
    let before = verify::verify_cases(&net, std::slice::from_ref(case), &opts);
    assert!(
        matches!(before.verdict, Verdict::Violated { .. }),
        "{:?}",
        before.verdict
    );
    let _ = std::fs::remove_dir_all(dir);
}
