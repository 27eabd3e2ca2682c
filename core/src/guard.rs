//! The runtime guard: runs the (patched) model, says whether each input lies in a
//! region the patch's proof covers, optionally monitors the outputs against a
//! property's unsafe set and then answers a configured fallback advisory, and counts.
//!
//! "Inside" depends on the patch kind: a weight-delta patch covers its verified regions;
//! a patch-modules patch covers the inputs inside a box indicator and a verified region
//! ([`crate::patch::modules::ModulePatch::covers`]). Outside, nothing is claimed: the
//! input is flagged (and, for patch modules, the base model's output runs unchanged
//! unless a label indicator fires).
//!
//! The output monitor holds the unsafe set of a property the way VNN-LIB states it: a
//! conjunction of linear rows `c . y <= d` over the outputs `y` (each row stored as
//! `output_len` coefficients then `d`). The monitor trips when every row holds (the
//! output lies in the unsafe set) or an output is not finite. For ACAS Xu property 2
//! ("Clear-of-Conflict is not the minimal score" unsafe set: COC is maximal), the rows
//! are `y_j - y_0 <= 0` for j = 1..4.

use crate::Error;
use crate::model::Model;
use crate::ota::{Booted, Running};
use crate::patch::Patch;

/// Most monitor rows (a property's unsafe set needs a handful).
pub const MAX_MONITOR_ROWS: usize = 16;

/// Which output is the advisory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Choice {
    /// The lowest score (ACAS Xu convention).
    Lowest = 0,
    /// The highest score (classifiers).
    Highest = 1,
}

/// An output monitor: a property's unsafe set as linear rows, and the advisory to give
/// when an output falls into it.
#[derive(Debug, Clone, Copy)]
pub struct Monitor<'a> {
    rows: &'a [f32],
    output_len: usize,
    fallback: u32,
}

impl<'a> Monitor<'a> {
    /// `rows`: whole rows of `output_len + 1` finite values (coefficients, then the
    /// bound), 1..=[`MAX_MONITOR_ROWS`] of them; `fallback`: the advisory (an output
    /// index below `output_len`) to answer when the monitor trips.
    pub fn new(rows: &'a [f32], output_len: usize, fallback: u32) -> Result<Self, Error> {
        let row_len = output_len.checked_add(1).ok_or(Error::Overflow)?;
        let count = rows.len() / row_len;
        if output_len == 0
            || !rows.len().is_multiple_of(row_len)
            || !(1..=MAX_MONITOR_ROWS).contains(&count)
            || rows.iter().any(|v| !v.is_finite())
            || fallback as usize >= output_len
        {
            return Err(Error::BadMonitor);
        }
        Ok(Monitor {
            rows,
            output_len,
            fallback,
        })
    }

    /// True when `output` lies in the unsafe set (every row holds) or is not finite.
    pub fn trips(&self, output: &[f32]) -> bool {
        if output.len() != self.output_len || output.iter().any(|v| !v.is_finite()) {
            return true;
        }
        self.rows.chunks_exact(self.output_len + 1).all(|row| {
            let (c, d) = row.split_at(self.output_len);
            let lhs: f32 = c.iter().zip(output).map(|(a, y)| a * y).sum();
            d.first().is_some_and(|&d| lhs <= d)
        })
    }

    /// The fallback advisory.
    pub fn fallback(&self) -> u32 {
        self.fallback
    }
}

/// The guard's counters (saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counters {
    /// Inputs inside a verified region.
    pub inside: u32,
    /// Inputs outside every verified region (flagged).
    pub outside: u32,
    /// Outputs the monitor caught (the fallback advisory was answered).
    pub monitor_trips: u32,
}

/// What the guard decided for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The input lies in a region the patch's proof covers.
    pub inside: bool,
    /// The output monitor tripped: `advisory` is the fallback.
    pub tripped: bool,
    /// The advisory to act on: the model's choice, or the fallback when tripped.
    pub advisory: u32,
}

/// A model with its verified regions, an optional output monitor and counters.
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    model: Running<'a>,
    monitor: Option<Monitor<'a>>,
    choice: Choice,
    counters: Counters,
}

impl<'a> Guard<'a> {
    /// Guard `model`. `patch` is the patch it runs (its regions are the verified ones);
    /// it must be the applied one (same sequence, bound to the model's base blob:
    /// [`Error::StalePatch`] / [`Error::WrongBaseModel`] otherwise). Without a patch every
    /// input is flagged as outside. The monitor's output length must be the model's.
    pub fn new(
        model: Model<'a>,
        patch: Option<Patch<'a>>,
        monitor: Option<Monitor<'a>>,
        choice: Choice,
    ) -> Result<Self, Error> {
        let running = match patch {
            Some(p) => {
                if p.sequence() != model.patch_sequence() {
                    return Err(Error::StalePatch);
                }
                p.check_binding(&model.base())?;
                Running::WeightDelta(model, p)
            }
            None => Running::Plain(model),
        };
        Self::for_running(running, monitor, choice)
    }

    /// Guard a model of either patch kind (e.g. [`Booted::model`]); its patch (if any)
    /// gives the verified regions. A [`Running`] is built only from checked parts, so
    /// only the monitor's output length is checked here.
    pub fn for_running(
        model: Running<'a>,
        monitor: Option<Monitor<'a>>,
        choice: Choice,
    ) -> Result<Self, Error> {
        if monitor.is_some_and(|m| m.output_len != model.output_len()) {
            return Err(Error::BadMonitor);
        }
        Ok(Guard {
            model,
            monitor,
            choice,
            counters: Counters::default(),
        })
    }

    /// Guard what [`crate::ota::boot`] booted.
    pub fn for_booted(
        booted: &Booted<'a>,
        monitor: Option<Monitor<'a>>,
        choice: Choice,
    ) -> Result<Self, Error> {
        Self::for_running(booted.model, monitor, choice)
    }

    /// Run one input: evaluate into `output` (see [`Running::evaluate`] for the argument
    /// checks, the only errors), check the regions and the monitor, count, decide.
    pub fn run(
        &mut self,
        input: &[f32],
        arena: &mut [f32],
        output: &mut [f32],
    ) -> Result<Decision, Error> {
        self.model.evaluate(input, arena, output)?;
        Ok(self.decide(input, output))
    }

    /// [`Guard::run`] with the arena as bytes (4-byte aligned, e.g. from C).
    pub fn run_bytes(
        &mut self,
        input: &[f32],
        arena: &mut [u8],
        output: &mut [f32],
    ) -> Result<Decision, Error> {
        self.model.evaluate_bytes(input, arena, output)?;
        Ok(self.decide(input, output))
    }

    fn decide(&mut self, input: &[f32], output: &[f32]) -> Decision {
        let inside = self.model.covers(input);
        let counter = if inside {
            &mut self.counters.inside
        } else {
            &mut self.counters.outside
        };
        *counter = counter.saturating_add(1);
        let tripped = self.monitor.is_some_and(|m| m.trips(output));
        let advisory = match self.monitor {
            Some(m) if tripped => {
                self.counters.monitor_trips = self.counters.monitor_trips.saturating_add(1);
                m.fallback()
            }
            _ => pick(output, self.choice),
        };
        Decision {
            inside,
            tripped,
            advisory,
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The guarded model.
    pub fn model(&self) -> &Running<'a> {
        &self.model
    }
}

/// Index of the lowest or highest output (the first on ties; NaN never wins).
fn pick(output: &[f32], choice: Choice) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in output.iter().enumerate() {
        let better = match (best, choice) {
            (None, _) => !v.is_nan(),
            (Some((_, b)), Choice::Lowest) => v < b,
            (Some((_, b)), Choice::Highest) => v > b,
        };
        if better {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
}
