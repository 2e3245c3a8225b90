//! The binary's command-line client (`tickwire subscribe`, `tickwire publish`), built on the
//! `tickwire-client` crate: their arguments, how a failure maps to an exit code, and Ctrl-C.
//! Private to the binary; the server never depends on it.

pub(crate) mod presence;
pub(crate) mod publish;
mod sse;
pub(crate) mod subscribe;
mod target;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Where the server is: `--url`, `TICKWIRE_URL`, or the configuration's `server.listen`.
#[derive(Args)]
pub(crate) struct ServerArgs {
    /// The server: its base URL (http://HOST:PORT, https://, ws://, wss://, with or without
    /// /ws). Default: $TICKWIRE_URL, else server.listen from the configuration (as `serve`
    /// loads it; 0.0.0.0 is reached as 127.0.0.1, https/wss when tls.cert is set).
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Configuration file to take server.listen from when no URL is given.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Show a live table of price quotes (symbol, bid, ask, last, change since the first quote
    /// seen) instead of JSON lines.
    #[arg(long)]
    pub(crate) table: bool,
    /// Token sent as `?token=` on every (re)connect (for `auth.mode = "jwt"`; with --sse as
    /// `Authorization: Bearer`). A token the server refuses, or one that expires, ends the
    /// command with status 1.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// Exit (with status 1) when the connection drops instead of reconnecting.
    #[arg(long)]
    pub(crate) no_reconnect: bool,
    /// At most R updates a second per topic (0.01 to 1000, e.g. 0.5 or 4): the server skips the
    /// updates in between, and the newest always arrives. Not for `queue` topics (chat.> by
    /// default), which the server refuses to thin out.
    #[arg(long, value_name = "R", value_parser = max_rate)]
    pub(crate) max_rate: Option<f64>,
    /// Ask for updates as Fossil deltas of the previous one (less traffic for large documents
    /// that change little). The client applies them: the output shows the full data as always.
    #[arg(long)]
    pub(crate) delta: bool,
    /// Subscribe over Server-Sent Events (`GET /sse`) instead of WebSocket, e.g. to check a
    /// proxy that breaks WebSocket. Same output; reconnects recover with `Last-Event-ID`.
    #[arg(long)]
    pub(crate) sse: bool,
    /// Topics or patterns, e.g. `prices.*` `chat.lobby`.
    #[arg(required = true, value_name = "TOPIC")]
    pub(crate) topics: Vec<String>,
}

/// `--max-rate`: a number within the bounds the server accepts, checked before connecting.
fn max_rate(text: &str) -> Result<f64, String> {
    use tickwire_proto::rate::{valid, MAX_RATE, MIN_RATE};
    match text.trim().parse::<f64>() {
        Ok(rate) if valid(rate) => Ok(rate),
        _ => Err(format!(
            "not a number of updates a second from {MIN_RATE} to {MAX_RATE}"
        )),
    }
}

#[derive(Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Messages per request when reading NDJSON from stdin.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch_size: u32,
    /// The publisher's API key (from `tickwire hash-key`), sent as `Authorization: Bearer`.
    #[arg(long = "api-key", alias = "token", value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// Tries per request: each request carries an `Idempotency-Key` and is retried with it
    /// after a timeout, a connection failure or a 503, so the server publishes it once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(crate) attempts: u32,
    /// Topic to publish to.
    #[arg(requires = "data")]
    pub(crate) topic: Option<String>,
    /// The payload: any JSON value, e.g. '{"text":"hi"}'.
    pub(crate) data: Option<String>,
}

#[derive(Args)]
pub(crate) struct PresenceArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// An API key (`Authorization: Bearer`), needed once the server has `auth.api_keys`.
    #[arg(long = "api-key", value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// The presence room, e.g. `chat.lobby` (a topic matching the server's presence.patterns).
    #[arg(value_name = "TOPIC")]
    pub(crate) topic: String,
}

/// Why a client command failed, and its exit code.
pub(crate) enum Failure {
    /// Bad input from the user (exit 2).
    Usage(String),
    /// The connection or the server failed the command (exit 1).
    Runtime(String),
}

pub(crate) fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

pub(crate) fn run_client(command: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tickwire: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("tickwire: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("tickwire: {message}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM, registered as soon as this is created (not on first poll), so a signal
/// arriving while connecting is not fatal.
pub(crate) struct Interrupt {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
}

impl Interrupt {
    fn new() -> Result<Interrupt, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let register = |kind| signal(kind).map_err(|e| runtime(format!("cannot handle signals: {e}")));
            Ok(Interrupt {
                signals: [
                    register(SignalKind::interrupt())?,
                    register(SignalKind::terminate())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Interrupt {})
    }

    async fn wait(&mut self) {
        #[cfg(unix)]
        {
            let [int, term] = &mut self.signals;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.unwrap_or_default();
    }
}

pub(crate) fn print_json(out: &mut std::io::Stdout, value: &impl serde::Serialize) -> std::io::Result<()> {
    let line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut out = out.lock();
    writeln!(out, "{line}")?;
    out.flush()
}
