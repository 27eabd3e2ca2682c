//! Benchmark: our pure CROWN and alpha-CROWN against auto_LiRPA's timings recorded in
//! `../shared/data/reference/acasxu_bounds.json` (all 180 ACAS Xu records), one thread.
//!
//! Run: `cargo run -p prorepair-host --example bounds_bench` (the dev profile builds
//! prorepair-host and its dependencies at opt-level 3; `--release` gives the same code).
//! Prints per-method total and median times, ours vs the reference, the speed-up ratio,
//! and the average output widths (alpha-CROWN on all 180 cases).

use std::collections::HashMap;
use std::time::Instant;

use prorepair_host::bounds::{self, BoxBounds, Method};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    // `--crown-only` skips alpha-CROWN (minutes) when only the CROWN figure is wanted.
    let crown_only = std::env::args().any(|a| a == "--crown-only");
    let Some(data) = prorepair_host::testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent (set PROREPAIR_DATA)");
        return Ok(());
    };
    let json: Value = serde_json::from_str(&std::fs::read_to_string(
        data.join("reference/acasxu_bounds.json"),
    )?)?;
    let records = json["records"].as_array().ok_or("no records")?;
    let mut nets = HashMap::new();
    let (mut ours_crown, mut ref_crown, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_alpha, mut ref_alpha) = (Vec::new(), Vec::new());
    let (mut width_alpha, mut width_ref_alpha, mut width_crown, mut width_ref_crown) =
        (0.0, 0.0, 0.0, 0.0);
    for record in records {
        let name = record["net"].as_str().ok_or("net name")?.to_string();
        if !nets.contains_key(&name) {
            nets.insert(
                name.clone(),
                prorepair_host::import::load(&data.join("acasxu/onnx").join(&name))?,
            );
        }
        let net = &nets[&name];
        let input = BoxBounds::new(
            floats(&record["lower_input"]),
            floats(&record["upper_input"]),
        );

        // Median of 5 calls, as the reference's crown_time_ms.
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(bounds::output_bounds(net, &input, Method::CrownPure)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ours = median(times);
        let reference = record["crown_time_ms"].as_f64().ok_or("crown_time_ms")?;
        ours_crown.push(ours);
        ref_crown.push(reference);
        ratios.push(reference / ours);
        let crown = bounds::output_bounds(net, &input, Method::Crown)?;
        width_crown += crown.mean_width();
        width_ref_crown += BoxBounds::new(
            floats(&record["crown"]["lower"]),
            floats(&record["crown"]["upper"]),
        )
        .mean_width();

        if crown_only {
            continue;
        }
        let t = Instant::now();
        let alpha = bounds::output_bounds(net, &input, Method::AlphaCrown)?;
        ours_alpha.push(t.elapsed().as_secs_f64() * 1e3);
        ref_alpha.push(
            record["alpha_crown_time_ms"]
                .as_f64()
                .ok_or("alpha_crown_time_ms")?,
        );
        width_alpha += alpha.mean_width();
        width_ref_alpha += BoxBounds::new(
            floats(&record["alpha_crown"]["lower"]),
            floats(&record["alpha_crown"]["upper"]),
        )
        .mean_width();
    }
    let n = records.len() as f64;
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!("cases: {}", records.len());
    println!(
        "pure CROWN: ours total {:.1} ms (median {:.3} ms), auto_LiRPA total {:.1} ms (median {:.3} ms); \
         speed-up total {:.1}x, median per case {:.1}x, min per case {:.1}x",
        sum(&ours_crown),
        median(ours_crown.clone()),
        sum(&ref_crown),
        median(ref_crown.clone()),
        sum(&ref_crown) / sum(&ours_crown),
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    );
    if crown_only {
        println!(
            "average output width: CROWN ours {:.4} / ref {:.4}",
            width_crown / n,
            width_ref_crown / n
        );
        return Ok(());
    }
    println!(
        "alpha-CROWN: ours total {:.1} ms (median {:.2} ms), auto_LiRPA total {:.1} ms (median {:.1} ms); speed-up total {:.1}x",
        sum(&ours_alpha),
        median(ours_alpha.clone()),
        sum(&ref_alpha),
        median(ref_alpha.clone()),
        sum(&ref_alpha) / sum(&ours_alpha)
    );
    println!(
        "average output width: CROWN ours {:.4} / ref {:.4}; alpha-CROWN ours {:.4} / ref {:.4}",
        width_crown / n,
        width_ref_crown / n,
        width_alpha / n,
        width_ref_alpha / n
    );
    Ok(())
}
