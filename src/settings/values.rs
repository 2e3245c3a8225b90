//! How single values read and print: durations, addresses, optional paths and enums (any
//! case), each refusing a bad value with the form it wants, and each printing back in the form
//! it reads, so that `check-config`'s output is configuration again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// What an address must look like; host names are not resolved (a name can resolve to several
/// addresses, or to another one tomorrow, and the listener binds exactly one).
pub(crate) const ADDR_FORM: &str =
    "must be IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\" (\"[::1]:8080\" for IPv6); \
     host names such as localhost are not resolved";

fn parse_addr<E: serde::de::Error>(s: &str) -> Result<SocketAddr, E> {
    s.trim().parse().map_err(|_| E::custom(ADDR_FORM))
}

/// `server.listen`.
pub(crate) mod addr {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse_addr(&String::deserialize(d)?)
    }

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }
}

/// An address or `""` (not set): TOML has no null, and env vars cannot unset a key.
pub(crate) mod optional_addr {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        parse_addr::<D::Error>(&s)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{ADDR_FORM}; or \"\" for none")))
    }

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }
}

/// A file path or `""` (not set).
pub(crate) mod optional_path {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
    }

    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(path) => s.collect_str(&path.display()),
            None => s.serialize_str(""),
        }
    }
}

/// Durations as humantime strings ("500ms", "25s", "1m 30s").
pub(crate) mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|_| {
            D::Error::custom(
                "must be a duration: a number and a unit, e.g. \"500ms\", \"25s\", \"2m\", \"1h\", \"1m 30s\"",
            )
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// "must be one of "a", "b"": the message of every enum key.
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("must be one of {} (any case)", quoted.join(", "))
}

/// Serde for a settings enum: reads its lowercase name in any case (`JWT` is `jwt`, as env
/// names are case-insensitive), prints it lowercase, and refuses anything else with the list.
macro_rules! settings_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(<D::Error as serde::de::Error>::custom(
                        $crate::settings::values::one_of(&[$($name),+]),
                    )),
                }
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }
    };
}
pub(crate) use settings_enum;
