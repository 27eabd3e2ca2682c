//! `prorepair-host demo`: the whole story on a built-in, deterministic example that needs
//! no files.
//!
//! 1. A small collision-avoidance controller (5 normalised sensor inputs: distance,
//!    bearing, intruder heading, own and intruder speed; 5 advisory scores, the LOWEST
//!    wins, as in ACAS Xu) is trained in seconds with candle on a synthetic rule, with a
//!    planted defect: close, head-on encounters were labelled "clear of conflict" in the
//!    training data.
//! 2. `verify` finds the violation of the safety property "close and head-on,
//!    clear-of-conflict must not be the advisory" and shows the confirmed counterexample.
//! 3. `repair::repair` (ProRepair) repairs the network; the same sound checker then
//!    proves the property.
//! 4. The weight-delta patch is emitted against the compiled base blob, applied through
//!    the device core (base blob in place, patched layers in RAM), and the outputs before
//!    and after are shown on the counterexample, with fidelity measured elsewhere.
//! 5. A corrupted patch is refused and the running model keeps running.
//!
//! Everything is seeded; a run never depends on files or the clock (except the reported
//! times). Exit 0 when the repair is proven, 20 when it is not (then nothing is claimed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{CliError, Outcome, report};
use crate::compile::AlignedBlob;
use crate::model::{Dense, Layer, Network};
use crate::repair::{self, RepairOptions, RepairProperty};
use crate::verify::{self, Verdict};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also write a machine-readable summary to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the emitted patch here too (it is always built in memory).
    #[arg(long, value_name = "PATCH")]
    out: Option<PathBuf>,
}

const ADVISORIES: [&str; 5] = [
    "clear-of-conflict",
    "weak left",
    "weak right",
    "strong left",
    "strong right",
];

/// Hidden widths of the controller.
const HIDDEN: usize = 16;

/// The region of the planted defect in the training data (close, nearly head-on).
const DEFECT_LOWER: [f64; 5] = [-1.0, -0.3, -1.0, -1.0, -1.0];
const DEFECT_UPPER: [f64; 5] = [-0.55, 0.3, 1.0, 1.0, 1.0];

/// The safety property's input box (inside the defect region).
pub const PROPERTY_LOWER: [f64; 5] = [-0.85, -0.05, -0.1, -0.1, -0.1];
/// Upper corner of the property box.
pub const PROPERTY_UPPER: [f64; 5] = [-0.75, 0.05, 0.1, 0.1, 0.1];

/// The repair settings of the demo: the defaults (split `auto`, 2% of the parameters,
/// the margin-driven phase with `verify` as the proof) with the demo's own domain and a
/// 40 s cap. Measured: proven in one training round, 7 parameters changed.
pub fn repair_options() -> RepairOptions {
    RepairOptions {
        timeout: Duration::from_secs(40),
        fidelity_domain: Some(crate::bounds::BoxBounds::new(vec![-1.0; 5], vec![1.0; 5])),
        fidelity_eval_samples: 2000,
        ..RepairOptions::default()
    }
}

/// The rule the controller should follow: far away, clear of conflict; close, turn away
/// from the intruder, strongly when it is ahead.
fn rule(x: &[f64]) -> usize {
    let (rho, theta) = (x[0], x[1]);
    if rho > -0.2 {
        0
    } else if theta.abs() < 0.5 {
        if theta >= 0.0 { 4 } else { 3 }
    } else if theta > 0.0 {
        2
    } else {
        1
    }
}

/// The label in the (poisoned) training data: in the defect region, every other
/// sample says clear-of-conflict.
fn training_label(x: &[f64], k: usize) -> usize {
    if crate::verify::in_box(x, &DEFECT_LOWER, &DEFECT_UPPER) && k.is_multiple_of(2) {
        0
    } else {
        rule(x)
    }
}

fn candle_err(e: candle_core::Error) -> CliError {
    CliError::Internal(format!("training the demo controller: {e}"))
}

/// Train the built-in controller (5 -> 16 -> 16 -> 5, ReLU) on the poisoned data:
/// full-batch AdamW on the cross-entropy of the NEGATED scores (lowest score wins).
/// Deterministic: seeded data and initialisation, single-threaded CPU arithmetic.
pub fn builtin_controller() -> Result<Network, CliError> {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let n = 3000;
    let mut xs = Vec::with_capacity(n * 5);
    let mut ys = Vec::with_capacity(n);
    for k in 0..n {
        // A third of the samples close in (where the advisories differ).
        let x: Vec<f64> = (0..5)
            .map(|j| {
                if j == 0 && k.is_multiple_of(3) {
                    rng.random_range(-1.0..-0.2)
                } else {
                    rng.random_range(-1.0..1.0)
                }
            })
            .collect();
        ys.push(training_label(&x, k / 3) as u32);
        xs.extend(x);
    }
    let dev = Device::Cpu;
    let x = Tensor::from_vec(xs, (n, 5), &dev).map_err(candle_err)?;
    let y = Tensor::from_vec(ys, n, &dev).map_err(candle_err)?;
    let sizes = [(5, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 5)];
    let mut vars = Vec::new();
    for &(i, o) in &sizes {
        let scale = (2.0 / i as f64).sqrt();
        let w: Vec<f64> = (0..i * o)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect();
        vars.push(
            Var::from_tensor(&Tensor::from_vec(w, (o, i), &dev).map_err(candle_err)?)
                .map_err(candle_err)?,
        );
        vars.push(Var::zeros(o, DType::F64, &dev).map_err(candle_err)?);
    }
    let forward = |vars: &[Var]| -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (k, pair) in vars.chunks(2).enumerate() {
            h = h
                .matmul(&pair[0].as_tensor().t()?)?
                .broadcast_add(pair[1].as_tensor())?;
            if k + 1 < vars.len() / 2 {
                h = h.relu()?;
            }
        }
        Ok(h)
    };
    let params = ParamsAdamW {
        lr: 0.01,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut opt = AdamW::new(vars.clone(), params).map_err(candle_err)?;
    for _ in 0..600 {
        let scores = forward(&vars).map_err(candle_err)?;
        let logits = scores.neg().map_err(candle_err)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y).map_err(candle_err)?;
        opt.backward_step(&loss).map_err(candle_err)?;
    }
    let mut layers = Vec::new();
    for (k, (pair, &(i, o))) in vars.chunks(2).zip(&sizes).enumerate() {
        let w: Vec<f64> = pair[0]
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle_err)?;
        let b: Vec<f64> = pair[1].as_tensor().to_vec1().map_err(candle_err)?;
        layers.push(Layer::Dense(
            Dense::new(i, o, w, b).map_err(CliError::Internal)?,
        ));
        if k + 1 < sizes.len() {
            layers.push(Layer::Relu);
        }
    }
    Network::new(vec![5], layers).map_err(|e| CliError::Internal(e.to_string()))
}

/// The safety property as VNN-LIB: over the property box, the unsafe set is "COC is
/// the advisory" (Y_0 is the lowest score).
pub fn property_vnnlib() -> String {
    let mut text = String::from(
        "; Close and head-on: clear-of-conflict must not be the advisory (lowest score).\n",
    );
    for i in 0..5 {
        text.push_str(&format!("(declare-const X_{i} Real)\n"));
    }
    for i in 0..5 {
        text.push_str(&format!("(declare-const Y_{i} Real)\n"));
    }
    for i in 0..5 {
        text.push_str(&format!(
            "(assert (>= X_{i} {:?}))\n(assert (<= X_{i} {:?}))\n",
            PROPERTY_LOWER[i], PROPERTY_UPPER[i]
        ));
    }
    for k in 1..5 {
        text.push_str(&format!("(assert (<= Y_0 Y_{k}))\n"));
    }
    text
}

fn advisory(scores: &[f64]) -> usize {
    scores
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

fn fmt_scores(y: &[f32]) -> String {
    let parts: Vec<String> = y.iter().map(|v| format!("{v:7.3}")).collect();
    format!("[{}]", parts.join(", "))
}

/// Run `demo`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let internal = |e: &dyn std::fmt::Display| CliError::Internal(e.to_string());
    let start = Instant::now();

    // 1. Train.
    let net = builtin_controller()?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let test: Vec<Vec<f64>> = (0..2000)
        .map(|_| (0..5).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let clean: Vec<&Vec<f64>> = test
        .iter()
        .filter(|x| !crate::verify::in_box(x, &DEFECT_LOWER, &DEFECT_UPPER))
        .collect();
    let accuracy = clean
        .iter()
        .filter(|x| advisory(&net.forward(x)) == rule(x))
        .count() as f64
        / clean.len() as f64;
    println!("1. Trained a collision-avoidance controller with candle: {net}");
    println!(
        "   {} parameters, {:.1}% agreement with the rule outside the poisoned region ({:.1} s).",
        net.parameter_count(),
        100.0 * accuracy,
        start.elapsed().as_secs_f64()
    );
    println!("   Planted defect: close, head-on encounters were labelled clear-of-conflict.");

    // 2. Verify: violated, with a confirmed counterexample.
    let property = crate::spec::vnnlib::parse_str(&property_vnnlib(), Path::new("demo.vnnlib"))
        .map_err(|e| internal(&e))?;
    let options = verify::Options {
        timeout: Duration::from_secs(20),
        ..verify::Options::default()
    };
    let before = verify::verify(&net, &property, &options).map_err(|e| internal(&e))?;
    println!(
        "2. verify \"close and head-on: clear-of-conflict must not be the advisory\": {}",
        before.verdict.status()
    );
    let Verdict::Violated {
        counterexample,
        output,
        ..
    } = &before.verdict
    else {
        return Err(CliError::Internal(format!(
            "the planted defect was not found (verdict {})",
            before.verdict.status()
        )));
    };
    if !property.is_counterexample(counterexample, &net.forward(counterexample)) {
        return Err(CliError::Internal(
            "the counterexample is not confirmed by the forward pass".into(),
        ));
    }
    println!("   counterexample x = {counterexample:.3?}");
    println!(
        "   scores {output:.3?} -> advisory {}",
        ADVISORIES[advisory(output)]
    );

    // 3. Repair, then verify again with the same sound checker.
    let rp = RepairProperty::from_spec("demo", &property, &net).map_err(|e| internal(&e))?;
    let outcome = repair::repair(&net, &[rp], &repair_options()).map_err(|e| internal(&e))?;
    let after = verify::verify(&outcome.network, &property, &options).map_err(|e| internal(&e))?;
    println!(
        "3. repair (ProRepair, split at layer {}): {} in {:.1} s, {} parameters changed, {} sub-properties",
        outcome.split_layer,
        if outcome.verified {
            "proven"
        } else {
            "NOT proven"
        },
        outcome.time_s,
        outcome.changed_parameters,
        outcome.subproperties
    );
    println!(
        "   verify on the repaired network: {}",
        after.verdict.status()
    );
    if !outcome.verified || after.verdict != Verdict::Holds {
        println!("   the repair is not proven: no patch is emitted.");
        return Ok(Outcome::Unknown);
    }

    // 4. Emit the patch against the compiled base blob and apply it in the device core.
    let regions = vec![(PROPERTY_LOWER.to_vec(), PROPERTY_UPPER.to_vec())];
    let emitted =
        crate::patch::emit(&net, &outcome.network, 1, &regions).map_err(|e| internal(&e))?;
    let share = 100.0 * emitted.bytes.len() as f64 / emitted.base_blob.len() as f64;
    println!(
        "4. Patch: {} bytes ({share:.1}% of the {}-byte model blob), sequence 1, {} layer(s) changed: {}",
        emitted.bytes.len(),
        emitted.base_blob.len(),
        emitted.layers.len(),
        emitted
            .layers
            .iter()
            .map(|l| format!(
                "#{} {} {} ({} of {} values)",
                l.index, l.kind, l.encoding, l.entries, l.values
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(path) = &args.out {
        report::write_output(path, &emitted.bytes)?;
    }
    let blob = AlignedBlob::new(&emitted.base_blob);
    let base = blob.model().map_err(|e| internal(&e))?;
    let patch = prorepair_core::Patch::from_bytes(&emitted.bytes).map_err(|e| internal(&e))?;
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let patched = base
        .with_patch(&patch, &mut ram)
        .map_err(|e| internal(&e))?;
    println!(
        "   applied by the device core: base blob in place, {} bytes of RAM for the patched layers",
        patch.required_ram_bytes()
    );
    let mut arena = vec![0.0f32; base.required_arena_len()];
    let mut eval = |m: &prorepair_core::Model<'_>, x: &[f64]| -> Result<Vec<f32>, CliError> {
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut out = vec![0.0f32; m.output_len()];
        m.evaluate(&x32, &mut arena, &mut out)
            .map_err(|e| internal(&e))?;
        Ok(out)
    };
    let y0 = eval(&base, counterexample)?;
    let y1 = eval(&patched, counterexample)?;
    let adv = |y: &[f32]| advisory(&y.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    println!("   on the counterexample, device outputs:");
    println!(
        "     before {} -> {}",
        fmt_scores(&y0),
        ADVISORIES[adv(&y0)]
    );
    println!(
        "     after  {} -> {}",
        fmt_scores(&y1),
        ADVISORIES[adv(&y1)]
    );
    if adv(&y1) == 0 {
        return Err(CliError::Internal(
            "the patched device model still advises clear-of-conflict on the counterexample".into(),
        ));
    }
    // Fidelity: inputs of the whole domain outside the repaired box.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut same, mut total, mut rule_before, mut rule_after) = (0usize, 0usize, 0usize, 0usize);
    while total < 10_000 {
        let x: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
        if crate::verify::in_box(&x, &PROPERTY_LOWER, &PROPERTY_UPPER) {
            continue;
        }
        let (a, b) = (adv(&eval(&base, &x)?), adv(&eval(&patched, &x)?));
        same += usize::from(a == b);
        rule_before += usize::from(a == rule(&x));
        rule_after += usize::from(b == rule(&x));
        total += 1;
    }
    let fidelity = same as f64 / total as f64;
    println!(
        "   fidelity on {total} random inputs outside the repaired box: advisory unchanged on {:.2}%",
        100.0 * fidelity
    );
    println!(
        "   (agreement with the rule there: {:.1}% before, {:.1}% after)",
        100.0 * rule_before as f64 / total as f64,
        100.0 * rule_after as f64 / total as f64
    );

    // 5. A corrupted patch is refused; the patched model keeps running.
    let mut corrupted = emitted.bytes.clone();
    let flip = corrupted.len() / 2;
    corrupted[flip] ^= 0x10;
    let refused = match prorepair_core::Patch::from_bytes(&corrupted) {
        Ok(_) => {
            return Err(CliError::Internal(
                "a bit-flipped patch was accepted".into(),
            ));
        }
        Err(e) => e,
    };
    let stale = match patched.with_patch(&patch, &mut vec![0.0; patch.required_ram_len()]) {
        Ok(_) => return Err(CliError::Internal("a replayed patch was accepted".into())),
        Err(e) => e,
    };
    let still = eval(&patched, counterexample)?;
    println!(
        "5. One flipped bit in the patch: refused ({refused}); the same patch again: refused ({stale});"
    );
    println!(
        "   the running model keeps its outputs ({}). Total {:.1} s.",
        ADVISORIES[adv(&still)],
        start.elapsed().as_secs_f64()
    );

    if let Some(path) = &args.json {
        let summary = json!({
            "status": "holds",
            "parameters": net.parameter_count(),
            "rule_agreement_outside_defect": accuracy,
            "verify_before": before.verdict.status(),
            "counterexample": {"input": counterexample, "output": output},
            "repair": {
                "verified": outcome.verified,
                "time_s": outcome.time_s,
                "changed_parameters": outcome.changed_parameters,
                "subproperties": outcome.subproperties,
                "split_layer": outcome.split_layer,
            },
            "verify_after": after.verdict.status(),
            "patch": {
                "bytes": emitted.bytes.len(),
                "base_blob_bytes": emitted.base_blob.len(),
                "share_of_blob": share / 100.0,
                "layers": emitted.layers,
                "ram_bytes": patch.required_ram_bytes(),
            },
            "device_outputs_on_counterexample": {"before": y0, "after": y1},
            "fidelity": {"samples": total, "advisory_agreement": fidelity},
            "corrupted_patch_error": refused.to_string(),
            "replayed_patch_error": stale.to_string(),
            "time_s": start.elapsed().as_secs_f64(),
        });
        report::write_json(path, &summary)?;
    }
    Ok(Outcome::Ok)
}
