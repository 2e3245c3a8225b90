//! The layering: compiled-in defaults, the optional files, the environment; then the values
//! that depend on others are filled in and everything is validated.

use std::path::Path;

use config::{Config, Environment, File, FileFormat};

use crate::settings::error::SettingsError;
use crate::settings::sections::{Secret, Settings, DEFAULTS_TOML, FRAME_ENVELOPE_BYTES};

/// The environment variable of `auth.jwt.hs256_secret`, read verbatim.
const SECRET_ENV: &str = "TICKWIRE__AUTH__JWT__HS256_SECRET";

impl Settings {
    /// The full layering used by the binary: defaults ← ./config/default.toml ← `file` ← env.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml))
            .add_source(File::new("config/default.toml", FileFormat::Toml).required(false));
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).format(FileFormat::Toml));
        }
        let env = Environment::with_prefix("TICKWIRE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("feed.symbols")
            .with_list_parse_key("server.allowed_origins")
            .with_list_parse_key("server.trusted_proxies")
            .with_list_parse_key("auth.anonymous.subscribe")
            .with_list_parse_key("auth.anonymous.publish");
        // `try_parsing` turns an all-digit secret into a number and back, changing it (a long
        // one comes back in float notation): the secret is taken from the environment as is.
        let secret = std::env::var(SECRET_ENV).ok().map(Secret);
        let mut settings = Self::finish(builder.add_source(env).build()?, secret)?;
        settings.config_file = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// Built-in defaults overlaid with `extra` TOML text; no files, no environment.
    /// For embedding and tests.
    pub fn from_toml(extra: &str) -> Result<Settings, SettingsError> {
        let cfg = Config::builder()
            .add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml))
            .add_source(File::from_str(extra, FileFormat::Toml))
            .build()?;
        Self::finish(cfg, None)
    }

    fn finish(cfg: Config, env_secret: Option<Secret>) -> Result<Settings, SettingsError> {
        let mut settings: Settings = cfg.try_deserialize()?;
        if let Some(secret) = env_secret {
            settings.auth.jwt.hs256_secret = secret;
        }
        // Lists from env vars are split on commas as is: "BTC-USD, ETH-USD" must still work.
        let lists = [
            &mut settings.feed.symbols,
            &mut settings.server.allowed_origins,
            &mut settings.server.trusted_proxies,
            &mut settings.auth.anonymous.subscribe,
            &mut settings.auth.anonymous.publish,
        ];
        for list in lists {
            list.iter_mut().for_each(|item| *item = item.trim().to_string());
        }
        if settings.http.max_message_bytes == 0 {
            let room = settings.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
            settings.http.max_message_bytes = room.max(1);
        }
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::sections::{Policy, TopicBounds};
    use crate::topic::Topic;
    use std::time::Duration;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.max_message_bytes, 65536);
        assert_eq!(s.queue.max_bytes, 1 << 20);
        assert!(s.feed.enabled);
        assert_eq!(s.server.ping_interval, Duration::from_secs(25));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.admin.listen, None);
        assert_eq!(
            s.topic_bounds(),
            TopicBounds {
                max_topics: 1_000_000,
                max_catch_up_topics: 10_000,
                idle_ttl: Some(Duration::from_secs(3600)),
            }
        );
        let forever = Settings::from_toml("[topics]\nidle_ttl = \"0s\"").unwrap();
        assert_eq!(forever.topic_bounds().idle_ttl, None);
        let s = Settings::from_toml("[admin]\nlisten = \"127.0.0.1:9090\"").unwrap();
        assert_eq!(s.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let rules = s.topic_rules().unwrap();
        assert_eq!(
            rules.policy_for(&Topic::parse("chat.lobby").unwrap()),
            Policy::Queue
        );
        assert_eq!(
            rules.policy_for(&Topic::parse("prices.X").unwrap()),
            Policy::Conflate
        );
        let chat = rules.retention_for(&Topic::parse("chat.x").unwrap());
        assert_eq!((chat.size, chat.ttl), (100, Duration::from_secs(300)));
        let s = Settings::from_toml("[history]\npolicies = [{pattern = \"a.>\", size = 5, ttl_seconds = 9}]")
            .unwrap();
        let rules = s.topic_rules().unwrap();
        assert_eq!(rules.retention_for(&Topic::parse("a.b").unwrap()).size, 5);
        assert_eq!(rules.retention_for(&Topic::parse("b.b").unwrap()).size, 100);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::from_toml("[server]\nlisten_addr = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = Settings::from_toml("[nope]\nx = 1").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
