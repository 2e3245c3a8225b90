//! The server under test, in-process: settings from a TOML overlay, `start` / `start_with_admin`
//! on 127.0.0.1:0, and a [`TestServer`] handle whose drop fires the shutdown signal.
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server. Dropping it fires the shutdown signal.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Fires the shutdown signal and waits (bounded) for `run` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("server handle");
        match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("server task panicked: {join}")),
            Err(_) => Err("server::run did not return within 10 s of shutdown".into()),
        }
    }

    /// `ws://` URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// With `TEST_LOG=<filter>` set (e.g. `TEST_LOG=tickwire=debug`), server logs go to the test
/// output.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Builds the settings for a test: the built-in defaults with the feed disabled (unless the
/// test configures `[feed]` itself), overlaid with `extra`.
pub fn settings(extra: &str) -> tickwire::settings::Settings {
    let toml = if extra.contains("[feed]") {
        extra.to_string()
    } else {
        format!("[feed]\nenabled = false\n\n{extra}")
    };
    tickwire::settings::Settings::from_toml(&toml)
        .unwrap_or_else(|e| panic!("Settings::from_toml rejected test config: {e:?}\n---\n{toml}"))
}

/// Starts a server with the defaults overlaid by `extra_toml` (feed disabled unless `extra_toml`
/// has a `[feed]` section).
pub async fn start(extra_toml: &str) -> TestServer {
    init_logging();
    let settings = settings(extra_toml);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let handle = tokio::spawn(async move {
        tickwire::server::run(listener, settings, shutdown)
            .await
            .map_err(|e| format!("{e:?}"))
    });
    TestServer {
        addr,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// Starts a server with a separate admin listener (`server::serve(main, Some(admin), ..)`).
/// Returns the server (its `addr` is the main listener) and the admin address.
pub async fn start_with_admin(extra_toml: &str) -> (TestServer, SocketAddr) {
    init_logging();
    let settings = settings(extra_toml);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind main");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("local_addr");
    let admin_addr = admin.local_addr().expect("admin local_addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let handle = tokio::spawn(async move {
        tickwire::server::serve(listener, Some(admin), settings, shutdown)
            .await
            .map_err(|e| format!("{e:?}"))
    });
    let server = TestServer {
        addr,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    (server, admin_addr)
}

impl TestServer {
    /// Fires the shutdown signal without waiting for the drain to finish; returns a future that
    /// resolves with `run`'s result.
    pub fn begin_shutdown(mut self) -> JoinHandle<Result<(), String>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("server handle")
    }
}

/// Path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
