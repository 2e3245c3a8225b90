//! The server's logs: the subscriber (`log.level` or `RUST_LOG`, already validated by
//! `settings`; text or JSON), colour only for a terminal, and the start-up lines (a short
//! summary of what runs, and the configuration's warnings).

use std::io::IsTerminal;

use tracing::{info, warn};
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

use crate::settings::{AuthMode, BrokerKind, LogFormat, Settings};

/// Whether to write ANSI colours: only to a terminal, and never with `NO_COLOR` set to anything
/// but "" (<https://no-color.org>). Logs in a file or a pipe stay plain text.
pub fn colour(to_terminal: bool, no_color: Option<&str>) -> bool {
    to_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the global subscriber, writing to stdout. `log.level` holds `RUST_LOG` when that is
/// set (see `settings`), so one filter covers both.
pub fn init(settings: &Settings) -> Result<(), ParseError> {
    let filter = EnvFilter::try_new(&settings.log.level)?;
    let no_color = std::env::var("NO_COLOR").ok();
    let ansi = colour(std::io::stdout().is_terminal(), no_color.as_deref());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match settings.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    Ok(())
}

/// The `starting` line: what this server is (the whole configuration is what `check-config`
/// prints), then each warning about the configuration.
pub fn starting(settings: &Settings) {
    let on = |yes: bool| if yes { "on" } else { "off" };
    let auth = match settings.auth.mode {
        AuthMode::None => "none",
        AuthMode::Jwt => "jwt",
    };
    let broker = match settings.broker.kind {
        BrokerKind::Memory => "memory",
        BrokerKind::Redis => "redis",
        BrokerKind::RedisCluster => "redis-cluster",
    };
    let admin = settings.admin.listen.map(|a| a.to_string());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %settings.server.listen,
        tls = on(settings.tls.cert.is_some()),
        auth,
        broker,
        feed = on(settings.feed.enabled),
        admin = admin.as_deref().unwrap_or("off"),
        config = settings.config_file.as_ref().map(|p| p.display().to_string()).as_deref().unwrap_or("none"),
        "starting"
    );
    for warning in settings.warnings() {
        warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("")));
        assert!(!colour(true, Some("1")));
        assert!(!colour(false, None));
    }
}
