//! The server's logs through the real binary: plain text in a file or a pipe, colour on a
//! terminal unless `NO_COLOR` is set, and a `starting` line that summarises instead of dumping
//! the settings.

mod common;

use std::process::Stdio;

use common::*;

const ESC: &str = "\x1b[";

#[tokio::test]
async fn logs_to_a_file_are_plain_and_start_with_a_summary() {
    let admin = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start(&[("TICKWIRE__ADMIN__LISTEN", &admin)]).await;
    let logs = server.logs();
    assert!(!logs.contains(ESC), "no ANSI codes in a file: {logs:?}");
    let starting = (logs.lines())
        .find(|l| l.contains("starting"))
        .unwrap_or_else(|| panic!("no starting line: {logs}"));
    for part in [
        format!("listen={}", server.addr),
        "tls=\"off\"".to_string(),
        "auth=\"none\"".to_string(),
        "broker=\"memory\"".to_string(),
        "feed=\"off\"".to_string(),
        format!("admin=\"{admin}\""),
    ] {
        assert!(starting.contains(&part), "{part:?} missing: {starting}");
    }
    assert!(
        starting.len() < 400,
        "a summary, not a dump ({} chars): {starting}",
        starting.len()
    );
    assert!(!starting.contains("Settings {"), "{starting}");
}

/// Runs `tickwire serve` on a pseudo-terminal (`script`, util-linux) for a bounded time
/// (`timeout` sends SIGTERM; the server drains and exits) and returns what it wrote there.
fn serve_on_a_terminal(no_color: Option<&str>) -> String {
    let command = format!("timeout -s TERM 2 {} serve", env!("CARGO_BIN_EXE_tickwire"));
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &command, "/dev/null"]);
    // The clean environment of `tickwire_command`, for a program that is not tickwire.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TICKWIRE__") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(std::env::temp_dir())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("TICKWIRE__SERVER__LISTEN", "127.0.0.1:0")
        .env("TICKWIRE__FEED__ENABLED", "false")
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = cmd
        .output()
        .expect("run script (util-linux) for a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("starting"),
        "the server logged on the terminal: {text:?} {out:?}"
    );
    text
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let (coloured, plain, empty) = std::thread::scope(|s| {
        let coloured = s.spawn(|| serve_on_a_terminal(None));
        let plain = s.spawn(|| serve_on_a_terminal(Some("1")));
        // NO_COLOR="" does not count (no-color.org: "set and not empty").
        let empty = s.spawn(|| serve_on_a_terminal(Some("")));
        (
            coloured.join().unwrap(),
            plain.join().unwrap(),
            empty.join().unwrap(),
        )
    });
    assert!(coloured.contains(ESC), "colour on a terminal: {coloured:?}");
    assert!(empty.contains(ESC), "NO_COLOR=\"\" is not set: {empty:?}");
    assert!(!plain.contains(ESC), "NO_COLOR=1: no colour: {plain:?}");
}

#[tokio::test]
async fn configuration_warnings_are_logged_at_start() {
    let server = ServerProcess::start(&[("TICKWIRE__AUTH__JWT__HS256_SECRET", "tooshort")]).await;
    let logs = server.logs();
    let warning = (logs.lines())
        .find(|l| l.contains("WARN") && l.contains("auth.jwt.hs256_secret"))
        .unwrap_or_else(|| panic!("no warning about the short secret: {logs}"));
    assert!(warning.contains("TICKWIRE__AUTH__JWT__HS256_SECRET"), "{warning}");
    assert!(!logs.contains("tooshort"), "the secret is never logged: {logs}");
}
