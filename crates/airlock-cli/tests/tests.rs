//! End-to-end tests of the `airlock` binary. Each module reads as a specification.

mod support;

mod hostile;
mod interop;
mod pack_verify;
mod real_models;
