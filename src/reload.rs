//! Rotating keys and certificates without a restart: on SIGHUP, and when a watched file
//! changes, tickwire reads again
//!
//! - the `--config` file, of which it takes only `auth.api_keys`;
//! - `auth.jwt.public_key_file` or `auth.jwt.jwks_file` (at their start-up paths);
//! - `tls.cert` and `tls.key` (at their start-up paths).
//!
//! Every other setting keeps its start-up value until a restart. Files are watched by polling
//! their modification time and size every [`WATCH_INTERVAL`] (no inotify crate; a handful of
//! `stat` calls off the runtime). Each part is replaced on its own and whole: a part whose new
//! file is invalid keeps what it had and the reason is logged, and the reload counts as an
//! error in `tickwire_config_reload_total`. A certificate and key written one after the other
//! do not fit in between: that poll fails and keeps the old pair, the next one takes the new.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::app::App;
use crate::auth::apikey::ApiKeys;
use crate::prepare::prepare;
use crate::settings::Settings;
use crate::transport::tls::Certificate;

/// How often the watched files' modification times are compared.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What a file looked like at the last poll; `None` when it could not be read.
type Stamp = Option<(SystemTime, u64)>;

/// Reloads on SIGHUP and on file changes until the task is aborted.
pub async fn run(app: Arc<App>, certificate: Option<Arc<Certificate>>) {
    let files = watched(&app.settings);
    let mut hangup = Hangup::new();
    let mut stamps = stat(files.clone()).await;
    let mut poll = tokio::time::interval(WATCH_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        let cause = tokio::select! {
            () = hangup.recv() => "SIGHUP",
            _ = poll.tick() => "file change",
        };
        // Taken before reading the files, so a change made during the reload is seen next time.
        let now = stat(files.clone()).await;
        if cause == "file change" && now == stamps {
            continue;
        }
        stamps = now;
        let (app2, certificate) = (app.clone(), certificate.clone());
        let ok = tokio::task::spawn_blocking(move || reload(&app2, certificate.as_deref(), cause))
            .await
            .unwrap_or(false);
        app.metrics.config_reload(ok);
    }
}

/// The files whose change triggers a reload.
fn watched(s: &Settings) -> Vec<PathBuf> {
    let jwt = &s.auth.jwt;
    [
        &s.config_file,
        &s.tls.cert,
        &s.tls.key,
        &jwt.public_key_file,
        &jwt.jwks_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

async fn stat(files: Vec<PathBuf>) -> Vec<Stamp> {
    let stamps = tokio::task::spawn_blocking(move || {
        (files.iter())
            .map(|f| {
                let m = std::fs::metadata(f).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    });
    stamps.await.unwrap_or_default()
}

/// Reads every part again (blocking file reads: run off the runtime). True when every part
/// loaded; a part that failed keeps what it had.
fn reload(app: &App, certificate: Option<&Certificate>, cause: &str) -> bool {
    let mut ok = true;
    let mut failed = |part: &str, error: &dyn std::fmt::Display| {
        warn!(cause, part, %error, "reload: {part} not reloaded, the one in use stays");
        ok = false;
    };
    let mut api_keys = None;
    if let Some(file) = &app.settings.config_file {
        // Prepared whole, as at start-up: a file that would not start the server is not loaded.
        let loaded = Settings::load(Some(file)).and_then(|s| prepare(&s).map(|_| s));
        match loaded.and_then(|s| ApiKeys::from_settings(&s.auth.api_keys)) {
            Ok(keys) => {
                api_keys = Some(keys.len());
                app.auth.set_api_keys(keys);
            }
            Err(e) => failed("auth.api_keys", &e),
        }
    }
    let key_file = match app.auth.reload_key_file(&app.settings.auth.jwt) {
        Ok(reloaded) => reloaded,
        Err(e) => {
            failed("auth.jwt", &e);
            false
        }
    };
    let tls = match certificate.map(Certificate::reload) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            failed("tls", &e);
            false
        }
        None => false,
    };
    info!(
        cause,
        ok,
        ?api_keys,
        jwt_key_file = key_file,
        tls,
        "reload finished"
    );
    ok
}

/// SIGHUP, where there is such a thing.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .map_err(|e| warn!(error = %e, "cannot handle SIGHUP: reloads only follow file changes"))
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending().await
    }
}
