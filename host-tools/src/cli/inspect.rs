//! `prorepair-host inspect`: describe a device model blob or a patch.

use std::fmt::Write;
use std::path::PathBuf;

use super::eval::{is_model_blob, load_blob, read_file};
use super::{CliError, Outcome, report};
/// The shared header fields of either kind's info struct (`PatchInfo`, `ModulesInfo`:
/// same field names, different types).
macro_rules! patch_header {
    ($info:expr) => {
        PatchHeader {
            kind: $info.kind,
            format_version: $info.format_version,
            patch_bytes: $info.patch_bytes,
            sequence: $info.sequence,
            base_sha256: &$info.base_sha256,
            base_blob_bytes: $info.base_blob_bytes,
            signature: $info.signature,
            signer: $info.signer.as_deref(),
            verified: $info.verified_with.is_some(),
            ram_bytes: $info.ram_bytes,
        }
    };
}

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to describe: a device model blob from `compile`, or a patch from
    /// `repair --out`.
    pub file: PathBuf,
    /// With a patch: check that it applies to this model blob (SHA-256 binding, layers,
    /// shapes, through the device core); exit 2 when it does not.
    #[arg(long, value_name = "MODEL.bin")]
    pub model: Option<PathBuf>,
    /// With a patch: check its Ed25519 signature with this public key (KEY.pub from
    /// `keygen`), as a device holding the key does; exit 2 when it fails.
    #[arg(long, value_name = "KEY.pub")]
    pub key: Option<PathBuf>,
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
    if crate::patch::modules::is_modules_patch(&bytes) {
        return inspect_modules_patch(&args, &bytes);
    }
    if crate::patch::is_patch(&bytes) {
        return inspect_patch(&args, &bytes);
    }
    if !is_model_blob(&bytes) {
        return Err(CliError::file(
            &args.file,
            "not a prorepair model blob or patch (bad magic)",
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

/// `inspect PATCH [--model MODEL.bin]`.
fn inspect_patch(args: &Args, bytes: &[u8]) -> Result<Outcome, CliError> {
    let mut info = crate::patch::inspect(bytes)
        .map_err(|e| CliError::file(&args.file, format!("invalid patch: {e}")))?;
    // The signature check, when asked: the device core's own check.
    if let Some(key_path) = &args.key {
        let key = crate::patch::sign::read_public(key_path)
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        let patch =
            prorepair_core::Patch::from_bytes(bytes).map_err(|e| CliError::file(&args.file, e))?;
        patch.check_signature(Some(&key)).map_err(|e| {
            CliError::file(
                &args.file,
                format!("signature check with {} failed: {e}", key_path.display()),
            )
        })?;
        info.verified_with = Some(crate::patch::sign::key_hex(&key));
    }
    // The binding check, when asked: the same checks the device makes.
    let binding = match &args.model {
        None => None,
        Some(path) => {
            let model_bytes = read_file(path)?;
            let blob = load_blob(path, &model_bytes)?;
            let model = blob.model().map_err(|e| CliError::file(path, e))?;
            let patch = prorepair_core::Patch::from_bytes(bytes)
                .map_err(|e| CliError::file(&args.file, e))?;
            let mut ram = Vec::new();
            crate::patch::apply_to_blob(&model, &patch, &mut ram).map_err(|e| {
                CliError::file(
                    &args.file,
                    format!("does not apply to {}: {e}", path.display()),
                )
            })?;
            Some(path.display().to_string())
        }
    };
    if let Some(path) = &args.json {
        return write_patch_json(args, path, &info, binding);
    }
    let mut text = patch_header_text(args, &patch_header!(info));
    let _ = writeln!(text, "layers        {} changed", info.layers.len());
    for l in &info.layers {
        let _ = writeln!(
            text,
            "  {:3}  {:<6} {:>7} values, {:>7} stored, {:>8} bytes",
            l.index, l.encoding, l.values, l.entries, l.bytes
        );
    }
    finish_patch_text(text, info.regions, binding)
}

/// `inspect PATCH` for a patch-modules patch (kind 2): kind, modules (indicator, widths,
/// sizes, box summary), signer; `--key` and `--model` make the device's checks.
fn inspect_modules_patch(args: &Args, bytes: &[u8]) -> Result<Outcome, CliError> {
    use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
    let mut info = crate::patch::modules::inspect(bytes)
        .map_err(|e| CliError::file(&args.file, format!("invalid patch: {e}")))?;
    let patch = ModulePatch::from_bytes(bytes).map_err(|e| CliError::file(&args.file, e))?;
    if let Some(key_path) = &args.key {
        let key = crate::patch::sign::read_public(key_path)
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        patch.check_signature(Some(&key)).map_err(|e| {
            CliError::file(
                &args.file,
                format!("signature check with {} failed: {e}", key_path.display()),
            )
        })?;
        info.verified_with = Some(crate::patch::sign::key_hex(&key));
    }
    let binding = match &args.model {
        None => None,
        Some(path) => {
            let model_bytes = read_file(path)?;
            let blob = load_blob(path, &model_bytes)?;
            let model = blob.model().map_err(|e| CliError::file(path, e))?;
            let mut ram = vec![0f32; patch.required_ram_len()];
            ModulesModel::new(&model, &patch, &mut ram).map_err(|e| {
                CliError::file(
                    &args.file,
                    format!("does not apply to {}: {e}", path.display()),
                )
            })?;
            Some(path.display().to_string())
        }
    };
    if let Some(path) = &args.json {
        return write_patch_json(args, path, &info, binding);
    }
    let mut text = patch_header_text(args, &patch_header!(info));
    let _ = writeln!(
        text,
        "modules       {} ({} parameters)",
        info.modules.len(),
        info.module_parameters
    );
    for (i, m) in info.modules.iter().enumerate() {
        let widths: Vec<String> = m.widths.iter().map(|w| w.to_string()).collect();
        let indicator = match (&m.lower, &m.upper, m.box_width, &m.labels) {
            (Some(lo), Some(up), _, _) => {
                let sides: Vec<String> = lo
                    .iter()
                    .zip(up)
                    .map(|(l, u)| format!("[{l}, {u}]"))
                    .collect();
                format!("box {}", sides.join(" x "))
            }
            (_, _, Some((a, b)), _) => format!("box, widths {a} .. {b}"),
            (_, _, _, Some(labels)) => format!("{} {labels:?}", m.indicator),
            _ => m.indicator.to_string(),
        };
        // A module at a feature layer reads the base's K-th activation, not the input.
        let reads = match m.input_layer {
            0 => String::new(),
            k => format!(", reads activation {k}"),
        };
        let _ = writeln!(
            text,
            "  {i:3}  {:>14}  {:>6} parameters, {:>7} bytes  {indicator}{reads}",
            widths.join("-"),
            m.parameters,
            m.bytes
        );
    }
    finish_patch_text(text, info.regions, binding)
}

/// The header fields both patch kinds share, for the text view.
struct PatchHeader<'a> {
    kind: &'a str,
    format_version: u16,
    patch_bytes: usize,
    sequence: u32,
    base_sha256: &'a str,
    base_blob_bytes: usize,
    signature: &'a str,
    signer: Option<&'a str>,
    verified: bool,
    ram_bytes: usize,
}

/// `inspect --json` for either patch kind: the kind's own fields plus the file, the patch
/// kind and the model it was checked against.
fn write_patch_json(
    args: &Args,
    path: &std::path::Path,
    info: &impl serde::Serialize,
    binding: Option<String>,
) -> Result<Outcome, CliError> {
    let mut value = serde_json::to_value(info).map_err(|e| CliError::Internal(e.to_string()))?;
    value["file"] = serde_json::json!(args.file.display().to_string());
    value["patch_kind"] = value["kind"].clone();
    value["kind"] = serde_json::json!("patch");
    value["applies_to"] = serde_json::json!(binding);
    report::write_json(path, &value)?;
    Ok(Outcome::Ok)
}

/// The first lines of the text view, the same for both patch kinds.
fn patch_header_text(args: &Args, h: &PatchHeader<'_>) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "patch         {}", args.file.display());
    let _ = writeln!(
        text,
        "kind          {} (format version {})",
        h.kind, h.format_version
    );
    let _ = writeln!(text, "patch bytes   {}", h.patch_bytes);
    let _ = writeln!(text, "sequence      {}", h.sequence);
    let _ = writeln!(text, "base sha256   {}", h.base_sha256);
    let _ = writeln!(text, "base bytes    {}", h.base_blob_bytes);
    let _ = writeln!(text, "signature     {}", h.signature);
    if let Some(signer) = h.signer {
        let check = match (h.verified, &args.key) {
            (true, Some(path)) => format!("signature verified with {}", path.display()),
            _ => "signature not checked: give --key KEY.pub".to_string(),
        };
        let _ = writeln!(text, "signer        key {signer} ({check})");
    }
    let _ = writeln!(text, "device RAM    {} bytes", h.ram_bytes);
    text
}

/// The last lines of the text view (regions, binding), then print it.
fn finish_patch_text(
    mut text: String,
    regions: usize,
    binding: Option<String>,
) -> Result<Outcome, CliError> {
    let _ = writeln!(text, "regions       {regions}");
    if let Some(m) = binding {
        let _ = writeln!(text, "applies to    {m}");
    }
    report::write_output(std::path::Path::new("-"), text.as_bytes())?;
    Ok(Outcome::Ok)
}
