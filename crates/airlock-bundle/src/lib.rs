//! The airlock bundle format: pack a model into a signed, reproducible bundle and verify it.
//!
//! A bundle is an uncompressed POSIX tar (or the same tree as a directory) whose `model.sig`
//! is an OpenSSF Model Signing v1.0 signature: a Sigstore bundle holding a DSSE envelope over
//! an in-toto Statement that lists every other file with its SHA-256. airlock's extension of
//! the predicate adds identity, model facts and per-chunk hashes, so verification can hash
//! one file on every core. See `docs/bundle-format.md`.
//!
//! This crate works on files and bytes only: no network, no async, no registry. It does not
//! decide policy beyond "these keys, this threshold"; trust policy lives in the registry.
//!
//! ```no_run
//! use airlock_bundle::{Bundle, Limits, NoProgress, PublicKey, TrustPolicy};
//! # fn main() -> airlock_bundle::Result<()> {
//! let limits = Limits::default();
//! let trust = TrustPolicy::new([PublicKey::read("publisher.pub".as_ref())?], 1)?;
//! let verified = Bundle::open("smollm2_1.0.0.airlock".as_ref(), &limits)?.verify(&trust, &limits, &NoProgress)?;
//! println!("{} verified, digest sha256:{}", verified.files, verified.manifest.digest);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod cosign;
pub mod digest;
pub mod durable;
mod error;
pub mod inspect;
pub mod keys;
mod limits;
pub mod manifest;
pub mod pack;
pub mod path;
pub mod sbom;
pub mod signature;
pub mod tar;
mod time;
mod verify;
pub mod volume;

pub use cosign::cosign;
pub use digest::Sha256Digest;
pub use error::{Error, Result};
pub use keys::{KeyId, PrivateKey, PublicKey};
pub use limits::Limits;
pub use manifest::Manifest;
pub use pack::{PackOptions, PackReport, pack};
pub use signature::TrustPolicy;
pub use verify::{Bundle, Layout, Source, Verified};

/// Receives progress of long operations (hashing, writing, verifying).
///
/// The library reports bytes; the CLI draws bars. `advance` is called from several threads.
pub trait Progress: Sync {
    /// A phase starts with `total` bytes to process.
    fn begin(&self, phase: &str, total: u64);
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64);
    /// The phase ended.
    fn end(&self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}
