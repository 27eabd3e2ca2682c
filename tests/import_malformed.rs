//! Every file of the malformed corpus (tests/malformed/, made by make_corpus.py) gives
//! the expected kind of error, with the file name in the message, and no panic. Cut and
//! corrupted versions of valid files never panic either.

use std::path::{Path, PathBuf};

use prorepair_host::import::{self, ImportError, nnet, onnx::TractModel};
use prorepair_host::spec::{Property, SpecError, SpecErrorKind, vnnlib};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/malformed")
        .join(name)
}

/// Import `name`, expecting an error whose message names the file and contains `text`.
fn import_error(name: &str, text: &str) -> ImportError {
    let path = corpus(name);
    assert!(
        path.is_file(),
        "corpus file {name} missing: run tests/malformed/make_corpus.py"
    );
    let err = match import::load(&path) {
        Ok(net) => panic!("{name}: imported without error: {net}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()),
        "{name}: message does not start with the path: {msg}"
    );
    assert!(msg.contains(text), "{name}: expected '{text}' in: {msg}");
    assert_eq!(err.path(), path);
    err
}

#[test]
fn malformed_onnx_files_give_clear_errors() {
    for name in [
        "truncated.onnx",
        "random_bytes.onnx",
        "empty.onnx",
        "text.onnx",
    ] {
        let err = import_error(name, "");
        assert!(
            matches!(err, ImportError::InvalidOnnx { .. }),
            "{name}: {err}"
        );
        // The reference evaluator rejects them the same way.
        assert!(
            matches!(
                TractModel::load(&corpus(name)),
                Err(ImportError::InvalidOnnx { .. })
            ),
            "{name}"
        );
    }
    let err = import_error("lstm.onnx", "unsupported operator 'LSTM' (node 'lstm_1')");
    assert!(matches!(err, ImportError::UnsupportedOperator { .. }));
    let err = import_error(
        "softmax.onnx",
        "unsupported operator 'Softmax' (node 'probabilities')",
    );
    assert!(matches!(err, ImportError::UnsupportedOperator { .. }));
    // GELU with a clipped factor agrees with GELU on [-6, 6]: refused all the same.
    let err = import_error("gelu_clipped.onnx", "'Min' (node 'clip')");
    assert!(matches!(err, ImportError::UnsupportedOperator { .. }));
    for (name, text) in [
        ("grouped_conv.onnx", "groups = 2"),
        ("dilated_conv.onnx", "dilation"),
        ("two_inputs.onnx", "2 inputs"),
        ("branching.onnx", "not GELU"),
        ("max_nonzero.onnx", "only ReLU"),
        ("cast_f16.onnx", "cast to F16"),
    ] {
        let err = import_error(name, text);
        assert!(
            matches!(err, ImportError::UnsupportedUsage { .. }),
            "{name}: {err}"
        );
    }
    let missing = corpus("missing_file.onnx");
    let err = import::load(&missing).expect_err("a missing file is an error");
    assert!(
        matches!(err, ImportError::Io { .. }) && err.to_string().contains("missing_file.onnx"),
        "{err}"
    );
}

#[test]
fn malformed_nnet_files_give_errors_with_the_line() {
    for (name, line, text) in [
        ("empty.nnet", 1, "unexpected end of file"),
        ("wrong_layer_count.nnet", 3, "layer sizes"),
        ("short_row.nnet", 10, "expected 2 values, found 1"),
        (
            "not_a_number.nnet",
            13,
            "'minus_one' is not a finite number",
        ),
        ("truncated.nnet", 13, "unexpected end of file"),
        ("extra_data.nnet", 15, "unexpected data"),
        (
            "bad_header.nnet",
            2,
            "numLayers must be a non-negative integer",
        ),
    ] {
        let err = import_error(name, text);
        match &err {
            ImportError::Nnet { line: l, .. } => assert_eq!(*l, line, "{name}: {err}"),
            other => panic!("{name}: expected a .nnet error, got {other}"),
        }
        assert!(
            err.to_string().contains(&format!("{name}:{line}: ")),
            "{err}"
        );
        assert!(nnet::load(&corpus(name)).is_err());
    }
}

#[test]
fn malformed_vnnlib_files_give_each_error_kind_with_the_line() {
    type Check = fn(&SpecErrorKind) -> bool;
    let cases: [(&str, usize, Check); 16] = [
        ("unclosed_paren", 9, |k| *k == SpecErrorKind::UnclosedParen),
        ("unexpected_close_paren", 9, |k| {
            *k == SpecErrorKind::UnexpectedCloseParen
        }),
        (
            "unknown_variable",
            9,
            |k| matches!(k, SpecErrorKind::UnknownVariable(v) if v == "Z_1"),
        ),
        (
            "undeclared_variable",
            9,
            |k| matches!(k, SpecErrorKind::UndeclaredVariable(v) if v == "Y_2"),
        ),
        (
            "bad_number",
            9,
            |k| matches!(k, SpecErrorKind::BadNumber(v) if v == "1.2.3"),
        ),
        (
            "nonlinear_product",
            9,
            |k| matches!(k, SpecErrorKind::UnsupportedOperator { op, .. } if op == "*"),
        ),
        (
            "implies",
            9,
            |k| matches!(k, SpecErrorKind::UnsupportedOperator { op, .. } if op == "=>"),
        ),
        (
            "missing_bound",
            2,
            |k| matches!(k, SpecErrorKind::MissingBound { var, side: "upper", .. } if var == "X_1"),
        ),
        (
            "empty_box",
            9,
            |k| matches!(k, SpecErrorKind::EmptyBox { var, .. } if var == "X_1"),
        ),
        ("multi_variable_input", 9, |k| {
            matches!(k, SpecErrorKind::MultiVariableInput(_))
        }),
        ("mixed_constraint", 9, |k| {
            *k == SpecErrorKind::MixedConstraint
        }),
        (
            "duplicate_declaration",
            5,
            |k| matches!(k, SpecErrorKind::DuplicateDeclaration(v) if v == "Y_1"),
        ),
        (
            "unsupported_sort",
            1,
            |k| matches!(k, SpecErrorKind::UnsupportedSort(s) if s == "Int"),
        ),
        (
            "unsupported_command",
            9,
            |k| matches!(k, SpecErrorKind::UnsupportedCommand(c) if c == "push"),
        ),
        ("no_inputs", 1, |k| *k == SpecErrorKind::NoInputs),
        ("binary", 0, |_| true),
    ];
    for (name, line, check) in cases {
        let path = corpus(&format!("{name}.vnnlib"));
        assert!(
            path.is_file(),
            "corpus file {name} missing: run tests/malformed/make_corpus.py"
        );
        let err = match Property::from_vnnlib(&path) {
            Ok(p) => panic!("{name}: parsed without error: {p:?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with(&path.display().to_string()),
            "{name}: {msg}"
        );
        let kind = err.kind().unwrap_or_else(|| panic!("{name}: {msg}"));
        assert!(check(kind), "{name}: unexpected error {msg}");
        if line > 0 {
            assert_eq!(err.line(), Some(line), "{name}: {msg}");
            assert!(msg.contains(&format!("{name}.vnnlib:{line}:")), "{msg}");
        }
    }
    let missing = vnnlib::parse_file(&corpus("no_such_file.vnnlib")).unwrap_err();
    assert!(
        matches!(missing, SpecError::Io { .. })
            && missing.to_string().contains("no_such_file.vnnlib")
    );
}

/// A deterministic byte generator for corruptions.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn cut_and_corrupted_files_never_panic() {
    let dir =
        std::env::temp_dir().join(format!("prorepair-import-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import_models");
    let onnx = std::fs::read(models.join("dense_variants.onnx")).expect("dense_variants.onnx");
    // Every truncation of a valid ONNX file is an error or a (smaller) valid import.
    let target = dir.join("cut.onnx");
    for len in (0..onnx.len()).step_by(7) {
        std::fs::write(&target, &onnx[..len]).expect("write");
        if let Err(e) = import::load(&target) {
            assert!(e.to_string().contains("cut.onnx"), "{e}");
        }
    }
    // Corrupted text formats: random byte flips.
    let nnet_text = std::fs::read(corpus("extra_data.nnet")).expect("nnet corpus");
    let vnnlib_text = std::fs::read(corpus("empty_box.vnnlib")).expect("vnnlib corpus");
    let mut state = 42u64;
    for round in 0..300 {
        for (source, name) in [(&nnet_text, "flip.nnet"), (&vnnlib_text, "flip.vnnlib")] {
            let mut bytes = source.clone();
            for _ in 0..1 + round % 4 {
                let at = lcg(&mut state) as usize % bytes.len();
                bytes[at] = b"()0123456789.,-+eXY_ ;\n\xff"[lcg(&mut state) as usize % 24];
            }
            let target = dir.join(name);
            std::fs::write(&target, &bytes).expect("write");
            if name.ends_with(".nnet") {
                let _ = import::load(&target);
            } else {
                let _ = Property::from_vnnlib(&target);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
