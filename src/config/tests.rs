//! Tests that span tables: the shipped examples, the structural pass (unknown keys and wrong
//! types anywhere), problem order, defaults against the SPEC, the effective-TOML round trip; and
//! the helpers every table's tests use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../config/creditgate.toml");
const EXAMPLE_REDIS: &str = include_str!("../../config/creditgate-redis.toml");
/// The smallest valid file: only the key without a default.
pub(super) const MINIMAL: &str = "[sip]\nupstream = [\"10.0.0.5:5060\"]\n";

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/creditgate"))
}

pub(super) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- input ---\n{text}"),
    }
}

pub(super) fn problems(text: &str) -> Vec<ConfigProblem> {
    match parse(text) {
        Ok(_) => panic!("expected problems, the config was accepted:\n{text}"),
        Err(e) => {
            let problems = e.problems().to_vec();
            assert!(!problems.is_empty());
            problems
        }
    }
}

/// Asserts that exactly one problem names `key` and returns its message.
pub(super) fn problem_at(text: &str, key: &str) -> String {
    let all = problems(text);
    let hits: Vec<_> = all.iter().filter(|p| p.key == key).collect();
    assert_eq!(hits.len(), 1, "expected one problem at {key}, got {all:#?}");
    hits[0].message.clone()
}

pub(super) fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn shipped_examples_parse() {
    let base = Path::new("/opt/cg/config");
    let file = Config::from_toml_str(EXAMPLE, base).unwrap();
    assert_eq!(file.credit.source, SourceKind::File);
    assert_eq!(file.credit.file, base.join("accounts.toml"));
    assert_eq!(file.sip.listen, vec!["127.0.0.1:5060".parse().unwrap()]);
    assert_eq!(file.sip.upstream, vec!["127.0.0.2:5080".parse().unwrap()]);
    assert_eq!(file.admin.listen, Some("127.0.0.1:9060".parse().unwrap()));

    let redis = Config::from_toml_str(EXAMPLE_REDIS, base).unwrap();
    assert_eq!(redis.credit.source, SourceKind::Redis);
    assert_eq!(redis.credit.redis_url, "redis://127.0.0.1:6379/0");
}

#[test]
fn shipped_examples_load_from_disk() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = Config::load(&dir.join("creditgate.toml")).unwrap();
    assert_eq!(config.credit.file, dir.join("accounts.toml"));
    Config::load(&dir.join("creditgate-redis.toml")).unwrap();
}

/// Every key of the shipped example is set to its default value, except the few the brief
/// says to change for a one-machine setup.
#[test]
fn shipped_example_states_the_defaults() {
    let example = Config::from_toml_str(EXAMPLE, Path::new("")).unwrap();
    let mut expected = Config::default();
    expected.sip.listen = vec!["127.0.0.1:5060".parse().unwrap()];
    expected.sip.upstream = vec!["127.0.0.2:5080".parse().unwrap()];
    assert_eq!(example, expected);
}

/// Every key there is (all that `check-config` prints) is shown in both shipped examples, so an
/// operator finds each option there with its default and a word of advice (issue 11). Reply
/// entries count as one key each (`retry_after` is shown only where it has a default).
#[test]
fn shipped_examples_show_every_key() {
    fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) if prefix.is_empty() => keys(&path, inner, out),
                _ => out.push(path),
            }
        }
    }
    let effective: toml::Table = toml::from_str(&Config::default().effective_toml()).unwrap();
    let mut every = Vec::new();
    keys("", &effective, &mut every);
    assert!(every.contains(&"live.lease_ttl".to_owned()), "{every:?}");
    assert!(every.contains(&"reply.no_rate".to_owned()), "{every:?}");
    for (name, example) in [
        ("creditgate.toml", EXAMPLE),
        ("creditgate-redis.toml", EXAMPLE_REDIS),
    ] {
        let doc: toml::Table = toml::from_str(example).unwrap();
        let mut shown = Vec::new();
        keys("", &doc, &mut shown);
        let missing: Vec<&String> = every.iter().filter(|k| !shown.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "config/{name} does not show {missing:?}"
        );
    }
}

/// Every table and sub-table of the shipped examples, found by walking the parsed TOML, with
/// an unknown key injected: the error must name it (STYLE rule 8).
#[test]
fn unknown_key_in_every_table_of_the_examples_is_named() {
    fn tables(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            if let toml::Value::Table(inner) = value {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                tables(&path, inner, out);
            }
        }
    }
    fn inject(table: &mut toml::Table, path: &[&str]) {
        match path {
            [] => {
                table.insert("surplus_key".into(), toml::Value::Boolean(true));
            }
            [first, rest @ ..] => match table.get_mut(*first) {
                Some(toml::Value::Table(inner)) => inject(inner, rest),
                _ => panic!("no table {first}"),
            },
        }
    }
    for example in [EXAMPLE, EXAMPLE_REDIS] {
        let doc: toml::Table = toml::from_str(example).unwrap();
        let mut paths = vec![String::new()];
        tables("", &doc, &mut paths);
        // 8 tables + the root + 8 reply entries
        assert_eq!(paths.len(), 17, "{paths:?}");
        for path in paths {
            let mut doc = doc.clone();
            let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
            inject(&mut doc, &segments);
            let text = toml::to_string(&doc).unwrap();
            let key = if path.is_empty() {
                "surplus_key".to_owned()
            } else {
                format!("{path}.surplus_key")
            };
            let message = problem_at(&text, &key);
            assert!(
                message.starts_with("unknown key (expected one of: "),
                "{message}"
            );
        }
    }
}

#[test]
fn unknown_table() {
    let msg = problem_at(&with("[sipp]\nlisten = []\n"), "sipp");
    assert!(
        msg.contains("sip, credit, live, identify, reply, admin, log"),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_its_key() {
    let msg = problem_at(&with("record_route = \"yes\"\n"), "sip.record_route");
    assert!(msg.contains("expected a boolean"), "{msg}");
    problem_at(&with("[credit]\nenforce = 1\n"), "credit.enforce");
    problem_at(
        &with("[credit]\nrefresh_interval = 60\n"),
        "credit.refresh_interval",
    );
    problem_at(&with("workers = -1\n"), "sip.workers");
    problem_at(
        &with("[live]\nmax_tracked_calls = \"many\"\n"),
        "live.max_tracked_calls",
    );
    problem_at(&with("[log]\nformat = \"xml\"\n"), "log.format");
    problem_at(&with("[credit]\nsource = \"fil\"\n"), "credit.source");
    // A table where a value goes and the other way round.
    problem_at("sip = 5\n", "sip");
    problem_at(&with("[reply]\ncps_limit = 503\n"), "reply.cps_limit");
}

#[test]
fn wrong_type_inside_an_array_names_the_index_once() {
    let all = problems("[sip]\nupstream = [\"10.0.0.5:5060\", 5]\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].key, "sip.upstream[1]");
}

#[test]
fn bad_duration_names_its_key() {
    let msg = problem_at(
        &with("[credit]\nrefresh_interval = \"60 seconds please\"\n"),
        "credit.refresh_interval",
    );
    assert!(msg.contains("is not a duration"), "{msg}");
    problem_at(
        &with("[live]\ncall_expiry = \"forever\"\n"),
        "live.call_expiry",
    );
    problem_at(&with("[live]\nreserve = \"-1s\"\n"), "live.reserve");
    problem_at(
        &with("[credit]\nrefresh_interval = \"500ms\"\n"),
        "credit.refresh_interval",
    );
}

#[test]
fn several_problems_are_all_reported() {
    let text = "\
[sip]
upstream = [\"10.0.0.5:5060\", \"nonsense\"]
upstrem = 1
record_route = \"yes\"
recv_buffer = \"8 furlongs\"
[credit]
refresh_interval = \"sixty\"
max_shrink = 1.5
redis_url = \"http://localhost\"
[live]
low_credit_threshold = \"abc\"
[identify]
order = [\"source_ip\", \"header:\"]
[reply]
insufficient_credit = { code = 200, reason = \"OK\" }
[log]
level = \"verbose\"
[admin]
listen = \"localhost\"
";
    let all = problems(text);
    let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "sip.upstrem",
        "sip.record_route",
        "sip.upstream[1]",
        "sip.recv_buffer",
        "credit.refresh_interval",
        "credit.max_shrink",
        "credit.redis_url",
        "live.low_credit_threshold",
        "identify.order[1]",
        "reply.insufficient_credit.code",
        "log.level",
        "admin.listen",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:#?}");
    }
    assert_eq!(all.len(), 12, "{all:#?}");
    // In the order of the file, whichever pass found them.
    assert_eq!(
        keys[..4],
        [
            "sip.upstream[1]",
            "sip.upstrem",
            "sip.record_route",
            "sip.recv_buffer"
        ]
    );
    assert_eq!(keys[keys.len() - 2..], ["log.level", "admin.listen"]);
    let display = ConfigError::Invalid(all.clone()).to_string();
    assert_eq!(display.lines().count(), all.len());
    assert!(display
        .lines()
        .any(|l| l.starts_with("sip.upstrem: unknown key (expected one of: listen,")));
}

#[test]
fn defaults_match_the_spec() {
    let c = ok(MINIMAL);
    let s = &c.sip;
    assert_eq!(s.listen, vec!["0.0.0.0:5060".parse().unwrap()]);
    assert_eq!(s.advertise, None);
    assert!(s.record_route);
    assert!(s.trusted.is_empty());
    assert_eq!(s.workers, 0);
    assert_eq!(s.check_methods, vec!["INVITE".to_owned()]);
    assert!(s.forward_other_methods);
    assert_eq!(s.secret, "");
    assert_eq!(s.secret_file, None);
    assert_eq!(s.recv_buffer, 8 * 1024 * 1024);
    assert_eq!(s.source_pps_limit, 2000);

    let cr = &c.credit;
    assert_eq!(cr.source, SourceKind::File);
    assert_eq!(cr.file, PathBuf::from("/etc/creditgate/accounts.toml"));
    assert_eq!(cr.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(cr.key_prefix, "cg:");
    assert_eq!(cr.refresh_interval, Duration::from_secs(60));
    assert_eq!(cr.max_staleness, Duration::from_secs(300));
    assert_eq!(cr.on_stale, OnStale::Serve);
    assert_eq!(cr.max_shrink, 0.5);
    assert_eq!(cr.on_no_snapshot, OnNoSnapshot::Reject);
    assert!(cr.enforce);

    let l = &c.live;
    assert!(!l.track_calls);
    assert_eq!(l.reserve, Duration::ZERO);
    assert!(!l.credit_scaled_channels);
    assert_eq!(l.low_credit_threshold, None);
    assert_eq!(l.max_tracked_calls, 1_000_000);
    assert_eq!(l.call_expiry, Duration::from_secs(4 * 3600));
    assert_eq!(l.ring_timeout, Duration::from_secs(3 * 60));
    assert_eq!(l.unrated, Unrated::Admit);
    assert!(!l.shared);
    assert_eq!(l.lease_ttl, Duration::from_secs(30));

    assert_eq!(
        c.identify.order,
        vec![
            IdentifyRule::SourceIp,
            IdentifyRule::Header("X-Account-Id".into()),
            IdentifyRule::AuthUser,
            IdentifyRule::FromUser
        ]
    );

    let r = &c.reply;
    let payment = ReplySpec::new(402, "Payment Required", None);
    let forbidden = ReplySpec::new(403, "Forbidden", None);
    let unavailable = ReplySpec::new(503, "Service Unavailable", None);
    assert_eq!(r.insufficient_credit, payment);
    assert_eq!(r.unknown_account, forbidden);
    assert_eq!(r.account_disabled, forbidden);
    assert_eq!(
        r.no_snapshot,
        ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(30)))
    );
    assert_eq!(r.channel_limit, unavailable);
    assert_eq!(
        r.cps_limit,
        ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(1)))
    );
    assert_eq!(r.spend_limit, payment);
    assert_eq!(r.no_rate, forbidden);

    assert_eq!(c.admin.listen, Some("127.0.0.1:9060".parse().unwrap()));
    assert_eq!(c.admin.token_file, None);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);

    // Config::default() is the same, except for the unresolved path and the empty upstream.
    let mut d = Config::default();
    assert!(d.sip.upstream.is_empty());
    d.sip.upstream = c.sip.upstream.clone();
    d.credit.file = c.credit.file.clone();
    assert_eq!(d, c);
}

#[test]
fn syntax_error_names_line_and_column() {
    let all = problems("[sip]\nupstream = [\"10.0.0.5:5060\"\n");
    assert_eq!(all.len(), 1);
    assert!(all[0].key.starts_with("line "), "{all:?}");
    assert!(all[0].message.starts_with("TOML syntax error"), "{all:?}");
    let dup = problems("[sip]\nworkers = 1\nworkers = 2\n");
    assert_eq!(dup[0].key, "line 3, column 1", "{dup:?}");
}

#[test]
fn io_error_names_the_path() {
    let path = Path::new("/nonexistent/creditgate.toml");
    let err = Config::load(path).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(
        err.to_string().contains("/nonexistent/creditgate.toml"),
        "{err}"
    );
    assert!(err.problems().is_empty());
}

#[test]
fn effective_toml_round_trips() {
    let text = with(
        "advertise = \"[2001:db8::1]:5062\"\ntrusted = [\"10.0.0.0/8\"]\nworkers = 4\n\
         recv_buffer = 65537\nsecret_file = \"/k\"\n\
         [credit]\nsource = \"redis\"\non_stale = \"reject_prepaid\"\nmax_shrink = 0.25\n\
         refresh_interval = \"90s\"\n\
         [live]\ntrack_calls = true\nreserve = \"1m 30s\"\nlow_credit_threshold = \"2.50\"\n\
         ring_timeout = \"45s\"\nunrated = \"refuse\"\nshared = true\nlease_ttl = \"2m\"\n\
         [identify]\norder = [\"header:X-Acct\", \"source_ip\"]\n\
         [reply]\nno_snapshot = { retry_after = \"\" }\nno_rate = { code = 404 }\n\
         [admin]\nlisten = \"\"\n",
    );
    let config = ok(&text);
    let printed = config.effective_toml();
    let again = ok(&printed);
    assert_eq!(again, config, "{printed}");
    assert!(
        printed.contains("refresh_interval = \"1m 30s\""),
        "{printed}"
    );
    assert!(printed.contains("recv_buffer = \"65537\""), "{printed}");
    assert!(
        printed.contains("low_credit_threshold = \"2.50\""),
        "{printed}"
    );
    assert!(printed.contains("ring_timeout = \"45s\""), "{printed}");
    assert!(printed.contains("unrated = \"refuse\""), "{printed}");
    assert!(printed.contains("lease_ttl = \"2m\""), "{printed}");
    assert_eq!(again.reply.no_rate, ReplySpec::new(404, "Not Found", None));
    assert_eq!(again.live.unrated, Unrated::Refuse);
    assert!(again.live.shared);
    // Defaults print too, and parse back to the same thing.
    let defaults = ok(MINIMAL);
    let printed = defaults.effective_toml();
    assert!(printed.contains("recv_buffer = \"8MiB\""), "{printed}");
    assert!(printed.contains("max_staleness = \"5m\""), "{printed}");
    assert!(printed.contains("retry_after = \"30s\""), "{printed}");
    assert_eq!(ok(&printed), defaults);
}

#[test]
fn effective_toml_redacts_secrets() {
    let config = ok(&with(
        "secret = \"0123456789abcdef-very-secret\"\n\
         [credit]\nredis_url = \"redis://user:hunter2hunter2@redis:6379/0\"\n",
    ));
    let printed = config.effective_toml();
    assert!(!printed.contains("very-secret"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://user:<redacted>@redis:6379/0"),
        "{printed}"
    );
    assert!(printed.contains("secret = \"<redacted>\""), "{printed}");
    // Pasted back, a redacted secret is refused, never used as a key.
    problem_at(&printed, "sip.secret");
}

#[test]
fn serde_messages_are_reworded() {
    assert_eq!(
        describe_serde_error("unknown field `x`, expected `order`"),
        "unknown key (expected one of: order)"
    );
    assert_eq!(
        describe_serde_error("unknown field `x`, expected `a` or `b`"),
        "unknown key (expected one of: a, b)"
    );
    assert_eq!(
        describe_serde_error("unknown field `x`, there are no fields"),
        "unknown key (this table has no keys)"
    );
    assert_eq!(
        describe_serde_error("invalid value: integer `-1`, expected usize"),
        "invalid value: integer `-1`, expected a non-negative integer"
    );
    assert_eq!(describe_serde_error("something else"), "something else");
}
