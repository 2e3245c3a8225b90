//! permessage-deflate (RFC 7692) on the client side: the offer made in the upgrade, the check of
//! the server's answer, and inflating the compressed messages (RSV1) the receive path finds.
//!
//! tickwire compresses each publication once for every subscriber, so its answer always has
//! `server_no_context_takeover`: every message is a deflate stream of its own. That is what lets
//! one [`Inflater`] per receiver thread, reset between messages, serve all of the thread's
//! connections: a connection holds no inflate state (a zlib inflater keeps a 32 KiB window;
//! 10,000 of them would be 320 MB of client memory). An answer without
//! `server_no_context_takeover` fails the connection, since a message could then refer to the
//! one before it. We never compress what we send (a few small requests), so the client side's
//! own parameters are accepted as they come.

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` value of the upgrade request: what browsers offer.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// RFC 7692 §7.2.1: the end of a sync-flushed deflate stream, removed from every message by
/// the sender and appended again by the receiver.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Checks the server's `Sec-WebSocket-Extensions` answer (every such header's value, in order)
/// to [`OFFER`]: exactly one extension, `permessage-deflate`, with `server_no_context_takeover`
/// and no parameter we do not know.
pub fn check_answer<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let all: Vec<&str> = (values.into_iter())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let answer = match all[..] {
        [] => return Err("the server did not accept permessage-deflate".into()),
        [one] => one,
        _ => return Err(format!("more than one extension in the answer: {all:?}")),
    };
    let mut parts = answer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return Err(format!(
            "the server answered with an extension we did not offer: {answer:?}"
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return Err(format!("{name} twice in {answer:?}"));
        }
        seen.push(name);
        let ok = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // A smaller window than 15 bits is read by our 15-bit inflater as well.
            ("server_max_window_bits", Some(v)) => window_bits(v),
            // The window of what we would compress: we send everything plain.
            ("client_max_window_bits", Some(v)) => window_bits(v),
            _ => false,
        };
        if !ok {
            return Err(format!("unknown or malformed parameter {param:?} in {answer:?}"));
        }
    }
    if !seen.contains(&"server_no_context_takeover") {
        return Err(format!(
            "the answer {answer:?} lacks server_no_context_takeover (this client inflates every message on its own)"
        ));
    }
    Ok(())
}

/// A window size parameter: 8 to 15, no leading zero (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> bool {
    !v.starts_with('0') && v.len() <= 2 && v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
}

/// Why a compressed message could not be inflated (the connection is then failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// Not a raw deflate stream.
    Corrupt(String),
    /// It inflates to more than the cap.
    TooLarge(usize),
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::Corrupt(e) => write!(f, "a compressed message does not inflate: {e}"),
            InflateError::TooLarge(max) => write!(f, "a compressed message inflates beyond {max} bytes"),
        }
    }
}

impl std::error::Error for InflateError {}

/// A raw inflater and its output buffer, reused message after message (one per receiver
/// thread: a fresh zlib state per message would cost an allocation and its initialisation).
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater {
            z: Decompress::new(false),
            out: Vec::new(),
        }
    }
}

impl Inflater {
    /// Inflates one message's payload (its frames' payloads, joined) into the inflater's
    /// buffer; at most `max` bytes.
    pub fn inflate(&mut self, payload: &[u8], max: usize) -> Result<&[u8], InflateError> {
        self.z.reset(false);
        self.out.clear();
        'input: for input in [payload, &TAIL[..]] {
            let start = self.z.total_in();
            loop {
                if self.out.len() == self.out.capacity() {
                    if self.out.len() > max {
                        return Err(InflateError::TooLarge(max));
                    }
                    // Twice what is there: a doc of ~5 KB costs two or three rounds once, then
                    // the buffer keeps its size.
                    self.out.reserve(self.out.len().max(4096));
                }
                let (used, made) = ((self.z.total_in() - start) as usize, self.out.len());
                let status = (self.z)
                    .decompress_vec(&input[used..], &mut self.out, FlushDecompress::Sync)
                    .map_err(|e| InflateError::Corrupt(e.to_string()))?;
                let progress = self.z.total_in() - start != used as u64 || self.out.len() != made;
                let used = (self.z.total_in() - start) as usize;
                match status {
                    // A final block (allowed, not what tickwire sends): the message ends there.
                    Status::StreamEnd => break 'input,
                    // All read, and room left over: nothing is held back for want of space.
                    _ if used == input.len() && self.out.len() < self.out.capacity() => break,
                    _ if !progress => return Err(InflateError::Corrupt("no progress".into())),
                    _ => {}
                }
            }
        }
        if self.out.len() > max {
            return Err(InflateError::TooLarge(max));
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message compressed as RFC 7692 says (and tickwire does): raw deflate, sync flush,
    /// without the flush's 4-byte tail.
    fn compress(data: &[u8], level: u32) -> Vec<u8> {
        let mut z = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            let at = z.total_in() as usize;
            z.compress_vec(&data[at..], &mut out, FlushCompress::Sync)
                .unwrap();
            if z.total_in() as usize == data.len() && out.ends_with(&TAIL) {
                break;
            }
            out.reserve(out.len() + 64);
        }
        out.truncate(out.len() - TAIL.len());
        out
    }

    #[test]
    fn answers() {
        let tickwire = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(check_answer([tickwire]), Ok(()));
        assert_eq!(
            check_answer([
                "permessage-deflate;server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=\"12\""
            ]),
            Ok(())
        );
        let none = check_answer(std::iter::empty()).unwrap_err();
        assert!(none.contains("did not accept"), "{none}");
        for (bad, why) in [
            (
                "permessage-deflate; client_no_context_takeover",
                "lacks server_no_context_takeover",
            ),
            ("x-webkit-deflate-frame", "did not offer"),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                "twice",
            ),
            (
                "permessage-deflate; server_no_context_takeover; mystery",
                "unknown",
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
                "malformed",
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=09",
                "malformed",
            ),
            (
                "permessage-deflate; server_no_context_takeover, permessage-deflate",
                "more than one",
            ),
        ] {
            let e = check_answer([bad]).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn inflates_message_after_message_with_one_inflater() {
        let mut inflater = Inflater::default();
        let doc: Vec<u8> = (0..400)
            .flat_map(|i| format!("{{\"k{i}\":\"value {}\"}},", i % 7).into_bytes())
            .collect();
        // Big and small, repetitive and not, every level; the buffer is reused and must hold
        // exactly each message, whatever came before.
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let messages: [&[u8]; 5] = [&doc, b"{\"type\":\"update\"}", &noise, &doc[..300], b""];
        for level in [1, 6, 9] {
            for m in messages {
                let compressed = compress(m, level);
                assert_eq!(
                    inflater.inflate(&compressed, 1 << 20).unwrap(),
                    m,
                    "level {level}"
                );
            }
        }
        assert!(compress(&doc, 6).len() * 5 < doc.len(), "repetitive JSON shrinks");
    }

    #[test]
    fn refuses_garbage_and_stops_at_the_cap() {
        let mut inflater = Inflater::default();
        assert!(matches!(
            inflater.inflate(b"\xff\xff\xff\xff", 1 << 20),
            Err(InflateError::Corrupt(_))
        ));
        let zeros = vec![b'0'; 1 << 20];
        let bomb = compress(&zeros, 9);
        assert!(bomb.len() < 5_000, "{}", bomb.len());
        assert_eq!(
            inflater.inflate(&bomb, 100_000),
            Err(InflateError::TooLarge(100_000))
        );
        assert_eq!(inflater.inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        // After an error the next message inflates as if nothing happened.
        assert_eq!(inflater.inflate(&compress(b"fine", 6), 100).unwrap(), b"fine");
    }
}
