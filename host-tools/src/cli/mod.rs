//! The `prorepair-host` command line (DESIGN: CLI contract).
//!
//! Exit codes: 0 success / property holds; 10 property violated; 20 unknown;
//! 2 bad input or usage; 1 internal error. Each subcommand lives in its own module and
//! returns a [`Outcome`] or a [`CliError`]; only this module turns them into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
mod bounds;
mod compile;
pub mod demo;
mod eval;
mod inspect;
mod keygen;
mod repair;
mod repair_modules;
mod repair_points;
pub mod report;
mod verify;

/// Exit code: the property holds / the command succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: internal error.
pub const EXIT_INTERNAL: u8 = 1;
/// Exit code: bad input or usage.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the property is violated (a confirmed counterexample exists).
pub const EXIT_VIOLATED: u8 = 10;
/// Exit code: unknown (timeout or inconclusive).
pub const EXIT_UNKNOWN: u8 = 20;

/// What a successful subcommand run concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success, or the property holds.
    Ok,
    /// The property is violated.
    Violated,
    /// Undecided.
    Unknown,
}

/// A failed subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input (a file that cannot be read or parsed, bad arguments): exit 2.
    #[error("{0}")]
    BadInput(String),
    /// A bug or an environment failure: exit 1.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CliError {
    /// A bad-input error that names the file.
    pub fn file(path: &std::path::Path, problem: impl std::fmt::Display) -> Self {
        CliError::BadInput(format!("{}: {problem}", path.display()))
    }
}

/// prorepair-host: repair neural networks with a proof and ship the fix to devices.
#[derive(Debug, Parser)]
#[command(name = "prorepair-host", version, about, long_about = None, after_help = EXIT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_HELP: &str = "Exit codes: 0 success or property holds, 10 property violated, \
20 unknown (timeout or inconclusive), 2 bad input or usage, 1 internal error.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Lower an ONNX or .nnet model to the device model blob read by prorepair-core.
    Compile(compile::Args),
    /// Evaluate a model (ONNX, .nnet, or a device blob through the device core) on CSV inputs.
    Eval(eval::Args),
    /// Describe a model blob or patch: kind, sizes, hashes, sequence, layers changed.
    Inspect(inspect::Args),
    /// Sound output bounds of a model over an input box.
    Bounds(bounds::Args),
    /// Decide whether a VNN-LIB property holds (exit 0), is violated (10) or unknown (20).
    Verify(verify::Args),
    /// The whole story on a built-in example, no files needed.
    Demo(demo::Args),
    /// Repair a model so that VNN-LIB properties provably hold (exit 0), else exit 20.
    Repair(repair::Args),
    /// Apply a weight-delta patch to its base model and write the repaired ONNX.
    Apply(apply::Args),
    /// Make an Ed25519 key pair for signing patches (KEY, mode 0600, and KEY.pub).
    Keygen(keygen::Args),
}

/// Parse arguments, run, and map the result to the documented exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let threads = match &cli.command {
        Command::Verify(a) => a.threads,
        _ => None,
    };
    // Every command that trains or bounds with candle (repair, demo, bounds, verify's PGD
    // and alpha-CROWN) would otherwise re-read /proc/cpuinfo on each matrix product.
    // SAFETY: the CLI's main thread, before any other thread is spawned (argument
    // parsing is single-threaded), so nothing reads the environment concurrently.
    unsafe { crate::verify::cache_thread_count(threads) };
    let result = match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bounds(a) => bounds::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Repair(a) => repair::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Keygen(a) => keygen::run(a),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::from(EXIT_OK),
        Ok(Outcome::Violated) => ExitCode::from(EXIT_VIOLATED),
        Ok(Outcome::Unknown) => ExitCode::from(EXIT_UNKNOWN),
        Err(e) => {
            eprintln!("prorepair-host: {e}");
            ExitCode::from(match e {
                CliError::BadInput(_) => EXIT_BAD_INPUT,
                CliError::Internal(_) => EXIT_INTERNAL,
            })
        }
    }
}

/// `--json FILE|-` target.
pub fn json_target(arg: &Option<PathBuf>) -> Option<&std::path::Path> {
    arg.as_deref()
}
