//! Shared harness for the black-box integration tests.
//!
//! Every test starts its own in-process server on 127.0.0.1:0 and talks to it only through its
//! public surface: WebSocket (`GET /ws`) and the HTTP API. One module per concern; everything is
//! re-exported here so that a test file's `use common::*;` sees the whole harness.
//!
//! Each `tests/*.rs` file is its own crate that compiles this module and uses only part of it,
//! so `dead_code` is allowed per module below: an unused helper in one binary is used by another.
//! `client` (the Rust client's events) is not glob re-exported: its `options`, `next` and
//! `until` are names a test file may want for itself.

#[allow(dead_code)]
pub mod client;
#[allow(dead_code)]
pub mod documents;
#[allow(dead_code)]
pub mod http;
#[allow(dead_code)]
pub mod jwt;
#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod process;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod redis;
#[allow(dead_code)]
pub mod server;
#[allow(dead_code)]
pub mod time;
#[allow(dead_code)]
pub mod tls;
#[allow(dead_code)]
pub mod webhook;
#[allow(dead_code)]
pub mod ws;

#[allow(unused_imports)]
pub use self::{http::*, jwt::*, metrics::*, process::*, server::*, time::*, tls::*, ws::*};
