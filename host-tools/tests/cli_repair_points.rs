//! `repair --points`: a real point repair on mnist_relu_3_100 end to end (patch applied
//! by `eval`, i.e. by the device core path), and malformed point files.

use std::fmt::Write;

use prorepair_host::require_data;
use prorepair_host::tasks::{self, corrupt::Corruption, mnist};

mod common;
use common::{host, s, scratch, stderr};

fn row(x: &[f64]) -> String {
    let mut out = String::new();
    for (i, v) in x.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write!(out, "{v}").unwrap();
    }
    out
}

#[test]
fn repairs_points_and_the_patched_model_classifies_them() {
    let net_path = require_data!("mnist/nets/mnist_relu_3_100.onnx");
    let dir = require_data!("mnist");
    let net = prorepair_host::import::load(&net_path).unwrap();
    let test = mnist::test_set(&dir).unwrap();
    let task = tasks::corruption_task(&net, &test, Corruption::Brightness, 6, 7);
    assert_eq!(task.repair.len(), 6);
    let work = scratch("cli_repair_points", "ok");
    // Six misclassified brightened images, then four clean ones that already hold.
    let mut csv = String::from("# pixels/255..., label\n");
    let mut inputs = String::new();
    let mut labels = Vec::new();
    let clean = (0..4).map(|i| (test.images[i].clone(), test.labels[i]));
    for (x, l) in task
        .repair
        .iter()
        .map(|p| (p.x.clone(), p.label))
        .chain(clean)
    {
        writeln!(csv, "{},{l}", row(&x)).unwrap();
        writeln!(inputs, "{}", row(&x)).unwrap();
        labels.push(l);
    }
    let points = work.join("points.csv");
    std::fs::write(&points, csv).unwrap();
    let (patch, report) = (work.join("fix.patch"), work.join("report.json"));
    let o = host(&[
        "repair",
        s(&net_path),
        "--points",
        s(&points),
        "--out",
        s(&patch),
        "--report",
        s(&report),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["status"], "holds");
    assert_eq!(r["points"]["count"], 10);
    assert_eq!(r["points"]["holding_before"], 4);
    assert_eq!(r["points"]["holding_after"], 10);
    assert!(r["patch"]["bytes"].as_u64().unwrap() > 0);
    // The patched model, evaluated in f32 through the device path, classifies every point.
    let inputs_path = work.join("inputs.csv");
    std::fs::write(&inputs_path, inputs).unwrap();
    let o = host(&[
        "eval",
        s(&net_path),
        "--patch",
        s(&patch),
        "--inputs",
        s(&inputs_path),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<Vec<f64>> = out
        .lines()
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), labels.len());
    for (y, l) in rows.iter().zip(&labels) {
        assert_eq!(mnist::argmax(y), *l, "{y:?}");
    }
}

#[test]
fn malformed_point_files_exit_2_naming_file_and_line() {
    let net_path = require_data!("mnist/nets/mnist_relu_3_100.onnx");
    let work = scratch("cli_repair_points", "bad");
    let good = vec!["0"; 784].join(",");
    for (name, text, want) in [
        ("word.csv", format!("{good},1\n{good},x\n"), "line 2"),
        ("short.csv", "0.1,0.2,3\n".to_string(), "784 inputs"),
        ("label.csv", format!("{good},12\n"), "label 12"),
    ] {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        let o = host(&["repair", s(&net_path), "--points", s(&p)]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {e}");
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    let o = host(&[
        "repair",
        s(&net_path),
        "--points",
        s(&work.join("absent.csv")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("absent.csv"));
}
