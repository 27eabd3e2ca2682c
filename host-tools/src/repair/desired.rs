//! The desired output set of a property, in ProRepair's form.
//!
//! VNN-LIB states the UNSAFE set as a disjunction of conjunctions,
//! `OR_j AND_k (a_jk · y <= b_jk)`. Its complement, the DESIRED set, is a conjunction
//! (over the unsafe disjuncts `j`) of disjunctions (over each conjunction's constraints
//! `k`): `AND_j OR_k (a_jk · y - b_jk > 0)`. ProRepair wants a plain conjunction of
//! constraints `c · y + d >= 0`, so each clause `OR_k` must be reduced to one of its
//! constraints on every refined sub-region:
//!
//! - **Choice of disjunct**: on a sub-box, clause `j` keeps the constraint `k` whose
//!   smallest value `c_k · f(x) + d_k` over probe points of the sub-box (centre, face
//!   centres, corners) is largest for the current network: the one it comes closest to
//!   meeting on the whole sub-box (CROWN bounds of big boxes are too loose to rank the
//!   alternatives: off by hundreds on the whole ACAS Xu property-2 box). Ties (within
//!   `1e-12`) go to the constraint with the larger value of the ORIGINAL network at the
//!   centre. The choice is made again for both halves after every split, so different
//!   parts of the input box can rely on different disjuncts. A sub-box counts as proven
//!   when CROWN certifies ANY alternative of each clause on it (that one is then kept),
//!   which is exactly how `verify` excludes an unsafe conjunction. A single-constraint
//!   clause (e.g. `prop_2_coc_minimal`) has nothing to choose.
//! - **Strict margin**: the unsafe set includes its boundary (`<=`), so a repaired network
//!   must satisfy every chosen constraint with a margin, `c · y + d >= epsilon`. The margin
//!   (see [`super::RepairOptions::margin`]) is larger than the f32 rounding bound that
//!   `verify` demands, so the repaired network passes the sound checker on the device's
//!   arithmetic too.

use crate::verify::Conj;

/// One desired constraint `c · y + d > 0` on the network output `y`.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    /// Coefficients, one per network output.
    pub c: Vec<f64>,
    /// Constant term.
    pub d: f64,
}

impl Constraint {
    /// `c · y + d`: the constraint holds with margin `eps` when this is `>= eps`.
    pub fn value(&self, y: &[f64]) -> f64 {
        self.c.iter().zip(y).map(|(c, v)| c * v).sum::<f64>() + self.d
    }
}

/// A disjunction of desired constraints: at least one must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    /// The alternatives.
    pub options: Vec<Constraint>,
}

/// The desired set: a conjunction of clauses.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSet {
    /// Every clause must hold.
    pub clauses: Vec<Clause>,
}

impl DesiredSet {
    /// The complement of an unsafe set (a disjunction of conjunctions).
    ///
    /// An empty unsafe set gives an empty (always satisfied) desired set; an unsafe
    /// conjunction without constraints (unsafe everywhere) gives a clause with no options,
    /// which no network can satisfy ([`DesiredSet::is_satisfiable`] says so).
    pub fn from_unsafe(unsafe_set: &[Conj]) -> Self {
        let clauses = unsafe_set
            .iter()
            .map(|conj| Clause {
                options: conj
                    .rows
                    .iter()
                    .zip(&conj.rhs)
                    .map(|(row, &rhs)| Constraint {
                        c: row.clone(),
                        d: -rhs,
                    })
                    .collect(),
            })
            .collect();
        Self { clauses }
    }

    /// False when some clause has no alternatives (the unsafe set covers every output).
    pub fn is_satisfiable(&self) -> bool {
        self.clauses.iter().all(|c| !c.options.is_empty())
    }

    /// True when every clause is a single constraint (the desired set is a plain
    /// conjunction and [`DesiredSet::choose`] has no choice to make).
    pub fn is_conjunction(&self) -> bool {
        self.clauses.iter().all(|c| c.options.len() == 1)
    }

    /// Every alternative of every clause, flattened in clause order (the spec rows whose
    /// lower bounds [`DesiredSet::choose`] takes).
    pub fn all_options(&self) -> impl Iterator<Item = &Constraint> {
        self.clauses.iter().flat_map(|c| c.options.iter())
    }

    /// Reduce to a conjunction: for each clause the alternative with the largest
    /// `lower_bounds` entry (indexed like [`DesiredSet::all_options`]), ties within `1e-12`
    /// broken by the larger `centre_values` entry (the original network at the sub-box
    /// centre). Returns the chosen constraints, one per clause.
    pub fn choose(&self, lower_bounds: &[f64], centre_values: &[f64]) -> Vec<Constraint> {
        let mut chosen = Vec::with_capacity(self.clauses.len());
        let mut offset = 0;
        for clause in &self.clauses {
            let n = clause.options.len();
            let mut best = 0;
            for k in 1..n {
                let (lk, lb) = (lower_bounds[offset + k], lower_bounds[offset + best]);
                let better = lk > lb + 1e-12
                    || (lk >= lb - 1e-12
                        && centre_values[offset + k] > centre_values[offset + best]);
                if better {
                    best = k;
                }
            }
            if let Some(c) = clause.options.get(best) {
                chosen.push(c.clone());
            }
            offset += n;
        }
        chosen
    }

    /// True when the output `y` lies in the desired set with margin `eps` (every clause has
    /// an alternative with value `>= eps`).
    pub fn contains(&self, y: &[f64], eps: f64) -> bool {
        self.clauses
            .iter()
            .all(|cl| cl.options.iter().any(|c| c.value(y) >= eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: usize) -> Vec<f64> {
        let mut v = vec![0.0; 5];
        v[i] = 1.0;
        v
    }

    fn diff(j: usize) -> Vec<f64> {
        // Y_j - Y_0
        let mut v = e(j);
        v[0] = -1.0;
        v
    }

    #[test]
    fn plain_conjunction_from_or_of_single_constraints() {
        // prop_2_coc_minimal: unsafe OR_j (Y_j - Y_0 <= 0).
        let unsafe_set: Vec<Conj> = (1..5)
            .map(|j| Conj {
                rows: vec![diff(j)],
                rhs: vec![0.0],
            })
            .collect();
        let d = DesiredSet::from_unsafe(&unsafe_set);
        assert!(d.is_conjunction() && d.is_satisfiable());
        assert_eq!(d.clauses.len(), 4);
        for (j, cl) in (1..5).zip(&d.clauses) {
            assert_eq!(cl.options, vec![Constraint { c: diff(j), d: 0.0 }]);
        }
        // COC strictly minimal: desired; a tie: not (strict margin).
        assert!(d.contains(&[0.0, 1.0, 1.0, 1.0, 1.0], 1e-6));
        assert!(!d.contains(&[1.0, 1.0, 2.0, 2.0, 2.0], 1e-6));
    }

    #[test]
    fn disjunction_from_single_conjunction_and_choice() {
        // prop_2: unsafe AND_j (Y_j - Y_0 <= 0) ("COC is maximal").
        let unsafe_set = vec![Conj {
            rows: (1..5).map(diff).collect(),
            rhs: vec![0.0; 4],
        }];
        let d = DesiredSet::from_unsafe(&unsafe_set);
        assert!(!d.is_conjunction());
        assert_eq!(d.clauses.len(), 1);
        assert_eq!(d.clauses[0].options.len(), 4);
        assert!(
            d.contains(&[1.0, 0.0, 0.0, 2.0, 0.0], 1e-6),
            "Y_3 > Y_0 suffices"
        );
        assert!(
            !d.contains(&[3.0, 0.0, 1.0, 2.0, 0.0], 1e-6),
            "COC maximal is unsafe"
        );
        // Largest lower bound wins.
        let chosen = d.choose(&[-3.0, -1.0, -2.0, -5.0], &[0.0; 4]);
        assert_eq!(chosen, vec![Constraint { c: diff(2), d: 0.0 }]);
        // Tie: the larger centre value of the original network wins.
        let chosen = d.choose(&[-1.0, -1.0, -2.0, -1.0], &[0.1, 0.2, 0.9, 0.5]);
        assert_eq!(chosen, vec![Constraint { c: diff(4), d: 0.0 }]);
    }

    #[test]
    fn degenerate_unsafe_sets() {
        assert!(DesiredSet::from_unsafe(&[]).contains(&[0.0], 1.0));
        let everywhere = DesiredSet::from_unsafe(&[Conj {
            rows: vec![],
            rhs: vec![],
        }]);
        assert!(!everywhere.is_satisfiable());
    }
}
