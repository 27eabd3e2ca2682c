//! Support for the workspace-level integration tests in `tests/`: re-exports the shared
//! test-data helpers of the host library.

pub use prorepair_host::require_data;
pub use prorepair_host::testing::*;
