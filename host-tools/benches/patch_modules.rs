//! Device cost of patch modules: the base forward pass vs base + indicator + modules, on
//! ACAS Xu N2,1 with the module the patch-modules repair of property 2 produces (5 -> 8
//! -> 5, one box indicator), side by side in one run. Two inputs: one inside the box
//! (the module runs) and one outside (only the indicator is checked).
//!
//! `cargo bench -p prorepair-host --bench patch_modules`
//!
//! Rounds interleave the measurements; the median and fastest of 31 rounds are printed
//! with the ratios to the base pass (the machine is shared and noisy).

use std::hint::black_box;
use std::time::{Duration, Instant};

use prorepair_core::kernels;
use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
use prorepair_host::compile::{AlignedBlob, compile};
use prorepair_host::repair::patchmodules::{self, Indicator, ModuleOptions};
use prorepair_host::spec::Property;
use prorepair_host::testing::{acasxu_onnx, data_path};
use prorepair_host::{import, patch, verify};

fn time_per_call(iters: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn calibrate(target_ns: f64, mut f: impl FnMut()) -> usize {
    let once = time_per_call(10, &mut f).max(1.0);
    ((target_ns / once) as usize).clamp(10, 10_000_000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (Some(onnx), Some(spec)) = (
        data_path(&acasxu_onnx(2, 1)),
        data_path("acasxu/vnnlib/prop_2.vnnlib"),
    ) else {
        return;
    };
    let net = import::load(&onnx).expect("import");
    let prop = Property::from_vnnlib(&spec).expect("spec");
    let cases = verify::cases_of(&net, &prop).expect("fits");
    let named: Vec<_> = cases
        .into_iter()
        .map(|c| ("prop_2".to_string(), c))
        .collect();
    let options = ModuleOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let r = patchmodules::repair_modules(&net, &named, &options).expect("repair");
    assert!(
        r.all_hold(),
        "the repair must hold before it is benchmarked"
    );
    let emitted = patch::modules::emit(&net, &r.modules, 1, &[]).expect("emit");
    let blob = AlignedBlob::new(&compile(&net).expect("compile"));
    let model = blob.model().expect("blob");
    let parsed = ModulePatch::from_bytes(&emitted.bytes).expect("patch");
    let mut ram = vec![0f32; parsed.required_ram_len()];
    let mm = ModulesModel::new(&model, &parsed, &mut ram).expect("bind");
    let Indicator::Box(b) = &r.modules.entries[0].0 else {
        unreachable!()
    };
    let inside: Vec<f32> = b
        .lower
        .iter()
        .zip(&b.upper)
        .map(|(l, u)| (0.5 * (l + u)) as f32)
        .collect();
    let outside: Vec<f32> = vec![0.1, 0.2, -0.3, 0.05, -0.1];
    assert!(!Indicator::Box(b.clone()).fires(
        &outside.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        &[]
    ));

    let mut arena = vec![0f32; mm.required_arena_len()];
    let mut out = vec![0f32; 5];
    println!(
        "kernels: {}; module params {}",
        kernels::best().isa,
        r.modules.parameter_count()
    );
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "ACAS Xu N2,1 (batch 1)", "base", "+mod in box", "+mod outside", "in/base", "out/base"
    );
    let base_call = |x: &[f32], arena: &mut [f32], out: &mut [f32]| {
        model.evaluate(black_box(x), arena, out).unwrap();
        black_box(&out);
    };
    let mod_call = |x: &[f32], arena: &mut [f32], out: &mut [f32]| {
        mm.evaluate(black_box(x), arena, out).unwrap();
        black_box(&out);
    };
    let bi = calibrate(2e6, || base_call(&inside, &mut arena, &mut out));
    let mi = calibrate(2e6, || mod_call(&inside, &mut arena, &mut out));
    let (mut base, mut inb, mut outb) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..31 {
        base.push(time_per_call(bi, || {
            base_call(&inside, &mut arena, &mut out)
        }));
        inb.push(time_per_call(mi, || {
            mod_call(&inside, &mut arena, &mut out)
        }));
        outb.push(time_per_call(mi, || {
            mod_call(&outside, &mut arena, &mut out)
        }));
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for (kind, b0, b1, b2) in [
        (
            "median",
            median(base.clone()),
            median(inb.clone()),
            median(outb.clone()),
        ),
        ("best", best(&base), best(&inb), best(&outb)),
    ] {
        println!(
            "{:<34} {:>7.3} us {:>9.3} us {:>9.3} us {:>8.3}x {:>8.3}x",
            kind,
            b0 / 1e3,
            b1 / 1e3,
            b2 / 1e3,
            b1 / b0,
            b2 / b0
        );
    }
}
