//! `prorepair-host demo` end to end (no files needed): the planted defect is found with a
//! confirmed counterexample, repaired, proven, shipped as a patch that the device core
//! applies, and the patched device model no longer advises clear-of-conflict there.

use std::process::Command;

#[test]
fn demo_finds_repairs_proves_and_patches() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let patch = dir.join("demo.patch");
    let o = Command::new(env!("CARGO_BIN_EXE_prorepair-host"))
        .args(["demo", "--json", "-", "--out", patch.to_str().unwrap()])
        .output()
        .expect("run prorepair-host demo");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "demo failed ({:?}): {stderr}",
        o.status.code()
    );
    // The JSON summary follows the human-readable story on stdout.
    let text = String::from_utf8_lossy(&o.stdout);
    let start = text.find("\n{").expect("a JSON summary") + 1;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).expect("valid JSON");
    assert_eq!(v["status"], "holds");
    assert_eq!(v["verify_before"], "violated");
    assert_eq!(v["verify_after"], "holds");
    assert_eq!(v["repair"]["verified"], true);
    // The counterexample: in the property box, clear-of-conflict (score 0) lowest.
    let y: Vec<f64> = serde_json::from_value(v["counterexample"]["output"].clone()).unwrap();
    assert!(y[1..].iter().all(|&s| y[0] <= s), "{y:?}");
    let after: Vec<f64> =
        serde_json::from_value(v["device_outputs_on_counterexample"]["after"].clone()).unwrap();
    assert!(
        after[1..].iter().any(|&s| s < after[0]),
        "still COC: {after:?}"
    );
    assert!(v["fidelity"]["advisory_agreement"].as_f64().unwrap() >= 0.9);
    assert!(v["patch"]["bytes"].as_u64().unwrap() > 0);
    assert!(v["corrupted_patch_error"].as_str().unwrap().contains("CRC"));
    assert!(
        v["replayed_patch_error"]
            .as_str()
            .unwrap()
            .contains("stale")
    );
    // The patch file written is a valid patch bound to the demo's base blob.
    let bytes = std::fs::read(&patch).unwrap();
    assert_eq!(bytes.len() as u64, v["patch"]["bytes"].as_u64().unwrap());
    let info = prorepair_host::patch::inspect(&bytes).unwrap();
    assert_eq!(info.sequence, 1);
    assert_eq!(info.regions, 1);
}
