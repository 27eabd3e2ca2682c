//! Writing command outputs without ever leaving a partial file behind.

use std::io::Write;
use std::path::Path;

use super::CliError;

/// Write `bytes` to `path` (`-` is stdout) atomically: a temporary file beside the
/// target, then a rename, so a failure never leaves a truncated output.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| CliError::Internal(format!("writing to stdout: {e}")));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| CliError::file(path, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::file(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// Serialise a JSON report (pretty, trailing newline) to `path` (`-` is stdout).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), CliError> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::Internal(e.to_string()))?;
    text.push('\n');
    write_output(path, text.as_bytes())
}
