//! Configuration errors that say what to do, through the real binary (`check-config`, `serve`):
//! every message names the key, the value, what is allowed and where the value was set; all
//! problems come at once; env values take their key's type; `check-config` prints TOML that
//! loads back to the same settings; and the checks that used to fail only at runtime.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Asserts exit code 2 and that stderr holds every one of `parts`; returns stderr.
fn refused(o: &Output, parts: &[&str]) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for part in parts {
        assert!(err.contains(part), "stderr must contain {part:?}: {err}");
    }
    assert!(
        !text(&o.stdout).contains("configuration is valid"),
        "{}",
        text(&o.stdout)
    );
    err
}

/// `contents` in a fresh file, by its absolute path.
fn file(name: &str, contents: &str) -> PathBuf {
    let path = scratch("config-errors").join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_enum_value_names_key_value_allowed_values_and_env_var() {
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__LOG__FORMAT", "yaml")]);
    let err = refused(
        &o,
        &[
            "`log.format`",
            "\"yaml\"",
            "\"text\", \"json\"",
            "TICKWIRE__LOG__FORMAT",
        ],
    );
    assert!(!err.contains("variant"), "no Rust internals: {err}");
    let o = run_tickwire(&["serve"], &[("TICKWIRE__LOG__FORMAT", "yaml")]);
    refused(&o, &["`log.format`", "TICKWIRE__LOG__FORMAT"]);
}

#[test]
fn enum_values_are_case_insensitive() {
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__AUTH__MODE", "JWT"),
            ("TICKWIRE__AUTH__JWT__HS256_SECRET", &"k".repeat(32)),
            ("TICKWIRE__BROKER__SUBSCRIBE", "All"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("mode = \"jwt\"") && out.contains("subscribe = \"all\""),
        "{out}"
    );
}

#[test]
fn a_host_name_in_listen_says_the_form_and_the_file_as_given() {
    let config = file("listen.toml", "[server]\nlisten = \"localhost:8080\"\n");
    assert!(config.is_absolute());
    let o = run_tickwire(&["check-config", "--config", path(&config)], &[]);
    let err = refused(
        &o,
        &[
            "`server.listen`",
            "\"localhost:8080\"",
            "IP:PORT",
            "127.0.0.1:8080",
            "0.0.0.0:8080",
            path(&config),
        ],
    );
    assert!(!err.contains("../"), "the path as given, not relative: {err}");
}

#[test]
fn a_missing_or_broken_file_is_named_as_given() {
    let dir = scratch("config-errors");
    let missing = dir.join("nope.toml");
    let o = run_tickwire(&["check-config", "--config", path(&missing)], &[]);
    refused(&o, &[path(&missing), "not found"]);
    let broken = file("broken.toml", "[server]\nlisten = 8080\n[feed\n");
    let o = run_tickwire(&["check-config", "--config", path(&broken)], &[]);
    refused(&o, &[path(&broken), "line 3"]);
}

#[test]
fn every_error_is_reported_at_once() {
    // Four problems of four kinds from two sources: a wrong type and an unknown key in the file,
    // a bad enum value and a failed range check from the environment.
    let config = file(
        "many.toml",
        "[server]\nmax_connections = \"lots\"\nlisten_addr = \"127.0.0.1:1\"\n",
    );
    let env = [
        ("TICKWIRE__LOG__FORMAT", "yaml"),
        ("TICKWIRE__LIMITS__MAX_TOPICS", "0"),
    ];
    for command in ["check-config", "serve"] {
        let o = run_tickwire(&[command, "--config", path(&config)], &env);
        let err = refused(
            &o,
            &[
                "4 configuration errors",
                "`server.max_connections` = \"lots\"",
                "must be a whole number",
                "`server.listen_addr`",
                "[server] has: ",
                "`log.format` = \"yaml\" (set by TICKWIRE__LOG__FORMAT)",
                "`limits.max_topics` = 0 (set by TICKWIRE__LIMITS__MAX_TOPICS): must be at least 1",
            ],
        );
        assert_eq!(err.matches(path(&config)).count(), 2, "{err}");
    }
}

#[test]
fn env_values_take_the_type_of_their_key() {
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__BROKER__PREFIX", "007"),
            ("TICKWIRE__FEED__SYMBOLS", "1234"),
            ("TICKWIRE__SERVER__ALLOWED_ORIGINS", ""),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("prefix = \"007\""), "{out}");
    assert!(out.contains("symbols = [\"1234\"]"), "{out}");
    assert!(out.contains("allowed_origins = []"), "{out}");
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__QUEUE__MAX_BYTES", "1MB")]);
    refused(
        &o,
        &["`queue.max_bytes` = \"1MB\" (set by TICKWIRE__QUEUE__MAX_BYTES): must be a whole number"],
    );
}

#[test]
fn check_config_prints_toml_that_loads_back_the_same() {
    let env = [
        ("TICKWIRE__SERVER__LISTEN", "127.0.0.1:9000"),
        ("TICKWIRE__ADMIN__LISTEN", "127.0.0.1:9090"),
        ("TICKWIRE__FEED__SYMBOLS", "BTC-USD, 1234"),
        ("TICKWIRE__BROKER__PREFIX", "007"),
        ("TICKWIRE__SERVER__IDLE_TIMEOUT", "90s"),
        ("TICKWIRE__AUTH__MODE", "JWT"),
        ("TICKWIRE__AUTH__JWT__JWKS_URL", "https://idp.example/jwks.json"),
    ];
    let o = run_tickwire(&["check-config"], &env);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let printed = text(&o.stdout);
    // The same loader reads it back to the same settings...
    let settings = tickwire::settings::Settings::from_toml(&printed).expect("the output is configuration");
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(settings.broker.prefix, "007");
    assert_eq!(settings.feed.symbols, ["BTC-USD", "1234"]);
    assert_eq!(settings.server.idle_timeout, Duration::from_secs(90));
    assert_eq!(
        settings.to_toml(),
        printed.replace("\n# configuration is valid\n", "")
    );
    // ...and so does the binary, from a file and nothing else.
    let config = file("printed.toml", &printed);
    let again = run_tickwire(&["check-config", "--config", path(&config)], &[]);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", text(&again.stderr));
    assert_eq!(text(&again.stdout), printed);
}

#[test]
fn admin_listen_on_the_server_port_is_refused_before_binding() {
    // Held by us: a server that bound first would fail with "Address already in use", exit 1.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let wildcard = format!("0.0.0.0:{}", held.local_addr().unwrap().port());
    for (server, admin) in [(&addr, &addr), (&wildcard, &addr)] {
        let env = [
            ("TICKWIRE__SERVER__LISTEN", server.as_str()),
            ("TICKWIRE__ADMIN__LISTEN", admin.as_str()),
            ("TICKWIRE__FEED__ENABLED", "false"),
        ];
        for command in ["check-config", "serve"] {
            let o = run_tickwire(&[command], &env);
            let err = refused(
                &o,
                &[
                    "`admin.listen`",
                    admin,
                    "TICKWIRE__ADMIN__LISTEN",
                    "port of server.listen",
                    server,
                ],
            );
            assert!(!err.contains("in use (os error"), "{err}");
        }
    }
    drop(held);
}

#[test]
fn public_api_key_digests_and_short_secrets_are_warnings() {
    let zeros = "0".repeat(64);
    let config = file(
        "keys.toml",
        &format!("[[auth.api_keys]]\nname = \"svc\"\nsha256 = \"{zeros}\"\npublish = [\"prices.>\"]\n"),
    );
    let o = run_tickwire(
        &["check-config", "--config", path(&config)],
        &[("TICKWIRE__AUTH__JWT__HS256_SECRET", "tooshort")],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "a warning, not an error: {}",
        text(&o.stderr)
    );
    let err = text(&o.stderr);
    for part in [
        "tickwire: warning: configuration key `auth.api_keys`",
        path(&config),
        "\"svc\"",
        "tickwire: warning: configuration key `auth.jwt.hs256_secret` (set by TICKWIRE__AUTH__JWT__HS256_SECRET)",
        "shorter than 32",
    ] {
        assert!(err.contains(part), "stderr must contain {part:?}: {err}");
    }
    assert!(!err.contains("tooshort"), "{err}");
    // The production example's placeholder digest is one of them.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/production.example.toml");
    let (dir, _) = certificate_files("config-errors-example");
    let (cert, key, public) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        fixture("ec-public.pem"),
    );
    let o = run_tickwire(
        &["check-config", "--config", example],
        &[
            ("TICKWIRE__TLS__CERT", path(&cert)),
            ("TICKWIRE__TLS__KEY", path(&key)),
            ("TICKWIRE__AUTH__JWT__PUBLIC_KEY_FILE", &public),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("warning") && err.contains("\"pricing-service\""),
        "{err}"
    );
}

#[test]
fn an_invalid_rust_log_exits_2_naming_it_and_the_directive() {
    for command in ["serve", "check-config"] {
        let o = run_tickwire(
            &[command],
            &[
                ("RUST_LOG", "info,tickwire=loud"),
                ("TICKWIRE__SERVER__LISTEN", "127.0.0.1:0"),
                ("TICKWIRE__FEED__ENABLED", "false"),
            ],
        );
        refused(&o, &["RUST_LOG", "\"tickwire=loud\"", "`log.level`"]);
    }
    let o = run_tickwire(&["check-config"], &[("RUST_LOG", "warn,tickwire=debug")]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(text(&o.stdout).contains("level = \"warn,tickwire=debug\""));
}

#[test]
fn redis_cluster_settings_are_checked_by_check_config() {
    let seeds = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__BROKER__KIND", "redis-cluster"),
            ("TICKWIRE__BROKER__REDIS_CLUSTER_URLS", seeds),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__BROKER__KIND", "redis-cluster")]);
    refused(&o, &["`broker.redis_cluster_urls`", "at least one seed node"]);
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__BROKER__KIND", "redis-cluster"),
            ("TICKWIRE__BROKER__REDIS_CLUSTER_URLS", "http://127.0.0.1:7000"),
        ],
    );
    refused(&o, &["`broker.redis_cluster_urls`", "redis[s]://"]);
    let o = run_tickwire(
        &["check-config"],
        &[("TICKWIRE__BROKER__REDIS_CLUSTER_URLS", seeds)],
    );
    refused(
        &o,
        &[
            "`broker.redis_cluster_urls`",
            "only used with broker.kind = \"redis-cluster\"",
        ],
    );
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__BROKER__KIND", "redis-cluster"),
            ("TICKWIRE__BROKER__REDIS_CLUSTER_URLS", seeds),
            ("TICKWIRE__PRESENCE__PATTERNS", "chat.*"),
        ],
    );
    refused(&o, &["`broker.kind`", "need broker.kind = \"redis\""]);
    // A seed with a password is never printed back.
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__BROKER__KIND", "redis-cluster"),
            (
                "TICKWIRE__BROKER__REDIS_CLUSTER_URLS",
                "redis://:s3cret@127.0.0.1:7000",
            ),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let printed = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(!printed.contains("s3cret"), "{printed}");
}
