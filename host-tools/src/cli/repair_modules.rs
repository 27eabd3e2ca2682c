//! `repair --strategy patch-modules`: AdvRepair-style indicator-plus-patch modules
//! ([`crate::repair::patchmodules`]). The base network is not changed: every violated
//! property gets a box indicator and a small MLP added to the logits inside its box.
//!
//! Properties that already hold (the complete checker, a quarter of the budget) get no
//! module, and are proven again on base + modules afterwards (a module may fire on
//! their inputs). `--indicator label|label-pair` trains one module per label (pair) instead,
//! firing on the original network's prediction ([`patchmodules::repair_modules_label`]).
//! Exit 0 only when every property holds (the sound per-sub-box check of base +
//! module); otherwise exit 20 and no file is written. `--out` writes the kind-2 patch,
//! `--onnx-out` the equivalent ONNX graph (indicator by comparisons and `Where`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::repair::{Args, IndicatorForm, sign_if_asked};
use super::{CliError, Outcome, report};
use crate::import::piecewise::Piecewise;
use crate::model::Network;
use crate::repair::RepairProperty;
use crate::repair::patchmodules::{self, LabelKind, ModuleOptions};
use crate::verify::{self, Case};

/// Run the patch-modules strategy on already-parsed properties.
pub(crate) fn run(
    args: &Args,
    net: &Network,
    properties: &[RepairProperty],
    signer: Option<&ed25519_dalek::SigningKey>,
) -> Result<Outcome, CliError> {
    // The option's value checked before the long work, the error naming the option.
    if args.feature_layer != 0 && args.indicator != IndicatorForm::Box {
        return Err(CliError::BadInput(
            "--feature-layer applies to --indicator box only (label modules read the input)".into(),
        ));
    }
    patchmodules::check_feature_layer(net, args.feature_layer)
        .map_err(|e| CliError::BadInput(format!("--feature-layer: {e}")))?;
    let start = Instant::now();
    let budget = Duration::from_secs_f64(args.timeout);
    // 1. Which properties are violated (or undecided) before?
    let mut before = Vec::new();
    let mut todo: Vec<(String, Case)> = Vec::new();
    for p in properties {
        let opts = verify::Options {
            timeout: budget.mul_f64(0.25 / properties.len().max(1) as f64),
            seed: args.seed,
            ..Default::default()
        };
        let rep = verify::verify_cases(net, &p.cases, &opts);
        before.push(rep.verdict.status());
        if rep.verdict != verify::Verdict::Holds {
            for (i, c) in p.cases.iter().enumerate() {
                let name = if p.cases.len() == 1 {
                    p.name.clone()
                } else {
                    format!("{}#{i}", p.name)
                };
                todo.push((name, c.clone()));
            }
        }
    }
    let options = ModuleOptions {
        hidden: args.module_hidden.clone(),
        timeout: budget.saturating_sub(start.elapsed()),
        seed: args.seed,
        feature_layer: args.feature_layer,
        ..Default::default()
    };
    let outcome = if todo.is_empty() {
        None
    } else {
        Some(
            match args.indicator {
                IndicatorForm::Box => patchmodules::repair_modules(net, &todo, &options),
                IndicatorForm::Label => {
                    patchmodules::repair_modules_label(net, &todo, &options, LabelKind::Label)
                }
                IndicatorForm::LabelPair => {
                    patchmodules::repair_modules_label(net, &todo, &options, LabelKind::LabelPair)
                }
            }
            .map_err(|e| match e {
                crate::repair::RepairError::Property { .. }
                | crate::repair::RepairError::Unsupported(_) => CliError::BadInput(e.to_string()),
                other => CliError::Internal(other.to_string()),
            })?,
        )
    };
    let mut all_hold = outcome.as_ref().is_none_or(|o| o.all_hold());
    // 2. A property that held before gets no module, but a module may fire on its inputs
    // (a box indicator overlapping its box; a label indicator anywhere), so it is proven
    // again on base + modules, by the same piecewise checker `verify` uses on the graph.
    let mut after: Vec<Option<&'static str>> = vec![None; properties.len()];
    if all_hold && let Some(o) = &outcome {
        let patched = Piecewise {
            base: net.clone(),
            modules: o.modules.clone(),
        };
        let held: Vec<usize> = (0..properties.len())
            .filter(|&i| before[i] == "holds")
            .collect();
        for (k, &i) in held.iter().enumerate() {
            // The time left, shared out; never less than the check before had.
            let share = budget
                .saturating_sub(start.elapsed())
                .div_f64((held.len() - k) as f64)
                .max(budget.mul_f64(0.25 / properties.len().max(1) as f64));
            let opts = verify::Options {
                timeout: share,
                seed: args.seed,
                ..Default::default()
            };
            let rep = verify::piecewise::verify_piecewise(
                &patched,
                &properties[i].cases,
                &opts,
                verify::piecewise::MAX_CELLS,
            );
            let status = rep.report.verdict.status();
            after[i] = Some(status);
            if status != "holds" {
                all_hold = false;
            }
        }
    }
    let mut props = Vec::new();
    for ((p, b), a) in properties.iter().zip(&before).zip(&after) {
        let cases: Vec<_> = outcome
            .iter()
            .flat_map(|o| &o.outcomes)
            .filter(|o| o.name == p.name || o.name.starts_with(&format!("{}#", p.name)))
            .collect();
        let status = match a {
            // Re-proven (or not) on base + modules.
            Some(after) => *after,
            None if cases.is_empty() && *b == "holds" => "holds",
            None if !cases.is_empty() && cases.iter().all(|c| c.status == "holds") => "holds",
            None => "unknown",
        };
        props.push(json!({
            "name": p.name,
            "status": status,
            "status_before": b,
            "repaired": !cases.is_empty(),
            "subproperties": cases.iter().map(|c| c.sub_boxes).sum::<usize>(),
            "rounds": cases.iter().map(|c| c.rounds).max().unwrap_or(0),
        }));
    }
    let modules = outcome.as_ref().map(|o| o.modules.clone());
    let mut value = json!({
        "status": if all_hold { "holds" } else { "unknown" },
        "strategy": "patch-modules",
        "model": args.model.display().to_string(),
        "properties": props,
        "modules": modules.as_ref().map_or(0, |m| m.entries.len()),
        "module_hidden": args.module_hidden,
        "feature_layer": args.feature_layer,
        "indicator": match args.indicator {
            IndicatorForm::Box => "box",
            IndicatorForm::Label => "label",
            IndicatorForm::LabelPair => "label-pair",
        },
        "module_parameters": modules.as_ref().map_or(0, |m| m.parameter_count()),
        "changed_parameters": 0,
        "subproperties": outcome.as_ref().map_or(0, |o| o.outcomes.iter().map(|c| c.sub_boxes).sum::<usize>()),
        "patch_size_bytes": null,
        "patch": null,
        "time_s": start.elapsed().as_secs_f64(),
    });
    if all_hold && let Some(m) = &modules {
        let mut outputs: Vec<(&Path, Vec<u8>)> = Vec::new();
        if let Some(out) = &args.out {
            let regions: Vec<(Vec<f64>, Vec<f64>)> = outcome
                .iter()
                .flat_map(|o| &o.outcomes)
                .flat_map(|o| o.partition.iter().cloned())
                .collect();
            let mut emitted = crate::patch::modules::emit(net, m, args.sequence, &regions)
                .map_err(|e| CliError::Internal(format!("emitting the patch: {e}")))?;
            sign_if_asked(&mut emitted.bytes, signer)?;
            value["patch_size_bytes"] = json!(emitted.bytes.len());
            value["patch"] = json!({
                "file": out.display().to_string(),
                "kind": "patch modules",
                "bytes": emitted.bytes.len(),
                "base_blob_bytes": emitted.base_blob.len(),
                "sequence": args.sequence,
                "modules": emitted.modules,
                "regions": emitted.regions,
            });
            outputs.push((out, emitted.bytes));
        }
        if let Some(out) = &args.onnx_out {
            let shape = crate::export::onnx::declared_input_shape(&args.model);
            let bytes = crate::patch::modules::to_onnx(net, m, shape.as_deref())
                .map_err(|e| CliError::Internal(format!("exporting the ONNX graph: {e}")))?;
            outputs.push((out, bytes));
        }
        for (path, bytes) in &outputs {
            report::write_output(path, bytes)?;
        }
    }
    if let Some(path) = &args.report {
        report::write_json(path, &value)?;
    }
    if all_hold {
        eprintln!(
            "repaired with {} patch module(s): every property holds ({:.2} s)",
            modules.as_ref().map_or(0, |m| m.entries.len()),
            start.elapsed().as_secs_f64()
        );
        Ok(Outcome::Ok)
    } else {
        for (p, a) in properties.iter().zip(&after) {
            if let Some(status) = a.filter(|s| *s != "holds") {
                eprintln!(
                    "not repaired: {} held before but is {status} with the modules added",
                    p.name
                );
            }
        }
        for o in outcome.iter().flat_map(|o| &o.outcomes) {
            if o.status != "holds" {
                eprintln!(
                    "not repaired: {} ({} of {} sub-boxes proven)",
                    o.name, o.proven_sub_boxes, o.sub_boxes
                );
            }
        }
        eprintln!("no output written");
        Ok(Outcome::Unknown)
    }
}
