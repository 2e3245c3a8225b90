//! Configuration: one typed [`Settings`], its layering and its validation.
//!
//! Layers, later wins: the defaults compiled in from `config/default.toml` ← `config/default.toml`
//! in the working directory (when present) ← `--config FILE` ← `TICKWIRE__SECTION__KEY` env vars.
//! Unknown keys and invalid values are rejected here, before any port is bound, with a message
//! naming the key.
//!
//! Plain data: this module parses and checks values and builds nothing (`prepare` does), so it
//! depends only on `topic`. `sections`: the typed sections, their limits and defaults; `load`:
//! the layering; `validate`: the checks, one function per section; `rules`: the parsed forms of
//! the pattern lists and of `server.trusted_proxies` (`cidr`); `origin`: the origins of
//! `server.allowed_origins`; `pem`: reading the certificates a setting names; `error`:
//! [`SettingsError`]. This file only re-exports: the modules below import each other, never it.

mod cidr;
mod error;
mod load;
mod origin;
mod pem;
mod rules;
mod sections;
mod validate;

pub use cidr::Cidr;
pub use error::SettingsError;
pub use origin::{normalize_origin, valid_origin};
pub(crate) use pem::pem_certificates;
pub(crate) use rules::patterns;
pub use rules::TopicRules;
pub use sections::*;
