//! The propagation driver: intermediate bounds layer by layer (IBP, CROWN, or their
//! intersection), the relaxation of every nonlinear layer, and the final
//! back-substitution of a spec through the whole (sub-)network.

use super::linear::LinearState;
use super::ops::{BoundOp, Relaxation, RowSlopes};
use super::{BoundsError, BoxBounds};

/// How intermediate bounds are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intermediate {
    /// Interval propagation only.
    Ibp,
    /// Every input of a nonlinear layer by a full backward CROWN pass (auto_LiRPA
    /// `sparse_intermediate_bounds=False`).
    CrownPure,
    /// The CROWN bounds intersected with the one-step interval bounds from the previous
    /// layer's (already intersected) bounds.
    CrownIntersect,
}

/// Bounds of every tensor of a (sub-)network and the relaxation of every nonlinear layer.
#[derive(Debug)]
pub(crate) struct Propagation {
    pub ops: Vec<Box<dyn BoundOp>>,
    /// Bounds of the input of op `k`, and at index `ops.len()` of the output.
    pub bounds: Vec<BoxBounds>,
    /// The relaxation of op `k` over `bounds[k]` (nonlinear ops only).
    pub relaxations: Vec<Option<Relaxation>>,
}

fn check_finite(b: &BoxBounds, layer: usize) -> Result<(), BoundsError> {
    if b.lower.iter().chain(&b.upper).all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(BoundsError::NonFinite { layer })
    }
}

/// Back-substitute `state` (expressed over the output of `ops[upto - 1]`) down to the
/// input of `ops[0]`.
pub(crate) fn back_substitute(
    ops: &[Box<dyn BoundOp>],
    relaxations: &[Option<Relaxation>],
    upto: usize,
    state: &mut LinearState,
    slopes: Option<&[RowSlopes]>,
) {
    for k in (0..upto).rev() {
        ops[k].backward(state, relaxations[k].as_ref(), slopes.map(|s| &s[k]));
    }
}

impl Propagation {
    /// Propagate `input` through `ops`. `from` is the index of `ops[0]` in the network
    /// (for error messages).
    pub fn run(
        ops: Vec<Box<dyn BoundOp>>,
        input: &BoxBounds,
        mode: Intermediate,
        from: usize,
    ) -> Result<Self, BoundsError> {
        let n = ops.len();
        let mut bounds = Vec::with_capacity(n + 1);
        bounds.push(input.clone());
        let mut relaxations: Vec<Option<Relaxation>> = Vec::with_capacity(n);
        for k in 0..n {
            relaxations.push(if ops[k].is_nonlinear() {
                ops[k].relax(&bounds[k])
            } else {
                None
            });
            let interval = ops[k].interval(&bounds[k]);
            let needs_crown = mode != Intermediate::Ibp && k + 1 < n && ops[k + 1].is_nonlinear();
            let next = if needs_crown {
                let mut state = LinearState::identity(ops[k].output_dim());
                back_substitute(&ops, &relaxations, k + 1, &mut state, None);
                let crown = state.concretise(&bounds[0]);
                if mode == Intermediate::CrownPure {
                    crown
                } else {
                    crown.intersect(&interval)
                }
            } else {
                interval
            };
            check_finite(&next, from + k)?;
            bounds.push(next);
        }
        Ok(Self {
            ops,
            bounds,
            relaxations,
        })
    }

    /// Linear bounds of `spec * f(x)` (`spec` is `rows x output_dim`), optionally with
    /// per-row alpha slopes for each op.
    pub fn linear(&self, spec: &[f64], rows: usize, slopes: Option<&[RowSlopes]>) -> LinearState {
        let out_dim = self
            .ops
            .last()
            .map_or(self.bounds[0].lower.len(), |o| o.output_dim());
        let mut state = LinearState::from_spec(rows, out_dim, spec);
        back_substitute(
            &self.ops,
            &self.relaxations,
            self.ops.len(),
            &mut state,
            slopes,
        );
        state.materialise();
        state
    }
}
