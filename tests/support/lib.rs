//! Support for the workspace-level integration tests in `tests/`: re-exports the shared
//! test-data helpers of the host library, and the firmware archive the C tests link.

pub use prorepair_host::require_data;
pub use prorepair_host::testing::*;

use std::path::{Path, PathBuf};
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

/// Whether `program` runs here (`program --version` succeeds): the C tests skip, saying
/// so, without gcc, and run their valgrind and readelf checks only where those exist.
pub fn have_tool(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ACAS Xu N2,1 repaired for property 2 by the default `repair::repair` (asserted proven),
/// as the end-to-end tests use it.
#[derive(Debug)]
pub struct N21Prop2Repair {
    /// The ONNX file of the base network.
    pub onnx: PathBuf,
    /// The base network (from the ONNX file).
    pub net: prorepair_host::Network,
    /// The proven repaired network.
    pub repaired: prorepair_host::Network,
    /// The property's input boxes, the patch's verified regions.
    pub regions: Vec<(Vec<f64>, Vec<f64>)>,
}

/// [`N21Prop2Repair`], or `None` when `../shared/data` is absent.
pub fn repair_n21_prop2() -> Option<N21Prop2Repair> {
    use prorepair_host::repair::{self, RepairProperty};
    let onnx = data_path(&acasxu_onnx(2, 1)).filter(|p| p.exists())?;
    let spec = data_path("acasxu/vnnlib/prop_2.vnnlib").filter(|p| p.exists())?;
    let net = prorepair_host::import::load(&onnx).unwrap();
    let property = prorepair_host::spec::Property::from_vnnlib(&spec).unwrap();
    let rp = RepairProperty::from_spec("prop_2", &property, &net).unwrap();
    let outcome = repair::repair(
        &net,
        std::slice::from_ref(&rp),
        &repair::RepairOptions::default(),
    )
    .unwrap();
    assert!(outcome.verified, "N2,1 prop_2 not repaired");
    let regions = rp
        .cases
        .iter()
        .map(|c| (c.lower.clone(), c.upper.clone()))
        .collect();
    Some(N21Prop2Repair {
        onnx,
        net,
        repaired: outcome.network,
        regions,
    })
}

/// The patch-modules repair (kind 2) of ACAS Xu N2,1 for property 2, as the end-to-end
/// tests use it: `repair_modules` with a 120 s budget, asserted proven on every case.
/// `None` when `../shared/data` is absent.
pub fn repair_n21_prop2_modules() -> Option<(
    prorepair_host::Network,
    prorepair_host::repair::patchmodules::ModulesRepair,
)> {
    use prorepair_host::repair::patchmodules::{self, ModuleOptions};
    let onnx = data_path(&acasxu_onnx(2, 1)).filter(|p| p.exists())?;
    let spec = data_path("acasxu/vnnlib/prop_2.vnnlib").filter(|p| p.exists())?;
    let net = prorepair_host::import::load(&onnx).unwrap();
    let property = prorepair_host::spec::Property::from_vnnlib(&spec).unwrap();
    let named: Vec<_> = prorepair_host::verify::cases_of(&net, &property)
        .unwrap()
        .into_iter()
        .map(|c| ("prop_2".to_string(), c))
        .collect();
    let options = ModuleOptions {
        timeout: std::time::Duration::from_secs(120),
        ..Default::default()
    };
    let r = patchmodules::repair_modules(&net, &named, &options).unwrap();
    assert!(r.all_hold(), "{:?}", r.outcomes);
    Some((net, r))
}

/// Compile `firmware-examples/{example}/{source}` with gcc (`-std=c11 -Wall -Wextra
/// -Werror -g`; ASan/UBSan when `sanitize`, else `-O1`; then `extra`), the generated
/// headers in `dir` on the include path, and link it with the firmware archive; the
/// executable `dir/exe`. Panics with gcc's message when it fails.
pub fn build_c_example(
    example: &str,
    source: &str,
    dir: &Path,
    exe: &str,
    sanitize: bool,
    extra: &[&str],
) -> PathBuf {
    let archive = firmware_archive().clone().expect("libprorepair.a builds");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join(exe);
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"]);
    if sanitize {
        gcc.args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]);
    } else {
        gcc.arg("-O1");
    }
    gcc.args(extra)
        .arg("-I")
        .arg(root.join("include"))
        .arg("-I")
        .arg(dir)
        .arg(root.join("firmware-examples").join(example).join(source))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(archive.parent().unwrap())
        .arg("-lprorepair");
    let output = gcc.output().expect("gcc runs");
    assert!(
        output.status.success(),
        "gcc failed on {example}/{source}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A scratch directory for the generated headers and executables of one C example,
/// next to the firmware archive (`target/.../firmware-examples/{example}/{tag}`).
pub fn c_example_dir(example: &str, tag: &str) -> PathBuf {
    let archive = firmware_archive().clone().expect("libprorepair.a builds");
    let dir = archive
        .parent()
        .unwrap()
        .join("firmware-examples")
        .join(example)
        .join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write each `(name, bytes)` as the C header `dir/{name}.h` defining `{name}` and
/// `{name}_len`, and `dir/inputs.h` with `prelude` then `#define {count} n` and
/// `static const float inputs[{count}][5]` holding `rows` exactly.
pub fn write_c_headers(
    dir: &Path,
    arrays: &[(&str, &[u8])],
    prelude: &str,
    count: &str,
    rows: &[[f32; 5]],
) {
    for (name, bytes) in arrays {
        std::fs::write(
            dir.join(format!("{name}.h")),
            prorepair_host::compile::c_array(bytes, name),
        )
        .unwrap();
    }
    let mut text = format!(
        "{prelude}#define {count} {}\nstatic const float inputs[{count}][5] = {{\n",
        rows.len()
    );
    for r in rows {
        let v: Vec<String> = r.iter().map(|x| format!("{x:?}f")).collect();
        text.push_str(&format!("    {{{}}},\n", v.join(", ")));
    }
    text.push_str("};\n");
    std::fs::write(dir.join("inputs.h"), text).unwrap();
}

/// Run a C example and return its standard output, asserting that it exits 0 and that
/// its last line is "ok".
pub fn run_c_example(exe: &Path) -> String {
    let run = Command::new(exe).output().expect("the C program runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "C program {} failed: {}\n{stdout}",
        exe.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.ends_with("ok\n"), "{stdout}");
    stdout
}
