//! `prorepair-host demo` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `demo`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("demo is not implemented yet".into()))
}
