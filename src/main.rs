//! The `tickwire` binary: the server (`serve`, `check-config`), a command-line client
//! (`subscribe`, `publish`) built on the `tickwire-client` crate, security helpers
//! (`hash-key`, `token`), and its own shell completions and man page.
//!
//! Exit codes: 0 clean stop, 1 runtime failure (including an error reply from the server),
//! 2 invalid configuration, arguments or input.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use tickwire::apikey;
use tickwire::jwt::{NewToken, MIN_SECRET_BYTES};
use tickwire::logging;
use tickwire::prepare::prepare;
use tickwire::server;
use tickwire::settings::Settings;
use tickwire::topic::Pattern;
use tracing::{info, warn};

mod cli;

use cli::{run_client, PresenceArgs, PublishArgs, SubscribeArgs};

/// `--version`: the crate version, the commit and the build date (from `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TICKWIRE_GIT_COMMIT"),
    ", built ",
    env!("TICKWIRE_BUILD_DATE"),
    ")"
);

/// The variable `token` reads the secret from.
const SECRET_ENV: &str = "TICKWIRE_JWT_SECRET";

#[derive(Parser)]
#[command(name = "tickwire", version = VERSION, about = "Real-time data push server")]
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
        /// Configuration file layered over the defaults, as for `serve`.
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
        #[arg(long, env = SECRET_ENV, hide_env_values = true)]
        secret: Option<String>,
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
    /// Who is in a presence room, cluster-wide, over the HTTP API: one JSON line
    /// `{"topic","members","count"}` (at most presence.max_members members listed; count exact).
    Presence(PresenceArgs),
    /// Print a shell completion script, e.g. `tickwire completions bash >
    /// /etc/bash_completion.d/tickwire`.
    Completions {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Print the man page (roff) to stdout, e.g. `tickwire man | man -l -`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check_only, config) = match cli.command {
        Command::Subscribe(args) => return run_client(cli::subscribe::run(args)),
        Command::Publish(args) => return run_client(cli::publish::run(args)),
        Command::Presence(args) => return run_client(cli::presence::run(args)),
        Command::HashKey { name, publish } => return hash_key(&name, &publish),
        Command::Completions { shell } => return completions(&shell),
        Command::Man => return man(),
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
            let Some(secret) = secret else {
                return usage_error(&format!(
                    "no secret to sign with: set {SECRET_ENV} (or pass --secret) to the server's \
                     auth.jwt.hs256_secret"
                ));
            };
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
        let text = format!("{}\n# configuration is valid\n", settings.to_toml());
        return print_bytes(text.as_bytes());
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

fn completions(shell: &str) -> ExitCode {
    let Ok(shell) = shell.parse::<Shell>() else {
        return usage_error(&format!("unsupported shell {shell:?}"));
    };
    // Into a buffer first: clap_complete panics when its writer fails (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tickwire", &mut script);
    print_bytes(&script)
}

fn man() -> ExitCode {
    match man_page() {
        Ok(page) => print_bytes(&page),
        Err(e) => {
            eprintln!("tickwire: rendering the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One page for the whole binary: clap_mangen's page for `tickwire` refers to a page per
/// command (`tickwire-serve(1)`, ...) that nobody installs, so each command's synopsis,
/// description and options follow here, one section per command.
fn man_page() -> std::io::Result<Vec<u8>> {
    use clap_mangen::Man;
    let mut cmd = Cli::command();
    cmd.build(); // gives the commands their full names (`tickwire serve`) for the synopses
    let top = Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        page.extend_from_slice(format!(".SH \"TICKWIRE {}\"\n", sub.get_name().to_uppercase()).as_bytes());
        // The command's own sections become subsections of its section.
        for line in String::from_utf8_lossy(&part).lines() {
            let line = line
                .strip_prefix(".SH ")
                .map_or_else(|| line.to_string(), |h| format!(".SS {h}"));
            page.extend_from_slice(line.as_bytes());
            page.push(b'\n');
        }
    }
    top.render_version_section(&mut page)?;
    Ok(page)
}

/// Writes to stdout; a reader that went away (`| head`) is no error worth a message.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickwire: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
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
