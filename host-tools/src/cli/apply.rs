//! `prorepair-host apply MODEL PATCH --onnx-out OUT.onnx`: the repaired model as ONNX.
//!
//! The patch is checked and applied by the device core against the blob `compile` makes
//! of MODEL (see [`crate::patch`]): a patch a device would refuse is refused here, with
//! exit 2 and the file named.

use std::path::{Path, PathBuf};

use super::eval::read_file;
use super::{CliError, Outcome, report};
use crate::model::Network;

/// Arguments of `apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model (ONNX or .nnet) the patch was made for.
    pub model: PathBuf,
    /// The weight-delta patch (from `repair --out`).
    pub patch: PathBuf,
    /// Where to write the repaired model as ONNX (keeping MODEL's input shape).
    #[arg(long, value_name = "OUT.onnx")]
    pub onnx_out: PathBuf,
}

/// Read `patch` and apply it to `net` (imported from `model`), naming the patch file in
/// every error.
pub(crate) fn patched_network(net: &Network, patch: &Path) -> Result<Network, CliError> {
    let bytes = read_file(patch)?;
    if !crate::patch::is_patch(&bytes) {
        return Err(CliError::file(patch, "not a prorepair patch (bad magic)"));
    }
    crate::patch::apply(net, &bytes).map_err(|e| CliError::file(patch, format!("refused: {e}")))
}

/// Run `apply`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let net = crate::import::load(&args.model).map_err(|e| CliError::BadInput(e.to_string()))?;
    let shape = crate::export::onnx::declared_input_shape(&args.model);
    let raw = read_file(&args.patch)?;
    // A patch-modules patch (kind 2) becomes base + indicator + modules in one graph.
    let bytes = if crate::patch::modules::is_modules_patch(&raw) {
        let m = crate::patch::modules::read(&net, &raw)
            .map_err(|e| CliError::file(&args.patch, format!("refused: {e}")))?;
        crate::patch::modules::to_onnx(&net, &m, shape.as_deref())
            .map_err(|e| CliError::Internal(format!("exporting the patched network: {e}")))?
    } else {
        let patched = patched_network(&net, &args.patch)?;
        crate::export::to_onnx_bytes(&patched, shape.as_deref())
            .map_err(|e| CliError::Internal(format!("exporting the patched network: {e}")))?
    };
    report::write_output(&args.onnx_out, &bytes)?;
    eprintln!(
        "{}: patched model written ({} bytes)",
        args.onnx_out.display(),
        bytes.len()
    );
    Ok(Outcome::Ok)
}
