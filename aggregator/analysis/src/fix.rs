//! Next-best-fix: what an operator can do about a family, each suggestion reproducible from the family and its
//! evidence and linked to the artifacts it comes from. Rules, in the order they are returned:
//!
//! 1. **Roll back** — when the family's drift attribution is a policy change, or it first appeared within
//!    [`ROLLBACK_WINDOW_MS`] after its policy lineage got a new version: the version in force before that one.
//! 2. **Add a regress fixture** — from the family's smallest representative runpack digest, so the incident
//!    becomes a test (`gait regress init --from <runpack>`).
//! 3. **Tighten the policy** — an `allow` of a high-risk or destructive call: a rule for its tool that
//!    requires approval (a block would be a guess about intent; approval keeps the call possible).
//! 4. **Lock the block in** — a `block` family: a policy test fixture for its tool, so a later policy that
//!    stops blocking it is caught in CI (`gait policy test`).
//!
//! Nothing here is a model's guess: each rule reads fields of the family and the lineage history only.

use serde::{Deserialize, Serialize};

use crate::drift::{Attribution, CauseKind};
use crate::family::Family;

/// How soon after a new policy version a family's first occurrence makes that version the suspect (1 day).
pub const ROLLBACK_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// One version of a policy lineage as it was rolled out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageVersion {
    /// The policy digest.
    pub digest: String,
    /// When it became active (Unix ms).
    pub active_from_unix_ms: i64,
}

/// What a suggestion proposes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Pin the lineage back to `to_digest` (the version before `suspect_digest`).
    Rollback {
        /// The version suspected of causing the family.
        suspect_digest: String,
        /// The version to go back to.
        to_digest: String,
    },
    /// Turn a representative runpack into a regress fixture.
    AddRegressFixture {
        /// The runpack's digest.
        runpack_digest: String,
        /// The command that does it.
        command: String,
    },
    /// Add a rule requiring approval for the tool.
    RequireApproval {
        /// The tool.
        tool: String,
        /// The rule, as Gait policy YAML.
        rule_yaml: String,
    },
    /// Add a policy test fixture asserting the block.
    AddPolicyFixture {
        /// The tool.
        tool: String,
        /// The verdict the fixture expects.
        expect_verdict: String,
    },
}

/// One suggestion with why it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Why, in one sentence.
    pub reason: String,
    /// The evidence digests it rests on.
    pub evidence: Vec<String>,
}

/// What the suggestions read besides the family.
#[derive(Clone, Debug, Default)]
pub struct FixContext<'a> {
    /// The family's policy lineage versions, any order.
    pub lineage: &'a [LineageVersion],
    /// The drift attribution of the family's latest failure, if any.
    pub attribution: Option<&'a Attribution>,
    /// The highest risk class of the family's calls is high or critical, or a call is destructive.
    pub high_risk: bool,
}

/// The suggestions for `family` (module docs), in rule order.
pub fn next_best_fix(family: &Family, ctx: &FixContext<'_>) -> Vec<Suggestion> {
    let inputs = &family.fingerprint.inputs;
    let text = |key: &str| inputs.get(key).and_then(|v| v.as_str()).unwrap_or("");
    let (tool, verdict) = (text("tool"), text("verdict"));
    let mut out = Vec::new();

    let mut versions: Vec<&LineageVersion> = ctx.lineage.iter().collect();
    versions.sort_by(|a, b| {
        (a.active_from_unix_ms, &a.digest).cmp(&(b.active_from_unix_ms, &b.digest))
    });
    // The version in force when the family first appeared, and the one before it.
    let at = versions
        .iter()
        .rposition(|v| v.active_from_unix_ms <= family.first_seen_unix_ms);
    let known = |digest: &str| versions.iter().any(|v| v.digest == digest);
    // A policy change named by the drift attribution wins: roll back exactly the change it names, when both
    // versions belong to the lineage.
    let attributed = ctx
        .attribution
        .and_then(|a| a.primary.as_ref())
        .filter(|c| c.kind == CauseKind::PolicyChange)
        .and_then(|c| Some((c.after.as_deref()?, c.before.as_deref()?)))
        .filter(|(after, before)| known(after) && known(before));
    if let Some((suspect, previous)) = attributed {
        out.push(Suggestion {
            action: Action::Rollback {
                suspect_digest: suspect.to_owned(),
                to_digest: previous.to_owned(),
            },
            reason: "the family's drift is attributed to this policy change".into(),
            evidence: vec![suspect.to_owned(), previous.to_owned()],
        });
    } else if let Some(i) = at.filter(|i| *i > 0) {
        let (suspect, previous) = (versions[i], versions[i - 1]);
        let since = i128::from(family.first_seen_unix_ms) - i128::from(suspect.active_from_unix_ms);
        if since <= i128::from(ROLLBACK_WINDOW_MS) {
            out.push(Suggestion {
                action: Action::Rollback {
                    suspect_digest: suspect.digest.clone(),
                    to_digest: previous.digest.clone(),
                },
                reason: "the family first appeared within a day of this policy version".into(),
                evidence: vec![suspect.digest.clone(), previous.digest.clone()],
            });
        }
    }
    if let Some(runpack) = family
        .representatives
        .iter()
        .find(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        out.push(Suggestion {
            action: Action::AddRegressFixture {
                runpack_digest: runpack.clone(),
                command: format!("gait regress init --from <runpack {runpack}>"),
            },
            reason: "a recorded run of this incident becomes a regress test".into(),
            evidence: vec![runpack.clone()],
        });
    }
    if verdict == "allow" && ctx.high_risk && !tool.is_empty() {
        out.push(Suggestion {
            action: Action::RequireApproval {
                tool: tool.to_owned(),
                // The tool name comes from agents' evidence: quoted as a JSON string (a YAML flow scalar), so
                // no name can add keys or rules; the rule name keeps only [A-Za-z0-9-].
                rule_yaml: format!(
                    "- name: approve-{name}\n  effect: require_approval\n  match:\n    tool_names: [{quoted}]\n",
                    name = tool.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                    quoted = serde_json::Value::from(tool),
                ),
            },
            reason: "high-risk or destructive calls of this tool are allowed without approval".into(),
            evidence: family.representatives.iter().cloned().collect(),
        });
    }
    if verdict == "block" && !tool.is_empty() {
        out.push(Suggestion {
            action: Action::AddPolicyFixture {
                tool: tool.to_owned(),
                expect_verdict: "block".into(),
            },
            reason:
                "a policy test keeps a later version from silently allowing what this one blocks"
                    .into(),
            evidence: family.representatives.iter().cloned().collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{Cause, attribute};
    use crate::family::{Families, IncidentFeatures, IncidentKind, Occurrence, RecordRef};

    fn family(verdict: &str, first_seen: i64, digest: Option<&str>) -> Family {
        family_of("tool.delete", verdict, first_seen, digest)
    }

    /// The family of one occurrence of `tool` with `verdict`.
    fn family_of(tool: &str, verdict: &str, first_seen: i64, digest: Option<&str>) -> Family {
        let mut f = Families::default();
        let id = f.add(&Occurrence {
            record: RecordRef {
                org: "acme".into(),
                project: "web".into(),
                env: "prod".into(),
                agent_id: "a1".into(),
                seq: 1,
            },
            at_unix_ms: first_seen,
            features: IncidentFeatures {
                kind: Some(IncidentKind::Decision),
                tool: tool.into(),
                verdict: verdict.into(),
                ..Default::default()
            },
            artifact_digest: digest.map(str::to_owned),
        });
        f.get(&id).cloned().expect("family")
    }

    fn lineage() -> Vec<LineageVersion> {
        vec![
            LineageVersion {
                digest: "p2".into(),
                active_from_unix_ms: 1_000_000,
            },
            LineageVersion {
                digest: "p1".into(),
                active_from_unix_ms: 0,
            },
        ]
    }

    #[test]
    fn a_family_right_after_a_new_version_suggests_rolling_it_back_then_a_fixture() {
        let f = family("block", 1_000_500, Some("ab01"));
        let s = next_best_fix(
            &f,
            &FixContext {
                lineage: &lineage(),
                ..Default::default()
            },
        );
        assert_eq!(
            s[0].action,
            Action::Rollback {
                suspect_digest: "p2".into(),
                to_digest: "p1".into()
            }
        );
        assert!(
            matches!(&s[1].action, Action::AddRegressFixture { runpack_digest, .. } if runpack_digest == "ab01")
        );
        assert!(
            matches!(&s[2].action, Action::AddPolicyFixture { tool, .. } if tool == "tool.delete")
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_hostile_tool_name_cannot_add_rules_and_odd_digests_stay_out_of_commands() {
        let f = family_of(
            "x]\n  effect: allow\n- name: evil",
            "allow",
            5,
            Some("$(rm -rf /)"),
        );
        let s = next_best_fix(
            &f,
            &FixContext {
                high_risk: true,
                ..Default::default()
            },
        );
        let [
            Suggestion {
                action: Action::RequireApproval { rule_yaml, .. },
                ..
            },
        ] = &s[..]
        else {
            panic!("{s:?}");
        };
        // Four lines, the name on the last one as one escaped string (the newlines stay `\n` escapes).
        assert_eq!(rule_yaml.lines().count(), 4, "{rule_yaml}");
        assert!(
            rule_yaml.ends_with("tool_names: [\"x]\\n  effect: allow\\n- name: evil\"]\n"),
            "{rule_yaml}"
        );
    }

    #[test]
    fn an_old_family_suggests_no_rollback_unless_the_drift_says_policy() {
        let late = 1_000_000 + 2 * ROLLBACK_WINDOW_MS;
        let f = family("allow", late, None);
        let ctx = FixContext {
            lineage: &lineage(),
            attribution: None,
            high_risk: true,
        };
        let s = next_best_fix(&f, &ctx);
        assert!(
            matches!(
                &s[..],
                [Suggestion {
                    action: Action::RequireApproval { .. },
                    ..
                }]
            ),
            "{s:?}"
        );
        let drift = attribute(
            &crate::drift::RunContext {
                policy_digest: Some("p1".into()),
                ..Default::default()
            },
            &crate::drift::RunContext {
                policy_digest: Some("p2".into()),
                ..Default::default()
            },
        );
        assert!(matches!(
            drift.primary,
            Some(Cause {
                kind: CauseKind::PolicyChange,
                ..
            })
        ));
        let s = next_best_fix(
            &f,
            &FixContext {
                attribution: Some(&drift),
                ..ctx
            },
        );
        assert!(matches!(&s[0].action, Action::Rollback { to_digest, .. } if to_digest == "p1"));
        // An attribution naming another change of the lineage rolls back that change, not the one in force
        // when the family appeared.
        let three = [
            lineage(),
            vec![LineageVersion {
                digest: "p3".into(),
                active_from_unix_ms: late + 10,
            }],
        ]
        .concat();
        let p2_to_p3 = attribute(
            &crate::drift::RunContext {
                policy_digest: Some("p2".into()),
                ..Default::default()
            },
            &crate::drift::RunContext {
                policy_digest: Some("p3".into()),
                ..Default::default()
            },
        );
        let s3 = next_best_fix(
            &f,
            &FixContext {
                lineage: &three,
                attribution: Some(&p2_to_p3),
                high_risk: false,
            },
        );
        assert_eq!(
            s3[0].action,
            Action::Rollback {
                suspect_digest: "p3".into(),
                to_digest: "p2".into()
            }
        );
        // No overflow on extreme times.
        let extreme = [
            LineageVersion {
                digest: "a".into(),
                active_from_unix_ms: i64::MIN,
            },
            LineageVersion {
                digest: "b".into(),
                active_from_unix_ms: i64::MIN + 1,
            },
        ];
        let _ = next_best_fix(
            &family("block", i64::MAX, None),
            &FixContext {
                lineage: &extreme,
                ..Default::default()
            },
        );
        // The same inputs give the same suggestions.
        assert_eq!(
            s,
            next_best_fix(
                &f,
                &FixContext {
                    lineage: &lineage(),
                    attribution: Some(&drift),
                    high_risk: true
                }
            )
        );
    }
}
