//! End-to-end tests of `prorepair-host verify` and `prorepair-host bounds`: exit codes
//! 0/10/20/2, the JSON report fields, and bad input (named file, exit 2, no partial
//! output file).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prorepair_host::require_data;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prorepair-host"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn prorepair-host")
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "prorepair-cli-verify-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json report")).expect("valid json")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn verify_holds_exits_0_with_json_report() {
    let model = require_data!("vnncomp-test/test_tiny.onnx");
    let spec = require_data!("vnncomp-test/test_tiny.vnnlib");
    let dir = scratch("holds");
    let json = dir.join("report.json");
    let o = run(&[
        "verify",
        s(&model),
        s(&spec),
        "--timeout",
        "30",
        "--json",
        s(&json),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = read_json(&json);
    assert_eq!(v["status"], "holds");
    assert!(v["time_s"].as_f64().is_some_and(|t| t >= 0.0));
    assert!(v.get("counterexample").is_none());
    assert_eq!(v["method"], "complete");
}

#[test]
fn verify_violated_exits_10_with_checked_counterexample() {
    let model_path = require_data!("acasxu/nnet/ACASXU_run2a_1_2_batch_2000.nnet");
    let spec_path = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let dir = scratch("violated");
    let json = dir.join("report.json");
    let o = run(&[
        "verify",
        s(&model_path),
        s(&spec_path),
        "--timeout",
        "60",
        "--json",
        s(&json),
    ]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    let v = read_json(&json);
    assert_eq!(v["status"], "violated");
    let input: Vec<f64> = serde_json::from_value(v["counterexample"]["input"].clone()).unwrap();
    let output: Vec<f64> = serde_json::from_value(v["counterexample"]["output"].clone()).unwrap();
    // The counterexample lies in the box and the forward pass gives the reported output,
    // in which COC (y0) is maximal: the unsafe set of property 2.
    let net = prorepair_host::import::load(&model_path).unwrap();
    let prop = prorepair_host::spec::Property::from_vnnlib(&spec_path).unwrap();
    let bx = &prop.cases[0].input;
    assert!(
        input
            .iter()
            .enumerate()
            .all(|(i, x)| bx.lower[i] <= *x && *x <= bx.upper[i])
    );
    assert_eq!(net.forward(&input), output);
    assert!((1..5).all(|j| output[j] <= output[0]), "{output:?}");
}

#[test]
fn verify_unknown_exits_20() {
    // IBP alone cannot prove ACAS Xu property 1 on its whole box: incomplete -> unknown.
    let model = require_data!("acasxu/nnet/ACASXU_run2a_1_1_batch_2000.nnet");
    let spec = require_data!("acasxu/vnnlib/prop_1.vnnlib");
    let dir = scratch("unknown");
    let json = dir.join("report.json");
    let o = run(&[
        "verify",
        s(&model),
        s(&spec),
        "--method",
        "ibp",
        "--timeout",
        "20",
        "--json",
        s(&json),
    ]);
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    let v = read_json(&json);
    assert_eq!(v["status"], "unknown");
    assert!(v["reason"].as_str().is_some());
}

#[test]
fn verify_bad_input_exits_2_naming_the_file_without_json() {
    let model = require_data!("vnncomp-test/test_tiny.onnx");
    let spec = require_data!("vnncomp-test/test_tiny.vnnlib");
    let dir = scratch("bad");
    let json = dir.join("report.json");
    let missing = dir.join("missing.onnx");
    let junk_onnx = dir.join("junk.onnx");
    std::fs::write(&junk_onnx, b"\x08\x07garbage that is not a protobuf model").unwrap();
    let bad_vnnlib = dir.join("bad.vnnlib");
    std::fs::write(&bad_vnnlib, "(declare-const X_0 Real)\n(assert (<= X_0 ").unwrap();
    let wrong_dims = require_data!("acasxu/vnnlib/prop_1.vnnlib");
    let mut cases: Vec<(Vec<String>, PathBuf)> = vec![
        (
            vec!["verify".into(), s(&missing).into(), s(&spec).into()],
            missing.clone(),
        ),
        (
            vec!["verify".into(), s(&junk_onnx).into(), s(&spec).into()],
            junk_onnx.clone(),
        ),
        (
            vec!["verify".into(), s(&model).into(), s(&bad_vnnlib).into()],
            bad_vnnlib.clone(),
        ),
        (
            vec!["verify".into(), s(&model).into(), s(&wrong_dims).into()],
            wrong_dims.clone(),
        ),
    ];
    // The import engineer's malformed corpus, when present.
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/malformed");
    if let Ok(entries) = std::fs::read_dir(&corpus) {
        for e in entries.flatten() {
            let p = e.path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("onnx") | Some("nnet") => {
                    cases.push((vec!["verify".into(), s(&p).into(), s(&spec).into()], p))
                }
                Some("vnnlib") => {
                    cases.push((vec!["verify".into(), s(&model).into(), s(&p).into()], p))
                }
                _ => {}
            }
        }
    }
    for (args, named) in cases {
        let mut args = args;
        args.extend([
            "--json".into(),
            s(&json).into(),
            "--timeout".into(),
            "5".into(),
        ]);
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let name = named.file_name().unwrap().to_str().unwrap();
        assert!(
            stderr(&o).contains(name),
            "{args:?}: message does not name {name}: {}",
            stderr(&o)
        );
        assert!(!json.exists(), "{args:?} left a JSON file");
        assert!(
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().contains(".tmp"))
        );
    }
    // Usage errors: bad method and non-positive timeout.
    for extra in [["--method", "magic"], ["--timeout", "-1"]] {
        let o = run(&["verify", s(&model), s(&spec), extra[0], extra[1]]);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
    }
}

#[test]
fn bounds_over_a_box_csv_contain_sampled_outputs() {
    let model_path = require_data!("acasxu/nnet/ACASXU_run2a_1_1_batch_2000.nnet");
    let dir = scratch("bounds-box");
    let box_csv = dir.join("box.csv");
    let (lo, hi) = ([-0.3, -0.1, -0.1, 0.3, 0.3], [-0.29, 0.1, 0.1, 0.35, 0.35]);
    let row = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    std::fs::write(&box_csv, format!("{}\n{}\n", row(&lo), row(&hi))).unwrap();
    let net = prorepair_host::import::load(&model_path).unwrap();
    for method in ["ibp", "crown", "alpha-crown"] {
        let json = dir.join(format!("{method}.json"));
        let o = run(&[
            "bounds",
            s(&model_path),
            "--box",
            s(&box_csv),
            "--method",
            method,
            "--json",
            s(&json),
        ]);
        assert_eq!(o.status.code(), Some(0), "{method}: {}", stderr(&o));
        let v = read_json(&json);
        let lower: Vec<f64> = serde_json::from_value(v["lower"].clone()).unwrap();
        let upper: Vec<f64> = serde_json::from_value(v["upper"].clone()).unwrap();
        assert_eq!(lower.len(), 5);
        assert!(v["time_s"].as_f64().is_some());
        for k in 0..200 {
            let x: Vec<f64> = (0..5)
                .map(|i| lo[i] + (hi[i] - lo[i]) * (((k * 7 + i * 13) % 17) as f64 / 16.0))
                .collect();
            let y = net.forward(&x);
            for j in 0..5 {
                assert!(
                    lower[j] <= y[j] && y[j] <= upper[j],
                    "{method}: y{j} = {} outside [{}, {}]",
                    y[j],
                    lower[j],
                    upper[j]
                );
            }
        }
    }
}

#[test]
fn bounds_from_a_spec_writes_lower_and_upper() {
    let model = require_data!("acasxu/nnet/ACASXU_run2a_1_1_batch_2000.nnet");
    let spec = require_data!("acasxu/vnnlib/prop_3.vnnlib");
    let dir = scratch("bounds-spec");
    let json = dir.join("b.json");
    let o = run(&["bounds", s(&model), "--spec", s(&spec), "--json", s(&json)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = read_json(&json);
    let (l, u) = (
        v["lower"].as_array().unwrap(),
        v["upper"].as_array().unwrap(),
    );
    assert_eq!((l.len(), u.len()), (5, 5));
    assert!(
        l.iter()
            .zip(u)
            .all(|(a, b)| a.as_f64().unwrap() <= b.as_f64().unwrap())
    );
}

#[test]
fn bounds_bad_box_exits_2_naming_the_file() {
    let model = require_data!("acasxu/nnet/ACASXU_run2a_1_1_batch_2000.nnet");
    let dir = scratch("bounds-bad");
    let json = dir.join("b.json");
    for (name, text) in [
        ("short.csv", "0,0,0,0\n1,1,1,1\n"),
        ("inverted.csv", "0,0,0,0,1\n1,1,1,1,0\n"),
        ("one_row.csv", "0,0,0,0,0\n"),
        ("nan.csv", "0,0,x,0,0\n1,1,1,1,1\n"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let o = run(&["bounds", s(&model), "--box", s(&p), "--json", s(&json)]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(name), "{name}: {}", stderr(&o));
        assert!(!json.exists(), "{name} left a JSON file");
    }
    let missing = dir.join("nope.csv");
    let o = run(&["bounds", s(&model), "--box", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.csv"));
    // Neither --spec nor --box: usage error.
    assert_eq!(run(&["bounds", s(&model)]).status.code(), Some(2));
}
