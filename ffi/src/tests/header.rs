//! The committed header `include/prorepair.h` must equal the one `build.rs` generates.

use std::path::PathBuf;

/// The header cbindgen generated for this build.
const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/prorepair.h"));

#[test]
fn committed_header_is_fresh() {
    let committed_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/prorepair.h");
    if std::env::var_os("PROREPAIR_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&committed_path, GENERATED)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", committed_path.display()));
        eprintln!("refreshed {}", committed_path.display());
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != GENERATED {
        let first_difference = committed
            .lines()
            .zip(GENERATED.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(GENERATED.lines().count()));
        panic!(
            "{} is stale: it differs from the header generated from ffi/src (first at line \
             {}).\nRefresh it with:\n    PROREPAIR_BLESS=1 cargo test -p prorepair-ffi header\n\
             and commit it.",
            committed_path.display(),
            first_difference + 1
        );
    }
}

#[test]
fn header_declares_the_whole_api() {
    for name in [
        "pr_status_str",
        "pr_version",
        "pr_model_load",
        "pr_model_input_len",
        "pr_model_output_len",
        "pr_model_arena_bytes",
        "pr_model_parameter_count",
        "pr_model_evaluate",
        "pr_patch_ram_bytes",
        "pr_model_apply_patch",
        "pr_model_patch_sequence",
        "pr_ota_install",
        "pr_ota_boot",
        "pr_ota_boot_any",
        "pr_ota_install_any",
        "pr_ota_ram_bytes",
        "pr_booted_arena_bytes",
        "pr_booted_evaluate",
        "PR_BOOTED_SIZE",
        "pr_guard_init",
        "pr_guard_init_booted",
        "pr_guard_run",
        "pr_guard_counters",
        "PR_GUARD_SIZE",
        "PR_MODEL_SIZE",
        "PR_MODEL_ALIGN",
        "PR_OK = 0",
    ] {
        assert!(GENERATED.contains(name), "prorepair.h lacks {name}");
    }
    // size_t, not uintptr_t, for lengths (usize_is_size_t).
    assert!(GENERATED.contains("size_t input_len"));
    assert!(!GENERATED.contains("uintptr_t"));
}
