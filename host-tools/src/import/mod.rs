//! Model import: ONNX (through tract-onnx) and the `.nnet` text format, into the one
//! host layer IR ([`crate::model::Network`]).
//!
//! [`load`] picks the importer by file extension. Every error names the file and the
//! problem; no input file, however malformed, makes the importers panic.
//!
//! Both importers return a network that takes NORMALISED inputs and returns normalised
//! outputs (the ACAS Xu ONNX files are normalised already; the `.nnet` normalisation is
//! returned separately by [`nnet::load`]).
//!
//! Input shape convention ([`Network::input_shape`]): the ONNX input shape without its
//! batch dimension (a leading 1 on inputs of rank >= 2). A shape with at most one
//! dimension larger than 1 is a vector and becomes `[n]` (ACAS Xu `[1,1,1,5]` -> `[5]`,
//! mnist_fc `[1,784,1]` -> `[784]`); any other shape is kept (`[1,28,28]`). Inputs are
//! always flattened in ONNX row-major order, so the dropped singleton dimensions never
//! change the meaning of an input row.

pub mod nnet;
pub mod onnx;
pub mod piecewise;

use std::path::{Path, PathBuf};

use crate::model::{ModelError, Network};

/// Why a model file could not be imported or evaluated. Every message starts with the
/// file path.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {source}", .path.display())]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The extension is neither `.onnx` nor `.nnet`.
    #[error("{}: unknown model format (expected a .onnx or .nnet file)", .path.display())]
    UnknownFormat {
        /// The model file.
        path: PathBuf,
    },
    /// tract could not parse or type the ONNX file (truncated, not ONNX, bad shapes...).
    #[error("{}: not a valid ONNX model: {message}", .path.display())]
    InvalidOnnx {
        /// The model file.
        path: PathBuf,
        /// tract's explanation, flattened to one line.
        message: String,
    },
    /// The graph uses an operator the host IR does not support.
    #[error("{}: unsupported operator '{op}' (node '{node}')", .path.display())]
    UnsupportedOperator {
        /// The model file.
        path: PathBuf,
        /// Operator name (tract's typed name, which is the ONNX name for most ops).
        op: String,
        /// Node name in the graph.
        node: String,
    },
    /// A supported operator is used in an unsupported way (groups, dilation, a
    /// non-constant weight, a non-sequential graph...).
    #[error("{}: node '{node}' ({op}): {problem}", .path.display())]
    UnsupportedUsage {
        /// The model file.
        path: PathBuf,
        /// Operator name.
        op: String,
        /// Node name in the graph.
        node: String,
        /// What is not supported.
        problem: String,
    },
    /// A `.nnet` file is malformed.
    #[error("{}:{line}: {problem}", .path.display())]
    Nnet {
        /// The model file.
        path: PathBuf,
        /// 1-based line number of the problem.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The imported layers do not form a consistent network.
    #[error("{}: inconsistent network: {source}", .path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// The shape problem.
        #[source]
        source: ModelError,
    },
    /// Running the reference evaluator failed (wrong input length, tract error).
    #[error("{}: evaluation failed: {problem}", .path.display())]
    Run {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

impl ImportError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImportError::Io { path, .. }
            | ImportError::UnknownFormat { path }
            | ImportError::InvalidOnnx { path, .. }
            | ImportError::UnsupportedOperator { path, .. }
            | ImportError::UnsupportedUsage { path, .. }
            | ImportError::Nnet { path, .. }
            | ImportError::Model { path, .. }
            | ImportError::Run { path, .. } => path,
        }
    }
}

/// Import a model file into the host IR, choosing the importer by extension (`.onnx`,
/// `.nnet`, case-insensitive). A `.nnet` network takes normalised inputs; use
/// [`nnet::load`] to also get its normalisation constants.
pub fn load(path: &Path) -> Result<Network, ImportError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("onnx") => onnx::load(path),
        Some("nnet") => nnet::load(path).map(|(net, _)| net),
        _ => Err(ImportError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// What a model file holds: a straight-line network, or (an ONNX graph written by
/// `apply --onnx-out` from a patch-modules patch) a base network with box-indicator
/// patch modules.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// A straight-line network.
    Network(Network),
    /// Base network plus indicator boxes and modules ([`piecewise`]).
    Piecewise(piecewise::Piecewise),
}

/// [`load`], except that an ONNX graph using the patch-modules operators (`Where`,
/// comparisons) is read as a [`piecewise::Piecewise`] model, strictly (see
/// [`piecewise`]); `load` itself refuses such graphs.
pub fn load_model(path: &Path) -> Result<Model, ImportError> {
    let is_onnx = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx {
        let proto = piecewise::read_proto(path)?;
        if piecewise::is_piecewise_graph(&proto) {
            return piecewise::from_proto(path, proto).map(Model::Piecewise);
        }
    }
    load(path).map(Model::Network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_extension_is_a_clear_error() {
        let err = load(Path::new("model.h5")).unwrap_err();
        assert!(matches!(err, ImportError::UnknownFormat { .. }));
        assert!(
            err.to_string()
                .starts_with("model.h5: unknown model format"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = load(Path::new("/nonexistent/dir/net.nnet")).unwrap_err();
        assert!(matches!(err, ImportError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/dir/net.nnet"),
            "{err}"
        );
    }
}
