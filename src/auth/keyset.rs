//! JWT verification keys: the [`Key`] type (a decoding key and the one validation it accepts),
//! the validation rules per algorithm, and reading a JWKS document.
//!
//! Below both `jwt` (which verifies with the keys) and `jwks` (which fetches a set and keeps it
//! fresh), so that neither depends on the other's internals in a cycle.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::settings::{JwtSettings, SettingsError};

pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    /// Accepts exactly this key's algorithm.
    pub(crate) validation: Validation,
}

pub(crate) fn validation(alg: Algorithm, s: &JwtSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = s.leeway.as_secs();
    v.validate_nbf = true;
    // `exp` is required too, but checked by `verify` (see `Claims`).
    let mut required = vec!["sub"];
    if s.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[&s.audience]);
        required.push("aud");
    }
    if !s.issuer.is_empty() {
        v.set_issuer(&[&s.issuer]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

/// The signing keys of a JWKS that tickwire can use (RS256, ES256), with their kids; errors
/// name `src`, the setting the set came from.
pub(crate) fn jwks(
    src: &'static str,
    json: &[u8],
) -> Result<Vec<(Option<String>, DecodingKey, Algorithm)>, SettingsError> {
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| SettingsError::invalid(src, format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            // Symmetric keys never come from a key set, and other algorithms are not offered.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
            SettingsError::invalid(src, format!("key {kid}: {e}"))
        })?;
        keys.push((jwk.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err(SettingsError::invalid(
            src,
            "no RS256 or ES256 signing key in the set",
        ));
    }
    let kids = keys.iter().filter(|(kid, ..)| kid.is_some()).count();
    if keys.len() > 1 && kids < keys.len() {
        return Err(SettingsError::invalid(
            src,
            "with several keys, every key needs a kid",
        ));
    }
    Ok(keys)
}
