//! Branch-and-bound throughput on fixed ACAS Xu instances: verdict, time, sub-boxes and
//! sub-boxes per second for each, one worker thread (so the figure is per core).
//!
//! ```text
//! cargo build -p prorepair-host --example bab_profile
//! $CARGO_TARGET_DIR/debug/examples/bab_profile [TIMEOUT_S]
//! ```
//!
//! Instances: VNN-COMP N3,3 and N4,2 property 2 (hold, thin margins), N2,2 / N2,8 / N4,9
//! property 1 (hold), and N4,5 / N2,2 property 2 with every non-COC output lifted so the
//! sampled minimum score is +0.05 / +0.02 (what a repaired network looks like to
//! `verify`). Never part of the test suite.

use std::time::Duration;

use prorepair_host::spec::Property;
use prorepair_host::verify::{self, Options};
use prorepair_host::{import, testing};

fn main() {
    let timeout: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { verify::cache_thread_count(Some(1)) };
    let Some(data) = testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent (set PROREPAIR_DATA)");
        return;
    };
    let runs: [(u32, u32, &str, Option<f64>); 7] = [
        (3, 3, "prop_2", None),
        (4, 2, "prop_2", None),
        (2, 2, "prop_1", None),
        (2, 8, "prop_1", None),
        (4, 9, "prop_1", None),
        (4, 5, "prop_2", Some(0.05)),
        (2, 2, "prop_2", Some(0.02)),
    ];
    println!("| instance | verdict | time (s) | sub-boxes | sub-boxes/s |");
    println!("|---|---|---|---|---|");
    let (mut total_t, mut total_b) = (0.0, 0u64);
    for (a, b, prop, lift) in runs {
        let mut net = import::load(&data.join(testing::acasxu_onnx(a, b))).expect("import");
        let spec = Property::from_vnnlib(&data.join(format!("acasxu/vnnlib/{prop}.vnnlib")))
            .expect("spec");
        let cases = verify::cases_of(&net, &spec).expect("cases");
        if let Some(delta) = lift {
            // Lift outputs 1..4 so that the sampled minimum of max_j (y_j - y_0) is delta.
            let c = &cases[0];
            let mut rng = verify::falsify::rng(7);
            let min_score = (0..20_000)
                .map(|_| {
                    let x = verify::falsify::random_point(&mut rng, &c.lower, &c.upper);
                    let y = net.forward(&x);
                    (1..5)
                        .map(|j| y[j] - y[0])
                        .fold(f64::NEG_INFINITY, f64::max)
                })
                .fold(f64::INFINITY, f64::min);
            if let Some(prorepair_host::model::Layer::Dense(d)) = net.layers.last_mut() {
                for j in 1..5 {
                    d.bias[j] += delta - min_score;
                }
            }
        }
        let r = verify::verify_cases(
            &net,
            &cases,
            &Options {
                timeout: Duration::from_secs_f64(timeout),
                threads: Some(1),
                ..Options::default()
            },
        );
        let name = match lift {
            Some(d) => format!("N{a},{b} {prop} lifted +{d}"),
            None => format!("N{a},{b} {prop}"),
        };
        total_t += r.stats.time_s;
        total_b += r.stats.branches;
        println!(
            "| {name} | {} | {:.2} | {} | {:.0} |",
            r.verdict.status(),
            r.stats.time_s,
            r.stats.branches,
            r.stats.branches as f64 / r.stats.time_s.max(1e-9)
        );
    }
    println!(
        "total: {total_t:.2} s, {total_b} sub-boxes, {:.0} sub-boxes/s",
        total_b as f64 / total_t.max(1e-9)
    );
}
