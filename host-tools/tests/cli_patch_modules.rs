//! `repair --strategy patch-modules` and `apply` of a kind-2 patch end to end on ACAS Xu
//! N2,1, property 2: exit 0, a signed patch and an ONNX graph written, the report says
//! holds; `apply` rebuilds the same graph from the patch; `verify` on that exported graph
//! says holds; `inspect` and `eval --patch` read the kind-2 patch (signature checked with
//! `--key`); a damaged patch is refused (exit 2, file named).

mod common;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{host, s, scratch, stderr};
use prorepair_host::testing;

/// ACAS Xu N2,1 and property 2 (violated there); `None` (the test skips) without the data.
fn n21_prop2() -> Option<(PathBuf, PathBuf)> {
    Some((
        testing::data_path(&testing::acasxu_onnx(2, 1))?,
        testing::data_path("acasxu/vnnlib/prop_2.vnnlib")?,
    ))
}

/// `repair MODEL --spec SPEC --strategy patch-modules EXTRA...`.
fn repair_modules(model: &Path, spec: &Path, extra: &[&str]) -> Output {
    let mut argv = vec![
        "repair",
        s(model),
        "--spec",
        s(spec),
        "--strategy",
        "patch-modules",
    ];
    argv.extend_from_slice(extra);
    host(&argv)
}

/// A patch-modules repair into `dir` (120 s budget, then `extra`), asking for
/// `p.prpt`, `repaired.onnx` and `report.json`: the command's output and those paths.
fn run_into(
    dir: &Path,
    model: &Path,
    spec: &Path,
    extra: &[&str],
) -> (Output, PathBuf, PathBuf, PathBuf) {
    let (patch, onnx, report) = (
        dir.join("p.prpt"),
        dir.join("repaired.onnx"),
        dir.join("report.json"),
    );
    let mut argv = vec![
        "--out",
        s(&patch),
        "--onnx-out",
        s(&onnx),
        "--report",
        s(&report),
        "--timeout",
        "120",
    ];
    argv.extend_from_slice(extra);
    (repair_modules(model, spec, &argv), patch, onnx, report)
}

/// [`run_into`] that must exit 0: the report and the paths of the patch and the graph.
fn repair_into(
    dir: &Path,
    model: &Path,
    spec: &Path,
    extra: &[&str],
) -> (serde_json::Value, PathBuf, PathBuf) {
    let (out, patch, onnx, report) = run_into(dir, model, spec, extra);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (read_json(&report), patch, onnx)
}

/// A JSON file.
fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The lines of a command's stdout (CSV output rows of `eval`).
fn rows(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Two `eval` outputs agree to 1e-4 value by value (host f64 vs device f32).
fn assert_rows_close(a: &[String], b: &[String]) {
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.split(',').zip(y.split(',')) {
            let (u, v): (f64, f64) = (u.parse().unwrap(), v.parse().unwrap());
            assert!((u - v).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

/// `apply` rebuilds the same ONNX graph from the patch alone.
fn assert_apply_rebuilds(model: &Path, patch: &Path, onnx: &Path, again: &Path) {
    let out = host(&["apply", s(model), s(patch), "--onnx-out", s(again)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(onnx).unwrap(), std::fs::read(again).unwrap());
}

/// `verify` on the exported graph itself says holds; its JSON report.
fn verify_holds(onnx: &Path, spec: &Path) -> serde_json::Value {
    let out = host(&["verify", s(onnx), s(spec), "--json", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "holds", "{v}");
    v
}

/// The first module's box corners from an `inspect --json` report.
fn module_box(v: &serde_json::Value) -> (Vec<f64>, Vec<f64>) {
    (0..5)
        .map(|j| {
            (
                v["modules"][0]["lower"][j].as_f64().unwrap(),
                v["modules"][0]["upper"][j].as_f64().unwrap(),
            )
        })
        .unzip()
}

/// `compile MODEL` into `dir/base.bin`.
fn compile(model: &Path, dir: &Path) -> PathBuf {
    let blob = dir.join("base.bin");
    let out = host(&["compile", s(model), "--out", s(&blob)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    blob
}

#[test]
fn repair_with_patch_modules_then_apply() {
    let Some((model, spec)) = n21_prop2() else {
        return;
    };
    let dir = scratch("cli_patch_modules", "n21");
    let again = dir.join("applied.onnx");
    let key = dir.join("key");
    let out = host(&["keygen", "--out", s(&key)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let public = dir.join("key.pub");
    let (r, patch, onnx) = repair_into(&dir, &model, &spec, &["--sign", s(&key)]);
    assert_eq!(r["status"], "holds");
    assert_eq!(r["strategy"], "patch-modules");
    assert_eq!(r["modules"], 1);
    assert_eq!(r["properties"][0]["status_before"], "violated");
    assert_eq!(r["patch"]["kind"], "patch modules");
    let bytes = std::fs::read(&patch).unwrap();
    assert_eq!(r["patch_size_bytes"], bytes.len());

    assert_apply_rebuilds(&model, &patch, &onnx, &again);

    // `verify` on the exported graph itself (base + indicator + module).
    let v = verify_holds(&onnx, &spec);
    assert_eq!(v["piecewise"]["modules"], 1, "{v}");
    assert!(v["piecewise"]["cells"].as_u64().unwrap() >= 1, "{v}");

    // `inspect` describes the kind-2 patch and checks its signature.
    let out = host(&["inspect", s(&patch), "--key", s(&public)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind          patch modules"), "{text}");
    assert!(text.contains("modules       1 (93 parameters)"), "{text}");
    assert!(text.contains("5-8-5"), "{text}");
    assert!(text.contains("signature verified with"), "{text}");
    let out = host(&["inspect", s(&patch), "--json", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["patch_kind"], "patch modules");
    assert_eq!(v["modules"][0]["indicator"], "box");
    assert_eq!(v["modules"][0]["widths"], serde_json::json!([5, 8, 5]));
    assert_eq!(v["patch_bytes"], bytes.len());
    assert!(v["signer"].is_string());

    // `eval --patch`: base + module by the device core. Outside the box (second row) the
    // outputs are the base's; inside (the box centre) the module changes them.
    let (lo, hi) = module_box(&v);
    let centre: Vec<String> = lo
        .iter()
        .zip(&hi)
        .map(|(l, u)| ((l + u) / 2.0).to_string())
        .collect();
    let outside: Vec<String> = lo.iter().map(|l| (l - 0.05).to_string()).collect();
    let inputs = dir.join("in.csv");
    std::fs::write(
        &inputs,
        format!("{}\n{}\n", centre.join(","), outside.join(",")),
    )
    .unwrap();
    let blob = compile(&model, &dir);
    let base_out = host(&["eval", s(&blob), "--inputs", s(&inputs)]);
    assert_eq!(base_out.status.code(), Some(0), "{}", stderr(&base_out));
    for m in [&model, &blob] {
        let out = host(&[
            "eval",
            s(m),
            "--patch",
            s(&patch),
            "--key",
            s(&public),
            "--inputs",
            s(&inputs),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let (b, p) = (rows(&base_out), rows(&out));
        assert_eq!(p.len(), 2);
        assert_ne!(b[0], p[0], "the module acts inside the box");
        assert_eq!(
            b[1], p[1],
            "outside the box the base's outputs, bit for bit"
        );
    }
    // The exported graph itself evaluates to the same outputs (host, f64, vs the device's
    // f32).
    let out = host(&["eval", s(&onnx), "--inputs", s(&inputs)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let device = host(&[
        "eval",
        s(&blob),
        "--patch",
        s(&patch),
        "--inputs",
        s(&inputs),
    ]);
    assert_rows_close(&rows(&out), &rows(&device));
    // A key that did not sign the patch: refused, as on a device.
    let other = dir.join("other");
    assert!(host(&["keygen", "--out", s(&other)]).status.success());
    let out = host(&[
        "eval",
        s(&blob),
        "--patch",
        s(&patch),
        "--key",
        s(&dir.join("other.pub")),
        "--inputs",
        s(&inputs),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("p.prpt"), "{}", stderr(&out));

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
    let Some((model, spec)) = n21_prop2() else {
        return;
    };
    let dir = scratch("cli_patch_modules", "widths");
    let patch = dir.join("p.prpt");
    for widths in ["0", "8,0", "8,8,8,8"] {
        let out = repair_modules(
            &model,
            &spec,
            &["--module-hidden", widths, "--out", s(&patch)],
        );
        assert_eq!(out.status.code(), Some(2), "{widths}: {}", stderr(&out));
        assert!(stderr(&out).contains("hidden"), "{}", stderr(&out));
        assert!(!patch.exists(), "{widths}: a patch was written");
    }
}

#[test]
fn repair_at_a_feature_layer_then_inspect_eval_and_verify() {
    let Some((model, spec)) = n21_prop2() else {
        return;
    };
    let dir = scratch("cli_patch_modules", "feature");
    // ACAS Xu has six hidden ReLU layers of 50: K = 6 is the last one.
    let (r, patch, onnx) = repair_into(&dir, &model, &spec, &["--feature-layer", "6"]);
    assert_eq!(r["status"], "holds");
    assert_eq!(r["feature_layer"], 6);
    assert_eq!(r["module_parameters"], 50 * 8 + 8 + 8 * 5 + 5);

    let out = host(&["inspect", s(&patch)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("50-8-5"), "{text}");
    assert!(text.contains("reads activation 6"), "{text}");
    let out = host(&["inspect", s(&patch), "--json", "-"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modules"][0]["input_layer"], 6);

    // `apply` rebuilds the same graph from the patch alone.
    assert_apply_rebuilds(&model, &patch, &onnx, &dir.join("applied.onnx"));

    // `verify` on the exported graph (the module reads the sixth ReLU's output there).
    verify_holds(&onnx, &spec);

    // `eval --patch` (device core) and the exported graph agree inside the box; outside
    // it the device gives the base's outputs bit for bit.
    let (lo, hi) = module_box(&v);
    let row = |f: &dyn Fn(f64, f64) -> f64| -> String {
        lo.iter()
            .zip(&hi)
            .map(|(&l, &u)| f(l, u).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let inputs = dir.join("in.csv");
    std::fs::write(
        &inputs,
        format!(
            "{}\n{}\n{}\n",
            row(&|l, u| (l + u) / 2.0),
            row(&|l, u| 0.75 * l + 0.25 * u),
            row(&|l, _| l - 0.05)
        ),
    )
    .unwrap();
    let blob = compile(&model, &dir);
    let base_out = host(&["eval", s(&blob), "--inputs", s(&inputs)]);
    let device = host(&[
        "eval",
        s(&blob),
        "--patch",
        s(&patch),
        "--inputs",
        s(&inputs),
    ]);
    assert_eq!(device.status.code(), Some(0), "{}", stderr(&device));
    let graph = host(&["eval", s(&onnx), "--inputs", s(&inputs)]);
    assert_eq!(graph.status.code(), Some(0), "{}", stderr(&graph));
    let (b, d, g) = (rows(&base_out), rows(&device), rows(&graph));
    assert_ne!(b[0], d[0], "the module acts inside the box");
    assert_eq!(
        b[2], d[2],
        "outside the box the base's outputs, bit for bit"
    );
    assert_rows_close(&g, &d);

    // A layer the network does not have, and the option with the weights strategy.
    for extra in [
        &["--strategy", "patch-modules", "--feature-layer", "7"][..],
        &["--feature-layer", "3"][..],
    ] {
        let mut argv = vec!["repair", s(&model), "--spec", s(&spec), "--out", s(&patch)];
        argv.extend_from_slice(extra);
        let out = host(&argv);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("feature"), "{}", stderr(&out));
    }
}

/// Bad values of `--indicator` and `--feature-layer` (not a form, not a number, beyond
/// the network's six activation layers, or a feature layer with label indicators): exit
/// 2 with the option named, and no patch or graph written.
#[test]
fn bad_indicator_and_feature_layer_values_are_refused() {
    let Some((model, spec)) = n21_prop2() else {
        return;
    };
    let dir = scratch("cli_patch_modules", "bad-options");
    let (patch, onnx) = (dir.join("p.prpt"), dir.join("p.onnx"));
    let cases: [&[&str]; 8] = [
        &["--indicator", "boxes"],
        &["--indicator", ""],
        &["--feature-layer", "x"],
        &["--feature-layer=-1"],
        &["--feature-layer", "18446744073709551616"],
        &["--feature-layer", "7"],
        &["--feature-layer", "99"],
        &["--indicator", "label", "--feature-layer", "6"],
    ];
    for extra in cases {
        let option = if extra.contains(&"--indicator") && extra.len() == 2 {
            "--indicator"
        } else {
            "--feature-layer"
        };
        let mut argv = extra.to_vec();
        argv.extend(["--out", s(&patch), "--onnx-out", s(&onnx)]);
        let out = repair_modules(&model, &spec, &argv);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(option),
            "{extra:?} should name {option}: {err}"
        );
        assert!(
            !patch.exists() && !onnx.exists(),
            "{extra:?}: a file was written"
        );
    }
}

/// A property that held before the repair is proven again with the modules added: here
/// the module that pushes `y0` under 0.5 on `[0, 1]` (property A) also fires where
/// property B (`y0 > -0.05`, true before) is tight, at `x = 0`. The report's status of
/// B must agree with `verify` on what is written; before this check the command said
/// "holds" for B without looking. Synthetic network (no data needed): one input, `y0 = x`.
/// The weight strategy, which re-proves every property, repairs the same pair.
#[test]
fn properties_that_held_before_are_proven_again_with_the_modules() {
    let dir = scratch("cli_patch_modules", "held-before");
    // 1 -> 2 (ReLU) -> 2: h = (relu(x), relu(-x)), y = (h0, 0).
    let nnet = "// y0 = x, y1 = 0\n2,1,2,2,\n1,2,2,\n0,\n-10,\n10,\n0,0,\n1,1,\n\
                1,\n-1,\n0,\n0,\n1,0,\n0,0,\n0,\n0,\n";
    let model = dir.join("tiny.nnet");
    std::fs::write(&model, nnet).unwrap();
    let input = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n\
                 (assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n";
    let a = dir.join("a.vnnlib");
    std::fs::write(&a, format!("{input}(assert (>= Y_0 0.5))\n")).unwrap();
    let b = dir.join("b.vnnlib");
    std::fs::write(&b, format!("{input}(assert (<= Y_0 -0.05))\n")).unwrap();
    let (out, patch, onnx, report) = run_into(&dir, &model, &a, &["--spec", s(&b)]);
    let r = read_json(&report);
    let props = r["properties"].as_array().unwrap();
    assert_eq!(props[0]["status_before"], "violated", "{r}");
    assert_eq!(props[1]["status_before"], "holds", "{r}");
    assert_eq!(props[1]["repaired"], false, "{r}");
    eprintln!("{}\n{r}", stderr(&out));
    if out.status.code() == Some(0) {
        // Both claims must stand on the written graph.
        verify_holds(&onnx, &a);
        verify_holds(&onnx, &b);
    } else {
        assert_eq!(out.status.code(), Some(20), "{}", stderr(&out));
        assert!(!patch.exists() && !onnx.exists(), "a file was written");
        assert_ne!(props[1]["status"], "holds", "{r}");
        assert!(stderr(&out).contains("held before"), "{}", stderr(&out));
    }
    // The weight repair of the same pair, with the default `auto` split: on a network
    // with one hidden layer, f_c is the output layer (it used to be refused as split 0).
    let fixed = dir.join("w.onnx");
    let out = host(&[
        "repair",
        s(&model),
        "--spec",
        s(&a),
        "--spec",
        s(&b),
        "--onnx-out",
        s(&fixed),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    verify_holds(&fixed, &a);
    verify_holds(&fixed, &b);
}

/// ACAS Xu N2,1 with property 1 (holds) beside property 2 (violated): their boxes are the
/// same, so the module fires on all of property 1's inputs; the repair proves property 1
/// again on base + module, and `verify` agrees on the written graph.
#[test]
fn a_guard_property_on_the_module_box_is_proven_again() {
    let (Some((model, spec2)), Some(spec1)) = (
        n21_prop2(),
        testing::data_path("acasxu/vnnlib/prop_1.vnnlib"),
    ) else {
        return;
    };
    let dir = scratch("cli_patch_modules", "guard");
    let (r, _, onnx) = repair_into(&dir, &model, &spec1, &["--spec", s(&spec2)]);
    let props = r["properties"].as_array().unwrap();
    assert_eq!(
        (
            &props[0]["status_before"],
            &props[0]["status"],
            &props[0]["repaired"]
        ),
        (&"holds".into(), &"holds".into(), &false.into()),
        "{r}"
    );
    assert_eq!(props[1]["status"], "holds", "{r}");
    verify_holds(&onnx, &spec1);
    verify_holds(&onnx, &spec2);
}
