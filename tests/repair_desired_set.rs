//! The desired-set conversion of the real VNN-LIB files: `prop_2_coc_minimal` becomes a
//! plain conjunction `AND_j (Y_j - Y_0 > 0)`, `prop_2` a single disjunction
//! `OR_j (Y_j - Y_0 > 0)` (COC must not be maximal).

use prorepair_host::repair::desired::{Constraint, DesiredSet};
use prorepair_host::require_data;
use prorepair_host::spec::Property;
use prorepair_host::verify::Conj;

fn desired(relative: &str) -> Option<DesiredSet> {
    let path = prorepair_host::testing::data_path(relative)?;
    let p = Property::from_vnnlib(&path).expect("parses");
    assert_eq!(p.cases.len(), 1);
    let unsafe_set: Vec<Conj> = p.cases[0]
        .unsafe_set
        .iter()
        .map(|c| Conj {
            rows: c.constraints.iter().map(|k| k.coeffs.clone()).collect(),
            rhs: c.constraints.iter().map(|k| k.rhs).collect(),
        })
        .collect();
    Some(DesiredSet::from_unsafe(&unsafe_set))
}

/// `Y_j - Y_0`, up to a positive factor as the parser writes it.
fn is_yj_minus_y0(c: &Constraint, j: usize) -> bool {
    let s = c.c[j];
    s > 0.0
        && (c.c[0] + s).abs() < 1e-12
        && (1..5).filter(|&i| i != j).all(|i| c.c[i] == 0.0)
        && c.d.abs() < 1e-12
}

#[test]
fn prop_2_coc_minimal_is_a_conjunction() {
    let _ = require_data!("acasxu/vnnlib/prop_2_coc_minimal.vnnlib");
    let d = desired("acasxu/vnnlib/prop_2_coc_minimal.vnnlib").unwrap();
    assert!(d.is_conjunction());
    assert_eq!(d.clauses.len(), 4);
    for (j, cl) in (1..5).zip(&d.clauses) {
        assert!(
            is_yj_minus_y0(&cl.options[0], j),
            "clause {j}: {:?}",
            cl.options[0]
        );
    }
    assert!(
        d.contains(&[-1.0, 0.0, 0.0, 0.0, 0.0], 1e-6),
        "COC strictly minimal is desired"
    );
    assert!(
        !d.contains(&[0.0, 0.0, 1.0, 1.0, 1.0], 1e-6),
        "a tie with COC is not"
    );
}

#[test]
fn prop_2_is_one_disjunction() {
    let _ = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let d = desired("acasxu/vnnlib/prop_2.vnnlib").unwrap();
    assert!(!d.is_conjunction());
    assert_eq!(d.clauses.len(), 1);
    assert_eq!(d.clauses[0].options.len(), 4);
    for (j, c) in (1..5).zip(&d.clauses[0].options) {
        assert!(is_yj_minus_y0(c, j), "option {j}: {c:?}");
    }
    assert!(
        d.contains(&[1.0, 0.0, 0.0, 2.0, 0.0], 1e-6),
        "one advisory above COC suffices"
    );
    assert!(
        !d.contains(&[3.0, 0.0, 1.0, 2.0, 0.0], 1e-6),
        "COC maximal is unsafe"
    );
}
