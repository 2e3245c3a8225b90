//! The `tickwire` binary: the server (`serve`, `check-config`), a command-line client
//! (`subscribe`, `publish`) built on the `tickwire-client` crate, and security helpers
//! (`hash-key`, `token`).
//!
//! Exit codes: 0 clean stop, 1 runtime failure (including an error reply from the server),
//! 2 invalid configuration, arguments or input.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tickwire::apikey;
use tickwire::jwt::{NewToken, MIN_SECRET_BYTES};
use tickwire::logging;
use tickwire::prepare::prepare;
use tickwire::server;
use tickwire::settings::Settings;
use tickwire::topic::Pattern;
use tracing::{info, warn};

mod cli;

use cli::{run_client, PublishArgs, SubscribeArgs};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check_only, config) = match cli.command {
        Command::Subscribe(args) => return run_client(cli::subscribe::run(args)),
        Command::Publish(args) => return run_client(cli::publish::run(args)),
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
        eprintln!("tickwire: {}", settings.explain(e));
        return ExitCode::from(2);
    }
    if check_only {
        for warning in settings.warnings() {
            eprintln!("tickwire: warning: {warning}");
        }
        print!("{}", settings.to_toml());
        println!("\n# configuration is valid");
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
    logging::init(&settings)?;
    logging::starting(&settings);
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
