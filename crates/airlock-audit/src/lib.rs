//! airlock's audit log: append-only, tamper-evident, and provable to an outside auditor.
//!
//! Every entry is one line of canonical JSON (RFC 8785). Entries are the leaves of an
//! RFC 6962 Merkle tree; after each commit the log appends a checkpoint in the C2SP
//! `tlog-checkpoint` format, signed with Ed25519 as a C2SP `signed-note`. Anyone holding the
//! verifier key can check the whole log ([`LogView::load`]), that one entry is in it
//! (inclusion proof) and that a later log extends an earlier one (consistency proof).
//!
//! Appends are durable when they return: concurrent appends share one `fdatasync`
//! (group commit), and processes take turns through an exclusive lock on the file. After a
//! crash a torn or unsealed end is reported, never silently rewritten; an operator sets it
//! aside with [`AuditLog::repair`], which is itself an audit entry.
//!
//! This crate does no networking and knows nothing of models or registries. See
//! `docs/audit-log.md` for the format and the threat model.
//!
//! ```no_run
//! use airlock_audit::{AuditLog, Entry, LogView, NoteSigner, Outcome};
//! # fn main() -> airlock_audit::Result<()> {
//! let signer = NoteSigner::generate("airlock-audit")?;
//! let verifier = signer.verifier();
//! let log = AuditLog::create("audit".as_ref(), "airlock.local/audit", signer)?;
//! let index = log.append(Entry::new("user:alice", "import", Outcome::Ok).subject("sha256:ab12"))?;
//! let view = LogView::load("audit".as_ref(), &verifier)?;
//! let proof = view.inclusion_proof(index, view.size())?;
//! # let _ = proof; Ok(()) }
//! ```

#![deny(missing_docs)]

mod entry;
mod error;
mod follow;
mod log;
pub mod merkle;
pub mod note;

pub use entry::{Entry, MAX_ENTRY_BYTES, Outcome, Record};
pub use error::{Error, Result};
pub use follow::{Advance, Follower, Verified, verify_and_replay};
pub use log::{AuditLog, LogView, RepairReport, for_each_record, tail};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
