//! `prorepair-host eval` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `eval`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("eval is not implemented yet".into()))
}
