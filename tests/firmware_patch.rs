//! A field update through the C API, in C: `firmware-examples/patch_update/main.c`
//! built with gcc (-Wall -Wextra -Werror, ASan/UBSan) against `libprorepair.a` (the
//! no_std min-size build), loading the demo controller's base blob and the patch of its
//! PROVEN repair (`repair::repair`, then `patch::emit`, as `repair --out` does). The C
//! program's patched outputs must equal the repaired network's ONNX under tract; a
//! damaged patch, a patch for another model and a replayed patch are refused while the
//! running model keeps its outputs (checked inside the C program).
//!
//! Skips (with a message) when gcc is absent.

use std::path::Path;

use prorepair_host::cli::demo;
use prorepair_host::compile::AlignedBlob;
use prorepair_host::import::onnx::TractModel;
use prorepair_host::model::Layer;
use prorepair_host::repair::{self, RepairProperty};

fn have_gcc() -> bool {
    prorepair_tests::have_tool("gcc")
}

fn inputs() -> Vec<[f32; 5]> {
    let (lo, up) = (demo::PROPERTY_LOWER, demo::PROPERTY_UPPER);
    let mut rows = vec![std::array::from_fn(|i| ((lo[i] + up[i]) / 2.0) as f32)];
    rows.push(std::array::from_fn(|i| lo[i] as f32));
    rows.push(std::array::from_fn(|i| up[i] as f32));
    for k in 0..13 {
        rows.push(std::array::from_fn(|i| {
            ((((k * 5 + i) as f32) * 0.618).fract() - 0.5) * 1.8
        }));
    }
    rows
}

fn parse(stdout: &str, tag: &str) -> Vec<Vec<f64>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag))
        .map(|l| {
            let (_, values) = l.split_once(':').unwrap();
            values
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn c_program_applies_the_demo_repair_patch_and_matches_tract() {
    if !have_gcc() {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    // The proven repair of the demo controller, and its patch.
    let net = demo::builtin_controller().unwrap();
    let property =
        prorepair_host::spec::vnnlib::parse_str(&demo::property_vnnlib(), Path::new("demo.vnnlib"))
            .unwrap();
    let rp = RepairProperty::from_spec("demo", &property, &net).unwrap();
    let outcome = repair::repair(&net, &[rp], &demo::repair_options()).unwrap();
    assert!(outcome.verified, "the demo repair is not proven");
    let repaired = outcome.network;
    let region = (demo::PROPERTY_LOWER.to_vec(), demo::PROPERTY_UPPER.to_vec());
    let emitted = prorepair_host::patch::emit(&net, &repaired, 1, &[region]).unwrap();
    let mut bad = emitted.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x04;
    // A patch for another model: the controller with one bias changed as its base.
    let mut other = net.clone();
    if let Layer::Dense(d) = &mut other.layers[0] {
        d.bias[0] += 0.5;
    }
    let other_patch = prorepair_host::patch::emit(&other, &repaired, 1, &[]).unwrap();

    let rows = inputs();
    let patched = run_c_update("demo", &repaired, &emitted, &bad, &other_patch, &rows, None);
    // At the centre of the repaired box the advisory (lowest score) is no longer COC.
    let centre = &patched[0];
    assert!(centre[1..].iter().any(|&s| s < centre[0]), "{centre:?}");
}

/// Build the C update program for `base` -> `repaired` (patch `emitted`, plus a
/// damaged copy and a patch for `other_patch`'s base), run it on `rows`, check its base
/// outputs against the core and its patched outputs against tract on the repaired
/// network's ONNX; the patched output rows.
fn run_c_update(
    tag: &str,
    repaired: &prorepair_host::model::Network,
    emitted: &prorepair_host::patch::EmittedPatch,
    bad: &[u8],
    other_patch: &prorepair_host::patch::EmittedPatch,
    rows: &[[f32; 5]],
    input_shape: Option<&[usize]>,
) -> Vec<Vec<f64>> {
    let dir = prorepair_tests::c_example_dir("patch_update", tag);
    prorepair_tests::write_c_headers(
        &dir,
        &[
            ("base_model", &emitted.base_blob),
            ("patch_v1", &emitted.bytes),
            ("patch_bad", bad),
            ("patch_other", &other_patch.bytes),
        ],
        "",
        "N_INPUTS",
        rows,
    );
    let exe =
        prorepair_tests::build_c_example("patch_update", "main.c", &dir, "patch_update", true, &[]);
    let stdout = prorepair_tests::run_c_example(&exe);
    assert!(stdout.contains(&format!(
            "patch ram {}",
            prorepair_core::Patch::from_bytes(&emitted.bytes)
                .unwrap()
                .required_ram_bytes()
        )));

    // Base outputs: the core on the base blob; patched outputs: tract on the repaired ONNX.
    let (base, patched) = (parse(&stdout, "base "), parse(&stdout, "patched "));
    assert_eq!((base.len(), patched.len()), (rows.len(), rows.len()));
    let blob = AlignedBlob::new(&emitted.base_blob);
    let model = blob.model().unwrap();
    let onnx = dir.join("repaired.onnx");
    std::fs::write(
        &onnx,
        prorepair_host::export::to_onnx_bytes(repaired, input_shape).unwrap(),
    )
    .unwrap();
    let tract = TractModel::load(&onnx).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
    for ((x, b), p) in rows.iter().zip(&base).zip(&patched) {
        let x: &[f32] = x;
        let mut arena = vec![0.0f32; model.required_arena_len()];
        let mut want = [0.0f32; 5];
        model.evaluate(x, &mut arena, &mut want).unwrap();
        for (g, w) in b.iter().zip(want) {
            assert!(close(*g, f64::from(w)), "base {x:?}: {g} vs {w}");
        }
        let t = tract.run(x).unwrap();
        for (g, w) in p.iter().zip(t) {
            assert!(close(*g, f64::from(w)), "patched {x:?}: C {g} vs tract {w}");
        }
    }
    patched
}

/// The end-to-end check on real data: repair ACAS Xu N2,1 for property 2, apply
/// the patch in the C program, and compare with the repaired ONNX under tract.
#[test]
fn c_program_applies_the_acasxu_n21_prop2_repair_patch() {
    if !have_gcc() {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let Some(prorepair_tests::N21Prop2Repair {
        onnx,
        net,
        repaired,
        regions,
    }) = prorepair_tests::repair_n21_prop2()
    else {
        return;
    };
    let emitted = prorepair_host::patch::emit(&net, &repaired, 1, &regions).unwrap();
    let mut bad = emitted.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x04;
    let other_net = prorepair_host::import::load(
        &prorepair_host::testing::data_path(&prorepair_host::testing::acasxu_onnx(2, 2)).unwrap(),
    )
    .unwrap();
    let mut other_repaired = other_net.clone();
    if let Layer::Dense(d) = &mut other_repaired.layers[0] {
        d.bias[0] += 0.5;
    }
    let other_patch = prorepair_host::patch::emit(&other_net, &other_repaired, 1, &[]).unwrap();
    let (lower, upper) = &regions[0];
    let mut rows: Vec<[f32; 5]> = vec![std::array::from_fn(|i| {
        ((lower[i] + upper[i]) / 2.0) as f32
    })];
    for k in 0..15 {
        rows.push(std::array::from_fn(|i| {
            ((((k * 5 + i) as f32) * 0.618).fract() - 0.5) * 0.9
        }));
    }
    let shape = prorepair_host::export::onnx::declared_input_shape(&onnx);
    run_c_update(
        "acasxu_2_1",
        &repaired,
        &emitted,
        &bad,
        &other_patch,
        &rows,
        shape.as_deref(),
    );
}
