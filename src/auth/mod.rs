//! Authentication: who is on the other end of a WebSocket upgrade or an HTTP request, and the
//! ACL that follows from it.
//!
//! WebSocket clients are anonymous (`auth.mode = "none"`, one shared ACL) or present a JWT
//! (`"jwt"`, the ACL is in its claims). HTTP publishers present an API key once any is
//! configured. Built at start-up from the settings; reading a request's credentials happens
//! here so that `transport::http` only maps the outcome to a status.
//!
//! The API keys and the JWT verifier are swapped whole by a reload (`reload.rs`); a check reads
//! one snapshot of each, so it never sees half of an old set and half of a new one.

pub mod acl;
pub mod apikey;
pub mod jwks;
pub mod jwt;
pub mod keyset;

use std::sync::Arc;

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;

use crate::auth::acl::{Acl, Identity};
use crate::auth::apikey::{ApiKey, ApiKeys};
use crate::auth::jwks::Remote;
use crate::auth::jwt::Verifier;
use crate::protocol::error::AuthError;
use crate::settings::{patterns, AuthMode, AuthSettings, JwtSettings, SettingsError};
use crate::swap::Swap;

enum Subscribers {
    Anonymous(Acl),
    Jwt(Swap<Verifier>),
}

pub struct Auth {
    subscribers: Subscribers,
    api_keys: Swap<ApiKeys>,
}

impl Auth {
    /// Parses the ACLs and loads the key files; every failure names its key.
    pub fn from_settings(s: &AuthSettings) -> Result<Auth, SettingsError> {
        let patterns = |key, list: &[String]| patterns(key, list.iter().map(String::as_str));
        // Parsed in both modes so that a typo is caught before someone switches modes.
        let anonymous = Acl::new(
            patterns("auth.anonymous.subscribe", &s.anonymous.subscribe)?,
            patterns("auth.anonymous.publish", &s.anonymous.publish)?,
        );
        let subscribers = match s.mode {
            AuthMode::None => Subscribers::Anonymous(anonymous),
            AuthMode::Jwt => Subscribers::Jwt(Swap::new(Verifier::from_settings(&s.jwt)?)),
        };
        Ok(Auth {
            subscribers,
            api_keys: Swap::new(ApiKeys::from_settings(&s.api_keys)?),
        })
    }

    /// The JWKS fetched from `auth.jwt.jwks_url`, when that is the key source.
    pub fn jwks(&self) -> Option<Arc<Remote>> {
        match &self.subscribers {
            Subscribers::Jwt(verifier) => verifier.load().remote().cloned(),
            Subscribers::Anonymous(_) => None,
        }
    }

    /// Replaces the API keys; requests under way keep the key they found.
    pub fn set_api_keys(&self, keys: ApiKeys) {
        self.api_keys.store(keys);
    }

    /// Reads `public_key_file` or `jwks_file` again. `Ok(false)` when the key source is not a
    /// file (nothing to reload); on error the current keys stay.
    pub fn reload_key_file(&self, s: &JwtSettings) -> Result<bool, SettingsError> {
        let Subscribers::Jwt(verifier) = &self.subscribers else {
            return Ok(false);
        };
        if s.public_key_file.is_none() && s.jwks_file.is_none() {
            return Ok(false);
        }
        verifier.store(Verifier::from_settings(s)?);
        Ok(true)
    }

    pub fn mode(&self) -> AuthMode {
        match self.subscribers {
            Subscribers::Anonymous(_) => AuthMode::None,
            Subscribers::Jwt(_) => AuthMode::Jwt,
        }
    }

    /// Whether HTTP publishing and the topic API need a key.
    pub fn http_is_open(&self) -> bool {
        self.api_keys.load().is_empty()
    }

    /// The identity of a WebSocket upgrade request: its token from the `Authorization` header
    /// or, for browsers (which cannot set headers on a WebSocket), the `token` query parameter.
    ///
    /// A token whose `kid` the fetched JWKS lacks waits for a fetch (rate-limited, bounded by
    /// `jwks::FETCH_TIMEOUT`) and is checked once more: the IdP may have just rotated its keys.
    pub async fn subscriber(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Identity, AuthError> {
        match &self.subscribers {
            Subscribers::Anonymous(acl) => Ok(Identity {
                subject: None,
                acl: acl.clone(),
                expires: None,
            }),
            Subscribers::Jwt(verifier) => {
                let token = bearer(headers)
                    .or_else(|| query.and_then(query_token))
                    .ok_or(AuthError::MissingToken)?;
                let verifier = verifier.load();
                match (verifier.verify(token), verifier.remote()) {
                    (Err(AuthError::UnknownKeyId), Some(remote))
                        if remote.refresh_for_unknown_kid().await =>
                    {
                        verifier.verify(token)
                    }
                    (result, _) => result,
                }
            }
        }
    }

    /// The identity a `{"op":"auth"}` token gives a connection that is `current`. `None` when
    /// tokens are not in use (`auth.mode = "none"`).
    pub fn refresh(&self, current: &Identity, token: &str) -> Option<Result<Identity, AuthError>> {
        let Subscribers::Jwt(verifier) = &self.subscribers else {
            return None;
        };
        let verifier = verifier.load();
        let verified = verifier.verify(token);
        if let (Err(AuthError::UnknownKeyId), Some(remote)) = (&verified, verifier.remote()) {
            // The session does not wait on the network: the fetch serves the client's retry.
            remote.request_refresh();
        }
        Some(verified.and_then(|id| {
            // A connection is one user's: a token for someone else is not a refresh.
            if id.subject == current.subject {
                Ok(id)
            } else {
                Err(AuthError::SubjectChanged)
            }
        }))
    }

    /// The API key of an HTTP request: `Ok(None)` when no key is configured (open publishing).
    pub fn publisher(&self, headers: &HeaderMap) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let keys = self.api_keys.load();
        if keys.is_empty() {
            return Ok(None);
        }
        let key = bearer(headers).ok_or(AuthError::MissingKey)?;
        keys.find(key).map(Some).ok_or(AuthError::UnknownKey)
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The `token` parameter of a query string. Taken as is: JWTs use only URL-safe characters.
fn query_token(query: &str) -> Option<&str> {
    (query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "token")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn credentials_are_found() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), expected, "{value:?}");
        }
        assert_eq!(query_token("a=1&token=x.y.z&b"), Some("x.y.z"));
        assert_eq!(query_token("token="), None);
        assert_eq!(query_token("tokens=1"), None);
    }
}
