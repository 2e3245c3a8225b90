//! The TCP accept loops, the graceful drain, and process-level set-up.
//!
//! [`run`] takes bound listeners and a shutdown future, so the binary passes Ctrl-C/SIGTERM
//! and tests pass their own signal after binding port 0.
//!
//! Besides the listeners it runs the reloader (SIGHUP and watched files: `reload.rs`) and, with
//! `auth.jwt.jwks_url`, the JWKS fetch task (`jwks.rs`), whose first fetch it waits for before
//! accepting connections.
//!
//! Drain: when `shutdown` resolves, `/readyz` turns 503, the main listener stops accepting,
//! every WebSocket gets its queued messages and then close 1001, HTTP keep-alive connections
//! finish their request in flight (a request body still arriving is cut at `http.body_timeout`),
//! and `run` returns once all of them are done or `server.shutdown_timeout` has passed,
//! whichever comes first.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::auth::Auth;
use crate::cluster::node::Node;
use crate::feed;
use crate::metrics::{Metrics, REJECT_HANDSHAKE_TIMEOUT, REJECT_PROXY_PROTOCOL, REJECT_TLS};
use crate::prepare::{prepare, Prepared};
use crate::pubsub::hub::Hub;
use crate::reload;
use crate::settings::{AuthMode, Settings, SettingsError};
use crate::transport::http::{self, Routes};
use crate::transport::proxy::{self, PeerAddrs};

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot bind {addr}")]
    Bind { addr: String, source: std::io::Error },
    #[error("listener failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Node(#[from] crate::cluster::node::StartError),
}

/// How often expired history entries are dropped from topics nobody touches, at most.
const HISTORY_SWEEP: Duration = Duration::from_secs(5);

/// How often the hub is swept: every 5 s, or every half `topics.idle_ttl` when that is shorter,
/// so that an idle topic lives at most 1.5 × idle_ttl.
fn sweep_interval(idle_ttl: Option<Duration>) -> Duration {
    idle_ttl.map_or(HISTORY_SWEEP, |ttl| HISTORY_SWEEP.min(ttl / 2))
}

/// Binds a listener, with a backlog sized for connection storms.
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

/// Serves every route on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve(listener, None, settings, shutdown).await
}

/// Like [`run`], with the operator routes on a separate `admin` listener when given.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new()?);
    let node = Arc::new(Node::start(&settings, metrics.clone())?);
    let hub = node.hub().clone();
    let Prepared { auth, proxies, tls } = prepare(&settings)?;
    let (tls, certificate) = match tls {
        Some(t) => (Some(t.acceptor), Some(t.certificate)),
        None => (None, None),
    };
    warn_if_open(&auth, tls.is_some());
    let settings = Arc::new(settings);
    let app = Arc::new(App::new(node.clone(), settings.clone(), metrics, auth, proxies));
    let jwks = match app.auth.jwks() {
        Some(remote) => Some(remote.start(app.metrics.clone()).await),
        None => None,
    };
    let reloader = tokio::spawn(reload::run(app.clone(), certificate));
    let feed = (settings.feed.enabled).then(|| tokio::spawn(feed::run(node, settings.feed.clone())));
    // Stopped when the drain starts, in this order.
    let background = [feed, Some(sweeper(hub)), Some(reloader), jwks];
    info!(addr = %listener.local_addr()?, tls = tls.is_some(), "listening");
    let (routes, admin) = match admin {
        Some(admin) => {
            info!(addr = %admin.local_addr()?, "admin listening (/metrics, /healthz, /readyz)");
            // Not tracked by the drain: probes and scrapes must keep working until we return.
            // No PROXY header either: probes and scrapes reach it directly, not through the
            // load balancer, even when they come from a trusted network.
            let admin = tokio::spawn(accept_loop(admin, None, app.clone(), Routes::Admin, false, false));
            (Routes::Public, Some(admin))
        }
        None => (Routes::All, None),
    };

    tokio::select! {
        () = accept_loop(listener, tls, app.clone(), routes, true, settings.server.proxy_protocol) => {}
        () = shutdown => {}
    }
    drain(
        &app,
        background.into_iter().flatten(),
        settings.server.shutdown_timeout,
    )
    .await;
    if let Some(admin) = admin {
        admin.abort();
        // Wait for the abort, so the admin port is released when we return.
        let _ = admin.await;
    }
    Ok(())
}

/// Drops idle topics (`topics.idle_ttl`) every half of the ttl.
fn sweeper(hub: Arc<Hub>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(sweep_interval(hub.bounds().idle_ttl));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // A walk over every topic: on the blocking pool, not on a worker serving sockets.
            let hub = hub.clone();
            if let Ok(evicted @ 1..) = tokio::task::spawn_blocking(move || hub.sweep()).await {
                debug!(evicted, "idle topics dropped");
            }
        }
    })
}

/// Stops accepting work: cancels every connection, stops the `background` tasks, and waits up
/// to `timeout` for the connections to finish.
async fn drain(app: &App, background: impl Iterator<Item = JoinHandle<()>>, timeout: Duration) {
    info!("draining");
    app.drain.cancel();
    background.for_each(|task| task.abort());
    app.tasks.close();
    match tokio::time::timeout(timeout, app.tasks.wait()).await {
        Ok(()) => info!("drained"),
        Err(_) => warn!(
            open = app.tasks.len(),
            "shutdown timeout: closing remaining connections"
        ),
    }
}

/// Says at start-up what is open to anyone who can reach the port.
fn warn_if_open(auth: &Auth, tls: bool) {
    if auth.mode() == AuthMode::None {
        warn!("auth.mode = \"none\": WebSocket clients need no token (the auth.anonymous ACL applies)");
    }
    if auth.http_is_open() {
        warn!("no auth.api_keys: anyone who can reach the port can publish over HTTP");
    }
    if !tls {
        info!("no tls.cert: serving plain ws:// and http://");
    }
}

/// Accepts connections until the task is dropped. `tracked` connections are waited for by the
/// drain and asked to finish when it starts. With `proxy_protocol`, connections from trusted
/// proxies start with a PROXY header.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    routes: Routes,
    tracked: bool,
    proxy_protocol: bool,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let proxy_protocol = proxy_protocol && app.proxies.contains(peer.ip());
                let conn = connection(
                    stream,
                    tls.clone(),
                    peer,
                    proxy_protocol,
                    app.clone(),
                    routes,
                    tracked,
                );
                if tracked {
                    app.tasks.spawn(conn);
                } else {
                    tokio::spawn(conn);
                }
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one TCP connection: the PROXY protocol header first when `proxy_protocol` (the
/// setting is on and the peer is a trusted proxy), then the TLS handshake when `tls` is set (both here, in
/// the connection's own task, together bounded by `server.handshake_timeout`), then HTTP/1.1.
async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    proxy_protocol: bool,
    app: Arc<App>,
    routes: Routes,
    tracked: bool,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "set_nodelay failed");
    }
    let deadline = Instant::now() + app.settings.server.handshake_timeout;
    // From an untrusted peer the header is not read: a client must not choose its own address.
    // Sent anyway, it reaches HTTP as the request line and fails as a bad request.
    if !proxy_protocol {
        return secure(
            stream,
            tls,
            PeerAddrs::direct(peer),
            deadline,
            app,
            routes,
            tracked,
        )
        .await;
    }
    let header = tokio::time::timeout_at(deadline, proxy::read_header(stream));
    let header = tokio::select! {
        r = header => r,
        () = app.drain.cancelled(), if tracked => return,
    };
    let rejected = |reason| {
        app.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc()
    };
    match header {
        Ok(Ok((header, stream))) => {
            let addrs = PeerAddrs {
                peer,
                proxied: header.source(),
            };
            secure(stream, tls, addrs, deadline, app, routes, tracked).await
        }
        // Dropping the stream closes the connection: there is no way to answer a peer that
        // does not speak the protocol we were told it speaks.
        Ok(Err(e)) => {
            rejected(REJECT_PROXY_PROTOCOL);
            debug!(%peer, error = %e, "PROXY protocol header refused");
        }
        Err(_) => {
            rejected(REJECT_HANDSHAKE_TIMEOUT);
            debug!(%peer, "PROXY protocol header timeout");
        }
    }
}

/// The TLS handshake when `tls` is set (by `deadline`), then HTTP/1.1.
async fn secure<S>(
    stream: S,
    tls: Option<TlsAcceptor>,
    addrs: PeerAddrs,
    deadline: Instant,
    app: Arc<App>,
    routes: Routes,
    tracked: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = tls else {
        return serve_http(stream, addrs, app, routes, tracked).await;
    };
    let rejected = |reason| {
        app.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc()
    };
    let peer = addrs.peer;
    let handshake = tokio::time::timeout_at(deadline, tls.accept(stream));
    let stream = tokio::select! {
        r = handshake => r,
        // A client stalling its handshake must not hold up the drain.
        () = app.drain.cancelled(), if tracked => return,
    };
    match stream {
        Ok(Ok(stream)) => serve_http(stream, addrs, app, routes, tracked).await,
        Ok(Err(e)) => {
            rejected(REJECT_TLS);
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            rejected(REJECT_HANDSHAKE_TIMEOUT);
            debug!(%peer, "TLS handshake timeout");
        }
    }
}

/// Serves HTTP/1.1 on one connection (and hands WebSocket upgrades to their session).
async fn serve_http<S>(stream: S, addrs: PeerAddrs, app: Arc<App>, routes: Routes, tracked: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let (app, served) = (app.clone(), served.clone());
        service_fn(move |req| {
            served.store(true, Ordering::Relaxed);
            http::handle(req, app.clone(), routes, addrs)
        })
    };
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.server.handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());
    let peer = addrs.peer;
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = app.drain.cancelled(), if tracked => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        // A connection that never completed a request head is a slowloris, not an idle client.
        Err(e) if e.is_timeout() && !served.load(Ordering::Relaxed) => {
            app.metrics
                .connections_rejected
                .with_label_values(&[REJECT_HANDSHAKE_TIMEOUT])
                .inc();
            debug!(%peer, "handshake timeout");
        }
        Err(e) => debug!(%peer, error = %e, "http connection ended with error"),
        Ok(()) => {}
    }
}
