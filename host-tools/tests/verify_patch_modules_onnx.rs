//! `verify` on the exported patch-modules ONNX graph itself (issue 6): ACAS Xu N2,1,
//! property 2, repaired with one box-indicator module. The graph `apply --onnx-out`
//! writes is read back as base + (box, module), and the cell-decomposition verifier says
//! "holds"; with the module deliberately weakened (its output scaled to zero) it says
//! "violated", and tract running the exported graph confirms the counterexample.

use std::time::Duration;

use prorepair_host::import::{self, Model};
use prorepair_host::repair::patchmodules::{self, ModuleOptions, PatchModules};
use prorepair_host::spec::Property;
use prorepair_host::verify::{self, Verdict, piecewise};
use prorepair_host::{export, patch, require_data, testing};
use tract_onnx::prelude::*;

/// tract on an ONNX file, batch 1, f32 (independent of the host importers).
fn run_tract(path: &std::path::Path, shape: &[usize], x: &[f32]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let t = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), x.to_vec()).unwrap();
    let out = model.run(tvec!(Tensor::from(t).into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn piecewise_of(path: &std::path::Path) -> import::piecewise::Piecewise {
    match import::load_model(path).expect("reads the exported graph") {
        Model::Piecewise(p) => p,
        Model::Network(_) => panic!("read as a straight-line network"),
    }
}

#[test]
fn verify_reads_the_exported_graph_holds_then_violated_when_weakened() {
    let onnx = require_data!(&testing::acasxu_onnx(2, 1));
    let spec_path = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let net = import::load(&onnx).expect("imports");
    let spec = Property::from_vnnlib(&spec_path).expect("parses");
    let cases = verify::cases_of(&net, &spec).expect("fits");
    let named: Vec<_> = cases
        .iter()
        .cloned()
        .map(|c| ("prop_2".to_string(), c))
        .collect();
    let r = patchmodules::repair_modules(
        &net,
        &named,
        &ModuleOptions {
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .expect("repairs");
    assert!(r.all_hold(), "{:?}", r.outcomes);

    let dir = std::env::temp_dir().join(format!("prorepair-verify-pm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shape = export::onnx::declared_input_shape(&onnx).unwrap();
    let options = verify::Options {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };

    // The repaired graph: read back exactly, and it holds.
    let good = dir.join("repaired.onnx");
    std::fs::write(
        &good,
        patch::modules::to_onnx(&net, &r.modules, Some(&shape)).unwrap(),
    )
    .unwrap();
    let pw = piecewise_of(&good);
    assert_eq!(pw.modules, r.modules, "boxes and weights are f32 already");
    let report = piecewise::verify_piecewise(&pw, &cases, &options, piecewise::MAX_CELLS);
    assert_eq!(report.report.verdict, Verdict::Holds, "{report:?}");
    assert!(
        report.cells >= 1 && report.cells_with_modules >= 1,
        "{report:?}"
    );

    // The same module with its output scaled to zero: the base's violation is back.
    let mut weak: PatchModules = r.modules.clone();
    let last = weak.entries[0].1.layers.last_mut().unwrap();
    last.weight.iter_mut().for_each(|w| *w = 0.0);
    last.bias.iter_mut().for_each(|b| *b = 0.0);
    let bad = dir.join("weakened.onnx");
    std::fs::write(
        &bad,
        patch::modules::to_onnx(&net, &weak, Some(&shape)).unwrap(),
    )
    .unwrap();
    let pw = piecewise_of(&bad);
    let report = piecewise::verify_piecewise(&pw, &cases, &options, piecewise::MAX_CELLS);
    let Verdict::Violated {
        counterexample,
        output,
        case,
    } = &report.report.verdict
    else {
        panic!("{report:?}")
    };
    let conjs = &cases[*case].unsafe_set;
    assert!(conjs.iter().any(|c| c.worst_margin(output) <= 0.0));
    assert_eq!(output, &pw.forward(counterexample));
    // tract on the exported graph itself reaches the unsafe set at the counterexample.
    let xf: Vec<f32> = counterexample.iter().map(|&v| v as f32).collect();
    let y: Vec<f64> = run_tract(&bad, &shape, &xf)
        .into_iter()
        .map(f64::from)
        .collect();
    assert!(
        conjs.iter().any(|c| c.worst_margin(&y) <= 0.0),
        "tract output {y:?} at {counterexample:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
