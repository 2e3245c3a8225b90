//! The TCP accept loop and process-level set-up.
//!
//! [`run`] takes a bound listener and a shutdown future, so the binary passes Ctrl-C/SIGTERM
//! and tests pass their own signal after binding port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::error::ServerError;
use crate::feed;
use crate::http::{self, App};
use crate::hub::Hub;
use crate::settings::Settings;

/// Binds the listener, with a backlog sized for connection storms.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(4096).map_err(bind_err)
}

/// Raises the soft open-files limit to the hard limit: every connection is a descriptor.
/// Returns the resulting soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves connections on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let rules = settings.topic_rules()?;
    let hub = Arc::new(Hub::new(rules));
    let settings = Arc::new(settings);
    let feed = settings
        .feed
        .enabled
        .then(|| tokio::spawn(feed::run(hub.clone(), settings.feed.clone())));
    let app = Arc::new(App { hub, settings });
    info!(addr = %listener.local_addr()?, "listening");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| http::handle(req, app.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
    if let Some(feed) = feed {
        feed.abort();
    }
    info!("stopped accepting connections");
    Ok(())
}
