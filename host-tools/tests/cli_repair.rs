//! `prorepair-host repair` end to end: exit codes, no output file unless proven, and clear
//! errors (exit 2) on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use prorepair_host::{require_data, testing};

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prorepair-host"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prorepair-cli-repair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_spec_file_is_bad_input_naming_it() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let out = run(&[
        "repair".as_ref(),
        model.as_os_str(),
        "--spec".as_ref(),
        "/nonexistent/prop.vnnlib".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/prop.vnnlib"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_spec_at_all_is_a_usage_error() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let out = run(&["repair".as_ref(), model.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--spec"), "{}", stderr(&out));
}

#[test]
fn bad_split_layer_is_bad_input_naming_the_problem() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    for (value, needle) in [("99", "split"), ("0", "split"), ("middle", "middle")] {
        let out = run(&[
            "repair".as_ref(),
            model.as_os_str(),
            "--spec".as_ref(),
            spec.as_os_str(),
            "--split-layer".as_ref(),
            value.as_ref(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{value}: {}", stderr(&out));
        assert!(
            stderr(&out).to_lowercase().contains(needle),
            "{value}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn unknown_outcome_exits_20_and_writes_no_model() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let onnx = tmp("never.onnx");
    let report = tmp("never.json");
    // A budget far too small to repair anything.
    let out = run(&[
        "repair".as_ref(),
        model.as_os_str(),
        "--spec".as_ref(),
        spec.as_os_str(),
        "--timeout".as_ref(),
        "0.001".as_ref(),
        "--onnx-out".as_ref(),
        onnx.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(20), "{}", stderr(&out));
    assert!(
        !onnx.exists(),
        "no model may be written when the repair is not proven"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["status"], "unknown");
    assert_ne!(json["properties"][0]["status"], "holds");
}

#[test]
fn successful_repair_exits_0_and_writes_a_loadable_onnx() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let onnx = tmp("repaired.onnx");
    let report = tmp("repaired.json");
    let out = run(&[
        "repair".as_ref(),
        model.as_os_str(),
        "--spec".as_ref(),
        spec.as_os_str(),
        "--timeout".as_ref(),
        "120".as_ref(),
        "--onnx-out".as_ref(),
        onnx.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["status"], "holds");
    assert_eq!(json["properties"][0]["status"], "holds");
    assert_eq!(json["properties"][0]["status_before"], "violated");
    assert!(json["changed_parameters"].as_u64().unwrap() > 0);
    // The written model imports, keeps the 5 inputs and is proven by `verify` too.
    let net = prorepair_host::import::load(&onnx).expect("the repaired ONNX imports");
    assert_eq!(net.input_dim(), 5);
    let out = run(&[
        "verify".as_ref(),
        onnx.as_os_str(),
        spec.as_os_str(),
        "--timeout".as_ref(),
        "60".as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify on the repaired model: {}",
        stderr(&out)
    );
}

#[test]
fn sequence_zero_is_a_usage_error() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let patch = tmp("seq0.prpt");
    let out = run(&[
        "repair".as_ref(),
        model.as_os_str(),
        "--spec".as_ref(),
        spec.as_os_str(),
        "--out".as_ref(),
        patch.as_os_str(),
        "--sequence".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--sequence"), "{}", stderr(&out));
    assert!(!patch.exists());
}
