//! `prorepair-host keygen --out KEY`: an Ed25519 key pair for signing patches.
//!
//! Writes KEY (the secret seed, mode 0600) and KEY.pub (the public key the device
//! holds); the file format is documented in [`crate::patch::sign`]. Existing files are
//! never replaced without `--force`.

use std::path::PathBuf;

use super::{CliError, Outcome};
use crate::patch::sign;

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret key file to create (mode 0600); the public key goes to OUT.pub.
    #[arg(long, value_name = "KEY")]
    pub out: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

/// Run `keygen`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let key = sign::generate().map_err(|e| CliError::Internal(e.to_string()))?;
    let public = sign::write_keypair(&args.out, &key, args.force)
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    eprintln!(
        "wrote {} (secret) and {} (public key, fingerprint {})",
        args.out.display(),
        public.display(),
        sign::fingerprint(&key.verifying_key().to_bytes())
    );
    Ok(Outcome::Ok)
}
