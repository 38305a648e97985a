//! `[reply] reveal_cause` (issue 9 item 14): with `false`, an unauthenticated scanner
//! (`svwar -m INVITE`) cannot tell accounts without credit and disabled accounts from
//! non-accounts: all three get the `unknown_account` reply, and no `Reason` header names the
//! cause; creditgate still logs and counts the real cause. With the default (`true`) each cause
//! keeps its own code and Reason.

use crate::harness::{
    config_with_admin, header, metric, scrape, status_code, text, unique, Caller, Daemon, Request,
    Switch, ACCOUNTS, WAIT,
};

/// (caller, real cause): bob has no credit, mallory is disabled, nobody is no account.
const CASES: [(&str, &str); 3] = [
    ("bob", "insufficient_credit"),
    ("mallory", "account_disabled"),
    ("nobody", "unknown_account"),
];

/// Sends one new call from `user` and returns the refusal.
fn refusal(daemon: &Daemon, caller: &Caller, user: &str) -> Vec<u8> {
    let call_id = format!("reveal-{user}-{}", unique());
    let invite = Request::invite(caller.addr(), daemon.sip_addr(), &call_id, user).build();
    caller.send(&invite, daemon.sip_addr());
    caller
        .recv_or_fail(WAIT, &format!("the refusal of {user}"))
        .0
}

#[test]
fn hidden_cause_makes_refusals_look_alike() {
    let switch = Switch::bind();
    let config = config_with_admin("60s", switch.addr());
    let config = format!("{config}\n[reply]\nreveal_cause = false\n");
    let mut daemon = Daemon::start(&config, ACCOUNTS);
    let admin = daemon.admin_addr();
    let caller = Caller::bind();
    let replies: Vec<Vec<u8>> = CASES
        .iter()
        .map(|(user, _)| refusal(&daemon, &caller, user))
        .collect();
    for ((user, _), reply) in CASES.iter().zip(&replies) {
        assert_eq!(
            (status_code(reply), crate::harness::start_line(reply)),
            (Some(403), "SIP/2.0 403 Forbidden".to_owned()),
            "{user}: {}",
            text(reply)
        );
        assert_eq!(
            header(reply, "Reason"),
            None,
            "{user}: the Reason header tells the cause: {}",
            text(reply)
        );
    }
    // The header names of the three replies are the same, in the same order.
    let names = |m: &[u8]| -> Vec<String> {
        crate::harness::header_lines(m)
            .into_iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect()
    };
    assert_eq!(names(&replies[0]), names(&replies[1]));
    assert_eq!(names(&replies[0]), names(&replies[2]));
    assert!(switch
        .recv_timeout(std::time::Duration::from_millis(1))
        .is_none());

    // Still counted and logged with the real cause.
    let m = scrape(admin);
    for (user, cause) in CASES {
        assert_eq!(
            metric(&m, "creditgate_refusals_total", &[("cause", cause)]),
            1.0,
            "{user}: {cause} not counted"
        );
        let needle = format!("cause=\"{cause}\"");
        if !daemon.wait_for_log(&needle, 1, WAIT) {
            daemon.fail(&format!("{user}: no log line with {needle}"));
        }
    }
}

#[test]
fn revealed_cause_by_default() {
    let switch = Switch::bind();
    let config = config_with_admin("60s", switch.addr());
    let daemon = Daemon::start(&config, ACCOUNTS);
    let caller = Caller::bind();
    let expected = [
        (402, "insufficient_credit"),
        (403, "account_disabled"),
        (403, "unknown_account"),
    ];
    for ((user, _), (code, cause)) in CASES.iter().zip(expected) {
        let reply = refusal(&daemon, &caller, user);
        assert_eq!(status_code(&reply), Some(code), "{user}: {}", text(&reply));
        let reason = header(&reply, "Reason").unwrap_or_default();
        assert!(
            reason.contains(&format!("text=\"{cause}\"")),
            "{user}: Reason {reason:?}"
        );
    }
}
