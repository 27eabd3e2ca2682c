//! Weight-delta patches end to end on a real network (ACAS Xu N2,1, ONNX): a patch
//! emitted by the library (`patch::emit`; the base network with its last hidden layer
//! and output layer changed, standing in for a repair, which `repair --out` writes the
//! same way), then `apply`, `compile --patch`, `eval --patch`, `inspect PATCH`, and the
//! tract adapter must all give the same repaired model; bad patches exit 2 naming the file.

use std::path::{Path, PathBuf};

use prorepair_host::compile::{AlignedBlob, compile};
use prorepair_host::import::onnx::TractModel;
use prorepair_host::model::{Layer, Network};
use prorepair_host::require_data;
use prorepair_host::testing::acasxu_onnx;

mod common;
use common::{host, s, stderr};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli_patch", name)
}

/// The base network with a deterministic change to its last two Dense layers.
fn modified(base: &Network) -> Network {
    let mut net = base.clone();
    let dense: Vec<usize> = (0..net.layers.len())
        .filter(|&i| matches!(net.layers[i], Layer::Dense(_)))
        .collect();
    for &i in &dense[dense.len() - 2..] {
        if let Layer::Dense(d) = &mut net.layers[i] {
            for (k, w) in d.weight.iter_mut().enumerate() {
                if k % 7 == 0 {
                    *w = -*w * 0.8 + 0.01;
                }
            }
            d.bias[0] += 0.125;
        }
    }
    net
}

/// Deterministic inputs in the ACAS Xu normalised domain.
fn inputs() -> Vec<Vec<f32>> {
    (0..40)
        .map(|k| {
            (0..5)
                .map(|i| (((k * 5 + i) as f32 * 0.618).fract() - 0.5) * 0.9)
                .collect()
        })
        .collect()
}

fn csv(rows: &[Vec<f32>]) -> String {
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_csv(text: &str) -> Vec<Vec<f64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect()
}

#[test]
fn apply_compile_eval_inspect_and_tract_agree() {
    let onnx = require_data!(&acasxu_onnx(2, 1));
    let dir = scratch("agree");
    let base = prorepair_host::import::load(&onnx).unwrap();
    let repaired = modified(&base);
    let region = (vec![-0.3; 5], vec![0.3; 5]);
    let emitted = prorepair_host::patch::emit(&base, &repaired, 3, &[region]).unwrap();
    let patch = dir.join("fix.patch");
    std::fs::write(&patch, &emitted.bytes).unwrap();
    // Small: two sparse-or-full layers of a 13k-parameter network.
    let share = emitted.bytes.len() as f64 / emitted.base_blob.len() as f64;
    assert!(share < 0.25, "patch is {share:.3} of the blob");

    // apply -> ONNX; compile --patch -> blob; compile of that ONNX -> the same blob.
    let out_onnx = dir.join("repaired.onnx");
    let o = host(&["apply", s(&onnx), s(&patch), "--onnx-out", s(&out_onnx)]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let via_patch = dir.join("patched.bin");
    let o = host(&[
        "compile",
        s(&onnx),
        "--patch",
        s(&patch),
        "--out",
        s(&via_patch),
    ]);
    assert!(o.status.success(), "compile --patch: {}", stderr(&o));
    let via_onnx = dir.join("from_onnx.bin");
    let o = host(&["compile", s(&out_onnx), "--out", s(&via_onnx)]);
    assert!(o.status.success(), "compile: {}", stderr(&o));
    let a = std::fs::read(&via_patch).unwrap();
    assert_eq!(
        a,
        std::fs::read(&via_onnx).unwrap(),
        "apply and compile --patch differ"
    );
    // Both are exactly the repaired network's blob.
    assert_eq!(a, compile(&repaired).unwrap());

    // The core's patched model (base blob + patch in RAM) evaluates bit for bit like
    // the repaired blob; `eval --patch` on the base blob says so too.
    let base_bin = dir.join("base.bin");
    let o = host(&["compile", s(&onnx), "--out", s(&base_bin)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&base_bin).unwrap(), emitted.base_blob);
    let in_csv = dir.join("in.csv");
    std::fs::write(&in_csv, csv(&inputs())).unwrap();
    let o1 = host(&[
        "eval",
        s(&base_bin),
        "--patch",
        s(&patch),
        "--inputs",
        s(&in_csv),
    ]);
    let o2 = host(&["eval", s(&via_patch), "--inputs", s(&in_csv)]);
    assert!(
        o1.status.success() && o2.status.success(),
        "{} {}",
        stderr(&o1),
        stderr(&o2)
    );
    assert_eq!(o1.stdout, o2.stdout);
    let unpatched = host(&["eval", s(&base_bin), "--inputs", s(&in_csv)]);
    assert_ne!(unpatched.stdout, o1.stdout, "the patch changed nothing");
    let device = parse_csv(&String::from_utf8_lossy(&o1.stdout));

    // The tract adapter: base ONNX + patch, checked and applied, runs like tract on the
    // ONNX `apply` wrote, and like the device core within f32 rounding.
    let tract =
        prorepair_host::patch::tract::load_patched(&onnx, &emitted.bytes, "fix.patch").unwrap();
    let reference = TractModel::load(&out_onnx).unwrap();
    for (x, dev) in inputs().iter().zip(&device) {
        let t = tract.run(x).unwrap();
        assert_eq!(t, reference.run(x).unwrap());
        for (a, b) in t.iter().zip(dev) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
    }
    // The adapter refuses a patch for another model.
    let other = require_data!(&acasxu_onnx(2, 2));
    let err = prorepair_host::patch::tract::load_patched(&other, &emitted.bytes, "fix.patch")
        .unwrap_err();
    assert!(
        err.to_string().contains("fix.patch") && err.to_string().contains("different base model"),
        "{err}"
    );

    // inspect PATCH: kind, sizes, target hash, sequence, layers changed; --model binds.
    let o = host(&["inspect", s(&patch), "--json", "-", "--model", s(&base_bin)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "patch");
    assert_eq!(v["patch_kind"], "weight delta");
    assert_eq!(v["sequence"], 3);
    assert_eq!(v["patch_bytes"], emitted.bytes.len());
    assert_eq!(v["base_blob_bytes"], emitted.base_blob.len());
    let blob = AlignedBlob::new(&emitted.base_blob);
    let sha = prorepair_host::patch::hex(&blob.model().unwrap().sha256());
    assert_eq!(v["base_sha256"], sha);
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["regions"], 1);
    let o = host(&["inspect", s(&patch)]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("weight delta") && text.contains(&sha),
        "{text}"
    );
}

#[test]
fn bad_patches_exit_2_naming_the_file() {
    let onnx = require_data!(&acasxu_onnx(2, 1));
    let other = require_data!(&acasxu_onnx(2, 2));
    let dir = scratch("bad");
    let base = prorepair_host::import::load(&onnx).unwrap();
    let emitted = prorepair_host::patch::emit(&base, &modified(&base), 1, &[]).unwrap();
    let good = dir.join("good.patch");
    std::fs::write(&good, &emitted.bytes).unwrap();
    let mut flipped = emitted.bytes.clone();
    flipped[150] ^= 1;
    let corrupt = dir.join("corrupt.patch");
    std::fs::write(&corrupt, &flipped).unwrap();
    let short = dir.join("short.patch");
    std::fs::write(&short, &emitted.bytes[..40]).unwrap();
    let garbage = dir.join("garbage.patch");
    std::fs::write(&garbage, b"hello").unwrap();
    let out = dir.join("out.onnx");
    let cases: [(&Path, &Path, &str); 4] = [
        (&onnx, &corrupt, "CRC mismatch"),
        (&onnx, &short, "truncated"),
        (&onnx, &garbage, "not a prorepair patch"),
        (&other, &good, "different base model"),
    ];
    for (model, patch, problem) in cases {
        let o = host(&["apply", s(model), s(patch), "--onnx-out", s(&out)]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(s(patch)) && e.contains(problem), "{e}");
        assert!(!out.exists(), "a file was written for a refused patch");
        let bin = dir.join("x.bin");
        let o = host(&["compile", s(model), "--patch", s(patch), "--out", s(&bin)]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(!bin.exists());
    }
    // inspect: corrupt patch, and a good patch against the wrong model blob.
    let o = host(&["inspect", s(&corrupt)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("corrupt.patch"));
    let wrong_bin = dir.join("other.bin");
    assert!(
        host(&["compile", s(&other), "--out", s(&wrong_bin)])
            .status
            .success()
    );
    let o = host(&["inspect", s(&good), "--model", s(&wrong_bin)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("different base model"),
        "{}",
        stderr(&o)
    );
    // eval --patch with a patch for another model.
    let in_csv = dir.join("in.csv");
    std::fs::write(&in_csv, "0,0,0,0,0\n").unwrap();
    let o = host(&[
        "eval",
        s(&wrong_bin),
        "--patch",
        s(&good),
        "--inputs",
        s(&in_csv),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("good.patch"), "{}", stderr(&o));
}

/// `repair --out`: the patch is written only when every property is proven, and then it
/// applies to the model and `verify` proves the patched model; otherwise no file (and
/// no temporary file) is left. A property that already holds needs no patch.
#[test]
fn repair_writes_a_patch_only_when_proven() {
    use prorepair_host::cli::demo;
    let dir = scratch("repair");
    let net = demo::builtin_controller().unwrap();
    let model = dir.join("controller.onnx");
    std::fs::write(
        &model,
        prorepair_host::export::to_onnx_bytes(&net, None).unwrap(),
    )
    .unwrap();
    let spec = dir.join("coc.vnnlib");
    std::fs::write(&spec, demo::property_vnnlib()).unwrap();
    let patch = dir.join("fix.patch");
    let o = host(&[
        "repair",
        s(&model),
        "--spec",
        s(&spec),
        "--split-layer",
        "4",
        "--timeout",
        "5",
        "--out",
        s(&patch),
        "--report",
        "-",
    ]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    match o.status.code() {
        Some(20) => assert!(
            !patch.exists(),
            "a patch was written for an unproven repair"
        ),
        Some(0) => {
            let repaired = dir.join("repaired.onnx");
            let a = host(&["apply", s(&model), s(&patch), "--onnx-out", s(&repaired)]);
            assert!(a.status.success(), "{}", stderr(&a));
            let v = host(&["verify", s(&repaired), s(&spec)]);
            assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
            let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(
                report["patch_size_bytes"],
                std::fs::read(&patch).unwrap().len()
            );
        }
        other => panic!("repair exited {other:?}: {}", stderr(&o)),
    }
    // A property that holds: exit 0, nothing to patch, no file.
    let far = dir.join("far.vnnlib");
    let text = demo::property_vnnlib()
        .replace("(assert (>= X_0 -0.85))", "(assert (>= X_0 0.5))")
        .replace("(assert (<= X_0 -0.75))", "(assert (<= X_0 0.6))")
        .replace("(assert (<= Y_0 Y_", "(assert (>= Y_0 Y_");
    std::fs::write(&far, text).unwrap();
    let v = host(&["verify", s(&model), s(&far)]);
    if v.status.code() == Some(0) {
        let kept = dir.join("kept.patch");
        let o = host(&[
            "repair",
            s(&model),
            "--spec",
            s(&far),
            "--timeout",
            "5",
            "--out",
            s(&kept),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!kept.exists());
        assert!(stderr(&o).contains("nothing was changed"), "{}", stderr(&o));
    }
}
