//! End-to-end tests of the `airlock` binary. Each module reads as a specification.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod support;

mod answers;
mod audit;
mod contained;
mod crash;
mod diode;
mod egress;
mod engine;
mod evals;
mod hostile;
mod interop;
mod pack_verify;
mod processes;
mod rag;
mod real_models;
mod registry;
mod sealed;
mod serve;
mod volumes;
