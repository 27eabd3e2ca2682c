//! prorepair-core: the device side of prorepair. `no_std`, no heap, no panics.
//!
//! - [`format`]: the model blob (header, layer table, 16-byte aligned f32 blocks),
//!   defined once here; the encoder ([`format::encode`], feature `encode`) is what the
//!   host writes blobs with.
//! - [`Model`]: a blob validated once ([`Model::from_bytes`]), read in place (e.g. from
//!   flash), evaluated into caller memory ([`Model::evaluate`]) with an arena of exactly
//!   [`Model::required_arena_bytes`].
//! - [`patch`]: the weight-delta patch (format v1), validated by [`Patch::from_bytes`],
//!   bound to its base blob by SHA-256 and applied by [`Model::with_patch`] with the
//!   patched layers' parameters in caller RAM ([`Patch::required_ram_bytes`]); the
//!   encoder is [`patch::encode`] (feature `encode`).
//! - [`ota`]: power-fail-safe A/B installation of (Ed25519-signed) patches with an
//!   anti-rollback counter, and verified boot; [`guard`]: the runtime guard (verified
//!   regions, output monitor, fallback advisory, counters).
//! - [`kernels`]: scalar reference kernels and SIMD ones (AVX2+FMA, NEON), picked by
//!   CPU features.
//!
//! ```
//! # fn demo(blob: &[u8]) -> Result<(), prorepair_core::Error> {
//! let model = prorepair_core::Model::from_bytes(blob)?;
//! let mut arena = [0.0f32; 256];
//! let mut out = [0.0f32; 5];
//! model.evaluate(&[0.0; 5], &mut arena, &mut out)?;
//! # Ok(()) }
//! ```
//!
//! Features: `std` (runtime CPU-feature detection, `std::error::Error`), `encode` (the
//! blob and patch encoders).
#![no_std]
// Lints for the whole crate, in one place: no unsafe outside `kernels` (which opts in
// module by module, each block with a SAFETY comment), and no panicking constructs.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

// The blob stores little-endian f32 that are read in place.
#[cfg(target_endian = "big")]
compile_error!(
    "prorepair-core reads little-endian model blobs in place: big-endian targets are not supported"
);

pub mod error;
pub mod format;
pub mod guard;
pub mod kernels;
mod layers;
pub mod model;
pub mod ota;
pub mod patch;

pub use error::Error;
pub use format::{ConvGeometry, LayerKind, PoolGeometry, Shape};
pub use model::{Conv2d, Dense, Layer, LayerInfo, Model};
pub use patch::Patch;
