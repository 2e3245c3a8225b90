//! Server-Sent Events for `fanout --sse` (docs/protocol.md §12): the `GET /sse?topics=…`
//! request, the response head's check, and a small, bounded parser of what follows: HTTP/1.1's
//! chunked transfer coding (hyper streams the body so; one chunk per batch of events), then the
//! `event:`/`data:` lines of the stream.
//!
//! An event's `data:` is exactly the JSON of the WebSocket frame (one line), so the pool reads
//! it with the same [`crate::proto::classify`] as a WebSocket message: seq, send stamp, loss and
//! latency are counted the same way. The parser copies each event's data once into the
//! connection's reused buffer (an event may span two reads); a connection holds no buffer until
//! its first event, and a line or an event longer than [`MAX_LINE`] fails the connection.
//!
//! Line ends: LF and CRLF (the server writes LF). A lone CR, which the SSE grammar also allows,
//! is not taken for a line end: the server never sends one.

use std::fmt;
use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The longest line, and the longest event's data, accepted (the load's events are a few
/// hundred bytes).
pub const MAX_LINE: usize = 64 << 10;
/// The longest chunk-size line (hex digits and any extensions).
const MAX_SIZE_LINE: usize = 256;
/// The largest chunk accepted.
const MAX_CHUNK: usize = 64 << 20;

/// The request line and headers of `GET /sse?topics=<topics, comma-separated>`.
pub fn request<S: AsRef<str>>(host: &str, topics: &[S]) -> Vec<u8> {
    let mut query = String::new();
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            query.push(',');
        }
        percent_encode(t.as_ref(), &mut query);
    }
    format!(
        "GET /sse?topics={query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\nUser-Agent: tickwire-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Checks a response head (without the final blank line): `200` with `text/event-stream`.
/// Returns whether the body is chunked (otherwise it runs until the connection closes).
pub fn check_response(head: &str) -> Result<bool, String> {
    let status_line = head.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("stream refused: {status_line}"));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    match header("content-type") {
        Some(t) if t.starts_with("text/event-stream") => {}
        t => return Err(format!("not an event stream: content-type {t:?}")),
    }
    Ok(header("transfer-encoding").is_some_and(|te| te.contains("chunked")))
}

/// Sends `request` (from [`request`]) on an open stream and reads the response head. Returns
/// the body's decoder and the bytes received after the head (the first events may come with it).
pub async fn open(s: &mut TcpStream, request: &[u8]) -> io::Result<(Decoder, Vec<u8>)> {
    s.write_all(request).await?;
    let (head, rest) = crate::client::read_head(s, "the response head").await?;
    let chunked = check_response(&head).map_err(io::Error::other)?;
    Ok((Decoder::new(chunked), rest))
}

/// What the stream carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// An event with data: its name (`event:`, `message` without one) and its data (`data:`
    /// lines joined with LF).
    Message { name: &'a [u8], data: &'a [u8] },
    /// A comment line (the heartbeat, `: ping`).
    Comment,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SseError {
    /// The response ended (its last chunk).
    Ended,
    BadChunk(&'static str),
    LineTooLong,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::Ended => f.write_str("the stream ended"),
            SseError::BadChunk(why) => write!(f, "bad chunked coding: {why}"),
            SseError::LineTooLong => write!(f, "a line or an event over {MAX_LINE} bytes"),
        }
    }
}

/// Where the chunked coding stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Not chunked: every byte is the stream's.
    Identity,
    /// In a chunk-size line: the size so far, its digits, the line's length, in an extension.
    Size {
        size: usize,
        digits: usize,
        len: usize,
        ext: bool,
    },
    /// In a chunk's data, this many bytes left.
    Data(usize),
    /// After a chunk's data, before its CRLF (`cr`: the CR seen).
    DataEnd { cr: bool },
}

const SIZE_LINE: Chunk = Chunk::Size {
    size: 0,
    digits: 0,
    len: 0,
    ext: false,
};

/// One stream's parser state.
#[derive(Debug)]
pub struct Decoder {
    chunk: Chunk,
    /// A line cut by the end of a read, carried to the next.
    line: Vec<u8>,
    /// The current event's name and data.
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl Decoder {
    pub fn new(chunked: bool) -> Decoder {
        Decoder {
            chunk: if chunked { SIZE_LINE } else { Chunk::Identity },
            line: Vec::new(),
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
        }
    }

    /// Parses `input` (all of it: what is incomplete is kept), calling `on_event` for every
    /// complete event and comment.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Result<(), SseError> {
        while !input.is_empty() {
            match self.chunk {
                Chunk::Identity => {
                    self.lines(input, &mut on_event)?;
                    return Ok(());
                }
                Chunk::Data(left) => {
                    let n = left.min(input.len());
                    self.lines(&input[..n], &mut on_event)?;
                    input = &input[n..];
                    self.chunk = if n == left {
                        Chunk::DataEnd { cr: false }
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd { cr } => {
                    self.chunk = match (input[0], cr) {
                        (b'\r', false) => Chunk::DataEnd { cr: true },
                        (b'\n', _) => SIZE_LINE,
                        _ => return Err(SseError::BadChunk("no CRLF after a chunk")),
                    };
                    input = &input[1..];
                }
                Chunk::Size {
                    mut size,
                    mut digits,
                    mut len,
                    mut ext,
                } => {
                    let b = input[0];
                    input = &input[1..];
                    len += 1;
                    if len > MAX_SIZE_LINE {
                        return Err(SseError::BadChunk("chunk-size line too long"));
                    }
                    match b {
                        b'\n' if digits == 0 => return Err(SseError::BadChunk("no chunk size")),
                        b'\n' if size == 0 => return Err(SseError::Ended),
                        b'\n' => {
                            self.chunk = Chunk::Data(size);
                            continue;
                        }
                        b'\r' => {}
                        _ if ext => {}
                        b';' => ext = true,
                        _ => {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or(SseError::BadChunk("not a hex chunk size"))?;
                            size = size * 16 + d as usize;
                            digits += 1;
                            if size > MAX_CHUNK {
                                return Err(SseError::BadChunk("chunk too large"));
                            }
                        }
                    }
                    self.chunk = Chunk::Size {
                        size,
                        digits,
                        len,
                        ext,
                    };
                }
            }
        }
        Ok(())
    }

    /// Splits stream bytes into lines.
    fn lines(&mut self, mut input: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<(), SseError> {
        while let Some(end) = memchr::memchr(b'\n', input) {
            if self.line.is_empty() {
                self.on_line(&input[..end], on_event)?;
            } else {
                if self.line.len() + end > MAX_LINE {
                    return Err(SseError::LineTooLong);
                }
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..end]);
                self.on_line(&line, on_event)?;
                line.clear();
                self.line = line;
            }
            input = &input[end + 1..];
        }
        if self.line.len() + input.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(input);
        Ok(())
    }

    /// One line, without its LF.
    fn on_line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<(), SseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The blank line: the event is complete.
            if self.has_data {
                let name: &[u8] = if self.name.is_empty() {
                    b"message"
                } else {
                    &self.name
                };
                on_event(Event::Message {
                    name,
                    data: &self.data,
                });
            }
            self.name.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            on_event(Event::Comment);
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_LINE {
                    return Err(SseError::LineTooLong);
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            // `id:` (the position, for Last-Event-ID), `retry:` and unknown fields: not needed.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(d: &mut Decoder, input: &[u8]) -> (Vec<(String, String)>, Result<(), SseError>) {
        let mut out = Vec::new();
        let r = d.feed(input, |e| match e {
            Event::Message { name, data } => out.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(data).into_owned(),
            )),
            Event::Comment => out.push((":".into(), String::new())),
        });
        (out, r)
    }

    fn chunked(body: &[u8]) -> Vec<u8> {
        let mut v = format!("{:x}\r\n", body.len()).into_bytes();
        v.extend_from_slice(body);
        v.extend_from_slice(b"\r\n");
        v
    }

    const STREAM: &[u8] = b"event: subscribed\ndata: {\"type\":\"subscribed\"}\n\n\
        : ping\n\n\
        event: update\nid: AQEG\ndata: {\"type\":\"update\",\"seq\":4}\n\n";

    fn expected() -> Vec<(String, String)> {
        vec![
            ("subscribed".into(), r#"{"type":"subscribed"}"#.into()),
            (":".into(), String::new()),
            ("update".into(), r#"{"type":"update","seq":4}"#.into()),
        ]
    }

    #[test]
    fn events_split_at_every_byte_come_out_whole() {
        let mut wire = chunked(&STREAM[..30]);
        wire.extend(chunked(&STREAM[30..]));
        for cut in 0..wire.len() {
            let mut d = Decoder::new(true);
            let (mut got, r) = events(&mut d, &wire[..cut]);
            r.unwrap();
            let (more, r) = events(&mut d, &wire[cut..]);
            r.unwrap();
            got.extend(more);
            assert_eq!(got, expected(), "cut at {cut}");
        }
    }

    #[test]
    fn identity_bodies_crlf_and_multiline_data() {
        let mut d = Decoder::new(false);
        let (got, r) = events(&mut d, b"data: a\r\ndata:b\r\n\r\nevent: x\n\n");
        r.unwrap();
        // The second event has no data: nothing is dispatched.
        assert_eq!(got, vec![("message".to_string(), "a\nb".to_string())]);
    }

    #[test]
    fn the_last_chunk_ends_the_stream_and_bad_codings_fail() {
        let mut d = Decoder::new(true);
        let mut wire = chunked(b"data: x\n\n");
        wire.extend_from_slice(b"0\r\n\r\n");
        let (got, r) = events(&mut d, &wire);
        assert_eq!(got.len(), 1);
        assert_eq!(r, Err(SseError::Ended));
        for bad in [&b"zz\r\n"[..], b"\r\n", b"3\r\nabcX"] {
            let r = Decoder::new(true).feed(bad, |_| {});
            assert!(matches!(r, Err(SseError::BadChunk(_))), "{bad:?}: {r:?}");
        }
        assert!(Decoder::new(true).feed(&[b'1'; 300], |_| {}).is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let mut d = Decoder::new(false);
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(d.feed(&long, |_| {}), Err(SseError::LineTooLong));
        let mut d = Decoder::new(false);
        let mut data = b"data: ".to_vec();
        data.extend(vec![b'a'; MAX_LINE / 2]);
        data.push(b'\n');
        d.feed(&data, |_| {}).unwrap();
        assert_eq!(d.feed(&data, |_| {}), Err(SseError::LineTooLong));
    }

    #[test]
    fn requests_and_response_heads() {
        let r = String::from_utf8(request("127.0.0.1:8080", &["bench.t0", "chat.>"])).unwrap();
        assert!(r.starts_with("GET /sse?topics=bench.t0,chat.%3E HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked";
        assert_eq!(check_response(ok), Ok(true));
        let plain = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8";
        assert_eq!(check_response(plain), Ok(false));
        assert!(
            check_response("HTTP/1.1 403 Forbidden\r\ncontent-type: application/json")
                .unwrap_err()
                .contains("403")
        );
        assert!(check_response("HTTP/1.1 200 OK\r\ncontent-type: application/json").is_err());
    }
}
