//! Token helpers for `auth.mode = "jwt"`: the test secret and its settings, claims, and signing
//! with any algorithm and key (so tests can mint the bad tokens the server must refuse).
//!
//! Part of the shared harness; not every test binary uses every helper.

use serde_json::{json, Value};

use super::time::unix_now;

/// The HS256 secret of [`JWT_TOML`].
pub const JWT_SECRET: &str = "tickwire-test-secret-0123456789abcdef";

/// Settings for `auth.mode = "jwt"` with [`JWT_SECRET`], leeway 0 (expiry is exact).
pub const JWT_TOML: &str = "[auth]\nmode = \"jwt\"\n[auth.jwt]\n\
    hs256_secret = \"tickwire-test-secret-0123456789abcdef\"\nleeway = \"0s\"\n";

/// Claims for `sub`, valid for `ttl` seconds from now (negative: expired).
pub fn claims(sub: &str, subscribe: &[&str], publish: &[&str], ttl: i64) -> Value {
    let exp = unix_now() as i64 + ttl;
    json!({"sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish})
}

/// `claims` signed with `alg` and `key`, with `kid` in the header when given.
pub fn sign(
    claims: &Value,
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign test token")
}

/// `claims` signed with HS256 and [`JWT_SECRET`].
pub fn token(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    sign(claims, jsonwebtoken::Algorithm::HS256, &key, None)
}
