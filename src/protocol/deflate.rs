//! permessage-deflate (RFC 7692): the offer a client makes in its handshake and our answer,
//! compressing a server frame, and inflating a client's message under a size cap.
//!
//! tickwire compresses each publication **once** and sends the same bytes to every subscriber
//! that negotiated the extension, which is only possible without context takeover: so the
//! answer always carries `server_no_context_takeover` (each message is a deflate stream of its
//! own, with no memory of the previous one). It also asks `client_no_context_takeover`, so that
//! a connection keeps no inflate state between messages: an idle connection costs what it did
//! without compression. A client may limit our window (`server_max_window_bits`): frames are
//! then compressed for that window, once per window size present (most clients ask for none).
//!
//! The compressors are per thread and reset between frames (a deflate state is ~256 KiB; making
//! one per publication would cost more than the compression). Inflating builds a decompressor
//! per message: clients send few, small requests.

use std::cell::RefCell;

use bytes::Bytes;
use fastwebsockets::OpCode;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::protocol::disconnect::Disconnect;
use crate::protocol::wire::{self, HEAD_ROOM};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What the end of a sync-flushed deflate stream looks like; RFC 7692 §7.2.1 removes it from
/// every message and the receiver appends it again.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window sizes a client may ask for (RFC 7692 §7.1.2.1).
const WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;

/// What a connection negotiated: the largest window its client accepts from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub window_bits: u8,
}

/// Picks the first acceptable `permessage-deflate` offer among the `Sec-WebSocket-Extensions`
/// header values; returns what was agreed and the value of our answering header. An offer with
/// an unknown or malformed parameter is declined (RFC 7692 §5), and the next one considered.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<(Negotiated, String)> {
    let offers = headers.into_iter().flat_map(|h| h.split(','));
    offers.filter_map(accept).next()
}

fn accept(offer: &str) -> Option<(Negotiated, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next()? != NAME {
        return None;
    }
    let mut window_bits = None;
    let mut seen = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None; // each parameter at most once (§7)
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => window_bits = Some(bits(v)?),
            // The client tells us it could work with a smaller window of its own; we inflate
            // with the largest, which reads any, so we never ask for one.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                bits(v)?;
            }
            _ => return None,
        }
    }
    let mut answer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = window_bits {
        answer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    let window_bits = window_bits.unwrap_or(15);
    Some((Negotiated { window_bits }, answer))
}

/// A window size parameter: a decimal 8 to 15, no leading zero.
fn bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || v.len() > 2 {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    WINDOW_BITS.contains(&bits).then_some(bits)
}

thread_local! {
    /// One compressor per window size and level, reused frame after frame.
    static COMPRESSORS: RefCell<Vec<((u8, u32), Compress)>> = const { RefCell::new(Vec::new()) };
}

/// `frame` (a final, unmasked text or binary frame as the server sends it) with its payload
/// compressed for a client whose window is `window_bits`, RSV1 set; `None` when compressing
/// would not make it smaller (then send `frame` as it is: RSV1 is per message).
pub fn compress_frame(frame: &[u8], window_bits: u8, level: u32) -> Option<Bytes> {
    // zlib cannot make a 256-byte window (it would use 512), and stored data is never smaller:
    // a client that asks for one gets plain frames.
    if window_bits < 9 {
        return None;
    }
    let (head, payload) = split_frame(frame)?;
    let opcode = OpCode::try_from(head & 0x0f).ok()?;
    let mut out = Vec::with_capacity(HEAD_ROOM + payload.len() / 2 + 16);
    out.resize(HEAD_ROOM, 0);
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let at = match all.iter().position(|(key, _)| *key == (window_bits, level)) {
            Some(at) => at,
            None => {
                let fresh = Compress::new_with_window_bits(Compression::new(level), false, window_bits);
                all.push(((window_bits, level), fresh));
                all.len() - 1
            }
        };
        let deflate = &mut all[at].1;
        deflate.reset();
        loop {
            out.reserve(payload.len() / 2 + 64);
            let consumed = deflate.total_in() as usize;
            (deflate.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)).ok()?;
            // Done once every byte is in and the sync flush has ended the output with its tail.
            if deflate.total_in() as usize == payload.len() && out.ends_with(&TAIL) {
                return Some(());
            }
        }
    })?;
    out.truncate(out.len() - TAIL.len());
    if out.len() - HEAD_ROOM >= payload.len() {
        return None;
    }
    Some(wire::finish_frame(out, opcode, true))
}

/// The first header byte (FIN, opcode) and the payload of an unmasked server frame.
fn split_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (len, rest) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
            &rest[2..],
        ),
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) as usize,
            &rest[8..],
        ),
        n => (n as usize, rest),
    };
    (b1 & 0x80 == 0 && rest.len() == len).then_some((b0, rest))
}

/// Inflates one compressed message (its frames' payloads, joined). More than `max` bytes of
/// output ends the connection as too big (1009) as soon as it is reached, so a deflate bomb
/// costs at most `max` bytes; data that is not deflate fails the connection (1002).
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, Disconnect> {
    let mut inflate = Decompress::new(false);
    let mut out = Vec::with_capacity((compressed.len() * 4).min(max + 1).max(64));
    for input in [compressed, &TAIL[..]] {
        let start = inflate.total_in();
        loop {
            let used = (inflate.total_in() - start) as usize;
            if used == input.len() {
                break;
            }
            if out.len() > max {
                return Err(Disconnect::MessageTooBig);
            }
            if out.capacity() == out.len() {
                out.reserve((out.len()).min(max + 1 - out.len().min(max)).max(1024));
            }
            let status = inflate.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync);
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(_) => return Err(Disconnect::ProtocolError),
            }
        }
    }
    if out.len() > max {
        return Err(Disconnect::MessageTooBig);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(h: &str) -> Option<(u8, String)> {
        negotiate([h]).map(|(n, answer)| (n.window_bits, answer))
    }

    #[test]
    fn accepts_the_first_valid_offer_and_always_drops_context_takeover() {
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(offer("permessage-deflate"), Some((15, plain.into())));
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits"),
            Some((15, plain.into()))
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=10"),
            Some((10, format!("{plain}; server_max_window_bits=10")))
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=7, permessage-deflate"),
            Some((15, plain.into())),
            "an invalid offer is declined, the next one taken"
        );
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=016",
            "permessage-deflate; mystery=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_compressed_frame_inflates_back_for_every_window() {
        let text = "{\"type\":\"update\",\"topic\":\"prices.BTC-USD\",\"data\":".repeat(50);
        let frame = wire::json_frame(&text);
        assert!(
            compress_frame(&frame, 8, 6).is_none(),
            "no 256-byte window: plain frames"
        );
        for bits in 9..=15 {
            let compressed = compress_frame(&frame, bits, 6).expect("repetitive text compresses");
            assert_eq!(compressed[0], 0xc1, "FIN, RSV1, text");
            let (_, payload) = split_frame(&compressed).unwrap();
            let back = inflate(payload, 1 << 20).unwrap();
            let (_, original) = split_frame(&frame).unwrap();
            assert_eq!(back, original, "window bits {bits}");
            assert!(compressed.len() < frame.len() / 4, "{bits}: {}", compressed.len());
        }
        assert!(
            compress_frame(&wire::json_frame("x"), 15, 6).is_none(),
            "not smaller"
        );
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_cap() {
        let zeros = vec![b'0'; 10 << 20];
        let frame = wire::encode(fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(
            &zeros,
        )));
        let compressed = compress_frame(&frame, 15, 9).unwrap();
        let (_, payload) = split_frame(&compressed).unwrap();
        assert!(payload.len() < 20_000, "{}", payload.len());
        assert_eq!(inflate(payload, 1 << 20).unwrap_err(), Disconnect::MessageTooBig);
        assert_eq!(inflate(payload, 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(
            inflate(b"\xff\xff\xff", 100).unwrap_err(),
            Disconnect::ProtocolError
        );
    }
}
