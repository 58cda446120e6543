//! A rollout plan: which environments, which cohorts, which stages for how long, the health gates and the
//! blast-radius cap. Pure: parsing and validation only.
//!
//! The last step must be `enforce` at 100 %: it pins the candidate in every target environment (for every agent,
//! whatever the label selector), which is what "completed" means. Labels select the audience of the steps
//! before it.

use std::collections::BTreeMap;

use gait_bundle::Stage;
use serde::{Deserialize, Serialize};

use super::RolloutError;

/// Most steps in a plan.
pub const MAX_STEPS: usize = 16;
/// Most target environments in a plan.
pub const MAX_TARGETS: usize = 64;
/// Longest bake time (30 days).
pub const MAX_BAKE_SECONDS: u64 = 30 * 24 * 3600;

/// What an operator asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Target environments of the org.
    pub targets: Vec<Target>,
    /// Only agents with every one of these labels are in the cohorts of the steps before the last.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The steps, in order; the last is `enforce` at 100 %.
    pub steps: Vec<Step>,
    /// Health gates checked at every step.
    #[serde(default)]
    pub gates: Gates,
    /// How far enforcement may spread before a human promotes.
    #[serde(default)]
    pub blast_radius: BlastRadius,
}

/// One target environment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub project: String,
    pub env: String,
}

/// One step: the candidate at `stage` for `percent` of the agents, for at least `bake_seconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub stage: Stage,
    /// Share of the (label-selected) agents, 0.01 to 100, at most two decimals.
    pub percent: f64,
    /// How long the step runs before its gates may pass it.
    #[serde(default)]
    pub bake_seconds: u64,
}

impl Step {
    /// The cohort size in basis points.
    pub fn percent_bp(&self) -> u16 {
        // Validated to 0.01..=100 with two decimals, so the result is 1..=10000.
        (self.percent * 100.0).round().clamp(0.0, 10_000.0) as u16
    }

    /// Whether the step reaches every agent.
    pub fn is_everyone(&self) -> bool {
        self.percent_bp() >= gait_bundle::cohort::ALL_BP
    }
}

/// Health gates. A rate is over the decisions the step's cohort made with the candidate since the step began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Highest share of decisions where the candidate's verdict differs from the policy in force (observe and
    /// dry_run).
    pub max_diff_rate: f64,
    /// Highest share of decisions the candidate blocks and the policy in force does not.
    pub max_new_block_rate: f64,
    /// Highest share of decisions where the candidate could not be evaluated.
    pub max_error_rate: f64,
    /// Lowest share of the cohort that must run the step's bundle when its bake time ends.
    pub min_adoption: f64,
    /// Fewest decisions a staged step needs before its gates can pass (fewer: inconclusive, a human decides).
    pub min_samples: u64,
    /// How long after the bake time the step waits for `min_adoption` before it pauses as inconclusive.
    pub adoption_timeout_seconds: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_diff_rate: 0.05,
            max_new_block_rate: 0.01,
            max_error_rate: 0.001,
            min_adoption: 0.9,
            min_samples: 20,
            adoption_timeout_seconds: 300,
        }
    }
}

/// The blast-radius cap: before a step would make more agents or projects enforce the candidate than this,
/// the rollout pauses until a human promotes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlastRadius {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_projects: Option<u64>,
}

fn field(field: &str, message: impl Into<String>) -> RolloutError {
    RolloutError::Field {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl Plan {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), RolloutError> {
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            return Err(field(
                "targets",
                format!("name 1 to {MAX_TARGETS} environments (project/env)"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            gait_store::Project::parse(&t.project)
                .map_err(|e| field(&format!("targets[{i}].project"), e.to_string()))?;
            gait_store::Env::parse(&t.env)
                .map_err(|e| field(&format!("targets[{i}].env"), e.to_string()))?;
            if !seen.insert(t) {
                return Err(field(
                    &format!("targets[{i}]"),
                    format!("{}/{} is named twice", t.project, t.env),
                ));
            }
        }
        validate_labels(&self.labels)?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(field("steps", format!("give 1 to {MAX_STEPS} steps")));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let f = |name: &str| format!("steps[{i}].{name}");
            if !(s.percent.is_finite() && s.percent >= 0.01 && s.percent <= 100.0)
                || ((s.percent * 100.0).round() - s.percent * 100.0).abs() > 1e-6
            {
                return Err(field(
                    &f("percent"),
                    format!(
                        "{} is not a share from 0.01 to 100 with at most two decimals",
                        s.percent
                    ),
                ));
            }
            if s.bake_seconds > MAX_BAKE_SECONDS {
                return Err(field(
                    &f("bake_seconds"),
                    format!("at most {MAX_BAKE_SECONDS} (30 days)"),
                ));
            }
        }
        let last = self.steps.last().expect("steps is not empty");
        if last.stage != Stage::Enforce || !last.is_everyone() {
            return Err(field(
                &format!("steps[{}]", self.steps.len() - 1),
                "the last step must be enforce at 100 % (it pins the candidate in every target)",
            ));
        }
        let g = &self.gates;
        for (name, v) in [
            ("max_diff_rate", g.max_diff_rate),
            ("max_new_block_rate", g.max_new_block_rate),
            ("max_error_rate", g.max_error_rate),
            ("min_adoption", g.min_adoption),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(field(
                    &format!("gates.{name}"),
                    format!("{v} is not a rate from 0 to 1"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a label selector or an agent's labels: keys and values of 1-63 characters `[A-Za-z0-9._-]`.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), RolloutError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    for (k, v) in labels {
        if !ok(k) || !ok(v) {
            return Err(field(
                &format!("labels.{k}"),
                "keys and values are 1-63 characters [A-Za-z0-9._-]",
            ));
        }
    }
    Ok(())
}

/// Parses the CLI's `--steps observe:10%:300s,dry_run:30%:10m,enforce:100%`.
pub fn parse_steps(text: &str) -> Result<Vec<Step>, String> {
    text.split(',')
        .map(|part| {
            let mut it = part.trim().split(':');
            let stage = match it.next().unwrap_or_default() {
                "observe" => Stage::Observe,
                "dry_run" => Stage::DryRun,
                "enforce" => Stage::Enforce,
                other => {
                    return Err(format!(
                        "`{part}`: stage `{other}` is not observe, dry_run or enforce"
                    ));
                }
            };
            let percent = it
                .next()
                .and_then(|p| p.strip_suffix('%'))
                .and_then(|p| p.parse::<f64>().ok())
                .ok_or_else(|| format!("`{part}`: write the share as e.g. 30%"))?;
            let bake_seconds = match it.next() {
                None => 0,
                Some(d) => humantime::parse_duration(d)
                    .map_err(|e| format!("`{part}`: bake time `{d}`: {e}"))?
                    .as_secs(),
            };
            if it.next().is_some() {
                return Err(format!("`{part}`: expected stage:percent%[:bake]"));
            }
            Ok(Step {
                stage,
                percent,
                bake_seconds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(steps: &str) -> Plan {
        Plan {
            targets: vec![Target {
                project: "p".into(),
                env: "e".into(),
            }],
            labels: BTreeMap::new(),
            steps: parse_steps(steps).unwrap(),
            gates: Gates::default(),
            blast_radius: BlastRadius::default(),
        }
    }

    #[test]
    fn steps_parse_with_bake_times() {
        let p = plan("observe:10%:5m,dry_run:30%:30s,enforce:100%");
        assert_eq!(p.steps[0].percent_bp(), 1_000);
        assert_eq!(p.steps[0].bake_seconds, 300);
        assert_eq!(p.steps[1].stage, Stage::DryRun);
        assert!(p.steps[2].is_everyone());
        p.validate().unwrap();
    }

    #[test]
    fn bad_plans_name_their_field() {
        let err = |p: Plan| match p.validate() {
            Err(RolloutError::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(plan("observe:10%")), "steps[0]");
        assert_eq!(err(plan("observe:0.001%,enforce:100%")), "steps[0].percent");
        assert_eq!(err(plan("enforce:50%")), "steps[0]");
        let mut p = plan("enforce:100%");
        p.gates.max_diff_rate = 1.5;
        assert_eq!(err(p), "gates.max_diff_rate");
        assert!(parse_steps("canary:10%").is_err());
        assert!(parse_steps("observe:10").is_err());
    }
}
