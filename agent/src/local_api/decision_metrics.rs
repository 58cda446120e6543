//! Counters of the local decision API for `/metrics`: decisions by answered verdict (every verdict present
//! from start, at zero) and a latency histogram of whole decisions (decide, sign, record durably).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gait_policy::Verdict;

/// Verdict labels, in the order of [`DecisionMetrics::by_verdict`].
const VERDICTS: [&str; 4] = ["allow", "block", "require_approval", "dry_run"];
/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 11] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Decisions answered, by verdict, and how long they took.
#[derive(Debug, Default)]
pub struct DecisionMetrics {
    by_verdict: [AtomicU64; 4],
    buckets: [AtomicU64; 11],
    count: AtomicU64,
    sum_micros: AtomicU64,
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
        self.by_verdict[index].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends both series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let name = "gait_agent_decisions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Decisions answered by the local API, by verdict."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (verdict, n) in VERDICTS.iter().zip(&self.by_verdict) {
            let _ = writeln!(
                out,
                "{name}{{verdict=\"{verdict}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let name = "gait_agent_decision_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer a decision: decide, sign the trace, record it durably."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_starts_at_zero_and_buckets_are_cumulative() {
        let m = DecisionMetrics::default();
        let mut empty = String::new();
        m.render(&mut empty);
        for v in VERDICTS {
            assert!(empty.contains(&format!("gait_agent_decisions_total{{verdict=\"{v}\"}} 0")));
        }
        m.observe(Verdict::Block, Duration::from_micros(800));
        m.observe(Verdict::Allow, Duration::from_millis(30));
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("gait_agent_decisions_total{verdict=\"block\"} 1"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("gait_agent_decision_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("gait_agent_decision_duration_seconds_count 2"));
    }
}
