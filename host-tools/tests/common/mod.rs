//! Helpers shared by the CLI integration tests: run the built binary, fresh scratch
//! directories, path and stderr conversions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run `prorepair-host` with `args`.
pub fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prorepair-host"))
        .args(args)
        .output()
        .expect("run prorepair-host")
}

/// An empty directory `<test binary>-<name>` under cargo's per-target temp dir.
pub fn scratch(test: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
