//! auth-svc's integration tests (one test binary): the real PostgreSQL, the handlers, and the
//! real binary driven with grpcurl.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod accounts;
mod common;
mod keys;
mod security;
