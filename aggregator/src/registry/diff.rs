//! Semantic diff between two policy versions, and the warnings for risky content. Pure: takes normalized Gait
//! policies ([`gait_policy::Policy`]) and returns plain values, so it is tested without I/O.
//!
//! Rules are keyed by `name` (unique after normalization, which sorts them by `(priority, name)`): each is
//! `added`, `removed` or `changed` (naming the fields that differ). Each entry carries its **verdict effect**
//! by severity, block > require_approval > allow/dry_run (the agent engine's order):
//! - a changed rule whose `effect` changed: `stricter` or `looser` as the severity moves; `same` when only
//!   non-verdict fields (reason codes, approvals count…) changed; `n/a` when what it matches changed but not
//!   its effect (the effect then depends on the traffic, which replay answers);
//! - an added rule: its effect against the new `default_verdict` (what the intents it matches got before,
//!   unless another rule caught them first), and a removed rule the reverse;
//! - top-level entries: `default_verdict` by severity, `fail_closed.enabled` and `scripts.block_mixed_risk`
//!   on → stricter, off → looser; other fields `n/a`.

use gait_policy::Policy;
use gait_policy::policy::PolicyRule;
use gait_policy::verdict::Verdict;
use serde::Serialize;

/// How a change moves verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Effect {
    /// Some intents get a more restrictive verdict.
    #[serde(rename = "stricter")]
    Stricter,
    /// Some intents get a less restrictive verdict.
    #[serde(rename = "looser")]
    Looser,
    /// No verdict changes.
    #[serde(rename = "same")]
    Same,
    /// Depends on the traffic (what a rule matches changed): replay the corpus to know.
    #[serde(rename = "n/a")]
    NotApplicable,
}

/// How a rule changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the newer version.
    Added,
    /// Only in the older version.
    Removed,
    /// In both, with different fields.
    Changed,
}

/// One rule's change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    /// The rule's name.
    pub name: String,
    /// Added, removed or changed.
    pub change: Change,
    /// For `changed`: the fields that differ (`effect`, `priority`, `match`, …), in declaration order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
    /// Its effect in the older version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_effect: Option<Verdict>,
    /// Its effect in the newer version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_effect: Option<Verdict>,
    /// How verdicts move.
    pub verdict_effect: Effect,
}

/// A change of a top-level setting (`default_verdict`, `fail_closed.*`, `scripts.*`, `mcp_trust`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingChange {
    /// Dotted field.
    pub field: &'static str,
    /// Older value.
    pub from: serde_json::Value,
    /// Newer value.
    pub to: serde_json::Value,
    /// How verdicts move.
    pub verdict_effect: Effect,
}

/// Counts of a diff, for a one-line summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rules added.
    pub added: usize,
    /// Rules removed.
    pub removed: usize,
    /// Rules changed.
    pub changed: usize,
    /// Entries (rules and settings) that make some verdict stricter.
    pub stricter: usize,
    /// Entries that make some verdict looser.
    pub looser: usize,
}

/// The semantic diff of two versions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyDiff {
    /// Rule changes, sorted by rule name.
    pub rules: Vec<RuleChange>,
    /// Top-level changes, in a fixed order.
    pub settings: Vec<SettingChange>,
    /// Counts.
    pub summary: Summary,
    /// Risky content of the newer version.
    pub warnings: Vec<Warning>,
}

/// Risky content in a version or a pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable code: `default_allow`, `fail_closed_disabled`, `fail_open_allow_high_risk`, `offline_zero_in_prod`.
    pub code: &'static str,
    /// The dotted field it is about.
    pub field: String,
    /// What it means and what to do.
    pub message: String,
}

/// Severity in the engine's order: block over require_approval over allow and dry_run.
fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Block => 2,
        Verdict::RequireApproval => 1,
        Verdict::Allow | Verdict::DryRun => 0,
    }
}

/// `to` compared with `from`.
fn effect_of(from: Verdict, to: Verdict) -> Effect {
    match severity(to).cmp(&severity(from)) {
        std::cmp::Ordering::Greater => Effect::Stricter,
        std::cmp::Ordering::Less => Effect::Looser,
        std::cmp::Ordering::Equal => Effect::Same,
    }
}

/// The fields of two same-named rules that differ, and whether any of them decides what the rule matches.
fn rule_fields(a: &PolicyRule, b: &PolicyRule) -> (Vec<&'static str>, bool) {
    let mut fields = Vec::new();
    let mut scope = false;
    macro_rules! cmp {
        ($($name:literal => $f:ident, $matching:expr;)*) => {
            $(if a.$f != b.$f {
                fields.push($name);
                scope |= $matching;
            })*
        };
    }
    cmp! {
        "priority" => priority, true;
        "effect" => effect, false;
        "match" => match_, true;
        "endpoint" => endpoint, true;
        "reason_codes" => reason_codes, false;
        "violations" => violations, false;
        "min_approvals" => min_approvals, false;
        "require_distinct_approvers" => require_distinct_approvers, false;
        "require_context_evidence" => require_context_evidence, true;
        "required_context_evidence_mode" => required_context_evidence_mode, true;
        "max_context_age_seconds" => max_context_age_seconds, true;
        "require_broker_credential" => require_broker_credential, true;
        "broker_reference" => broker_reference, false;
        "broker_scopes" => broker_scopes, false;
        "rate_limit" => rate_limit, true;
        "destructive_budget" => destructive_budget, true;
        "dataflow" => dataflow, true;
    }
    (fields, scope)
}

/// The semantic diff from `from` to `to`.
pub fn diff(from: &Policy, to: &Policy) -> PolicyDiff {
    use std::collections::BTreeMap;
    let old: BTreeMap<&str, &PolicyRule> =
        from.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    let new: BTreeMap<&str, &PolicyRule> = to.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut rules = Vec::new();
    let names: std::collections::BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        let change = match (old.get(name), new.get(name)) {
            (None, Some(b)) => RuleChange {
                name: name.to_owned(),
                change: Change::Added,
                fields: Vec::new(),
                from_effect: None,
                to_effect: Some(b.effect),
                verdict_effect: effect_of(to.default_verdict, b.effect),
            },
            (Some(a), None) => RuleChange {
                name: name.to_owned(),
                change: Change::Removed,
                fields: Vec::new(),
                from_effect: Some(a.effect),
                to_effect: None,
                verdict_effect: effect_of(a.effect, to.default_verdict),
            },
            (Some(a), Some(b)) => {
                let (fields, scope) = rule_fields(a, b);
                if fields.is_empty() {
                    continue;
                }
                let verdict_effect = match effect_of(a.effect, b.effect) {
                    Effect::Same if scope => Effect::NotApplicable,
                    e => e,
                };
                RuleChange {
                    name: name.to_owned(),
                    change: Change::Changed,
                    fields,
                    from_effect: Some(a.effect),
                    to_effect: Some(b.effect),
                    verdict_effect,
                }
            }
            (None, None) => continue,
        };
        rules.push(change);
    }
    let settings = setting_changes(from, to);
    let mut summary = Summary::default();
    for r in &rules {
        match r.change {
            Change::Added => summary.added += 1,
            Change::Removed => summary.removed += 1,
            Change::Changed => summary.changed += 1,
        }
    }
    for e in rules
        .iter()
        .map(|r| r.verdict_effect)
        .chain(settings.iter().map(|s| s.verdict_effect))
    {
        match e {
            Effect::Stricter => summary.stricter += 1,
            Effect::Looser => summary.looser += 1,
            Effect::Same | Effect::NotApplicable => {}
        }
    }
    PolicyDiff {
        rules,
        settings,
        summary,
        warnings: warnings(to),
    }
}

fn setting_changes(a: &Policy, b: &Policy) -> Vec<SettingChange> {
    use serde_json::json;
    let mut out = Vec::new();
    let mut push = |field, from: serde_json::Value, to: serde_json::Value, effect| {
        if from != to {
            out.push(SettingChange {
                field,
                from,
                to,
                verdict_effect: effect,
            });
        }
    };
    let on_off = |from: bool, to: bool| {
        if to && !from {
            Effect::Stricter
        } else {
            Effect::Looser
        }
    };
    push(
        "default_verdict",
        json!(a.default_verdict),
        json!(b.default_verdict),
        effect_of(a.default_verdict, b.default_verdict),
    );
    push(
        "fail_closed.enabled",
        json!(a.fail_closed.enabled),
        json!(b.fail_closed.enabled),
        on_off(a.fail_closed.enabled, b.fail_closed.enabled),
    );
    push(
        "fail_closed.risk_classes",
        json!(a.fail_closed.risk_classes),
        json!(b.fail_closed.risk_classes),
        Effect::NotApplicable,
    );
    push(
        "fail_closed.required_fields",
        json!(a.fail_closed.required_fields),
        json!(b.fail_closed.required_fields),
        Effect::NotApplicable,
    );
    push(
        "scripts.max_steps",
        json!(a.scripts.max_steps),
        json!(b.scripts.max_steps),
        Effect::NotApplicable,
    );
    push(
        "scripts.require_approval_above",
        json!(a.scripts.require_approval_above),
        json!(b.scripts.require_approval_above),
        Effect::NotApplicable,
    );
    push(
        "scripts.block_mixed_risk",
        json!(a.scripts.block_mixed_risk),
        json!(b.scripts.block_mixed_risk),
        on_off(a.scripts.block_mixed_risk, b.scripts.block_mixed_risk),
    );
    let mcp = |m: &gait_policy::policy::McpTrustPolicy| {
        json!({
            "enabled": m.enabled, "action": m.action, "min_score": m.min_score, "max_age": m.max_age,
            "snapshot_path": m.snapshot_path, "required_risk_classes": m.required_risk_classes,
            "publisher_allowlist": m.publisher_allowlist, "require_registry": m.require_registry,
        })
    };
    push(
        "mcp_trust",
        mcp(&a.mcp_trust),
        mcp(&b.mcp_trust),
        Effect::NotApplicable,
    );
    out
}

const HIGH_RISK: [&str; 2] = ["critical", "high"];

/// Risky content of a policy: `default_allow`; `fail_closed_disabled` while rules address high-risk intents;
/// `fail_open_allow_high_risk` for a rule allowing high or critical risk intents.
pub fn warnings(p: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    if p.default_verdict == Verdict::Allow {
        out.push(Warning {
            code: "default_allow",
            field: "default_verdict".into(),
            message: "default_verdict is allow: every intent no rule matches is executed; prefer require_approval or block and allow what is known".into(),
        });
    }
    let high_risk = |r: &PolicyRule| {
        r.match_
            .risk_classes
            .iter()
            .any(|c| HIGH_RISK.contains(&c.as_str()))
    };
    if !p.fail_closed.enabled && p.rules.iter().any(high_risk) {
        out.push(Warning {
            code: "fail_closed_disabled",
            field: "fail_closed.enabled".into(),
            message: "rules address high-risk intents but fail_closed is off: a high-risk intent missing targets or provenance is judged on what it claims; set fail_closed.enabled: true".into(),
        });
    }
    for r in p
        .rules
        .iter()
        .filter(|r| r.effect == Verdict::Allow && high_risk(r))
    {
        out.push(Warning {
            code: "fail_open_allow_high_risk",
            field: format!("rules.{}", r.name),
            message: format!(
                "rule {} allows high or critical risk intents without approval; make it require_approval unless it is narrowed to known tools and targets",
                r.name
            ),
        });
    }
    out
}

/// Risky settings of a pin: `max_offline_seconds: 0` in a production-named environment (`prod`, `prod-*`,
/// `production…`) makes every agent stale the moment it loses contact.
pub fn pin_warnings(env: &str, max_offline_seconds: Option<u64>) -> Vec<Warning> {
    let production = env == "prod"
        || env.starts_with("prod-")
        || env.starts_with("prod_")
        || env.starts_with("production");
    if production && max_offline_seconds == Some(0) {
        vec![Warning {
            code: "offline_zero_in_prod",
            field: "max_offline_seconds".into(),
            message: format!(
                "max_offline_seconds is 0 in the production environment {env}: agents go stale at the first lost contact; give it a tolerance such as 3600"
            ),
        }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        gait_policy::parse_policy_yaml(yaml.as_bytes()).unwrap()
    }

    const V1: &str = "default_verdict: require_approval\nrules:\n  - name: read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n  - name: write\n    effect: require_approval\n    match:\n      tool_names: [fs.write]\n  - name: old\n    effect: block\n    match:\n      tool_names: [shell]\n";
    const V2: &str = "default_verdict: allow\nrules:\n  - name: read\n    effect: block\n    match:\n      tool_names: [fs.read]\n  - name: write\n    effect: require_approval\n    match:\n      tool_names: [fs.write, fs.delete]\n  - name: net\n    effect: block\n    match:\n      tool_names: [http.get]\n";

    #[test]
    fn rules_are_added_removed_and_changed_with_their_verdict_effect() {
        let d = diff(&policy(V1), &policy(V2));
        let by_name: Vec<(&str, Change, Vec<&str>, Effect)> = d
            .rules
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.change,
                    r.fields.clone(),
                    r.verdict_effect,
                )
            })
            .collect();
        assert_eq!(
            by_name,
            vec![
                ("net", Change::Added, vec![], Effect::Stricter),
                ("old", Change::Removed, vec![], Effect::Looser),
                ("read", Change::Changed, vec!["effect"], Effect::Stricter),
                (
                    "write",
                    Change::Changed,
                    vec!["match"],
                    Effect::NotApplicable
                ),
            ]
        );
        assert_eq!(d.settings.len(), 1);
        assert_eq!(d.settings[0].field, "default_verdict");
        assert_eq!(d.settings[0].verdict_effect, Effect::Looser);
        assert_eq!(
            d.summary,
            Summary {
                added: 1,
                removed: 1,
                changed: 2,
                stricter: 2,
                looser: 2
            }
        );
        assert_eq!(
            d.warnings.iter().map(|w| w.code).collect::<Vec<_>>(),
            ["default_allow"]
        );
        assert_eq!(diff(&policy(V1), &policy(V1)).rules, vec![]);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["rules"][3]["verdict_effect"], "n/a");
    }

    #[test]
    fn risky_content_is_warned_about() {
        let p = policy(
            "default_verdict: block\nrules:\n  - name: yolo\n    effect: allow\n    match:\n      risk_classes: [high]\n",
        );
        let codes: Vec<&str> = warnings(&p).iter().map(|w| w.code).collect();
        assert_eq!(codes, ["fail_closed_disabled", "fail_open_allow_high_risk"]);
        let safe = policy(
            "default_verdict: block\nfail_closed:\n  enabled: true\nrules:\n  - name: careful\n    effect: require_approval\n    match:\n      risk_classes: [high]\n",
        );
        assert!(warnings(&safe).is_empty());
        assert_eq!(
            pin_warnings("prod", Some(0))[0].code,
            "offline_zero_in_prod"
        );
        assert_eq!(pin_warnings("production-eu", Some(0)).len(), 1);
        assert!(pin_warnings("prod", Some(60)).is_empty());
        assert!(pin_warnings("staging", Some(0)).is_empty());
        assert!(pin_warnings("product", Some(0)).is_empty());
    }
}
