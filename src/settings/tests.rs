//! The layering, the messages and the printed configuration, through `Settings::from_toml`
//! (the binary's layers, environment included, are tested in `tests/config_errors.rs`).

use std::time::Duration;

use super::*;
use crate::topic::{Pattern, Topic};

fn problems(toml: &str) -> Vec<Problem> {
    match Settings::from_toml(toml).expect_err("refused") {
        SettingsError::Problems(problems) => problems,
        other => panic!("not a report: {other}"),
    }
}

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
            max_topics_per_connection: 100_000,
            idle_ttl: Some(Duration::from_secs(3600)),
            delta_min_bytes: 128,
            deflate_min_bytes: 256,
            deflate_level: 6,
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
    assert!(err.to_string().contains("server.listen_addr"), "{err}");
    assert!(err.to_string().contains("[server] has: "), "{err}");
    let err = Settings::from_toml("[nope]\nx = 1").unwrap_err();
    assert!(err.to_string().contains("`nope`"), "{err}");
}

#[test]
fn enum_values_are_read_in_any_case() {
    let s = Settings::from_toml(
        "[auth]\nmode = \"JWT\"\n[auth.jwt]\njwks_url = \"https://x/\"\n[log]\nformat = \"Json\"",
    )
    .unwrap();
    assert_eq!((s.auth.mode, s.log.format), (AuthMode::Jwt, LogFormat::Json));
    let [p] = &problems("[log]\nformat = \"yaml\"")[..] else {
        panic!("one problem")
    };
    assert_eq!(p.key, "log.format");
    assert_eq!(p.value.as_deref(), Some("\"yaml\""));
    assert!(p.message.contains("\"text\", \"json\""), "{p}");
    assert!(!p.message.contains("variant"), "no serde internals: {p}");
}

#[test]
fn every_problem_is_reported_at_once() {
    // A type error, an unknown key, a bad enum, a bad address and a failed check, in one file.
    let toml = "[server]\nlisten = \"localhost:8080\"\nmax_connections = \"many\"\nnope = 1\n\
                [log]\nformat = \"yaml\"\n[limits]\nmax_topics = 0\n";
    let keys: Vec<String> = problems(toml).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "limits.max_topics",
            "log.format",
            "server.listen",
            "server.max_connections",
            "server.nope"
        ]
    );
    let listen = problems("[server]\nlisten = \"localhost:8080\"").remove(0);
    assert!(
        listen.message.contains("IP:PORT") && listen.message.contains("127.0.0.1:8080"),
        "{listen}"
    );
}

#[test]
fn a_bad_entry_of_a_list_of_tables_is_named_by_its_index() {
    let toml =
        "[queue]\npolicies = [{pattern = \"a.>\", policy = \"queue\"}, {pattern = \"x\", policy = \"drop\"}]";
    let [p] = &problems(toml)[..] else {
        panic!("one problem")
    };
    assert_eq!(p.key, "queue.policies[1]");
    assert_eq!(p.value.as_deref(), Some("{ pattern = \"x\", policy = \"drop\" }"));
    assert!(p.message.contains("\"conflate\", \"queue\""), "{p}");
}

#[test]
fn the_admin_listener_may_not_take_the_server_port() {
    for (server, admin) in [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
    ] {
        let toml = format!("[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"");
        let p = problems(&toml).remove(0);
        assert_eq!(p.key, "admin.listen", "{p}");
        assert!(p.message.contains(server), "{p}");
    }
    for (server, admin) in [
        ("0.0.0.0:8080", "127.0.0.1:9090"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("0.0.0.0:8080", "[::1]:8080"),
    ] {
        let toml = format!("[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"");
        assert!(Settings::from_toml(&toml).is_ok(), "{server} and {admin}");
    }
}

#[test]
fn public_digests_and_short_secrets_are_warned_about() {
    let zeros = "0".repeat(64);
    let s = Settings::from_toml(&format!(
        "[[auth.api_keys]]\nname = \"svc\"\nsha256 = \"{zeros}\"\npublish = [\">\"]"
    ))
    .unwrap();
    let [w] = &s.warnings()[..] else {
        panic!("one warning")
    };
    assert_eq!(w.key, "auth.api_keys");
    assert!(
        w.message.contains("\"svc\"") && w.message.contains("hash-key"),
        "{w}"
    );
    let s = Settings::from_toml("[auth.jwt]\nhs256_secret = \"s3cr3t\"").unwrap();
    let [w] = &s.warnings()[..] else {
        panic!("one warning")
    };
    assert!(
        w.to_string().contains("auth.jwt.hs256_secret") && !w.to_string().contains("s3cr3t"),
        "{w}"
    );
    assert!(Settings::from_toml("").unwrap().warnings().is_empty());
}

#[test]
fn the_printed_configuration_loads_back_the_same() {
    let toml = "[server]\nlisten = \"127.0.0.1:9000\"\nidle_timeout = \"1m 30s\"\n\
                [admin]\nlisten = \"127.0.0.1:9090\"\n[broker]\nprefix = \"007\"\n[auth]\nmode = \"JWT\"\n\
                [auth.jwt]\njwks_url = \"https://idp.example/jwks\"\n\
                [history]\npolicies = [{pattern = \"a.>\", size = 5, ttl_seconds = 9}]";
    let s = Settings::from_toml(toml).unwrap();
    let printed = s.to_toml();
    let again = Settings::from_toml(&printed).unwrap();
    assert_eq!(again.to_toml(), printed);
    assert_eq!(again.broker.prefix, "007");
    assert_eq!(again.server.idle_timeout, Duration::from_secs(90));
    assert_eq!(again.admin.listen, s.admin.listen);
    assert_eq!(again.auth.mode, AuthMode::Jwt);
    assert_eq!(again.http.max_message_bytes, s.http.max_message_bytes);
}

#[test]
fn the_printed_configuration_leaves_secrets_out() {
    // A secret that looks like a URL without a password is still a secret.
    let toml =
        "[broker]\nredis_url = \"redis://:pw@127.0.0.1:6379\"\n[auth.jwt]\nhs256_secret = \"s3cr3t://x\"";
    let printed = Settings::from_toml(toml).unwrap().to_toml();
    assert!(
        !printed.contains("s3cr3t") && !printed.contains(":pw@"),
        "{printed}"
    );
    assert!(
        printed.contains("# auth.jwt.hs256_secret = <redacted>"),
        "{printed}"
    );
    assert!(printed.contains("# broker.redis_url = <redacted>"), "{printed}");
    // Without them it is still configuration, with both unset (the default URL).
    let again = Settings::from_toml(&printed).unwrap();
    assert_eq!(again.auth.jwt.hs256_secret.expose(), "");
    assert_eq!(again.broker.redis_url.expose(), "redis://127.0.0.1:6379");
    let plain = Settings::from_toml("").unwrap().to_toml();
    assert!(
        plain.contains("redis_url = \"redis://127.0.0.1:6379\""),
        "{plain}"
    );
}

#[test]
fn a_max_rate_is_refused_exactly_where_the_queue_policy_may_apply() {
    let toml = "[queue]\npolicies = [{ pattern = \"chat.special\", policy = \"conflate\" }, \
                { pattern = \"chat.>\", policy = \"queue\" }]";
    let rules = Settings::from_toml(toml).unwrap().topic_rules().unwrap();
    let queued = |s: &str| {
        rules
            .may_queue(&Pattern::parse(s).unwrap())
            .map(|p| p.to_string())
    };
    assert_eq!(
        queued("chat.special"),
        None,
        "an earlier conflate rule decides the topic"
    );
    assert_eq!(queued("chat.lobby").as_deref(), Some("chat.>"));
    assert_eq!(
        queued("*.lobby").as_deref(),
        Some("chat.>"),
        "a pattern that may reach a queue topic"
    );
    assert_eq!(queued("prices.*"), None);
}

#[test]
fn a_policy_max_rate_needs_conflate_and_bounds_and_the_compression_level_its_range() {
    let queued = "[queue]\npolicies = [{ pattern = \"chat.>\", policy = \"queue\", max_rate = 2 }]";
    let [p] = &problems(queued)[..] else {
        panic!("one problem")
    };
    assert!(p.key == "queue.policies" && p.message.contains("conflate"), "{p}");
    let fast = "[queue]\npolicies = [{ pattern = \"p.>\", policy = \"conflate\", max_rate = 5000 }]";
    let [p] = &problems(fast)[..] else {
        panic!("one problem")
    };
    assert!(p.message.contains("between 0.01 and 1000"), "{p}");
    let [p] = &problems("[compression]\nlevel = 0")[..] else {
        panic!("one problem")
    };
    assert_eq!(p.key, "compression.level");
    let ok = "[queue]\npolicies = [{ pattern = \"p.>\", policy = \"conflate\", max_rate = 0.5 }]";
    let rules = Settings::from_toml(ok).unwrap().topic_rules().unwrap();
    assert_eq!(rules.max_rate_for(&Topic::parse("p.x").unwrap()), Some(0.5));
}

/// The hub keeps which history bounds apply to a topic in a byte: each topic gets the first
/// matching policy's, and a 256th policy is refused at start-up rather than misread.
#[test]
fn history_policies_are_indexed_and_capped() {
    let policy = |i: usize| format!("{{ pattern = \"p{i}.>\", size = {}, ttl_seconds = 60 }}", i + 1);
    let list = |n: usize| (0..n).map(policy).collect::<Vec<_>>().join(", ");
    let rules = Settings::from_toml(&format!("[history]\nsize = 7\npolicies = [{}]", list(255)))
        .unwrap()
        .topic_rules()
        .unwrap();
    let topic = |s: &str| Topic::parse(s).unwrap();
    assert_eq!(rules.retention_for(&topic("p254.x")).size, 255);
    assert_eq!(rules.retention_for(&topic("p0.x")).size, 1);
    assert_eq!(
        rules.retention_for(&topic("other")).size,
        7,
        "the default, one past them"
    );
    let e = Settings::from_toml(&format!("[history]\npolicies = [{}]", list(256)))
        .expect_err("256 policies are refused");
    assert!(e.to_string().contains("at most 255 policies"), "{e}");
}

#[test]
fn presence_occupancy_and_webhooks_are_checked() {
    let s = Settings::from_toml("").unwrap();
    assert!(s.presence.patterns.is_empty() && s.webhooks.is_empty());
    assert_eq!(s.presence.max_members, 1000);
    assert_eq!(s.presence.ttl, Duration::from_secs(30));
    assert_eq!(s.occupancy.vacate_delay, Duration::from_secs(5));

    let ok =
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nevents = [\"occupied\", \"leave\"]\nsecret = \"s\"\n";
    let s = Settings::from_toml(ok).unwrap();
    let w = &s.webhooks[0];
    assert_eq!(
        (w.max_attempts, w.timeout, w.queue),
        (5, Duration::from_secs(5), 1000)
    );
    assert!(!format!("{w:?}").contains("\"s\""), "the secret is not printed");

    let bad = "[presence]\npatterns = [\"chat..x\"]\nmax_members = 0\nttl = \"1s\"\n\
               [occupancy]\nvacate_delay = \"2h\"\n";
    let keys: Vec<String> = problems(bad).into_iter().map(|p| p.key).collect();
    for key in [
        "presence.patterns",
        "presence.max_members",
        "presence.ttl",
        "occupancy.vacate_delay",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} in {keys:?}");
    }
    // https:// too, with or without a CA file (read by `prepare`).
    let https = "[[webhooks]]\nurl = \"https://hooks.example/h\"\nevents = [\"join\"]\nsecret = \"s\"\n";
    assert!(Settings::from_toml(https).unwrap().webhooks[0].ca_file.is_none());
    let s = Settings::from_toml(&format!("{https}ca_file = \"/etc/ca.pem\"\n")).unwrap();
    assert_eq!(
        s.webhooks[0].ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );

    let bad = "[[webhooks]]\nurl = \"ftp://x/h\"\nevents = [\"joined\"]\ntopics = [\"a..b\"]\nsecret = \"\"\nqueue = 0\n";
    let p = problems(bad);
    let p = p.iter().find(|p| p.key == "webhooks").expect("webhooks refused");
    for part in ["entry 0", "http://", "\"joined\"", "topics", "secret", "queue"] {
        assert!(p.message.contains(part), "{part}: {p}");
    }
    for (url, why) in [
        ("http://u:p@a/", "http://"),
        (
            "http://a/\"\nca_file = \"/etc/ca.pem",
            "ca_file is only used with an https:// url",
        ),
    ] {
        let p = problems(&format!(
            "[[webhooks]]\nurl = \"{url}\"\nevents = [\"join\"]\nsecret = \"s\"\n"
        ));
        assert!(p.iter().any(|p| p.message.contains(why)), "{url}: {p:?}");
    }
    let p = problems("[[webhooks]]\nurl = \"http://a/\"\nevents = [\"join\"]\nsecret = \"s\"\nretries = 3\n");
    assert!(
        p.iter().any(|p| p.key.starts_with("webhooks")),
        "unknown key: {p:?}"
    );
}

#[test]
fn broker_sentinel_and_receive_queue_are_checked() {
    let ok = Settings::from_toml(
        "[broker]\nkind = \"redis\"\nsentinel = { master_name = \"m\", urls = [\"redis://127.0.0.1:26379\"] }",
    )
    .unwrap();
    assert_eq!(ok.broker.sentinel.master_name, "m");
    assert_eq!(ok.broker.receive_queue, 10_000);
    let keys = |toml: &str| -> Vec<String> { problems(toml).into_iter().map(|p| p.key).collect() };
    assert_eq!(
        keys("[broker]\nkind = \"redis\"\nsentinel = { master_name = \"m\" }"),
        ["broker.sentinel"],
        "a master name needs sentinels"
    );
    assert_eq!(
        keys("[broker]\nsentinel = { master_name = \"m\", urls = [\"redis://127.0.0.1:26379\"] }"),
        ["broker.sentinel"],
        "only with kind = \"redis\""
    );
    assert_eq!(
        keys("[broker]\nkind = \"redis\"\nsentinel = { master_name = \"m\", urls = [\"redis://:pw@h:26379\"] }"),
        ["broker.sentinel.urls"],
        "no password to the sentinels (it would be printed)"
    );
    assert_eq!(
        keys("[broker]\nkind = \"redis\"\nreceive_queue = 0"),
        ["broker.receive_queue"]
    );
}
