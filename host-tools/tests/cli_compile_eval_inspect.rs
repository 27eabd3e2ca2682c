//! `compile` -> `eval` -> `inspect` end to end on ACAS Xu N1,1 (`.nnet`), and bad input: damaged
//! blobs, missing files and malformed CSV exit 2 naming the file, writing nothing.

use std::path::{Path, PathBuf};

use prorepair_host::compile::AlignedBlob;
use prorepair_host::require_data;
use prorepair_host::testing::acasxu_nnet;

/// The exact arena of every ACAS Xu network: two ping-pong buffers of 50 f32.
const ACASXU_ARENA_BYTES: usize = 400;

mod common;
use common::{host, s, stderr};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli_compile_eval_inspect", name)
}

/// Compile ACAS Xu N1,1 (`.nnet`) into `dir`; returns (model, blob path).
fn compiled(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let model_file = prorepair_host::testing::data_path(&acasxu_nnet(1, 1))?;
    let blob = dir.join("acas_1_1.bin");
    let header = dir.join("acas_1_1.h");
    let o = host(&[
        "compile",
        s(&model_file),
        "--out",
        s(&blob),
        "--c-array",
        s(&header),
    ]);
    assert!(o.status.success(), "compile failed: {}", stderr(&o));
    let text = std::fs::read_to_string(&header).unwrap();
    assert!(
        text.contains("static const unsigned char acas_1_1[] __attribute__((aligned(16))) = {")
    );
    assert!(text.contains(&format!(
        "static const size_t acas_1_1_len = {};",
        std::fs::metadata(&blob).unwrap().len()
    )));
    Some((model_file, blob))
}

fn inputs_csv(dir: &Path, rows: usize) -> (PathBuf, Vec<Vec<f32>>) {
    let mut data = Vec::new();
    let mut text = String::new();
    for r in 0..rows {
        let row: Vec<f32> = (0..5)
            .map(|c| ((r * 7 + c * 3) % 11) as f32 / 10.0 - 0.5)
            .collect();
        text.push_str(
            &row.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        text.push('\n');
        data.push(row);
    }
    let path = dir.join("inputs.csv");
    std::fs::write(&path, text).unwrap();
    (path, data)
}

#[test]
fn compile_eval_inspect_round_trip() {
    let _ = require_data!(&acasxu_nnet(1, 1));
    let dir = scratch("round-trip");
    let (model_file, blob_path) = compiled(&dir).unwrap();
    let (csv, rows) = inputs_csv(&dir, 12);

    // eval of the blob prints exactly what the core computes.
    let o = host(&["eval", s(&blob_path), "--inputs", s(&csv)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: Vec<Vec<f32>> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let blob = AlignedBlob::new(&std::fs::read(&blob_path).unwrap());
    let model = blob.model().unwrap();
    let mut arena = vec![0.0; model.required_arena_len()];
    assert_eq!(printed.len(), rows.len());
    for (row, got) in rows.iter().zip(&printed) {
        let mut out = vec![0.0; 5];
        model.evaluate(row, &mut arena, &mut out).unwrap();
        assert_eq!(
            got, &out,
            "eval of the blob equals the core's evaluation bit for bit"
        );
    }

    // eval of the .nnet (host IR, f64) agrees to f32 accuracy; --json writes the report.
    let json_path = dir.join("host.json");
    let o = host(&[
        "eval",
        s(&model_file),
        "--inputs",
        s(&csv),
        "--json",
        s(&json_path),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let outputs = report["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), rows.len());
    for (host_row, core_row) in outputs.iter().zip(&printed) {
        for (h, c) in host_row.as_array().unwrap().iter().zip(core_row) {
            let h = h.as_f64().unwrap();
            assert!(
                (h - f64::from(*c)).abs() <= 1e-5 * (1.0 + h.abs()),
                "host {h} vs core {c}"
            );
        }
    }

    // inspect: text and JSON, with the exact arena bytes.
    let o = host(&["inspect", s(&blob_path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains(&format!("arena bytes   {ACASXU_ARENA_BYTES}\n")),
        "{text}"
    );
    assert!(text.contains("format        version 1"), "{text}");
    assert!(text.contains("output size   5"), "{text}");
    let o = host(&["inspect", s(&blob_path), "--json", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["arena_bytes"], ACASXU_ARENA_BYTES);
    assert_eq!(
        v["arena_bytes"].as_u64().unwrap() as usize,
        model.required_arena_bytes()
    );
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["output_size"], 5);
    assert_eq!(v["parameter_count"], 13_305);
    assert_eq!(
        v["blob_bytes"].as_u64().unwrap() as usize,
        model.as_bytes().len()
    );
    let sha: String = model.sha256().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["sha256"], sha);
    let dense = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "Dense")
        .count();
    assert_eq!(dense, 7);
}

/// Run `args`, expect exit 2 with a message naming `file` and containing `problem`.
fn assert_bad_input(args: &[&str], file: &Path, problem: &str) {
    let o = host(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(s(file)),
        "{args:?}: message does not name {}: {err}",
        file.display()
    );
    assert!(
        err.to_lowercase().contains(problem),
        "{args:?}: message lacks {problem:?}: {err}"
    );
}

fn fix_crc(b: &mut [u8]) {
    // CRC-32/ISO-HDLC over everything but bytes 12..16 (the blob format).
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in b[..12].iter().chain(&b[16..]) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    b[12..16].copy_from_slice(&(!crc).to_le_bytes());
}

#[test]
fn damaged_blobs_exit_2_naming_the_file() {
    let _ = require_data!(&acasxu_nnet(1, 1));
    let dir = scratch("damaged");
    let (_, blob_path) = compiled(&dir).unwrap();
    let (csv, _) = inputs_csv(&dir, 3);
    let good = std::fs::read(&blob_path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.bin",
            good[..good.len() - 7].to_vec(),
            "truncated",
        ),
        (
            "flipped.bin",
            {
                let mut b = good.clone();
                let at = b.len() - 100;
                b[at] ^= 0x10;
                b
            },
            "crc",
        ),
        (
            "version.bin",
            {
                let mut b = good.clone();
                b[4] = 9;
                fix_crc(&mut b);
                b
            },
            "version",
        ),
        (
            "shape.bin",
            {
                let mut b = good.clone();
                b[20..24].copy_from_slice(&6u32.to_le_bytes()); // input [6]: Dense expects 5
                fix_crc(&mut b);
                b
            },
            "shape",
        ),
    ];
    for (name, bytes, problem) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let json = dir.join(format!("{name}.json"));
        assert_bad_input(
            &["eval", s(&path), "--inputs", s(&csv), "--json", s(&json)],
            &path,
            problem,
        );
        assert!(!json.exists(), "no output file on failure");
        assert_bad_input(&["inspect", s(&path)], &path, problem);
    }
}

#[test]
fn missing_files_and_malformed_csv_exit_2() {
    let _ = require_data!(&acasxu_nnet(1, 1));
    let dir = scratch("malformed");
    let (model_file, blob_path) = compiled(&dir).unwrap();
    let missing = dir.join("missing.bin");
    let (csv, _) = inputs_csv(&dir, 2);
    assert_bad_input(
        &["eval", s(&missing), "--inputs", s(&csv)],
        &missing,
        "cannot read",
    );
    assert_bad_input(&["inspect", s(&missing)], &missing, "cannot read");
    let out = dir.join("never.bin");
    assert_bad_input(&["compile", s(&missing), "--out", s(&out)], &missing, "");
    assert!(!out.exists());
    let missing_csv = dir.join("missing.csv");
    assert_bad_input(
        &["eval", s(&blob_path), "--inputs", s(&missing_csv)],
        &missing_csv,
        "cannot read",
    );
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "0.1, 0.2, 0.3, 0.4, 0.5\n0.1, zero, 0.3, 0.4, 0.5\n").unwrap();
    let json = dir.join("bad.json");
    assert_bad_input(
        &[
            "eval",
            s(&blob_path),
            "--inputs",
            s(&bad),
            "--json",
            s(&json),
        ],
        &bad,
        "line 2, column 2",
    );
    assert!(!json.exists());
    std::fs::write(&bad, "0.1, 0.2, 0.3, 0.4\n").unwrap();
    assert_bad_input(
        &["eval", s(&blob_path), "--inputs", s(&bad)],
        &bad,
        "4 values, the model takes 5",
    );
    assert_bad_input(
        &["eval", s(&model_file), "--inputs", s(&bad)],
        &bad,
        "4 values, the model takes 5",
    );
    // Not a blob: inspect says so.
    assert_bad_input(&["inspect", s(&csv)], &csv, "not a prorepair model blob");
}
