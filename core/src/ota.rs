//! Power-fail-safe A/B installation of patches, with anti-rollback and verified boot.
//!
//! The base model blob stays in flash, untouched. Patches live in two slots (A, B) of a
//! [`Storage`]; which one runs is said by a commit record, kept in two copies (record
//! areas A and B), each with its own generation number and CRC.
//!
//! ```text
//! Commit record (RECORD_SIZE = 32 bytes, little-endian)
//!   0  magic       "PRCR"
//!   4  version     u16 = 1
//!   6  slot        u16: 0 = slot A, 1 = slot B, 2 = no patch (base model)
//!   8  generation  u32, +1 per commit; the valid copy with the higher one wins
//!  12  counter     u32, anti-rollback: the highest patch sequence ever committed
//!  16  patch_len   u32, bytes of the patch in the slot
//!  20  patch_crc   u32, the CRC field of that patch (binds the record to the slot)
//!  24  reserved    u32 = 0
//!  28  crc32       u32, CRC-32 (ISO-HDLC) of bytes 0..28
//! ```
//!
//! Both patch kinds install and boot the same way ([`AnyPatch`]): a weight-delta patch
//! (kind 1) runs as a patched [`Model`], a patch-modules patch (kind 2) as a
//! [`ModulesModel`] over the untouched base; [`Running`] is either, and after a boot its
//! evaluation fails only on wrong argument lengths (every patch check, and the copy of
//! the patched parameters or module weights into caller RAM, happen in [`boot`]).
//!
//! [`install`] verifies the incoming patch completely (CRC, structure, signature under
//! the device key, base-model SHA-256, layers and shapes or module widths and labels,
//! sequence above the stored counter, slot size) before it touches storage. It then writes the slot that the
//! newest record does NOT use, reads it back, and only then writes the new record over
//! the OLDER record copy. Until that last write completes, the newest valid record is
//! still the old one, pointing at an untouched slot; once it completes (its CRC holds)
//! the new one wins. A torn record fails its CRC and is ignored.
//!
//! [`boot`] reads both records, tries the newest valid one, then the other, then the
//! base model; a slot is used only if its patch passes every check again (signature
//! included). It never fails: the base model is the last resort.
//!
//! Limits: the anti-rollback counter is as trustworthy as the storage holding the
//! records (someone who can erase both record areas resets it; a device that must
//! resist that keeps the counter in OTP or a hardware monotonic counter as well). An
//! install always writes the slot the newest record does not use, so while it runs the
//! fallback is the newest commit alone (the older one may be overwritten).
//!
//! No allocation, no panics: every storage access is bounds-checked by the storage.

#[cfg(feature = "std")]
pub mod sim;

use crate::Error;
use crate::format::{CRC32, read_u16, read_u32};
use crate::kernels::Kernels;
use crate::model::Model;
use crate::patch::modules::{MODULES_KIND, ModulePatch, ModulesModel, patch_kind_word};
use crate::patch::{PUBLIC_KEY_SIZE, Patch, PatchKind};

/// Size of one commit record copy in bytes.
pub const RECORD_SIZE: usize = 32;
/// Magic of a commit record.
pub const RECORD_MAGIC: [u8; 4] = *b"PRCR";
/// Bytes written per [`Storage::write`] call when a slot is written (one "write step").
pub const WRITE_CHUNK: usize = 256;
const RECORD_VERSION: u16 = 1;
const SLOT_BASE: u16 = 2;

/// A storage area: one of the two patch slots or one of the two commit-record copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Area {
    /// Patch slot A.
    SlotA = 0,
    /// Patch slot B.
    SlotB = 1,
    /// Commit record copy A.
    RecordA = 2,
    /// Commit record copy B.
    RecordB = 3,
}

/// A patch slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The storage area of this slot.
    pub const fn area(self) -> Area {
        match self {
            Slot::A => Area::SlotA,
            Slot::B => Area::SlotB,
        }
    }

    const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Persistent storage with two patch slots and two commit-record areas (e.g. flash
/// sectors). Erased bytes may read as anything (0xFF on NOR flash): records and
/// patches carry their own CRCs. Any method may fail (e.g. power loss); it returns
/// [`Error::StorageFailure`] then.
pub trait Storage {
    /// Bytes one patch slot can hold.
    fn slot_capacity(&self) -> usize;
    /// Read `buf.len()` bytes of `area` at `offset`.
    fn read(&mut self, area: Area, offset: usize, buf: &mut [u8]) -> Result<(), Error>;
    /// Erase the whole `area`.
    fn erase(&mut self, area: Area) -> Result<(), Error>;
    /// Write `data` to the erased `area` at `offset`.
    fn write(&mut self, area: Area, offset: usize, data: &[u8]) -> Result<(), Error>;
}

/// One decoded, CRC-checked commit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The committed slot, `None` for the base model.
    pub slot: Option<Slot>,
    /// Commit generation (the higher valid copy wins).
    pub generation: u32,
    /// Anti-rollback counter: the highest patch sequence committed so far.
    pub counter: u32,
    /// Length of the patch in the slot.
    pub patch_len: u32,
    /// CRC field of the patch in the slot.
    pub patch_crc: u32,
}

fn record_crc(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes.get(..RECORD_SIZE - 4).unwrap_or(&[]))
}

impl Record {
    /// Encode into the 32-byte on-storage form.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        let slot = match self.slot {
            Some(Slot::A) => 0u16,
            Some(Slot::B) => 1,
            None => SLOT_BASE,
        };
        let fields: [&[u8]; 7] = [
            &RECORD_MAGIC,
            &RECORD_VERSION.to_le_bytes(),
            &slot.to_le_bytes(),
            &self.generation.to_le_bytes(),
            &self.counter.to_le_bytes(),
            &self.patch_len.to_le_bytes(),
            &self.patch_crc.to_le_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = out.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        let crc = record_crc(&out);
        if let Some(dst) = out.get_mut(RECORD_SIZE - 4..) {
            dst.copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decode a record; `None` unless magic, version, slot, reserved word and CRC hold.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_SIZE
            || bytes.get(..4)? != RECORD_MAGIC
            || read_u16(bytes, 4)? != RECORD_VERSION
            || read_u32(bytes, 24)? != 0
            || read_u32(bytes, 28)? != record_crc(bytes)
        {
            return None;
        }
        let slot = match read_u16(bytes, 6)? {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            SLOT_BASE => None,
            _ => return None,
        };
        Some(Record {
            slot,
            generation: read_u32(bytes, 8)?,
            counter: read_u32(bytes, 12)?,
            patch_len: read_u32(bytes, 16)?,
            patch_crc: read_u32(bytes, 20)?,
        })
    }
}

/// The two record copies as read from storage (`None`: unreadable, erased or torn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records {
    /// Copy A.
    pub a: Option<Record>,
    /// Copy B.
    pub b: Option<Record>,
}

impl Records {
    /// Read both copies; a failed read counts as an invalid copy (boot: best effort).
    pub fn read<S: Storage + ?Sized>(storage: &mut S) -> Records {
        let mut read = |area| {
            let mut buf = [0u8; RECORD_SIZE];
            storage.read(area, 0, &mut buf).ok()?;
            Record::decode(&buf)
        };
        Records {
            a: read(Area::RecordA),
            b: read(Area::RecordB),
        }
    }

    /// Read both copies; a failed read is an error (install must not mistake an
    /// unreadable newest record for a missing one: it would overwrite it and let an
    /// older commit win).
    pub fn read_strict<S: Storage + ?Sized>(storage: &mut S) -> Result<Records, Error> {
        let mut read = |area| {
            let mut buf = [0u8; RECORD_SIZE];
            storage.read(area, 0, &mut buf)?;
            Ok(Record::decode(&buf))
        };
        Ok(Records {
            a: read(Area::RecordA)?,
            b: read(Area::RecordB)?,
        })
    }

    /// The valid copies, newest first, with the area each lives in.
    pub fn by_age(&self) -> [Option<(Area, Record)>; 2] {
        let a = self.a.map(|r| (Area::RecordA, r));
        let b = self.b.map(|r| (Area::RecordB, r));
        match (self.a, self.b) {
            (Some(x), Some(y)) if y.generation > x.generation => [b, a],
            (Some(_), _) => [a, b],
            _ => [b, None],
        }
    }

    /// The anti-rollback counter: the highest over the valid copies (0 if none).
    pub fn counter(&self) -> u32 {
        let c = |r: Option<Record>| r.map_or(0, |r| r.counter);
        c(self.a).max(c(self.b))
    }
}

/// A structurally valid patch of either kind, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub enum AnyPatch<'p> {
    /// Kind 1: new values for some layers' parameters.
    WeightDelta(Patch<'p>),
    /// Kind 2: indicators and patch modules added to the base model's outputs.
    Modules(ModulePatch<'p>),
}

impl<'p> AnyPatch<'p> {
    /// Validate `bytes` completely as the kind its header names. The kind word is only
    /// a dispatch hint here: each parser checks the CRC (which covers it) before it
    /// trusts it, and anything that is not kind 2 gets kind 1's errors.
    pub fn from_bytes(bytes: &'p [u8]) -> Result<Self, Error> {
        match patch_kind_word(bytes) {
            Some(MODULES_KIND) => ModulePatch::from_bytes(bytes).map(AnyPatch::Modules),
            _ => Patch::from_bytes(bytes).map(AnyPatch::WeightDelta),
        }
    }

    /// The patch kind.
    pub fn kind(&self) -> PatchKind {
        match self {
            AnyPatch::WeightDelta(_) => PatchKind::WeightDelta,
            AnyPatch::Modules(_) => PatchKind::Modules,
        }
    }

    /// The patch's bytes.
    pub fn as_bytes(&self) -> &'p [u8] {
        match self {
            AnyPatch::WeightDelta(p) => p.as_bytes(),
            AnyPatch::Modules(p) => p.as_bytes(),
        }
    }

    /// The monotonic sequence number.
    pub fn sequence(&self) -> u32 {
        match self {
            AnyPatch::WeightDelta(p) => p.sequence(),
            AnyPatch::Modules(p) => p.sequence(),
        }
    }

    /// The device's signature policy (the same check for both kinds).
    pub fn check_signature(&self, public_key: Option<&[u8; PUBLIC_KEY_SIZE]>) -> Result<(), Error> {
        match self {
            AnyPatch::WeightDelta(p) => p.check_signature(public_key),
            AnyPatch::Modules(p) => p.check_signature(public_key),
        }
    }

    /// The binding to `base`'s blob: SHA-256 and length, then layers and shapes (kind
    /// 1) or every module's widths and labels (kind 2), and the regions' dimension.
    pub fn check_binding(&self, base: &Model<'_>) -> Result<(), Error> {
        match self {
            AnyPatch::WeightDelta(p) => p.check_binding(base),
            AnyPatch::Modules(p) => p.check_binding(base),
        }
    }

    /// Caller RAM the patch needs to run, in f32 values: the patched layers' parameters
    /// (kind 1) or the indicator boxes and repacked module weights (kind 2).
    pub fn required_ram_len(&self) -> usize {
        match self {
            AnyPatch::WeightDelta(p) => p.required_ram_len(),
            AnyPatch::Modules(p) => p.required_ram_len(),
        }
    }

    /// [`AnyPatch::required_ram_len`] in bytes.
    pub fn required_ram_bytes(&self) -> usize {
        self.required_ram_len().saturating_mul(4)
    }

    /// True when the patch's proof covers `input`: inside a verified region (kind 1);
    /// inside a box indicator and a verified region (kind 2, see
    /// [`ModulePatch::covers`]).
    pub fn covers(&self, input: &[f32]) -> bool {
        match self {
            AnyPatch::WeightDelta(p) => p.covers(input),
            AnyPatch::Modules(p) => p.covers(input),
        }
    }
}

/// The model a device runs: the base (or a model whose patch is not known here), the
/// base with a weight-delta patch applied, or the base plus patch modules. Built only
/// from checked parts, so evaluation fails only on wrong argument lengths.
#[derive(Debug, Clone, Copy)]
pub enum Running<'a> {
    /// A model without a patch to account for (the base model, usually).
    Plain(Model<'a>),
    /// The base with a weight-delta patch applied, and that patch (its regions).
    WeightDelta(Model<'a>, Patch<'a>),
    /// The base plus patch modules (the patch is inside).
    Modules(ModulesModel<'a, 'a>),
}

impl<'a> Running<'a> {
    /// Apply a patch of either kind to `base` (its base blob is used): check the binding
    /// and copy the patched parameters or the module weights into `ram` (at least
    /// [`AnyPatch::required_ram_len`] values). On error nothing runs differently.
    pub fn apply(base: &Model<'a>, patch: AnyPatch<'a>, ram: &'a mut [f32]) -> Result<Self, Error> {
        let base = base.base();
        match patch {
            AnyPatch::WeightDelta(p) => Ok(Running::WeightDelta(base.with_patch(&p, ram)?, p)),
            AnyPatch::Modules(p) => Ok(Running::Modules(ModulesModel::new(&base, &p, ram)?)),
        }
    }

    /// The patch that runs, if any.
    pub fn patch(&self) -> Option<AnyPatch<'a>> {
        match self {
            Running::Plain(_) => None,
            Running::WeightDelta(_, p) => Some(AnyPatch::WeightDelta(*p)),
            Running::Modules(m) => Some(AnyPatch::Modules(m.patch())),
        }
    }

    /// Sequence number of the running patch (0: none; a plain model's own).
    pub fn patch_sequence(&self) -> u32 {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => m.patch_sequence(),
            Running::Modules(m) => m.patch().sequence(),
        }
    }

    /// The unpatched base model.
    pub fn base(&self) -> Model<'a> {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => m.base(),
            Running::Modules(m) => m.base(),
        }
    }

    /// The model evaluated when it is one [`Model`] (not for patch modules, which add
    /// their outputs to the base model's).
    pub fn as_model(&self) -> Option<&Model<'a>> {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => Some(m),
            Running::Modules(_) => None,
        }
    }

    /// The caller RAM the running patch reads (patched layers or module weights).
    pub fn patch_ram(&self) -> &'a [f32] {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => m.patch_ram(),
            Running::Modules(m) => m.ram(),
        }
    }

    /// Input length.
    pub fn input_len(&self) -> usize {
        self.base().input_len()
    }

    /// Output length.
    pub fn output_len(&self) -> usize {
        self.base().output_len()
    }

    /// Arena for [`Running::evaluate`], in f32 values.
    pub fn required_arena_len(&self) -> usize {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => m.required_arena_len(),
            Running::Modules(m) => m.required_arena_len(),
        }
    }

    /// True when the running patch's proof covers `input` (false without a patch).
    pub fn covers(&self, input: &[f32]) -> bool {
        self.patch().is_some_and(|p| p.covers(input))
    }

    crate::model::evaluate_entry_points!("Running");

    /// Evaluate with an explicit kernel set. Fails only on the argument lengths.
    pub fn evaluate_with(
        &self,
        kernels: &Kernels,
        input: &[f32],
        arena: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), Error> {
        match self {
            Running::Plain(m) | Running::WeightDelta(m, _) => {
                m.evaluate_with(kernels, input, arena, output)
            }
            Running::Modules(m) => m.evaluate_with(kernels, input, arena, output),
        }
    }
}

/// Every check a device makes before it accepts `bytes` as a patch for `base`: the
/// patch on its own (CRC, structure), the signature under `public_key` (if the device
/// has one), the binding to `base`'s blob (SHA-256; layers and shapes, or module widths
/// and labels; regions) and a sequence number above `counter`. Either patch kind.
pub fn verify_any<'p>(
    bytes: &'p [u8],
    base: &Model<'_>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    counter: u32,
) -> Result<AnyPatch<'p>, Error> {
    let patch = AnyPatch::from_bytes(bytes)?;
    patch.check_signature(public_key)?;
    patch.check_binding(&base.base())?;
    if patch.sequence() <= counter {
        return Err(Error::StalePatch);
    }
    Ok(patch)
}

/// [`verify_any`] for a weight-delta patch only (a patch-modules patch is refused with
/// [`Error::UnknownPatchKind`]); it carries no kind-2 code, for small firmware.
pub fn verify_patch<'p>(
    bytes: &'p [u8],
    base: &Model<'_>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    counter: u32,
) -> Result<Patch<'p>, Error> {
    let patch = Patch::from_bytes(bytes)?;
    patch.check_signature(public_key)?;
    patch.check_binding(&base.base())?;
    if patch.sequence() <= counter {
        return Err(Error::StalePatch);
    }
    Ok(patch)
}

/// Which patch kinds an [`install_as`] / [`boot_as`] accepts: [`AnyKind`] (what
/// [`install`] and [`boot`] use) or [`WeightDeltaOnly`] (a device that runs only
/// weight-delta patches; its code then carries nothing of kind 2, which keeps the OTA
/// path of a small firmware small).
pub trait Kinds {
    /// [`AnyPatch::from_bytes`] restricted to the accepted kinds.
    fn parse(bytes: &[u8]) -> Result<AnyPatch<'_>, Error>;
    /// [`verify_any`] restricted to the accepted kinds.
    fn verify<'p>(
        bytes: &'p [u8],
        base: &Model<'_>,
        public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
        counter: u32,
    ) -> Result<AnyPatch<'p>, Error>;
    /// [`Running::apply`] restricted to the accepted kinds.
    fn apply<'a>(
        base: &Model<'a>,
        patch: AnyPatch<'a>,
        ram: &'a mut [f32],
    ) -> Result<Running<'a>, Error>;
}

/// Both patch kinds.
#[derive(Debug, Clone, Copy)]
pub struct AnyKind;

impl Kinds for AnyKind {
    fn parse(bytes: &[u8]) -> Result<AnyPatch<'_>, Error> {
        AnyPatch::from_bytes(bytes)
    }

    fn verify<'p>(
        bytes: &'p [u8],
        base: &Model<'_>,
        public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
        counter: u32,
    ) -> Result<AnyPatch<'p>, Error> {
        verify_any(bytes, base, public_key, counter)
    }

    fn apply<'a>(
        base: &Model<'a>,
        patch: AnyPatch<'a>,
        ram: &'a mut [f32],
    ) -> Result<Running<'a>, Error> {
        Running::apply(base, patch, ram)
    }
}

/// Weight-delta patches only: a patch-modules patch is refused by install
/// ([`Error::UnknownPatchKind`]) and not booted (boot falls back as for any patch that
/// fails its checks).
#[derive(Debug, Clone, Copy)]
pub struct WeightDeltaOnly;

impl Kinds for WeightDeltaOnly {
    fn parse(bytes: &[u8]) -> Result<AnyPatch<'_>, Error> {
        Patch::from_bytes(bytes).map(AnyPatch::WeightDelta)
    }

    fn verify<'p>(
        bytes: &'p [u8],
        base: &Model<'_>,
        public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
        counter: u32,
    ) -> Result<AnyPatch<'p>, Error> {
        verify_patch(bytes, base, public_key, counter).map(AnyPatch::WeightDelta)
    }

    fn apply<'a>(
        base: &Model<'a>,
        patch: AnyPatch<'a>,
        ram: &'a mut [f32],
    ) -> Result<Running<'a>, Error> {
        match patch {
            AnyPatch::WeightDelta(p) => {
                Ok(Running::WeightDelta(base.base().with_patch(&p, ram)?, p))
            }
            AnyPatch::Modules(_) => Err(Error::UnknownPatchKind),
        }
    }
}

/// Write `data` to `area` in [`WRITE_CHUNK`] steps, then read it back and compare.
fn write_verified<S: Storage + ?Sized>(
    storage: &mut S,
    area: Area,
    data: &[u8],
) -> Result<(), Error> {
    storage.erase(area)?;
    for (k, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
        storage.write(area, k.saturating_mul(WRITE_CHUNK), chunk)?;
    }
    let mut buf = [0u8; 64];
    for (k, chunk) in data.chunks(buf.len()).enumerate() {
        let got = buf.get_mut(..chunk.len()).ok_or(Error::Overflow)?;
        storage.read(area, k.saturating_mul(64), got)?;
        if got != chunk {
            return Err(Error::WriteVerifyFailed);
        }
    }
    Ok(())
}

/// Install `patch` for the base model `base` (a patched model's base is used): verify
/// it completely ([`verify_any`] against the stored anti-rollback counter, and the
/// slot size), write it to the inactive slot, read it back, then commit it by writing
/// the older record copy. Returns the new commit record.
///
/// On any error the newest valid record is unchanged, so [`boot`] still picks the
/// model that ran before (an error from storage may leave the inactive slot or the
/// older record copy half written: both are checked before use).
pub fn install<S: Storage + ?Sized>(
    storage: &mut S,
    base: &Model<'_>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    patch: &[u8],
) -> Result<Record, Error> {
    install_as::<AnyKind, S>(storage, base, public_key, patch)
}

/// [`install`] accepting only the patch kinds `K` (e.g. [`WeightDeltaOnly`]).
pub fn install_as<K: Kinds, S: Storage + ?Sized>(
    storage: &mut S,
    base: &Model<'_>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    patch: &[u8],
) -> Result<Record, Error> {
    let records = Records::read_strict(storage)?;
    let parsed = K::verify(patch, base, public_key, records.counter())?;
    if patch.len() > storage.slot_capacity() {
        return Err(Error::SlotTooSmall);
    }
    let patch_len = u32::try_from(patch.len()).map_err(|_| Error::Overflow)?;
    let [newest, older] = records.by_age();
    // The slot the newest record does not use; without one, the one the older does not.
    let in_use = |r: Option<(Area, Record)>| r.and_then(|(_, r)| r.slot);
    let target = match (in_use(newest), in_use(older)) {
        (Some(s), _) | (None, Some(s)) => s.other(),
        (None, None) => Slot::A,
    };
    let (record_area, generation) = match newest {
        Some((Area::RecordA, r)) => (Area::RecordB, r.generation),
        Some((_, r)) => (Area::RecordA, r.generation),
        None => (Area::RecordA, 0),
    };
    let record = Record {
        slot: Some(target),
        generation: generation.checked_add(1).ok_or(Error::Overflow)?,
        counter: parsed.sequence(),
        patch_len,
        patch_crc: read_u32(patch, 12).ok_or(Error::Truncated)?,
    };
    write_verified(storage, target.area(), patch)?;
    write_verified(storage, record_area, &record.encode())?;
    Ok(record)
}

/// Where the booted model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootSource {
    /// The base model: no commit record, or one that says "no patch".
    Base,
    /// The patch in this slot, named by the newest valid commit record.
    Slot(Slot),
    /// The newest record's patch failed its checks; the older record's slot runs.
    FallbackSlot(Slot),
    /// No committed patch passed its checks; the base model runs.
    FallbackBase,
}

/// The result of [`boot`]: the model to run and the patch it runs (for the guard).
#[derive(Debug, Clone, Copy)]
pub struct Booted<'a> {
    /// The running model: the base, the base with a verified weight-delta patch
    /// applied, or the base plus verified patch modules.
    pub model: Running<'a>,
    /// The verified patch, read into the caller's buffer (`None` for the base model).
    pub patch: Option<AnyPatch<'a>>,
    /// Where the model came from.
    pub source: BootSource,
    /// The anti-rollback counter to enforce from now on.
    pub counter: u32,
}

/// Boot: pick the newest valid commit record whose slot holds a patch that passes
/// every check again (CRC, structure, signature under `public_key`, binding to
/// `base`, the record's length and CRC, the RAM size), else the older record's, else
/// the base model. `patch_buf` receives the patch (at least the patch's length; it is
/// borrowed by the result: the guard's regions, and the module records of kind 2) and
/// `ram` the patched layers or the module weights (at least
/// [`AnyPatch::required_ram_len`] values). Patches of both kinds boot.
pub fn boot<'a, S: Storage + ?Sized>(
    storage: &mut S,
    base: &Model<'a>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    patch_buf: &'a mut [u8],
    ram: &'a mut [f32],
) -> Booted<'a> {
    boot_as::<AnyKind, S>(storage, base, public_key, patch_buf, ram)
}

/// [`boot`] running only the patch kinds `K` (e.g. [`WeightDeltaOnly`]: a committed
/// patch of another kind fails its checks, and the boot falls back past it).
pub fn boot_as<'a, K: Kinds, S: Storage + ?Sized>(
    storage: &mut S,
    base: &Model<'a>,
    public_key: Option<&[u8; PUBLIC_KEY_SIZE]>,
    patch_buf: &'a mut [u8],
    ram: &'a mut [f32],
) -> Booted<'a> {
    let base = base.base();
    let records = Records::read(storage);
    let counter = records.counter();
    let [newest, older] = records.by_age();
    let fallback = Booted {
        model: Running::Plain(base),
        patch: None,
        source: BootSource::FallbackBase,
        counter,
    };
    let mut chosen = None;
    for (rank, candidate) in [newest, older].into_iter().enumerate() {
        let Some((_, record)) = candidate else {
            continue;
        };
        let Some(slot) = record.slot else {
            // Both a newest "no patch" record and no record at all boot the base.
            if rank == 0 {
                return Booted {
                    source: BootSource::Base,
                    ..fallback
                };
            }
            break;
        };
        let len = record.patch_len as usize;
        let Some(buf) = patch_buf.get_mut(..len) else {
            continue;
        };
        if storage.read(slot.area(), 0, buf).is_err() {
            continue;
        }
        // Sequence 0 is below every real patch: the counter is enforced by `install`;
        // here the record's own CRC binding says the slot is what was committed.
        let ok = K::verify(buf, &base, public_key, 0).is_ok_and(|p| {
            read_u32(buf, 12) == Some(record.patch_crc) && p.required_ram_len() <= ram.len()
        });
        if ok {
            chosen = Some((rank, slot, len));
            break;
        }
    }
    let Some((rank, slot, len)) = chosen else {
        return if newest.is_none() && older.is_none() {
            Booted {
                source: BootSource::Base,
                ..fallback
            }
        } else {
            fallback
        };
    };
    // The buffer still holds the verified bytes; parse them again with the full
    // lifetime (the signature was checked above and the bytes have not changed).
    let patch_buf: &'a [u8] = patch_buf;
    let applied = patch_buf
        .get(..len)
        .ok_or(Error::Truncated)
        .and_then(K::parse)
        .and_then(|p| Ok((p, K::apply(&base, p, ram)?)));
    match applied {
        Ok((patch, model)) => Booted {
            model,
            patch: Some(patch),
            source: if rank == 0 {
                BootSource::Slot(slot)
            } else {
                BootSource::FallbackSlot(slot)
            },
            counter,
        },
        Err(_) => fallback,
    }
}
