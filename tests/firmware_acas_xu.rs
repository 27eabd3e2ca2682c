//! The ACAS Xu C firmware example (`firmware-examples/acas_xu/`) built with gcc against
//! `libprorepair.a`, run on raw sensor values, and checked against tract's evaluation of
//! the ONNX file; plus the C program of the API's error paths, and valgrind runs.
//!
//! The archive is built with `cargo build -p prorepair-ffi --profile min-size` (the
//! no_std, `panic = "abort"` build that links with libc only) in the same target
//! directory as the tests (`CARGO_TARGET_DIR` respected: cargo reports the archive's
//! path). The model and normalisation headers are generated from the real `.nnet` file
//! into a build directory beside the archive, never into the repository.
//!
//! Skips (with a message) when gcc or the data is absent; the valgrind checks skip when
//! valgrind is absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use prorepair_host::compile::{c_array, compile};
use prorepair_host::import::nnet::{self, NnetNormalization};
use prorepair_host::import::onnx::TractModel;
use prorepair_tests::{acasxu_nnet, acasxu_onnx, data_path};

/// The workspace root (the root package's manifest directory).
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// ACAS Xu networks the example is checked on: N1,1 and N2,9 (property 8 fails on it).
const NETWORKS: [(u32, u32); 2] = [(1, 1), (2, 9)];

/// Raw sensor samples: rho (ft), theta (rad), psi (rad), v_own (ft/s), v_int (ft/s).
/// Chosen to cover several advisories, and values outside the .nnet bounds (clamped).
const SAMPLES: [[f64; 5]; 12] = [
    [4200.0, -1.7, 0.2, 770.0, 670.0],
    [1500.0, 0.3, -2.8, 800.0, 700.0],
    [1500.0, -0.3, 2.8, 800.0, 700.0],
    [500.0, 0.05, 3.1, 1000.0, 900.0],
    [3000.0, 1.2, -1.5, 300.0, 900.0],
    [3000.0, -1.2, 1.5, 300.0, 900.0],
    [8000.0, 0.1, -3.0, 1200.0, 1200.0],
    [20000.0, 2.5, 0.0, 600.0, 100.0],
    [900.0, -0.6, -2.0, 150.0, 1100.0],
    [2500.0, 0.8, 3.0, 700.0, 50.0],
    [70000.0, 4.0, -4.0, 50.0, 1300.0],
    [0.0, 0.0, 0.0, 100.0, 0.0],
];

/// The archive, or why it could not be built (tests share one build).
fn archive() -> &'static Result<PathBuf, String> {
    static ARCHIVE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ARCHIVE.get_or_init(build_archive)
}

/// `cargo build -p prorepair-ffi --profile min-size`; the path of libprorepair.a from
/// cargo's JSON messages (so any target directory setting is honoured).
fn build_archive() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(ROOT)
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

/// True when `program --version` runs.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The .nnet and ONNX paths of N(a,b), or `None` (printed) when the data is absent.
fn network_paths(a: u32, b: u32) -> Option<(PathBuf, PathBuf)> {
    let nnet = data_path(&acasxu_nnet(a, b))?;
    let onnx = data_path(&acasxu_onnx(a, b))?;
    Some((nnet, onnx))
}

/// `None` with a message when gcc is missing.
fn require_gcc() -> Option<()> {
    if have("gcc") {
        Some(())
    } else {
        eprintln!("SKIP: gcc is not installed; the C firmware example cannot be built");
        None
    }
}

/// A directory for the generated headers and programs of N(a,b), beside the archive.
fn build_dir(archive: &Path, tag: &str) -> PathBuf {
    let dir = archive
        .parent()
        .expect("the archive is in a directory")
        .join("firmware-examples")
        .join(tag);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Write `acasxu_model.h` (the compiled blob) and `acasxu_norm.h` (the .nnet input
/// normalisation) for the .nnet file into `dir`; the normalisation.
fn generate_headers(nnet_path: &Path, dir: &Path) -> NnetNormalization {
    let (network, norm) = nnet::load(nnet_path).expect("the .nnet file imports");
    let blob = compile(&network).expect("the network compiles to a blob");
    std::fs::write(dir.join("acasxu_model.h"), c_array(&blob, "acasxu_model")).unwrap();
    let array = |name: &str, values: &[f64]| {
        assert_eq!(values.len(), 5, "{name}");
        // `{:?}` prints the shortest text that reads back as the same f64.
        let items: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        format!(
            "static const double {name}[5] = {{{}}};\n",
            items.join(", ")
        )
    };
    let text = format!(
        "/* ACAS Xu input normalisation from {}, generated by tests/firmware_acas_xu.rs. */\n\
         #ifndef ACASXU_NORM_H\n#define ACASXU_NORM_H\n{}{}{}{}#endif\n",
        nnet_path.display(),
        array("ACASXU_INPUT_MIN", &norm.input_min),
        array("ACASXU_INPUT_MAX", &norm.input_max),
        array("ACASXU_INPUT_MEAN", &norm.input_mean),
        array("ACASXU_INPUT_RANGE", &norm.input_range),
    );
    std::fs::write(dir.join("acasxu_norm.h"), text).unwrap();
    norm
}

/// Compile `source` (in firmware-examples/acas_xu) with the generated headers in `dir`
/// and link it with the archive; sanitizers on or off; extra flags.
fn build_c(
    archive: &Path,
    dir: &Path,
    source: &str,
    exe: &str,
    sanitize: bool,
    extra: &[&str],
) -> PathBuf {
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
        .arg(Path::new(ROOT).join("include"))
        .arg("-I")
        .arg(dir)
        .arg(
            Path::new(ROOT)
                .join("firmware-examples/acas_xu")
                .join(source),
        )
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(archive.parent().unwrap())
        .arg("-lprorepair");
    let output = gcc.output().expect("gcc runs");
    assert!(
        output.status.success(),
        "gcc failed on {source}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Run `program` (optionally under valgrind) with `args` and `stdin`.
fn run(program: &Path, args: &[String], stdin: &str, valgrind: bool) -> Output {
    let mut command = if valgrind {
        let mut c = Command::new("valgrind");
        c.args(["-q", "--error-exitcode=1", "--leak-check=full"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// One output line of the controller.
#[derive(Debug, PartialEq)]
struct Advice {
    normalised: Vec<f32>,
    scores: Vec<f32>,
    advisory: usize,
    name: String,
}

const ADVISORIES: [&str; 5] = [
    "COC",
    "weak left",
    "weak right",
    "strong left",
    "strong right",
];

fn parse_line(line: &str) -> Advice {
    let floats = |text: &str| -> Vec<f32> {
        text.split(',')
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("bad number {v:?} in {line:?}"))
            })
            .collect()
    };
    let rest = line
        .strip_prefix("normalised=")
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    let (normalised, rest) = rest.split_once(" scores=").unwrap();
    let (scores, rest) = rest.split_once(" advisory=").unwrap();
    let (index, name) = rest.split_once(' ').unwrap();
    Advice {
        normalised: floats(normalised),
        scores: floats(scores),
        advisory: index.parse().unwrap(),
        name: name.to_string(),
    }
}

/// The controller's normalisation, done here in f64 then rounded, as the C code does.
fn normalise(norm: &NnetNormalization, raw: &[f64; 5]) -> Vec<f32> {
    (0..5)
        .map(|i| {
            ((raw[i].clamp(norm.input_min[i], norm.input_max[i]) - norm.input_mean[i])
                / norm.input_range[i]) as f32
        })
        .collect()
}

fn argmin(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x < v[best] {
            best = i;
        }
    }
    best
}

fn samples_stdin() -> String {
    let mut text = String::from("# rho theta psi v_own v_int\n\n");
    for s in SAMPLES {
        // Mixed separators, as the controller accepts.
        text.push_str(&format!("{}, {} {},{} {}\n", s[0], s[1], s[2], s[3], s[4]));
    }
    text
}

/// Check the controller's lines against tract on the ONNX file; the advisories seen.
fn check_against_tract(
    lines: &[Advice],
    raws: &[[f64; 5]],
    norm: &NnetNormalization,
    tract: &TractModel,
) -> Vec<usize> {
    assert_eq!(lines.len(), raws.len(), "one line per sample");
    let mut advisories = Vec::new();
    for (advice, raw) in lines.iter().zip(raws) {
        assert_eq!(
            advice.normalised,
            normalise(norm, raw),
            "normalisation of {raw:?}"
        );
        let want = tract
            .run(&advice.normalised)
            .expect("tract runs the ONNX model");
        assert_eq!(want.len(), 5);
        for (k, (got, want)) in advice.scores.iter().zip(&want).enumerate() {
            let tolerance = 1e-5 * (1.0 + want.abs());
            assert!(
                (got - want).abs() <= tolerance,
                "{raw:?}: score {k}: C {got} vs tract {want} (tolerance {tolerance})"
            );
        }
        assert_eq!(
            advice.advisory,
            argmin(&advice.scores),
            "{raw:?}: advisory is the lowest score"
        );
        assert_eq!(advice.name, ADVISORIES[advice.advisory]);
        // Tract must pick the same advisory unless its two lowest scores are within the
        // comparison tolerance of each other.
        let tract_choice = argmin(&want);
        if tract_choice != advice.advisory {
            let gap = (want[tract_choice] - want[advice.advisory]).abs();
            assert!(
                gap <= 2e-5 * (1.0 + want[tract_choice].abs()),
                "{raw:?}: C advises {}, tract {}",
                advice.advisory,
                tract_choice
            );
        }
        advisories.push(advice.advisory);
    }
    advisories
}

#[test]
fn acas_xu_controller_matches_tract_on_raw_sensor_inputs() {
    if require_gcc().is_none() {
        return;
    }
    let mut all_advisories = std::collections::BTreeSet::new();
    for (a, b) in NETWORKS {
        let Some((nnet_path, onnx_path)) = network_paths(a, b) else {
            return;
        };
        let archive = archive().as_ref().expect("libprorepair.a builds");
        let dir = build_dir(archive, &format!("acas_xu_{a}_{b}"));
        let norm = generate_headers(&nnet_path, &dir);
        let exe = build_c(archive, &dir, "main.c", "acas_xu_asan", true, &[]);
        let tract = TractModel::load(&onnx_path).expect("tract loads the ONNX file");

        // Samples on stdin.
        let output = run(&exe, &[], &samples_stdin(), false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "N{a},{b}: {}\n{stderr}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<Advice> = stdout.lines().map(parse_line).collect();
        let advisories = check_against_tract(&lines, &SAMPLES, &norm, &tract);
        eprintln!("N{a},{b}: advisories {advisories:?}");
        all_advisories.extend(advisories);

        // One sample from argv.
        let raw = SAMPLES[1];
        let args: Vec<String> = raw.iter().map(|v| v.to_string()).collect();
        let output = run(&exe, &args, "", false);
        assert!(
            output.status.success(),
            "argv run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8_lossy(&output.stdout);
        let argv_line = parse_line(line.trim_end());
        check_against_tract(std::slice::from_ref(&argv_line), &[raw], &norm, &tract);
        assert_eq!(argv_line, lines[1], "argv and stdin give the same line");
    }
    assert!(
        all_advisories.len() >= 3,
        "the samples should cover several advisories, got {all_advisories:?}"
    );
}

#[test]
fn acas_xu_controller_checks_its_arena_and_its_input() {
    if require_gcc().is_none() {
        return;
    }
    let (a, b) = NETWORKS[0];
    let Some((nnet_path, _)) = network_paths(a, b) else {
        return;
    };
    let archive = archive().as_ref().expect("libprorepair.a builds");
    let dir = build_dir(archive, "acas_xu_checks");
    generate_headers(&nnet_path, &dir);
    // An arena smaller than the model needs is refused at start-up, before any input.
    let small = build_c(
        archive,
        &dir,
        "main.c",
        "acas_xu_small_arena",
        true,
        &["-DACASXU_ARENA_CAPACITY=16"],
    );
    let output = run(&small, &[], "1000 0 0 500 500\n", false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("arena of 400 bytes, this build has 16"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    // Bad input lines: exit code 2 with the line number; earlier lines were answered.
    let exe = build_c(archive, &dir, "main.c", "acas_xu_asan", true, &[]);
    for (text, answered) in [
        ("1000 0 0 500 500\n1000 0 0 500\n", 1),
        ("1 2 3 4 5 6\n", 0),
        ("1 2 x 4 5\n", 0),
        ("nan 0 0 500 500\n", 0),
    ] {
        let output = run(&exe, &[], text, false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("stdin line {}", answered + 1)),
            "{text:?}: {stderr}"
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).lines().count(),
            answered,
            "{text:?}"
        );
    }
    let output = run(&exe, &["1".into(), "2".into()], "", false);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn c_error_paths_give_their_status_and_leave_outputs_untouched() {
    if require_gcc().is_none() {
        return;
    }
    let (a, b) = NETWORKS[0];
    let Some((nnet_path, _)) = network_paths(a, b) else {
        return;
    };
    let archive = archive().as_ref().expect("libprorepair.a builds");
    let dir = build_dir(archive, "error_paths");
    generate_headers(&nnet_path, &dir);
    let exe = build_c(
        archive,
        &dir,
        "error_paths.c",
        "error_paths_asan",
        true,
        &[],
    );
    let output = run(&exe, &[], "", false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for expected in [
        "ok: truncated by one byte: truncated: shorter than its header or declared length",
        "ok: bit-flipped weight: CRC mismatch: the blob is corrupted",
        "ok: wrong version: unsupported format version",
        "ok: wrong input shape: shape mismatch between consecutive layers",
        "ok: misaligned blob: misaligned buffer: the blob must start at a 4-byte aligned address",
        "ok: NULL blob: null pointer argument",
        "ok: evaluate: arena one byte short: arena too small",
        "ok: evaluate: zeroed model: model not loaded: call pr_model_load first",
        "0 failure(s)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn c_programs_are_clean_under_valgrind() {
    if require_gcc().is_none() {
        return;
    }
    if !have("valgrind") {
        eprintln!("SKIP: valgrind is not installed");
        return;
    }
    let (a, b) = NETWORKS[0];
    let Some((nnet_path, onnx_path)) = network_paths(a, b) else {
        return;
    };
    let archive = archive().as_ref().expect("libprorepair.a builds");
    let dir = build_dir(archive, "valgrind");
    let norm = generate_headers(&nnet_path, &dir);
    let exe = build_c(archive, &dir, "main.c", "acas_xu_plain", false, &[]);
    let output = run(&exe, &[], &samples_stdin(), true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "valgrind: {}\n{stderr}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Advice> = stdout.lines().map(parse_line).collect();
    let tract = TractModel::load(&onnx_path).expect("tract loads the ONNX file");
    check_against_tract(&lines, &SAMPLES, &norm, &tract);

    let exe = build_c(
        archive,
        &dir,
        "error_paths.c",
        "error_paths_plain",
        false,
        &[],
    );
    let output = run(&exe, &[], "", true);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "valgrind: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
}

/// Symbols a C program gets from libc, the only library the firmware archive may need.
const LIBC_SYMBOLS: [&str; 6] = ["abort", "memcpy", "memmove", "memset", "memcmp", "bcmp"];

#[test]
fn libprorepair_needs_nothing_but_libc() {
    if !have("readelf") {
        eprintln!("SKIP: readelf (binutils) is not installed");
        return;
    }
    let archive = archive().as_ref().expect("libprorepair.a builds");
    // Unpack the members and list their symbols with readelf (binutils' nm trips over
    // the LLVM bitcode section of Rust objects).
    let dir = build_dir(archive, "archive_members");
    let status = Command::new("ar")
        .current_dir(&dir)
        .arg("x")
        .arg(archive)
        .status()
        .expect("ar runs");
    assert!(status.success());
    let mut defined = std::collections::BTreeSet::new();
    let mut undefined = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "o") {
            continue;
        }
        let output = Command::new("readelf")
            .arg("-sW")
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success(), "readelf {}", path.display());
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // Num: Value Size Type Bind Vis Ndx Name
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[0].ends_with(':') {
                continue;
            }
            let (bind, ndx, name) = (fields[4], fields[6], fields[7]);
            if ndx == "UND" {
                undefined.insert(name.to_string());
            } else if bind == "GLOBAL" || bind == "WEAK" {
                defined.insert(name.to_string());
            }
        }
    }
    let external: Vec<&String> = undefined.difference(&defined).collect();
    eprintln!("libprorepair.a needs from outside: {external:?}");
    for name in ["pr_model_load", "pr_model_evaluate", "pr_status_str"] {
        assert!(defined.contains(name), "the archive does not define {name}");
    }
    let foreign: Vec<&&String> = external
        .iter()
        .filter(|s| !LIBC_SYMBOLS.contains(&s.as_str()))
        .collect();
    assert!(
        foreign.is_empty(),
        "libprorepair.a needs symbols beyond libc (a std or unwinding dependency?): {foreign:?}"
    );
}
