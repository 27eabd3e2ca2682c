//! `prorepair-host compile`: lower an ONNX or .nnet model to the device model blob.

use std::path::PathBuf;

use super::{CliError, Outcome, report};
use crate::compile::{c_array, compile};

/// Arguments of `compile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model to lower: ONNX or .nnet.
    pub model: PathBuf,
    /// Where to write the device model blob (written whole or not at all).
    #[arg(long, value_name = "MODEL.bin")]
    pub out: PathBuf,
    /// Also write the blob as a C header (`static const unsigned char NAME[]`, 16-byte
    /// aligned, plus `NAME_len`); NAME is the header's file stem as a C identifier.
    #[arg(long, value_name = "OUT.h")]
    pub c_array: Option<PathBuf>,
    /// Apply this weight-delta patch first (checked by the device core against the blob
    /// of MODEL): writes the repaired model's blob, the same model `apply` writes.
    #[arg(long, value_name = "PATCH")]
    pub patch: Option<PathBuf>,
}

/// Run `compile`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let mut net =
        crate::import::load(&args.model).map_err(|e| CliError::BadInput(e.to_string()))?;
    if let Some(patch) = &args.patch {
        net = super::apply::patched_network(&net, patch)?;
    }
    let blob = compile(&net).map_err(|e| CliError::file(&args.model, e))?;
    // Both outputs are prepared before either is written.
    let header = args.c_array.as_ref().map(|path| {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        (path, c_array(&blob, &stem))
    });
    report::write_output(&args.out, &blob)?;
    if let Some((path, text)) = header {
        report::write_output(path, text.as_bytes())?;
    }
    let model = crate::compile::AlignedBlob::new(&blob);
    let arena = model.model().map(|m| m.required_arena_bytes()).unwrap_or(0);
    eprintln!(
        "{}: {} bytes, arena {} bytes",
        args.out.display(),
        blob.len(),
        arena
    );
    Ok(Outcome::Ok)
}
