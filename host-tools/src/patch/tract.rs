//! Patched models for std edge devices that run tract: load the base ONNX model and a
//! patch, check the patch against the base (the SHA-256 of the model blob `compile`
//! makes from that ONNX file, the same binding a microcontroller checks), apply it, and
//! return a runnable tract model.
//!
//! The patched network is rebuilt as ONNX from the host IR ([`crate::export::onnx`],
//! which keeps the model's declared input shape) and handed to tract, so the runnable
//! model computes exactly the network `prorepair-host apply` writes. Both patch kinds are
//! taken: a weight-delta patch gives the patched network; a patch-modules patch (kind 2)
//! gives base + indicators + modules as one graph ([`super::modules::load_tract`]).

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::PatchError;
use crate::model::Network;

/// Why a patched tract model cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TractPatchError {
    /// The base ONNX file cannot be imported.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// The patch is invalid or not for this model.
    #[error("{}: {source}", .patch)]
    Patch {
        /// Where the patch came from (a path or "patch").
        patch: String,
        /// Why.
        #[source]
        source: PatchError,
    },
    /// Exporting or loading the patched network failed.
    #[error("{0}")]
    Tract(String),
}

/// A runnable tract model of a base ONNX model with a patch applied.
#[derive(Debug, Clone)]
pub struct PatchedTract {
    /// The optimised, runnable tract plan.
    pub plan: Arc<TypedRunnableModel>,
    /// The input shape (batch dimension included).
    pub input_shape: Vec<usize>,
    /// The patched host network (for a patch-modules patch, the unchanged base: the
    /// indicators and modules are in the graph only).
    pub network: Network,
}

impl PatchedTract {
    /// Evaluate on one input (flattened row-major); the flattened output.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, TractPatchError> {
        let fail = |e: TractError| TractPatchError::Tract(format!("{e:#}"));
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(fail)?;
        let out = self.plan.run(tvec!(tensor.into())).map_err(fail)?;
        let out = out
            .first()
            .ok_or_else(|| TractPatchError::Tract("no output".into()))?
            .cast_to::<f32>()
            .map_err(fail)?;
        let view = out.to_plain_array_view::<f32>().map_err(fail)?;
        Ok(view.iter().copied().collect())
    }
}

/// Load `onnx` (the base model), check and apply `patch` (its bytes, either kind;
/// `patch_name` names it in errors), and return the runnable patched model.
pub fn load_patched(
    onnx: &Path,
    patch: &[u8],
    patch_name: &str,
) -> Result<PatchedTract, TractPatchError> {
    if super::modules::is_modules_patch(patch) {
        return super::modules::load_tract(onnx, patch, patch_name);
    }
    let base = crate::import::onnx::load(onnx)?;
    let network = super::apply(&base, patch).map_err(|source| TractPatchError::Patch {
        patch: patch_name.to_string(),
        source,
    })?;
    let shape = crate::export::onnx::declared_input_shape(onnx);
    let bytes = crate::export::to_onnx_bytes(&network, shape.as_deref())
        .map_err(|e| TractPatchError::Tract(format!("exporting the patched network: {e}")))?;
    runnable(&bytes, network)
}

/// Hand the ONNX graph `bytes` of a patched model to tract: load, type, read the
/// (concrete) input shape, optimise and make it runnable. `network` is the patched host
/// network the graph was exported from.
pub(super) fn runnable(bytes: &[u8], network: Network) -> Result<PatchedTract, TractPatchError> {
    let fail = |e: TractError| TractPatchError::Tract(format!("{e:#}"));
    let mut reader = bytes;
    let model = tract_onnx::onnx()
        .model_for_read(&mut reader)
        .and_then(|m| m.into_typed())
        .map_err(fail)?;
    let input = model.input_outlets().map_err(fail)?.first().copied();
    let input = input.ok_or_else(|| TractPatchError::Tract("the model has no input".into()))?;
    let input_shape = model
        .outlet_fact(input)
        .map_err(fail)?
        .shape
        .as_concrete()
        .map(<[usize]>::to_vec)
        .ok_or_else(|| TractPatchError::Tract("symbolic input shape".into()))?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(fail)?;
    Ok(PatchedTract {
        plan,
        input_shape,
        network,
    })
}
