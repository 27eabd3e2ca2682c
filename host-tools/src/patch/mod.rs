//! Weight-delta patches on the host: emit one from a base and a repaired network, read
//! one back, apply one to the host IR, and run a patched ONNX model through tract
//! ([`tract`]).
//!
//! The format is the device core's ([`prorepair_core::patch`]): the host compiles both
//! networks to model blobs with [`crate::compile::compile`] and lets the core's encoder
//! diff them, so a patch binds to the SHA-256 of the exact blob `compile` produces for
//! the base model. Applying goes through the core too ([`prorepair_core::Model::with_patch`]):
//! the host accepts exactly the patches a device accepts, and reads the patched
//! parameters back from the core's patched model.

pub mod modules;
pub mod sign;
pub mod tract;

use prorepair_core::patch::encode::PatchWriter;
use prorepair_core::patch::{LayerEncoding, Patch};
use prorepair_core::{Layer as CoreLayer, Model};

use crate::compile::{AlignedBlob, CompileError, compile};
use crate::model::{Layer, Network};

/// Why a patch cannot be emitted, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A network does not compile to a model blob.
    #[error("{what}: {source}")]
    Compile {
        /// Which network.
        what: &'static str,
        /// Why.
        #[source]
        source: CompileError,
    },
    /// The device core refuses the patch (or the pair of models to diff).
    #[error("{0}")]
    Core(#[from] prorepair_core::Error),
    /// The patch and the host network disagree (a bug, or a network that is not the
    /// one the blob was compiled from).
    #[error("{0}")]
    Mismatch(String),
}

/// One changed layer of a patch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PatchedLayer {
    /// Layer index (host IR and blob: `compile` maps them one to one).
    pub index: usize,
    /// Layer kind ("Dense", "Conv2d").
    pub kind: &'static str,
    /// "full", "sparse" or "masked".
    pub encoding: &'static str,
    /// f32 values of the layer's blocks in blob layout (padding included).
    pub values: usize,
    /// Entries stored (all values for full, the changed ones for sparse).
    pub entries: usize,
    /// Bytes of the record in the patch.
    pub bytes: usize,
}

/// What `inspect` shows about a patch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PatchInfo {
    /// "weight delta".
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
    /// The signer's key fingerprint the patch names (16 hex digits,
    /// [`sign::fingerprint`]); `None` when unsigned. Claimed, not proven: see
    /// `verified_with`.
    pub signer: Option<String>,
    /// The public key (hex) the signature was checked and verified with
    /// (`inspect --key`); `None` when not checked.
    pub verified_with: Option<String>,
    /// Device RAM the patched layers need.
    pub ram_bytes: usize,
    /// The changed layers.
    pub layers: Vec<PatchedLayer>,
    /// Verified input boxes carried for the runtime guard.
    pub regions: usize,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn core_kind(layer: &CoreLayer<'_>) -> &'static str {
    layer.kind().name()
}

/// Validate `bytes` as a patch on its own (header, CRC, records, regions) and describe it.
pub fn inspect(bytes: &[u8]) -> Result<PatchInfo, PatchError> {
    let patch = Patch::from_bytes(bytes)?;
    Ok(PatchInfo {
        kind: patch.kind().name(),
        format_version: prorepair_core::patch::PATCH_FORMAT_VERSION,
        patch_bytes: bytes.len(),
        sequence: patch.sequence(),
        base_sha256: hex(&patch.base_sha256()),
        base_blob_bytes: patch.base_len(),
        signature: patch.signature_kind().name(),
        signer: patch.signer_key_id().map(|id| hex(&id)),
        verified_with: None,
        ram_bytes: patch.required_ram_bytes(),
        layers: patch
            .layers()
            .map(|r| PatchedLayer {
                index: r.layer_index,
                kind: "",
                encoding: r.encoding.name(),
                values: r.value_count,
                entries: r.entry_count,
                bytes: r.encoded_len(),
            })
            .collect(),
        regions: patch.region_count(),
    })
}

/// True when `bytes` start with the patch magic.
pub fn is_patch(bytes: &[u8]) -> bool {
    bytes.starts_with(&prorepair_core::patch::PATCH_MAGIC)
}

/// `compile` of the base network a patch binds to (the blob whose hash it carries).
pub(super) fn compile_base(base: &Network) -> Result<Vec<u8>, PatchError> {
    compile(base).map_err(|source| PatchError::Compile {
        what: "the base network",
        source,
    })
}

/// A region (lower, upper) must have one value per model input in each corner.
pub(super) fn check_region_len(
    lower: &[f64],
    upper: &[f64],
    input_len: usize,
) -> Result<(), PatchError> {
    if lower.len() != input_len || upper.len() != input_len {
        return Err(PatchError::Mismatch(format!(
            "a region has {} values, the model takes {}",
            lower.len(),
            input_len
        )));
    }
    Ok(())
}

/// The corners of a verified f64 input box rounded INWARD to f32 (lower up, upper
/// down), so the box a device's guard checks never claims an input that was not
/// verified. The result may be empty (some lower above its upper); callers decide.
pub(super) fn round_inward(lower: &[f64], upper: &[f64]) -> (Vec<f32>, Vec<f32>) {
    let lo = lower
        .iter()
        .map(|&l| {
            let x = l as f32;
            if f64::from(x) < l { x.next_up() } else { x }
        })
        .collect();
    let up = upper
        .iter()
        .map(|&u| {
            let x = u as f32;
            if f64::from(x) > u { x.next_down() } else { x }
        })
        .collect();
    (lo, up)
}

/// A verified input box in f64, rounded inward to f32 ([`round_inward`]); `None` when
/// the rounded box is empty or not finite.
fn inward_f32(lower: &[f64], upper: &[f64]) -> Option<(Vec<f32>, Vec<f32>)> {
    let (lo, up) = round_inward(lower, upper);
    let ok = lo
        .iter()
        .zip(&up)
        .all(|(l, u)| l.is_finite() && u.is_finite() && l <= u);
    ok.then_some((lo, up))
}

/// A patch emitted by [`emit`].
#[derive(Debug, Clone)]
pub struct EmittedPatch {
    /// The patch file.
    pub bytes: Vec<u8>,
    /// The base model blob it binds to (what `compile` writes for the base network).
    pub base_blob: Vec<u8>,
    /// The changed layers.
    pub layers: Vec<PatchedLayer>,
    /// Regions carried (boxes that were rounded to an empty f32 box are left out).
    pub regions: usize,
}

/// The weight-delta patch from `base` to `repaired` (same layers and shapes), with
/// sequence number `sequence` (>= 1) and the verified input boxes `regions` (lower,
/// upper; flattened like an input row). Both networks are compiled to blobs first; the
/// patch carries the repaired network's parameters as f32, exactly as `compile` would
/// write them.
pub fn emit(
    base: &Network,
    repaired: &Network,
    sequence: u32,
    regions: &[(Vec<f64>, Vec<f64>)],
) -> Result<EmittedPatch, PatchError> {
    let base_blob = compile_base(base)?;
    let repaired_blob = compile(repaired).map_err(|source| PatchError::Compile {
        what: "the repaired network",
        source,
    })?;
    let (a, b) = (
        AlignedBlob::new(&base_blob),
        AlignedBlob::new(&repaired_blob),
    );
    let (ma, mb) = (a.model()?, b.model()?);
    let mut flat = Vec::new();
    let mut count = 0;
    for (lo, up) in regions {
        check_region_len(lo, up, ma.input_len())?;
        if let Some((l, u)) = inward_f32(lo, up) {
            flat.extend(l);
            flat.extend(u);
            count += 1;
        }
    }
    let writer = PatchWriter::new(&ma, &mb, sequence, &flat)?;
    let mut bytes = vec![0u8; writer.encoded_len()];
    writer.write(&mut bytes)?;
    let layers = writer
        .layers()
        .map(|(index, encoding, values, changed)| {
            let entries = match encoding {
                LayerEncoding::Full => values,
                _ => changed,
            };
            PatchedLayer {
                index,
                kind: ma.layer(index).as_ref().map_or("", core_kind),
                encoding: encoding.name(),
                values,
                entries,
                bytes: prorepair_core::patch::RECORD_HEADER_SIZE
                    + match encoding {
                        LayerEncoding::Full => 4 * values,
                        LayerEncoding::Sparse => 8 * changed,
                        LayerEncoding::Masked => {
                            prorepair_core::patch::mask_bytes(values) + 4 * changed
                        }
                    },
            }
        })
        .collect();
    // The emitted patch must apply to its own base through the device core.
    let check = Patch::from_bytes(&bytes)?;
    check.check_binding(&ma)?;
    Ok(EmittedPatch {
        bytes,
        base_blob,
        layers,
        regions: count,
    })
}

/// Apply a patch to `blob` (a base model blob) through the device core; the patched
/// model's parameters are in `ram`, which this sizes.
pub fn apply_to_blob<'a>(
    model: &Model<'a>,
    patch: &Patch<'_>,
    ram: &'a mut Vec<f32>,
) -> Result<Model<'a>, PatchError> {
    ram.clear();
    ram.resize(patch.required_ram_len(), 0.0);
    Ok(model.with_patch(patch, ram)?)
}

/// Apply `patch` to the host network `base`: compile `base`, check the patch against
/// that blob and apply it in the device core, then copy the patched layers' parameters
/// (f32, exact in f64) back into a copy of `base`. Layers the patch does not touch keep
/// their f64 values, so `compile` of the result equals the patched blob.
pub fn apply(base: &Network, patch_bytes: &[u8]) -> Result<Network, PatchError> {
    let blob = compile_base(base)?;
    let blob = AlignedBlob::new(&blob);
    let model = blob.model()?;
    let patch = Patch::from_bytes(patch_bytes)?;
    let mut ram = Vec::new();
    let patched = apply_to_blob(&model, &patch, &mut ram)?;
    let mut net = base.clone();
    for index in patched.patched_layers() {
        let layer = patched
            .layer(index)
            .ok_or_else(|| PatchError::Mismatch(format!("layer {index} is missing")))?;
        match (net.layers.get_mut(index), layer) {
            (Some(Layer::Dense(d)), CoreLayer::Dense(c))
                if d.in_dim == c.in_dim && d.out_dim == c.out_dim =>
            {
                for o in 0..d.out_dim {
                    for i in 0..d.in_dim {
                        let w = c.weight(o, i).ok_or_else(|| {
                            PatchError::Mismatch(format!("layer {index}: weight ({o}, {i})"))
                        })?;
                        d.weight[o * d.in_dim + i] = f64::from(w);
                    }
                }
                for (b, &v) in d.bias.iter_mut().zip(c.bias) {
                    *b = f64::from(v);
                }
            }
            (Some(Layer::Conv2d(d)), CoreLayer::Conv2d(c))
                if d.weight.len() == c.weight.len() && d.bias.len() == c.bias.len() =>
            {
                for (w, &v) in d.weight.iter_mut().zip(c.weight) {
                    *w = f64::from(v);
                }
                for (b, &v) in d.bias.iter_mut().zip(c.bias) {
                    *b = f64::from(v);
                }
            }
            (other, _) => {
                return Err(PatchError::Mismatch(format!(
                    "layer {index}: the host network has {} where the blob has {}",
                    other.map_or("no layer", |l| l.kind()),
                    layer.kind().name()
                )));
            }
        }
    }
    Ok(net)
}

/// `compile` of the patched network: the repaired model blob (what `compile --patch`
/// writes).
pub fn compile_patched(base: &Network, patch_bytes: &[u8]) -> Result<Vec<u8>, PatchError> {
    let net = apply(base, patch_bytes)?;
    compile(&net).map_err(|source| PatchError::Compile {
        what: "the patched network",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dense;

    fn net(scale: f64) -> Network {
        let d1 = Dense::new(
            3,
            9,
            (0..27).map(|i| f64::from(i) * 0.05 - 0.6).collect(),
            (0..9).map(|i| f64::from(i) * 0.01).collect(),
        )
        .unwrap();
        let d2 = Dense::new(
            9,
            2,
            (0..18)
                .map(|i| (0.3 - f64::from(i) * 0.04) * scale)
                .collect(),
            vec![0.5, -0.25 * scale],
        )
        .unwrap();
        Network::new(
            vec![3],
            vec![Layer::Dense(d1), Layer::Relu, Layer::Dense(d2)],
        )
        .unwrap()
    }

    #[test]
    fn emit_then_apply_gives_the_repaired_network_in_f32() {
        let (base, repaired) = (net(1.0), net(-0.7));
        let regions = vec![(vec![-1.0, -1.0, 0.1], vec![1.0, 1.0, 0.1 + 1e-9])];
        let emitted = emit(&base, &repaired, 4, &regions).unwrap();
        assert_eq!(emitted.layers.len(), 1);
        assert_eq!(emitted.layers[0].index, 2);
        assert_eq!(emitted.layers[0].kind, "Dense");
        let patched = apply(&base, &emitted.bytes).unwrap();
        // Exactly the repaired network's f32 parameters.
        assert_eq!(compile(&patched).unwrap(), compile(&repaired).unwrap());
        assert_eq!(
            compile_patched(&base, &emitted.bytes).unwrap(),
            compile(&repaired).unwrap()
        );
        // Layer 0 untouched, in f64.
        assert_eq!(patched.layers[0], base.layers[0]);
        let info = inspect(&emitted.bytes).unwrap();
        assert_eq!(info.sequence, 4);
        assert_eq!(info.base_blob_bytes, emitted.base_blob.len());
        assert_eq!(info.layers[0].bytes, emitted.layers[0].bytes);
        assert_eq!(info.patch_bytes, emitted.bytes.len());
        // The region rounded inward: 0.1 and 0.1 + 1e-9 share no f32 inside, so it
        // collapses or stays ordered; either way it is valid.
        assert!(info.regions <= 1);
    }

    #[test]
    fn applying_to_another_model_is_refused() {
        let (base, repaired) = (net(1.0), net(-0.7));
        let emitted = emit(&base, &repaired, 1, &[]).unwrap();
        let err = apply(&repaired, &emitted.bytes).unwrap_err();
        assert!(
            matches!(err, PatchError::Core(prorepair_core::Error::WrongBaseModel)),
            "{err}"
        );
        let err = emit(&base, &base, 1, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                PatchError::Core(prorepair_core::Error::BadPatchLayerCount)
            ),
            "{err}"
        );
    }

    #[test]
    fn regions_round_inward() {
        let (l, u) = inward_f32(&[0.1, -0.3], &[0.2, 0.7]).unwrap();
        assert!(f64::from(l[0]) >= 0.1 && f64::from(u[0]) <= 0.2);
        assert!(f64::from(l[1]) >= -0.3 && f64::from(u[1]) <= 0.7);
        assert!(inward_f32(&[0.1], &[0.1 + 1e-12]).is_none());
    }
}
