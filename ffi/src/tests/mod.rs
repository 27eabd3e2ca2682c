//! Unit tests of the C API, calling the `extern "C"` functions from Rust (std build:
//! `cfg(test)` never carries the firmware panic handler).

mod api;
mod header;
mod modules;
mod patch;
mod support;
