//! `prorepair-host bounds` (placeholder until implemented).

use super::{CliError, Outcome};

/// Arguments of `bounds`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run `bounds`.
pub fn run(_args: Args) -> Result<Outcome, CliError> {
    Err(CliError::Internal("bounds is not implemented yet".into()))
}
