//! `prorepair-host verify` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `verify`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("verify is not implemented yet".into()))
}
