//! URL handling: scheme checks and the `token` query parameter.

use crate::error::Error;

/// Checks that `url` starts with one of `schemes` (followed by `://` and a host).
pub(crate) fn check_scheme(url: &str, schemes: &[&str]) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(format!("expected {}://HOST...", schemes.join("://, "))));
    };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(invalid(format!(
            "unsupported scheme {scheme:?}, expected one of {schemes:?}"
        )));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(invalid("missing host".into()));
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with `token=<token>` added to its query string (before any fragment).
pub(crate) fn with_token(url: &str, token: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let sep = match base.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some((_, q)) if q.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut out = format!("{base}{sep}token={}", percent_encode(token));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_appended_and_encoded() {
        assert_eq!(with_token("ws://h/ws", "a b"), "ws://h/ws?token=a%20b");
        assert_eq!(with_token("ws://h/ws?x=1", "t"), "ws://h/ws?x=1&token=t");
        assert_eq!(with_token("ws://h/ws?", "t"), "ws://h/ws?token=t");
        assert_eq!(with_token("ws://h/ws#f", "t/+="), "ws://h/ws?token=t%2F%2B%3D#f");
        assert_eq!(
            with_token("ws://h/ws", "eyJ.a-b_c~"),
            "ws://h/ws?token=eyJ.a-b_c~"
        );
    }

    #[test]
    fn schemes() {
        assert!(check_scheme("ws://127.0.0.1:1/ws", &["ws", "wss"]).is_ok());
        assert!(check_scheme("WSS://example.com", &["ws", "wss"]).is_ok());
        assert!(check_scheme("http://x/ws", &["ws", "wss"]).is_err());
        assert!(check_scheme("ws:///ws", &["ws", "wss"]).is_err());
        assert!(check_scheme("localhost:8080", &["ws", "wss"]).is_err());
    }
}
