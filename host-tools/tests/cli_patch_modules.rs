//! `repair --strategy patch-modules` and `apply` of a kind-2 patch end to end on ACAS Xu
//! N2,1, property 2: exit 0, a patch and an ONNX graph written, the report says holds;
//! `apply` rebuilds the same graph from the patch; a damaged patch is refused (exit 2,
//! file named).

mod common;
use common::{host, s, scratch, stderr};
use prorepair_host::{require_data, testing};

#[test]
fn repair_with_patch_modules_then_apply() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let dir = scratch("cli_patch_modules", "n21");
    let (patch, onnx, report, again) = (
        dir.join("p.prpt"),
        dir.join("repaired.onnx"),
        dir.join("report.json"),
        dir.join("applied.onnx"),
    );
    let out = host(&[
        "repair",
        s(&model),
        "--spec",
        s(&spec),
        "--strategy",
        "patch-modules",
        "--out",
        s(&patch),
        "--onnx-out",
        s(&onnx),
        "--report",
        s(&report),
        "--timeout",
        "120",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["status"], "holds");
    assert_eq!(r["strategy"], "patch-modules");
    assert_eq!(r["modules"], 1);
    assert_eq!(r["properties"][0]["status_before"], "violated");
    assert_eq!(r["patch"]["kind"], "patch modules");
    let bytes = std::fs::read(&patch).unwrap();
    assert_eq!(r["patch_size_bytes"], bytes.len());

    let out = host(&["apply", s(&model), s(&patch), "--onnx-out", s(&again)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&onnx).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let mut bad = bytes.clone();
    let last = bad.len() - 80;
    bad[last] ^= 0x40;
    let bad_path = dir.join("bad.prpt");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = host(&["apply", s(&model), s(&bad_path), "--onnx-out", s(&again)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.prpt"), "{}", stderr(&out));
}

#[test]
fn module_widths_the_device_format_cannot_hold_are_refused() {
    let model = require_data!(&testing::acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let dir = scratch("cli_patch_modules", "widths");
    let patch = dir.join("p.prpt");
    for widths in ["0", "8,0", "8,8,8,8"] {
        let out = host(&[
            "repair",
            s(&model),
            "--spec",
            s(&spec),
            "--strategy",
            "patch-modules",
            "--module-hidden",
            widths,
            "--out",
            s(&patch),
        ]);
        assert_eq!(out.status.code(), Some(2), "{widths}: {}", stderr(&out));
        assert!(stderr(&out).contains("hidden"), "{}", stderr(&out));
        assert!(!patch.exists(), "{widths}: a patch was written");
    }
}
