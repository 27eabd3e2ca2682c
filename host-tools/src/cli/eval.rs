//! `prorepair-host eval`: outputs of a model for each input row of a CSV file.
//!
//! A device model blob (recognised by its magic, whatever the file name) is evaluated by
//! `prorepair-core`, in f32, exactly as the device computes it; an ONNX or `.nnet` model
//! is imported into the host IR and evaluated in f64.

use std::path::{Path, PathBuf};

use super::{CliError, Outcome, report};
use crate::compile::AlignedBlob;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: a device blob from `compile` (evaluated by the device core, in f32),
    /// or an ONNX / .nnet file (evaluated by the host IR, in f64; an ONNX graph of base +
    /// patch modules from `apply --onnx-out` as that piecewise model).
    pub model: PathBuf,
    /// Input CSV: one input per row, the input tensor flattened row-major,
    /// comma-separated, no header.
    #[arg(long, value_name = "IN.csv")]
    pub inputs: PathBuf,
    /// Write `{"outputs": [[...], ...]}` to this file (`-` for stdout) instead of CSV on
    /// stdout.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Apply this patch first. A weight-delta patch: to a blob through the device core
    /// (patched layers in RAM, as on the device), to an ONNX / .nnet model through
    /// `apply`. A patch-modules patch: base + indicator + modules evaluated by the device
    /// core in f32 (an ONNX / .nnet model is compiled to its blob first), exactly as the
    /// device computes them.
    #[arg(long, value_name = "PATCH")]
    pub patch: Option<PathBuf>,
    /// With --patch: act as a device holding this public key (KEY.pub): the patch is
    /// applied only after every device check (signature under the key, base-model
    /// SHA-256, layers, shapes, sequence).
    #[arg(long, value_name = "KEY.pub", requires = "patch")]
    pub key: Option<PathBuf>,
}

/// True when `bytes` start with the model-blob magic.
pub(crate) fn is_model_blob(bytes: &[u8]) -> bool {
    bytes.starts_with(&prorepair_core::format::MAGIC)
}

/// Read a file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::file(path, format!("cannot read: {e}")))
}

/// Load and validate a model blob, naming the file and the core's reason on failure.
pub(crate) fn load_blob(path: &Path, bytes: &[u8]) -> Result<AlignedBlob, CliError> {
    let blob = AlignedBlob::new(bytes);
    blob.model()
        .map_err(|e| CliError::file(path, format!("invalid model blob: {e}")))?;
    Ok(blob)
}

/// Parse the input CSV: every non-blank line is one row of `width` numbers.
pub(crate) fn read_rows(path: &Path, width: usize) -> Result<Vec<Vec<f64>>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::file(path, format!("cannot read: {e}")))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = line
            .split(',')
            .enumerate()
            .map(|(c, field)| {
                let field = field.trim();
                field
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| {
                        CliError::file(
                            path,
                            format!(
                                "line {}, column {}: {field:?} is not a finite number",
                                n + 1,
                                c + 1
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<f64>, CliError>>()?;
        if row.len() != width {
            return Err(CliError::file(
                path,
                format!(
                    "line {}: {} values, the model takes {width}",
                    n + 1,
                    row.len()
                ),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(CliError::file(path, "no input rows"));
    }
    Ok(rows)
}

/// `eval`'s JSON report.
#[derive(serde::Serialize)]
struct Report<T> {
    outputs: Vec<Vec<T>>,
}

/// Write the outputs as CSV on stdout, or as JSON to `json`. Values print in their
/// shortest round-trip form (f32 for the device core, f64 for the host IR).
fn emit<T: serde::Serialize + std::fmt::Display>(
    outputs: Vec<Vec<T>>,
    json: Option<&Path>,
) -> Result<(), CliError> {
    match json {
        Some(path) => {
            let mut text = serde_json::to_string_pretty(&Report { outputs })
                .map_err(|e| CliError::Internal(e.to_string()))?;
            text.push('\n');
            report::write_output(path, text.as_bytes())
        }
        None => {
            let mut text = String::new();
            for row in &outputs {
                let fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text.push_str(&fields.join(","));
                text.push('\n');
            }
            report::write_output(Path::new("-"), text.as_bytes())
        }
    }
}

/// Outputs of base + modules of a patch-modules patch, by the device core: the patch is
/// validated, its signature checked with `key` when given, bound to `model` and
/// evaluated on every row (in f32), as on the device.
fn modules_outputs(
    model: &prorepair_core::Model<'_>,
    patch_path: &Path,
    patch_bytes: &[u8],
    key: Option<&Path>,
    rows: &[Vec<f64>],
) -> Result<Vec<Vec<f32>>, CliError> {
    use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
    let patch = ModulePatch::from_bytes(patch_bytes)
        .map_err(|e| CliError::file(patch_path, format!("invalid patch: {e}")))?;
    if let Some(key_path) = key {
        let key = crate::patch::sign::read_public(key_path)
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        patch
            .check_signature(Some(&key))
            .map_err(|e| CliError::file(patch_path, format!("refused: {e}")))?;
    }
    let mut ram = vec![0f32; patch.required_ram_len()];
    let mm = ModulesModel::new(model, &patch, &mut ram)
        .map_err(|e| CliError::file(patch_path, format!("refused: {e}")))?;
    let mut arena = vec![0f32; mm.required_arena_len()];
    rows.iter()
        .map(|row| {
            let x: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let mut out = vec![0f32; model.output_len()];
            mm.evaluate(&x, &mut arena, &mut out)
                .map_err(|e| CliError::Internal(e.to_string()))?;
            Ok(out)
        })
        .collect()
}

/// Run `eval`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let bytes = read_file(&args.model)?;
    // A patch-modules patch (kind 2) runs base + modules through the device core.
    if let Some(path) = &args.patch {
        let patch_bytes = read_file(path)?;
        if crate::patch::modules::is_modules_patch(&patch_bytes) {
            let blob = if is_model_blob(&bytes) {
                load_blob(&args.model, &bytes)?
            } else {
                let net = crate::import::load(&args.model)
                    .map_err(|e| CliError::BadInput(e.to_string()))?;
                let compiled = crate::compile::compile(&net).map_err(|e| {
                    CliError::file(&args.model, format!("cannot compile the base network: {e}"))
                })?;
                AlignedBlob::new(&compiled)
            };
            let model = blob.model().map_err(|e| CliError::file(&args.model, e))?;
            let rows = read_rows(&args.inputs, model.input_len())?;
            let outputs = modules_outputs(&model, path, &patch_bytes, args.key.as_deref(), &rows)?;
            emit(outputs, args.json.as_deref())?;
            return Ok(Outcome::Ok);
        }
    }
    if is_model_blob(&bytes) {
        let blob = load_blob(&args.model, &bytes)?;
        let base = blob.model().map_err(|e| CliError::file(&args.model, e))?;
        let mut ram = Vec::new();
        let model = match &args.patch {
            None => base,
            Some(path) => {
                let patch_bytes = read_file(path)?;
                let patch = match &args.key {
                    // The device's own acceptance check (the core's OTA verifier).
                    Some(key_path) => {
                        let key = crate::patch::sign::read_public(key_path)
                            .map_err(|e| CliError::BadInput(e.to_string()))?;
                        prorepair_core::ota::verify_patch(&patch_bytes, &base, Some(&key), 0)
                            .map_err(|e| CliError::file(path, format!("refused: {e}")))?
                    }
                    None => prorepair_core::Patch::from_bytes(&patch_bytes)
                        .map_err(|e| CliError::file(path, format!("invalid patch: {e}")))?,
                };
                crate::patch::apply_to_blob(&base, &patch, &mut ram)
                    .map_err(|e| CliError::file(path, format!("refused: {e}")))?
            }
        };
        let rows = read_rows(&args.inputs, model.input_len())?;
        let mut arena = vec![0.0f32; model.required_arena_len()];
        let outputs = rows
            .iter()
            .map(|row| {
                let x: Vec<f32> = row.iter().map(|&v| v as f32).collect();
                let mut out = vec![0.0f32; model.output_len()];
                model
                    .evaluate(&x, &mut arena, &mut out)
                    .map_err(|e| CliError::Internal(e.to_string()))?;
                Ok(out)
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        emit(outputs, args.json.as_deref())?;
    } else {
        drop(bytes);
        let model = crate::import::load_model(&args.model)
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        let mut net = match model {
            crate::import::Model::Network(n) => n,
            // An exported patch-modules graph: base + modules in f64 on the host.
            crate::import::Model::Piecewise(pw) => {
                if let Some(patch) = &args.patch {
                    return Err(CliError::file(
                        patch,
                        format!(
                            "{} already holds patch modules; give the base model",
                            args.model.display()
                        ),
                    ));
                }
                let rows = read_rows(&args.inputs, pw.base.input_dim())?;
                emit(
                    rows.iter().map(|row| pw.forward(row)).collect(),
                    args.json.as_deref(),
                )?;
                return Ok(Outcome::Ok);
            }
        };
        if let Some(patch) = &args.patch {
            if let Some(key_path) = &args.key {
                // The signature as a device checks it; `apply` checks the binding.
                let key = crate::patch::sign::read_public(key_path)
                    .map_err(|e| CliError::BadInput(e.to_string()))?;
                let bytes = read_file(patch)?;
                prorepair_core::Patch::from_bytes(&bytes)
                    .and_then(|p| p.check_signature(Some(&key)))
                    .map_err(|e| CliError::file(patch, format!("refused: {e}")))?;
            }
            net = super::apply::patched_network(&net, patch)?;
        }
        let rows = read_rows(&args.inputs, net.input_dim())?;
        emit(
            rows.iter().map(|row| net.forward(row)).collect(),
            args.json.as_deref(),
        )?;
    }
    Ok(Outcome::Ok)
}
