//! Configuration: one typed [`Settings`], its layering and its validation.
//!
//! Layers, later wins: the defaults compiled in from `config/default.toml` ← `config/default.toml`
//! in the working directory (when present) ← `--config FILE` ← `TICKWIRE__SECTION__KEY` env vars
//! (and `RUST_LOG` for `log.level`). Unknown keys and invalid values are rejected here, before
//! any port is bound, all at once, each message naming the key, the value, where it was set and
//! what is allowed.
//!
//! Plain data: this module parses and checks values and builds nothing (`prepare` does), so it
//! depends only on `topic`. `sections`: the typed sections, their limits and defaults; `values`:
//! how single values (durations, addresses, enums) read and print; `tree`: the untyped TOML tree
//! of the layers, with the defaults' tree as the schema; `env`: the environment layer, typed by
//! that schema; `load`: the layering; `validate`: the checks, one function per section, and the
//! warnings; `report`: the messages' values and sources, and the configuration printed as TOML;
//! `rules`: the parsed forms of the pattern lists and of `server.trusted_proxies` (`cidr`);
//! `origin`: the origins of `server.allowed_origins`; `pem`: reading the certificates a setting
//! names; `error`: [`SettingsError`], [`Problem`] and [`Source`]. This file only re-exports: the
//! modules below import each other, never it.

mod cidr;
mod env;
mod error;
mod load;
mod origin;
mod pem;
mod report;
mod rules;
mod sections;
#[cfg(test)]
mod tests;
mod tree;
mod validate;
mod values;

pub use cidr::Cidr;
pub use error::{Problem, SettingsError, Source};
pub use origin::{normalize_origin, valid_origin};
pub(crate) use pem::pem_certificates;
pub(crate) use rules::patterns;
pub use rules::TopicRules;
pub use sections::*;
pub use validate::WEBHOOK_EVENTS;
