//! `prorepair-host repair MODEL --points FILE [--labels LABELS.idx]`: point-wise repair
//! ([`crate::repair::points`]). Exit 0 only when every point holds on the repaired
//! network (verify's leaf rule on the point: the f64 forward pass with a margin above the
//! f32 rounding bound); otherwise exit 20 and write no model file. Outputs are written as
//! by the VNN-LIB repair: the weight-delta patch (`--out`), ONNX (`--onnx-out`), report.

use std::time::Duration;

use serde_json::json;

use super::repair::{Args, check_output_dirs, layer_patch_output, map_repair_error, onnx_output};
use super::{CliError, Outcome, report};
use crate::model::Network;
use crate::repair::points::{self, PointOptions};

/// Run `repair --points`.
pub fn run(
    args: &Args,
    net: &Network,
    signer: Option<&ed25519_dalek::SigningKey>,
) -> Result<Outcome, CliError> {
    let file = args.points.as_deref().expect("called with --points");
    let pts = match &args.labels {
        Some(labels) => points::read_points_idx(file, labels),
        None => points::read_points_csv(file),
    }
    .map_err(CliError::BadInput)?;
    points::check_points(&pts, net, &file.display().to_string()).map_err(CliError::BadInput)?;
    let split = args
        .split_layer
        .resolve(net)
        .map_err(|e| CliError::BadInput(format!("--split-layer: {e}")))?;
    check_output_dirs(args)?;
    // The points that already hold are the fidelity inputs: their features are kept.
    let fidelity: Vec<Vec<f64>> = pts
        .iter()
        .filter(|p| points::point_holds(net, p))
        .map(|p| p.x.clone())
        .collect();
    let options = PointOptions {
        split_layer: crate::repair::SplitLayer::Layer(split),
        radius: args.radius,
        timeout: Duration::from_secs_f64(args.timeout),
        fidelity_inputs: fidelity,
        ..PointOptions::default()
    };
    let outcome = points::repair_points(net, &pts, &options).map_err(map_repair_error)?;
    let status = |b: bool| if b { "holds" } else { "unknown" };
    let mut value = json!({
        "status": status(outcome.verified),
        "model": args.model.display().to_string(),
        "points": {
            "file": file.display().to_string(),
            "count": pts.len(),
            "holding_before": outcome.before.iter().filter(|&&b| b).count(),
            "holding_after": outcome.after.iter().filter(|&&b| b).count(),
            "status": outcome.after.iter().map(|&b| status(b)).collect::<Vec<_>>(),
            "proof": "f64 forward pass with a margin above the f32 rounding bound (verify's leaf rule on the point)",
        },
        "split_layer": outcome.split_layer,
        "rounds": outcome.rounds,
        "anchors": outcome.anchors,
        "proxy_box_failures": outcome.proxy_box_failures,
        "changed_parameters": outcome.changed_parameters,
        "parameter_budget": outcome.parameter_budget,
        "total_parameters": outcome.total_parameters,
        "patch_size_bytes": null,
        "patch": null,
        "time_s": outcome.time_s,
        "onnx_out": if outcome.verified { args.onnx_out.as_ref().map(|p| p.display().to_string()) } else { None },
    });
    if outcome.verified {
        let unchanged = outcome.changed_parameters == 0;
        let patch = match &args.out {
            Some(out) if unchanged => {
                eprintln!(
                    "{}: not written: every point already holds, nothing was changed",
                    out.display()
                );
                None
            }
            Some(out) => {
                // No verified regions: a point is a box of measure zero, so a run-time
                // guard over it would select nothing.
                let emitted = crate::patch::emit(net, &outcome.network, args.sequence, &[])
                    .map_err(|e| CliError::Internal(format!("emitting the patch: {e}")))?;
                let bytes = layer_patch_output(emitted, out, args.sequence, signer, &mut value)?;
                Some((out, bytes))
            }
            None => None,
        };
        let onnx = onnx_output(args, &outcome.network)?;
        for (path, bytes) in patch.iter().chain(&onnx) {
            report::write_output(path, bytes)?;
        }
    }
    if let Some(path) = &args.report {
        report::write_json(path, &value)?;
    }
    let held = outcome.after.iter().filter(|&&b| b).count();
    if outcome.verified {
        eprintln!(
            "repaired: all {} points hold ({} held before; {} changed parameters, {:.2} s)",
            pts.len(),
            outcome.before.iter().filter(|&&b| b).count(),
            outcome.changed_parameters,
            outcome.time_s
        );
        Ok(Outcome::Ok)
    } else {
        eprintln!(
            "not repaired: {held} of {} points hold after {} rounds; no output model written",
            pts.len(),
            outcome.rounds
        );
        Ok(Outcome::Unknown)
    }
}
