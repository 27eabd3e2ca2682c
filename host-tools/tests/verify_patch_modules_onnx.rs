//! `verify` on the exported patch-modules ONNX graph itself (issue 6): ACAS Xu N2,1,
//! property 2, repaired with one box-indicator module. The graph `apply --onnx-out`
//! writes is read back as base + (box, module), and the cell-decomposition verifier says
//! "holds"; with the module deliberately weakened (its output scaled to zero) it says
//! "violated", and tract running the exported graph confirms the counterexample.
//! Where it says "holds", tract on the exported graph never reaches the unsafe set on
//! seeded samples of the box and on points on and one f32 step around every indicator
//! face; the same check on the module split in two along a shared face (three cells,
//! both modules firing on the face).

use std::time::Duration;

use prorepair_host::import::{self, Model};
use prorepair_host::repair::patchmodules::{self, ModuleOptions, PatchModules};
use prorepair_host::spec::Property;
use prorepair_host::verify::{self, Verdict, piecewise};
use prorepair_host::{export, patch, require_data, testing};
use tract_onnx::prelude::*;

/// tract on an ONNX file, batch 1, f32 (independent of the host importers).
struct Tract {
    model: std::sync::Arc<TypedRunnableModel>,
    shape: Vec<usize>,
}

impl Tract {
    fn load(path: &std::path::Path, shape: &[usize]) -> Self {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        Tract {
            model,
            shape: shape.to_vec(),
        }
    }

    fn run(&self, x: &[f32]) -> Vec<f64> {
        let t = tract_ndarray::ArrayD::from_shape_vec(self.shape.clone(), x.to_vec()).unwrap();
        let out = self.model.run(tvec!(Tensor::from(t).into())).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    }
}

/// Where `verify` said "holds", tract running the exported graph must never reach the
/// unsafe set: 3,000 seeded points of each case box, plus points whose coordinate sits
/// exactly on, or one f32 step either side of, an indicator face (where the modules
/// switch on and off), all rounded to f32 as a device receives them. Returns how many
/// points were checked.
fn assert_no_unsafe_sample(tract: &Tract, cases: &[verify::Case], modules: &PatchModules) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let faces: Vec<(usize, f32)> = modules
        .entries
        .iter()
        .filter_map(|(ind, _)| match ind {
            patchmodules::Indicator::Box(b) => Some(b),
            _ => None,
        })
        .flat_map(|b| {
            (0..b.lower.len()).flat_map(move |i| [(i, b.lower[i] as f32), (i, b.upper[i] as f32)])
        })
        .collect();
    let mut checked = 0;
    for (k, case) in cases.iter().enumerate() {
        let inside =
            |i: usize, v: f32| case.lower[i] <= f64::from(v) && f64::from(v) <= case.upper[i];
        let mut points: Vec<Vec<f32>> = Vec::new();
        for n in 0..3000 {
            let mut x: Vec<f32> = (0..case.lower.len())
                .map(|i| rng.random_range(case.lower[i]..=case.upper[i]) as f32)
                .collect();
            for (i, v) in x.iter_mut().enumerate() {
                if !inside(i, *v) {
                    *v = case.lower[i] as f32; // rounding left the box: its corner
                }
            }
            if let Some(&(i, f)) = faces.get(n % faces.len().max(1)) {
                for v in [f, f.next_up(), f.next_down()] {
                    if inside(i, v) {
                        let mut y = x.clone();
                        y[i] = v;
                        points.push(y);
                    }
                }
            }
            points.push(x);
        }
        for x in &points {
            let y = tract.run(x);
            assert!(
                !case.unsafe_set.iter().any(|c| c.contains(&y)),
                "case {k}: verify said holds, but tract reaches the unsafe set at {x:?}: {y:?}"
            );
        }
        checked += points.len();
    }
    checked
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
    let n = assert_no_unsafe_sample(&Tract::load(&good, &shape), &cases, &r.modules);
    assert!(n >= 3000, "{n}");

    // The module split into two with the indicator box cut in half along input 0: two
    // cells with one module each and the shared face where both fire (base + 2 x module
    // there). Whatever `verify` says must agree with tract: "holds" with no unsafe
    // sample (face points included), "violated" with a counterexample tract confirms.
    let mut split = r.modules.clone();
    let (patchmodules::Indicator::Box(b), m) = split.entries[0].clone() else {
        panic!("a box indicator")
    };
    let cut = f64::from(((b.lower[0] + b.upper[0]) / 2.0) as f32);
    let (mut left, mut right) = (b.clone(), b);
    left.upper[0] = cut;
    right.lower[0] = cut;
    split.entries = vec![
        (patchmodules::Indicator::Box(left), m.clone()),
        (patchmodules::Indicator::Box(right), m),
    ];
    let two = dir.join("split.onnx");
    std::fs::write(
        &two,
        patch::modules::to_onnx(&net, &split, Some(&shape)).unwrap(),
    )
    .unwrap();
    let pw = piecewise_of(&two);
    assert_eq!(pw.modules, split);
    let report = piecewise::verify_piecewise(&pw, &cases, &options, piecewise::MAX_CELLS);
    assert!(report.cells >= 3, "{report:?}");
    let tract = Tract::load(&two, &shape);
    match &report.report.verdict {
        Verdict::Holds => {
            assert_no_unsafe_sample(&tract, &cases, &split);
        }
        Verdict::Violated {
            counterexample,
            case,
            ..
        } => {
            let xf: Vec<f32> = counterexample.iter().map(|&v| v as f32).collect();
            let y = tract.run(&xf);
            assert!(
                cases[*case].unsafe_set.iter().any(|c| c.contains(&y)),
                "tract output {y:?} at {counterexample:?}"
            );
        }
        Verdict::Unknown { .. } => panic!("{report:?}"),
    }
    eprintln!("split module: {report:?}");

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
    assert!(conjs.iter().any(|c| c.contains(output)));
    assert_eq!(output, &pw.forward(counterexample));
    // tract on the exported graph itself reaches the unsafe set at the counterexample.
    let xf: Vec<f32> = counterexample.iter().map(|&v| v as f32).collect();
    let y = Tract::load(&bad, &shape).run(&xf);
    assert!(
        conjs.iter().any(|c| c.contains(&y)),
        "tract output {y:?} at {counterexample:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
