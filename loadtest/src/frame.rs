//! WebSocket framing for the client side (RFC 6455): a zero-copy parser for server frames and
//! the encoder for masked client frames.
//!
//! The parser works on whatever bytes a `read(2)` returned: [`Reassembler::feed`] handles every
//! complete frame in the slice, in place, and says how many bytes it consumed; the caller keeps
//! the rest (a partial frame) and feeds it again with the next read. Unfragmented messages are
//! handed out as slices of the read buffer, without copying; only fragmented messages are
//! collected into the connection's own buffer.
//!
//! With permessage-deflate negotiated ([`Reassembler::new`]), RSV1 on a message's first frame
//! marks it compressed: it is handed out as [`Event::Compressed`], still compressed, and the
//! receiver inflates it ([`crate::deflate`]) with the thread's one inflater. Without it, or on a
//! control or continuation frame, RSV1 is a protocol error (RFC 7692 §6).

use std::fmt;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Frames or messages larger than this are refused (the server never sends anything close).
pub const MAX_MESSAGE: usize = 64 << 20;

/// A frame header as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate), if the extension was negotiated.
    pub rsv1: bool,
    pub opcode: u8,
    /// Header bytes, including the masking key when present.
    pub header_len: usize,
    pub payload_len: usize,
    pub mask: Option<[u8; 4]>,
}

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// How a message came on the wire: its frame's size (header and payload as sent) and whether
/// it was compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub len: usize,
    pub compressed: bool,
}

impl Wire {
    /// An unfragmented frame from the server carrying `payload_len` bytes.
    pub fn of(payload_len: usize, compressed: bool) -> Wire {
        Wire {
            len: server_frame_len(payload_len),
            compressed,
        }
    }
}

/// The wire size of an unfragmented, unmasked frame (what a server sends) carrying `payload_len`
/// bytes: the payload and its 2-, 4- or 10-byte header.
pub fn server_frame_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    header + payload_len
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    ReservedBits(u8),
    /// RSV1 without permessage-deflate negotiated.
    Rsv1NotNegotiated,
    /// RSV1 on a control or continuation frame (opcode).
    Rsv1Misplaced(u8),
    UnknownOpcode(u8),
    ControlTooLong(usize),
    ControlFragmented(u8),
    TooLarge(usize),
    UnexpectedContinuation,
    InterleavedData,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits(b) => write!(f, "reserved bits set in first byte {b:#04x}"),
            FrameError::Rsv1NotNegotiated => write!(f, "RSV1 set without permessage-deflate negotiated"),
            FrameError::Rsv1Misplaced(op) => {
                write!(f, "RSV1 set on a control or continuation frame (opcode {op:#x})")
            }
            FrameError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::ControlTooLong(n) => write!(f, "control frame with {n}-byte payload (max 125)"),
            FrameError::ControlFragmented(op) => write!(f, "fragmented control frame (opcode {op:#x})"),
            FrameError::TooLarge(n) => write!(f, "message of {n} bytes exceeds {MAX_MESSAGE}"),
            FrameError::UnexpectedContinuation => {
                write!(f, "continuation frame without a message to continue")
            }
            FrameError::InterleavedData => write!(f, "new data frame while a fragmented message is open"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses one frame header from the start of `buf`. `Ok(None)`: not enough bytes yet. RSV1 is
/// reported (whether it may be set is the [`Reassembler`]'s to say); RSV2 and RSV3 are errors.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x30 != 0 {
        return Err(FrameError::ReservedBits(b0));
    }
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::UnknownOpcode(opcode));
    }
    let (payload_len, mut header_len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (usize::try_from(n).unwrap_or(usize::MAX), 10)
        }
        n => (n as usize, 2),
    };
    if opcode >= OP_CLOSE {
        if payload_len > 125 {
            return Err(FrameError::ControlTooLong(payload_len));
        }
        if !fin {
            return Err(FrameError::ControlFragmented(opcode));
        }
    }
    if payload_len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(payload_len));
    }
    let mask = if b1 & 0x80 != 0 {
        if buf.len() < header_len + 4 {
            return Ok(None);
        }
        let m = [
            buf[header_len],
            buf[header_len + 1],
            buf[header_len + 2],
            buf[header_len + 3],
        ];
        header_len += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        header_len,
        payload_len,
        mask,
    }))
}

/// A complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    /// A message with RSV1 (permessage-deflate), its payload as it came: still to inflate.
    Compressed {
        binary: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    /// The close code, when the frame carried one.
    Close(Option<u16>),
}

/// Per-connection reassembly state for fragmented messages.
#[derive(Default)]
pub struct Reassembler {
    /// Payload of the fragmented message in progress.
    partial: Vec<u8>,
    /// Opcode of the fragmented message in progress (0: none).
    partial_op: u8,
    /// Whether the fragmented message in progress is compressed (RSV1 on its first frame).
    partial_compressed: bool,
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    deflate: bool,
    /// Scratch space to unmask a (non-conforming) masked server frame.
    unmasked: Vec<u8>,
}

/// A whole message as its event.
fn message(opcode: u8, compressed: bool, payload: &[u8]) -> Event<'_> {
    let binary = opcode == OP_BINARY;
    match (compressed, binary) {
        (true, _) => Event::Compressed { binary, payload },
        (false, false) => Event::Text(payload),
        (false, true) => Event::Binary(payload),
    }
}

impl Reassembler {
    /// The state of a new connection; `deflate`: permessage-deflate was negotiated.
    pub fn new(deflate: bool) -> Reassembler {
        Reassembler {
            deflate,
            ..Reassembler::default()
        }
    }

    /// Handles every complete frame at the start of `buf`, calling `on_event` for each message
    /// and control frame; returns the bytes consumed. Stops after a close frame.
    pub fn feed(&mut self, buf: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Result<usize, FrameError> {
        let mut at = 0;
        while let Some(h) = parse_header(&buf[at..])? {
            if h.rsv1 && !self.deflate {
                return Err(FrameError::Rsv1NotNegotiated);
            }
            if h.rsv1 && !matches!(h.opcode, OP_TEXT | OP_BINARY) {
                return Err(FrameError::Rsv1Misplaced(h.opcode));
            }
            if buf.len() - at < h.frame_len() {
                break;
            }
            let start = at + h.header_len;
            let mut payload = &buf[start..start + h.payload_len];
            at += h.frame_len();
            if let Some(mask) = h.mask {
                self.unmasked.clear();
                let bytes = payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]);
                self.unmasked.extend(bytes);
                payload = &self.unmasked;
            }
            match h.opcode {
                OP_TEXT | OP_BINARY if self.partial_op != 0 => return Err(FrameError::InterleavedData),
                OP_TEXT | OP_BINARY if h.fin => on_event(message(h.opcode, h.rsv1, payload)),
                OP_TEXT | OP_BINARY => {
                    self.partial_op = h.opcode;
                    self.partial_compressed = h.rsv1;
                    self.partial.clear();
                    self.partial.extend_from_slice(payload);
                }
                OP_CONTINUATION => {
                    if self.partial_op == 0 {
                        return Err(FrameError::UnexpectedContinuation);
                    }
                    if self.partial.len() + payload.len() > MAX_MESSAGE {
                        return Err(FrameError::TooLarge(self.partial.len() + payload.len()));
                    }
                    self.partial.extend_from_slice(payload);
                    if h.fin {
                        let op = std::mem::take(&mut self.partial_op);
                        let whole = std::mem::take(&mut self.partial);
                        on_event(message(op, self.partial_compressed, &whole));
                        self.partial = whole;
                        self.partial.clear();
                        if self.partial.capacity() > 1 << 20 {
                            self.partial = Vec::new();
                        }
                    }
                }
                OP_PING => on_event(Event::Ping(payload)),
                OP_PONG => on_event(Event::Pong),
                OP_CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    on_event(Event::Close(code));
                    break;
                }
                _ => unreachable!("opcode validated by parse_header"),
            }
        }
        Ok(at)
    }
}

/// Appends a final, masked client frame (clients must mask every frame).
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame.
    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(n as u8);
        } else if n <= u16::MAX as usize {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Compressed(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn collect(r: &mut Reassembler, buf: &[u8], out: &mut Vec<Owned>) -> usize {
        r.feed(buf, |e| {
            out.push(match e {
                Event::Text(p) => Owned::Text(p.to_vec()),
                Event::Binary(p) => Owned::Binary(p.to_vec()),
                Event::Compressed { binary, payload } => Owned::Compressed(binary, payload.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong => Owned::Pong,
                Event::Close(c) => Owned::Close(c),
            })
        })
        .unwrap()
    }

    #[test]
    fn header_length_classes() {
        for n in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
            let f = server_frame(OP_TEXT, true, &vec![b'x'; n]);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, n);
            assert_eq!(h.frame_len(), f.len());
            assert_eq!(server_frame_len(n), f.len());
            assert!(h.fin && h.opcode == OP_TEXT && h.mask.is_none());
            // every strict prefix of the header is "need more"
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut]).unwrap(), None, "n={n} cut={cut}");
            }
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(parse_header(&[0xA1, 0]), Err(FrameError::ReservedBits(0xA1)));
        assert_eq!(parse_header(&[0xD1, 0]), Err(FrameError::ReservedBits(0xD1)));
        assert!(parse_header(&[0xC1, 0]).unwrap().unwrap().rsv1);
        assert_eq!(parse_header(&[0x83, 0]), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(
            parse_header(&[0x89, 126, 0, 200]),
            Err(FrameError::ControlTooLong(200))
        );
        assert_eq!(parse_header(&[0x09, 0]), Err(FrameError::ControlFragmented(9)));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(parse_header(&huge), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn messages_split_at_every_byte() {
        let mut wire = server_frame(OP_TEXT, true, br#"{"a":1}"#);
        wire.extend(server_frame(OP_TEXT, false, b"frag"));
        wire.extend(server_frame(OP_PING, true, b"hi")); // control frame between fragments
        wire.extend(server_frame(OP_CONTINUATION, false, b"men"));
        wire.extend(server_frame(OP_CONTINUATION, true, b"ted"));
        wire.extend(server_frame(OP_BINARY, true, &[7u8; 300]));
        wire.extend(server_frame(OP_PONG, true, b""));
        wire.extend(server_frame(OP_CLOSE, true, &1001u16.to_be_bytes()));
        wire.extend(server_frame(OP_TEXT, true, b"after close"));
        let want = vec![
            Owned::Text(br#"{"a":1}"#.to_vec()),
            Owned::Ping(b"hi".to_vec()),
            Owned::Text(b"fragmented".to_vec()),
            Owned::Binary(vec![7u8; 300]),
            Owned::Pong,
            Owned::Close(Some(1001)),
        ];
        for cut in 0..=wire.len() {
            let mut r = Reassembler::default();
            let mut got = Vec::new();
            let used = collect(&mut r, &wire[..cut], &mut got);
            // After a close frame the connection reads no further.
            if !got.iter().any(|e| matches!(e, Owned::Close(_))) {
                let mut rest = wire[used..cut].to_vec();
                rest.extend_from_slice(&wire[cut..]);
                collect(&mut r, &rest, &mut got);
            }
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    /// A frame with RSV1 set.
    fn compressed(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = server_frame(opcode, fin, payload);
        f[0] |= 0x40;
        f
    }

    #[test]
    fn rsv1_marks_compressed_messages_once_negotiated() {
        let mut wire = compressed(OP_TEXT, true, b"deflated");
        wire.extend(server_frame(OP_TEXT, true, b"plain"));
        // A fragmented compressed message: RSV1 on the first frame only, a ping between.
        wire.extend(compressed(OP_BINARY, false, b"def"));
        wire.extend(server_frame(OP_PING, true, b""));
        wire.extend(server_frame(OP_CONTINUATION, true, b"lated"));
        let want = vec![
            Owned::Compressed(false, b"deflated".to_vec()),
            Owned::Text(b"plain".to_vec()),
            Owned::Ping(Vec::new()),
            Owned::Compressed(true, b"deflated".to_vec()),
        ];
        for cut in 0..=wire.len() {
            let mut r = Reassembler::new(true);
            let mut got = Vec::new();
            let used = collect(&mut r, &wire[..cut], &mut got);
            let mut rest = wire[used..cut].to_vec();
            rest.extend_from_slice(&wire[cut..]);
            collect(&mut r, &rest, &mut got);
            assert_eq!(got, want, "cut at {cut}");
        }
        // Not negotiated; on a control frame; on a continuation.
        let mut r = Reassembler::default();
        let one = compressed(OP_TEXT, true, b"x");
        assert_eq!(r.feed(&one, |_| {}), Err(FrameError::Rsv1NotNegotiated));
        let mut r = Reassembler::new(true);
        let ping = compressed(OP_PING, true, b"");
        assert_eq!(r.feed(&ping, |_| {}), Err(FrameError::Rsv1Misplaced(OP_PING)));
        let mut r = Reassembler::new(true);
        let mut split = server_frame(OP_TEXT, false, b"a");
        split.extend(compressed(OP_CONTINUATION, true, b"b"));
        assert_eq!(
            r.feed(&split, |_| {}),
            Err(FrameError::Rsv1Misplaced(OP_CONTINUATION))
        );
    }

    #[test]
    fn protocol_violations() {
        let mut r = Reassembler::default();
        let cont = server_frame(OP_CONTINUATION, true, b"x");
        assert_eq!(r.feed(&cont, |_| {}), Err(FrameError::UnexpectedContinuation));
        let mut r = Reassembler::default();
        let mut wire = server_frame(OP_TEXT, false, b"a");
        wire.extend(server_frame(OP_TEXT, true, b"b"));
        assert_eq!(r.feed(&wire, |_| {}), Err(FrameError::InterleavedData));
    }

    #[test]
    fn masked_frames_round_trip() {
        for n in [0usize, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut f = Vec::new();
            encode_masked(OP_TEXT, &payload, [1, 2, 3, 4], &mut f);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!((h.payload_len, h.mask), (n, Some([1, 2, 3, 4])));
            let mut r = Reassembler::default();
            let mut got = Vec::new();
            assert_eq!(collect(&mut r, &f, &mut got), f.len());
            assert_eq!(got, vec![Owned::Text(payload)]);
        }
    }
}
