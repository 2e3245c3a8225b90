//! Origins as browsers send them in an `Origin` header: how `server.allowed_origins` is checked
//! at start-up and how the upgrade compares a request's origin against it.

/// An origin as browsers send it (`scheme://host[:port]`, the port only when it is not the
/// scheme's default), lowercased; `None` when `s` is not one.
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return None;
    }
    // The port follows the last colon, unless that colon is inside an IPv6 literal.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether `s` can be listed in `server.allowed_origins`.
pub fn valid_origin(s: &str) -> bool {
    normalize_origin(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        for (raw, normal) in [
            ("https://App.Example.com", Some("https://app.example.com")),
            ("https://app.example.com:443", Some("https://app.example.com")),
            ("http://app.example.com:80", Some("http://app.example.com")),
            (
                "https://app.example.com:8443",
                Some("https://app.example.com:8443"),
            ),
            ("http://[::1]:8080", Some("http://[::1]:8080")),
            ("http://[::1]", Some("http://[::1]")),
            ("https://app.example.com/", None),
            ("https://app.example.com/x", None),
            ("app.example.com", None),
            ("ftp://app.example.com", None),
            ("null", None),
            ("https://", None),
            ("https://a:", None),
            ("https://a:x", None),
            ("https://*.example.com", None),
            ("https://user@a", None),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), normal, "{raw}");
        }
    }
}
