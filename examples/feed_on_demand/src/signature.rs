//! The webhook signature: `X-Tickwire-Signature: sha256=<hex HMAC-SHA256 of the body>`, keyed
//! with the webhook's `secret` (docs/presence.md). Checked before the body is even parsed, so
//! nothing unsigned reaches the feeds.

use ring::hmac;

/// The header tickwire signs its webhook requests with.
pub const HEADER: &str = "x-tickwire-signature";

/// Whether `header` (the value of [`HEADER`], if any) is the HMAC-SHA256 of `body` under `key`.
///
/// The comparison is ring's, in constant time: a receiver that compared byte by byte and
/// returned early would let an attacker find a valid signature one byte at a time by timing.
pub fn verify(key: &hmac::Key, body: &[u8], header: Option<&[u8]>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix(b"sha256=")) else {
        return false;
    };
    match decode_hex(hex) {
        Some(tag) => hmac::verify(key, body, &tag).is_ok(),
        None => false,
    }
}

/// The header value tickwire would send for `body` (tests, and anyone replaying a request).
pub fn sign(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let mut out = String::from("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The key for a webhook's `secret`.
pub fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// Hex (either case) to bytes; `None` for an odd length or a non-hex digit. Only 32-byte
/// tags can verify, and `hmac::verify` checks the length, so no cap is needed here beyond the
/// body limit the header already shares.
fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"event":"occupied","topic":"prices.ACME","member":null,"ts":1,"id":"e1"}"#;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let got = sign(&key(b"Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            got,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_the_right_signature_in_either_case() {
        let k = key(b"s3cret");
        let header = sign(&k, BODY);
        assert!(verify(&k, BODY, Some(header.as_bytes())));
        let upper = format!("sha256={}", header["sha256=".len()..].to_uppercase());
        assert!(verify(&k, BODY, Some(upper.as_bytes())));
    }

    #[test]
    fn refuses_everything_else() {
        let k = key(b"s3cret");
        let good = sign(&k, BODY);
        let other_secret = sign(&key(b"other"), BODY);
        let flipped = {
            let mut s = good.clone().into_bytes();
            let last = s.len() - 1;
            s[last] = if s[last] == b'0' { b'1' } else { b'0' };
            String::from_utf8(s).unwrap()
        };
        let other_algorithm = good.replacen("sha256", "sha1", 1);
        let cases: [(&str, Option<&[u8]>); 8] = [
            ("no header", None),
            ("empty", Some(b"")),
            ("no prefix", Some(&good.as_bytes()["sha256=".len()..])),
            ("other algorithm", Some(other_algorithm.as_bytes())),
            ("other secret", Some(other_secret.as_bytes())),
            ("one digit changed", Some(flipped.as_bytes())),
            ("truncated", Some(&good.as_bytes()[..good.len() - 2])),
            ("not hex", Some(b"sha256=zz")),
        ];
        for (what, header) in cases {
            assert!(!verify(&k, BODY, header), "{what}");
        }
        let mut body = BODY.to_vec();
        body[2] = b'E';
        assert!(!verify(&k, &body, Some(good.as_bytes())), "other body");
    }
}
