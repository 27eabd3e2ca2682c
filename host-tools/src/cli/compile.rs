//! `prorepair-host compile` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `compile`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `compile`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("compile is not implemented yet".into()))
}
