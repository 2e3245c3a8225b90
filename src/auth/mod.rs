//! Authentication: who is on the other end of a WebSocket upgrade or an HTTP request, and the
//! ACL that follows from it.
//!
//! WebSocket and SSE clients are anonymous (`auth.mode = "none"`, one shared ACL) or present a
//! JWT (`"jwt"`, the ACL is in its claims). HTTP publishers present an API key once any is
//! configured, or (mode `"jwt"`) a client's JWT, so that a client that cannot send on its stream
//! (SSE) publishes with the token it subscribed with. Built at start-up from the settings;
//! reading a request's credentials happens here so that `transport::http` only maps the outcome
//! to a status.
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
use crate::topic::Topic;

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
                info: None,
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

    /// The API key of a topic API request: `Ok(None)` when no key is configured (open reading).
    pub fn reader(&self, headers: &HeaderMap) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let keys = self.api_keys.load();
        if keys.is_empty() {
            return Ok(None);
        }
        let key = bearer(headers).ok_or(AuthError::MissingKey)?;
        keys.find(key).map(Some).ok_or(AuthError::UnknownKey)
    }

    /// Who sends an HTTP publish. The bearer credentials are an API key when one configured key
    /// matches them; otherwise, with `auth.mode = "jwt"`, a JWT-shaped credential is verified as
    /// a client's token (its `publish` claim is the ACL). Without credentials, publishing is open
    /// while no API key is configured, whatever the mode. The whole matrix is in
    /// docs/protocol.md §10.1.
    ///
    /// While publishing is open, credentials that are neither a key nor a token are ignored (as
    /// before tokens were accepted here), but a token is always checked: one that was sent to
    /// narrow what its holder may do must not be waved through when it is invalid.
    pub async fn publisher(&self, headers: &HeaderMap) -> Result<Publisher, AuthError> {
        let keys = self.api_keys.load();
        let Some(credentials) = bearer(headers) else {
            return match keys.is_empty() {
                true => Ok(Publisher::Open),
                false => Err(AuthError::MissingKey),
            };
        };
        if !keys.is_empty() {
            if let Some(key) = keys.find(credentials) {
                return Ok(Publisher::Key(key));
            }
        }
        match &self.subscribers {
            Subscribers::Jwt(verifier) if looks_like_jwt(credentials) => {
                let verifier = verifier.load();
                let verified = match (verifier.verify(credentials), verifier.remote()) {
                    (Err(AuthError::UnknownKeyId), Some(remote))
                        if remote.refresh_for_unknown_kid().await =>
                    {
                        verifier.verify(credentials)
                    }
                    (result, _) => result,
                };
                verified.map(Publisher::Token)
            }
            _ if keys.is_empty() => Ok(Publisher::Open),
            _ => Err(AuthError::UnknownKey),
        }
    }
}

/// The sender of an HTTP publish, as [`Auth::publisher`] found it.
pub enum Publisher {
    /// No API key is configured and no credentials were sent (or ones that are not a token):
    /// any topic.
    Open,
    /// A configured API key: its `publish` patterns.
    Key(Arc<ApiKey>),
    /// A client's JWT (`auth.mode = "jwt"`): its `publish` claim.
    Token(Identity),
}

impl Publisher {
    pub fn may_publish(&self, topic: &Topic) -> bool {
        match self {
            Publisher::Open => true,
            Publisher::Key(key) => key.acl.may_publish(topic),
            Publisher::Token(identity) => identity.acl.may_publish(topic),
        }
    }

    /// The namespace of this publisher's `Idempotency-Key`s: two publishers that pick the same
    /// key never collide. An API key's scope is its name (as before tokens were accepted, so a
    /// ledger survives the upgrade); a token's is its subject behind a NUL, which no key name
    /// holds in practice.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Publisher::Open => String::new(),
            Publisher::Key(key) => key.name.clone(),
            Publisher::Token(identity) => format!("\0jwt:{}", identity.subject.as_deref().unwrap_or("")),
        }
    }

    /// For the logs: the key's name or the token's subject.
    pub fn name(&self) -> &str {
        match self {
            Publisher::Open => "anyone",
            Publisher::Key(key) => &key.name,
            Publisher::Token(identity) => identity.subject.as_deref().unwrap_or("(token without sub)"),
        }
    }
}

/// Three dot-separated parts: a JWS in compact form. Only this decides whether a credential that
/// is no API key is checked as a token; API keys from `tickwire hash-key` are hex.
fn looks_like_jwt(credentials: &str) -> bool {
    credentials.split('.').count() == 3
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
