//! Status codes and their descriptions.

use core::ffi::{c_char, c_int};

use prorepair_core::Error;

use crate::boundary::guard;

/// The result of every `pr_*` function: `PR_OK` (0) or the one error that occurred.
///
/// Values are stable: 1..=9 misuse of the API, 10..=39 an invalid model blob (from
/// `pr_model_load`; the header errors 10..=17 and 26, 27 also for an invalid patch),
/// 40..=49 evaluation arguments, 50..=69 an invalid or unbindable patch (from
/// `pr_model_apply_patch`), 70..=79 a patch-modules patch (`pr_modules_load`), 99 an unexpected internal error.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum pr_status {
    /// Success.
    PR_OK = 0,
    /// A pointer argument is NULL.
    PR_NULL_POINTER = 1,
    /// A panic was caught at the API boundary (a bug; host builds only: the firmware
    /// build aborts instead).
    PR_PANIC = 2,
    /// The `pr_model` was never filled by a successful `pr_model_load`.
    PR_MODEL_NOT_LOADED = 3,
    /// A `float` buffer or the `pr_model` is not aligned for its type.
    PR_MISALIGNED_POINTER = 4,
    /// Two of the buffers given to `pr_model_evaluate` overlap (input, arena, output,
    /// or the arena or output with the model blob).
    PR_OVERLAPPING_BUFFERS = 5,
    /// The blob is shorter than its header or than the length its header declares.
    PR_TRUNCATED = 10,
    /// The blob does not start with the model-blob magic `PRMB`.
    PR_BAD_MAGIC = 11,
    /// The blob's format version is not one this library reads.
    PR_UNSUPPORTED_VERSION = 12,
    /// The blob's header-size field is wrong for its format version.
    PR_BAD_HEADER_SIZE = 13,
    /// The blob is longer than the length its header declares.
    PR_LENGTH_MISMATCH = 14,
    /// The blob's CRC-32 does not match its contents (corruption).
    PR_CRC_MISMATCH = 15,
    /// The blob does not start at a 4-byte aligned address (16 recommended).
    PR_MISALIGNED_BLOB = 16,
    /// A reserved field of the blob is not zero.
    PR_NON_ZERO_RESERVED = 17,
    /// The blob's input shape is invalid (rank outside 1..=3 or a zero dimension).
    PR_BAD_INPUT_SHAPE = 18,
    /// The blob's layer count is zero or does not fit in the blob.
    PR_BAD_LAYER_COUNT = 19,
    /// A layer of the blob has an unknown kind.
    PR_UNKNOWN_LAYER_KIND = 20,
    /// A layer's own parameters are invalid (zero size or stride, kernel too large, ...).
    PR_BAD_LAYER_PARAMETERS = 21,
    /// A layer's input shape does not match the previous layer's output shape.
    PR_SHAPE_MISMATCH = 22,
    /// A parameter block offset is not a multiple of 16.
    PR_MISALIGNED_OFFSET = 23,
    /// A parameter block is not where the format places it.
    PR_BAD_BLOCK_OFFSET = 24,
    /// A parameter block extends past the blob, or the blob has bytes after its last one.
    PR_BLOCK_OUT_OF_RANGE = 25,
    /// A parameter is NaN or infinite.
    PR_NON_FINITE_PARAMETER = 26,
    /// A size computation overflows the address space (or a length is impossibly large).
    PR_OVERFLOW = 27,
    /// The blob's output size differs from its last layer's output size.
    PR_OUTPUT_SIZE_MISMATCH = 28,
    /// The blob's arena size differs from what its layers need.
    PR_ARENA_SIZE_MISMATCH = 29,
    /// The blob's parameter count differs from its layers' parameters.
    PR_PARAMETER_COUNT_MISMATCH = 30,
    /// `input_len` differs from the model's input length.
    PR_INPUT_LENGTH = 40,
    /// `output_len` differs from the model's output length.
    PR_OUTPUT_LENGTH = 41,
    /// `arena_len` is smaller than `pr_model_arena_bytes`.
    PR_ARENA_TOO_SMALL = 42,
    /// The arena does not start at a 4-byte aligned address.
    PR_MISALIGNED_ARENA = 43,
    /// A destination buffer is too small (encoders; not returned by this API today).
    PR_BUFFER_TOO_SMALL = 44,
    /// The patch has an unknown kind.
    PR_UNKNOWN_PATCH_KIND = 50,
    /// The patch's signature kind is unknown, or an unsigned patch carries signature bytes.
    PR_UNSUPPORTED_SIGNATURE = 51,
    /// The patch is for a different base model (SHA-256 or length of the blob differ).
    PR_WRONG_BASE_MODEL = 52,
    /// The patch changes no layer, or more than 8.
    PR_BAD_PATCH_LAYER_COUNT = 53,
    /// The patch payload is malformed (records, encodings, indices, padding).
    PR_BAD_PATCH_PAYLOAD = 54,
    /// The patch names a layer the model does not have, or one without parameters.
    PR_PATCH_LAYER_MISMATCH = 55,
    /// The patch's parameter count for a layer differs from the model's layer.
    PR_PATCH_SHAPE_MISMATCH = 56,
    /// A verified region of the patch is invalid or has the wrong dimension.
    PR_BAD_PATCH_REGION = 57,
    /// The patch's sequence number is not newer than the applied one.
    PR_STALE_PATCH = 58,
    /// `ram_len` is smaller than `pr_patch_ram_bytes`.
    PR_PATCH_RAM_TOO_SMALL = 59,
    /// The patch RAM does not start at a 4-byte aligned address.
    PR_MISALIGNED_PATCH_RAM = 60,
    /// A patch-modules record is malformed (indicator, layer count, widths, labels, box).
    PR_BAD_PATCH_MODULE = 70,
    /// A patch module does not fit the base model (input or output length, label).
    PR_PATCH_MODULE_MISMATCH = 71,
    /// The device core reported an error this version of the C API does not name.
    PR_INTERNAL_ERROR = 99,
}

impl From<Error> for pr_status {
    fn from(error: Error) -> Self {
        use pr_status::*;
        match error {
            Error::Truncated => PR_TRUNCATED,
            Error::BadMagic => PR_BAD_MAGIC,
            Error::UnsupportedVersion => PR_UNSUPPORTED_VERSION,
            Error::BadHeaderSize => PR_BAD_HEADER_SIZE,
            Error::LengthMismatch => PR_LENGTH_MISMATCH,
            Error::CrcMismatch => PR_CRC_MISMATCH,
            Error::MisalignedBuffer => PR_MISALIGNED_BLOB,
            Error::NonZeroReserved => PR_NON_ZERO_RESERVED,
            Error::BadInputShape => PR_BAD_INPUT_SHAPE,
            Error::BadLayerCount => PR_BAD_LAYER_COUNT,
            Error::UnknownLayerKind => PR_UNKNOWN_LAYER_KIND,
            Error::BadLayerParameters => PR_BAD_LAYER_PARAMETERS,
            Error::ShapeMismatch => PR_SHAPE_MISMATCH,
            Error::MisalignedOffset => PR_MISALIGNED_OFFSET,
            Error::BadBlockOffset => PR_BAD_BLOCK_OFFSET,
            Error::BlockOutOfRange => PR_BLOCK_OUT_OF_RANGE,
            Error::NonFiniteParameter => PR_NON_FINITE_PARAMETER,
            Error::Overflow => PR_OVERFLOW,
            Error::OutputSizeMismatch => PR_OUTPUT_SIZE_MISMATCH,
            Error::ArenaSizeMismatch => PR_ARENA_SIZE_MISMATCH,
            Error::ParameterCountMismatch => PR_PARAMETER_COUNT_MISMATCH,
            Error::InputLength => PR_INPUT_LENGTH,
            Error::OutputLength => PR_OUTPUT_LENGTH,
            Error::ArenaTooSmall => PR_ARENA_TOO_SMALL,
            Error::MisalignedArena => PR_MISALIGNED_ARENA,
            Error::BufferTooSmall => PR_BUFFER_TOO_SMALL,
            Error::UnknownPatchKind => PR_UNKNOWN_PATCH_KIND,
            Error::UnsupportedSignature => PR_UNSUPPORTED_SIGNATURE,
            Error::WrongBaseModel => PR_WRONG_BASE_MODEL,
            Error::BadPatchLayerCount => PR_BAD_PATCH_LAYER_COUNT,
            Error::BadPatchPayload => PR_BAD_PATCH_PAYLOAD,
            Error::PatchLayerMismatch => PR_PATCH_LAYER_MISMATCH,
            Error::PatchShapeMismatch => PR_PATCH_SHAPE_MISMATCH,
            Error::BadPatchRegion => PR_BAD_PATCH_REGION,
            Error::StalePatch => PR_STALE_PATCH,
            Error::PatchRamTooSmall => PR_PATCH_RAM_TOO_SMALL,
            Error::MisalignedPatchRam => PR_MISALIGNED_PATCH_RAM,
            Error::BadPatchModule => PR_BAD_PATCH_MODULE,
            Error::PatchModuleMismatch => PR_PATCH_MODULE_MISMATCH,
            // `Error` is non_exhaustive: a variant added to the core after this table.
            _ => PR_INTERNAL_ERROR,
        }
    }
}

impl pr_status {
    /// Every status, in value order (tests and `pr_status_str`).
    pub const ALL: [pr_status; 46] = {
        use pr_status::*;
        [
            PR_OK,
            PR_NULL_POINTER,
            PR_PANIC,
            PR_MODEL_NOT_LOADED,
            PR_MISALIGNED_POINTER,
            PR_OVERLAPPING_BUFFERS,
            PR_TRUNCATED,
            PR_BAD_MAGIC,
            PR_UNSUPPORTED_VERSION,
            PR_BAD_HEADER_SIZE,
            PR_LENGTH_MISMATCH,
            PR_CRC_MISMATCH,
            PR_MISALIGNED_BLOB,
            PR_NON_ZERO_RESERVED,
            PR_BAD_INPUT_SHAPE,
            PR_BAD_LAYER_COUNT,
            PR_UNKNOWN_LAYER_KIND,
            PR_BAD_LAYER_PARAMETERS,
            PR_SHAPE_MISMATCH,
            PR_MISALIGNED_OFFSET,
            PR_BAD_BLOCK_OFFSET,
            PR_BLOCK_OUT_OF_RANGE,
            PR_NON_FINITE_PARAMETER,
            PR_OVERFLOW,
            PR_OUTPUT_SIZE_MISMATCH,
            PR_ARENA_SIZE_MISMATCH,
            PR_PARAMETER_COUNT_MISMATCH,
            PR_INPUT_LENGTH,
            PR_OUTPUT_LENGTH,
            PR_ARENA_TOO_SMALL,
            PR_MISALIGNED_ARENA,
            PR_BUFFER_TOO_SMALL,
            PR_UNKNOWN_PATCH_KIND,
            PR_UNSUPPORTED_SIGNATURE,
            PR_WRONG_BASE_MODEL,
            PR_BAD_PATCH_LAYER_COUNT,
            PR_BAD_PATCH_PAYLOAD,
            PR_PATCH_LAYER_MISMATCH,
            PR_PATCH_SHAPE_MISMATCH,
            PR_BAD_PATCH_REGION,
            PR_STALE_PATCH,
            PR_PATCH_RAM_TOO_SMALL,
            PR_MISALIGNED_PATCH_RAM,
            PR_BAD_PATCH_MODULE,
            PR_PATCH_MODULE_MISMATCH,
            PR_INTERNAL_ERROR,
        ]
    };

    /// The static, NUL-terminated description of this status. For a status mapped
    /// from a core error it is the core's own text (`Error::as_str`), checked by a test.
    pub const fn description(self) -> &'static core::ffi::CStr {
        use pr_status::*;
        match self {
            PR_OK => c"ok",
            PR_NULL_POINTER => c"null pointer argument",
            PR_PANIC => c"internal panic caught at the API boundary (a bug)",
            PR_MODEL_NOT_LOADED => c"model not loaded: call pr_model_load first",
            PR_MISALIGNED_POINTER => {
                c"misaligned pointer: float buffers and pr_model need their natural alignment"
            }
            PR_OVERLAPPING_BUFFERS => {
                c"overlapping buffers: input, arena, output and the model blob must not overlap"
            }
            PR_TRUNCATED => c"truncated: shorter than its header or declared length",
            PR_BAD_MAGIC => c"bad magic: not a prorepair model blob",
            PR_UNSUPPORTED_VERSION => c"unsupported format version",
            PR_BAD_HEADER_SIZE => c"bad header size",
            PR_LENGTH_MISMATCH => c"length mismatch: trailing bytes after the declared length",
            PR_CRC_MISMATCH => c"CRC mismatch: the blob is corrupted",
            PR_MISALIGNED_BLOB => {
                c"misaligned buffer: the blob must start at a 4-byte aligned address"
            }
            PR_NON_ZERO_RESERVED => c"a reserved field is not zero",
            PR_BAD_INPUT_SHAPE => c"bad input shape",
            PR_BAD_LAYER_COUNT => c"bad layer count",
            PR_UNKNOWN_LAYER_KIND => c"unknown layer kind",
            PR_BAD_LAYER_PARAMETERS => c"bad layer parameters",
            PR_SHAPE_MISMATCH => c"shape mismatch between consecutive layers",
            PR_MISALIGNED_OFFSET => c"misaligned parameter block offset (not a multiple of 16)",
            PR_BAD_BLOCK_OFFSET => c"parameter block offset is not where the format places it",
            PR_BLOCK_OUT_OF_RANGE => c"parameter block out of range",
            PR_NON_FINITE_PARAMETER => c"non-finite parameter",
            PR_OVERFLOW => c"size overflow",
            PR_OUTPUT_SIZE_MISMATCH => c"output size in the header does not match the layers",
            PR_ARENA_SIZE_MISMATCH => c"arena size in the header does not match the layers",
            PR_PARAMETER_COUNT_MISMATCH => {
                c"parameter count in the header does not match the layers"
            }
            PR_INPUT_LENGTH => c"input length does not match the model",
            PR_OUTPUT_LENGTH => c"output length does not match the model",
            PR_ARENA_TOO_SMALL => c"arena too small",
            PR_MISALIGNED_ARENA => c"misaligned arena: must be 4-byte aligned",
            PR_BUFFER_TOO_SMALL => c"destination buffer too small",
            PR_UNKNOWN_PATCH_KIND => c"unknown patch kind",
            PR_UNSUPPORTED_SIGNATURE => c"unsupported or malformed patch signature",
            PR_WRONG_BASE_MODEL => c"the patch is for a different base model",
            PR_BAD_PATCH_LAYER_COUNT => c"bad patch layer count (none, or more than 8)",
            PR_BAD_PATCH_PAYLOAD => c"malformed patch payload",
            PR_PATCH_LAYER_MISMATCH => {
                c"the patch names a layer the model does not have or that has no parameters"
            }
            PR_PATCH_SHAPE_MISMATCH => c"the patch's parameter count differs from the layer's",
            PR_BAD_PATCH_REGION => c"bad verified region in the patch",
            PR_STALE_PATCH => c"stale patch: its sequence number is not newer than the applied one",
            PR_PATCH_RAM_TOO_SMALL => c"patch RAM too small",
            PR_MISALIGNED_PATCH_RAM => c"misaligned patch RAM: must be 4-byte aligned",
            PR_BAD_PATCH_MODULE => c"malformed patch module record",
            PR_PATCH_MODULE_MISMATCH => c"a patch module does not fit the base model",
            PR_INTERNAL_ERROR => {
                c"internal error: the device core reported an error this API does not name"
            }
        }
    }

    /// The status with numeric value `value`, if any.
    pub fn from_value(value: c_int) -> Option<pr_status> {
        Self::ALL.into_iter().find(|s| *s as c_int == value)
    }
}

/// A static, NUL-terminated English description of `status` (e.g. for logs).
///
/// Takes the status as a plain `int` so that any value is safe to pass: an unknown
/// value gives "unknown status code". Ownership: the string is static and owned by the
/// library; never free or modify it. Never returns NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pr_status_str(status: c_int) -> *const c_char {
    const UNKNOWN: &core::ffi::CStr = c"unknown status code";
    guard(UNKNOWN.as_ptr(), || {
        pr_status::from_value(status)
            .map_or(UNKNOWN, pr_status::description)
            .as_ptr()
    })
}

/// The library version (`"MAJOR.MINOR.PATCH"`), a static NUL-terminated string owned by
/// the library; never free or modify it. Never returns NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pr_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
