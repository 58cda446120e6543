//! Metrics of the local decision API for `/metrics`: decisions by answered verdict (every verdict present from
//! start, at zero), a latency histogram of whole decisions (decide, sign, record durably), and the outbox's
//! group commits every durable record waits for (duration and records per commit), kept in this agent's own
//! `prometheus-client` registry (several agents in one test process never share series).

use std::time::Duration;

use gait_policy::Verdict;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Verdict labels, every one registered at zero.
const VERDICTS: [&str; 4] = ["allow", "block", "require_approval", "dry_run"];
/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 11] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Upper bounds of the commit duration buckets, seconds (one fsync is ~0.1–0.2 ms on a quiet disk).
const COMMIT_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Upper bounds of the records-per-commit buckets (the committer takes at most 512 at once).
const GROUP_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Decisions answered, by verdict, and how long they took; the outbox's group commits.
#[derive(Debug)]
pub struct DecisionMetrics {
    registry: Registry,
    /// One counter per entry of [`VERDICTS`], taken from the family once so a decision never locks the family.
    by_verdict: [Counter; 4],
    duration: Histogram,
    commits: CommitMetrics,
}

/// The outbox group commits' histograms (cheap clones sharing the registered series).
#[derive(Debug, Clone)]
pub struct CommitMetrics {
    /// Wall time of one durable group commit, from the write transaction's start to its fsync'd end.
    pub duration: Histogram,
    /// Records written by one group commit.
    pub records: Histogram,
    /// Group commits made durable by one synced frame of the outbox's write-ahead log.
    pub through_log: Counter,
    /// Group commits made durable by a durable commit of the database (every 128th, or the log full).
    pub through_database: Counter,
}

impl Default for DecisionMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let by_verdict = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let counters = VERDICTS.map(|v| by_verdict.get_or_create(&[("verdict", v)]).clone());
        gait_runtime::metrics::register(
            &mut registry,
            "gait_agent_decisions_total",
            "Decisions answered by the local API, by verdict.",
            by_verdict.clone(),
        );
        let duration = Histogram::new(BUCKETS);
        gait_runtime::metrics::register(
            &mut registry,
            "gait_agent_decision_duration_seconds",
            "Time to answer a decision: decide, sign the trace, record it durably.",
            duration.clone(),
        );
        let by_durability = Family::<[(&'static str, &'static str); 1], Counter>::default();
        // One statement each: `get_or_create` hands out a read guard, which a second call in the same
        // expression (wanting the write lock to insert) would wait for forever.
        let through_log = by_durability
            .get_or_create(&[("durable_in", "log")])
            .clone();
        let through_database = by_durability
            .get_or_create(&[("durable_in", "database")])
            .clone();
        let commits = CommitMetrics {
            duration: Histogram::new(COMMIT_BUCKETS),
            records: Histogram::new(GROUP_BUCKETS),
            through_log,
            through_database,
        };
        gait_runtime::metrics::register(
            &mut registry,
            "gait_agent_outbox_commits_total",
            "Outbox group commits by where they were made durable: one synced frame of the write-ahead log \
             (agent.wal), or a durable commit of the database (every 128th group, or when the log is full or \
             failed).",
            by_durability,
        );
        gait_runtime::metrics::register(
            &mut registry,
            "gait_agent_outbox_commit_duration_seconds",
            "Time of one durable outbox group commit (write and fsync); every record waits for one.",
            commits.duration.clone(),
        );
        gait_runtime::metrics::register(
            &mut registry,
            "gait_agent_outbox_commit_records",
            "Records written by one durable outbox group commit.",
            commits.records.clone(),
        );
        Self {
            registry,
            by_verdict: counters,
            duration,
            commits,
        }
    }
}

impl DecisionMetrics {
    /// Counts one answered decision.
    pub fn observe(&self, verdict: Verdict, took: Duration) {
        let index = match verdict {
            Verdict::Allow => 0,
            Verdict::Block => 1,
            Verdict::RequireApproval => 2,
            Verdict::DryRun => 3,
        };
        self.by_verdict[index].inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// The histograms every outbox group commit observes.
    pub fn commit_metrics(&self) -> CommitMetrics {
        self.commits.clone()
    }

    /// The registry holding every series (encode it with the scrape's other series).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &DecisionMetrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, m.registry()).expect("encode");
        gait_runtime::metrics::to_text_format(&out)
    }

    #[test]
    fn every_verdict_starts_at_zero_and_buckets_are_cumulative() {
        let m = DecisionMetrics::default();
        let empty = render(&m);
        for v in VERDICTS {
            assert!(
                empty.contains(&format!("gait_agent_decisions_total{{verdict=\"{v}\"}} 0")),
                "{empty}"
            );
        }
        m.observe(Verdict::Block, Duration::from_micros(800));
        m.observe(Verdict::Allow, Duration::from_millis(30));
        let text = render(&m);
        assert!(text.contains("# TYPE gait_agent_decisions_total counter"));
        assert!(!text.contains(".."), "{text}");
        assert!(text.contains("gait_agent_decisions_total{verdict=\"block\"} 1"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("gait_agent_decision_duration_seconds_count 2"));
    }
}
