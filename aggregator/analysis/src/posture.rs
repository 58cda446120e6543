//! Posture and coverage: who can do what across the fleet, and how much of it goes through a gate. Every
//! figure is a count over the evidence handed in (the caller scopes it to an org, project or environment), and
//! every ratio is in integer per-mille so two replicas never disagree by a rounding.
//!
//! - [`coverage`]: tools seen in runpacks against tools whose calls went through a gate, and the high-risk
//!   calls that did not (the ungated paths), each with the runpack that shows it.
//! - [`fleet`]: agents disconnected, stale, behind their bundle, or near certificate expiry, at `now`.
//! - [`approvals`]: approval-path health — pending, granted, denied, expired, and time to approval.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::priority::RiskClass;

/// `part / whole` in per-mille, rounded down; 1000 when `whole` is 0 (nothing to cover is fully covered).
pub fn per_mille(part: u64, whole: u64) -> u32 {
    if whole == 0 {
        return 1000;
    }
    u32::try_from(part.min(whole).saturating_mul(1000) / whole).unwrap_or(1000)
}

/// One tool call a runpack recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunpackCall {
    /// The run.
    pub run_id: String,
    /// The runpack's digest (the evidence).
    pub runpack_digest: String,
    /// The tool.
    pub tool: String,
    /// The intent digest of the call, when the runpack has it.
    pub intent_digest: Option<String>,
    /// Its risk class.
    pub risk: RiskClass,
}

/// One gate decision the fleet recorded for a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    /// The run it belongs to.
    pub run_id: String,
    /// The tool.
    pub tool: String,
    /// The intent digest.
    pub intent_digest: Option<String>,
}

/// An ungated high-risk path: a tool whose high-risk calls ran without a gate decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UngatedPath {
    /// The tool.
    pub tool: String,
    /// Ungated calls of it at high or critical risk.
    pub calls: u64,
    /// The smallest digest of a runpack showing one.
    pub runpack_digest: String,
}

/// Gated tool coverage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Distinct tools seen in runpacks.
    pub tools_seen: u64,
    /// Of those, tools with every call gated.
    pub tools_fully_gated: u64,
    /// Calls seen, and calls that went through a gate.
    pub calls_seen: u64,
    /// Calls with a matching gate decision.
    pub calls_gated: u64,
    /// `calls_gated / calls_seen` in per-mille.
    pub call_coverage_per_mille: u32,
    /// High-risk paths without a gate, by tool.
    pub ungated_high_risk: Vec<UngatedPath>,
}

/// Coverage of `calls` by `decisions` (module docs). A call is gated when a decision of the same run has its
/// intent digest, or, when the runpack did not record one, when a decision of the same run names its tool.
pub fn coverage(calls: &[RunpackCall], decisions: &[GateDecision]) -> Coverage {
    let by_digest: BTreeSet<(&str, &str)> = decisions
        .iter()
        .filter_map(|d| Some((d.run_id.as_str(), d.intent_digest.as_deref()?)))
        .collect();
    let by_tool: BTreeSet<(&str, &str)> = decisions
        .iter()
        .map(|d| (d.run_id.as_str(), d.tool.as_str()))
        .collect();
    // tool -> (calls, gated calls)
    let mut tools: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut ungated: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut gated_total = 0u64;
    for c in calls {
        let gated = match c.intent_digest.as_deref() {
            Some(d) => by_digest.contains(&(c.run_id.as_str(), d)),
            None => by_tool.contains(&(c.run_id.as_str(), c.tool.as_str())),
        };
        let t = tools.entry(&c.tool).or_default();
        t.0 += 1;
        if gated {
            t.1 += 1;
            gated_total += 1;
        } else if c.risk >= RiskClass::High {
            let u = ungated.entry(&c.tool).or_insert((0, &c.runpack_digest));
            u.0 += 1;
            u.1 = u.1.min(c.runpack_digest.as_str());
        }
    }
    Coverage {
        tools_seen: tools.len() as u64,
        tools_fully_gated: tools.values().filter(|(n, g)| n == g).count() as u64,
        calls_seen: calls.len() as u64,
        calls_gated: gated_total,
        call_coverage_per_mille: per_mille(gated_total, calls.len() as u64),
        ungated_high_risk: ungated
            .into_iter()
            .map(|(tool, (calls, digest))| UngatedPath {
                tool: tool.to_owned(),
                calls,
                runpack_digest: digest.to_owned(),
            })
            .collect(),
    }
}

/// One agent as the inventory holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Connected now.
    pub connected: bool,
    /// Last contact (Unix ms).
    pub last_seen_unix_ms: i64,
    /// The bundle epoch it runs.
    pub active_epoch: Option<u64>,
    /// The epoch it should run (its audience's newest).
    pub target_epoch: Option<u64>,
    /// Its certificate's expiry (Unix ms).
    pub cert_not_after_unix_ms: i64,
}

/// Thresholds of [`fleet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetThresholds {
    /// Not seen for longer than this: stale.
    pub stale_after_ms: i64,
    /// Certificate expiring within this: near expiry.
    pub cert_warning_ms: i64,
}

/// Agent posture counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPosture {
    /// Agents.
    pub agents: u64,
    /// Not connected.
    pub disconnected: u64,
    /// Not seen within the stale threshold.
    pub stale: u64,
    /// Running an older epoch than their target (or none).
    pub behind_bundle: u64,
    /// Certificate expired or expiring within the warning threshold.
    pub cert_expiring: u64,
}

/// Agent posture at `now_unix_ms`.
pub fn fleet(agents: &[AgentState], now_unix_ms: i64, t: FleetThresholds) -> FleetPosture {
    let mut p = FleetPosture {
        agents: agents.len() as u64,
        ..Default::default()
    };
    for a in agents {
        p.disconnected += u64::from(!a.connected);
        p.stale += u64::from(now_unix_ms.saturating_sub(a.last_seen_unix_ms) > t.stale_after_ms);
        p.behind_bundle += u64::from(match (a.active_epoch, a.target_epoch) {
            (Some(active), Some(target)) => active < target,
            (None, Some(_)) => true,
            _ => false,
        });
        p.cert_expiring +=
            u64::from(a.cert_not_after_unix_ms.saturating_sub(now_unix_ms) <= t.cert_warning_ms);
    }
    p
}

/// What became of one approval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Still waiting.
    Pending,
    /// Granted after `after_ms`.
    Granted {
        /// Time from request to grant.
        after_ms: u64,
    },
    /// Denied.
    Denied,
    /// Expired unanswered.
    Expired,
}

/// Approval-path health.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalHealth {
    /// Requests.
    pub requests: u64,
    /// Pending now.
    pub pending: u64,
    /// Granted.
    pub granted: u64,
    /// Denied.
    pub denied: u64,
    /// Expired unanswered.
    pub expired: u64,
    /// Median time to grant (lower median), if any were granted.
    pub median_time_to_grant_ms: Option<u64>,
    /// 90th percentile time to grant (nearest rank), if any were granted.
    pub p90_time_to_grant_ms: Option<u64>,
}

/// Approval-path health over `outcomes`.
pub fn approvals(outcomes: &[ApprovalOutcome]) -> ApprovalHealth {
    let mut h = ApprovalHealth {
        requests: outcomes.len() as u64,
        ..Default::default()
    };
    let mut times = Vec::new();
    for o in outcomes {
        match o {
            ApprovalOutcome::Pending => h.pending += 1,
            ApprovalOutcome::Granted { after_ms } => {
                h.granted += 1;
                times.push(*after_ms);
            }
            ApprovalOutcome::Denied => h.denied += 1,
            ApprovalOutcome::Expired => h.expired += 1,
        }
    }
    times.sort_unstable();
    let rank = |q_per_mille: usize| {
        (!times.is_empty()).then(|| {
            let r = (times.len() * q_per_mille)
                .div_ceil(1000)
                .clamp(1, times.len());
            times[r - 1]
        })
    };
    h.median_time_to_grant_ms = rank(500);
    h.p90_time_to_grant_ms = rank(900);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(run: &str, rp: &str, tool: &str, digest: Option<&str>, risk: RiskClass) -> RunpackCall {
        RunpackCall {
            run_id: run.into(),
            runpack_digest: rp.into(),
            tool: tool.into(),
            intent_digest: digest.map(str::to_owned),
            risk,
        }
    }

    fn decision(run: &str, tool: &str, digest: Option<&str>) -> GateDecision {
        GateDecision {
            run_id: run.into(),
            tool: tool.into(),
            intent_digest: digest.map(str::to_owned),
        }
    }

    #[test]
    fn coverage_counts_gated_calls_and_names_high_risk_ungated_paths() {
        let calls = [
            call("r1", "rp-b", "tool.read", Some("i1"), RiskClass::Low),
            call("r1", "rp-b", "tool.delete", Some("i2"), RiskClass::High),
            call("r2", "rp-a", "tool.delete", Some("i3"), RiskClass::Critical),
            call("r2", "rp-a", "tool.write", None, RiskClass::Medium),
            call("r3", "rp-c", "tool.read", Some("i1"), RiskClass::Low),
        ];
        let decisions = [
            decision("r1", "tool.read", Some("i1")),
            decision("r1", "tool.delete", Some("i2")),
            decision("r2", "tool.write", None),
            // The same intent in another run does not cover r3's call.
            decision("r9", "tool.read", Some("i1")),
        ];
        let c = coverage(&calls, &decisions);
        assert_eq!((c.tools_seen, c.tools_fully_gated), (3, 1));
        assert_eq!((c.calls_seen, c.calls_gated), (5, 3));
        assert_eq!(c.call_coverage_per_mille, 600);
        assert_eq!(
            c.ungated_high_risk,
            [UngatedPath {
                tool: "tool.delete".into(),
                calls: 1,
                runpack_digest: "rp-a".into()
            }]
        );
        assert_eq!(coverage(&[], &decisions).call_coverage_per_mille, 1000);
    }

    #[test]
    fn fleet_posture_counts_each_condition_at_now() {
        let now = 10_000_000;
        let agent = |connected, seen, active, target, cert| AgentState {
            connected,
            last_seen_unix_ms: seen,
            active_epoch: active,
            target_epoch: target,
            cert_not_after_unix_ms: cert,
        };
        let agents = [
            agent(true, now, Some(3), Some(3), now + 100_000_000),
            agent(false, now - 5_000_000, Some(2), Some(3), now + 1_000),
            agent(false, now - 10, None, Some(1), now - 1),
            agent(true, now, Some(4), None, now + 100_000_000),
        ];
        let p = fleet(
            &agents,
            now,
            FleetThresholds {
                stale_after_ms: 3_600_000,
                cert_warning_ms: 86_400_000,
            },
        );
        assert_eq!(
            p,
            FleetPosture {
                agents: 4,
                disconnected: 2,
                stale: 1,
                behind_bundle: 2,
                cert_expiring: 2,
            }
        );
    }

    #[test]
    fn approval_health_has_counts_and_rank_quantiles() {
        let mut outcomes: Vec<ApprovalOutcome> = (1..=10)
            .rev()
            .map(|i| ApprovalOutcome::Granted { after_ms: i * 1000 })
            .collect();
        outcomes.extend([
            ApprovalOutcome::Pending,
            ApprovalOutcome::Denied,
            ApprovalOutcome::Expired,
            ApprovalOutcome::Expired,
        ]);
        let h = approvals(&outcomes);
        assert_eq!(
            (h.requests, h.pending, h.granted, h.denied, h.expired),
            (14, 1, 10, 1, 2)
        );
        assert_eq!(h.median_time_to_grant_ms, Some(5000));
        assert_eq!(h.p90_time_to_grant_ms, Some(9000));
        assert_eq!(approvals(&[]).median_time_to_grant_ms, None);
        assert_eq!(per_mille(1, 3), 333);
    }
}
