//! The one error type of the device core.
//!
//! Flat and `#[non_exhaustive]` (like heapless/postcard): every way a blob or patch can be wrong
//! has its own variant, so a caller (or the C API, one status code per variant) can say
//! exactly what is wrong without any allocation.

use core::fmt;

/// Everything that can go wrong when loading a model blob or a patch, evaluating, or
/// encoding one.
///
/// Loading ([`crate::Model::from_bytes`]) checks in a fixed order: alignment, length,
/// magic, version, header size, total length, CRC, then the header fields and every
/// layer. Evaluation ([`crate::Model::evaluate`]) can only return [`Error::InputLength`],
/// [`Error::OutputLength`], [`Error::ArenaTooSmall`] or [`Error::MisalignedArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the fixed header or than the length the header declares.
    Truncated,
    /// The first four bytes are not the model-blob magic `PRMB`.
    BadMagic,
    /// The format version is not one this build of the core reads.
    UnsupportedVersion,
    /// The header-size field differs from the header size of this format version.
    BadHeaderSize,
    /// The buffer is longer than the total length in the header (trailing bytes).
    LengthMismatch,
    /// The CRC-32 stored in the header does not match the blob's contents.
    CrcMismatch,
    /// The blob does not start at a 4-byte aligned address, so its f32 blocks cannot be
    /// read in place.
    MisalignedBuffer,
    /// A reserved header or layer-table field is not zero.
    NonZeroReserved,
    /// The input shape has a rank outside 1..=3 or a zero dimension.
    BadInputShape,
    /// The layer count is zero.
    BadLayerCount,
    /// A layer-table entry has an unknown kind.
    UnknownLayerKind,
    /// A layer's own parameters are invalid (zero size or stride, kernel larger than
    /// its padded input, padding as large as a pooling window, LeakyReLU slope outside
    /// [0, 1)).
    BadLayerParameters,
    /// A layer's input shape does not match the shape the previous layer produces.
    ShapeMismatch,
    /// A parameter block offset is not a multiple of 16.
    MisalignedOffset,
    /// A parameter block does not start where the format places it (directly after
    /// the previous block, rounded up to 16 bytes).
    BadBlockOffset,
    /// A parameter block extends past the end of the blob, or the blob has bytes after
    /// its last block.
    BlockOutOfRange,
    /// A parameter (weight, bias, slope) is NaN or infinite.
    NonFiniteParameter,
    /// A size computation overflows the address space.
    Overflow,
    /// The output size in the header differs from the last layer's output size.
    OutputSizeMismatch,
    /// The arena size in the header differs from what the layers need.
    ArenaSizeMismatch,
    /// The parameter count in the header differs from the layers' parameters.
    ParameterCountMismatch,
    /// The input slice length differs from the model's input size.
    InputLength,
    /// The output slice length differs from the model's output size.
    OutputLength,
    /// The arena is smaller than [`crate::Model::required_arena_bytes`].
    ArenaTooSmall,
    /// The arena given as bytes is not 4-byte aligned.
    MisalignedArena,
    /// The destination buffer of an encoder is smaller than the encoded length.
    BufferTooSmall,
    /// A patch has an unknown kind (format v1 knows only the weight delta).
    UnknownPatchKind,
    /// A patch names a signature kind this build does not know, or carries signature
    /// bytes while saying it is unsigned.
    UnsupportedSignature,
    /// A patch is bound to a different base model (SHA-256 or length of the base blob
    /// differ), or the two models given to the patch encoder differ in structure.
    WrongBaseModel,
    /// A patch changes no layer, or more than [`crate::patch::MAX_PATCH_LAYERS`].
    BadPatchLayerCount,
    /// A patch payload is malformed: records or regions do not tile it exactly, an
    /// unknown layer encoding, layers not in ascending order, sparse indices not
    /// strictly increasing or out of range, or a non-zero value in a padding slot.
    BadPatchPayload,
    /// A patch names a layer the base model does not have, or one without parameters.
    PatchLayerMismatch,
    /// A patch's parameter count for a layer differs from the base model's layer.
    PatchShapeMismatch,
    /// A verified region of a patch is invalid (lower above upper, not finite), or its
    /// dimension differs from the model's input length.
    BadPatchRegion,
    /// A patch-modules record is malformed (indicator kind, layer count, zero width,
    /// labels, box corners), or the module count is outside 1..=MAX_MODULES.
    BadPatchModule,
    /// A patch module does not fit the base model (input or output length, label).
    PatchModuleMismatch,
    /// The patch's sequence number is not newer than the one already applied (or is 0,
    /// which the format forbids: a fresh device already runs "sequence 0").
    StalePatch,
    /// The caller RAM for the patched layers is smaller than
    /// [`crate::patch::Patch::required_ram_bytes`].
    PatchRamTooSmall,
    /// The caller RAM for the patched layers given as bytes is not 4-byte aligned.
    MisalignedPatchRam,
    /// A device configured with a public key was given an unsigned patch.
    UnsignedPatch,
    /// The patch's Ed25519 signature does not verify under the device's public key
    /// (wrong key, or any byte of the patch changed after signing).
    BadSignature,
    /// The configured public key is not a valid Ed25519 public key.
    BadPublicKey,
    /// A storage operation (read, erase or write of a slot or commit record) failed.
    StorageFailure,
    /// The patch is larger than an OTA slot.
    SlotTooSmall,
    /// A slot read back after writing differs from what was written.
    WriteVerifyFailed,
    /// The runtime guard's output monitor is malformed (row length, non-finite value).
    BadMonitor,
}

impl Error {
    /// A short, stable, human-readable description (no allocation).
    pub const fn as_str(self) -> &'static str {
        match self {
            Error::Truncated => "truncated: shorter than its header or declared length",
            Error::BadMagic => "bad magic: not a prorepair model blob",
            Error::UnsupportedVersion => "unsupported format version",
            Error::BadHeaderSize => "bad header size",
            Error::LengthMismatch => "length mismatch: trailing bytes after the declared length",
            Error::CrcMismatch => "CRC mismatch: the blob is corrupted",
            Error::MisalignedBuffer => {
                "misaligned buffer: the blob must start at a 4-byte aligned address"
            }
            Error::NonZeroReserved => "a reserved field is not zero",
            Error::BadInputShape => "bad input shape",
            Error::BadLayerCount => "bad layer count",
            Error::UnknownLayerKind => "unknown layer kind",
            Error::BadLayerParameters => "bad layer parameters",
            Error::ShapeMismatch => "shape mismatch between consecutive layers",
            Error::MisalignedOffset => "misaligned parameter block offset (not a multiple of 16)",
            Error::BadBlockOffset => "parameter block offset is not where the format places it",
            Error::BlockOutOfRange => "parameter block out of range",
            Error::NonFiniteParameter => "non-finite parameter",
            Error::Overflow => "size overflow",
            Error::OutputSizeMismatch => "output size in the header does not match the layers",
            Error::ArenaSizeMismatch => "arena size in the header does not match the layers",
            Error::ParameterCountMismatch => {
                "parameter count in the header does not match the layers"
            }
            Error::InputLength => "input length does not match the model",
            Error::OutputLength => "output length does not match the model",
            Error::ArenaTooSmall => "arena too small",
            Error::MisalignedArena => "misaligned arena: must be 4-byte aligned",
            Error::BufferTooSmall => "destination buffer too small",
            Error::UnknownPatchKind => "unknown patch kind",
            Error::UnsupportedSignature => "unsupported or malformed patch signature",
            Error::WrongBaseModel => "the patch is for a different base model",
            Error::BadPatchLayerCount => "bad patch layer count (none, or more than 8)",
            Error::BadPatchPayload => "malformed patch payload",
            Error::PatchLayerMismatch => {
                "the patch names a layer the model does not have or that has no parameters"
            }
            Error::PatchShapeMismatch => "the patch's parameter count differs from the layer's",
            Error::BadPatchRegion => "bad verified region in the patch",
            Error::BadPatchModule => "malformed patch module record",
            Error::PatchModuleMismatch => "a patch module does not fit the base model",
            Error::StalePatch => {
                "stale patch: its sequence number is not newer than the applied one"
            }
            Error::PatchRamTooSmall => "patch RAM too small",
            Error::MisalignedPatchRam => "misaligned patch RAM: must be 4-byte aligned",
            Error::UnsignedPatch => "unsigned patch: this device accepts only signed patches",
            Error::BadSignature => "bad signature: the patch is not signed by the device's key",
            Error::BadPublicKey => "the configured public key is not a valid Ed25519 key",
            Error::StorageFailure => "storage operation failed",
            Error::SlotTooSmall => "the patch does not fit in an OTA slot",
            Error::WriteVerifyFailed => "the slot read back differs from what was written",
            Error::BadMonitor => "malformed output monitor",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
