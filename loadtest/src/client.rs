//! Opening client connections: TCP from a chosen loopback source address, and the WebSocket
//! upgrade (RFC 6455 section 4) done by hand, so that the connection can then be read with the
//! raw frame parser. The upgrade may offer permessage-deflate ([`crate::deflate`]); a server that
//! does not accept it fails the connection, so a run with `--deflate` measures only compressed
//! connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// xorshift64: masking keys and handshake nonces (not security relevant for a load tool).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// Opens a TCP connection to `addr`, bound to `src` when given. The port is left to
/// `connect(2)` (`IP_BIND_ADDRESS_NO_PORT`), so each source address has the whole ephemeral
/// range for every destination instead of one bind-time port per socket.
pub async fn open(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source address {ip} and server address {addr} are of different families"),
            ));
        }
        if ip.is_ipv4() {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket descriptor and a pointer to a live c_int of the given size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh `Sec-WebSocket-Key`.
pub fn new_key(rng: &mut Rng) -> String {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    k[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The values of every header `name` in a response head, in order.
fn header_values<'a>(head: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    head.lines().skip(1).filter_map(move |l| {
        let (n, value) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Checks an upgrade response head (without the final blank line); `deflate`: the request
/// offered permessage-deflate, which the answer must accept. Without the offer, an answer
/// with an extension fails (RFC 6455 §4.1: the client did not ask for it).
pub fn check_upgrade_response(head: &str, key: &str, deflate: bool) -> Result<(), String> {
    let status_line = head.lines().next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "101" {
        return Err(format!("upgrade refused: {status_line}"));
    }
    let accept = header_values(head, "sec-websocket-accept").next();
    let want = accept_key(key);
    if accept != Some(want.as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept {accept:?}, expected {want:?}"));
    }
    let mut extensions = header_values(head, "sec-websocket-extensions").peekable();
    match (deflate, extensions.peek()) {
        (true, _) => crate::deflate::check_answer(extensions),
        (false, None) => Ok(()),
        (false, Some(e)) => Err(format!(
            "the server answered with an extension not offered: {e:?}"
        )),
    }
}

/// Performs the HTTP/1.1 upgrade on an open stream, offering permessage-deflate when
/// `deflate`. Returns the bytes received after the response head (the server may send its first
/// frames in the same segment).
pub async fn handshake(
    s: &mut TcpStream,
    host: &str,
    path: &str,
    rng: &mut Rng,
    deflate: bool,
) -> io::Result<Vec<u8>> {
    let key = new_key(rng);
    let offer = match deflate {
        true => format!("Sec-WebSocket-Extensions: {}\r\n", crate::deflate::OFFER),
        false => String::new(),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}User-Agent: tickwire-loadtest\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let (head, rest) = read_head(s, "the upgrade").await?;
    check_upgrade_response(&head, &key, deflate).map_err(io::Error::other)?;
    Ok(rest)
}

/// Reads an HTTP response head (at most [`MAX_RESPONSE_HEAD`] bytes) during `what`: the head,
/// and the bytes received after it.
pub async fn read_head(s: &mut TcpStream, what: &str) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            let why = format!("connection closed during {what}");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf.split_off(end + 4)));
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(io::Error::other(format!("response head too large during {what}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_responses() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                  sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert!(check_upgrade_response(ok, key, false).is_ok());
        let refused = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0";
        assert!(check_upgrade_response(refused, key, false)
            .unwrap_err()
            .contains("503"));
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope";
        assert!(check_upgrade_response(wrong, key, false)
            .unwrap_err()
            .contains("Accept"));
    }

    #[test]
    fn the_deflate_answer_is_required_when_offered_and_refused_when_not() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let answer = "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                      client_no_context_takeover";
        let with = format!("{ok}{answer}");
        assert!(check_upgrade_response(&with, key, true).is_ok());
        let e = check_upgrade_response(ok, key, true).unwrap_err();
        assert!(e.contains("did not accept"), "{e}");
        let e = check_upgrade_response(&with, key, false).unwrap_err();
        assert!(e.contains("not offered"), "{e}");
    }

    #[test]
    fn keys_are_16_bytes_base64() {
        let mut rng = Rng::new(42);
        let k = new_key(&mut rng);
        let raw = base64::engine::general_purpose::STANDARD.decode(&k).unwrap();
        assert_eq!(raw.len(), 16);
        assert_ne!(k, new_key(&mut rng));
    }
}
