//! Drift attribution: why a regress run that passed now fails (shifts in a verdict mix: [`crate::shift`]), told
//! by comparing what the run saw against the last good run — never guessed.
//!
//! Each side is a [`RunContext`]: the digests a Gait runpack and its traces carry (contract §7 projection). The
//! comparison lists every difference as a [`Cause`] with the field, the value before and after, and the
//! primary cause is the first by a fixed precedence:
//!
//! 1. **policy change** — the policy digest differs: the decision inputs did not have to change at all;
//! 2. **tool change** — a tool call's result or arguments digest differs, or a call appeared or vanished
//!    (the tool's output or schema changed under the agent);
//! 3. **reference set change** — the context set digest or the receipts differ;
//! 4. **config / runtime change** — the producer version or the environment differs.
//!
//! A scalar field missing on either side is unknown and never a cause. A tool call present on one side only
//! is one (the call appeared or vanished). When nothing differs the answer is [`Attribution::unattributed`]: the failure is real, and its cause is not in
//! the evidence. Saying so is the point; no heuristic fills the gap.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one run saw, as digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext {
    /// The digest of the policy in force.
    pub policy_digest: Option<String>,
    /// Each tool call's result digest, by a key stable across runs (`<step>:<tool>`).
    pub tool_results: BTreeMap<String, String>,
    /// Each tool call's arguments digest, by the same key.
    pub tool_args: BTreeMap<String, String>,
    /// The digest of the reference (context) set.
    pub reference_set_digest: Option<String>,
    /// The digest of the run's receipt digest vector.
    pub receipts_digest: Option<String>,
    /// The producing Gait version.
    pub producer_version: Option<String>,
    /// The environment the run ran in (`<org>/<project>/<env>`).
    pub environment: Option<String>,
}

/// The kinds of cause, in precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// The policy digest changed.
    PolicyChange,
    /// A tool's result or arguments changed, or a call appeared or vanished.
    ToolChange,
    /// The reference set or the receipts changed.
    ReferenceSetChange,
    /// The producer version or the environment changed.
    RuntimeChange,
}

/// One difference between the runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cause {
    /// Its kind.
    pub kind: CauseKind,
    /// The field that differs (`policy_digest`, `tool_results[<key>]`, …).
    pub field: String,
    /// Its value in the last good run (absent: it was not there).
    pub before: Option<String>,
    /// Its value in the failing run.
    pub after: Option<String>,
}

/// The attribution of one failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// The primary cause, or `None` when unattributed.
    pub primary: Option<Cause>,
    /// Every difference found, in precedence order then by field.
    pub causes: Vec<Cause>,
}

impl Attribution {
    /// Whether no cause was found in the evidence.
    pub fn unattributed(&self) -> bool {
        self.primary.is_none()
    }
}

/// Compares the failing run with the last good one (module docs).
pub fn attribute(last_good: &RunContext, failing: &RunContext) -> Attribution {
    let mut causes = Vec::new();
    // A field one side does not carry (an older runpack) is unknown, not changed: only two values that differ
    // are evidence.
    let mut scalar = |kind, field: &str, before: &Option<String>, after: &Option<String>| {
        if before.is_some() && after.is_some() && before != after {
            causes.push(Cause {
                kind,
                field: field.to_owned(),
                before: before.clone(),
                after: after.clone(),
            });
        }
    };
    scalar(
        CauseKind::PolicyChange,
        "policy_digest",
        &last_good.policy_digest,
        &failing.policy_digest,
    );
    scalar(
        CauseKind::ReferenceSetChange,
        "reference_set_digest",
        &last_good.reference_set_digest,
        &failing.reference_set_digest,
    );
    scalar(
        CauseKind::ReferenceSetChange,
        "receipts_digest",
        &last_good.receipts_digest,
        &failing.receipts_digest,
    );
    scalar(
        CauseKind::RuntimeChange,
        "producer_version",
        &last_good.producer_version,
        &failing.producer_version,
    );
    scalar(
        CauseKind::RuntimeChange,
        "environment",
        &last_good.environment,
        &failing.environment,
    );
    for (name, before, after) in [
        (
            "tool_results",
            &last_good.tool_results,
            &failing.tool_results,
        ),
        ("tool_args", &last_good.tool_args, &failing.tool_args),
    ] {
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for key in keys {
            let (b, a) = (before.get(key), after.get(key));
            if b != a {
                causes.push(Cause {
                    kind: CauseKind::ToolChange,
                    field: format!("{name}[{key}]"),
                    before: b.cloned(),
                    after: a.cloned(),
                });
            }
        }
    }
    causes.sort();
    Attribution {
        primary: causes.first().cloned(),
        causes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> RunContext {
        RunContext {
            policy_digest: Some("p1".into()),
            tool_results: [("1:tool.read".to_owned(), "r1".to_owned())].into(),
            tool_args: [("1:tool.read".to_owned(), "a1".to_owned())].into(),
            reference_set_digest: Some("ref1".into()),
            receipts_digest: Some("rc1".into()),
            producer_version: Some("0.9.0".into()),
            environment: Some("acme/web/prod".into()),
        }
    }

    #[test]
    fn a_policy_change_is_attributed_to_the_policy() {
        let failing = RunContext {
            policy_digest: Some("p2".into()),
            ..good()
        };
        let a = attribute(&good(), &failing);
        let primary = a.primary.expect("attributed");
        assert_eq!(primary.kind, CauseKind::PolicyChange);
        assert_eq!(
            (primary.before.as_deref(), primary.after.as_deref()),
            (Some("p1"), Some("p2"))
        );
        assert_eq!(a.causes.len(), 1);
    }

    #[test]
    fn a_changed_tool_result_is_attributed_to_the_tool_and_outranked_by_a_policy_change() {
        let mut failing = good();
        failing
            .tool_results
            .insert("1:tool.read".into(), "r2".into());
        failing.producer_version = Some("0.9.1".into());
        let a = attribute(&good(), &failing);
        let primary = a.primary.clone().expect("attributed");
        assert_eq!(primary.kind, CauseKind::ToolChange);
        assert_eq!(primary.field, "tool_results[1:tool.read]");
        assert_eq!(a.causes.len(), 2, "{:?}", a.causes);
        assert_eq!(a.causes[1].kind, CauseKind::RuntimeChange);
        // Both changed: the policy is named first, the tool still listed.
        failing.policy_digest = Some("p2".into());
        let both = attribute(&good(), &failing);
        assert_eq!(both.primary.map(|c| c.kind), Some(CauseKind::PolicyChange));
        assert!(both.causes.iter().any(|c| c.kind == CauseKind::ToolChange));
    }

    #[test]
    fn a_call_that_appeared_is_a_tool_change_and_nothing_changed_is_unattributed() {
        let mut failing = good();
        failing
            .tool_args
            .insert("2:tool.delete".into(), "a9".into());
        let a = attribute(&good(), &failing);
        let primary = a.primary.expect("attributed");
        assert_eq!(primary.field, "tool_args[2:tool.delete]");
        assert_eq!(primary.before, None);
        let same = attribute(&good(), &good());
        assert!(same.unattributed() && same.causes.is_empty());
        // A field the older run did not record is unknown, not a change.
        let older = RunContext {
            producer_version: None,
            reference_set_digest: None,
            ..good()
        };
        assert!(attribute(&older, &good()).unattributed());
    }
}
