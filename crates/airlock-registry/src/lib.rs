//! airlock's registry on the isolated side: what may run, and proof of how it got there.
//!
//! A data directory holds read-only blobs named by their SHA-256, a SQLite database (WAL)
//! of versions, files, tags, approvals and downgrade exceptions, the trust policy
//! (`policy.toml`) and the audit log. [`Registry::import`] verifies a bundle against the
//! policy before it reads any payload, copies each file once while checking its signed
//! hashes, and makes the version visible as `quarantined` in one transaction; a crash at
//! any point leaves the old state or the new. A second person [approves](Registry::approve)
//! with a key that did not sign the bundle; only approved versions can be
//! [tagged](Registry::tag) or [exported](Registry::export). Every action and every refusal
//! is an entry in the audit log, and every row that decides what may run or who may read is
//! checked against the log before it is acted on ([`replay`]).
//!
//! It opens no network connection and runs no model. See `docs/registry.md`.
//!
//! ```no_run
//! use airlock_registry::Registry;
//! # fn main() -> airlock_registry::Result<()> {
//! let data = std::path::Path::new("/var/lib/airlock");
//! Registry::init(data, "user:alice")?;
//! let mut registry = Registry::open(data, "user:alice")?;
//! let report = registry.import("smollm2_1.0.0.airlock".as_ref(), &airlock_bundle::NoProgress)?;
//! println!("{}:{} is {}", report.name, report.version, report.state);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod copy;
mod db;
mod error;
pub mod keys;
pub mod policy;
pub mod records;
pub mod reference;
mod registry;
pub mod replay;
pub mod store;

pub use db::keep_temporary_files_in as keep_sqlite_temporary_files_in;
pub use error::{Error, Result};
pub use keys::{KeyInfo, KeyRejection, KeyRole, KeyStore, NewKey};
pub use policy::{Policy, Role};
pub use reference::{Reference, Selector};
pub use registry::{
    ApprovalInfo, ApprovedModel, FileInfo, FsckReport, GcReport, ImportReport, InitReport,
    Registry, TrustInfo, VersionDetail, VersionSummary,
};
pub use replay::{Binding, Discrepancy, LogState};
pub use store::{FAULT_KILL_AT_ENV, FAULT_TRACE_ENV, Layout, default_data_dir};
