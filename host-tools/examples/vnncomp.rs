//! VNN-COMP harness: run the verifier on the 186 ACAS Xu instances and the vnncomp-test
//! instances, each with its own timeout, compare with `expected_results.csv`, and write
//! the table and totals into the `## Verification (VNN-COMP ACAS Xu)` section of
//! `BENCHMARKS.md`.
//!
//! ```text
//! cargo run [--release] -p prorepair-host --example vnncomp -- [--filter STR] [--limit N]
//!     [--timeout-scale F] [--threads N] [--jobs J] [--no-write]
//! ```
//! `--jobs J` runs J instances at a time (each with `--threads` workers, default 1 when
//! J > 1).
//! ```text
//! ```
//! Never part of the test suite (it takes long).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prorepair_host::verify::{self, Method, Options, Verdict};

struct Row {
    instance: String,
    verdict: &'static str,
    expected: String,
    time_s: f64,
    note: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let filter = get("--filter");
    let limit: usize = get("--limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let scale: f64 = get("--timeout-scale")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let jobs: usize = get("--jobs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let threads: Option<usize> = get("--threads")
        .and_then(|s| s.parse().ok())
        .or((jobs > 1).then_some(1));
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { verify::cache_thread_count(threads) };
    let write = !args.iter().any(|a| a == "--no-write");
    let Some(data) = prorepair_host::testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent (set PROREPAIR_DATA)");
        return;
    };

    let mut expected: HashMap<(String, String), String> = HashMap::new();
    let exp_text =
        std::fs::read_to_string(data.join("expected_results.csv")).expect("expected_results.csv");
    for line in exp_text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 4 {
            expected.insert((f[1].to_string(), f[2].to_string()), f[3].to_string());
        }
    }
    // (benchmark dir, onnx, vnnlib, timeout)
    let mut instances: Vec<(PathBuf, PathBuf, String, String, f64)> = Vec::new();
    for (csv, onnx_dir, vnnlib_dir) in [
        (
            "acasxu/acasxu_instances.csv",
            "acasxu/onnx",
            "acasxu/vnnlib",
        ),
        (
            "vnncomp-test/test_instances.csv",
            "vnncomp-test",
            "vnncomp-test",
        ),
    ] {
        let text = std::fs::read_to_string(data.join(csv)).expect("instances csv");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let timeout: f64 = f[2].parse().expect("timeout");
            instances.push((
                data.join(onnx_dir).join(f[0]),
                data.join(vnnlib_dir).join(f[1]),
                f[0].into(),
                f[1].into(),
                timeout,
            ));
        }
    }
    let instances: Vec<_> = instances
        .into_iter()
        .filter(|i| {
            filter
                .as_ref()
                .is_none_or(|s| format!("{} {}", i.2, i.3).contains(s.as_str()))
        })
        .take(limit)
        .collect();

    let load_before = loadavg();
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Row>>> = instances
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(inst) = instances.get(i) else { break };
                    let row = run_instance(inst, &expected, scale, threads);
                    println!(
                        "{:<40} {:<9} expected {:<6} {:>8.2} s {}{}",
                        row.instance,
                        row.verdict,
                        row.expected,
                        row.time_s,
                        if contradicts(&row) {
                            "CONTRADICTION "
                        } else {
                            ""
                        },
                        row.note
                    );
                    let _ = std::io::stdout().flush();
                    *slots[i].lock().expect("no panics while held") = Some(row);
                }
            });
        }
    });
    let rows: Vec<Row> = slots
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect();
    let total = started.elapsed().as_secs_f64();
    let load = format!(
        "load average (1/5/15 min) {} at the start and {} at the end, from /proc/loadavg; \
         {jobs} instance(s) at a time, {} worker thread(s) each",
        load_before,
        loadavg(),
        threads.map_or("all".to_string(), |t| t.to_string())
    );
    let decided = rows
        .iter()
        .filter(|r| r.verdict == "holds" || r.verdict == "violated")
        .count();
    let contradictions = rows.iter().filter(|r| contradicts(r)).count();
    let acas: Vec<&Row> = rows
        .iter()
        .filter(|r| r.instance.starts_with("ACASXU"))
        .collect();
    let acas_decided = acas
        .iter()
        .filter(|r| r.verdict == "holds" || r.verdict == "violated")
        .count();
    println!(
        "decided {decided}/{} (ACAS Xu {acas_decided}/{}), contradictions {contradictions}, total {total:.1} s",
        rows.len(),
        acas.len()
    );
    if write {
        // The profile this binary was built with (debug assertions: the dev profile,
        // which builds prorepair-host and its dependencies at opt-level 3).
        let profile = if cfg!(debug_assertions) {
            "(dev profile)"
        } else {
            "--release"
        };
        let command = format!(
            "cargo run {profile} -p prorepair-host --example vnncomp --{}",
            args.iter().map(|a| format!(" {a}")).collect::<String>()
        );
        write_section(
            &data,
            &rows,
            &command,
            &load,
            total,
            decided,
            contradictions,
            acas_decided,
            acas.len(),
        );
    }
}

type Instance = (PathBuf, PathBuf, String, String, f64);

fn run_instance(
    (onnx, vnnlib, onnx_name, vnnlib_name, timeout): &Instance,
    expected: &HashMap<(String, String), String>,
    scale: f64,
    threads: Option<usize>,
) -> Row {
    let exp = expected
        .get(&(onnx_name.clone(), vnnlib_name.clone()))
        .cloned()
        .unwrap_or_else(|| "?".into());
    let t0 = Instant::now();
    let (verdict, note) = match (
        prorepair_host::import::load(onnx),
        prorepair_host::spec::Property::from_vnnlib(vnnlib),
    ) {
        (Ok(net), Ok(prop)) => {
            let options = Options {
                method: Method::Complete,
                timeout: Duration::from_secs_f64(timeout * scale),
                threads,
                seed: 0,
                progress: None,
            };
            match verify::verify(&net, &prop, &options) {
                Ok(r) => {
                    let note = match &r.verdict {
                        Verdict::Unknown { reason } => reason.clone(),
                        Verdict::Violated {
                            counterexample,
                            output,
                            ..
                        } => {
                            // Re-check: the forward pass must reproduce the output.
                            assert_eq!(&net.forward(counterexample), output);
                            format!("{} branches", r.stats.branches)
                        }
                        Verdict::Holds => format!("{} branches", r.stats.branches),
                    };
                    (r.verdict.status(), note)
                }
                Err(e) => ("error", e.to_string()),
            }
        }
        (Err(e), _) => ("error", e.to_string()),
        (_, Err(e)) => ("error", e.to_string()),
    };
    Row {
        instance: format!(
            "{} {}",
            onnx_name.trim_end_matches("_batch_2000.onnx"),
            vnnlib_name
        ),
        verdict,
        expected: exp,
        time_s: t0.elapsed().as_secs_f64(),
        note,
    }
}

/// The first three fields of /proc/loadavg, or "unknown".
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A verdict that contradicts the expected one (holds where sat, violated where unsat).
fn contradicts(r: &Row) -> bool {
    (r.verdict == "holds" && r.expected == "sat")
        || (r.verdict == "violated" && r.expected == "unsat")
}

#[allow(clippy::too_many_arguments)]
fn write_section(
    _data: &Path,
    rows: &[Row],
    command: &str,
    load: &str,
    total: f64,
    decided: usize,
    contradictions: usize,
    acas_decided: usize,
    acas_total: usize,
) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let heading = "## Verification (VNN-COMP ACAS Xu)";
    let mut s = format!("{heading}\n\n");
    s += &format!(
        "Command (the shared 2-core machine, each instance with its VNN-COMP timeout times the \
         scale in the command):\n\n```\n{command}\n```\n\nMachine load during the run: {load}.\n\n"
    );
    s += &format!(
        "Totals: decided {decided} of {} instances (ACAS Xu: {acas_decided} of {acas_total}); \
         contradictions with expected_results.csv: {contradictions}; total wall time {total:.1} s.\n\n",
        rows.len()
    );
    s += "| instance | verdict | expected | time (s) |\n|---|---|---|---|\n";
    for r in rows {
        let exp = match r.expected.as_str() {
            "sat" => "sat (violated)",
            "unsat" => "unsat (holds)",
            other => other,
        };
        s += &format!(
            "| {} | {} | {} | {:.2} |\n",
            r.instance, r.verdict, exp, r.time_s
        );
    }
    s += "\n";
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i + 1);
            // Dated `### ` subsections (history written by hand) stay after the new table.
            let section = &old[start + heading.len()..end];
            let kept = section.find("\n### ").map_or("", |i| &section[i + 1..]);
            format!("{}{}{}{}", &old[..start], s, kept, &old[end..])
        }
        None if old.is_empty() => format!("# Benchmarks\n\n{s}"),
        None => format!("{}\n{s}", old.trim_end()),
    };
    if let Err(e) = std::fs::write(&path, new) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
