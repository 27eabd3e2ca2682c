//! Patch-modules patches (kind 2) on the host: emit one from a
//! [`PatchModules`] repair, read one back, evaluate base + modules through the device
//! core, and export the equivalent ONNX graph (indicator by comparisons and `Where`).
//!
//! As for weight deltas, the format is the core's ([`prorepair_core::patch::modules`]):
//! the host compiles the base network with [`crate::compile::compile`], the patch binds
//! to that blob's SHA-256, and reading goes through the core's validation, so the host
//! accepts exactly the patches a device accepts.

use prorepair_core::patch::modules::encode::{self, IndicatorSpec, ModuleSpec};
use prorepair_core::patch::modules::{IndicatorKind, ModulePatch, ModulesModel, patch_kind_word};

use super::PatchError;
use crate::compile::AlignedBlob;
use crate::export::onnx::{
    ExportError, OnnxLabelModule, OnnxModule, to_onnx_bytes_with_label_modules,
    to_onnx_bytes_with_modules,
};
use crate::model::{Dense, Network};
use crate::repair::patchmodules::{Indicator, Module, PatchModules};

/// True when `bytes` are a patch of kind 2 (patch modules), judged by the header only.
pub fn is_modules_patch(bytes: &[u8]) -> bool {
    patch_kind_word(bytes) == Some(prorepair_core::patch::modules::MODULES_KIND)
}

/// A patch emitted by [`emit`].
#[derive(Debug, Clone)]
pub struct EmittedModules {
    /// The patch file.
    pub bytes: Vec<u8>,
    /// The base model blob it binds to.
    pub base_blob: Vec<u8>,
    /// Modules carried.
    pub modules: usize,
    /// Verified regions carried.
    pub regions: usize,
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Emit the kind-2 patch of `modules` for `base`, sequence `sequence` (>= 1), carrying
/// the verified input boxes `regions` (rounded inward to f32; empty ones left out).
/// Module weights and box corners are stored as f32 (the repair already rounded them, and
/// box corners are f32-representable, so nothing changes).
pub fn emit(
    base: &Network,
    modules: &PatchModules,
    sequence: u32,
    regions: &[(Vec<f64>, Vec<f64>)],
) -> Result<EmittedModules, PatchError> {
    let base_blob = super::compile_base(base)?;
    let blob = AlignedBlob::new(&base_blob);
    let model = blob.model()?;
    // Owned f32 data first; the specs borrow it.
    struct Owned {
        lower: Vec<f32>,
        upper: Vec<f32>,
        dims: Vec<usize>,
        params: Vec<f32>,
    }
    let owned: Vec<Owned> = modules
        .entries
        .iter()
        .map(|(ind, m)| {
            let (lower, upper) = match ind {
                Indicator::Box(b) => (f32s(&b.lower), f32s(&b.upper)),
                _ => (Vec::new(), Vec::new()),
            };
            let mut dims = vec![m.input_dim()];
            dims.extend(m.layers.iter().map(|d| d.out_dim));
            let params = m
                .layers
                .iter()
                .flat_map(|d| f32s(&d.weight).into_iter().chain(f32s(&d.bias)))
                .collect();
            Owned {
                lower,
                upper,
                dims,
                params,
            }
        })
        .collect();
    let specs: Vec<ModuleSpec<'_>> = modules
        .entries
        .iter()
        .zip(&owned)
        .map(|((ind, _), o)| ModuleSpec {
            indicator: match ind {
                Indicator::Box(_) => IndicatorSpec::Box {
                    lower: &o.lower,
                    upper: &o.upper,
                },
                Indicator::Label(l) => IndicatorSpec::Label(*l),
                Indicator::LabelPair(a, b) => IndicatorSpec::LabelPair(*a, *b),
            },
            dims: &o.dims,
            params: &o.params,
        })
        .collect();
    let mut flat = Vec::new();
    let mut count = 0;
    for (lo, up) in regions {
        super::check_region_len(lo, up, model.input_len())?;
        // Inward rounding: the guard never claims an input that was not verified.
        // (Unlike a layer patch's regions, infinite corners are kept here.)
        let (l, u) = super::round_inward(lo, up);
        if l.iter().zip(&u).all(|(a, b)| a <= b) {
            flat.extend(l);
            flat.extend(u);
            count += 1;
        }
    }
    // What each module reads: the input (0) or a feature layer (checked at binding below).
    let input_layers: Vec<usize> = modules
        .entries
        .iter()
        .map(|(_, m)| m.feature_layer)
        .collect();
    let len = encode::encoded_len_with_input_layers(&specs, &input_layers, &flat)?;
    let mut bytes = vec![0u8; len];
    encode::write_with_input_layers(&model, &specs, &input_layers, sequence, &flat, &mut bytes)?;
    // The emitted patch must bind to its own base through the device core.
    ModulePatch::from_bytes(&bytes)?.check_binding(&model)?;
    Ok(EmittedModules {
        bytes,
        base_blob,
        modules: specs.len(),
        regions: count,
    })
}

/// One module as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModuleInfo {
    /// "box", "label" or "label pair".
    pub indicator: &'static str,
    /// Layer widths, input first (e.g. `[5, 8, 5]`).
    pub widths: Vec<usize>,
    /// What the module reads: 0 = the model input, K = the base's K-th activation output.
    pub input_layer: usize,
    /// Weights plus biases.
    pub parameters: usize,
    /// Bytes of the module record.
    pub bytes: usize,
    /// Box indicator: smallest and largest interval width over the input elements.
    pub box_width: Option<(f32, f32)>,
    /// Box indicator with at most 16 inputs: the corners.
    pub lower: Option<Vec<f32>>,
    /// See `lower`.
    pub upper: Option<Vec<f32>>,
    /// Label indicators: the label(s).
    pub labels: Option<Vec<usize>>,
}

/// What `inspect` shows about a patch-modules patch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModulesInfo {
    /// "patch modules".
    pub kind: &'static str,
    /// Patch format version.
    pub format_version: u16,
    /// Total bytes.
    pub patch_bytes: usize,
    /// Monotonic sequence number.
    pub sequence: u32,
    /// SHA-256 of the base model blob, lowercase hex.
    pub base_sha256: String,
    /// Length of the base model blob.
    pub base_blob_bytes: usize,
    /// "none" or "ed25519".
    pub signature: &'static str,
    /// The key fingerprint the patch names (claimed; see `verified_with`).
    pub signer: Option<String>,
    /// The public key (hex) the signature was verified with, when checked.
    pub verified_with: Option<String>,
    /// Device RAM the modules need (boxes and repacked weights).
    pub ram_bytes: usize,
    /// The modules in order.
    pub modules: Vec<ModuleInfo>,
    /// Total module parameters.
    pub module_parameters: usize,
    /// Verified input boxes carried for the runtime guard.
    pub regions: usize,
}

/// Validate `bytes` as a kind-2 patch on its own (header, CRC, module records, regions)
/// and describe it.
pub fn inspect(bytes: &[u8]) -> Result<ModulesInfo, PatchError> {
    let patch = ModulePatch::from_bytes(bytes)?;
    let modules: Vec<ModuleInfo> = patch
        .modules()
        .map(|m| {
            let is_box = m.indicator == IndicatorKind::Box;
            let corners: Vec<(f32, f32)> = if is_box {
                (0..m.box_len()).filter_map(|j| m.box_bounds(j)).collect()
            } else {
                Vec::new()
            };
            let widths = corners.iter().map(|(l, u)| u - l);
            let box_width = is_box.then(|| {
                widths.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), w| {
                    (a.min(w), b.max(w))
                })
            });
            let small = is_box && corners.len() <= 16;
            ModuleInfo {
                indicator: m.indicator.name(),
                widths: m.dims().to_vec(),
                input_layer: m.input_layer,
                parameters: m.parameter_count(),
                bytes: m.encoded_len(),
                box_width,
                lower: small.then(|| corners.iter().map(|c| c.0).collect()),
                upper: small.then(|| corners.iter().map(|c| c.1).collect()),
                labels: match m.indicator {
                    IndicatorKind::Box => None,
                    IndicatorKind::Label => Some(vec![m.label0]),
                    IndicatorKind::LabelPair => Some(vec![m.label0, m.label1]),
                },
            }
        })
        .collect();
    Ok(ModulesInfo {
        kind: "patch modules",
        format_version: prorepair_core::patch::PATCH_FORMAT_VERSION,
        patch_bytes: bytes.len(),
        sequence: patch.sequence(),
        base_sha256: super::hex(&patch.base_sha256()),
        base_blob_bytes: patch.base_len(),
        signature: patch.signature_kind().name(),
        signer: patch.signer_key_id().map(|id| super::hex(&id)),
        verified_with: None,
        ram_bytes: patch.required_ram_bytes(),
        module_parameters: modules.iter().map(|m| m.parameters).sum(),
        modules,
        regions: patch.region_count(),
    })
}

/// Read a kind-2 patch for `base` (validated and bound by the core) into host form.
pub fn read(base: &Network, bytes: &[u8]) -> Result<PatchModules, PatchError> {
    let blob = super::compile_base(base)?;
    let blob = AlignedBlob::new(&blob);
    let model = blob.model()?;
    let patch = ModulePatch::from_bytes(bytes)?;
    patch.check_binding(&model)?;
    let mut entries = Vec::new();
    for m in patch.modules() {
        let indicator = match m.indicator {
            IndicatorKind::Box => {
                let (mut lo, mut up) = (Vec::new(), Vec::new());
                for j in 0..m.box_len() {
                    let (l, u) = m
                        .box_bounds(j)
                        .ok_or_else(|| PatchError::Mismatch(format!("box corner {j}")))?;
                    lo.push(f64::from(l));
                    up.push(f64::from(u));
                }
                Indicator::Box(crate::bounds::BoxBounds::new(lo, up))
            }
            IndicatorKind::Label => Indicator::Label(m.label0),
            IndicatorKind::LabelPair => Indicator::LabelPair(m.label0, m.label1),
        };
        let mut layers = Vec::new();
        let mut k = 0;
        for w in m.dims().windows(2) {
            let (i, o) = (w[0], w[1]);
            let mut take = |n: usize| -> Result<Vec<f64>, PatchError> {
                (0..n)
                    .map(|_| {
                        let v = m
                            .param(k)
                            .map(f64::from)
                            .ok_or_else(|| PatchError::Mismatch(format!("parameter {k}")));
                        k += 1;
                        v
                    })
                    .collect()
            };
            let weight = take(i * o)?;
            let bias = take(o)?;
            layers.push(Dense::new(i, o, weight, bias).map_err(PatchError::Mismatch)?);
        }
        entries.push((
            indicator,
            Module {
                layers,
                feature_layer: m.input_layer,
            },
        ));
    }
    Ok(PatchModules { entries })
}

/// Outputs of base + modules on each input, computed by the device core (f32, SIMD
/// kernels), exactly as a device computes them.
pub fn eval_device(
    base: &Network,
    bytes: &[u8],
    inputs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>, PatchError> {
    let blob = super::compile_base(base)?;
    let blob = AlignedBlob::new(&blob);
    let model = blob.model()?;
    let patch = ModulePatch::from_bytes(bytes)?;
    let mut ram = vec![0f32; patch.required_ram_len()];
    let mm = ModulesModel::new(&model, &patch, &mut ram)?;
    let mut arena = vec![0f32; mm.required_arena_len()];
    let mut out = vec![0f32; model.output_len()];
    inputs
        .iter()
        .map(|x| {
            mm.evaluate(x, &mut arena, &mut out)?;
            Ok(out.clone())
        })
        .collect()
}

/// The ONNX graph of base + box-indicator modules (see
/// [`crate::export::onnx::to_onnx_bytes_with_modules`]), or base + label-indicator
/// modules ([`crate::export::onnx::to_onnx_bytes_with_label_modules`]) when every
/// indicator is a label rule.
pub fn to_onnx(
    base: &Network,
    modules: &PatchModules,
    input_shape: Option<&[usize]>,
) -> Result<Vec<u8>, PatchError> {
    if !modules.entries.is_empty()
        && modules
            .entries
            .iter()
            .all(|(ind, _)| !matches!(ind, Indicator::Box(_)))
    {
        let list: Vec<OnnxLabelModule<'_>> = modules
            .entries
            .iter()
            .map(|(ind, m)| OnnxLabelModule {
                rule: match ind {
                    Indicator::LabelPair(a, b) => (*a, Some(*b)),
                    Indicator::Label(l) => (*l, None),
                    Indicator::Box(_) => (0, None),
                },
                layers: &m.layers,
            })
            .collect();
        return to_onnx_bytes_with_label_modules(base, input_shape, &list)
            .map_err(|e: ExportError| PatchError::Mismatch(format!("ONNX export: {e}")));
    }
    let mut list = Vec::new();
    for (ind, m) in &modules.entries {
        match ind {
            Indicator::Box(b) => list.push(OnnxModule {
                lower: &b.lower,
                upper: &b.upper,
                layers: &m.layers,
                feature_layer: m.feature_layer,
            }),
            _ => {
                return Err(PatchError::Mismatch(
                    "box and label indicators mixed in one patch cannot be exported to ONNX".into(),
                ));
            }
        }
    }
    to_onnx_bytes_with_modules(base, input_shape, &list)
        .map_err(|e: ExportError| PatchError::Mismatch(format!("ONNX export: {e}")))
}

/// The tract adapter for kind-2 patches: load the base ONNX model, check and read the
/// patch through the core, build base + indicator + modules as one ONNX graph
/// ([`to_onnx`], keeping the model's declared input shape) and hand it to tract.
pub fn load_tract(
    onnx_path: &std::path::Path,
    patch: &[u8],
    patch_name: &str,
) -> Result<super::tract::PatchedTract, super::tract::TractPatchError> {
    use super::tract::TractPatchError;
    let base = crate::import::onnx::load(onnx_path)?;
    let modules = read(&base, patch).map_err(|source| TractPatchError::Patch {
        patch: patch_name.to_string(),
        source,
    })?;
    let shape = crate::export::onnx::declared_input_shape(onnx_path);
    let bytes = to_onnx(&base, &modules, shape.as_deref())
        .map_err(|e| TractPatchError::Tract(format!("exporting the patched graph: {e}")))?;
    super::tract::runnable(&bytes, base)
}
