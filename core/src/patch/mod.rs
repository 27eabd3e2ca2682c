//! The patch, format version 1 (kind: weight delta): defined here once, validated
//! completely before anything is used, applied to a model in flash with the patched
//! layers' parameters in caller RAM ([`crate::Model::with_patch`]).
//!
//! All integers and floats are little-endian; the patch needs no alignment (values are
//! copied, never read in place).
//!
//! ```text
//! Header (96 bytes)
//!   0  magic            4 bytes "PRPT"
//!   4  format_version   u16 = 1
//!   6  header_size      u16 = 96
//!   8  total_len        u32, the patch's exact length
//!  12  crc32            u32, CRC-32 (ISO-HDLC) of bytes 0..12 then 16..total_len,
//!                       the signature field taken as all zero (so the signature can
//!                       cover the CRC)
//!  16  kind             u16, 1 = weight delta
//!  18  signature_kind   u16, 0 = none (the signature field is then all zero),
//!                       1 = Ed25519 (RFC 8032) over bytes 0..total_len-64
//!  20  sequence         u32 >= 1, monotonic: a device refuses a patch whose sequence
//!                       is not above the one it runs
//!  24  base_sha256      32 bytes, SHA-256 of the exact base model blob
//!  56  base_len         u32, length of that blob (checked before hashing)
//!  60  payload_len      u32; total_len = 96 + payload_len + 64
//!  64  layer_count      u32 in 1..=MAX_PATCH_LAYERS
//!  68  region_count     u32, verified input boxes (may be 0)
//!  72  region_dim       u32, values per box corner (the model's input length; 0 iff
//!                       region_count is 0)
//!  76  signer_key_id    8 bytes: signature_kind 1: the first 8 bytes of SHA-256 of
//!                       the signer's public key ([`key_id`]; names the signer, for
//!                       reports and a fast wrong-key refusal); signature_kind 0: zero
//!  84  reserved         12 bytes of 0
//! Payload (payload_len bytes)
//!   layer_count records, layer indices strictly ascending, each:
//!     0  layer_index  u32 (index in the base blob's layer table; Dense or Conv2d)
//!     4  encoding     u16, 1 = full, 2 = sparse, 3 = masked
//!     6  reserved     u16 = 0
//!     8  value_count  u32, f32 values of the layer's parameter blocks AS THE BLOB
//!                     STORES THEM: the weight block (Dense: panel-major with its zero
//!                     padding rows; Conv2d: OIHW) then the bias block
//!    12  entry_count  u32; full: = value_count, sparse and masked: >= 1
//!    16  full:   value_count f32, the complete replacement
//!        sparse: entry_count x (u32 index into those values, f32 value), indices
//!                strictly ascending; every other value stays as in the base blob
//!        masked: ceil(value_count / 32) u32 words of bit mask (bit i % 32 of word
//!                i / 32 set = value i changed; exactly entry_count bits set, none
//!                past value_count), then the entry_count new values in index order
//!   region_count x (region_dim f32 lower, region_dim f32 upper), lower <= upper
//! Signature (64 bytes): the Ed25519 signature (R then S) over every byte before it;
//!   with signature_kind 0 it is all zero. [`Patch::check_signature`] verifies it with
//!   the device's 32-byte public key; a device holding a key refuses unsigned patches.
//! ```
//!
//! The encoder picks, per layer, the smallest of full (16 + 4 n bytes), sparse
//! (16 + 8 k bytes for k changed values) and masked (16 + 4 ceil(n / 32) + 4 k). Padding slots of a Dense weight block must
//! stay zero in either encoding.

#[cfg(feature = "encode")]
pub mod encode;
pub mod modules;

use crate::Error;
use crate::format::{self, read_u16, read_u32};
use crate::model::{Layer, Model};

/// The four magic bytes at the start of every patch.
pub const PATCH_MAGIC: [u8; 4] = *b"PRPT";
/// The patch format version this build reads and writes.
pub const PATCH_FORMAT_VERSION: u16 = 1;
/// Size of the fixed patch header in bytes.
pub const PATCH_HEADER_SIZE: usize = 96;
/// Size of the signature field at the end of every patch.
pub const SIGNATURE_SIZE: usize = 64;
/// Size of a layer record's header in bytes.
pub const RECORD_HEADER_SIZE: usize = 16;
/// Most layers one patch may change (a device keeps their table in the model handle).
pub const MAX_PATCH_LAYERS: usize = 8;

/// Patch kinds, as stored at offset 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum PatchKind {
    /// Replacement or sparse delta of the repaired layers' parameters.
    WeightDelta = 1,
    /// Indicators selecting patch modules added to the logits ([`modules`]).
    Modules = 2,
}

impl PatchKind {
    /// Short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            PatchKind::WeightDelta => "weight delta",
            PatchKind::Modules => "patch modules",
        }
    }
}

/// Signature kinds, as stored at offset 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum SignatureKind {
    /// Unsigned: the 64-byte signature field is all zero.
    None = 0,
    /// Ed25519 over every byte before the signature field.
    Ed25519 = 1,
}

impl SignatureKind {
    /// Short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            SignatureKind::None => "none",
            SignatureKind::Ed25519 => "ed25519",
        }
    }
}

/// Size of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_SIZE: usize = 32;

/// Where a signed patch names its signer's key ([`key_id`]).
pub const KEY_ID_FIELD: core::ops::Range<usize> = 76..84;

/// The 8-byte id of a public key: the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8; PUBLIC_KEY_SIZE]) -> [u8; 8] {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(public_key).into();
    let mut id = [0u8; 8];
    id.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    id
}

/// CRC-32 of a patch: bytes 0..12 then 16..len with the trailing signature field taken
/// as zero (the signature covers the CRC, so the CRC cannot cover the signature).
pub fn patch_crc(bytes: &[u8]) -> u32 {
    let mut digest = format::CRC32.digest();
    let signed = bytes.get(..signed_len(bytes.len())).unwrap_or(&[]);
    digest.update(signed.get(..format::CRC_FIELD.start).unwrap_or(&[]));
    digest.update(signed.get(format::CRC_FIELD.end..).unwrap_or(&[]));
    digest.update(&[0u8; SIGNATURE_SIZE]);
    digest.finalize()
}

/// How a layer record stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum LayerEncoding {
    /// Every value of the layer's blocks.
    Full = 1,
    /// `(index, value)` pairs of the changed values.
    Sparse = 2,
    /// A bit mask over the values (1 = changed), then the changed values in order.
    Masked = 3,
}

impl LayerEncoding {
    /// Short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            LayerEncoding::Full => "full",
            LayerEncoding::Sparse => "sparse",
            LayerEncoding::Masked => "masked",
        }
    }

    const fn from_word(word: u16) -> Option<Self> {
        match word {
            1 => Some(LayerEncoding::Full),
            2 => Some(LayerEncoding::Sparse),
            3 => Some(LayerEncoding::Masked),
            _ => None,
        }
    }
}

/// One validated layer record of a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRecord<'a> {
    /// Index of the layer in the base blob.
    pub layer_index: usize,
    /// Full replacement or sparse pairs.
    pub encoding: LayerEncoding,
    /// Values in the layer's parameter blocks (blob layout, padding included).
    pub value_count: usize,
    /// Stored entries (`value_count` for full, the pairs for sparse).
    pub entry_count: usize,
    /// The raw entries (4 bytes each for full, 8 for sparse).
    data: &'a [u8],
}

impl LayerRecord<'_> {
    /// Bytes the record takes in the patch.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_SIZE.saturating_add(self.data.len())
    }

    /// The stored `(index, value)` entries in index order (full: every index).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            record: *self,
            k: 0,
            bit: 0,
        }
    }

    /// Write the layer's replaced values into `dst` (`value_count` values holding the
    /// base blob's values).
    fn apply_to(&self, dst: &mut [f32]) {
        for (index, value) in self.entries() {
            if let Some(slot) = dst.get_mut(index) {
                *slot = value;
            }
        }
    }
}

/// Bytes of the bit mask of a masked record over `value_count` values (whole u32 words).
pub const fn mask_bytes(value_count: usize) -> usize {
    value_count.div_ceil(32).saturating_mul(4)
}

/// The entries of a [`LayerRecord`] (see [`LayerRecord::entries`]).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    record: LayerRecord<'a>,
    /// Next entry.
    k: usize,
    /// Masked: next mask bit to look at.
    bit: usize,
}

impl Iterator for Entries<'_> {
    type Item = (usize, f32);

    fn next(&mut self) -> Option<(usize, f32)> {
        let r = &self.record;
        if self.k >= r.entry_count {
            return None;
        }
        let k = self.k;
        self.k += 1;
        match r.encoding {
            LayerEncoding::Full => Some((k, f32_at(r.data, k.checked_mul(4)?))),
            LayerEncoding::Sparse => {
                let at = k.checked_mul(8)?;
                Some((
                    u32_at(r.data, at) as usize,
                    f32_at(r.data, at.checked_add(4)?),
                ))
            }
            LayerEncoding::Masked => {
                let mask = r.data.get(..mask_bytes(r.value_count))?;
                // The next set bit (validation guarantees entry_count of them).
                while self.bit < r.value_count {
                    let bit = self.bit;
                    self.bit += 1;
                    let word = u32_at(mask, (bit / 32).checked_mul(4)?);
                    if word & (1 << (bit % 32)) != 0 {
                        let at = k.checked_mul(4)?.checked_add(mask.len())?;
                        return Some((bit, f32_at(r.data, at)));
                    }
                }
                None
            }
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    read_u32(bytes, at).unwrap_or(0)
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(bytes, at))
}

/// Region `k`'s lower and upper corners as raw little-endian f32 bytes, for either patch
/// kind: `count` regions, each two corners of `dim` values, stored from `start` in
/// `bytes`. `None` when `k` is out of range or the bytes are short.
fn region_corners(
    bytes: &[u8],
    start: usize,
    count: usize,
    dim: usize,
    k: usize,
) -> Option<(&[u8], &[u8])> {
    if k >= count {
        return None;
    }
    let corner = dim.checked_mul(4)?;
    let start = k.checked_mul(corner)?.checked_mul(2)?.checked_add(start)?;
    let mid = start.checked_add(corner)?;
    let end = mid.checked_add(corner)?;
    Some((bytes.get(start..mid)?, bytes.get(mid..end)?))
}

/// Copy a region's raw corners (from [`region_corners`]) into `lower` and `upper`, each
/// `dim` values long (`Error::InputLength` otherwise).
fn copy_region(
    lo: &[u8],
    up: &[u8],
    dim: usize,
    lower: &mut [f32],
    upper: &mut [f32],
) -> Result<(), Error> {
    if lower.len() != dim || upper.len() != dim {
        return Err(Error::InputLength);
    }
    for (j, (l, u)) in lower.iter_mut().zip(upper.iter_mut()).enumerate() {
        *l = f32_at(lo, 4 * j);
        *u = f32_at(up, 4 * j);
    }
    Ok(())
}

/// The binding checks both patch kinds start with: `model`'s blob has the length and
/// SHA-256 the patch was made for, and regions (if any) have the model's input length.
fn check_base(
    model: &Model<'_>,
    base_len: usize,
    base_sha256: &[u8; 32],
    region_count: usize,
    region_dim: usize,
) -> Result<(), Error> {
    if model.as_bytes().len() != base_len || model.sha256() != *base_sha256 {
        return Err(Error::WrongBaseModel);
    }
    if region_count > 0 && region_dim != model.input_len() {
        return Err(Error::BadPatchRegion);
    }
    Ok(())
}

/// A structurally valid patch, borrowed from its bytes (which may be unaligned).
///
/// [`Patch::from_bytes`] checks everything the patch alone can show; the binding to a
/// base model (hash, layers, shapes, sequence, RAM) is checked by
/// [`crate::Model::with_patch`] before anything is copied.
#[derive(Debug, Clone, Copy)]
pub struct Patch<'a> {
    bytes: &'a [u8],
    sequence: u32,
    base_sha256: [u8; 32],
    base_len: usize,
    layer_count: usize,
    region_count: usize,
    region_dim: usize,
    regions_start: usize,
    ram_values: usize,
    signature_kind: SignatureKind,
}

/// Bytes of the header and payload (what the signature covers) for `total_len`.
fn signed_len(total_len: usize) -> usize {
    total_len.saturating_sub(SIGNATURE_SIZE)
}

/// The fields every patch kind shares, from a header that passed [`parse_header`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) signature_kind: SignatureKind,
    pub(crate) sequence: u32,
    pub(crate) base_sha256: [u8; 32],
    pub(crate) base_len: usize,
}

/// Check the header all patch kinds share, in this order: length, magic, version,
/// header size, total length, CRC, `kind`, signature kind and field, reserved bytes,
/// payload length. One parser for every kind, so signing and the CRC rule cannot drift
/// apart between them.
pub(crate) fn parse_header(bytes: &[u8], kind: u16) -> Result<Header, Error> {
    if bytes.len() < PATCH_HEADER_SIZE {
        return Err(Error::Truncated);
    }
    if bytes.get(..4) != Some(&PATCH_MAGIC[..]) {
        return Err(Error::BadMagic);
    }
    if read_u16(bytes, 4) != Some(PATCH_FORMAT_VERSION) {
        return Err(Error::UnsupportedVersion);
    }
    if read_u16(bytes, 6).map(usize::from) != Some(PATCH_HEADER_SIZE) {
        return Err(Error::BadHeaderSize);
    }
    let word = |at: usize| read_u32(bytes, at).map_or(0, |w| w as usize);
    let total_len = word(8);
    if total_len > bytes.len() || total_len < PATCH_HEADER_SIZE + SIGNATURE_SIZE {
        return Err(Error::Truncated);
    }
    if total_len != bytes.len() {
        return Err(Error::LengthMismatch);
    }
    if read_u32(bytes, format::CRC_FIELD.start) != Some(patch_crc(bytes)) {
        return Err(Error::CrcMismatch);
    }
    if read_u16(bytes, 16) != Some(kind) {
        return Err(Error::UnknownPatchKind);
    }
    let signature_kind = match read_u16(bytes, 18) {
        Some(0)
            if bytes
                .get(signed_len(total_len)..)
                .is_some_and(|s| s.iter().all(|&b| b == 0)) =>
        {
            SignatureKind::None
        }
        Some(1) => SignatureKind::Ed25519,
        _ => return Err(Error::UnsupportedSignature),
    };
    let reserved_start = match signature_kind {
        SignatureKind::None => KEY_ID_FIELD.start,
        SignatureKind::Ed25519 => KEY_ID_FIELD.end,
    };
    if bytes
        .get(reserved_start..PATCH_HEADER_SIZE)
        .is_none_or(|r| r.iter().any(|&b| b != 0))
    {
        return Err(Error::NonZeroReserved);
    }
    let mut base_sha256 = [0u8; 32];
    base_sha256.copy_from_slice(bytes.get(24..56).ok_or(Error::Truncated)?);
    let payload_len = word(60);
    if PATCH_HEADER_SIZE
        .checked_add(payload_len)
        .and_then(|n| n.checked_add(SIGNATURE_SIZE))
        != Some(total_len)
    {
        return Err(Error::BadPatchPayload);
    }
    // Sequence numbers start at 1: 0 is what an unprovisioned device runs, so a patch
    // carrying it could never be newer.
    let sequence = read_u32(bytes, 20).unwrap_or(0);
    if sequence == 0 {
        return Err(Error::StalePatch);
    }
    Ok(Header {
        signature_kind,
        sequence,
        base_sha256,
        base_len: word(56),
    })
}

/// The signer's key id of a header-checked patch, `None` when unsigned.
pub(crate) fn signer_key_id(bytes: &[u8], signature_kind: SignatureKind) -> Option<[u8; 8]> {
    if signature_kind != SignatureKind::Ed25519 {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(bytes.get(KEY_ID_FIELD)?);
    Some(id)
}

/// The 64-byte signature field of a header-checked patch (all zero when unsigned).
pub(crate) fn signature_field(bytes: &[u8]) -> [u8; SIGNATURE_SIZE] {
    let mut out = [0u8; SIGNATURE_SIZE];
    if let Some(field) = bytes.get(signed_len(bytes.len())..)
        && field.len() == SIGNATURE_SIZE
    {
        out.copy_from_slice(field);
    }
    out
}

/// The device's signature policy over a header-checked patch of any kind: with
/// `public_key` `None` every patch passes (an unkeyed device); with a key the patch must
/// be Ed25519-signed ([`Error::UnsignedPatch`]) by that key over every byte before the
/// signature field ([`Error::BadSignature`]); a key that is not a curve point gives
/// [`Error::BadPublicKey`].
pub(crate) fn check_signature(
    bytes: &[u8],
    signature_kind: SignatureKind,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
) -> Result<(), Error> {
    let Some(key_bytes) = public_key else {
        return Ok(());
    };
    if signature_kind != SignatureKind::Ed25519 {
        return Err(Error::UnsignedPatch);
    }
    let key = salty::PublicKey::try_from(key_bytes).map_err(|_| Error::BadPublicKey)?;
    // Named for another key: refused without the (slow) curve arithmetic.
    if signer_key_id(bytes, signature_kind) != Some(key_id(key_bytes)) {
        return Err(Error::BadSignature);
    }
    let raw = signature_field(bytes);
    // Only canonical S (below 2^253; the group order is about 2^252): refuses
    // malleated copies of a valid signature with S + L.
    if raw.last().is_none_or(|&b| b & 0xE0 != 0) {
        return Err(Error::BadSignature);
    }
    let signature = salty::Signature::from(&raw);
    let signed = bytes.get(..signed_len(bytes.len())).unwrap_or(&[]);
    key.verify(signed, &signature)
        .map_err(|_| Error::BadSignature)
}

impl<'a> Patch<'a> {
    /// Validate `bytes` completely as a patch (header, CRC, every record, every region).
    ///
    /// Checks in order: length, magic, version, header size, total length, CRC, kind,
    /// signature kind and field, reserved bytes, payload length, layer count, records,
    /// regions.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let Header {
            signature_kind,
            sequence,
            base_sha256,
            base_len,
        } = parse_header(bytes, PatchKind::WeightDelta as u16)?;
        let total_len = bytes.len();
        let word = |at: usize| read_u32(bytes, at).map_or(0, |w| w as usize);
        let layer_count = word(64);
        if !(1..=MAX_PATCH_LAYERS).contains(&layer_count) {
            return Err(Error::BadPatchLayerCount);
        }
        let (region_count, region_dim) = (word(68), word(72));
        if (region_count == 0) != (region_dim == 0) {
            return Err(Error::BadPatchRegion);
        }
        let mut patch = Patch {
            bytes,
            sequence,
            base_sha256,
            base_len,
            layer_count,
            region_count,
            region_dim,
            regions_start: 0,
            ram_values: 0,
            signature_kind,
        };
        // Walk the records: each one checked on its own, indices ascending.
        let payload_end = signed_len(total_len);
        let mut at = PATCH_HEADER_SIZE;
        let mut previous: Option<usize> = None;
        let mut ram_values = 0usize;
        for _ in 0..layer_count {
            let record = record_at(bytes, at, payload_end)?;
            if previous.is_some_and(|p| record.layer_index <= p) {
                return Err(Error::BadPatchPayload);
            }
            previous = Some(record.layer_index);
            ram_values = ram_values
                .checked_add(record.value_count)
                .ok_or(Error::Overflow)?;
            at = at
                .checked_add(record.encoded_len())
                .ok_or(Error::Overflow)?;
        }
        let region_bytes = region_count
            .checked_mul(region_dim)
            .and_then(|n| n.checked_mul(8))
            .ok_or(Error::Overflow)?;
        if at.checked_add(region_bytes) != Some(payload_end) {
            return Err(Error::BadPatchPayload);
        }
        patch.regions_start = at;
        patch.ram_values = ram_values;
        // RAM in bytes must be representable (C reports it as size_t).
        ram_values.checked_mul(4).ok_or(Error::Overflow)?;
        for k in 0..region_count {
            let (lower, upper) = patch.region_raw(k).ok_or(Error::BadPatchRegion)?;
            for j in 0..region_dim {
                let (l, u) = (f32_at(lower, 4 * j), f32_at(upper, 4 * j));
                if !(l.is_finite() && u.is_finite() && l <= u) {
                    return Err(Error::BadPatchRegion);
                }
            }
        }
        Ok(patch)
    }

    /// The patch's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The patch kind (format v1: always [`PatchKind::WeightDelta`]).
    pub fn kind(&self) -> PatchKind {
        PatchKind::WeightDelta
    }

    /// The signature kind.
    pub fn signature_kind(&self) -> SignatureKind {
        self.signature_kind
    }

    /// The id of the key that signed the patch ([`key_id`]), `None` when unsigned. Not
    /// proof of anything by itself: [`Patch::check_signature`] is.
    pub fn signer_key_id(&self) -> Option<[u8; 8]> {
        signer_key_id(self.bytes, self.signature_kind)
    }

    /// The 64-byte signature field (all zero for an unsigned patch).
    pub fn signature(&self) -> [u8; SIGNATURE_SIZE] {
        signature_field(self.bytes)
    }

    /// Check the patch's signature against the device's policy: with `public_key`
    /// `None` every structurally valid patch passes (an unkeyed device); with a key the
    /// patch must be Ed25519-signed ([`Error::UnsignedPatch`] otherwise) and its
    /// signature must verify over every byte before the signature field
    /// ([`Error::BadSignature`]). A key that is not a curve point gives
    /// [`Error::BadPublicKey`].
    pub fn check_signature(&self, public_key: Option<&[u8; PUBLIC_KEY_SIZE]>) -> Result<(), Error> {
        check_signature(self.bytes, self.signature_kind, public_key)
    }

    /// The monotonic sequence number.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// SHA-256 of the base model blob this patch applies to.
    pub fn base_sha256(&self) -> [u8; 32] {
        self.base_sha256
    }

    /// Length in bytes of the base model blob this patch applies to.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// The bytes the signature covers (header and payload).
    pub fn signed_bytes(&self) -> &'a [u8] {
        self.bytes
            .get(..signed_len(self.bytes.len()))
            .unwrap_or(&[])
    }

    /// Number of layers the patch changes.
    pub fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// The layer records, in ascending layer order.
    pub fn layers(&self) -> impl Iterator<Item = LayerRecord<'a>> + '_ {
        let end = signed_len(self.bytes.len());
        let mut at = PATCH_HEADER_SIZE;
        (0..self.layer_count).map_while(move |_| {
            let record = record_at(self.bytes, at, end).ok()?;
            at = at.checked_add(record.encoded_len())?;
            Some(record)
        })
    }

    /// Number of verified regions (input boxes).
    pub fn region_count(&self) -> usize {
        self.region_count
    }

    /// Values per region corner (the model's input length), 0 without regions.
    pub fn region_dim(&self) -> usize {
        self.region_dim
    }

    /// Region `k`'s corners copied into `lower` and `upper` (each `region_dim` long).
    pub fn region(&self, k: usize, lower: &mut [f32], upper: &mut [f32]) -> Result<(), Error> {
        let (lo, up) = self.region_raw(k).ok_or(Error::BadPatchRegion)?;
        copy_region(lo, up, self.region_dim, lower, upper)
    }

    /// True when `input` lies inside one of the verified regions.
    pub fn covers(&self, input: &[f32]) -> bool {
        input.len() == self.region_dim
            && (0..self.region_count).any(|k| {
                self.region_raw(k).is_some_and(|(lo, up)| {
                    input
                        .iter()
                        .enumerate()
                        .all(|(j, &x)| f32_at(lo, 4 * j) <= x && x <= f32_at(up, 4 * j))
                })
            })
    }

    fn region_raw(&self, k: usize) -> Option<(&'a [u8], &'a [u8])> {
        region_corners(
            self.bytes,
            self.regions_start,
            self.region_count,
            self.region_dim,
            k,
        )
    }

    /// Exact caller RAM needed to apply this patch, in f32 values: the parameter blocks
    /// of every patched layer, in blob layout.
    pub fn required_ram_len(&self) -> usize {
        self.ram_values
    }

    /// Exact caller RAM needed to apply this patch, in bytes (`4 * required_ram_len()`).
    pub fn required_ram_bytes(&self) -> usize {
        self.ram_values.saturating_mul(4)
    }

    /// Check that this patch applies to `model`'s base blob: length and SHA-256 of the
    /// blob, every record against its layer, the regions' dimension.
    pub fn check_binding(&self, model: &Model<'_>) -> Result<(), Error> {
        check_base(
            model,
            self.base_len,
            &self.base_sha256,
            self.region_count,
            self.region_dim,
        )?;
        for record in self.layers() {
            let layer = model
                .base_layer(record.layer_index)
                .ok_or(Error::PatchLayerMismatch)?;
            let (weight, bias) = param_blocks(&layer).ok_or(Error::PatchLayerMismatch)?;
            if weight.len().checked_add(bias.len()) != Some(record.value_count) {
                return Err(Error::PatchShapeMismatch);
            }
            // Padding rows of a panel-major Dense block stay zero.
            if let Layer::Dense(d) = layer {
                let pad = |index: usize| {
                    index < weight.len()
                        && (index / (format::DENSE_PANEL * d.in_dim)) * format::DENSE_PANEL
                            + index % format::DENSE_PANEL
                            >= d.out_dim
                };
                if record.entries().any(|(i, v)| pad(i) && v.to_bits() != 0) {
                    return Err(Error::BadPatchPayload);
                }
            }
        }
        Ok(())
    }

    /// Fill `ram` with the patched layers' blocks: the base values, then the patch's.
    /// Call only after [`Patch::check_binding`] and with `ram.len() >= required_ram_len()`.
    pub(crate) fn fill_ram(&self, model: &Model<'_>, ram: &mut [f32]) -> Result<(), Error> {
        let mut at = 0usize;
        for record in self.layers() {
            let layer = model
                .base_layer(record.layer_index)
                .ok_or(Error::PatchLayerMismatch)?;
            let (weight, bias) = param_blocks(&layer).ok_or(Error::PatchLayerMismatch)?;
            let end = at.checked_add(record.value_count).ok_or(Error::Overflow)?;
            let dst = ram.get_mut(at..end).ok_or(Error::PatchRamTooSmall)?;
            let (dst_w, dst_b) = dst
                .split_at_mut_checked(weight.len())
                .ok_or(Error::PatchShapeMismatch)?;
            if record.encoding != LayerEncoding::Full {
                dst_w.copy_from_slice(weight);
                dst_b.copy_from_slice(bias.get(..dst_b.len()).ok_or(Error::PatchShapeMismatch)?);
            }
            record.apply_to(dst);
            at = end;
        }
        Ok(())
    }
}

/// The weight and bias blocks of a layer with parameters, as the blob stores them.
pub(crate) fn param_blocks<'b>(layer: &Layer<'b>) -> Option<(&'b [f32], &'b [f32])> {
    match layer {
        Layer::Dense(d) => Some((d.panels, d.bias)),
        Layer::Conv2d(c) => Some((c.weight, c.bias)),
        _ => None,
    }
}

/// Decode and check the record at `at` (ending at or before `end`).
fn record_at(bytes: &[u8], at: usize, end: usize) -> Result<LayerRecord<'_>, Error> {
    let region = bytes.get(..end).ok_or(Error::BadPatchPayload)?;
    let head_end = at.checked_add(RECORD_HEADER_SIZE).ok_or(Error::Overflow)?;
    let head = region.get(at..head_end).ok_or(Error::BadPatchPayload)?;
    let layer_index = u32_at(head, 0) as usize;
    let encoding = read_u16(head, 4)
        .and_then(LayerEncoding::from_word)
        .ok_or(Error::BadPatchPayload)?;
    if read_u16(head, 6) != Some(0) {
        return Err(Error::NonZeroReserved);
    }
    let value_count = u32_at(head, 8) as usize;
    let entry_count = u32_at(head, 12) as usize;
    let (entry_size, prefix) = match encoding {
        LayerEncoding::Full if entry_count == value_count && value_count > 0 => (4, 0),
        LayerEncoding::Sparse if entry_count >= 1 && entry_count <= value_count => (8, 0),
        LayerEncoding::Masked if entry_count >= 1 && entry_count <= value_count => {
            (4, mask_bytes(value_count))
        }
        _ => return Err(Error::BadPatchPayload),
    };
    let data_end = entry_count
        .checked_mul(entry_size)
        .and_then(|n| n.checked_add(prefix))
        .and_then(|n| n.checked_add(head_end))
        .ok_or(Error::Overflow)?;
    let data = region
        .get(head_end..data_end)
        .ok_or(Error::BadPatchPayload)?;
    let record = LayerRecord {
        layer_index,
        encoding,
        value_count,
        entry_count,
        data,
    };
    if encoding == LayerEncoding::Masked {
        // Exactly entry_count bits set, none past value_count.
        let mask = data.get(..prefix).ok_or(Error::BadPatchPayload)?;
        let set: usize = mask
            .chunks_exact(4)
            .map(|w| u32_at(w, 0).count_ones() as usize)
            .sum();
        let tail = value_count % 32;
        let last = u32_at(mask, prefix.saturating_sub(4));
        if set != entry_count || (tail != 0 && last >> tail != 0) {
            return Err(Error::BadPatchPayload);
        }
    }
    let mut previous: Option<usize> = None;
    let mut count = 0usize;
    for (index, value) in record.entries() {
        if index >= value_count || previous.is_some_and(|p| index <= p) {
            return Err(Error::BadPatchPayload);
        }
        if !value.is_finite() {
            return Err(Error::NonFiniteParameter);
        }
        previous = Some(index);
        count += 1;
    }
    if count != entry_count {
        return Err(Error::BadPatchPayload);
    }
    Ok(record)
}
