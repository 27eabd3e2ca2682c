//! Support for the workspace-level integration tests in `tests/`: re-exports the shared
//! test-data helpers of the host library, and the firmware archive the C tests link.

pub use prorepair_host::require_data;
pub use prorepair_host::testing::*;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `libprorepair.a` as firmware links it (`cargo build -p prorepair-ffi --profile
/// min-size`: no_std, panic=abort), or why it could not be built. Built once per test
/// binary; the path comes from cargo's JSON messages, so any target directory is honoured.
pub fn firmware_archive() -> &'static Result<PathBuf, String> {
    static ARCHIVE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ARCHIVE.get_or_init(build_firmware_archive)
}

fn build_firmware_archive() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "prorepair-ffi",
            "--profile",
            "min-size",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p prorepair-ffi failed: {}",
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let files = message["filenames"].as_array().into_iter().flatten();
        for file in files.filter_map(|f| f.as_str()) {
            if file.ends_with("libprorepair.a") {
                return Ok(PathBuf::from(file));
            }
        }
    }
    Err("cargo reported no libprorepair.a".into())
}
