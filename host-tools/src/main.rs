//! `prorepair-host`: see `prorepair-host --help`.

fn main() -> std::process::ExitCode {
    prorepair_host::cli::main()
}
