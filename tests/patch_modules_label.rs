//! Label-guided patch modules on real data: mnist_relu_3_100, local robustness at
//! r = 0.01 around three misclassified test images (violated at the centre). The repair
//! (one module per label, firing on the base's argmax) must be proven; the images are
//! then classified correctly by the host evaluation and by the device core running the
//! kind-2 patch; the exported ONNX graph (label rule by Gather and
//! comparisons, Where) reads back as the same modules and `verify` on it says holds.

use std::time::Duration;

use prorepair_host::repair::patchmodules::{self, LabelKind, ModuleOptions};
use prorepair_host::tasks::mnist;
use prorepair_host::verify::{self, Case, Conj};
use prorepair_host::{import, patch, require_data};

fn argmax(y: &[f64]) -> usize {
    (0..y.len()).fold(0, |b, i| if y[i] > y[b] { i } else { b })
}

fn robustness_case(x: &[f64], l0: usize, r: f64) -> Case {
    let unsafe_set = (0..10)
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
        .collect();
    Case {
        lower: x.iter().map(|v| (v - r).max(0.0)).collect(),
        upper: x.iter().map(|v| (v + r).min(1.0)).collect(),
        unsafe_set,
    }
}

#[test]
fn mnist_label_modules_repair_three_misclassified_boxes() {
    let net_path = require_data!("mnist/nets/mnist_relu_3_100.onnx");
    let mnist_dir = require_data!("mnist");
    let net = import::load(&net_path).expect("imports");
    let test = mnist::test_set(&mnist_dir).expect("reads the test set");
    // The first three misclassified test images with pairwise different wrong labels: on
    // a small box around each, the base predicts the wrong label (the property is
    // violated at the centre), so the module of that label must lift the true one.
    let mut found: Vec<(String, Case, Vec<f64>, usize)> = Vec::new();
    let mut wrong_labels = Vec::new();
    for (i, (x, &l0)) in test.images.iter().zip(&test.labels).enumerate() {
        if found.len() == 3 {
            break;
        }
        let w = argmax(&net.forward(x));
        if w == l0 || wrong_labels.contains(&w) {
            continue;
        }
        wrong_labels.push(w);
        found.push((
            format!("img{i}"),
            robustness_case(x, l0, 0.01),
            x.clone(),
            l0,
        ));
    }
    assert_eq!(found.len(), 3, "three misclassified test images");
    let named: Vec<(String, Case)> = found
        .iter()
        .map(|(n, c, _, _)| (n.clone(), c.clone()))
        .collect();
    let options = ModuleOptions {
        auto_learning_rate: true,
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let rep = patchmodules::repair_modules_label(&net, &named, &options, LabelKind::Label)
        .expect("repairs");
    assert!(rep.all_hold(), "{:?}", rep.outcomes);
    assert!(
        rep.modules
            .entries
            .iter()
            .all(|(ind, _)| matches!(ind, patchmodules::Indicator::Label(_)))
    );
    // The images are fixed, on the host and on the device core.
    let regions: Vec<_> = rep
        .outcomes
        .iter()
        .flat_map(|o| o.partition.iter().cloned())
        .collect();
    let emitted = patch::modules::emit(&net, &rep.modules, 1, &regions).expect("emits");
    let inputs: Vec<Vec<f32>> = found
        .iter()
        .map(|(_, _, adv, _)| adv.iter().map(|&v| v as f32).collect())
        .collect();
    let device = patch::modules::eval_device(&net, &emitted.bytes, &inputs).expect("core");
    for ((_, _, adv, l0), yd) in found.iter().zip(&device) {
        assert_eq!(argmax(&rep.modules.eval(&net, adv)), *l0);
        let yd: Vec<f64> = yd.iter().map(|&v| v as f64).collect();
        assert_eq!(argmax(&yd), *l0);
    }
    // The exported ONNX reads back as the same modules, and `verify` on it holds.
    let onnx = patch::modules::to_onnx(&net, &rep.modules, None).expect("exports");
    let path =
        std::env::temp_dir().join(format!("prorepair-label-mnist-{}.onnx", std::process::id()));
    std::fs::write(&path, &onnx).unwrap();
    let pw = import::piecewise::load(&path).expect("reads the label graph");
    let _ = std::fs::remove_file(&path);
    assert_eq!(pw.modules, rep.modules);
    let cases: Vec<Case> = named.iter().map(|(_, c)| c.clone()).collect();
    let r = verify::piecewise::verify_piecewise(
        &pw,
        &cases,
        &verify::Options {
            timeout: Duration::from_secs(300),
            ..Default::default()
        },
        verify::piecewise::MAX_CELLS,
    );
    assert_eq!(
        r.report.verdict,
        verify::Verdict::Holds,
        "{:?}",
        r.report.verdict
    );
}
