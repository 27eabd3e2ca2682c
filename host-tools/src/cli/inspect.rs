//! `prorepair-host inspect` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `inspect`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("inspect is not implemented yet".into()))
}
