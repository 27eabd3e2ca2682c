//! Writing host networks back out in exchange formats.
//!
//! - [`onnx`]: an ONNX file that tract-onnx (and other runtimes) load, keeping the
//!   original model's input shape.

pub mod onnx;

pub use onnx::{ExportError, to_onnx_bytes};
