//! Prometheus metrics of the aggregator: named constants, lock-free counters, text exposition.
//!
//! The aggregator keeps its own small registry instead of a process-global recorder so that several servers can
//! run in one test process without sharing counters. Label values are bounded (backend, refusal code, message
//! kind), never tenant or agent ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const RECORDS_INSERTED: &str = "gait_aggregator_records_inserted_total";
pub const RECORDS_DUPLICATE: &str = "gait_aggregator_records_duplicate_total";
pub const RECORDS_CONFLICT: &str = "gait_aggregator_records_conflict_total";
pub const RECORD_GAPS: &str = "gait_aggregator_record_gaps_total";
/// Records refused, labelled `code` with [`gait_wire::RefusalCode::as_str`] (a bounded set).
pub const RECORDS_REFUSED: &str = "gait_aggregator_records_refused_total";
/// Skipped seqs recognised as refused earlier (the agent quarantined them), so not counted as gaps.
pub const RECORDS_REFUSED_SKIPPED: &str = "gait_aggregator_records_refused_skipped_total";
pub const BATCHES_COMMITTED: &str = "gait_aggregator_batches_committed_total";
pub const CONNECTIONS_ACCEPTED: &str = "gait_aggregator_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "gait_aggregator_connections_refused_total";
pub const CONNECTIONS_OPEN: &str = "gait_aggregator_connections_open";
pub const PROTOCOL_ERRORS: &str = "gait_aggregator_protocol_errors_total";
pub const BUNDLES_PUBLISHED: &str = "gait_aggregator_bundles_published_total";
pub const BUNDLES_SERVED: &str = "gait_aggregator_bundles_served_total";
pub const BUNDLE_REFUSALS_REPORTED: &str = "gait_aggregator_bundle_refusals_reported_total";
pub const LONG_POLLS_WAITING: &str = "gait_aggregator_long_polls_waiting";
pub const HTTP_REQUESTS: &str = "gait_aggregator_http_requests_total";
pub const PRESENCE_COMMITS: &str = "gait_aggregator_presence_commits_total";
pub const TLS_SESSION_TICKETS: &str = "gait_aggregator_tls_session_tickets_total";
pub const AUTH_FAILURES: &str = "gait_aggregator_http_auth_failures_total";
pub const HTTP_CONNECTIONS_ACCEPTED: &str = "gait_aggregator_http_connections_accepted_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "gait_aggregator_http_connections_refused_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "gait_aggregator_http_connections_open";
pub const HTTP_CONNECTIONS_EVICTED: &str = "gait_aggregator_http_connections_evicted_total";
pub const HTTP_TLS_HANDSHAKE_FAILURES: &str = "gait_aggregator_http_tls_handshake_failures_total";
/// Agent identity alerts, labelled `kind` with [`gait_store::AlertKind::as_str`] (`duplicate_instance`: a
/// second live instance of one identity refused; `instance_behind`: a new instance behind the committed head).
/// Each one is also a durable `agent_alerts` row, so a restart loses only the rate, never the record.
pub const IDENTITY_ALERTS: &str = "gait_aggregator_identity_alerts_total";

/// Help text for each metric, rendered as `# HELP` lines.
const HELP: &[(&str, &str, &str)] = &[
    (
        RECORDS_INSERTED,
        "counter",
        "Outbox records committed to the store.",
    ),
    (
        RECORDS_DUPLICATE,
        "counter",
        "Redelivered records recognised as already stored.",
    ),
    (
        RECORDS_CONFLICT,
        "counter",
        "Records not stored because their sequence was stored with a different hash (kept the original; the agent quarantines its record). Durable per agent as agents.conflict_count.",
    ),
    (
        RECORD_GAPS,
        "counter",
        "Sequence gaps or hash-chain breaks detected in agent streams.",
    ),
    (
        RECORDS_REFUSED,
        "counter",
        "Records refused, by refusal code (a permanent code makes the agent quarantine the record).",
    ),
    (
        RECORDS_REFUSED_SKIPPED,
        "counter",
        "Seqs skipped by an agent stream that were refused earlier (quarantined by the agent), not counted as gaps.",
    ),
    (
        BATCHES_COMMITTED,
        "counter",
        "Record batches committed and acknowledged.",
    ),
    (
        CONNECTIONS_ACCEPTED,
        "counter",
        "QUIC connections that completed the mutual-TLS handshake.",
    ),
    (
        CONNECTIONS_REFUSED,
        "counter",
        "QUIC connection attempts refused during the handshake.",
    ),
    (
        CONNECTIONS_OPEN,
        "gauge",
        "Agent connections currently open.",
    ),
    (
        PROTOCOL_ERRORS,
        "counter",
        "Streams or connections closed for a protocol violation.",
    ),
    (
        BUNDLES_PUBLISHED,
        "counter",
        "Policy bundles signed and published.",
    ),
    (BUNDLES_SERVED, "counter", "Policy bundles sent to agents."),
    (
        BUNDLE_REFUSALS_REPORTED,
        "counter",
        "Bundle refusals reported by agents.",
    ),
    (
        LONG_POLLS_WAITING,
        "gauge",
        "Bundle long-polls currently waiting.",
    ),
    (HTTP_REQUESTS, "counter", "HTTP API requests served."),
    (
        AUTH_FAILURES,
        "counter",
        "HTTP API requests refused for a missing or invalid admin token, by reason.",
    ),
    (
        PRESENCE_COMMITS,
        "counter",
        "Group commits of agent hellos and last-seen refreshes.",
    ),
    (
        IDENTITY_ALERTS,
        "counter",
        "Agent identity alerts by kind: a second live instance of one identity refused, or a new instance behind the committed head (durable rows in agent_alerts).",
    ),
    (
        TLS_SESSION_TICKETS,
        "counter",
        "TLS session tickets by outcome: issued, resumed (a handshake without certificates), refused (forged, foreign or expired; a full handshake followed).",
    ),
];

/// A counter's identity: metric name and an optional (label, value) pair.
type CounterKey = (&'static str, Option<(&'static str, String)>);

/// Counters and gauges keyed by metric name and a single bounded label pair.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<CounterKey, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<&'static str, Arc<AtomicI64>>>,
    /// The HTTP server's connection counters, once it runs.
    http: std::sync::OnceLock<Arc<gait_runtime::http::Stats>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes the HTTP server's connection counters (accepted, refused at the cap, open).
    pub fn attach_http_stats(&self, stats: Arc<gait_runtime::http::Stats>) {
        let _ = self.http.set(stats);
    }

    /// Add `n` to a counter without labels.
    pub fn inc(&self, name: &'static str, n: u64) {
        self.counter(name, None).fetch_add(n, Ordering::Relaxed);
    }

    /// Add `n` to a counter with one label whose values come from a bounded set.
    pub fn inc_labeled(&self, name: &'static str, label: &'static str, value: &str, n: u64) {
        self.counter(name, Some((label, value.to_owned())))
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Move a gauge by `delta`.
    pub fn gauge_add(&self, name: &'static str, delta: i64) {
        self.gauge(name).fetch_add(delta, Ordering::Relaxed);
    }

    pub fn counter_value(&self, name: &'static str) -> u64 {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn gauge_value(&self, name: &'static str) -> i64 {
        self.gauge(name).load(Ordering::Relaxed)
    }

    /// The counter cell itself, for hot paths that count without a map lookup.
    pub fn counter_handle(
        &self,
        name: &'static str,
        label: &'static str,
        value: &str,
    ) -> Arc<AtomicU64> {
        self.counter(name, Some((label, value.to_owned())))
    }

    fn counter(&self, name: &'static str, label: Option<(&'static str, String)>) -> Arc<AtomicU64> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((name, label)).or_default().clone()
    }

    fn gauge(&self, name: &'static str) -> Arc<AtomicI64> {
        let mut map = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name).or_default().clone()
    }

    /// Render every known metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP gait_aggregator_build_info The running build (always 1)."
        );
        let _ = writeln!(out, "# TYPE gait_aggregator_build_info gauge");
        let _ = writeln!(
            out,
            "gait_aggregator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let http = self.http.get();
        for (name, kind, help, value) in [
            (
                HTTP_CONNECTIONS_ACCEPTED,
                "counter",
                "HTTP API connections admitted.",
                http.map_or(0, |s| s.accepted()),
            ),
            (
                HTTP_CONNECTIONS_REFUSED,
                "counter",
                "HTTP API connections closed at once because http.max_connections were open, each with a request in flight.",
                http.map_or(0, |s| s.refused()),
            ),
            (
                HTTP_CONNECTIONS_EVICTED,
                "counter",
                "Idle HTTP API connections closed to admit a new one at http.max_connections.",
                http.map_or(0, |s| s.evicted()),
            ),
            (
                HTTP_TLS_HANDSHAKE_FAILURES,
                "counter",
                "HTTPS API connections closed because the TLS handshake failed or did not finish within http.header_timeout_ms.",
                http.map_or(0, |s| s.handshake_failures()),
            ),
            (
                HTTP_CONNECTIONS_OPEN,
                "gauge",
                "HTTP API connections open now.",
                http.map_or(0, |s| u64::try_from(s.open()).unwrap_or(u64::MAX)),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if *kind == "gauge" {
                let v = gauges.get(name).map_or(0, |g| g.load(Ordering::Relaxed));
                let _ = writeln!(out, "{name} {v}");
                continue;
            }
            let mut any = false;
            for ((n, label), c) in counters.iter() {
                if n != name {
                    continue;
                }
                any = true;
                let v = c.load(Ordering::Relaxed);
                match label {
                    Some((k, val)) => {
                        let _ = writeln!(out, "{name}{{{k}=\"{}\"}} {v}", escape_label(val));
                    }
                    None => {
                        let _ = writeln!(out, "{name} {v}");
                    }
                }
            }
            if !any {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_metric_with_type_and_current_value() {
        let m = Metrics::new();
        m.inc(RECORDS_INSERTED, 3);
        m.inc_labeled(CONNECTIONS_REFUSED, "reason", "revoked", 2);
        m.gauge_add(CONNECTIONS_OPEN, 5);
        m.gauge_add(CONNECTIONS_OPEN, -1);
        let text = m.render();
        assert!(text.contains("# TYPE gait_aggregator_records_inserted_total counter"));
        assert!(text.contains("\ngait_aggregator_records_inserted_total 3\n"));
        assert!(text.contains("gait_aggregator_connections_refused_total{reason=\"revoked\"} 2"));
        assert!(text.contains("\ngait_aggregator_connections_open 4\n"));
        assert!(text.contains("\ngait_aggregator_bundles_published_total 0\n"));
        assert!(text.contains(&format!(
            "gait_aggregator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        for (name, _, _) in HELP {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
        }
    }
}
