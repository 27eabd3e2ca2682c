//! prorepair-host: the host side of prorepair.
//!
//! Import a model ([`import`]) into the one layer IR ([`model`]), read properties
//! ([`spec`]), bound and verify them soundly ([`bounds`], [`verify`]), and lower the model
//! to the device blob that `prorepair-core` evaluates ([`compile`]). The command-line
//! front end is [`cli`].

pub mod bounds;
pub mod cli;
pub mod compile;
pub mod export;
pub mod import;
pub mod model;
pub mod patch;
pub mod repair;
pub mod spec;
pub mod tasks;
#[doc(hidden)]
pub mod testing;
pub mod verify;

pub use model::{Layer, Network};

/// Diagnostics of the long-running algorithms (branch and bound, the repair loops) go to
/// stderr when the environment variable `PROREPAIR_TRACE` is set.
pub(crate) fn trace_enabled() -> bool {
    std::env::var_os("PROREPAIR_TRACE").is_some()
}
