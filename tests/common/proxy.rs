//! A TCP proxy in front of the server whose connections a test can cut (as a network or a
//! load balancer drops them, with no close of any protocol) and whose door it can close (new
//! connections are dropped at once), to exercise reconnects and recovery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
pub struct ProxyState {
    open: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
    /// The first line (HTTP request line) of every connection forwarded.
    request_lines: Mutex<Vec<String>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        state.open.store(true, Ordering::SeqCst);
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !shared.open.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the client's handshake fails
                    continue;
                }
                let state = shared.clone();
                let task = tokio::spawn(forward(inbound, target, state));
                shared.connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, state, accept }
    }

    /// Cuts every forwarded connection (both sockets dropped: no close frame).
    pub fn cut(&self) {
        for conn in self.state.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn set_open(&self, open: bool) {
        self.state.open.store(open, Ordering::SeqCst);
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.state.request_lines.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, state: Arc<ProxyState>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let mut first = vec![0u8; 4096];
    let n = inbound.read(&mut first).await.unwrap_or(0);
    let line = String::from_utf8_lossy(&first[..n]);
    let line = line.lines().next().unwrap_or("").to_string();
    state.request_lines.lock().unwrap().push(line);
    if outbound.write_all(&first[..n]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
