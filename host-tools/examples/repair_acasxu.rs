//! Benchmark: ProRepair on ACAS Xu.
//!
//! - `prop_2` on every network where it is violated (`expected_results.csv`: 39).
//! - `prop_2_coc_minimal` on N2,1 .. N5,9 (36).
//!
//! Per network: status from the sound checker, sub-properties, time, changed parameters,
//! advisory fidelity on 10,000 random inputs of the whole domain outside the box. Prints a
//! markdown table (rows as they finish) and a summary.
//!
//! ```text
//! cargo run -p prorepair-host --example repair_acasxu -- [prop_2|coc|all|n29|probe|bias|demo] [TIMEOUT_S] [A,B[:C,D...]]
//! ```
//!
//! `n29`: N2,9 repaired for properties 2 and 8 together, with 1, 3 and 4 as guards (they
//! hold before and must still hold after). `probe 0 A,B`: the sampled prop_2 score of the
//! original network and `verify`'s effort when its margin is lifted by a constant.
//! `bias 0 A,B[:C,D]`: what lowering COC's output bias costs in advisory agreement (see
//! `bias_probe`).
//! `demo`: the built-in demo controller on the default options. Environment overrides
//! for tuning: see `tuned`; `PROREPAIR_TRACE=1` prints every round.

use std::io::Write;
use std::time::Duration;

use prorepair_host::bounds::BoxBounds;
use prorepair_host::model::Network;
use prorepair_host::repair::{self, RepairOptions, RepairProperty};
use prorepair_host::spec::Property;
use prorepair_host::{import, testing};

fn acasxu_domain() -> BoxBounds {
    let pi = std::f64::consts::PI;
    let (min, max) = (
        [0.0, -pi, -pi, 100.0, 0.0],
        [60760.0, pi, pi, 1200.0, 1200.0],
    );
    let mean = [19791.091, 0.0, 0.0, 650.0, 600.0];
    let range = [60261.0, 2.0 * pi, 2.0 * pi, 1100.0, 1200.0];
    BoxBounds::new(
        (0..5).map(|i| (min[i] - mean[i]) / range[i]).collect(),
        (0..5).map(|i| (max[i] - mean[i]) / range[i]).collect(),
    )
}

/// The ACAS Xu setting of this harness (before the environment overrides): `f_c` = the
/// output layer alone (split 12; trainable: the last 4 Dense layers before it) and
/// fidelity weight 100 in the margin-driven phase. Measured on prop_2 (BENCHMARKS.md,
/// Repair, session 6): with the paper's split (10) the trained margin stays ~0.02, which
/// `verify` rarely proves within 20 s; with 12 the same training reaches ~0.04 within a
/// few Adam steps and `verify` proves it in about a second, and the polish step buys
/// back the fidelity the fast change costs. The target margin doubles (not x1.25) when
/// `verify` cannot decide: with K = 12 training reaches a larger margin, and on 4
/// networks unproven at x1.25 it proved 2 where x1.25 proved 0 side by side. Session 7:
/// 512 first anchors (sampled points below the margin) and 256 per round instead of 128
/// and 64: on prop_2_coc_minimal the whole box must move (all 2,155 samples below the
/// target) and with 64 a round the worst score swung between -0.12 and -0.01 for eight
/// rounds; with 256 three rounds brought it above 0 and `verify` decided. Session 8: the
/// first `verify` gets 2 s instead of 4 s (below the ceiling; at it `verify` gets all the
/// time left): side by side on 12 networks at load 0.3-2, N4,8 proven in 7.8 s (not in
/// 20 s with 4 s), the others proven as soon or sooner (branch and bound switches to smear
/// at half its budget, which ends easy proofs sooner).
fn acasxu_options(timeout: f64, net: &Network, props: &[RepairProperty]) -> RepairOptions {
    tuned(RepairOptions {
        timeout: Duration::from_secs_f64(timeout),
        fidelity_domain: Some(acasxu_domain()),
        split_layer: repair::SplitLayer::Layer(split_for(net, props)),
        global_fidelity_weight: 100.0,
        global_margin_growth: 2.0,
        initial_anchors: 512,
        global_anchors_per_round: 256,
        complete_budget: Duration::from_secs(2),
        ..RepairOptions::default()
    })
}

/// The repair, and for a network `split_for` gives 11: with half the budget first; if
/// that is not proven with >= 99% advisory agreement on validation inputs (2,000 seeded
/// inputs of the domain outside the boxes, a seed apart from the report's 10,000), split
/// 12 with the time left, and the proven one that agrees more on the validation inputs
/// is kept. `time_s` and `proven_at_s` count both attempts. Why: on N1,x split 11 gave
/// 96.5-98.5% where 12 gave 92-94% on three networks, but 82% where 12 gave 95-97% on
/// two (BENCHMARKS.md, Repair, session 7).
fn repair_with_fallback(
    net: &Network,
    rp: &RepairProperty,
    options: RepairOptions,
) -> Result<repair::RepairOutcome, repair::RepairError> {
    let props = std::slice::from_ref(rp);
    if options.split_layer != repair::SplitLayer::Layer(11)
        || std::env::var("PROREPAIR_SPLIT").is_ok()
    {
        return repair::repair(net, props, &options);
    }
    let cases: Vec<_> = rp.cases.iter().collect();
    let validation = repair::sample_outside(&acasxu_domain(), &cases, 2000, 0x7a1);
    let agree = |o: &repair::RepairOutcome| {
        repair::measure_fidelity(net, &o.network, &validation).argmin_agreement
    };
    let start = std::time::Instant::now();
    let first = repair::repair(
        net,
        props,
        &RepairOptions {
            timeout: options.timeout / 2,
            ..options.clone()
        },
    )?;
    if first.verified && agree(&first) >= 0.99 {
        return Ok(first);
    }
    let spent = start.elapsed();
    let mut second = repair::repair(
        net,
        props,
        &RepairOptions {
            timeout: options.timeout.saturating_sub(spent),
            split_layer: repair::SplitLayer::Layer(12),
            ..options
        },
    )?;
    let total = start.elapsed().as_secs_f64();
    let keep_first = first.verified && (!second.verified || agree(&first) >= agree(&second));
    if keep_first {
        let mut first = first;
        first.time_s = total;
        return Ok(first);
    }
    second.proven_at_s = second.proven_at_s.map(|t| t + spent.as_secs_f64());
    second.time_s = total;
    Ok(second)
}

/// 11 (`f_c` = the last ReLU and the output layer) when the network's outputs barely
/// vary over the boxes (median spread below 0.01: ACAS Xu N1,x on prop_2, ~0.0015), else
/// 12. Why: on N1,4 the last hidden layer is off on most of the box and of the domain,
/// the output there is the output layer's bias, and advisories outside the box are
/// decided by gaps of ~0.001; with 12 the fidelity term (on the post-ReLU features)
/// barely charges a unit switched on slightly outside, which flips them (N1,4: 93-94%
/// agreement); with 11 it charges the pre-activations (N1,4: 97.9-98.2%). On N3,4 and
/// N4,5 (spread 0.04) 11 cost fidelity or the proof (BENCHMARKS.md, Repair, session 7).
fn split_for(net: &Network, props: &[RepairProperty]) -> usize {
    let mut spread: Vec<f64> = props
        .iter()
        .flat_map(|p| &p.cases)
        .flat_map(|c| {
            repair::sample_outside(
                &BoxBounds::new(c.lower.clone(), c.upper.clone()),
                &[],
                256,
                7,
            )
        })
        .map(|x| {
            let y = net.forward(&x);
            y.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                - y.iter().copied().fold(f64::INFINITY, f64::min)
        })
        .collect();
    spread.sort_by(f64::total_cmp);
    let median = spread.get(spread.len() / 2).copied().unwrap_or(1.0);
    if median < 0.01 { 11 } else { 12 }
}

/// Overrides for tuning runs: PROREPAIR_SPLIT, _LAMBDA, _GLOBAL_LAMBDA, _LR, _STEPS,
/// _RADIUS, _FIDN, _BOUNDW (certified-training weight), _BOUND_BOXES, _DECISIONW, _F32
/// (0: f64 training), _OUTPUT_LIFT (0: off), ...
fn tuned(mut o: RepairOptions) -> RepairOptions {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = get("PROREPAIR_SPLIT") {
        o.split_layer = repair::SplitLayer::Layer(v as usize);
    }
    if let Some(v) = get("PROREPAIR_LAMBDA") {
        o.fidelity_weight = v;
    }
    if let Some(v) = get("PROREPAIR_LR") {
        o.learning_rate = v;
    }
    if let Some(v) = get("PROREPAIR_F32") {
        o.f32_training = v != 0.0;
    }
    if let Some(v) = get("PROREPAIR_STEPS") {
        o.repair_steps = v as usize;
    }
    if let Some(v) = get("PROREPAIR_RADIUS") {
        o.radius = v;
    }
    if let Some(v) = get("PROREPAIR_LAYERS") {
        o.trainable_layers = v as usize;
    }
    if let Some(v) = get("PROREPAIR_ANCHOR_MARGIN") {
        o.anchor_margin = v;
    }
    if let Some(v) = get("PROREPAIR_INIT_ANCHORS") {
        o.initial_anchors = v as usize;
    }
    if let Some(v) = get("PROREPAIR_CHANGE") {
        o.change_fraction = v;
    }
    if let Some(v) = get("PROREPAIR_OUTW") {
        o.output_weight = v;
    }
    if let Some(v) = get("PROREPAIR_COMPLETE") {
        o.complete_check = v != 0.0;
    }
    if let Some(v) = get("PROREPAIR_GLOBAL_MARGIN") {
        o.global_margin = v;
    }
    if let Some(v) = get("PROREPAIR_OUTPUT_LIFT") {
        o.output_lift = v;
    }
    if let Some(v) = get("PROREPAIR_GLOBAL_REL") {
        o.global_margin_relative = v;
    }
    if let Some(v) = get("PROREPAIR_CEILING") {
        o.global_margin_ceiling = v;
    }
    if let Some(v) = get("PROREPAIR_GROWTH") {
        o.global_margin_growth = v;
    }
    if let Some(v) = get("PROREPAIR_COMPLETE_BUDGET") {
        o.complete_budget = Duration::from_secs_f64(v);
    }
    if let Some(v) = get("PROREPAIR_BOUNDW") {
        o.bound_weight = v;
    }
    if let Some(v) = get("PROREPAIR_GLOBAL_LAMBDA") {
        o.global_fidelity_weight = v;
    }
    if let Some(v) = get("PROREPAIR_DECISIONW") {
        o.decision_weight = v;
    }
    if let Some(v) = get("PROREPAIR_BOUND_BOXES") {
        o.bound_boxes_per_round = v as usize;
    }
    if let Some(v) = get("PROREPAIR_POLISH_CHUNK") {
        o.polish_chunk = v as usize;
    }
    if let Some(v) = get("PROREPAIR_GLOBAL_OUTW") {
        o.global_output_weight = v;
    }
    if let Some(v) = get("PROREPAIR_POLISH") {
        o.polish_share = v;
    }
    if let Some(v) = get("PROREPAIR_POLISH_FACTOR") {
        o.polish_fidelity_factor = v;
    }
    if let Some(v) = get("PROREPAIR_ROUND_ANCHORS") {
        o.global_anchors_per_round = v as usize;
    }
    if let Some(v) = get("PROREPAIR_FIDN") {
        o.fidelity_train_samples = v as usize;
    }
    o
}

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("all", String::as_str).to_string();
    let timeout: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let Some(data) = testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent");
        return;
    };
    if which == "demo" {
        demo();
        return;
    }
    if which == "probe" {
        probe(&data, args.get(3).map_or("1,1", String::as_str));
        return;
    }
    if which == "leaves" {
        // `leaves SECS PATH.onnx`: the true scores inside the sub-boxes branch and bound
        // leaves open on a saved network (see `open_leaf_scores`).
        let path = args.get(3).expect("leaves SECS PATH.onnx");
        let net = import::load(std::path::Path::new(path)).expect("import");
        let spec = Property::from_vnnlib(&data.join("acasxu/vnnlib/prop_2.vnnlib")).expect("spec");
        let rp = RepairProperty::from_spec("prop_2", &spec, &net).expect("fits");
        open_leaf_scores(&net, &rp, timeout);
        return;
    }
    if which == "bias" {
        bias_probe(&data, args.get(3).map_or("2,7", String::as_str));
        return;
    }
    if which == "n29" {
        n29(&data, timeout);
        return;
    }
    let expected =
        std::fs::read_to_string(data.join("expected_results.csv")).expect("expected_results.csv");
    let violated: Vec<(u32, u32)> = testing::acasxu_indices()
        .filter(|&(a, b)| {
            let onnx = format!("ACASXU_run2a_{a}_{b}_batch_2000.onnx,prop_2.vnnlib,sat");
            expected.lines().any(|l| l.contains(&onnx))
        })
        .collect();
    let mut jobs: Vec<(&str, u32, u32)> = Vec::new();
    if which == "all" || which == "prop_2" {
        jobs.extend(violated.iter().map(|&(a, b)| ("prop_2", a, b)));
    }
    if which == "all" || which == "coc" {
        jobs.extend(
            testing::acasxu_indices()
                .filter(|&(a, _)| a >= 2)
                .map(|(a, b)| ("prop_2_coc_minimal", a, b)),
        );
    }
    // Optional third argument: only network "a,b".
    // A subset: `A,B` or several as `A,B:C,D`.
    if let Some(only) = args.get(3) {
        let wanted: Vec<&str> = only.split(':').collect();
        jobs.retain(|&(_, a, b)| wanted.contains(&format!("{a},{b}").as_str()));
    }
    println!(
        "| property | network | status | sub-properties | rounds | to proof (s) | time (s) | changed params | patch bytes (% of blob) | fidelity (advisory) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut times: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut repaired: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut changed: Vec<usize> = Vec::new();
    let mut fidelity: Vec<f64> = Vec::new();
    let mut proofs: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for (prop, a, b) in jobs {
        // The ONNX file, or the same network from its .nnet twin (normalised inputs too).
        let net = import::load(&data.join(testing::acasxu_onnx(a, b)))
            .or_else(|_| import::load(&data.join(testing::acasxu_nnet(a, b))))
            .expect("import");
        let spec = Property::from_vnnlib(&data.join(format!("acasxu/vnnlib/{prop}.vnnlib")))
            .expect("spec");
        let rp = RepairProperty::from_spec(prop, &spec, &net).expect("fits");
        let options = acasxu_options(timeout, &net, std::slice::from_ref(&rp));
        let entry = repaired.entry(prop).or_default();
        entry.1 += 1;
        match repair_with_fallback(&net, &rp, options) {
            Ok(out) => {
                let status = if out.verified {
                    "repaired, holds"
                } else {
                    "NOT repaired"
                };
                if out.verified {
                    entry.0 += 1;
                    changed.push(out.changed_parameters);
                    fidelity.push(out.fidelity.argmin_agreement);
                }
                times.entry(prop).or_default().push(out.time_s);
                // The weight-delta patch `repair --out` would write (with the case boxes
                // as its verified regions), against the compiled base blob.
                let regions: Vec<(Vec<f64>, Vec<f64>)> = rp
                    .cases
                    .iter()
                    .map(|c| (c.lower.clone(), c.upper.clone()))
                    .collect();
                let patch = match prorepair_host::patch::emit(&net, &out.network, 1, &regions) {
                    // Nothing changed (e.g. the property stayed "unknown" and no sampled
                    // point fell below the margin): there is no patch to measure.
                    _ if out.changed_parameters == 0 => "- (nothing changed)".to_string(),
                    Ok(e) => format!(
                        "{} ({:.1}%)",
                        e.bytes.len(),
                        100.0 * e.bytes.len() as f64 / e.base_blob.len() as f64
                    ),
                    Err(e) => format!("error: {e}"),
                };
                if let Some(t) = out.proven_at_s {
                    proofs.entry(prop).or_default().push(t);
                }
                // Diagnosis: `PROREPAIR_SAVE=DIR` writes the final network (repaired or
                // not) as DIR/N{a}_{b}.onnx, for `prorepair-host verify` on it.
                if let Ok(dir) = std::env::var("PROREPAIR_SAVE") {
                    match prorepair_host::export::onnx::to_onnx_bytes(&out.network, None) {
                        Ok(bytes) => {
                            let path = std::path::Path::new(&dir).join(format!("N{a}_{b}.onnx"));
                            if let Err(e) = std::fs::write(&path, bytes) {
                                eprintln!("{}: {e}", path.display());
                            }
                        }
                        Err(e) => eprintln!("export N{a},{b}: {e}"),
                    }
                }
                // Diagnosis (`PROREPAIR_REVERIFY=S`): would `verify` decide the final
                // network of a failed repair with S seconds? Separates "the proof ran out
                // of time" from "the network is not safe" (stderr only).
                if let Some(s) = std::env::var("PROREPAIR_REVERIFY")
                    .ok()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|_| !out.verified)
                {
                    let r = prorepair_host::verify::verify_cases(
                        &out.network,
                        &rp.cases,
                        &prorepair_host::verify::Options {
                            method: prorepair_host::verify::Method::Complete,
                            timeout: Duration::from_secs_f64(s),
                            ..Default::default()
                        },
                    );
                    eprintln!(
                        "reverify N{a},{b} ({s} s): {} after {} branches in {:.2} s",
                        r.verdict.status(),
                        r.stats.branches,
                        r.stats.time_s
                    );
                    open_leaf_scores(&out.network, &rp, s);
                }
                println!(
                    "| {prop} | N{a},{b} | {status} | {} | {} | {} | {:.2} | {} | {patch} | {:.2}% |",
                    out.subproperties,
                    out.rounds,
                    out.proven_at_s.map_or("-".into(), |t| format!("{t:.2}")),
                    out.time_s,
                    out.changed_parameters,
                    100.0 * out.fidelity.argmin_agreement
                );
            }
            Err(e) => println!("| {prop} | N{a},{b} | error: {e} | | | | | | | |"),
        }
        let _ = std::io::stdout().flush();
    }
    println!();
    for (prop, ts) in &mut times {
        ts.sort_by(f64::total_cmp);
        let (ok, n) = repaired[prop];
        println!(
            "{prop}: {ok}/{n} repaired and verified; time median {:.2} s, max {:.2} s",
            ts[ts.len() / 2],
            ts.last().copied().unwrap_or(0.0)
        );
        if let Some(ps) = proofs.get_mut(prop) {
            ps.sort_by(f64::total_cmp);
            let geq99 = fidelity.iter().filter(|&&f| f >= 0.99).count();
            println!(
                "{prop}: of the repaired, time to proof median {:.2} s, max {:.2} s; fidelity >= 99% on {geq99}",
                ps[ps.len() / 2],
                ps.last().copied().unwrap_or(0.0)
            );
        }
    }
    changed.sort_unstable();
    fidelity.sort_by(f64::total_cmp);
    if !changed.is_empty() {
        println!(
            "changed parameters: median {}, max {}; advisory fidelity: min {:.2}%, median {:.2}%",
            changed[changed.len() / 2],
            changed[changed.len() - 1],
            100.0 * fidelity[0],
            100.0 * fidelity[fidelity.len() / 2]
        );
    }
}

/// Diagnosis: the true desired-set score (`max_j (y_j - y_0)` for prop_2: the property
/// margin) inside the sub-boxes branch and bound leaves open after `secs` seconds: the
/// minimum over each leaf's centre and 16 seeded points, as quantiles over the leaves,
/// next to the sampled score of the whole box. Low scores in the open leaves mean the
/// network is thin there (training's job); scores like the box's mean the bounds are loose.
fn open_leaf_scores(net: &Network, rp: &RepairProperty, secs: f64) {
    let desired = |y: &[f64]| {
        // prop_2's unsafe set is one conjunction "y_0 >= y_j for all j".
        rp.cases[0].unsafe_set[0].worst_margin(y)
    };
    let q = |v: &mut Vec<f64>| -> String {
        v.sort_by(f64::total_cmp);
        let at = |f: f64| {
            v.get(((v.len() as f64 - 1.0) * f) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        format!(
            "{:.4} {:.4} {:.4} {:.4} {:.4}",
            at(0.0),
            at(0.1),
            at(0.5),
            at(0.9),
            at(1.0)
        )
    };
    for c in &rp.cases {
        let deadline = std::time::Instant::now() + Duration::from_secs_f64(secs);
        match prorepair_host::verify::bab::open_leaves(net, c, deadline, 1 << 20) {
            prorepair_host::verify::bab::Frontier::Open(leaves) => {
                let mut mins: Vec<f64> = leaves
                    .iter()
                    .enumerate()
                    .map(|(i, (lo, hi))| {
                        let mut pts = repair::sample_outside(
                            &BoxBounds::new(lo.clone(), hi.clone()),
                            &[],
                            16,
                            i as u64,
                        );
                        pts.push(lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect());
                        pts.iter()
                            .map(|x| desired(&net.forward(x)))
                            .fold(f64::INFINITY, f64::min)
                    })
                    .collect();
                let mut whole: Vec<f64> = repair::sample_outside(
                    &BoxBounds::new(c.lower.clone(), c.upper.clone()),
                    &[],
                    4096,
                    1,
                )
                .iter()
                .map(|x| desired(&net.forward(x)))
                .collect();
                let vol: f64 = leaves
                    .iter()
                    .map(|(lo, hi)| {
                        lo.iter()
                            .zip(hi)
                            .zip(c.lower.iter().zip(&c.upper))
                            .map(
                                |((l, h), (cl, cu))| {
                                    if cu > cl { (h - l) / (cu - cl) } else { 1.0 }
                                },
                            )
                            .product::<f64>()
                    })
                    .sum();
                eprintln!(
                    "open leaves after {secs} s: {} ({:.3}% of the box); leaf min score quantiles (0 .1 .5 .9 1) {}; whole box sampled {}",
                    leaves.len(),
                    100.0 * vol,
                    q(&mut mins),
                    q(&mut whole)
                );
            }
            prorepair_host::verify::bab::Frontier::Counterexample(x, y) => {
                eprintln!("open leaves: counterexample {x:?} -> {y:?}");
            }
        }
    }
}

/// N2,9: properties 2 and 8 repaired together; 1, 3 and 4 are guards.
fn n29(data: &std::path::Path, timeout: f64) {
    let net = import::load(&data.join(testing::acasxu_onnx(2, 9))).expect("import");
    let props: Vec<RepairProperty> = ["prop_2", "prop_8", "prop_1", "prop_3", "prop_4"]
        .iter()
        .map(|p| {
            let spec = Property::from_vnnlib(&data.join(format!("acasxu/vnnlib/{p}.vnnlib")))
                .expect("spec");
            RepairProperty::from_spec(p, &spec, &net).expect("fits")
        })
        .collect();
    let options = acasxu_options(timeout, &net, &props);
    match repair::repair(&net, &props, &options) {
        Ok(out) => {
            for p in &out.properties {
                println!(
                    "N2,9 {} ({}): before {}, after {}, {} sub-properties{}",
                    p.name,
                    // `repaired` says which role the property had, not the outcome
                    // (`after` is the outcome).
                    if p.repaired { "repair target" } else { "guard" },
                    p.before,
                    p.after,
                    p.subproperties,
                    p.reason
                        .as_deref()
                        .map_or(String::new(), |r| format!(" ({r})"))
                );
            }
            let regions: Vec<(Vec<f64>, Vec<f64>)> = props
                .iter()
                .flat_map(|p| &p.cases)
                .map(|c| (c.lower.clone(), c.upper.clone()))
                .collect();
            let patch = prorepair_host::patch::emit(&net, &out.network, 1, &regions)
                .map(|e| e.bytes.len())
                .unwrap_or(0);
            println!(
                "N2,9: verified {}, proven at {:?} s, {:.2} s, {} changed parameters, patch {patch} bytes, fidelity {:.2}%",
                out.verified,
                out.proven_at_s,
                out.time_s,
                out.changed_parameters,
                100.0 * out.fidelity.argmin_agreement
            );
        }
        Err(e) => println!("N2,9: error: {e}"),
    }
}

/// `probe A,B`: the sampled minimum of the prop_2 desired score `max_j (y_j - y_0)` over
/// the box and how `verify` fares on the network as it is (for calibrating margins).
fn probe(data: &std::path::Path, ab: &str) {
    use prorepair_host::verify;
    let (a, b) = ab.split_once(',').expect("A,B");
    let (a, b): (u32, u32) = (a.parse().expect("A"), b.parse().expect("B"));
    let net = import::load(&data.join(testing::acasxu_onnx(a, b))).expect("import");
    let spec = Property::from_vnnlib(&data.join("acasxu/vnnlib/prop_2.vnnlib")).expect("spec");
    let rp = RepairProperty::from_spec("prop_2", &spec, &net).expect("fits");
    let c = &rp.cases[0];
    let pts = repair::sample_outside(
        &BoxBounds::new(c.lower.clone(), c.upper.clone()),
        &[],
        100_000,
        1,
    );
    let mut scores: Vec<f64> = pts
        .iter()
        .map(|x| {
            let y = net.forward(x);
            (1..5)
                .map(|j| y[j] - y[0])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let spread: Vec<f64> = pts
        .iter()
        .take(2000)
        .map(|x| {
            let y = net.forward(x);
            y.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                - y.iter().cloned().fold(f64::INFINITY, f64::min)
        })
        .collect();
    println!(
        "N{a},{b}: score min {:.4}, 0.1% {:.4}, 1% {:.4}, median {:.4}; mean output spread {:.4}",
        scores[0],
        scores[100],
        scores[1000],
        scores[50_000],
        spread.iter().sum::<f64>() / spread.len() as f64
    );
    // Lift every non-COC output by delta: the min score rises by exactly delta, so this
    // shows how branch and bound's effort falls with the margin.
    // PROREPAIR_LIFTS="0.1,0.5,1" and PROREPAIR_PROBE_S (verify budget) override.
    let lifts: Vec<f64> = std::env::var("PROREPAIR_LIFTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0.0, 0.01, 0.02, 0.05, 0.1]);
    let budget = std::env::var("PROREPAIR_PROBE_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(10.0);
    for delta in lifts {
        let mut n2 = net.clone();
        if let Some(prorepair_host::model::Layer::Dense(d)) = n2.layers.last_mut() {
            for j in 1..5 {
                d.bias[j] += delta - scores[0].min(0.0);
            }
        }
        let r = verify::verify_cases(
            &n2,
            &rp.cases,
            &verify::Options {
                timeout: Duration::from_secs_f64(budget),
                ..verify::Options::default()
            },
        );
        println!(
            "N{a},{b} lifted to min score {:.3}: verify {} in {:.2} s, {} branches",
            scores[0].max(0.0) + delta,
            r.verdict.status(),
            r.stats.time_s,
            r.stats.branches
        );
    }
    if std::env::var("PROREPAIR_LIFTS").is_ok() {
        return;
    }
    let r = verify::verify_cases(
        &net,
        &rp.cases,
        &verify::Options {
            timeout: Duration::from_secs(20),
            ..verify::Options::default()
        },
    );
    println!(
        "N{a},{b}: verify {} in {:.2} s, {} branches",
        r.verdict.status(),
        r.stats.time_s,
        r.stats.branches
    );
}

/// `demo`: the built-in demo controller repaired with the default options (plus the
/// tuning overrides), to compare with the demo's own settings.
fn demo() {
    use prorepair_host::cli::demo;
    let net = demo::builtin_controller().expect("controller");
    let property = prorepair_host::spec::vnnlib::parse_str(
        &demo::property_vnnlib(),
        std::path::Path::new("demo.vnnlib"),
    )
    .expect("property");
    let rp = RepairProperty::from_spec("demo", &property, &net).expect("fits");
    let options = RepairOptions {
        fidelity_domain: Some(BoxBounds::new(vec![-1.0; 5], vec![1.0; 5])),
        fidelity_eval_samples: 2000,
        timeout: Duration::from_secs(40),
        ..tuned(RepairOptions::default())
    };
    let out = repair::repair(&net, &[rp], &options).expect("repair");
    println!(
        "demo: verified {} in {:.2} s, {} rounds, {} sub-properties, {} changed, fidelity {:.4}",
        out.verified,
        out.time_s,
        out.rounds,
        out.subproperties,
        out.changed_parameters,
        out.fidelity.argmin_agreement
    );
}

/// `bias 0 A,B[:C,D]`: what lowering the COC output's bias by `d` costs. Per network:
/// the sampled prop_2_coc_minimal score over its box (worst, median) and the advisory
/// agreement with the original on 10,000 domain inputs outside the box, per `d`.
fn bias_probe(data: &std::path::Path, which: &str) {
    let spec =
        Property::from_vnnlib(&data.join("acasxu/vnnlib/prop_2_coc_minimal.vnnlib")).expect("spec");
    for ab in which.split(':') {
        let (a, b) = ab.split_once(',').expect("A,B");
        let (a, b): (u32, u32) = (a.parse().expect("A"), b.parse().expect("B"));
        let net = import::load(&data.join(testing::acasxu_onnx(a, b))).expect("import");
        let rp = RepairProperty::from_spec("coc", &spec, &net).expect("fits");
        let case = &rp.cases[0];
        let outside = repair::sample_outside(&acasxu_domain(), &[case], 10_000, 0xb1a5);
        let inside = repair::sample_outside(
            &BoxBounds::new(case.lower.clone(), case.upper.clone()),
            &[],
            4096,
            3,
        );
        let mut line = format!("N{a},{b}:");
        for d in [0.0, 0.002, 0.005, 0.01, 0.02, 0.05] {
            let mut shifted = net.clone();
            if let Some(prorepair_host::model::Layer::Dense(l)) = shifted.layers.last_mut() {
                l.bias[0] -= d;
            }
            let agree = repair::measure_fidelity(&net, &shifted, &outside).argmin_agreement;
            let mut scores: Vec<f64> = inside
                .iter()
                .map(|x| {
                    // The property's margin: the least over its unsafe conjunctions.
                    let y = shifted.forward(x);
                    case.unsafe_set
                        .iter()
                        .map(|c| c.worst_margin(&y))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            scores.sort_by(f64::total_cmp);
            line += &format!(
                " d={d}: agree {:.2}% worst {:.4} median {:.4};",
                100.0 * agree,
                scores[0],
                scores[scores.len() / 2]
            );
        }
        println!("{line}");
    }
}
