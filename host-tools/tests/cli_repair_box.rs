//! `prorepair-host repair MODEL --spec BOX.vnnlib` on a local-robustness box: the CLI
//! takes the local-box path (`"method": "local-box"` in the report), exits 0 only with a
//! proof, and `verify` proves the property again on the written ONNX model.

mod common;

use common::{host, s, scratch, stderr};
use prorepair_host::require_data;
use prorepair_host::tasks::{adversarial, mnist};

/// A VNN-LIB file for a box case: input bounds, then the unsafe disjunction
/// `OR_j (Y_j >= Y_label)`.
fn vnnlib(case: &prorepair_host::verify::Case, label: usize, n_out: usize) -> String {
    let mut t = String::new();
    for i in 0..case.lower.len() {
        t += &format!("(declare-const X_{i} Real)\n");
    }
    for j in 0..n_out {
        t += &format!("(declare-const Y_{j} Real)\n");
    }
    for (i, (l, u)) in case.lower.iter().zip(&case.upper).enumerate() {
        t += &format!("(assert (<= X_{i} {u:?}))\n(assert (>= X_{i} {l:?}))\n");
    }
    t += "(assert (or\n";
    for j in (0..n_out).filter(|&j| j != label) {
        t += &format!("    (and (>= Y_{j} Y_{label}))\n");
    }
    t + "))\n"
}

#[test]
fn local_robustness_box_is_repaired_by_the_local_path_and_verifies_on_the_onnx() {
    let model = require_data!("mnist/nets/mnist_relu_3_100.onnx");
    let dir = require_data!("mnist");
    let net = prorepair_host::import::load(&model).unwrap();
    let train = mnist::read_csv_255(&dir.join("mnist_5k.csv.gz")).unwrap();
    let task = adversarial::adversarial_tasks(&net, &train, 16, 0.1, 1, 2024).remove(0);
    let work = scratch("cli_repair_box", "k16");
    let spec = work.join("box.vnnlib");
    std::fs::write(
        &spec,
        vnnlib(&task.property.cases[0], task.label, net.output_dim()),
    )
    .unwrap();
    let (report, onnx) = (work.join("report.json"), work.join("repaired.onnx"));
    let out = host(&[
        "repair",
        s(&model),
        "--spec",
        s(&spec),
        "--timeout",
        "60",
        "--report",
        s(&report),
        "--onnx-out",
        s(&onnx),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["status"], "holds");
    assert_eq!(r["method"], "local-box");
    assert_eq!(r["properties"][0]["status_before"], "violated");
    // The original model violates the property; the written one satisfies it.
    let before = host(&["verify", s(&model), s(&spec), "--timeout", "30"]);
    assert_eq!(before.status.code(), Some(10), "{}", stderr(&before));
    let after = host(&["verify", s(&onnx), s(&spec), "--timeout", "30"]);
    assert_eq!(after.status.code(), Some(0), "{}", stderr(&after));
}
