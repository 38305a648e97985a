//! `GET /metrics`: the Prometheus exposition of creditgate's counters (SPEC section 8).
//!
//! Boundary: the packet path counts into plain atomics ([`super::events::Counters`]) and the
//! refresh task into [`super::refresh::RefreshStats`]; nothing here runs per packet. On each
//! scrape a `prometheus-client` [`Collector`] reads those atomics and encodes them through an
//! explicit [`Registry`] (no global registry, STYLE rule 11), so the hot path pays one relaxed
//! atomic add per counter and never a lock or an allocation.
//!
//! Naming: every metric starts with `creditgate_`, carries its unit in the name (`_seconds`),
//! counters end in `_total`, and labels take only values from small fixed enums (outcome, cause,
//! kind, reason): never an account id, an address or a Call-ID.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::events::{Counter, Counters, LATENCY_BUCKETS_US, OUTCOMES};
use super::refresh::Refresher;
use super::Shared;
use crate::core::{Answer, DropReason, MethodClass, PassKind};
use crate::credit::RefusalCause;

/// Daemon-level counters that are neither packet outcomes nor refreshes.
#[derive(Debug, Default)]
pub struct OpsCounters {
    /// SIGHUP reloads whose new configuration was applied.
    pub reloads_applied: Counter,
    /// SIGHUP reloads whose new configuration was refused (the old one kept running).
    pub reloads_refused: Counter,
    /// Watchdog keep-alives withheld because a packet worker's receive task did not beat for a
    /// whole round (`systemd.rs`).
    pub watchdog_withheld: Counter,
}

/// The answers creditgate gives on its own, in the order of `Counters::answered`.
const ANSWERS: [Answer; 9] = [
    Answer::BadRequest(""),
    Answer::UnsupportedUriScheme,
    Answer::BadExtension,
    Answer::LoopDetected,
    Answer::TooManyHops,
    Answer::Unresolvable,
    Answer::VersionNotSupported,
    Answer::MethodNotAllowed,
    Answer::OptionsPing,
];

/// Drops that mean the datagram could not be read as SIP (counted as parse errors too).
const PARSE_ERROR_DROPS: [DropReason; 3] = [
    DropReason::Unparseable,
    DropReason::Malformed,
    DropReason::MalformedResponse,
];

/// Builds the registry served on `/metrics`.
pub fn registry(shared: Arc<Shared>, refresher: Refresher, ops: Arc<OpsCounters>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CreditgateCollector {
        shared,
        refresher,
        ops,
    }));
    registry
}

/// The exposition formats `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, when the scraper asks for `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an `Accept` header value.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes the registry.
pub fn encode(registry: &Registry, format: Format) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
    }
    Ok(out)
}

struct CreditgateCollector {
    shared: Arc<Shared>,
    refresher: Refresher,
    ops: Arc<OpsCounters>,
}

impl fmt::Debug for CreditgateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditgateCollector")
            .finish_non_exhaustive()
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let c = ConstCounter::new(value);
    let me = enc.encode_descriptor(name, help, unit, c.metric_type())?;
    c.encode(me)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    let me = enc.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(me)
}

/// A counter family with one label; `values` pairs a label value with a count.
fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let mut me = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        let fam = me.encode_family(&labels)?;
        ConstCounter::new(*n).encode(fam)?;
    }
    Ok(())
}

fn get(arr: &[Counter], i: usize) -> u64 {
    arr.get(i).map_or(0, Counter::get)
}

impl CreditgateCollector {
    fn encode_packets(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let c: &Counters = &self.shared.counters;
        let admitted = c.admitted.get();
        let refused: u64 = c.refused.iter().map(Counter::get).sum();
        let would_refuse: u64 = c.would_refuse.iter().map(Counter::get).sum();
        let passed: u64 = c.passed.iter().map(Counter::get).sum();
        let answered: u64 = c.answered.iter().map(Counter::get).sum();
        let dropped: u64 = c.dropped.iter().map(Counter::get).sum();

        counter_family(
            enc,
            "creditgate_messages",
            "SIP datagrams handled, by outcome: admitted/refused/would_refuse are credit-checked new calls, passed were forwarded without a check, answered got a reply of creditgate's own, dropped were discarded.",
            "outcome",
            &[
                ("admitted", admitted),
                ("refused", refused),
                ("would_refuse", would_refuse),
                ("passed", passed),
                ("answered", answered),
                ("dropped", dropped),
            ],
        )?;
        {
            let mut me = enc.encode_descriptor(
                "creditgate_requests",
                "SIP datagrams by method (requests; `response` for responses, `unknown` when not parseable far enough) and outcome.",
                None,
                MetricType::Counter,
            )?;
            for (mi, m) in MethodClass::ALL.iter().enumerate() {
                for (oi, o) in OUTCOMES.iter().enumerate() {
                    let n = c.by_method.get(mi).map_or(0, |row| get(row, oi));
                    let labels = [("method", m.as_str()), ("outcome", *o)];
                    let fam = me.encode_family(&labels)?;
                    ConstCounter::new(n).encode(fam)?;
                }
            }
        }
        counter_family(
            enc,
            "creditgate_new_calls",
            "New calls (out-of-dialog requests of a checked method) by credit decision; would_refuse = refused in dry-run mode but forwarded.",
            "outcome",
            &[
                ("admitted", admitted),
                ("refused", refused),
                ("would_refuse", would_refuse),
            ],
        )?;
        let causes: Vec<(&'static str, u64)> = RefusalCause::ALL
            .iter()
            .map(|cause| (cause.as_str(), get(&c.refused, cause.index())))
            .collect();
        counter_family(
            enc,
            "creditgate_refusals",
            "New calls refused with a SIP error reply, by cause (the [reply] key).",
            "cause",
            &causes,
        )?;
        let dry: Vec<(&'static str, u64)> = RefusalCause::ALL
            .iter()
            .map(|cause| (cause.as_str(), get(&c.would_refuse, cause.index())))
            .collect();
        counter_family(
            enc,
            "creditgate_dry_run_refusals",
            "New calls that would have been refused, forwarded because credit.enforce = false, by cause.",
            "cause",
            &dry,
        )?;
        let mut forwards: Vec<(&'static str, u64)> = vec![("new_call", admitted + would_refuse)];
        forwards.extend(
            PassKind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), get(&c.passed, i))),
        );
        counter_family(
            enc,
            "creditgate_forwards",
            "Messages forwarded, by kind: new_call = admitted (or dry-run) new calls; the other kinds passed without a credit check.",
            "kind",
            &forwards,
        )?;
        let answers: Vec<(&'static str, u64)> = ANSWERS
            .iter()
            .enumerate()
            .map(|(i, a)| (a.as_str(), get(&c.answered, i)))
            .collect();
        counter_family(
            enc,
            "creditgate_answers",
            "Replies creditgate sent on its own that are not credit refusals (400, 416, 420, 478, 482, 483, 505, 403 method not allowed, 200 to an OPTIONS ping), by kind.",
            "kind",
            &answers,
        )?;
        let drops: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .enumerate()
            .map(|(i, d)| (d.as_str(), get(&c.dropped, i)))
            .collect();
        counter_family(
            enc,
            "creditgate_drops",
            "Datagrams discarded without a reply, by reason (keepalive and ack_absorbed are normal traffic).",
            "reason",
            &drops,
        )?;
        let parse_errors: u64 = PARSE_ERROR_DROPS
            .iter()
            .filter_map(|d| DropReason::ALL.iter().position(|x| x == d))
            .map(|i| get(&c.dropped, i))
            .sum::<u64>()
            + get(&c.answered, 0);
        counter(
            enc,
            "creditgate_parse_errors",
            "Datagrams that were not valid SIP: dropped as unparseable or malformed, or answered 400 Bad Request.",
            None,
            parse_errors,
        )?;
        counter(
            enc,
            "creditgate_flood_drops",
            "Datagrams dropped by the per-source packet rate limit ([sip] source_pps_limit) before parsing.",
            None,
            c.flood_dropped.get(),
        )?;
        let bans = &self.shared.bans;
        gauge(
            enc,
            "creditgate_bans_active",
            "Source addresses banned now for authentication failures ([abuse]; GET /bans lists them).",
            None,
            i64::try_from(bans.active_at(Instant::now())).unwrap_or(i64::MAX),
        )?;
        counter(
            enc,
            "creditgate_bans_issued",
            "Bans issued after [abuse] ban_after_auth_failures authentication failures of one source.",
            None,
            bans.issued.get(),
        )?;
        counter(
            enc,
            "creditgate_ban_drops",
            "Datagrams dropped on arrival because their source was banned.",
            None,
            bans.dropped.get(),
        )?;
        counter(
            enc,
            "creditgate_bans_refused",
            "Bans not issued because the ban table was full ([abuse] max_tracked).",
            None,
            bans.refused_full.get(),
        )?;
        counter(
            enc,
            "creditgate_log_lines_suppressed",
            "Refusal log lines not written because of [log] refusal_lines_per_second (the refusals themselves are all counted in creditgate_refusals_total).",
            None,
            c.refusal_lines.suppressed.get(),
        )?;
        counter(
            enc,
            "creditgate_log_lines_dropped",
            "Log lines dropped because stderr (the journal) did not keep up and the log queue was full.",
            None,
            super::logging::dropped_lines(),
        )?;
        counter(
            enc,
            "creditgate_send_errors",
            "Datagrams the kernel refused to send (send_to failed).",
            None,
            c.send_errors.get(),
        )?;

        // The histogram: per-bucket counts, the encoder makes them cumulative. The count is the
        // sum of the buckets read here, so the exposition stays self-consistent while packets
        // are counted concurrently.
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .enumerate()
            .map(|(i, us)| (*us as f64 / 1e6, get(&c.latency_buckets, i)))
            .collect();
        buckets.push((
            f64::INFINITY,
            get(&c.latency_buckets, LATENCY_BUCKETS_US.len()),
        ));
        let count: u64 = buckets.iter().map(|b| b.1).sum();
        let sum = c.latency_sum_ns.get() as f64 / 1e9;
        let mut me = enc.encode_descriptor(
            "creditgate_decision_latency",
            "Time from a datagram's arrival to creditgate's decision about it (parse, identify, decide, build the output).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        me.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn encode_snapshot(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let snap = &self.shared.snapshot;
        let now = Instant::now();
        let policy = self.shared.policy.load();
        let age = snap.age(now);
        gauge(
            enc,
            "creditgate_snapshot_loaded",
            "1 once a credit snapshot has been loaded, 0 before the first successful load.",
            None,
            i64::from(age.is_some()),
        )?;
        if let Some(age) = age {
            gauge(
                enc,
                "creditgate_snapshot_age",
                "Age of the credit snapshot: time since the last successful full refresh.",
                Some(&Unit::Seconds),
                age.as_secs_f64(),
            )?;
        }
        gauge(
            enc,
            "creditgate_snapshot_stale",
            "1 while the snapshot is older than credit.max_staleness (or was never loaded).",
            None,
            i64::from(age.is_none_or(|a| a > policy.max_staleness)),
        )?;
        gauge(
            enc,
            "creditgate_snapshot_accounts",
            "Accounts in the credit snapshot.",
            None,
            snap.len() as i64,
        )?;
        gauge(
            enc,
            "creditgate_snapshot_max_staleness",
            "The configured credit.max_staleness.",
            Some(&Unit::Seconds),
            policy.max_staleness.as_secs_f64(),
        )?;

        let st = self.refresher.stats();
        counter_family(
            enc,
            "creditgate_refreshes",
            "Full snapshot refreshes by result: applied, failed (source error, the last snapshot stayed), held (the max_shrink guard kept the old snapshot).",
            "result",
            &[
                ("applied", st.applied.get()),
                ("failed", st.failed.get()),
                ("held", st.held.get()),
            ],
        )?;
        counter(
            enc,
            "creditgate_refresh_failures",
            "Full snapshot refreshes that failed to load (same as creditgate_refreshes_total{result=\"failed\"}).",
            None,
            st.failed.get(),
        )?;
        gauge(
            enc,
            "creditgate_refresh_last_duration",
            "Duration of the last full refresh attempt, whatever its result.",
            Some(&Unit::Seconds),
            st.last_duration().as_secs_f64(),
        )?;
        gauge(
            enc,
            "creditgate_refresh_held",
            "1 while a refresh held back by the max_shrink guard awaits confirmation (SIGHUP or POST /refresh?force=1).",
            None,
            i64::from(st.pending_hold().is_some()),
        )?;
        counter(
            enc,
            "creditgate_bad_records",
            "Account records skipped during refreshes because of a bad field.",
            None,
            st.bad_records.get(),
        )?;
        counter(
            enc,
            "creditgate_push_updates",
            "Single-account push updates applied (Redis {prefix}updates channel).",
            None,
            st.push_updates.get(),
        )
    }

    /// Live credit (SPEC 7), only while call tracking is on.
    fn encode_live(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let (tariffs, prefixes) = self.shared.snapshot.tariff_counts();
        gauge(
            enc,
            "creditgate_tariffs",
            "Tariffs loaded from the credit source ({prefix}tariff:NAME hashes, [[tariff]] tables).",
            None,
            i64::try_from(tariffs).unwrap_or(i64::MAX),
        )?;
        gauge(
            enc,
            "creditgate_tariff_prefixes",
            "Prefixes in all loaded tariffs.",
            None,
            i64::try_from(prefixes).unwrap_or(i64::MAX),
        )?;
        let Some(live) = &self.shared.live else {
            return Ok(());
        };
        let c = &self.shared.live_counters;
        gauge(
            enc,
            "creditgate_calls_tracked",
            "Calls in the call table now (ringing and answered; [live] max_tracked_calls bounds it).",
            None,
            i64::try_from(live.tracked()).unwrap_or(i64::MAX),
        )?;
        counter(
            enc,
            "creditgate_calls_answered",
            "Tracked calls answered (a 2xx to their INVITE passed).",
            None,
            c.answered.get(),
        )?;
        counter_family(
            enc,
            "creditgate_calls_ended",
            "Tracked calls ended, by cause: bye (BYE or its 200), failed (a non-2xx final before an answer), cancelled (487 after CANCEL), ring_timeout ([live] ring_timeout), expired ([live] call_expiry).",
            "cause",
            &c.ended_counts(),
        )?;
        counter_family(
            enc,
            "creditgate_live_refusals",
            "New calls refused by the live check, by reason (table_full = the call table held max_tracked_calls; key_in_use = the call's key is tracked for another account; no_rate = unrated = \"refuse\"). Dry-run decisions count too.",
            "reason",
            &c.refusal_counts(),
        )?;
        counter(
            enc,
            "creditgate_live_untracked_requests",
            "Customers' in-dialog requests with a valid Route token of a call not tracked (ended, expired, admitted before a restart): handled as out of dialog (passed in a dry run).",
            None,
            c.untracked.get(),
        )?;
        counter_family(
            enc,
            "creditgate_low_credit_events",
            "Low-credit events by outcome: published on {prefix}events, dropped (the bounded queue was full), failed (Redis down or erroring).",
            "outcome",
            &c.event_counts(),
        )?;
        gauge(
            enc,
            "creditgate_live_state",
            "Approximate heap size of the call table and its expiry queues.",
            Some(&Unit::Bytes),
            i64::try_from(live.approx_bytes()).unwrap_or(i64::MAX),
        )
    }

    fn encode_daemon(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            enc,
            "creditgate_calls_in_progress",
            "Admitted calls being tracked ([live] track_calls; 0 while call tracking is off).",
            None,
            self.shared
                .live
                .as_ref()
                .map_or(0, |l| i64::try_from(l.tracked()).unwrap_or(i64::MAX)),
        )?;
        counter_family(
            enc,
            "creditgate_config_reloads",
            "SIGHUP configuration reloads by result (refused = invalid new config, the old one kept running).",
            "result",
            &[
                ("applied", self.ops.reloads_applied.get()),
                ("refused", self.ops.reloads_refused.get()),
            ],
        )?;
        counter(
            enc,
            "creditgate_watchdog_withheld",
            "systemd watchdog keep-alives withheld because a packet worker stopped beating (stuck or dead).",
            None,
            self.ops.watchdog_withheld.get(),
        )?;
        gauge(
            enc,
            "creditgate_uptime",
            "Time since the daemon started.",
            Some(&Unit::Seconds),
            self.shared.started.elapsed().as_secs_f64(),
        )?;
        let info = [("version", env!("CARGO_PKG_VERSION"))];
        let mut me = enc.encode_descriptor(
            "creditgate_build",
            "Build information (value 1).",
            None,
            MetricType::Info,
        )?;
        me.encode_info(&info)
    }
}

impl Collector for CreditgateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.encode_packets(&mut encoder)?;
        self.encode_snapshot(&mut encoder)?;
        self.encode_live(&mut encoder)?;
        self.encode_daemon(&mut encoder)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::live::calls::{AccountFigures, LiveConfig, LiveState};
    use crate::live::ledger::Refusal;
    use crate::live::tariff::TariffEntry;
    use rust_decimal::Decimal;

    fn render(shared: Arc<Shared>) -> String {
        let cfg = Config::from_toml_str(
            "[sip]\nupstream = [\"127.0.0.2:5080\"]\n",
            std::path::Path::new(""),
        )
        .unwrap();
        let refresher = Refresher::new(&cfg, Arc::clone(&shared));
        let reg = registry(shared, refresher, Arc::default());
        encode(&reg, Format::Prometheus).unwrap()
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn live_metrics_render_only_with_tracking() {
        let off = render(super::super::live::test_shared_live(None));
        assert!(!off.contains("creditgate_calls_tracked"), "{off}");
        assert!(!off.contains("creditgate_live_refusals"), "{off}");
        assert_eq!(
            value(&off, "creditgate_calls_in_progress").as_deref(),
            Some("0")
        );

        let t0 = Instant::now();
        let live = Arc::new(LiveState::new(LiveConfig::default(), t0));
        let shared = super::super::live::test_shared_live(Some(Arc::clone(&live)));
        let acct: Arc<str> = Arc::from("acme");
        let entry = Arc::new(TariffEntry::per_minute(Decimal::ONE));
        let figures = AccountFigures::new(Decimal::TEN, t0);
        for n in 0..3u8 {
            let key = live.call_key(&[n], b"tag");
            live.admit(&acct, key, &entry, &figures, t0, 0).unwrap();
        }
        let c = &shared.live_counters;
        c.answered();
        c.ended(super::super::live::EndLabel::Cancelled);
        c.refused(Refusal::TableFull);
        c.refused(Refusal::TableFull);
        c.refused_no_rate();
        c.events_published.add(4);
        c.events_dropped.inc();
        let text = render(shared);
        let want = [
            ("creditgate_calls_tracked", "3"),
            ("creditgate_calls_in_progress", "3"),
            ("creditgate_calls_answered_total", "1"),
            ("creditgate_calls_ended_total{cause=\"bye\"}", "0"),
            ("creditgate_calls_ended_total{cause=\"cancelled\"}", "1"),
            ("creditgate_calls_ended_total{cause=\"ring_timeout\"}", "0"),
            ("creditgate_calls_ended_total{cause=\"expired\"}", "0"),
            ("creditgate_live_refusals_total{reason=\"table_full\"}", "2"),
            ("creditgate_live_refusals_total{reason=\"no_rate\"}", "1"),
            (
                "creditgate_live_refusals_total{reason=\"credit_scaled_channels\"}",
                "0",
            ),
            (
                "creditgate_low_credit_events_total{outcome=\"published\"}",
                "4",
            ),
            (
                "creditgate_low_credit_events_total{outcome=\"dropped\"}",
                "1",
            ),
            (
                "creditgate_low_credit_events_total{outcome=\"failed\"}",
                "0",
            ),
        ];
        for (series, v) in want {
            assert_eq!(
                value(&text, series).as_deref(),
                Some(v),
                "{series} in\n{text}"
            );
        }
        let bytes: u64 = value(&text, "creditgate_live_state_bytes")
            .unwrap()
            .parse()
            .unwrap();
        assert!(bytes > 0, "{text}");
        for name in [
            "creditgate_calls_tracked",
            "creditgate_calls_answered_total",
            "creditgate_calls_ended_total",
            "creditgate_live_refusals_total",
            "creditgate_low_credit_events_total",
            "creditgate_live_state_bytes",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }
}
