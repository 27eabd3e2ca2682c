//! Test support shared by the unit, integration and benchmark code of the workspace.
//!
//! Tests that need the real networks and properties read them in place from
//! `../shared/data` (beside the workspace root), or from `$PROREPAIR_DATA`. On a fresh
//! machine without that directory they skip, saying so; CI always has it.

use std::path::PathBuf;

/// The shared data directory, if present.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PROREPAIR_DATA") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// A path inside the shared data directory, or `None` (after printing why) when the
/// data is absent, so the calling test can skip.
pub fn data_path(relative: &str) -> Option<PathBuf> {
    match data_dir() {
        Some(dir) => Some(dir.join(relative)),
        None => {
            eprintln!("SKIP: ../shared/data is absent (set PROREPAIR_DATA); test needs {relative}");
            None
        }
    }
}

/// `let path = require_data!("acasxu/onnx/...")` returns from the test when absent.
#[macro_export]
macro_rules! require_data {
    ($relative:expr) => {
        match $crate::testing::data_path($relative) {
            Some(p) => p,
            None => return,
        }
    };
}

/// The 45 ACAS Xu network indices `(a, b)`, a in 1..=5, b in 1..=9.
pub fn acasxu_indices() -> impl Iterator<Item = (u32, u32)> {
    (1..=5).flat_map(|a| (1..=9).map(move |b| (a, b)))
}

/// Relative path of ACAS Xu network N(a,b) in ONNX form.
pub fn acasxu_onnx(a: u32, b: u32) -> String {
    format!("acasxu/onnx/ACASXU_run2a_{a}_{b}_batch_2000.onnx")
}

/// Relative path of ACAS Xu network N(a,b) in `.nnet` form.
pub fn acasxu_nnet(a: u32, b: u32) -> String {
    format!("acasxu/nnet/ACASXU_run2a_{a}_{b}_batch_2000.nnet")
}
