//! `prorepair-host repair MODEL (--spec SPEC.vnnlib... | --points FILE [--labels L.idx]) [--split-layer K|auto] [--radius R]
//! [--timeout SECS] [--onnx-out REPAIRED.onnx] [--report OUT.json]`.
//!
//! ProRepair region-wise repair ([`crate::repair`]). Exit 0 only when the sound checker
//! of `verify` proves every property on the repaired network; otherwise exit 20, write no
//! model file, and report what is left. The repaired network is written as a weight-delta
//! patch against the blob `compile` makes of MODEL (`--out`, see [`crate::patch`]) and/or
//! as ONNX (`--onnx-out`); every output is prepared before any is written, and each is
//! written to a temporary file and renamed, so no partial file is ever left. The
//! `--strategy patch-modules` runs [`super::repair_modules`] instead.
//! With `--points`, point-wise repair of input/label pairs instead (`repair_points.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::{CliError, Outcome, report};
use crate::bounds::BoxBounds;
use crate::export;
use crate::repair::{self, RepairError, RepairOptions, RepairProperty, SplitLayer};

/// Arguments of `repair`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (ONNX or .nnet).
    pub model: PathBuf,
    /// The properties to repair (VNN-LIB; each states an unsafe set). Properties that
    /// already hold are kept holding.
    #[arg(long, required_unless_present = "points", num_args = 1..)]
    pub spec: Vec<PathBuf>,
    /// Point properties instead of `--spec`: CSV rows `inputs..., label` (gzip or plain),
    /// or IDX images with `--labels` (see `repair::points`).
    #[arg(long, conflicts_with = "spec", value_name = "FILE")]
    pub points: Option<PathBuf>,
    /// IDX label file for IDX images given to `--points`.
    #[arg(long, requires = "points", value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Split f = f_c o f_e: `auto`, or K for f_e = layers[..K] (layers of the host IR).
    #[arg(long, default_value = "auto", value_parser = parse_split)]
    pub split_layer: SplitLayer,
    /// Proxy-box radius r in feature space (L-infinity).
    #[arg(long, default_value_t = 0.1, value_parser = parse_radius)]
    pub radius: f64,
    /// Time budget in seconds (the final verification included).
    #[arg(long, default_value_t = 60.0, value_parser = super::verify::parse_seconds)]
    pub timeout: f64,
    /// Write the weight-delta patch (repaired layers' parameters, bound to the SHA-256
    /// of MODEL's compiled blob, the properties' input boxes as verified regions); only
    /// written when every property is proven.
    #[arg(long, value_name = "PATCH")]
    pub out: Option<PathBuf>,
    /// Sequence number of the patch (devices refuse one not above the applied one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sequence: u32,
    /// Sign the patch with this secret key (from `keygen`; Ed25519 over every byte
    /// before the signature field).
    #[arg(long, value_name = "KEY", requires = "out")]
    pub sign: Option<PathBuf>,
    /// Write the repaired network as ONNX (keeping the model's input shape); only
    /// written when every property is proven.
    #[arg(long)]
    pub onnx_out: Option<PathBuf>,
    /// Write a JSON report to this file (`-` for stdout).
    #[arg(long, visible_alias = "json")]
    pub report: Option<PathBuf>,
    /// Input box for fidelity sampling (CSV: lower row, upper row); default: the
    /// property boxes' bounding box widened by its width on every side.
    #[arg(long)]
    pub domain: Option<PathBuf>,
    /// Seed of all sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `weights`: ProRepair (changes the network's weights); `patch-modules`:
    /// AdvRepair-style box indicators plus small MLPs added to the logits (the base
    /// network is untouched; `--out` writes a kind-2 patch).
    #[arg(long, value_enum, default_value = "weights")]
    pub strategy: Strategy,
    /// Hidden widths of each patch module, comma-separated (`--strategy patch-modules`).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    pub module_hidden: Vec<usize>,
    /// What each patch module reads (`--strategy patch-modules`): 0 = the network input;
    /// K >= 1 = the output of the network's K-th activation layer (counting ReLU and
    /// other activation layers from the input), which must be a ReLU. Modules at a
    /// late layer are much smaller (e.g. 100 -> 8 -> 10 instead of 784 -> 8 -> 10); the
    /// indicator stays the input box and the repair stays proven.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub feature_layer: usize,
    /// When a patch module fires (`--strategy patch-modules`): `box` (one module per
    /// violated property, only inside its input box; elsewhere the output is the
    /// original's bit for bit), `label` (one module per label, firing wherever the
    /// original network's argmax is that label, ties to the lower index: generalises to
    /// new inputs but also changes clean inputs of that label), `label-pair` (one module
    /// per ordered pair, firing where the original ranks the pair first and second,
    /// strictly; no module fires on ties).
    #[arg(long, value_enum, default_value = "box")]
    pub indicator: IndicatorForm,
}

/// The indicator form of `--strategy patch-modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndicatorForm {
    /// Property-guided: one input box per property.
    Box,
    /// Untargeted label: the original network's argmax.
    Label,
    /// Targeted label pair: the original network's strict top two.
    LabelPair,
}

/// The repair strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// ProRepair region-wise weight repair.
    Weights,
    /// Indicator-plus-patch modules.
    PatchModules,
}

/// `auto` or a layer index.
pub fn parse_split(s: &str) -> Result<SplitLayer, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(SplitLayer::Auto);
    }
    s.parse::<usize>()
        .map(SplitLayer::Layer)
        .map_err(|_| format!("`{s}` is neither `auto` nor a layer index"))
}

fn parse_radius(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive radius")),
    }
}

/// Read a box CSV: two rows (lower, upper) of `n` numbers.
fn read_box(path: &Path, n: usize) -> Result<BoxBounds, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::file(path, format!("cannot read: {e}")))?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .map(|v| {
                    v.trim().parse::<f64>().map_err(|_| {
                        CliError::file(
                            path,
                            format!("line {}: `{}` is not a number", i + 1, v.trim()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    if rows.len() != 2 || rows.iter().any(|r| r.len() != n) {
        return Err(CliError::file(
            path,
            format!("expected two rows (lower, upper) of {n} numbers"),
        ));
    }
    if rows[0]
        .iter()
        .zip(&rows[1])
        .any(|(l, u)| !(l.is_finite() && u.is_finite() && l <= u))
    {
        return Err(CliError::file(
            path,
            "a lower bound exceeds its upper bound or is not finite",
        ));
    }
    Ok(BoxBounds::new(rows[0].clone(), rows[1].clone()))
}

pub(super) fn map_repair_error(e: RepairError) -> CliError {
    match e {
        RepairError::SplitLayer(_) | RepairError::Property { .. } | RepairError::Unsupported(_) => {
            CliError::BadInput(e.to_string())
        }
        other => CliError::Internal(other.to_string()),
    }
}

/// Fails when the directory of `--out` or `--onnx-out` does not exist, so a bad path
/// is reported before the long repair rather than after it.
pub(super) fn check_output_dirs(args: &Args) -> Result<(), CliError> {
    for out in args.onnx_out.iter().chain(&args.out) {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(CliError::file(out, "the directory does not exist"));
        }
    }
    Ok(())
}

/// Signs a freshly emitted patch in place when `--sign` gave a key.
pub(super) fn sign_if_asked(
    bytes: &mut [u8],
    signer: Option<&ed25519_dalek::SigningKey>,
) -> Result<(), CliError> {
    if let Some(key) = signer {
        crate::patch::sign::sign_patch(bytes, key)
            .map_err(|e| CliError::Internal(e.to_string()))?;
    }
    Ok(())
}

/// Signs a weight-delta patch when asked and records it as the report's `patch` (and
/// `patch_size_bytes`); returns the bytes to write to `out`. Shared by the box and the
/// point repair paths, which report a layer patch the same way.
pub(super) fn layer_patch_output(
    mut emitted: crate::patch::EmittedPatch,
    out: &Path,
    sequence: u32,
    signer: Option<&ed25519_dalek::SigningKey>,
    value: &mut serde_json::Value,
) -> Result<Vec<u8>, CliError> {
    sign_if_asked(&mut emitted.bytes, signer)?;
    value["patch_size_bytes"] = json!(emitted.bytes.len());
    value["patch"] = json!({
        "file": out.display().to_string(),
        "bytes": emitted.bytes.len(),
        "base_blob_bytes": emitted.base_blob.len(),
        "share_of_blob": emitted.bytes.len() as f64 / emitted.base_blob.len() as f64,
        "sequence": sequence,
        "layers": emitted.layers,
        "regions": emitted.regions,
    });
    Ok(emitted.bytes)
}

/// The repaired network as ONNX bytes, with the path to write them to, when
/// `--onnx-out` asks for it (the input shape declared by `--model` is kept).
pub(super) fn onnx_output<'a>(
    args: &'a Args,
    network: &crate::model::Network,
) -> Result<Option<(&'a PathBuf, Vec<u8>)>, CliError> {
    let Some(out) = &args.onnx_out else {
        return Ok(None);
    };
    let shape = export::onnx::declared_input_shape(&args.model);
    let bytes = export::to_onnx_bytes(network, shape.as_deref())
        .map_err(|e| CliError::Internal(format!("exporting the repaired network: {e}")))?;
    Ok(Some((out, bytes)))
}

/// Weight repair: small local-robustness boxes ([`repair::regionwise::local_boxes_apply`])
/// first by [`repair::regionwise::repair_local_boxes`] with half the budget, then (or
/// otherwise) the region-wise [`repair::repair`] with what is left. Returns the outcome
/// and the path that produced it (`local-box` or `region-wise`).
fn repair_weights(
    net: &crate::model::Network,
    properties: &[RepairProperty],
    options: &RepairOptions,
) -> Result<(repair::RepairOutcome, &'static str), CliError> {
    use repair::regionwise::{
        LOCAL_BOX_MAX_UNSTABLE, LocalBoxOptions, local_boxes_apply, repair_local_boxes,
    };
    let start = std::time::Instant::now();
    let cases: Vec<&crate::verify::Case> = properties.iter().flat_map(|p| &p.cases).collect();
    if local_boxes_apply(net, &cases, LOCAL_BOX_MAX_UNSTABLE) {
        let domain = options.fidelity_domain.clone().unwrap_or_else(|| {
            let n = net.input_dim();
            let (mut lo, mut hi) = (vec![f64::INFINITY; n], vec![f64::NEG_INFINITY; n]);
            for c in &cases {
                for j in 0..n {
                    lo[j] = lo[j].min(c.lower[j]);
                    hi[j] = hi[j].max(c.upper[j]);
                }
            }
            let w: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| h - l).collect();
            BoxBounds::new(
                lo.iter().zip(&w).map(|(l, w)| l - w).collect(),
                hi.iter().zip(&w).map(|(h, w)| h + w).collect(),
            )
        });
        let local = LocalBoxOptions {
            split_layer: options.split_layer,
            timeout: options.timeout / 2,
            fidelity_inputs: repair::sample_outside(&domain, &cases, 256, options.seed),
            seed: options.seed,
            ..LocalBoxOptions::default()
        };
        let out = repair_local_boxes(net, properties, &local).map_err(map_repair_error)?;
        if out.verified {
            return Ok((out, "local-box"));
        }
        let rest = RepairOptions {
            timeout: options.timeout.saturating_sub(start.elapsed()),
            ..options.clone()
        };
        let out = repair::repair(net, properties, &rest).map_err(map_repair_error)?;
        return Ok((out, "region-wise"));
    }
    let out = repair::repair(net, properties, options).map_err(map_repair_error)?;
    Ok((out, "region-wise"))
}

/// Run `repair`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    // The signing key is read first: a bad key fails before a long repair.
    let signer = match &args.sign {
        Some(path) => Some(
            crate::patch::sign::read_secret(path).map_err(|e| CliError::BadInput(e.to_string()))?,
        ),
        None => None,
    };
    let net = crate::import::load(&args.model).map_err(|e| CliError::BadInput(e.to_string()))?;
    if args.points.is_some() {
        return super::repair_points::run(&args, &net, signer.as_ref());
    }
    let mut properties = Vec::new();
    for path in &args.spec {
        let p = crate::spec::Property::from_vnnlib(path).map_err(|e| {
            let msg = e.to_string();
            if msg.contains(&path.display().to_string()) {
                CliError::BadInput(msg)
            } else {
                CliError::file(path, msg)
            }
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        properties
            .push(RepairProperty::from_spec(&name, &p, &net).map_err(|e| CliError::file(path, e))?);
    }
    // Validate the domain before the long work.
    let domain = match &args.domain {
        Some(p) => Some(read_box(p, net.input_dim())?),
        None => None,
    };
    check_output_dirs(&args)?;
    if args.feature_layer != 0 && args.strategy != Strategy::PatchModules {
        return Err(CliError::BadInput(
            "--feature-layer applies to --strategy patch-modules only".into(),
        ));
    }
    if args.strategy == Strategy::PatchModules {
        return super::repair_modules::run(&args, &net, &properties, signer.as_ref());
    }
    // The split matters to the weight repair only (modules leave the base untouched).
    let split = args
        .split_layer
        .resolve(&net)
        .map_err(|e| CliError::BadInput(format!("--split-layer: {e}")))?;
    let options = RepairOptions {
        split_layer: SplitLayer::Layer(split),
        radius: args.radius,
        timeout: Duration::from_secs_f64(args.timeout),
        fidelity_domain: domain,
        seed: args.seed,
        ..RepairOptions::default()
    };
    let (outcome, method) = repair_weights(&net, &properties, &options)?;

    let props: Vec<_> = outcome
        .properties
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "status": p.after,
                "status_before": p.before,
                "counterexample_before": p.counterexample_before,
                "repaired": p.repaired,
                "subproperties": p.subproperties,
                "reason": p.reason,
            })
        })
        .collect();
    let status = if outcome.verified { "holds" } else { "unknown" };
    let value = json!({
        "status": status,
        "method": method,
        "model": args.model.display().to_string(),
        "properties": props,
        "split_layer": outcome.split_layer,
        "margin": outcome.margin,
        "rounds": outcome.rounds,
        "subproperties": outcome.subproperties,
        "anchors": outcome.anchors,
        "proxy_box_failures": outcome.proxy_box_failures,
        "changed_parameters": outcome.changed_parameters,
        "parameter_budget": outcome.parameter_budget,
        "output_bias_shift": outcome.output_bias_shift,
        "total_parameters": outcome.total_parameters,
        "patch_size_bytes": null,
        "patch": null,
        "fidelity": {
            "samples": outcome.fidelity.samples,
            "argmin_agreement": outcome.fidelity.argmin_agreement,
            "argmax_agreement": outcome.fidelity.argmax_agreement,
            "max_abs_output_change": outcome.fidelity.max_abs_output_change,
        },
        "time_s": outcome.time_s,
        "proven_at_s": outcome.proven_at_s,
        "onnx_out": if outcome.verified { args.onnx_out.as_ref().map(|p| p.display().to_string()) } else { None },
    });
    let mut value = value;
    if outcome.verified {
        // Every output is prepared before the first is written.
        // A network that needed no change (every property held) has no patch.
        let unchanged =
            crate::compile::compile(&net).ok() == crate::compile::compile(&outcome.network).ok();
        let patch = match &args.out {
            Some(out) if unchanged => {
                eprintln!(
                    "{}: not written: every property already holds, nothing was changed",
                    out.display()
                );
                None
            }
            Some(out) => {
                let regions: Vec<(Vec<f64>, Vec<f64>)> = properties
                    .iter()
                    .flat_map(|p| &p.cases)
                    .map(|c| (c.lower.clone(), c.upper.clone()))
                    .collect();
                let emitted =
                    crate::patch::emit(&net, &outcome.network, args.sequence, &regions)
                        .map_err(|e| CliError::Internal(format!("emitting the patch: {e}")))?;
                let bytes =
                    layer_patch_output(emitted, out, args.sequence, signer.as_ref(), &mut value)?;
                Some((out, bytes))
            }
            None => None,
        };
        let onnx = onnx_output(&args, &outcome.network)?;
        for (path, bytes) in patch.iter().chain(&onnx) {
            report::write_output(path, bytes)?;
        }
    }
    if let Some(path) = &args.report {
        report::write_json(path, &value)?;
    }
    if outcome.verified {
        eprintln!(
            "repaired: every property holds ({} changed parameters, {} sub-properties, {:.2} s)",
            outcome.changed_parameters, outcome.subproperties, outcome.time_s
        );
        Ok(Outcome::Ok)
    } else {
        for p in &outcome.properties {
            if p.after != "holds" {
                eprintln!(
                    "not repaired: {} is {} ({})",
                    p.name,
                    p.after,
                    p.reason.as_deref().unwrap_or("no reason given")
                );
            }
        }
        eprintln!("no output model written");
        Ok(Outcome::Unknown)
    }
}
