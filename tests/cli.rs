//! Configuration errors in the real binary: exit code 2, the offending key named, nothing bound.

mod common;

use std::process::Output;

use common::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn check_config_accepts_the_defaults() {
    let o = run_tickwire(&["check-config"], &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_rejects_an_unknown_env_key() {
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__SERVER__NOPE", "1")]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("nope"),
        "stderr must name the key: {}",
        stderr(&o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("configuration is valid"),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn check_config_rejects_messages_that_cannot_fit_the_queue() {
    // The default server.max_message_bytes (64 KiB) cannot fit a 64 KiB queue once framed.
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__QUEUE__MAX_BYTES", "65536")]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("server.max_message_bytes"), "{}", stderr(&o));
    let o = run_tickwire(
        &["check-config"],
        &[("TICKWIRE__HTTP__MAX_MESSAGE_BYTES", "1048576")],
    );
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("http.max_message_bytes"), "{}", stderr(&o));
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__QUEUE__MAX_BYTES", "65536"),
            ("TICKWIRE__SERVER__MAX_MESSAGE_BYTES", "32768"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn check_config_rejects_idle_timeout_shorter_than_ping_interval() {
    let o = run_tickwire(&["check-config"], &[("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s")]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("server.idle_timeout"),
        "stderr must name server.idle_timeout: {}",
        stderr(&o)
    );
    // Consistent with ping_interval: fine.
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s"),
            ("TICKWIRE__SERVER__PING_INTERVAL", "500ms"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn serve_with_invalid_config_exits_2_before_binding() {
    // The configured port is held by us: a server that tried to bind before validating would
    // fail with "cannot bind" and exit 1, not 2.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let free = free_port();
    let admin = format!("127.0.0.1:{free}");
    let o = run_tickwire(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", &addr),
            ("TICKWIRE__ADMIN__LISTEN", &admin),
            ("TICKWIRE__FEED__ENABLED", "false"),
            ("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("server.idle_timeout"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("bind"), "{}", stderr(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("listening"),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Control: the same, with a valid config, does try to bind and fails with exit 1.
    let o = run_tickwire(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", &addr),
            ("TICKWIRE__FEED__ENABLED", "false"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("cannot bind"), "{}", stderr(&o));
    drop(held);
}

#[test]
fn serve_with_unknown_key_exits_2() {
    let o = run_tickwire(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", "127.0.0.1:0"),
            ("TICKWIRE__FEED__ENABLED", "false"),
            ("TICKWIRE__SERVER__NOPE", "1"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn the_production_example_is_valid_once_its_files_exist() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/production.example.toml");
    // As shipped, its placeholder paths do not exist: refused, naming the key.
    let o = run_tickwire(&["check-config", "--config", example], &[]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("auth.jwt.public_key_file"), "{}", stderr(&o));

    let (dir, _) = certificate_files("prod-example");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let public = fixture("ec-public.pem");
    let o = run_tickwire(
        &["check-config", "--config", example],
        &[
            ("TICKWIRE__TLS__CERT", cert.to_str().unwrap()),
            ("TICKWIRE__TLS__KEY", key.to_str().unwrap()),
            ("TICKWIRE__AUTH__JWT__PUBLIC_KEY_FILE", &public),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("mode = \"jwt\"") && out.contains("configuration is valid"),
        "{out}"
    );
    assert!(out.contains("pricing-service"), "{out}");
}

#[test]
fn check_config_never_prints_the_jwt_secret() {
    let secret = "a-secret-that-must-not-leak-0123456789";
    let o = run_tickwire(
        &["check-config"],
        &[
            ("TICKWIRE__AUTH__MODE", "jwt"),
            ("TICKWIRE__AUTH__JWT__HS256_SECRET", secret),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(!stdout(&o).contains(secret), "{}", stdout(&o));
    assert!(stdout(&o).contains("<redacted>"), "{}", stdout(&o));
}

#[test]
fn hash_key_prints_a_key_and_a_paste_ready_entry() {
    let o = run_tickwire(&["hash-key", "--name", "feed", "--publish", "prices.>"], &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    let field = |name: &str| {
        (out.lines())
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line in {out}"))
            .trim()
            .to_string()
    };
    let (key, digest) = (field("key:"), field("sha256:"));
    assert_eq!(key.len(), 64, "{out}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
    let expected: String = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, expected, "sha256 of the key text");
    // The entry is valid configuration that accepts the key.
    let entry = &out[out.find("[[auth.api_keys]]").expect("entry")..];
    let settings = tickwire::settings::Settings::from_toml(entry).unwrap();
    let keys = tickwire::apikey::ApiKeys::from_settings(&settings.auth.api_keys).unwrap();
    let found = keys.find(&key).expect("the key matches its entry");
    assert_eq!(found.name, "feed");
    assert!(found
        .acl
        .may_publish(&tickwire::topic::Topic::parse("prices.X").unwrap()));
    let again = stdout(&run_tickwire(&["hash-key"], &[]));
    assert!(!again.contains(&key), "keys are random");
    let o = run_tickwire(&["hash-key", "--publish", "a..b"], &[]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
}

#[test]
fn token_mints_a_verifiable_hs256_token() {
    let o = run_tickwire(
        &[
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "prices.>",
            "--subscribe",
            "news.*",
            "--publish",
            "chat.>",
            "--ttl",
            "1h",
            "--audience",
            "tw",
        ],
        &[("TICKWIRE_JWT_SECRET", JWT_SECRET)],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["tw"]);
    let key = jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes());
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["subscribe"], serde_json::json!(["prices.>", "news.*"]));
    assert_eq!(claims["publish"], serde_json::json!(["chat.>"]));
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 3600);

    for args in [
        vec!["token", "--secret", "short", "--sub", "a"],
        vec![
            "token",
            "--secret",
            JWT_SECRET,
            "--sub",
            "a",
            "--subscribe",
            "a.>.b",
        ],
        vec!["token", "--secret", JWT_SECRET, "--sub", "a", "--ttl", "soon"],
    ] {
        let o = run_tickwire(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn token_without_a_secret_names_the_variable() {
    let o = tickwire_command()
        .env_remove("TICKWIRE_JWT_SECRET")
        .args(["token", "--sub", "a"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("TICKWIRE_JWT_SECRET"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let o = run_tickwire(&["--version"], &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let version = stdout(&o);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git, for the commit the binary was built from");
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    assert!(!commit.is_empty(), "the tests run in a git checkout");
    let (_, stamp) = version
        .trim()
        .split_once(" (commit ")
        .unwrap_or_else(|| panic!("{version}"));
    let (built_from, date) = stamp
        .trim_end_matches(')')
        .split_once(", built ")
        .unwrap_or_else(|| panic!("{version}"));
    // Built by this test run: the commit checked out now (a build script that missed a new
    // commit would fail here).
    assert_eq!(built_from, commit, "{version}");
    let parts: Vec<u32> = date.split('-').map(|p| p.parse().unwrap()).collect();
    assert!(
        matches!(parts[..], [y, m, d] if y >= 2024 && (1..=12).contains(&m) && (1..=31).contains(&d)),
        "{version}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _tickwire"),
        ("zsh", "#compdef tickwire"),
        ("fish", "complete -c tickwire"),
    ] {
        let o = run_tickwire(&["completions", shell], &[]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("api-key") && script.contains("check-config"),
            "{shell}"
        );
    }
    let o = run_tickwire(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let o = run_tickwire(&["man"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH tickwire 1"), "{page}");
    assert!(page.contains("Real\\-time data push server"), "{page}");
    // One page for every command and its options.
    for section in ["SUBSCRIBE", "PUBLISH", "COMPLETIONS", "MAN"] {
        assert!(
            page.contains(&format!(".SH \"TICKWIRE {section}\"")),
            "{section}: {page}"
        );
    }
    assert!(page.contains("\\fB\\-\\-api\\-key\\fR"), "{page}");
}

#[test]
fn help_names_check_config_file_and_publish_api_key() {
    let o = run_tickwire(&["check-config", "--help"], &[]);
    let help = stdout(&o);
    let line = help.lines().find(|l| l.contains("--config")).unwrap_or_default();
    assert!(line.contains("Configuration file"), "{help}");
    // publish's key is --api-key; --token stays accepted but is not shown.
    let help = stdout(&run_tickwire(&["publish", "--help"], &[]));
    assert!(help.contains("--api-key <KEY>"), "{help}");
    assert!(!help.contains("--token"), "{help}");
}

/// `check-config | head -1`: a reader that goes away is no panic and no error.
#[test]
fn check_config_into_a_closed_pipe_does_not_panic() {
    let mut child = tickwire_command()
        .arg("check-config")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tickwire");
    drop(child.stdout.take()); // closed before the configuration is written
    let out = child.wait_with_output().expect("wait");
    assert!(!stderr(&out).contains("panicked"), "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}
