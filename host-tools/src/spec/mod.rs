//! Properties: input boxes with the UNSAFE output sets over them.
//!
//! A [`Property`] holds iff, for every [`Case`], no input of its [`InputBox`] produces an
//! output satisfying any [`Conjunction`] of its `unsafe_set`. VNN-LIB files
//! ([`vnnlib`]) state exactly this form: the unsafe set, possibly as a disjunction, over
//! one or several input boxes.

pub mod vnnlib;

pub use vnnlib::{SpecError, SpecErrorKind};

/// A safety property: holds iff no case's box reaches the case's unsafe output set.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    /// Number of input variables (`X_0 .. X_{n-1}`).
    pub n_inputs: usize,
    /// Number of output variables (`Y_0 .. Y_{m-1}`).
    pub n_outputs: usize,
    /// The cases; the property holds iff it holds on each.
    pub cases: Vec<Case>,
}

/// One input box with the UNSAFE output set over it.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// The inputs this case is about.
    pub input: InputBox,
    /// The unsafe output set: a disjunction of conjunctions. An empty conjunction is
    /// always satisfied (every output is unsafe); an empty list is never satisfied.
    pub unsafe_set: Vec<Conjunction>,
}

/// An axis-aligned box of inputs, `lower[i] <= x[i] <= upper[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputBox {
    /// Lower bound of each input.
    pub lower: Vec<f64>,
    /// Upper bound of each input.
    pub upper: Vec<f64>,
}

/// All constraints hold together; each is `coeffs · y <= rhs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conjunction {
    /// The constraints (all must hold).
    pub constraints: Vec<LinearConstraint>,
}

/// The linear constraint `coeffs · y <= rhs` over the outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearConstraint {
    /// One coefficient per output.
    pub coeffs: Vec<f64>,
    /// Right-hand side.
    pub rhs: f64,
}

impl Property {
    /// Parse a VNN-LIB file (see [`vnnlib::parse_file`]).
    pub fn from_vnnlib(path: &std::path::Path) -> Result<Self, SpecError> {
        vnnlib::parse_file(path)
    }

    /// True when input `x` lies in some case's box and output `y` is unsafe there: a
    /// counterexample to the property.
    pub fn is_counterexample(&self, x: &[f64], y: &[f64]) -> bool {
        self.cases
            .iter()
            .any(|c| c.input.contains(x) && c.is_unsafe(y))
    }
}

impl Case {
    /// True when output `y` satisfies one of the unsafe conjunctions.
    pub fn is_unsafe(&self, y: &[f64]) -> bool {
        self.unsafe_set.iter().any(|c| c.is_satisfied_by(y))
    }
}

impl InputBox {
    /// Number of inputs.
    pub fn dim(&self) -> usize {
        self.lower.len()
    }

    /// The centre of the box.
    pub fn center(&self) -> Vec<f64> {
        self.lower
            .iter()
            .zip(&self.upper)
            .map(|(l, u)| 0.5 * (l + u))
            .collect()
    }

    /// Half the width of the box along each input.
    pub fn radius(&self) -> Vec<f64> {
        self.lower
            .iter()
            .zip(&self.upper)
            .map(|(l, u)| 0.5 * (u - l))
            .collect()
    }

    /// True when `x` lies in the box (bounds included).
    pub fn contains(&self, x: &[f64]) -> bool {
        x.len() == self.dim()
            && x.iter()
                .zip(self.lower.iter().zip(&self.upper))
                .all(|(v, (l, u))| l <= v && v <= u)
    }
}

impl Conjunction {
    /// True when every constraint is met by output `y` (`coeffs · y <= rhs`).
    pub fn is_satisfied_by(&self, y: &[f64]) -> bool {
        self.constraints.iter().all(|c| c.eval(y) <= 0.0)
    }
}

impl LinearConstraint {
    /// `coeffs · y - rhs`: at most 0 means the constraint is met.
    pub fn eval(&self, y: &[f64]) -> f64 {
        self.coeffs.iter().zip(y).map(|(c, v)| c * v).sum::<f64>() - self.rhs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_and_box_helpers() {
        // y1 - y0 <= 0 (Y_1 <= Y_0) and y0 <= 2.
        let c = Conjunction {
            constraints: vec![
                LinearConstraint {
                    coeffs: vec![-1.0, 1.0],
                    rhs: 0.0,
                },
                LinearConstraint {
                    coeffs: vec![1.0, 0.0],
                    rhs: 2.0,
                },
            ],
        };
        assert_eq!(c.constraints[0].eval(&[3.0, 1.0]), -2.0);
        assert!(c.is_satisfied_by(&[1.5, 1.0]));
        assert!(!c.is_satisfied_by(&[2.5, 1.0]));
        assert!(!c.is_satisfied_by(&[1.0, 1.5]));
        let b = InputBox {
            lower: vec![0.0, -1.0],
            upper: vec![1.0, 1.0],
        };
        assert_eq!(b.center(), vec![0.5, 0.0]);
        assert_eq!(b.radius(), vec![0.5, 1.0]);
        assert!(b.contains(&[1.0, -1.0]));
        assert!(!b.contains(&[1.1, 0.0]));
        let p = Property {
            n_inputs: 2,
            n_outputs: 2,
            cases: vec![Case {
                input: b,
                unsafe_set: vec![c],
            }],
        };
        assert!(p.is_counterexample(&[0.5, 0.0], &[1.5, 1.0]));
        assert!(!p.is_counterexample(&[2.0, 0.0], &[1.5, 1.0]));
    }
}
