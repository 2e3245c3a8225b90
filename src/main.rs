//! The `tickwire` binary: the server (`serve`, `check-config`), a command-line client
//! (`subscribe`, `publish`) built on the `tickwire-client` crate, and security helpers
//! (`hash-key`, `token`).
//!
//! Exit codes: 0 clean stop, 1 runtime failure (including an error reply from the server),
//! 2 invalid configuration, arguments or input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tickwire::apikey;
use tickwire::jwt::{NewToken, MIN_SECRET_BYTES};
use tickwire::prepare::prepare;
use tickwire::server;
use tickwire::settings::{LogFormat, Settings};
use tickwire::topic::Pattern;
use tickwire_client::{
    Client, ClientOptions, Event, HttpPublisher, Outgoing, RawValue, SubscriptionState, TokenProvider, Update,
};
use tokio::io::AsyncBufReadExt;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tickwire", version, about = "Real-time data push server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file layered over the defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a new random API key for an HTTP publisher, and the `[[auth.api_keys]]` entry
    /// (its SHA-256 digest) to configure for it.
    HashKey {
        /// Name of the publisher, for the configuration entry and the logs.
        #[arg(long, default_value = "publisher")]
        name: String,
        /// Topic pattern the key may publish to (repeatable).
        #[arg(long = "publish", value_name = "PATTERN", default_value = ">")]
        publish: Vec<String>,
    },
    /// Mint an HS256 token for `auth.mode = "jwt"` (development and tests; production tokens
    /// come from your identity provider).
    Token {
        /// The auth.jwt.hs256_secret (at least 32 bytes). Prefer the environment variable: the
        /// command line is visible to other users of the machine.
        #[arg(long, env = "TICKWIRE_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Topic pattern the token may subscribe to (repeatable).
        #[arg(long = "subscribe", value_name = "PATTERN")]
        subscribe: Vec<String>,
        /// Topic pattern the token may publish to (repeatable).
        #[arg(long = "publish", value_name = "PATTERN")]
        publish: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// `aud` claim (for servers with auth.jwt.audience set).
        #[arg(long)]
        audience: Option<String>,
        /// `iss` claim (for servers with auth.jwt.issuer set).
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Subscribe to topics and print every update and snapshot as a JSON line (or a live price
    /// table with --table) until Ctrl-C. Reconnects and recovers missed updates by itself.
    Subscribe(SubscribeArgs),
    /// Publish over the HTTP API: one message from the arguments, or, without TOPIC and DATA,
    /// NDJSON lines `{"topic":..,"data":..}` from stdin, sent in batches.
    Publish(PublishArgs),
}

#[derive(Args)]
struct SubscribeArgs {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Show a live table of price quotes (symbol, bid, ask, last, change since the first quote
    /// seen) instead of JSON lines.
    #[arg(long)]
    table: bool,
    /// Token sent as `?token=` on every (re)connect.
    #[arg(long)]
    token: Option<String>,
    /// Exit (with status 1) when the connection drops instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
    /// Topics or patterns, e.g. `prices.*` `chat.lobby`.
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,
}

#[derive(Args)]
struct PublishArgs {
    /// Base URL of the server's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Messages per request when reading NDJSON from stdin.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Token sent as `Authorization: Bearer`.
    #[arg(long)]
    token: Option<String>,
    /// Tries per request: each request carries an `Idempotency-Key` and is retried with it
    /// after a timeout, a connection failure or a 503, so the server publishes it once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    attempts: u32,
    /// Topic to publish to.
    #[arg(requires = "data")]
    topic: Option<String>,
    /// The payload: any JSON value, e.g. '{"text":"hi"}'.
    data: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check_only, config) = match cli.command {
        Command::Subscribe(args) => return run_client(subscribe(args)),
        Command::Publish(args) => return run_client(publish(args)),
        Command::HashKey { name, publish } => return hash_key(&name, &publish),
        Command::Token {
            secret,
            sub,
            subscribe,
            publish,
            ttl,
            audience,
            issuer,
        } => {
            let mut claims = NewToken::new(&sub, ttl, subscribe, publish);
            claims.aud = audience;
            claims.iss = issuer;
            return token(&secret, &claims);
        }
        Command::Serve { config } => (false, config),
        Command::CheckConfig { config } => (true, config),
    };
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tickwire: {e}");
            return ExitCode::from(2);
        }
    };
    // Builds what the settings describe (reads the key and certificate files), as `serve`
    // does, so that a bad file fails here with the same message and exit code.
    if let Err(e) = prepare(&settings) {
        eprintln!("tickwire: {e}");
        return ExitCode::from(2);
    }
    if check_only {
        println!("{settings:#?}");
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickwire: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exits 2 with `message` on stderr: bad arguments, like bad configuration.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("tickwire: {message}");
    ExitCode::from(2)
}

fn check_patterns(flag: &str, patterns: &[String]) -> Result<(), String> {
    for p in patterns {
        Pattern::parse(p).map_err(|e| format!("{flag} {p:?}: {e}"))?;
    }
    Ok(())
}

fn hash_key(name: &str, publish: &[String]) -> ExitCode {
    if let Err(e) = check_patterns("--publish", publish) {
        return usage_error(&e);
    }
    let key = match apikey::generate() {
        Ok(key) => key,
        Err(_) => {
            eprintln!("tickwire: the system's random source failed");
            return ExitCode::FAILURE;
        }
    };
    let patterns: Vec<String> = publish.iter().map(|p| format!("{p:?}")).collect();
    println!("key:    {}", key.key);
    println!("sha256: {}", key.sha256);
    println!();
    println!("# Give the key to the publisher (Authorization: Bearer <key>); it is not stored anywhere.");
    println!("# Add the digest to the configuration:");
    println!("[[auth.api_keys]]");
    println!("name = {name:?}");
    println!("sha256 = \"{}\"", key.sha256);
    println!("publish = [{}]", patterns.join(", "));
    ExitCode::SUCCESS
}

fn token(secret: &str, claims: &NewToken) -> ExitCode {
    if secret.len() < MIN_SECRET_BYTES {
        return usage_error(&format!(
            "--secret must be at least {MIN_SECRET_BYTES} bytes, like auth.jwt.hs256_secret"
        ));
    }
    for (flag, list) in [("--subscribe", &claims.subscribe), ("--publish", &claims.publish)] {
        if let Err(e) = check_patterns(flag, list) {
            return usage_error(&e);
        }
    }
    match claims.sign_hs256(secret.as_bytes()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tickwire: cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log.level))?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Secrets print as <redacted> (settings::Secret); API keys are stored only as digests.
    info!(version = env!("CARGO_PKG_VERSION"), settings = ?settings, "starting");
    match server::raise_fd_limit() {
        Ok(limit) => info!(limit, "open files limit"),
        Err(e) => warn!(error = %e, "could not raise the open files limit"),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let listener = server::bind(settings.server.listen)?;
        let admin = settings.admin.listen.map(server::bind).transpose()?;
        server::serve(listener, admin, settings, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
    info!("shutdown signal received");
}

// ---------------------------------------------------------------------------------------------
// Client commands
// ---------------------------------------------------------------------------------------------

/// Why a client command failed, and its exit code.
enum Failure {
    /// Bad input from the user (exit 2).
    Usage(String),
    /// The connection or the server failed the command (exit 1).
    Runtime(String),
}

fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

fn run_client(command: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
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
struct Interrupt {
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

async fn subscribe(args: SubscribeArgs) -> Result<(), Failure> {
    let mut interrupt = Interrupt::new()?;
    let mut options = ClientOptions::default();
    if args.no_reconnect {
        options = options.no_reconnect();
    }
    if let Some(token) = args.token {
        options = options.token_provider(TokenProvider::fixed(token));
    }
    let start = async {
        let client = Client::connect(args.url.as_str(), options)
            .await
            .map_err(runtime)?;
        let events = client.events().expect("a new client's events are not taken yet");
        match client.subscribe(args.topics.clone()).await {
            Ok(_) => {}
            // Refused for now (a cluster node without Redis): the client retries it and the
            // events below report how that goes.
            Err(e) if matches!(e.code(), Some("unavailable" | "rate_limited")) => {}
            Err(e) => return Err(runtime(format!("subscribe failed: {e}"))),
        }
        Ok::<_, Failure>((client, events))
    };
    let (client, mut events) = tokio::select! {
        started = start => started?,
        () = interrupt.wait() => return Ok(()),
    };
    let mut table = args.table.then(Table::default);
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    let mut last_close = None;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            () = interrupt.wait() => break,
            _ = redraw.tick(), if table.is_some() => {
                if let Some(table) = table.as_mut() {
                    if table.draw(&mut stdout).is_err() {
                        break;
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    let (code, reason) = last_close.unwrap_or((1006, String::new()));
                    return Err(Failure::Runtime(format!("connection closed: {code} {reason}")));
                };
                let written = match event {
                    Event::Update(update) | Event::Snapshot(update) => match table.as_mut() {
                        Some(table) => {
                            table.apply(&update);
                            Ok(())
                        }
                        None => print_json(&mut stdout, &update),
                    },
                    Event::Reset { topic } => match table.as_mut() {
                        Some(table) => {
                            table.reset(&topic);
                            Ok(())
                        }
                        None => print_json(&mut stdout, &serde_json::json!({"type": "reset", "topic": topic})),
                    },
                    Event::Open => {
                        if last_close.is_some() {
                            eprintln!("tickwire: reconnected to {}", args.url);
                        }
                        Ok(())
                    }
                    Event::Close { code, reason } => {
                        if !args.no_reconnect {
                            eprintln!("tickwire: connection closed ({code} {reason}), reconnecting");
                        }
                        last_close = Some((code, reason));
                        Ok(())
                    }
                    Event::Error(e) => {
                        eprintln!("tickwire: {e}");
                        Ok(())
                    }
                    Event::Subscription { topics, state } => {
                        let topics = topics.join(" ");
                        match state {
                            SubscriptionState::Retrying { error, delay, .. } => {
                                eprintln!("tickwire: subscribe {topics} refused ({error}), retrying in {delay:.1?}");
                            }
                            SubscriptionState::Subscribed => eprintln!("tickwire: subscribed {topics}"),
                            SubscriptionState::Failed { error } => {
                                eprintln!("tickwire: subscribe {topics} failed: {error}");
                            }
                            _ => {}
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if written.is_err() {
                    break; // stdout is gone (e.g. `| head`): nothing left to do
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

fn print_json(out: &mut std::io::Stdout, value: &impl serde::Serialize) -> std::io::Result<()> {
    let line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut out = out.lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// The live price table of `subscribe --table`.
#[derive(Default)]
struct Table {
    rows: BTreeMap<String, Quote>,
    dirty: bool,
}

#[derive(Default)]
struct Quote {
    bid: Option<f64>,
    ask: Option<f64>,
    last: Option<f64>,
    /// The first `last` seen, for the change column.
    first: Option<f64>,
}

/// A price with cents for expensive instruments and 4 decimals for cheap ones (like the feed).
fn price(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:.*}", decimals(p)),
        None => "-".into(),
    }
}

fn decimals(p: f64) -> usize {
    if p.abs() >= 100.0 {
        2
    } else {
        4
    }
}

impl Table {
    fn apply(&mut self, update: &Update) {
        let Ok(value) = update.decode::<serde_json::Value>() else {
            return;
        };
        let fallback = update.topic.strip_prefix("prices.").unwrap_or(&update.topic);
        let symbol = value["symbol"].as_str().unwrap_or(fallback).to_string();
        let row = self.rows.entry(symbol).or_default();
        row.bid = value["bid"].as_f64().or(row.bid);
        row.ask = value["ask"].as_f64().or(row.ask);
        row.last = value["last"].as_f64().or(row.last);
        if row.first.is_none() {
            row.first = row.last;
        }
        self.dirty = true;
    }

    fn reset(&mut self, topic: &str) {
        let symbol = topic.strip_prefix("prices.").unwrap_or(topic);
        if let Some(row) = self.rows.get_mut(symbol) {
            row.first = None;
        }
    }

    fn draw(&mut self, out: &mut std::io::Stdout) -> std::io::Result<()> {
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        // Home the cursor and clear the screen, then print the whole table.
        let mut screen = String::from("\x1b[H\x1b[2J");
        let _ = writeln!(
            screen,
            "{:<12} {:>14} {:>14} {:>14} {:>24}",
            "SYMBOL", "BID", "ASK", "LAST", "CHANGE"
        );
        for (symbol, q) in &self.rows {
            let change = match (q.last, q.first) {
                (Some(last), Some(first)) if first != 0.0 => {
                    let delta = last - first;
                    let sign = if delta >= 0.0 { "+" } else { "" };
                    let percent = delta / first * 100.0;
                    format!("{sign}{delta:.*} ({percent:+.2}%)", decimals(last))
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                screen,
                "{symbol:<12} {:>14} {:>14} {:>14} {change:>24}",
                price(q.bid),
                price(q.ask),
                price(q.last)
            );
        }
        let mut out = out.lock();
        out.write_all(screen.as_bytes())?;
        out.flush()
    }
}

async fn publish(args: PublishArgs) -> Result<(), Failure> {
    let mut http = HttpPublisher::new(&args.url)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .attempts(args.attempts);
    if let Some(token) = args.token {
        http = http.token_provider(TokenProvider::fixed(token));
    }
    let mut stdout = std::io::stdout();
    if let (Some(topic), Some(data)) = (args.topic, args.data) {
        let data = RawValue::from_string(data)
            .map_err(|e| Failure::Usage(format!("DATA is not valid JSON: {e}")))?;
        let published = http.publish(&topic, &*data).await.map_err(runtime)?;
        print_json(&mut stdout, &published).map_err(runtime)?;
        return Ok(());
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let batch_size = args.batch_size as usize;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(batch_size);
    let (mut line_no, mut first_line, mut sent, mut requests) = (0usize, 1usize, 0usize, 0usize);
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| runtime(format!("reading stdin: {e}")))?;
        let done = line.is_none();
        if let Some(line) = line {
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let message: Outgoing = serde_json::from_str(&line).map_err(|e| {
                Failure::Usage(format!(
                    "stdin line {line_no}: expected {{\"topic\":..,\"data\":..}}: {e} ({sent} messages published before)"
                ))
            })?;
            if batch.is_empty() {
                first_line = line_no;
            }
            batch.push(message);
        }
        if batch.len() >= batch_size || (done && !batch.is_empty()) {
            let results = http.publish_batch(&batch).await.map_err(|e| {
                runtime(format!(
                    "batch of stdin lines {first_line}-{line_no} rejected: {e} ({sent} messages published before)"
                ))
            })?;
            for published in &results {
                print_json(&mut stdout, published).map_err(runtime)?;
            }
            sent += results.len();
            requests += 1;
            batch.clear();
        }
        if done {
            break;
        }
    }
    eprintln!("tickwire: published {sent} messages in {requests} requests");
    Ok(())
}
