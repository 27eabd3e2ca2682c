//! Local-robustness repair of the VNN-COMP 2021 mnist_fc instances (issue 5, Build 2):
//! the harness behind the "VNN-COMP mnist_fc" table of BENCHMARKS.md.
//!
//! ```text
//! cargo run -p prorepair-host --example repair_mnistfc -- [256x2|256x4|256x6] \
//!     [PROP,...|violated] [--timeout S] [--verify-timeout S]
//! ```
//!
//! Each instance is an L∞ box of radius 0.03 or 0.05 over all 784 pixels of one MNIST
//! image (`mnist/vnnlib/mnistfc/prop_<i>_<eps>.vnnlib`). `violated` (the default) first
//! runs `verify` on all 30 properties of the network and repairs those it finds
//! violated; each is repaired alone by `regionwise::repair_local_boxes` with every 10th
//! correctly classified `mnist_5k` image as fidelity input, and the claim is that
//! repair's own `verify` run. Printed: the verdict before, proven or not, time, changed
//! parameters, and the clean test accuracy (10,000 images) before and after.
//! `PR_BOX_*` variables override the repair options (see `support/box_knobs.rs`).

#[path = "support/box_knobs.rs"]
mod box_knobs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prorepair_host::repair::{RepairProperty, regionwise};
use prorepair_host::tasks::mnist;
use prorepair_host::verify::{self, Verdict};

fn data(rel: &str) -> PathBuf {
    prorepair_host::testing::data_path(rel).unwrap_or_else(|| {
        eprintln!("../shared/data is absent");
        std::process::exit(2)
    })
}

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut net_name = "256x2".to_string();
    let mut which = "violated".to_string();
    let mut timeout = 30.0;
    let mut verify_timeout = 5.0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => timeout = it.next().and_then(|v| v.parse().ok()).expect("--timeout S"),
            "--verify-timeout" => {
                verify_timeout = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--verify-timeout S")
            }
            n if n.contains('x') && !n.contains('_') => net_name = n.to_string(),
            w => which = w.to_string(),
        }
    }
    let net_path = data(&format!("mnist/nets/mnist-net_{net_name}.onnx"));
    let net = prorepair_host::import::load(&net_path).expect("network");
    let test = mnist::test_set(&data("mnist")).expect("MNIST test set");
    let train = mnist::read_csv_255(&data("mnist/mnist_5k.csv.gz")).expect("mnist_5k");
    let acc0 = mnist::accuracy(&net, &test);
    let step = box_knobs::fidelity_step();
    let fidelity = mnist::correctly_classified(&net, &train, step);
    let all: Vec<String> = [0.03, 0.05]
        .iter()
        .flat_map(|e| (0..15).map(move |p| format!("{p}_{e}")))
        .collect();
    let names: Vec<String> = if which == "violated" || which == "all" {
        all
    } else {
        which.split(',').map(str::to_string).collect()
    };
    println!(
        "network mnist-net_{net_name}: clean test accuracy {:.2}% ({} fidelity images)",
        100.0 * acc0,
        fidelity.len()
    );
    println!(
        "| property | before | after | time (s) | rounds | changed params | acc. after | drop |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut attempted, mut proven) = (0, 0);
    for name in names {
        let spec_path = data(&format!("mnist/vnnlib/mnistfc/prop_{name}.vnnlib"));
        let spec = prorepair_host::spec::Property::from_vnnlib(&spec_path).expect("VNN-LIB");
        let property = RepairProperty::from_spec(&name, &spec, &net).expect("property");
        // The screen: repair only what verify finds violated (or cannot decide, when
        // asked for `all`).
        let t = Instant::now();
        let before = verify::verify_cases(
            &net,
            &property.cases,
            &verify::Options {
                timeout: Duration::from_secs_f64(verify_timeout),
                ..verify::Options::default()
            },
        );
        let status = before.verdict.status();
        if matches!(before.verdict, Verdict::Holds)
            || (which == "violated" && !matches!(before.verdict, Verdict::Violated { .. }))
        {
            eprintln!(
                "prop_{name}: {status} before ({:.2} s), skipped",
                t.elapsed().as_secs_f64()
            );
            continue;
        }
        attempted += 1;
        let options = regionwise::LocalBoxOptions {
            timeout: Duration::from_secs_f64(timeout),
            fidelity_inputs: fidelity.clone(),
            ..box_knobs::tuned_box(regionwise::LocalBoxOptions::default())
        };
        let out = regionwise::repair_local_boxes(&net, std::slice::from_ref(&property), &options)
            .expect("repair");
        if let Ok(dir) = std::env::var("PR_SAVE_DIR") {
            // For inspection with `prorepair-host verify`, proven or not.
            let bytes =
                prorepair_host::export::onnx::to_onnx_bytes(&out.network, None).expect("export");
            std::fs::write(format!("{dir}/mnistfc_{net_name}_{name}.onnx"), bytes)
                .expect("write the repaired network");
        }
        let acc = mnist::accuracy(&out.network, &test);
        if out.verified {
            proven += 1;
        }
        let p = &out.properties[0];
        println!(
            "| prop_{name} | {status} | {} | {:.2} | {} | {} | {:.2}% | {:.2}% |",
            if out.verified {
                "holds (repaired)"
            } else {
                p.after.as_str()
            },
            out.time_s,
            out.rounds,
            out.changed_parameters,
            100.0 * acc,
            100.0 * (acc0 - acc)
        );
        if let Some(r) = &p.reason {
            eprintln!("prop_{name}: {r}");
        }
    }
    println!("proven {proven} of {attempted} repaired instances");
}
