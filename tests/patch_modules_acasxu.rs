//! Patch modules end to end on ACAS Xu N2,1, property 2 (violated on the base network):
//! repair with one box indicator and module, the sound per-sub-box check says holds,
//! `verify` (complete) on the in-box network exported to ONNX says holds, the kind-2
//! patch round-trips through the device core, and OUTSIDE the box the outputs equal the
//! base network's bit for bit: host evaluation, the device core, and the exported ONNX
//! graph (comparisons + Where) under tract. Inside the box the three agree to f32
//! rounding and no sampled input reaches the unsafe set.

use std::time::Duration;

use prorepair_host::import::{self, onnx::TractModel};
use prorepair_host::repair::patchmodules::{self, Indicator, ModuleOptions};
use prorepair_host::spec::Property;
use prorepair_host::{export, patch, require_data, testing, verify};

#[test]
fn n21_prop2_repaired_with_a_patch_module() {
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
    let options = ModuleOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let r = patchmodules::repair_modules(&net, &named, &options).expect("repairs");
    assert!(r.all_hold(), "{:?}", r.outcomes);
    let (ind, module) = &r.modules.entries[0];
    let Indicator::Box(domain) = ind else {
        panic!("a box indicator")
    };
    assert!(
        domain
            .lower
            .iter()
            .zip(&cases[0].lower)
            .all(|(d, c)| d <= c)
    );
    assert!(
        domain
            .upper
            .iter()
            .zip(&cases[0].upper)
            .all(|(d, c)| d >= c)
    );

    // `verify` on base + module as one straight-line network, through ONNX.
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let comb = patchmodules::combined_network(&net, module, domain).expect("combined");
    let comb_path = tmp.join(format!("prorepair-pm-comb-{pid}.onnx"));
    std::fs::write(
        &comb_path,
        export::to_onnx_bytes(&comb, Some(&[1, 1, 1, 5])).unwrap(),
    )
    .unwrap();
    let back = import::load(&comb_path).expect("re-imports");
    let rep = verify::verify(
        &back,
        &spec,
        &verify::Options {
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .expect("verifies");
    assert_eq!(rep.verdict, verify::Verdict::Holds, "{:?}", rep.verdict);
    // The original network is violated (the repair was needed).
    let before = verify::verify(
        &net,
        &spec,
        &verify::Options {
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(before.verdict.status(), "violated");

    // The kind-2 patch round-trips through the core.
    let regions: Vec<_> = r.outcomes[0].partition.clone();
    let emitted = patch::modules::emit(&net, &r.modules, 1, &regions).expect("emits");
    assert!(patch::modules::is_modules_patch(&emitted.bytes));
    let read = patch::modules::read(&net, &emitted.bytes).expect("reads");
    assert_eq!(read, r.modules, "weights and boxes are f32 already");

    // The indicator graph and the base network, both exported the same way, in tract.
    let shape = export::onnx::declared_input_shape(&onnx).unwrap();
    let base_path = tmp.join(format!("prorepair-pm-base-{pid}.onnx"));
    std::fs::write(
        &base_path,
        export::to_onnx_bytes(&net, Some(&shape)).unwrap(),
    )
    .unwrap();
    // The tract adapter: base ONNX file + kind-2 patch -> one runnable graph.
    let graph = patch::modules::load_tract(&onnx, &emitted.bytes, "patch")
        .expect("tract runs the indicator graph");
    let base_tract = TractModel::load(&base_path).expect("tract loads the base");

    // Points: half inside the box, half in the ACAS Xu domain (mostly outside it), plus
    // the box corners and points just outside its faces.
    let mut points: Vec<Vec<f64>> = Vec::new();
    let mut s = 99u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    for k in 0..600 {
        let x: Vec<f64> = (0..5)
            .map(|d| {
                let t = next();
                if k % 2 == 0 {
                    domain.lower[d] + t * (domain.upper[d] - domain.lower[d])
                } else {
                    -0.5 + t
                }
            })
            .map(|v| v as f32 as f64)
            .collect();
        points.push(x);
    }
    points.push(domain.lower.clone());
    points.push(domain.upper.clone());
    for d in 0..5 {
        let mut x = domain.upper.clone();
        x[d] = (domain.upper[d] as f32).next_up() as f64;
        points.push(x);
        let mut x = domain.lower.clone();
        x[d] = (domain.lower[d] as f32).next_down() as f64;
        points.push(x);
    }
    let inputs: Vec<Vec<f32>> = points
        .iter()
        .map(|x| x.iter().map(|&v| v as f32).collect())
        .collect();
    let device = patch::modules::eval_device(&net, &emitted.bytes, &inputs).expect("device eval");
    let blob = prorepair_host::compile::compile(&net).unwrap();
    let blob = prorepair_host::compile::AlignedBlob::new(&blob);
    let model = blob.model().unwrap();
    let mut arena = vec![0f32; model.required_arena_len()];
    let (mut inside, mut outside) = (0, 0);
    for ((x, xf), dev) in points.iter().zip(&inputs).zip(&device) {
        let host = r.modules.eval(&net, x);
        let g = graph.run(xf).unwrap();
        let in_box = Indicator::Box(domain.clone()).fires(x, &[]);
        if in_box {
            inside += 1;
            assert!(
                !cases[0]
                    .unsafe_set
                    .iter()
                    .any(|c| c.worst_margin(&host) <= 0.0),
                "unsafe at {x:?}"
            );
            // The device's f32 outputs (what the proof's rounding bounds cover) too.
            let dev64: Vec<f64> = dev.iter().map(|&v| f64::from(v)).collect();
            assert!(
                !cases[0]
                    .unsafe_set
                    .iter()
                    .any(|c| c.worst_margin(&dev64) <= 0.0),
                "device output unsafe at {x:?}"
            );
            for ((h, t), d) in host.iter().zip(&g).zip(dev) {
                assert!(
                    (h - f64::from(*t)).abs() < 1e-4 && (h - f64::from(*d)).abs() < 1e-4,
                    "{host:?} {g:?} {dev:?}"
                );
            }
        } else {
            outside += 1;
            assert_eq!(host, net.forward(x), "host, outside the box");
            let b = base_tract.run(xf).unwrap();
            assert_eq!(
                g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "tract at {x:?}"
            );
            let mut out = vec![0f32; 5];
            model.evaluate(xf, &mut arena, &mut out).unwrap();
            assert_eq!(
                dev.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "device at {x:?}"
            );
        }
    }
    assert!(
        inside > 250 && outside > 250,
        "{inside} inside, {outside} outside"
    );
    for p in [comb_path, base_path] {
        let _ = std::fs::remove_file(p);
    }
}

/// A std edge device runs a kind-2 patch through the same tract entry point as a
/// weight-delta patch (`patch::tract::load_patched`): on 400 inputs, half inside the
/// indicator box, its outputs equal the device core's to f32 rounding (both evaluate in
/// f32; their summation orders differ), and outside the box they equal the base network
/// under tract bit for bit. A damaged patch is refused, naming it.
#[test]
fn tract_adapter_runs_the_kind2_patch_like_the_device_core() {
    let Some((net, r)) = prorepair_tests::repair_n21_prop2_modules() else {
        return;
    };
    let onnx = testing::data_path(&testing::acasxu_onnx(2, 1)).unwrap();
    let regions = r.outcomes[0].partition.clone();
    let emitted = patch::modules::emit(&net, &r.modules, 1, &regions).expect("emits");
    let graph = patch::tract::load_patched(&onnx, &emitted.bytes, "kind2.patch")
        .expect("the tract adapter takes a kind-2 patch");
    assert_eq!(graph.network, net, "the base is unchanged");
    // The base exported as the patched graph's base part is, for bit-for-bit outputs.
    let shape = export::onnx::declared_input_shape(&onnx).unwrap();
    let base_path = std::env::temp_dir().join(format!(
        "prorepair-pm-tract-base-{}.onnx",
        std::process::id()
    ));
    std::fs::write(
        &base_path,
        export::to_onnx_bytes(&net, Some(&shape)).unwrap(),
    )
    .unwrap();
    let base_tract = TractModel::load(&base_path).expect("tract loads the base");
    let _ = std::fs::remove_file(&base_path);
    let Indicator::Box(domain) = &r.modules.entries[0].0 else {
        panic!("a box indicator")
    };
    let mut s = 7u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    let inputs: Vec<Vec<f32>> = (0..400)
        .map(|k| {
            (0..5)
                .map(|d| {
                    let t = next();
                    if k % 2 == 0 {
                        let (l, u) = (domain.lower[d] as f32, domain.upper[d] as f32);
                        l + t * (u - l)
                    } else {
                        t - 0.5
                    }
                })
                .collect()
        })
        .collect();
    let device = patch::modules::eval_device(&net, &emitted.bytes, &inputs).expect("device eval");
    let (mut inside, mut outside) = (0, 0);
    for (x, dev) in inputs.iter().zip(&device) {
        let t = graph.run(x).unwrap();
        assert_eq!(t.len(), dev.len());
        for (a, b) in t.iter().zip(dev) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{t:?} vs {dev:?} at {x:?}"
            );
        }
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        if Indicator::Box(domain.clone()).fires(&x64, &[]) {
            inside += 1;
        } else {
            outside += 1;
            let b = base_tract.run(x).unwrap();
            assert_eq!(
                t.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "outside the box at {x:?}"
            );
        }
    }
    assert!(
        inside >= 150 && outside >= 150,
        "{inside} inside, {outside} outside"
    );
    let mut bad = emitted.bytes.clone();
    bad[40] ^= 1;
    let err = patch::tract::load_patched(&onnx, &bad, "kind2.patch").unwrap_err();
    assert!(err.to_string().contains("kind2.patch"), "{err}");
}
