//! API keys of HTTP publishers.
//!
//! The configuration holds only each key's SHA-256 digest, so a leaked config file or
//! `check-config` output gives no key away. A presented key is hashed and compared against
//! every configured digest in constant time: how long the check takes says nothing about which
//! key, if any, came close.

use std::collections::HashSet;
use std::sync::Arc;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::auth::acl::Acl;
use crate::settings::{patterns, ApiKeySettings, SettingsError};

/// Random bytes in a key made by `tickwire hash-key`.
const KEY_BYTES: usize = 32;

/// One configured publisher.
#[derive(Debug)]
pub struct ApiKey {
    /// For logs: which publisher did what.
    pub name: String,
    digest: [u8; 32],
    /// Only `publish` is used: API keys cannot subscribe.
    pub acl: Acl,
}

/// Every configured key. Empty means HTTP publishing is open.
#[derive(Debug, Default)]
pub struct ApiKeys {
    /// Shared, so that a request keeps its key while a reload replaces the set.
    keys: Vec<Arc<ApiKey>>,
}

/// The setting every error here names.
const KEY: &str = "auth.api_keys";

fn invalid(message: String) -> SettingsError {
    SettingsError::invalid(KEY, message)
}

impl ApiKeys {
    pub fn from_settings(list: &[ApiKeySettings]) -> Result<ApiKeys, SettingsError> {
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut keys = Vec::with_capacity(list.len());
        for k in list {
            let name = k.name.trim();
            if name.is_empty() || !names.insert(name.to_string()) {
                return Err(invalid(format!(
                    "every key needs a unique, non-empty name (got {name:?})"
                )));
            }
            let digest = parse_hex(&k.sha256).ok_or_else(|| {
                invalid(format!(
                    "{name}: sha256 must be 64 hex digits (the digest from `tickwire hash-key`, not the key)"
                ))
            })?;
            if !digests.insert(digest) {
                return Err(invalid(format!("{name}: the same key is configured twice")));
            }
            let publish = patterns(KEY, k.publish.iter().map(String::as_str))
                .map_err(|e| e.prefixed(&format!("{name}: publish ")))?;
            keys.push(Arc::new(ApiKey {
                name: name.to_string(),
                digest,
                acl: Acl::new(Vec::new(), publish),
            }));
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The configured key `presented` is, if any.
    pub fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let presented = sha256(presented);
        // Every digest is compared, and the match is selected without a branch.
        let mut hit = u64::MAX;
        for (i, key) in self.keys.iter().enumerate() {
            hit.conditional_assign(&(i as u64), key.digest.ct_eq(&presented));
        }
        self.keys.get(usize::try_from(hit).ok()?).cloned()
    }
}

fn sha256(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// A fresh key and the digest to configure for it.
pub struct NewKey {
    /// 32 random bytes as hex: what the publisher sends as `Authorization: Bearer <key>`.
    pub key: String,
    /// Hex SHA-256 of the key text: what goes into `auth.api_keys`.
    pub sha256: String,
}

/// Makes a key from the operating system's secure random source.
pub fn generate() -> Result<NewKey, ring::error::Unspecified> {
    let mut bytes = [0u8; KEY_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    let key = hex(&bytes);
    let sha256 = hex(&self::sha256(&key));
    Ok(NewKey { key, sha256 })
}

/// The digest to configure for an existing key.
pub fn digest_of(key: &str) -> String {
    hex(&sha256(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn keys(toml: &str) -> Result<ApiKeys, SettingsError> {
        let s = Settings::from_toml(toml)?;
        ApiKeys::from_settings(&s.auth.api_keys)
    }

    #[test]
    fn generated_keys_are_found_by_their_digest() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.key.len(), 64);
        assert_ne!(a.key, b.key);
        assert_eq!(digest_of(&a.key), a.sha256);
        let toml = format!(
            "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{}\"\npublish = [\"prices.>\"]\n\
             [[auth.api_keys]]\nname = \"b\"\nsha256 = \"{}\"\npublish = []\n",
            a.sha256,
            b.sha256.to_uppercase()
        );
        let k = keys(&toml).unwrap();
        assert_eq!(k.find(&a.key).unwrap().name, "a");
        assert_eq!(k.find(&b.key).unwrap().name, "b");
        assert!(k.find(&a.sha256).is_none(), "the digest is not the key");
        assert!(k.find("").is_none());
        assert!(ApiKeys::default().find(&a.key).is_none());
    }

    #[test]
    fn bad_entries_name_the_key() {
        let d = "a".repeat(64);
        for toml in [
            format!("[[auth.api_keys]]\nname = \"\"\nsha256 = \"{d}\"\npublish = []"),
            format!(
                "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{}\"\npublish = []",
                "g".repeat(64)
            ),
            format!("[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{d}\"\npublish = [\"a..b\"]"),
            format!(
                "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{d}\"\npublish = []\n\
                 [[auth.api_keys]]\nname = \"b\"\nsha256 = \"{d}\"\npublish = []"
            ),
        ] {
            let e = keys(&toml).unwrap_err().to_string();
            assert!(e.contains("auth.api_keys"), "{toml}: {e}");
        }
    }
}
