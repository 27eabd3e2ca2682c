//! `prorepair-host bounds MODEL (--spec SPEC.vnnlib | --box BOX.csv) [--method ...] [--json OUT]`:
//! sound bounds of the model outputs over an input box.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::verify::{load_model, load_property};
use super::{CliError, Outcome, report};
use crate::bounds;
use crate::model::Network;

/// Bounding method of `bounds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoundMethodArg {
    /// Interval bound propagation.
    Ibp,
    /// CROWN (linear relaxation, backward propagation).
    Crown,
    /// alpha-CROWN (optimised lower slopes).
    AlphaCrown,
}

/// Arguments of `bounds`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("region").required(true).args(["spec", "box_file"])))]
pub struct Args {
    /// The model (ONNX or .nnet).
    pub model: PathBuf,
    /// Take the input box (boxes) from this VNN-LIB property.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Input box as CSV: two rows, lower then upper, flattened like an input row.
    #[arg(long = "box", value_name = "BOX.csv")]
    pub box_file: Option<PathBuf>,
    /// Bounding method.
    #[arg(long, value_enum, default_value = "crown")]
    pub method: BoundMethodArg,
    /// Write a JSON report to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Parse a box CSV (two rows of `dim` numbers, lower then upper, lower <= upper).
pub fn read_box_csv(path: &Path, dim: usize) -> Result<(Vec<f64>, Vec<f64>), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::file(path, format!("cannot read: {e}")))?;
    let rows: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if rows.len() != 2 {
        return Err(CliError::file(
            path,
            format!("expected 2 rows (lower, upper), found {}", rows.len()),
        ));
    }
    let mut parsed = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let name = if r == 0 { "lower" } else { "upper" };
        let vals: Vec<f64> = row
            .split(',')
            .enumerate()
            .map(|(i, s)| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| {
                        CliError::file(
                            path,
                            format!(
                                "{name} row, column {}: `{}` is not a finite number",
                                i + 1,
                                s.trim()
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        if vals.len() != dim {
            return Err(CliError::file(
                path,
                format!(
                    "{name} row has {} values, the model has {dim} inputs",
                    vals.len()
                ),
            ));
        }
        parsed.push(vals);
    }
    let (lower, upper) = (parsed.remove(0), parsed.remove(0));
    if let Some(i) = (0..dim).find(|&i| lower[i] > upper[i]) {
        return Err(CliError::file(
            path,
            format!("column {}: lower {} > upper {}", i + 1, lower[i], upper[i]),
        ));
    }
    Ok((lower, upper))
}

/// Sound output bounds of `net` over the box with the chosen method.
pub fn output_bounds(
    net: &Network,
    lower: &[f64],
    upper: &[f64],
    method: BoundMethodArg,
) -> Result<(Vec<f64>, Vec<f64>), CliError> {
    let method = match method {
        BoundMethodArg::Ibp => bounds::Method::Ibp,
        BoundMethodArg::Crown => bounds::Method::Crown,
        BoundMethodArg::AlphaCrown => bounds::Method::AlphaCrown,
    };
    let b = bounds::output_bounds(
        net,
        &bounds::BoxBounds::new(lower.to_vec(), upper.to_vec()),
        method,
    )
    .map_err(|e| CliError::BadInput(format!("cannot bound the model over this box: {e}")))?;
    Ok((b.lower, b.upper))
}

/// Run `bounds`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let net = load_model(&args.model)?;
    let boxes: Vec<(Vec<f64>, Vec<f64>)> = match (&args.spec, &args.box_file) {
        (Some(spec), _) => {
            let property = load_property(spec)?;
            let cases = crate::verify::cases_of(&net, &property).map_err(|e| {
                CliError::BadInput(format!(
                    "{} does not fit {}: {e}",
                    spec.display(),
                    args.model.display()
                ))
            })?;
            if cases.is_empty() {
                return Err(CliError::file(spec, "the property has no input box"));
            }
            cases.into_iter().map(|c| (c.lower, c.upper)).collect()
        }
        (None, Some(path)) => vec![read_box_csv(path, net.input_dim())?],
        (None, None) => return Err(CliError::BadInput("give --spec or --box".into())),
    };
    let start = Instant::now();
    let mut per_box = Vec::new();
    for (l, u) in &boxes {
        per_box.push(output_bounds(&net, l, u, args.method)?);
    }
    // Over several boxes (a VNN-LIB disjunction of inputs): the hull of the per-box bounds.
    let n_out = per_box[0].0.len();
    let lower: Vec<f64> = (0..n_out)
        .map(|j| per_box.iter().map(|b| b.0[j]).fold(f64::INFINITY, f64::min))
        .collect();
    let upper: Vec<f64> = (0..n_out)
        .map(|j| {
            per_box
                .iter()
                .map(|b| b.1[j])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let time_s = start.elapsed().as_secs_f64();
    let method = match args.method {
        BoundMethodArg::Ibp => "ibp",
        BoundMethodArg::Crown => "crown",
        BoundMethodArg::AlphaCrown => "alpha-crown",
    };
    let to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let out: &mut dyn std::io::Write = if to_stdout {
        &mut std::io::stderr()
    } else {
        &mut std::io::stdout()
    };
    for j in 0..n_out {
        let _ = writeln!(out, "y{j}: [{:.9}, {:.9}]", lower[j], upper[j]);
    }
    if let Some(path) = &args.json {
        let mut value = json!({
            "status": "ok",
            "model": args.model.display().to_string(),
            "method": method,
            "lower": lower,
            "upper": upper,
            "time_s": time_s,
        });
        if per_box.len() > 1 {
            value["cases"] = per_box
                .iter()
                .map(|(l, u)| json!({"lower": l, "upper": u}))
                .collect();
        }
        report::write_json(path, &value)?;
    }
    Ok(Outcome::Ok)
}
