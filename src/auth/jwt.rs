//! JSON Web Tokens: verifying the tokens WebSocket clients present (`auth.mode = "jwt"`), and
//! minting HS256 tokens for `tickwire token`.
//!
//! Exactly one key source is configured, and it fixes the one algorithm accepted: HS256 for a
//! shared secret, RS256 or ES256 for a PEM public key, and per key for a JWKS. The token's own
//! `alg` header never chooses how it is verified, which rules out `alg: none` and HS/RS
//! confusion (an HS256 token "signed" with the public key as its secret).
//!
//! A JWKS fetched from `auth.jwt.jwks_url` is the fourth source; `jwks.rs` keeps it fresh and
//! the verifier reads its current set at each token.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::acl::Acl;
use crate::auth::acl::Identity;
use crate::auth::jwks::Remote;
use crate::auth::keyset::{jwks, validation, Key};
use crate::protocol::error::AuthError;
use crate::settings::SettingsError;
use crate::settings::{JwtSettings, MAX_MEMBER_INFO_BYTES};
use crate::topic::Pattern;

/// Shortest accepted HS256 secret: RFC 7518 §3.2 asks for a key as long as the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Length of an uncompressed P-256 point, the form a PEM EC public key decodes to.
const P256_POINT_BYTES: usize = 65;

/// Verifies tokens against the configured key(s).
pub struct Verifier {
    keys: Vec<Key>,
    /// With `jwks_url`, the keys are the fetched set's instead of `keys`.
    remote: Option<Arc<Remote>>,
    leeway: Duration,
}

/// The claims tickwire reads. `aud`, `iss`, `nbf` and `exp` are checked by `jsonwebtoken` itself,
/// and so is the presence of `sub` (the default only lets its message name the claim). The
/// presence of `exp` is checked here: the crate counts an unusable `exp` (negative, huge) as a
/// missing one, which would tell the client the wrong thing to fix.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    /// A NumericDate, which RFC 7519 §2 lets be fractional (`1900000000.5`, `1.9e9`); an f64
    /// holds every whole second up to 2^53, far past any real date. A string still fails the
    /// whole token, so it can never pass for an absent claim (CVE-2026-25537).
    exp: Option<f64>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    /// What presence shows of the member (docs/presence.md): any JSON, at most
    /// `MAX_MEMBER_INFO_BYTES`; only ever from the signed token, never from the client.
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path)
        .map_err(|e| SettingsError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

impl Verifier {
    /// Loads the one configured key source; every failure names its key.
    pub fn from_settings(s: &JwtSettings) -> Result<Verifier, SettingsError> {
        let secret = s.hs256_secret.expose();
        let sources = [
            !secret.is_empty(),
            s.public_key_file.is_some(),
            s.jwks_file.is_some(),
            !s.jwks_url.is_empty(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return Err(SettingsError::invalid(
                "auth.jwt",
                "auth.mode = \"jwt\" needs exactly one of hs256_secret, public_key_file, jwks_file, jwks_url",
            ));
        }
        let validation = |alg| validation(alg, s);
        let leeway = Duration::from_secs(s.leeway.as_secs());
        if !s.jwks_url.is_empty() {
            return Ok(Verifier {
                keys: Vec::new(),
                remote: Some(Arc::new(Remote::new(s)?)),
                leeway,
            });
        }
        let keys = if !secret.is_empty() {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(SettingsError::invalid(
                    "auth.jwt.hs256_secret",
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            vec![Key {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256),
            }]
        } else if let Some(path) = &s.public_key_file {
            let (key, alg) = public_key(&read("auth.jwt.public_key_file", path)?)?;
            vec![Key {
                kid: None,
                key,
                validation: validation(alg),
            }]
        } else {
            let path = s.jwks_file.as_deref().unwrap_or(Path::new(""));
            jwks("auth.jwt.jwks_file", &read("auth.jwt.jwks_file", path)?)?
                .into_iter()
                .map(|(kid, key, alg)| Key {
                    kid,
                    key,
                    validation: validation(alg),
                })
                .collect()
        };
        Ok(Verifier {
            keys,
            remote: None,
            leeway,
        })
    }

    /// The fetched key set's source, with `jwks_url`.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Checks signature, algorithm and claims, and turns the claims into an [`Identity`].
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_error(token, e))?;
        // A refresh may swap the fetched set meanwhile: this token is checked against one set.
        let fetched = self.remote.as_ref().map(|r| r.keys());
        let keys = fetched.as_deref().map_or(self.keys.as_slice(), Vec::as_slice);
        let key = match (&header.kid, keys) {
            (None, [only]) => only,
            (Some(kid), keys) => (keys.iter())
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .or_else(|| match keys {
                    // A single configured key without a kid takes any kid.
                    [only] if only.kid.is_none() => Some(only),
                    _ => None,
                })
                .ok_or(AuthError::UnknownKeyId)?,
            (None, _) => return Err(AuthError::UnknownKeyId),
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(auth_error)?
            .claims;
        let patterns = |name: &str, list: &[String]| {
            (list.iter())
                .map(|p| Pattern::parse(p).map_err(|_| AuthError::BadClaim(name.to_string())))
                .collect::<Result<Vec<_>, _>>()
        };
        let acl = Acl::new(
            patterns("subscribe", &claims.subscribe)?,
            patterns("publish", &claims.publish)?,
        );
        // Floored: a fractional `exp` never lasts longer than it says. Checked: a far-future
        // or negative one must not overflow the clock.
        let exp = (claims.exp)
            .ok_or_else(|| AuthError::MissingClaim("exp".to_string()))?
            .floor();
        if !(0.0..u64::MAX as f64).contains(&exp) {
            return Err(AuthError::BadClaim("exp".to_string()));
        }
        let expires = (UNIX_EPOCH.checked_add(Duration::from_secs(exp as u64)))
            .and_then(|t| t.checked_add(self.leeway))
            .ok_or_else(|| AuthError::BadClaim("exp".to_string()))?;
        // `jsonwebtoken` compares whole seconds, so it takes a token during its `exp` second,
        // which the connection's watchdog then closes at once (4003): a client reconnecting
        // with it looped. Past its expiry (leeway included) a token is refused here instead.
        if SystemTime::now() >= expires {
            return Err(AuthError::Expired);
        }
        // `null` is no info; a larger claim would make every member of a room cost more.
        let info = claims.info.filter(|i| i.get() != "null");
        if info
            .as_ref()
            .is_some_and(|i| i.get().len() > MAX_MEMBER_INFO_BYTES)
        {
            return Err(AuthError::BadClaim("info".to_string()));
        }
        Ok(Identity {
            subject: Some(claims.sub),
            acl,
            expires: Some(expires),
            info: info.map(Arc::from),
        })
    }
}

/// A PEM public key and the algorithm its type implies.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), SettingsError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, Algorithm::RS256));
    }
    let key = DecodingKey::from_ec_pem(pem).map_err(|_| {
        SettingsError::invalid("auth.jwt.public_key_file", "not a PEM RSA or EC P-256 public key")
    })?;
    let p256 = key.try_get_as_bytes().map(<[u8]>::len) == Ok(P256_POINT_BYTES);
    if !p256 {
        return Err(SettingsError::invalid(
            "auth.jwt.public_key_file",
            "EC keys must be on curve P-256 (ES256)",
        ));
    }
    Ok((key, Algorithm::ES256))
}

fn auth_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.into_kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthError::Signature
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidKeyFormat => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::BadClaim(claim),
        _ => AuthError::Malformed,
    }
}

/// Why a token's header was refused. `jsonwebtoken` fails to parse a header whose `alg` it does
/// not know (`none` above all) like any broken JSON; reading `alg` again tells the client that
/// the algorithm, not the token's shape, is what to fix.
fn header_error(token: &str, e: jsonwebtoken::errors::Error) -> AuthError {
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    // The same part `decode_header` reads: the one before the last two dots.
    let header = (token.rsplitn(3, '.').nth(2))
        .and_then(|header| URL_SAFE_NO_PAD.decode(header).ok())
        .and_then(|json| serde_json::from_slice::<Alg>(&json).ok());
    match header {
        Some(Alg { alg }) if alg.parse::<Algorithm>().is_err() => AuthError::Algorithm,
        _ => auth_error(e),
    }
}

/// The claims of a token minted by `tickwire token`.
#[derive(Debug, Serialize)]
pub struct NewToken {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

impl NewToken {
    /// Claims valid from now for `ttl`.
    pub fn new(sub: &str, ttl: Duration, subscribe: Vec<String>, publish: Vec<String>) -> NewToken {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        NewToken {
            sub: sub.to_string(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            aud: None,
            iss: None,
            subscribe,
            publish,
        }
    }

    /// Signs the claims with HS256.
    pub fn sign_hs256(&self, secret: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            self,
            &EncodingKey::from_secret(secret),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(extra: &str) -> Verifier {
        let toml = format!("[auth]\nmode = \"jwt\"\n[auth.jwt]\nhs256_secret = \"{SECRET}\"\n{extra}");
        Verifier::from_settings(&Settings::from_toml(&toml).unwrap().auth.jwt).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn claims_become_the_acl() {
        let v = verifier("");
        let t = NewToken::new(
            "alice",
            Duration::from_secs(60),
            vec!["prices.>".into()],
            vec!["chat.>".into()],
        );
        let id = v.verify(&t.sign_hs256(SECRET.as_bytes()).unwrap()).unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert!(id.acl.may_subscribe(&Pattern::parse("prices.*").unwrap()));
        assert!(!id.acl.may_subscribe(&Pattern::parse(">").unwrap()));
        assert!(id.acl.may_publish(&crate::topic::Topic::parse("chat.x").unwrap()));
        let expires = id.expires.unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(expires, t.exp + 5, "exp plus the default leeway");
    }

    /// A token is refused in its `exp` second, not accepted and then closed at once by the
    /// connection's watchdog (which made clients loop).
    #[test]
    fn a_token_in_its_expiry_second_is_expired() {
        let v = verifier("leeway = \"0s\"");
        let claims = serde_json::json!({"sub": "a", "exp": now()});
        assert_eq!(v.verify(&token(claims)).unwrap_err(), AuthError::Expired);
        let later = serde_json::json!({"sub": "a", "exp": now() + 2});
        assert!(v.verify(&token(later)).is_ok());
    }

    #[test]
    fn rejections() {
        let v = verifier("audience = \"tw\"\nissuer = \"idp\"");
        let exp = now() + 60;
        let ok = serde_json::json!({"sub": "a", "exp": exp, "aud": "tw", "iss": "idp"});
        assert!(v.verify(&token(ok.clone())).is_ok());
        let with = |k: &str, val: serde_json::Value| {
            let mut c = ok.clone();
            c[k] = val;
            v.verify(&token(c)).unwrap_err()
        };
        assert_eq!(with("exp", (now() - 60).into()), AuthError::Expired);
        // A claim of the wrong type never passes for an absent one (CVE-2026-25537).
        assert_eq!(with("exp", "never".into()), AuthError::Malformed);
        assert_eq!(with("nbf", "never".into()), AuthError::BadClaim("nbf".into()));
        assert_eq!(with("nbf", (now() + 60).into()), AuthError::NotYetValid);
        assert_eq!(with("exp", u64::MAX.into()), AuthError::BadClaim("exp".into()));
        assert_eq!(with("aud", "other".into()), AuthError::Audience);
        assert_eq!(with("iss", "other".into()), AuthError::Issuer);
        assert_eq!(
            with("subscribe", serde_json::json!(["a..b"])),
            AuthError::BadClaim("subscribe".into())
        );
        let mut no_aud = ok.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            v.verify(&token(no_aud)).unwrap_err(),
            AuthError::MissingClaim("aud".into())
        );
        let mut no_exp = ok.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&token(no_exp)).unwrap_err(),
            AuthError::MissingClaim("exp".into())
        );
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ok,
            &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), AuthError::Signature);
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &ok,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&hs512).unwrap_err(), AuthError::Algorithm);
        assert_eq!(v.verify("not.a.token").unwrap_err(), AuthError::Malformed);
        // An `alg` jsonwebtoken cannot even parse is still an algorithm refused.
        let claims = URL_SAFE_NO_PAD.encode(ok.to_string());
        for alg in ["none", "None", "HS999", ""] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let unsigned = format!("{header}.{claims}.");
            assert_eq!(v.verify(&unsigned).unwrap_err(), AuthError::Algorithm, "{alg:?}");
            assert_eq!(AuthError::Algorithm.to_string(), "token algorithm not accepted");
        }
        // A known alg in an otherwise broken header is a malformed token.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":5}"#);
        assert_eq!(
            v.verify(&format!("{header}.{claims}.")).unwrap_err(),
            AuthError::Malformed
        );
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#);
        assert_eq!(
            v.verify(&format!("{header}.{claims}.")).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(v.verify("").unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn numeric_dates_may_be_fractional() {
        let v = verifier("leeway = \"0s\"");
        let claims = |exp: serde_json::Value| serde_json::json!({"sub": "a", "exp": exp});
        let verify = |c: serde_json::Value| v.verify(&token(c));
        let expires = |c| {
            let id = verify(c).unwrap();
            id.expires
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        // Floored: a fractional exp never outlives what it says.
        let soon = now() + 60;
        assert_eq!(expires(claims((soon as f64 + 0.9).into())), soon as f64);
        assert_eq!(expires(claims(1.9e9.into())), 1.9e9);
        assert_eq!(expires(claims(serde_json::json!(1900000000.5))), 1.9e9);
        assert_eq!(
            verify(claims((now() as f64 - 30.5).into())).unwrap_err(),
            AuthError::Expired
        );
        for bad in [-1.5, -1e9, 1e19, 1e300] {
            assert_eq!(
                verify(claims(bad.into())).unwrap_err(),
                AuthError::BadClaim("exp".into()),
                "{bad}"
            );
        }
        // nbf and iat are NumericDates too.
        let mut c = claims(soon.into());
        c["nbf"] = (now() as f64 - 10.5).into();
        c["iat"] = (now() as f64 - 10.25).into();
        assert!(verify(c.clone()).is_ok());
        c["nbf"] = (now() as f64 + 60.5).into();
        assert_eq!(verify(c).unwrap_err(), AuthError::NotYetValid);
    }

    #[test]
    fn key_sources_are_checked() {
        // Key files are read when the verifier is built (`prepare`), not by `Settings::load`.
        let err = |toml: &str| {
            let built = Settings::from_toml(toml).and_then(|s| Verifier::from_settings(&s.auth.jwt));
            built.map(drop).expect_err("refused").to_string()
        };
        let e = err("[auth]\nmode = \"jwt\"\n[auth.jwt]\nhs256_secret = \"short\"");
        assert!(e.contains("auth.jwt.hs256_secret"), "{e}");
        let e = err(&format!(
            "[auth]\nmode = \"jwt\"\n[auth.jwt]\nhs256_secret = \"{SECRET}\"\njwks_file = \"x\""
        ));
        assert!(e.contains("exactly one"), "{e}");
        let e = err("[auth]\nmode = \"jwt\"\n[auth.jwt]\npublic_key_file = \"/nonexistent.pem\"");
        assert!(e.contains("auth.jwt.public_key_file"), "{e}");
        let e = err("[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_file = \"/nonexistent.json\"");
        assert!(e.contains("auth.jwt.jwks_file"), "{e}");
        // The secret never shows in the settings' debug form (logs, check-config).
        let s = Settings::from_toml(&format!("[auth.jwt]\nhs256_secret = \"{SECRET}\"")).unwrap();
        assert!(!format!("{s:?}").contains(SECRET));
    }
}
