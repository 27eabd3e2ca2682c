//! `prorepair-host verify MODEL SPEC.vnnlib [--method ...] [--timeout SECS] [--json OUT]`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::{CliError, Outcome, report};
use crate::verify::{self, Method, Options, Verdict};

/// Bounding method on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// One interval-bound pass after falsification (incomplete).
    Ibp,
    /// One CROWN pass after falsification (incomplete).
    Crown,
    /// One alpha-CROWN pass after falsification (incomplete).
    AlphaCrown,
    /// Falsification then branch and bound until the timeout (default).
    Complete,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Ibp => Method::Ibp,
            MethodArg::Crown => Method::Crown,
            MethodArg::AlphaCrown => Method::AlphaCrown,
            MethodArg::Complete => Method::Complete,
        }
    }
}

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (ONNX or .nnet). An ONNX graph of base + patch modules (from `apply
    /// --onnx-out` with a patch-modules patch) is verified as that piecewise model, cell
    /// by cell.
    pub model: PathBuf,
    /// The property (VNN-LIB; it states the unsafe set).
    pub spec: PathBuf,
    /// Bounding method; `complete` runs branch and bound.
    #[arg(long, value_enum, default_value = "complete")]
    pub method: MethodArg,
    /// Time budget in seconds.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    pub timeout: f64,
    /// Seed of the falsification sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write a JSON report to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A positive, finite number of seconds.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

/// Load a model, naming the file on failure.
pub fn load_model(path: &Path) -> Result<crate::model::Network, CliError> {
    // ImportError names the file itself.
    crate::import::load(path).map_err(|e| CliError::BadInput(e.to_string()))
}

/// Load a VNN-LIB property, naming the file on failure.
pub fn load_property(path: &Path) -> Result<crate::spec::Property, CliError> {
    // SpecError names the file (and line) itself.
    crate::spec::Property::from_vnnlib(path).map_err(|e| CliError::BadInput(e.to_string()))
}

/// A progress bar on a terminal, nothing otherwise.
pub fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {percent}% {msg}",
    ) {
        pb.set_style(style);
    }
    Some(pb)
}

/// Run `verify`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    // A patch-modules graph (`apply --onnx-out` of a kind-2 patch) is a piecewise model,
    // verified cell by cell.
    let model =
        crate::import::load_model(&args.model).map_err(|e| CliError::BadInput(e.to_string()))?;
    let (net, piecewise) = match model {
        crate::import::Model::Network(n) => (n, None),
        crate::import::Model::Piecewise(p) => (p.base.clone(), Some(p)),
    };
    let property = load_property(&args.spec)?;
    let cases = verify::cases_of(&net, &property).map_err(|e| {
        CliError::BadInput(format!(
            "{} does not fit {}: {e}",
            args.spec.display(),
            args.model.display()
        ))
    })?;
    let options = Options {
        method: args.method.into(),
        timeout: Duration::from_secs_f64(args.timeout),
        threads: args.threads,
        seed: args.seed,
        progress: progress_bar(1000),
    };
    let (report, cells) = match &piecewise {
        None => (verify::verify_cases(&net, &cases, &options), None),
        Some(p) => {
            let r = verify::piecewise::verify_piecewise(
                p,
                &cases,
                &options,
                verify::piecewise::MAX_CELLS,
            );
            let cells = json!({
                "modules": p.modules.entries.len(),
                "cells": r.cells,
                "cells_with_modules": r.cells_with_modules,
            });
            (r.report, Some(cells))
        }
    };
    if let Some(pb) = &options.progress {
        pb.finish_and_clear();
    }
    let s = &report.stats;
    let mut value = json!({
        "status": report.verdict.status(),
        "model": args.model.display().to_string(),
        "spec": args.spec.display().to_string(),
        "method": options.method.name(),
        "time_s": s.time_s,
        "falsification_s": s.falsification_s,
        "branches": s.branches,
        "max_depth": s.max_depth,
        "min_certified_margin": s.min_certified_margin,
        "f32_error_bound": s.f32_error_bound,
    });
    let cells_note = cells.as_ref().map_or(String::new(), |c| {
        format!(
            "{} cells, {} with modules, ",
            c["cells"], c["cells_with_modules"]
        )
    });
    if let Some(c) = cells {
        value["piecewise"] = c;
    }
    let summary = match &report.verdict {
        Verdict::Holds => format!(
            "holds ({cells_note}{} branches, {:.3} s)",
            s.branches, s.time_s
        ),
        Verdict::Violated {
            counterexample,
            output,
            case,
        } => {
            value["counterexample"] =
                json!({ "input": counterexample, "output": output, "case": case });
            format!(
                "violated: counterexample input {counterexample:?} output {output:?} ({:.3} s)",
                s.time_s
            )
        }
        Verdict::Unknown { reason } => {
            value["reason"] = json!(reason);
            format!("unknown: {reason} ({:.3} s)", s.time_s)
        }
    };
    // With `--json -` stdout carries the JSON only.
    if args.json.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if let Some(path) = &args.json {
        report::write_json(path, &value)?;
    }
    Ok(match report.verdict {
        Verdict::Holds => Outcome::Ok,
        Verdict::Violated { .. } => Outcome::Violated,
        Verdict::Unknown { .. } => Outcome::Unknown,
    })
}
