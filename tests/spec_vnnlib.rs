//! Every VNN-LIB file in ../shared/data parses, with exact facts checked per file (box
//! bounds, numbers of cases and disjuncts, constraint coefficients).

use std::path::{Path, PathBuf};

use prorepair_host::require_data;
use prorepair_host::spec::{LinearConstraint, Property};

fn parse(path: &Path) -> Property {
    Property::from_vnnlib(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The `.vnnlib` files under a directory, recursively.
fn vnnlib_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable data dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            vnnlib_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "vnnlib") {
            out.push(path);
        }
    }
}

/// `Y_a <= Y_b` over 5 outputs, as the parser writes it: `y_a - y_b <= 0`.
fn le(a: usize, b: usize) -> LinearConstraint {
    let mut coeffs = vec![0.0; 5];
    coeffs[a] = 1.0;
    coeffs[b] = -1.0;
    LinearConstraint { coeffs, rhs: 0.0 }
}

#[test]
fn every_vnnlib_file_in_the_data_parses() {
    let dir = require_data!("");
    let mut files = Vec::new();
    vnnlib_files(&dir, &mut files);
    // 11 ACAS Xu, 30 mnistfc, 4 vnncomp-test files.
    assert!(
        files.len() >= 45,
        "found only {} .vnnlib files",
        files.len()
    );
    for path in &files {
        let p = parse(path);
        assert!(!p.cases.is_empty(), "{}", path.display());
        for case in &p.cases {
            assert_eq!(case.input.dim(), p.n_inputs);
            assert!(
                case.input
                    .lower
                    .iter()
                    .zip(&case.input.upper)
                    .all(|(l, u)| l <= u)
            );
            assert!(!case.unsafe_set.is_empty(), "{}", path.display());
            for conj in &case.unsafe_set {
                assert!(
                    conj.constraints
                        .iter()
                        .all(|c| c.coeffs.len() == p.n_outputs)
                );
            }
        }
    }
}

#[test]
fn acasxu_property_facts() {
    let dir = require_data!("acasxu/vnnlib");
    let p1 = parse(&dir.join("prop_1.vnnlib"));
    assert_eq!((p1.n_inputs, p1.n_outputs, p1.cases.len()), (5, 5, 1));
    // Unsafe: Y_0 >= 3.991125645861615, i.e. -y_0 <= -3.99...
    assert_eq!(
        p1.cases[0].unsafe_set[0].constraints,
        vec![LinearConstraint {
            coeffs: vec![-1.0, 0.0, 0.0, 0.0, 0.0],
            rhs: -3.991125645861615
        }]
    );

    let p2 = parse(&dir.join("prop_2.vnnlib"));
    assert_eq!(p2.cases.len(), 1);
    let b = &p2.cases[0].input;
    assert_eq!(b.lower, vec![0.6, -0.5, -0.5, 0.45, -0.5]);
    assert_eq!(b.upper, vec![0.679857769, 0.5, 0.5, 0.5, -0.45]);
    // Plain form: one disjunct, COC maximal (all four together).
    assert_eq!(p2.cases[0].unsafe_set.len(), 1);
    assert_eq!(
        p2.cases[0].unsafe_set[0].constraints,
        vec![le(1, 0), le(2, 0), le(3, 0), le(4, 0)]
    );
    assert!(p2.cases[0].is_unsafe(&[1.0, 0.0, 0.0, 0.0, 0.0]));
    assert!(!p2.cases[0].is_unsafe(&[1.0, 2.0, 0.0, 0.0, 0.0]));

    // The stricter form: unsafe as soon as one other advisory scores at most COC.
    let p2c = parse(&dir.join("prop_2_coc_minimal.vnnlib"));
    assert_eq!(p2c.cases[0].input, p2.cases[0].input);
    assert_eq!(p2c.cases[0].unsafe_set.len(), 4);
    assert!(
        p2c.cases[0]
            .unsafe_set
            .iter()
            .all(|c| c.constraints.len() == 1)
    );
    assert!(p2c.cases[0].is_unsafe(&[1.0, 2.0, 0.0, 3.0, 3.0]));

    let p4 = parse(&dir.join("prop_4.vnnlib"));
    assert_eq!(
        (p4.cases[0].input.lower[2], p4.cases[0].input.upper[2]),
        (0.0, 0.0)
    );

    // Property 6: two input boxes (the or of two X-boxes) with four disjuncts each.
    let p6 = parse(&dir.join("prop_6.vnnlib"));
    assert_eq!(p6.cases.len(), 2);
    assert_eq!(p6.cases[0].input.lower[1], 0.11140846);
    assert_eq!(p6.cases[1].input.upper[1], -0.11140846);
    assert!(p6.cases.iter().all(|c| c.unsafe_set.len() == 4));

    for (file, disjuncts, constraints) in [
        ("prop_5", 4, 1),
        ("prop_7", 2, 3),
        ("prop_8", 3, 2),
        ("prop_9", 4, 1),
        ("prop_10", 4, 1),
        ("prop_3", 1, 4),
    ] {
        let p = parse(&dir.join(format!("{file}.vnnlib")));
        assert_eq!(p.cases.len(), 1, "{file}");
        assert_eq!(p.cases[0].unsafe_set.len(), disjuncts, "{file}");
        assert!(
            p.cases[0]
                .unsafe_set
                .iter()
                .all(|c| c.constraints.len() == constraints),
            "{file}"
        );
    }
    // Property 7's first disjunct: strong left is minimal among COC, weak left, weak right.
    let p7 = parse(&dir.join("prop_7.vnnlib"));
    assert_eq!(
        p7.cases[0].unsafe_set[0].constraints,
        vec![le(3, 0), le(3, 1), le(3, 2)]
    );
}

#[test]
fn mnistfc_and_vnncomp_test_property_facts() {
    let dir = require_data!("mnist/vnnlib/mnistfc");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("mnistfc dir") {
        let path = entry.expect("entry").path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !name.ends_with(".vnnlib") {
            continue;
        }
        let eps: f64 = if name.ends_with("_0.03.vnnlib") {
            0.03
        } else {
            0.05
        };
        let p = parse(&path);
        assert_eq!(
            (p.n_inputs, p.n_outputs, p.cases.len()),
            (784, 10, 1),
            "{name}"
        );
        let case = &p.cases[0];
        // A local-robustness box inside [0, 1], at most 2 eps wide.
        for (l, u) in case.input.lower.iter().zip(&case.input.upper) {
            assert!(
                *l >= 0.0 && *u <= 1.0 && u - l <= 2.0 * eps + 1e-7,
                "{name}: [{l}, {u}]"
            );
        }
        // Unsafe: some other class scores at least the true class (9 disjuncts).
        assert_eq!(case.unsafe_set.len(), 9, "{name}");
        assert!(
            case.unsafe_set
                .iter()
                .all(|c| c.constraints.len() == 1 && c.constraints[0].rhs == 0.0)
        );
        count += 1;
    }
    assert_eq!(count, 30);

    let dir = require_data!("vnncomp-test");
    let nano = parse(&dir.join("test_nano.vnnlib"));
    assert_eq!(
        (
            nano.cases[0].input.lower.clone(),
            nano.cases[0].input.upper.clone()
        ),
        (vec![-1.0], vec![1.0])
    );
    assert_eq!(
        nano.cases[0].unsafe_set[0].constraints,
        vec![LinearConstraint {
            coeffs: vec![1.0],
            rhs: -1.0
        }]
    );
    for file in ["test_tiny.vnnlib", "test_small.vnnlib"] {
        // The (or (and X-bounds Y-constraint)) form.
        let p = parse(&dir.join(file));
        assert_eq!(p.cases.len(), 1);
        assert_eq!(p.cases[0].input.lower, vec![-1.0]);
        assert_eq!(
            p.cases[0].unsafe_set[0].constraints,
            vec![LinearConstraint {
                coeffs: vec![-1.0],
                rhs: -100.0
            }]
        );
    }
    let prop = parse(&dir.join("test_prop.vnnlib"));
    assert_eq!(prop.cases[0].input.lower[0], -0.30353115613746867);
    assert_eq!(
        prop.cases[0].unsafe_set[0].constraints,
        vec![le(0, 1), le(0, 2), le(0, 3), le(0, 4)]
    );
}
