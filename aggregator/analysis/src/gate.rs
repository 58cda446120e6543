//! Regress posture and the change-management gate.
//!
//! - [`regress_posture`]: pass and fail counts per project over a window ending at `now`, the pass rate in
//!   per-mille, and its trend against the window before (the drift hotspots are the projects whose rate fell
//!   most).
//! - [`change_gate`]: the one answer a deployment pipeline asks for an environment — pass, or fail with every
//!   reason — from conformance, the regress posture, open critical families and rollouts in flight. Each rule
//!   is a plain threshold so a failed gate says exactly what to fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::posture::per_mille;

/// Regress runs of a project at one time (one run, or a day's count of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegressOutcome {
    /// The project (`<org>/<project>`).
    pub project: String,
    /// When they ran (Unix ms).
    pub at_unix_ms: i64,
    /// How many passed.
    pub passed: u64,
    /// How many failed.
    pub failed: u64,
}

/// A project's regress posture over the window, with the window before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRegress {
    /// The project.
    pub project: String,
    /// Runs that passed in the window.
    pub passed: u64,
    /// Runs that failed in the window.
    pub failed: u64,
    /// Pass rate in the window, per-mille (1000 with no runs).
    pub pass_per_mille: u32,
    /// Pass rate in the window before, per-mille, when it had runs.
    pub previous_pass_per_mille: Option<u32>,
    /// `pass_per_mille - previous_pass_per_mille` (negative: getting worse).
    pub trend_per_mille: Option<i64>,
}

/// Regress posture per project over `[now - window, now)`, compared with `[now - 2·window, now - window)`, sorted
/// with the worst trend first (then by project), so the head of the list is the drift hotspots.
pub fn regress_posture(
    outcomes: &[RegressOutcome],
    now_unix_ms: i64,
    window_ms: i64,
) -> Vec<ProjectRegress> {
    let start = now_unix_ms.saturating_sub(window_ms);
    let before = start.saturating_sub(window_ms);
    // project -> [(passed, failed) now, (passed, failed) before]
    let mut by: BTreeMap<&str, [(u64, u64); 2]> = BTreeMap::new();
    for o in outcomes {
        let slot = if (start..now_unix_ms).contains(&o.at_unix_ms) {
            0
        } else if (before..start).contains(&o.at_unix_ms) {
            1
        } else {
            continue;
        };
        let e = &mut by.entry(&o.project).or_default()[slot];
        e.0 += o.passed;
        e.1 += o.failed;
    }
    let mut rows: Vec<ProjectRegress> = by
        .into_iter()
        .filter(|(_, [now, _])| now.0 + now.1 > 0)
        .map(|(project, [now, prev])| {
            let pass = per_mille(now.0, now.0 + now.1);
            let previous = (prev.0 + prev.1 > 0).then(|| per_mille(prev.0, prev.0 + prev.1));
            ProjectRegress {
                project: project.to_owned(),
                passed: now.0,
                failed: now.1,
                pass_per_mille: pass,
                previous_pass_per_mille: previous,
                trend_per_mille: previous.map(|p| i64::from(pass) - i64::from(p)),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        a.trend_per_mille
            .unwrap_or(0)
            .cmp(&b.trend_per_mille.unwrap_or(0))
            .then_with(|| a.project.cmp(&b.project))
    });
    rows
}

/// What the change gate reads for one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateInputs {
    /// The environment conforms to the org's required baseline.
    pub conforms: bool,
    /// Why not, when it does not (from conformance).
    pub conformance_reason: Option<String>,
    /// The environment's project regress pass rate over the window, per-mille (`None`: no runs).
    pub regress_pass_per_mille: Option<u32>,
    /// Open families at or above the critical priority, by dedup key.
    pub open_critical_families: Vec<String>,
    /// Rollouts in flight on the environment, by id.
    pub rollouts_in_flight: Vec<String>,
}

/// The gate's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// Lowest acceptable regress pass rate, per-mille.
    pub min_regress_pass_per_mille: u32,
    /// No regress run in the window fails the gate.
    pub require_regress_runs: bool,
    /// A rollout in flight fails the gate.
    pub block_during_rollout: bool,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            min_regress_pass_per_mille: 950,
            require_regress_runs: false,
            block_during_rollout: true,
        }
    }
}

/// One reason the gate failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReason {
    /// Which check (`conformance`, `regress`, `families`, `rollouts`).
    pub check: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// Every check passed.
    pub pass: bool,
    /// Why not, one entry per failed check, in check order.
    pub reasons: Vec<GateReason>,
}

/// The change-management gate for one environment (module docs).
pub fn change_gate(inputs: &GateInputs, policy: &GatePolicy) -> GateVerdict {
    let mut reasons = Vec::new();
    let mut fail = |check: &str, message: String| {
        reasons.push(GateReason {
            check: check.to_owned(),
            message,
        })
    };
    if !inputs.conforms {
        fail(
            "conformance",
            format!(
                "the environment does not conform to the org's baseline: {}",
                inputs
                    .conformance_reason
                    .as_deref()
                    .unwrap_or("see `policy conformance`")
            ),
        );
    }
    match inputs.regress_pass_per_mille {
        Some(rate) if rate < policy.min_regress_pass_per_mille => fail(
            "regress",
            format!(
                "regress pass rate {}.{}% is under the required {}.{}%",
                rate / 10,
                rate % 10,
                policy.min_regress_pass_per_mille / 10,
                policy.min_regress_pass_per_mille % 10
            ),
        ),
        None if policy.require_regress_runs => fail(
            "regress",
            "no regress run in the window: run the suite before deploying".to_owned(),
        ),
        _ => {}
    }
    if !inputs.open_critical_families.is_empty() {
        let mut keys = inputs.open_critical_families.clone();
        keys.sort();
        fail(
            "families",
            format!("open critical incident families: {}", keys.join(", ")),
        );
    }
    if policy.block_during_rollout && !inputs.rollouts_in_flight.is_empty() {
        let mut ids = inputs.rollouts_in_flight.clone();
        ids.sort();
        fail(
            "rollouts",
            format!(
                "rollouts in flight: {} (finish or abort them first)",
                ids.join(", ")
            ),
        );
    }
    GateVerdict {
        pass: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(project: &str, at: i64, passed: bool) -> RegressOutcome {
        RegressOutcome {
            project: project.into(),
            at_unix_ms: at,
            passed: u64::from(passed),
            failed: u64::from(!passed),
        }
    }

    #[test]
    fn a_count_of_runs_weighs_as_that_many_runs() {
        let counted = [RegressOutcome {
            project: "acme/web".into(),
            at_unix_ms: 500,
            passed: 3,
            failed: 1,
        }];
        let single = [
            run("acme/web", 500, true),
            run("acme/web", 500, true),
            run("acme/web", 500, true),
            run("acme/web", 500, false),
        ];
        let got = regress_posture(&counted, 1_000, 600);
        assert_eq!(got, regress_posture(&single, 1_000, 600));
        assert_eq!(
            (got[0].passed, got[0].failed, got[0].pass_per_mille),
            (3, 1, 750)
        );
    }

    #[test]
    fn posture_compares_windows_and_puts_the_worst_trend_first() {
        let now = 1_000;
        let outcomes = [
            // web: 4/4 before, 1/2 now -> 500, trend -500.
            run("acme/web", 10, true),
            run("acme/web", 20, true),
            run("acme/web", 30, true),
            run("acme/web", 40, true),
            run("acme/web", 600, true),
            run("acme/web", 700, false),
            // api: 1/2 before, 2/2 now -> 1000, trend +500.
            run("acme/api", 100, true),
            run("acme/api", 200, false),
            run("acme/api", 800, true),
            run("acme/api", 999, true),
            // ops: only now.
            run("acme/ops", 900, false),
            // outside both windows, and at now (the window is half-open).
            run("acme/web", -1, false),
            run("acme/web", 1_000, false),
            // old only: no row.
            run("acme/old", 50, false),
        ];
        let rows = regress_posture(&outcomes, now, 500);
        let summary: Vec<(&str, u32, Option<i64>)> = rows
            .iter()
            .map(|r| (r.project.as_str(), r.pass_per_mille, r.trend_per_mille))
            .collect();
        assert_eq!(
            summary,
            [
                ("acme/web", 500, Some(-500)),
                ("acme/ops", 0, None),
                ("acme/api", 1000, Some(500)),
            ]
        );
        assert_eq!((rows[0].passed, rows[0].failed), (1, 1));
    }

    #[test]
    fn the_gate_passes_a_clean_environment_and_names_every_failed_check() {
        let clean = GateInputs {
            conforms: true,
            regress_pass_per_mille: Some(990),
            ..Default::default()
        };
        assert_eq!(
            change_gate(&clean, &GatePolicy::default()),
            GateVerdict {
                pass: true,
                reasons: vec![]
            }
        );
        let bad = GateInputs {
            conforms: false,
            conformance_reason: Some("pinned digest is below the minimum".into()),
            regress_pass_per_mille: Some(949),
            open_critical_families: vec!["gfam1-b".into(), "gfam1-a".into()],
            rollouts_in_flight: vec!["r-2".into()],
        };
        let v = change_gate(&bad, &GatePolicy::default());
        assert!(!v.pass);
        let checks: Vec<&str> = v.reasons.iter().map(|r| r.check.as_str()).collect();
        assert_eq!(checks, ["conformance", "regress", "families", "rollouts"]);
        assert!(v.reasons[1].message.contains("94.9%") && v.reasons[1].message.contains("95.0%"));
        assert!(v.reasons[2].message.ends_with("gfam1-a, gfam1-b"));
        // No runs: passes unless the policy requires runs; rollouts pass when allowed.
        let quiet = GateInputs {
            conforms: true,
            rollouts_in_flight: vec!["r-1".into()],
            ..Default::default()
        };
        let lenient = GatePolicy {
            block_during_rollout: false,
            ..GatePolicy::default()
        };
        assert!(change_gate(&quiet, &lenient).pass);
        let strict = GatePolicy {
            require_regress_runs: true,
            ..lenient
        };
        assert_eq!(change_gate(&quiet, &strict).reasons[0].check, "regress");
    }
}
