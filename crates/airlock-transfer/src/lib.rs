//! Moving airlock bundles across an air gap through a one-way UDP link (a data diode).
//!
//! The sender cuts the bundle into blocks, codes each with RaptorQ (RFC 6330) and sends
//! source and repair symbols, interleaved across a group of blocks so a burst of loss costs
//! each block only a few symbols, paced to a set rate and repeated in carousel passes. There
//! is no back channel: loss is repaired by the extra symbols and the next pass. The receiver
//! checks every datagram, writes each block as soon as it decodes and its hash matches, keeps
//! decoded blocks across restarts, and publishes the bundle under its final name only after a
//! full verification. See `docs/transfer-protocol.md`.
//!
//! [`relay`] is a lossy loopback link for tests and drills.

pub mod announce;
mod error;
pub mod fec;
pub mod layout;
pub mod net;
pub mod packet;
pub mod receiver;
pub mod relay;
pub mod sender;
#[cfg(test)]
mod test_support;

pub use error::{Error, Result};
