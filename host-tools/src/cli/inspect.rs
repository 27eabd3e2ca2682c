//! `prorepair-host inspect`: describe a device model blob.

use std::fmt::Write;
use std::path::PathBuf;

use super::eval::{is_model_blob, load_blob, read_file};
use super::{CliError, Outcome, report};

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to describe: a device model blob from `compile`.
    pub file: PathBuf,
    /// Write the description as JSON to this file (`-` for stdout) instead of text.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Run `inspect`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let bytes = read_file(&args.file)?;
    if !is_model_blob(&bytes) {
        return Err(CliError::file(
            &args.file,
            "not a prorepair model blob (bad magic)",
        ));
    }
    let blob = load_blob(&args.file, &bytes)?;
    let model = blob.model().map_err(|e| CliError::file(&args.file, e))?;
    let sha = hex(&model.sha256());
    let layers: Vec<serde_json::Value> = model
        .layers()
        .map(|info| {
            serde_json::json!({
                "kind": info.layer.kind().name(),
                "input": info.input.dims(),
                "output": info.output.dims(),
                "parameters": info.layer.parameter_count(),
            })
        })
        .collect();
    if let Some(path) = &args.json {
        let value = serde_json::json!({
            "kind": "model",
            "file": args.file.display().to_string(),
            "format_version": model.format_version(),
            "input_shape": model.input_shape().dims(),
            "output_size": model.output_len(),
            "layers": layers,
            "parameter_count": model.parameter_count(),
            "blob_bytes": model.as_bytes().len(),
            "sha256": sha,
            "arena_bytes": model.required_arena_bytes(),
        });
        report::write_json(path, &value)?;
        return Ok(Outcome::Ok);
    }
    let mut text = String::new();
    let _ = writeln!(text, "model blob    {}", args.file.display());
    let _ = writeln!(text, "format        version {}", model.format_version());
    let _ = writeln!(text, "input shape   {}", model.input_shape());
    let _ = writeln!(text, "output size   {}", model.output_len());
    let _ = writeln!(text, "layers        {}", model.layer_count());
    for (i, info) in model.layers().enumerate() {
        let params = info.layer.parameter_count();
        let _ = write!(
            text,
            "  {i:3}  {:<10} {} -> {}",
            info.layer.kind().name(),
            info.input,
            info.output
        );
        if params > 0 {
            let _ = write!(text, "  ({params} parameters)");
        }
        text.push('\n');
    }
    let _ = writeln!(text, "parameters    {}", model.parameter_count());
    let _ = writeln!(text, "blob bytes    {}", model.as_bytes().len());
    let _ = writeln!(text, "sha256        {sha}");
    let _ = writeln!(text, "arena bytes   {}", model.required_arena_bytes());
    report::write_output(std::path::Path::new("-"), text.as_bytes())?;
    Ok(Outcome::Ok)
}
