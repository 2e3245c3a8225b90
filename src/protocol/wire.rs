//! WebSocket framing (RFC 6455 §5): encoding the frames the server sends, reading the frames
//! clients send.
//!
//! Server frames are unmasked, so a frame can be built once and the same bytes written to any
//! number of sockets. Each publication is encoded straight into a buffer that leaves room for
//! the header, so building a frame costs one allocation and no copy of the payload.
//!
//! Client frames are read by [`FrameReader`] rather than fastwebsockets' reader, for memory:
//! fastwebsockets allocates an 8 KiB read buffer per connection up front (about 3.7 KB of
//! resident memory per idle connection, measured), while a push server's clients mostly send
//! small requests, then nothing. `FrameReader` waits for data with no buffer at all (a read
//! lands in a stack buffer first), grows one only as far as a frame needs, and lets it go as
//! soon as no partial frame is left in it, so an idle connection holds no read memory. It
//! checks what the frame layer can (reserved bits, opcodes, masking, control frame rules, the
//! frame size limit); reassembly, UTF-8 and close payloads are the session's.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::{Buf, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::protocol::disconnect::Disconnect;

/// Room for the longest server frame header (2 + 8 bytes, no mask).
pub const HEAD_ROOM: usize = 10;

/// Encodes `value` as JSON inside a final, unmasked text frame.
pub fn json_frame<T: Serialize + ?Sized>(value: &T) -> Bytes {
    json_frame_sized(value, 128)
}

/// [`json_frame`] into a buffer that starts with room for `capacity` bytes of JSON (a good
/// guess saves growing it step by step, each step a copy).
pub fn json_frame_sized<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Bytes {
    let mut buf = Vec::with_capacity(HEAD_ROOM + capacity);
    buf.resize(HEAD_ROOM, 0);
    serde_json::to_writer(&mut buf, value).expect("serializing to a Vec cannot fail");
    finish_frame(buf, OpCode::Text, false)
}

/// Makes `buf` a final, unmasked frame of `opcode` whose payload is `buf[HEAD_ROOM..]`: the
/// header goes into the room left before it, so the payload is never copied. RSV1 is set when
/// the payload is `compressed` (permessage-deflate).
pub fn finish_frame(mut buf: Vec<u8>, opcode: OpCode, compressed: bool) -> Bytes {
    let mut head = [0u8; HEAD_ROOM];
    let len = Frame::new(true, opcode, None, Payload::Borrowed(&buf[HEAD_ROOM..])).fmt_head(&mut head);
    if compressed {
        head[0] |= 0x40;
    }
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

/// A ping with no payload: the heartbeat, the same two bytes for every connection.
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OpCode::Ping as u8, 0])
}

/// True for frames whose opcode is close: after one is written, nothing else may follow.
pub fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == OpCode::Close as u8)
}

/// The opcode and payload of one whole frame the server built (final, unmasked, uncompressed:
/// [`json_frame`], [`close_frame`], [`ping`]): for a transport that re-frames what the outbox
/// queues (SSE writes the payload of a text frame as an event's `data`). `None` for bytes that
/// are not exactly one such frame.
pub fn server_payload(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let [b0, b1, rest @ ..] = frame else { return None };
    // FIN set, no RSV bits, no mask: the only frames `finish_frame` and `encode` build here.
    if b0 & 0xf0 != 0x80 || b1 & 0x80 != 0 {
        return None;
    }
    let (len, payload) = match b1 & 0x7f {
        126 => {
            let (len, payload) = rest.split_at_checked(2)?;
            (u64::from(u16::from_be_bytes(len.try_into().ok()?)), payload)
        }
        127 => {
            let (len, payload) = rest.split_at_checked(8)?;
            (u64::from_be_bytes(len.try_into().ok()?), payload)
        }
        len => (u64::from(len), rest),
    };
    let opcode = OpCode::try_from(b0 & 0x0f).ok()?;
    (len == payload.len() as u64).then_some((opcode, payload))
}

/// Bytes asked of the socket per read: a typical request in one read.
const READ_CHUNK: usize = 512;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame from the client, unmasked.
#[derive(Debug)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
    /// RSV1: the first frame of a message compressed with permessage-deflate.
    pub compressed: bool,
}

/// Reads client frames from `stream`. Cancel safe: a partly read frame stays buffered for the
/// next call.
pub struct FrameReader<S> {
    stream: S,
    buf: BytesMut,
    max_frame: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a message's first frame.
    compressed: bool,
}

impl<S: AsyncRead + Unpin> FrameReader<S> {
    /// Frames with a payload over `max_frame` bytes are refused before they are read.
    pub fn new(stream: S, max_frame: usize) -> FrameReader<S> {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            max_frame,
            compressed: false,
        }
    }

    /// Accepts RSV1 on the first frame of a text or binary message (permessage-deflate).
    pub fn allow_compressed(&mut self, allow: bool) {
        self.compressed = allow;
    }

    /// The next frame; `Err` says why the connection must end (the client left, or broke a
    /// rule of the frame layer).
    pub async fn read_frame(&mut self) -> Result<ClientFrame, Disconnect> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let fin = b0 & 0x80 != 0;
        // RSV1 only with permessage-deflate, and only where a message starts (RFC 7692 §6.1);
        // no other extension exists here, so RSV2 and RSV3 never.
        let rsv1 = b0 & 0x40 != 0;
        let opcode = match OpCode::try_from(b0 & 0x0f) {
            Ok(opcode) if b0 & 0x30 == 0 && !rsv1 => opcode,
            Ok(opcode @ (OpCode::Text | OpCode::Binary)) if b0 & 0x30 == 0 && self.compressed => opcode,
            _ => return Err(Disconnect::ProtocolError),
        };
        if b1 & 0x80 == 0 {
            return Err(Disconnect::ProtocolError); // clients must mask every frame (§5.1)
        }
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extra + 4;
        self.fill(head).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")),
        };
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(Disconnect::ProtocolError);
        }
        if len > self.max_frame as u64 {
            return Err(Disconnect::MessageTooBig);
        }
        let len = len as usize;
        let mask: [u8; 4] = self.buf[head - 4..head].try_into().expect("4 bytes");
        self.fill(head + len).await?;
        self.buf.advance(head);
        let mut payload = self.buf.split_to(len);
        fastwebsockets::unmask(&mut payload, mask);
        if self.buf.is_empty() {
            // The buffer's memory goes with the payload, instead of staying with the reader.
            self.buf = BytesMut::new();
        }
        Ok(ClientFrame {
            fin,
            opcode,
            payload,
            compressed: rsv1,
        })
    }

    /// Reads until at least `n` bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), Disconnect> {
        while self.buf.len() < n {
            let read = if self.buf.is_empty() {
                self.read_fresh().await
            } else {
                self.buf.reserve((n - self.buf.len()).max(READ_CHUNK));
                self.stream.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) | Err(_) => return Err(Disconnect::ClientClose),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Waits for data with nothing buffered: the bytes land in a buffer that lives only while
    /// the socket is polled (not in the waiting future), and are copied into `buf` once they
    /// have arrived.
    async fn read_fresh(&mut self) -> io::Result<usize> {
        let Self { stream, buf, .. } = self;
        poll_fn(|cx| {
            // Not zeroed: this runs on every wake-up of the connection, data or not.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }
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
    fn ping_is_an_empty_final_ping_frame() {
        let built = encode(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])));
        assert_eq!(ping(), built);
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

    #[test]
    fn server_payloads_come_back_out_of_their_frames() {
        for n in [0usize, 10, 123, 124, 65533, 65534, 70000] {
            let s = "x".repeat(n);
            let f = json_frame(&s);
            let (opcode, payload) = server_payload(&f).unwrap();
            assert_eq!(opcode, OpCode::Text);
            assert_eq!(payload, format!("\"{s}\"").as_bytes(), "{n}");
            assert_eq!(server_payload(&f[..f.len() - 1]), None, "a cut frame");
        }
        assert_eq!(server_payload(&ping()), Some((OpCode::Ping, &[][..])));
        let close = close_frame(4008, "slow consumer");
        let (opcode, payload) = server_payload(&close).unwrap();
        assert_eq!((opcode, &payload[2..]), (OpCode::Close, &b"slow consumer"[..]));
        assert_eq!(server_payload(&client_frame(0x81, b"masked")), None);
        assert_eq!(server_payload(&[0x81]), None);
    }

    /// A masked client frame, as a client would send it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[tokio::test]
    async fn reads_frames_of_every_length_class_in_any_chunking() {
        let payloads: Vec<Vec<u8>> = [0usize, 5, 125, 126, 70_000, 3]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8).collect())
            .collect();
        let stream: Vec<u8> = payloads.iter().flat_map(|p| client_frame(0x82, p)).collect();
        for chunk in [1, 7, 1 << 20] {
            let (mut tx, rx) = tokio::io::duplex(chunk);
            let bytes = stream.clone();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                tx.write_all(&bytes).await.unwrap();
            });
            let mut reader = FrameReader::new(rx, 1 << 20);
            for p in &payloads {
                let f = reader.read_frame().await.unwrap();
                assert!(f.fin && f.opcode == OpCode::Binary);
                assert!(f.payload[..] == p[..], "chunk {chunk}, len {}", p.len());
            }
            writer.await.unwrap();
            assert_eq!(reader.read_frame().await.unwrap_err(), Disconnect::ClientClose);
            assert_eq!(reader.buf.capacity(), 0, "no read buffer is kept between frames");
        }
    }

    #[tokio::test]
    async fn refuses_what_the_frame_layer_forbids() {
        let mut unmasked = client_frame(0x81, b"hi");
        unmasked[1] &= 0x7f;
        let cases = [
            (unmasked, Disconnect::ProtocolError),
            (client_frame(0xc1, b"rsv1"), Disconnect::ProtocolError),
            (client_frame(0x83, b"opcode 3"), Disconnect::ProtocolError),
            (client_frame(0x09, b"fragmented ping"), Disconnect::ProtocolError),
            (client_frame(0x8a, &[0; 126]), Disconnect::ProtocolError),
            (client_frame(0x82, &[0; 101]), Disconnect::MessageTooBig),
        ];
        for (bytes, want) in cases {
            let mut reader = FrameReader::new(&bytes[..], 100);
            assert_eq!(reader.read_frame().await.unwrap_err(), want, "{bytes:02x?}");
        }
        // With permessage-deflate: RSV1 marks the first frame of a text or binary message only.
        let part = client_frame(0x41, b"part");
        let mut first = FrameReader::new(&part[..], 100);
        first.allow_compressed(true);
        let f = first.read_frame().await.unwrap();
        assert!(f.compressed && !f.fin && f.opcode == OpCode::Text);
        for bad in [0xc0u8, 0xc9, 0xa1, 0x91] {
            let bytes = client_frame(bad, b"x");
            let mut reader = FrameReader::new(&bytes[..], 100);
            reader.allow_compressed(true);
            assert_eq!(
                reader.read_frame().await.unwrap_err(),
                Disconnect::ProtocolError,
                "{bad:02x}"
            );
        }
        let exactly = client_frame(0x82, &[0; 100]);
        assert_eq!(
            FrameReader::new(&exactly[..], 100)
                .read_frame()
                .await
                .unwrap()
                .payload
                .len(),
            100
        );
    }
}
