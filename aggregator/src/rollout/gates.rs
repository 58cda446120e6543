//! Health gates: pure functions from what the cohort reported to pass / fail / inconclusive.
//!
//! - A rate gate (`verdict_diff_rate`, `new_block_rate`, `error_rate`) applies to staged steps (observe,
//!   dry_run): the decisions the cohort made with the candidate since the step began. It **fails** as soon as
//!   there are `min_samples` decisions and the rate is over its threshold, even before the bake time ends: a
//!   bad candidate is rolled back early.
//! - `adoption` (agents of the cohort running the step's bundle) applies to every step, when the bake ends.
//! - When the bake ends with every gate passing, the step passes. With too few decisions, no agent in the
//!   cohort, or too little adoption, it is **inconclusive**: the rollout pauses for a human, never passes on no
//!   data (Argo Rollouts' model).

use gait_bundle::Stage;
use gait_store::DecisionStats;
use serde::Serialize;

use super::plan::Gates;

/// What a step's cohort reported, summed over the rollout's targets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepFacts {
    /// Agents in the cohort.
    pub cohort: u64,
    /// Of them, running the step's bundle (or a newer one).
    pub adopted: u64,
    /// Their decisions since the step began.
    pub stats: DecisionStats,
}

/// One gate's figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateResult {
    pub name: &'static str,
    /// `None` while there is no data.
    pub value: Option<f64>,
    pub threshold: f64,
    /// `pass`, `fail`, `no_data` or `waiting` (adoption before the bake ends).
    pub status: &'static str,
}

/// The outcome of a step's gates.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// Every gate passed after the bake time.
    Pass,
    /// A gate failed: roll back.
    Fail(String),
    /// The bake ended without enough data: pause for a human.
    Inconclusive(String),
    /// Still baking.
    Waiting,
}

fn rate(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// When a step is judged: its bake time, then the grace for adoption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Within the bake time: only a failing rate gate decides.
    Baking,
    /// Baked, within `adoption_timeout_seconds`: passes once adopted, waits otherwise.
    Adopting,
    /// Past the adoption timeout: what is not passing is inconclusive.
    Due,
}

/// Evaluates the gates of a step at `stage` over `facts` in `phase`.
pub fn evaluate(
    gates: &Gates,
    stage: Stage,
    facts: &StepFacts,
    phase: Phase,
) -> (Vec<GateResult>, Verdict) {
    let bake_done = phase != Phase::Baking;
    let staged = stage != Stage::Enforce;
    let s = &facts.stats;
    let enough = !staged || s.decisions >= gates.min_samples;
    let mut results = Vec::new();
    let mut failed = None;
    if staged {
        for (name, n, threshold) in [
            ("verdict_diff_rate", s.verdict_diffs, gates.max_diff_rate),
            ("new_block_rate", s.new_blocks, gates.max_new_block_rate),
            ("error_rate", s.candidate_errors, gates.max_error_rate),
        ] {
            let value = rate(n, s.decisions);
            let status = match value {
                None => "no_data",
                Some(v) if v > threshold && enough => "fail",
                Some(_) if !enough => "no_data",
                Some(_) => "pass",
            };
            if status == "fail" && failed.is_none() {
                failed = Some(format!(
                    "gate {name}: {:.4} > {threshold} ({n} of {} decisions)",
                    value.unwrap_or_default(),
                    s.decisions
                ));
            }
            results.push(GateResult {
                name,
                value,
                threshold,
                status,
            });
        }
    }
    let adoption = rate(facts.adopted, facts.cohort);
    let adoption_ok = adoption.is_some_and(|a| a >= gates.min_adoption);
    results.push(GateResult {
        name: "adoption",
        value: adoption,
        threshold: gates.min_adoption,
        status: match (adoption, bake_done) {
            (None, _) => "no_data",
            (Some(_), _) if adoption_ok => "pass",
            (Some(_), false) => "waiting",
            (Some(_), true) if phase == Phase::Due => "fail",
            (Some(_), true) => "waiting",
        },
    });
    if let Some(reason) = failed {
        return (results, Verdict::Fail(reason));
    }
    if !bake_done {
        return (results, Verdict::Waiting);
    }
    if phase == Phase::Adopting && enough && facts.cohort > 0 && !adoption_ok {
        return (results, Verdict::Waiting);
    }
    let verdict = if facts.cohort == 0 {
        Verdict::Inconclusive("no agent of the targets is in the cohort".into())
    } else if !adoption_ok {
        Verdict::Inconclusive(format!(
            "adoption {} of {} agents is below {}",
            facts.adopted, facts.cohort, gates.min_adoption
        ))
    } else if !enough {
        Verdict::Inconclusive(format!(
            "{} decisions with the candidate; the gates need {} (min_samples)",
            s.decisions, gates.min_samples
        ))
    } else {
        Verdict::Pass
    };
    (results, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cohort: u64, adopted: u64, decisions: u64, diffs: u64) -> StepFacts {
        StepFacts {
            cohort,
            adopted,
            stats: DecisionStats {
                decisions,
                verdict_diffs: diffs,
                ..DecisionStats::default()
            },
        }
    }

    #[test]
    fn a_diff_over_the_threshold_fails_before_the_bake_ends() {
        let g = Gates {
            min_samples: 10,
            ..Gates::default()
        };
        let (_, v) = evaluate(&g, Stage::Observe, &facts(3, 3, 10, 2), Phase::Baking);
        assert!(
            matches!(v, Verdict::Fail(ref r) if r.contains("verdict_diff_rate")),
            "{v:?}"
        );
        // Too few samples: not yet a failure, whatever the rate.
        let (_, v) = evaluate(&g, Stage::Observe, &facts(3, 3, 9, 9), Phase::Baking);
        assert_eq!(v, Verdict::Waiting);
    }

    #[test]
    fn no_data_is_inconclusive_never_a_pass() {
        let g = Gates::default();
        let (_, v) = evaluate(&g, Stage::Observe, &facts(3, 3, 0, 0), Phase::Due);
        assert!(matches!(v, Verdict::Inconclusive(_)), "{v:?}");
        let (_, v) = evaluate(&g, Stage::Observe, &facts(0, 0, 100, 0), Phase::Due);
        assert!(matches!(v, Verdict::Inconclusive(_)), "{v:?}");
        // Adoption lagging: the step waits out the adoption timeout, then pauses.
        let (_, v) = evaluate(&g, Stage::Enforce, &facts(10, 5, 0, 0), Phase::Adopting);
        assert_eq!(v, Verdict::Waiting);
        let (_, v) = evaluate(&g, Stage::Enforce, &facts(10, 5, 0, 0), Phase::Due);
        assert!(
            matches!(v, Verdict::Inconclusive(ref r) if r.contains("adoption")),
            "{v:?}"
        );
    }

    #[test]
    fn a_healthy_step_passes_after_its_bake() {
        let g = Gates::default();
        assert_eq!(
            evaluate(&g, Stage::DryRun, &facts(4, 4, 100, 1), Phase::Baking).1,
            Verdict::Waiting
        );
        assert_eq!(
            evaluate(&g, Stage::DryRun, &facts(4, 4, 100, 1), Phase::Adopting).1,
            Verdict::Pass
        );
        assert_eq!(
            evaluate(&g, Stage::Enforce, &facts(10, 10, 0, 0), Phase::Adopting).1,
            Verdict::Pass
        );
    }
}
