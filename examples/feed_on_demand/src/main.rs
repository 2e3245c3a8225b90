//! The `feed-on-demand` binary: the command line, then [`feed_on_demand::serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use feed_on_demand::{serve, App, Config};

/// Publishes a made-up price to a topic only while tickwire reports it occupied.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address the webhook receiver listens on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "FEED_LISTEN")]
    listen: SocketAddr,
    /// Path the webhooks are POSTed to (the `url` of the `[[webhooks]]` entry).
    #[arg(long, default_value = "/webhook")]
    path: String,
    /// tickwire's HTTP base URL, where the prices are published.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "FEED_TICKWIRE")]
    tickwire: String,
    /// The webhook's `secret` (prefer the environment variable: a command line is visible to
    /// every user of the machine).
    #[arg(long, env = "FEED_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// An API key for publishing, when tickwire requires one.
    #[arg(long, env = "FEED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Topics served: this prefix followed by the symbol.
    #[arg(long, default_value = "prices.")]
    prefix: String,
    /// Milliseconds between two prices of one symbol.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "feed_on_demand=info".into()),
        )
        .init();
    let args = Args::parse();
    if args.secret.is_empty() {
        eprintln!("feed-on-demand: the webhook secret is empty: every forged request would pass");
        std::process::exit(2);
    }
    let config = Config {
        tickwire: args.tickwire,
        api_key: args.api_key,
        secret: args.secret.into_bytes(),
        path: args.path,
        prefix: args.prefix,
        interval: Duration::from_millis(args.interval_ms),
    };
    let app = match App::new(config) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            eprintln!("feed-on-demand: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("feed-on-demand: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    tracing::info!(listen = %args.listen, "waiting for tickwire's webhooks");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let serving = tokio::spawn(serve(listener, app.clone(), shutdown));
    match app.catch_up().await {
        Ok(started) => tracing::info!(started, "feeds of the topics already occupied started"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the occupied topics: feeds start with the next occupied event")
        }
    }
    let _ = serving.await;
}
