//! Benchmark: `verify` on the exported patch-modules ONNX graph (issue 6), ACAS Xu
//! `prop_2`, every network where it is violated (`expected_results.csv`: 39).
//!
//! Per network: repair with one box-indicator module (`repair --strategy patch-modules`),
//! export base + indicator + module as ONNX (what `apply --onnx-out` writes), read the
//! file back as a piecewise model (`import::load_model`) and verify it by cell
//! decomposition (`verify::piecewise`, what `verify` runs on such a file).
//!
//! ```text
//! cargo run -p prorepair-host --example patchmodules_verify_onnx -- [REPAIR_TIMEOUT_S] [VERIFY_TIMEOUT_S] [A,B]
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use prorepair_host::import::{self, Model};
use prorepair_host::repair::patchmodules::{self, ModuleOptions};
use prorepair_host::spec::Property;
use prorepair_host::verify::{self, piecewise};
use prorepair_host::{export, patch, testing};

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().collect();
    let repair_timeout: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120.0);
    let verify_timeout: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(120.0);
    let only = args.get(3).cloned();
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
    let dir = std::env::temp_dir().join(format!("prorepair-pm-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "| network | repair | repair time (s) | ONNX bytes | verify on exported ONNX | cells (with module) | branches | verify time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut holds, mut times) = (0, Vec::new());
    for &(a, b) in &jobs {
        let onnx = data.join(testing::acasxu_onnx(a, b));
        let net = import::load(&onnx).expect("import");
        let cases = verify::cases_of(&net, &spec).expect("fits");
        let named: Vec<(String, verify::Case)> = cases
            .iter()
            .cloned()
            .map(|c| ("prop_2".to_string(), c))
            .collect();
        let options = ModuleOptions {
            timeout: Duration::from_secs_f64(repair_timeout),
            ..Default::default()
        };
        let t = Instant::now();
        let r = match patchmodules::repair_modules(&net, &named, &options) {
            Ok(r) => r,
            Err(e) => {
                println!("| N{a},{b} | error: {e} | | | | | | |");
                continue;
            }
        };
        let repair_s = t.elapsed().as_secs_f64();
        let shape = export::onnx::declared_input_shape(&onnx);
        let bytes = patch::modules::to_onnx(&net, &r.modules, shape.as_deref()).expect("export");
        let path = dir.join(format!("N{a}_{b}.onnx"));
        std::fs::write(&path, &bytes).expect("write");
        let t = Instant::now();
        let pw = match import::load_model(&path) {
            Ok(Model::Piecewise(p)) => p,
            Ok(Model::Network(_)) => panic!("read as a straight-line network"),
            Err(e) => panic!("{e}"),
        };
        let rep = piecewise::verify_piecewise(
            &pw,
            &cases,
            &verify::Options {
                timeout: Duration::from_secs_f64(verify_timeout),
                ..Default::default()
            },
            piecewise::MAX_CELLS,
        );
        let verify_s = t.elapsed().as_secs_f64();
        let status = rep.report.verdict.status();
        if status == "holds" {
            holds += 1;
            times.push(verify_s);
        }
        println!(
            "| N{a},{b} | {} | {repair_s:.2} | {} | {status} | {} ({}) | {} | {verify_s:.2} |",
            if r.all_hold() { "holds" } else { "unknown" },
            bytes.len(),
            rep.cells,
            rep.cells_with_modules,
            rep.report.stats.branches,
        );
        let _ = std::io::stdout().flush();
        let _ = std::fs::remove_file(&path);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let max = times.last().copied().unwrap_or(f64::NAN);
    println!(
        "\nprop_2: `verify` says holds on {holds}/{} exported patch-modules ONNX graphs; \
         verify time median {median:.2} s, max {max:.2} s",
        jobs.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}
