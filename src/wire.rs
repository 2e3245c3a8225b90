//! WebSocket frame encoding for frames the server sends.
//!
//! Server frames are unmasked, so a frame can be built once and the same bytes written to any
//! number of sockets. Each publication is encoded straight into a buffer that leaves room for
//! the header, so building a frame costs one allocation and no copy of the payload.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use serde::Serialize;

/// Room for the longest server frame header (2 + 8 bytes, no mask).
const HEAD_ROOM: usize = 10;

/// Encodes `value` as JSON inside a final, unmasked text frame.
pub fn json_frame<T: Serialize + ?Sized>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.resize(HEAD_ROOM, 0);
    serde_json::to_writer(&mut buf, value).expect("serializing to a Vec cannot fail");
    let mut head = [0u8; HEAD_ROOM];
    let len = Frame::text(Payload::Borrowed(&buf[HEAD_ROOM..])).fmt_head(&mut head);
    let start = HEAD_ROOM - len;
    buf[start..HEAD_ROOM].copy_from_slice(&head[..len]);
    Bytes::from(buf).slice(start..)
}

/// Encodes any frame (close, pong, close echo) into owned bytes.
pub fn encode(mut frame: Frame<'_>) -> Bytes {
    let mut buf = Vec::new();
    // `write` pads the buffer to payload + maximum header size; keep only the frame.
    let len = frame.write(&mut buf).len();
    buf.truncate(len);
    Bytes::from(buf)
}

/// A close frame with `code` and a short human-readable `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    encode(Frame::close(code, reason.as_bytes()))
}

/// True for frames whose opcode is close: after one is written, nothing else may follow.
pub fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == OpCode::Close as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_for_each_length_class() {
        for n in [0usize, 10, 125, 126, 65535, 65536, 70000] {
            let s = "x".repeat(n);
            let f = json_frame(&s);
            let payload_len = n + 2; // quotes
            assert_eq!(f[0], 0x81);
            let (len, off) = match f[1] {
                126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, 10),
                l => (l as usize, 2),
            };
            assert_eq!(len, payload_len);
            assert_eq!(f.len(), off + payload_len);
            assert_eq!(&f[off..], format!("\"{s}\"").as_bytes());
        }
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(4008, "slow consumer");
        assert_eq!(f[0], 0x88);
        assert_eq!(f[1] as usize, 2 + "slow consumer".len());
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4008);
        assert!(is_close(&f));
        assert!(!is_close(&json_frame("x")));
    }
}
