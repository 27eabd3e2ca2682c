//! Generates the C header from the `extern "C"` items into `$OUT_DIR/prorepair.h`.
//!
//! The committed copy is `include/prorepair.h`; the unit test
//! `header::committed_header_is_fresh` compares the two and, with `PROREPAIR_BLESS=1`,
//! refreshes the committed copy. The build script never writes outside `OUT_DIR`.

use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let config_path = crate_dir.join("cbindgen.toml");
    for watched in ["cbindgen.toml", "src"] {
        println!(
            "cargo:rerun-if-changed={}",
            crate_dir.join(watched).display()
        );
    }
    let config = cbindgen::Config::from_file(&config_path)
        .unwrap_or_else(|e| panic!("{}: {e}", config_path.display()));
    // `with_src` parses src/lib.rs and the modules it declares, without running
    // `cargo metadata` (the API has no types from other crates).
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate prorepair.h: {e}"));
    bindings.write_to_file(out_dir.join("prorepair.h"));
}
