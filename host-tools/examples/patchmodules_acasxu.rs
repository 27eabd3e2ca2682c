//! Benchmark: AdvRepair-style patch modules on ACAS Xu `prop_2`, every network where it
//! is violated (`expected_results.csv`: 39).
//!
//! Per network: status of the per-sub-box sound check, sub-boxes, time, module
//! parameters, then `verify` (complete) on the in-box equivalent network (base + module as
//! one straight-line network, exported to ONNX and re-imported), and the share of random
//! inputs inside the box whose advisory (argmin) the module changes.
//!
//! ```text
//! cargo run --release -p prorepair-host --example patchmodules_acasxu -- [TIMEOUT_S] [A,B] [HIDDEN]
//! ```

use std::io::Write;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use prorepair_host::repair::patchmodules::{self, ModuleOptions};
use prorepair_host::spec::Property;
use prorepair_host::{export, import, testing, verify};

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().collect();
    let timeout: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120.0);
    let only = args.get(2).filter(|s| s.as_str() != "all").cloned();
    let hidden: Vec<usize> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![8]);
    let Some(data) = testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent");
        return;
    };
    let expected =
        std::fs::read_to_string(data.join("expected_results.csv")).expect("expected_results.csv");
    let mut jobs: Vec<(u32, u32)> = testing::acasxu_indices()
        .filter(|&(a, b)| {
            let key = format!("ACASXU_run2a_{a}_{b}_batch_2000.onnx,prop_2.vnnlib,sat");
            expected.lines().any(|l| l.contains(&key))
        })
        .collect();
    if let Some(o) = only {
        jobs.retain(|&(a, b)| format!("{a},{b}") == o);
    }
    let spec = Property::from_vnnlib(&data.join("acasxu/vnnlib/prop_2.vnnlib")).expect("spec");
    println!(
        "| network | status | sub-boxes | time (s) | module params | patch bytes | verify (in-box ONNX) | advisory changed in box |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut ok, mut times) = (0, Vec::new());
    for &(a, b) in &jobs {
        let net = import::load(&data.join(testing::acasxu_onnx(a, b))).expect("import");
        let cases = verify::cases_of(&net, &spec).expect("fits");
        let named: Vec<(String, verify::Case)> = cases
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (format!("prop_2#{i}"), c))
            .collect();
        let options = ModuleOptions {
            hidden: hidden.clone(),
            timeout: Duration::from_secs_f64(timeout),
            ..Default::default()
        };
        let r = match patchmodules::repair_modules(&net, &named, &options) {
            Ok(r) => r,
            Err(e) => {
                println!("| N{a},{b} | error: {e} | | | | | | |");
                continue;
            }
        };
        let o = &r.outcomes[0];
        let (ind, module) = &r.modules.entries[0];
        let patchmodules::Indicator::Box(domain) = ind else {
            unreachable!("property-guided")
        };
        // `verify` on the in-box network, through ONNX and back.
        let comb = patchmodules::combined_network(&net, module, domain).expect("combined");
        let verdict = (|| -> Result<&'static str, String> {
            let bytes = export::onnx::to_onnx_bytes(&comb, Some(&[1, 1, 1, 5]))
                .map_err(|e| e.to_string())?;
            let path =
                std::env::temp_dir().join(format!("pm_acas_{a}_{b}_{}.onnx", std::process::id()));
            std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
            let back = import::load(&path).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&path);
            let rep = verify::verify(
                &back,
                &spec,
                &verify::Options {
                    timeout: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(rep.verdict.status())
        })()
        .unwrap_or("error");
        let patch_bytes = patch_size(&net, &r.modules, o);
        // Advisory (argmin) changes inside the box, on 10,000 seeded points.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut changed = 0;
        let samples = 10_000;
        for _ in 0..samples {
            let x: Vec<f64> = (0..5)
                .map(|d| rng.random_range(domain.lower[d]..=domain.upper[d]))
                .collect();
            let y0 = net.forward(&x);
            let y1 = r.modules.eval(&net, &x);
            let argmin = |y: &[f64]| (0..y.len()).min_by(|&p, &q| y[p].total_cmp(&y[q]));
            if argmin(&y0) != argmin(&y1) {
                changed += 1;
            }
        }
        if o.status == "holds" && verdict == "holds" {
            ok += 1;
        }
        times.push(r.time_s);
        println!(
            "| N{a},{b} | {} | {} | {:.2} | {} | {} | {} | {:.2}% |",
            o.status,
            o.sub_boxes,
            r.time_s,
            r.modules.parameter_count(),
            patch_bytes.map_or("-".into(), |v| v.to_string()),
            verdict,
            100.0 * changed as f64 / samples as f64
        );
        let _ = std::io::stdout().flush();
    }
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        println!(
            "\nprop_2: {ok}/{} repaired with patch modules and verified; time median {:.2} s, max {:.2} s",
            jobs.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}

/// Size of the emitted kind-2 patch (the module, its box, the sub-boxes as verified
/// regions).
fn patch_size(
    net: &prorepair_host::Network,
    m: &patchmodules::PatchModules,
    o: &patchmodules::ModuleOutcome,
) -> Option<usize> {
    prorepair_host::patch::modules::emit(net, m, 1, &o.partition)
        .ok()
        .map(|e| e.bytes.len())
}
