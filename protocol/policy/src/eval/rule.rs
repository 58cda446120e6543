//! One rule against one (step) intent: the match test of §3.3 and the per-rule effect of §3.4 step 6
//! (dataflow replacement, endpoint constraint, context evidence, phase/destructive escalation, approvals).

use serde_json::{Map, Value};

use crate::glob::go_path_match;
use crate::intent::{
    IntentArgProvenance, IntentContext, IntentDelegation, IntentTarget, SkillProvenance,
};
use crate::policy::{DataflowPolicy, EndpointPolicy, PolicyRule, RuleMatch, ToolAnnotationMatch};
use crate::text::{insert_sorted, lower_trim, merge_unique_sorted};
use crate::verdict::Verdict;

/// What evaluation reads from an intent (a whole single intent, or one script step with the shared context).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub tool_name: &'a str,
    pub targets: &'a [IntentTarget],
    pub arg_provenance: &'a [IntentArgProvenance],
    pub context: &'a IntentContext,
    pub skill: Option<&'a SkillProvenance>,
    pub delegation: Option<&'a IntentDelegation>,
}

impl View<'_> {
    pub fn has_destructive_target(&self) -> bool {
        self.targets.iter().any(|t| t.destructive)
    }
}

/// The outcome of one matched rule.
#[derive(Debug, Clone)]
pub(crate) struct RuleEffect {
    pub effect: Verdict,
    pub reasons: Vec<String>,
    pub violations: Vec<String>,
    pub min_approvals: i64,
    pub dataflow_triggered: bool,
}

fn listed(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == value)
}

/// Lowercased, trimmed string at `key` of `auth_context`, or empty when absent or not a string.
pub(crate) fn context_string(auth: Option<&Map<String, Value>>, key: &str) -> String {
    match auth.and_then(|a| a.get(key)) {
        Some(Value::String(s)) => lower_trim(s),
        _ => String::new(),
    }
}

fn context_listed(list: &[String], auth: Option<&Map<String, Value>>, key: &str) -> bool {
    if list.is_empty() {
        return true;
    }
    let value = context_string(auth, key);
    !value.is_empty() && listed(list, &value)
}

fn any_target(list: &[String], targets: &[IntentTarget], field: fn(&IntentTarget) -> &str) -> bool {
    list.is_empty() || targets.iter().any(|t| listed(list, field(t)))
}

fn annotations_match(m: &ToolAnnotationMatch, targets: &[IntentTarget]) -> bool {
    let hint = |want: Option<bool>, get: fn(&IntentTarget) -> bool| match want {
        None => true,
        Some(v) => targets.iter().any(|t| get(t) == v),
    };
    hint(m.read_only_hint, |t| t.read_only_hint)
        && hint(m.destructive_hint, |t| t.destructive_hint)
        && hint(m.idempotent_hint, |t| t.idempotent_hint)
        && hint(m.open_world_hint, |t| t.open_world_hint)
}

fn delegation_matches(m: &RuleMatch, delegation: Option<&IntentDelegation>) -> bool {
    let constrained = m.require_delegation
        || !m.allowed_delegator_identities.is_empty()
        || !m.allowed_delegate_identities.is_empty()
        || !m.delegation_scopes.is_empty()
        || m.max_delegation_depth.is_some();
    if !constrained {
        return true;
    }
    let Some(d) = delegation else { return false };
    if let Some(depth) = m.max_delegation_depth
        && i64::try_from(d.chain.len()).unwrap_or(i64::MAX) > depth
    {
        return false;
    }
    if !m.allowed_delegator_identities.is_empty()
        && !d
            .chain
            .iter()
            .any(|l| listed(&m.allowed_delegator_identities, l.delegator_identity.trim()))
    {
        return false;
    }
    if !m.allowed_delegate_identities.is_empty()
        && !listed(&m.allowed_delegate_identities, d.requester_identity.trim())
        && !d
            .chain
            .iter()
            .any(|l| listed(&m.allowed_delegate_identities, l.delegate_identity.trim()))
    {
        return false;
    }
    if !m.delegation_scopes.is_empty()
        && !listed(&m.delegation_scopes, &lower_trim(&d.scope_class))
        && !d
            .chain
            .iter()
            .any(|l| listed(&m.delegation_scopes, &lower_trim(&l.scope_class)))
    {
        return false;
    }
    true
}

/// §3.3: every given criterion must hold; within a list any entry suffices; target lists are checked
/// independently (different targets may satisfy different lists).
pub(crate) fn rule_matches(m: &RuleMatch, view: &View<'_>) -> bool {
    let ctx = view.context;
    let auth = ctx.auth_context.as_ref();
    if !m.tool_names.is_empty() && !listed(&m.tool_names, view.tool_name) {
        return false;
    }
    if !m.risk_classes.is_empty() && !listed(&m.risk_classes, &ctx.risk_class) {
        return false;
    }
    if !m.identities.is_empty() && !listed(&m.identities, &ctx.identity) {
        return false;
    }
    if !m.workspace_prefixes.is_empty()
        && !m
            .workspace_prefixes
            .iter()
            .any(|p| ctx.workspace.starts_with(p.as_str()))
    {
        return false;
    }
    if !context_listed(&m.context_tool_names, auth, "wrkr.tool_name")
        || !context_listed(&m.context_data_classes, auth, "wrkr.data_class")
        || !context_listed(&m.context_endpoint_classes, auth, "wrkr.endpoint_class")
        || !context_listed(&m.context_autonomy_levels, auth, "wrkr.autonomy_level")
    {
        return false;
    }
    let targets = view.targets;
    if !any_target(&m.target_kinds, targets, |t| &t.kind)
        || !any_target(&m.target_values, targets, |t| &t.value)
        || !any_target(&m.endpoint_classes, targets, |t| &t.endpoint_class)
        || !any_target(&m.discovery_methods, targets, |t| &t.discovery_method)
    {
        return false;
    }
    if !annotations_match(&m.tool_annotations, targets) {
        return false;
    }
    if !m.skill_publishers.is_empty()
        && !view
            .skill
            .is_some_and(|s| listed(&m.skill_publishers, &lower_trim(&s.publisher)))
    {
        return false;
    }
    if !m.skill_sources.is_empty()
        && !view
            .skill
            .is_some_and(|s| listed(&m.skill_sources, &lower_trim(&s.source)))
    {
        return false;
    }
    if !any_target(&m.data_classes, targets, |t| &t.sensitivity)
        || !any_target(&m.destination_kinds, targets, |t| &t.kind)
        || !any_target(&m.destination_values, targets, |t| &t.value)
        || !any_target(&m.destination_operations, targets, |t| &t.operation)
    {
        return false;
    }
    if !m.provenance_sources.is_empty()
        && !view
            .arg_provenance
            .iter()
            .any(|p| listed(&m.provenance_sources, &p.source))
    {
        return false;
    }
    delegation_matches(m, view.delegation)
}

fn is_default_egress_kind(kind: &str) -> bool {
    matches!(kind, "host" | "url" | "bucket" | "queue" | "topic")
}

/// §3.4 6a: tainted provenance flowing to a destination. Returns the replacement effect when triggered.
fn dataflow_trigger(d: &DataflowPolicy, view: &View<'_>) -> Option<Verdict> {
    if !d.enabled || view.targets.is_empty() {
        return None;
    }
    if !view
        .arg_provenance
        .iter()
        .any(|p| listed(&d.tainted_sources, &p.source))
    {
        return None;
    }
    let unfiltered = d.destination_kinds.is_empty()
        && d.destination_values.is_empty()
        && d.destination_operations.is_empty();
    let hit = if unfiltered {
        view.targets.iter().any(|t| is_default_egress_kind(&t.kind))
    } else {
        view.targets.iter().any(|t| {
            (d.destination_kinds.is_empty() || listed(&d.destination_kinds, &t.kind))
                && (d.destination_values.is_empty() || listed(&d.destination_values, &t.value))
                && (d.destination_operations.is_empty()
                    || listed(&d.destination_operations, &t.operation))
        })
    };
    if hit { d.action } else { None }
}

fn path_pattern_matches(value: &str, pattern: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let value = value.trim();
    let pattern = pattern.trim();
    if pattern == value {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix("/**")
        && (value == prefix
            || value
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/')))
    {
        return true;
    }
    go_path_match(pattern, value)
}

fn domain_pattern_matches(value: &str, pattern: &str) -> bool {
    let pattern = lower_trim(pattern);
    if pattern.is_empty() {
        return false;
    }
    let value = lower_trim(value);
    if value == pattern {
        return true;
    }
    if pattern.starts_with("*.") && value.ends_with(&pattern[1..]) {
        return true;
    }
    go_path_match(&pattern, &value)
}

/// §3.4 6b: the endpoint constraint. Returns (effect, reasons, violations) when any check fired.
fn endpoint_trigger(
    e: &EndpointPolicy,
    view: &View<'_>,
) -> Option<(Verdict, Vec<String>, Vec<String>)> {
    if !e.enabled {
        return None;
    }
    let mut reasons: Vec<String> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let mut fire = |code: &str, violation: &str| {
        insert_sorted(&mut reasons, code);
        insert_sorted(&mut violations, violation);
    };
    for t in view.targets {
        if t.kind == "path" {
            let path = t.value.trim();
            if !e.path_denylist.is_empty()
                && e.path_denylist
                    .iter()
                    .any(|p| path_pattern_matches(path, p))
            {
                fire("endpoint_path_denied", "endpoint_path_denied");
            }
            if !e.path_allowlist.is_empty()
                && !e
                    .path_allowlist
                    .iter()
                    .any(|p| path_pattern_matches(path, p))
            {
                fire(
                    "endpoint_path_not_allowlisted",
                    "endpoint_path_not_allowlisted",
                );
            }
        }
        let domain = lower_trim(&t.endpoint_domain);
        if !domain.is_empty() {
            if !e.domain_denylist.is_empty()
                && e.domain_denylist
                    .iter()
                    .any(|p| domain_pattern_matches(&domain, p))
            {
                fire("endpoint_domain_denied", "endpoint_domain_denied");
            }
            if !e.domain_allowlist.is_empty()
                && !e
                    .domain_allowlist
                    .iter()
                    .any(|p| domain_pattern_matches(&domain, p))
            {
                fire(
                    "endpoint_domain_not_allowlisted",
                    "endpoint_domain_not_allowlisted",
                );
            }
        }
        if t.endpoint_class.starts_with("net.")
            && !e.egress_classes.is_empty()
            && !listed(&e.egress_classes, &t.endpoint_class)
        {
            fire(
                "endpoint_egress_class_not_allowed",
                "endpoint_egress_class_not_allowed",
            );
        }
    }
    let mut effect = e.action.unwrap_or(Verdict::Block);
    if let Some(destructive) = e.destructive_action
        && view.has_destructive_target()
    {
        effect = effect.most_restrictive(destructive);
        fire("endpoint_destructive_operation", "destructive_operation");
    }
    if reasons.is_empty() {
        return None;
    }
    if !e.reason_code.is_empty() {
        insert_sorted(&mut reasons, &e.reason_code);
    }
    if !e.violation.is_empty() {
        insert_sorted(&mut violations, &e.violation);
    }
    Some((effect, reasons, violations))
}

/// Go's `contextAgeSeconds` for a JSON value held in `auth_context`.
fn context_age_seconds(auth: Option<&Map<String, Value>>) -> Option<i64> {
    match auth?.get("context_age_seconds")? {
        Value::Number(n) => {
            // Go holds decoded JSON numbers as doubles (negative ones rejected) and a bound envelope's age as a
            // non-negative int64, so a negative integer is rejected either way.
            if let Some(i) = n.as_i64() {
                return (i >= 0).then_some(i);
            }
            let f = n.as_f64()?;
            #[allow(clippy::cast_possible_truncation)]
            (f >= 0.0).then_some(f as i64)
        }
        Value::String(s) => {
            let parsed: i64 = s.trim().parse().ok()?;
            (parsed >= 0).then_some(parsed)
        }
        _ => None,
    }
}

/// §3.4 6c: required context evidence. Returns (reasons, violations) when it fails (effect `block`).
fn context_trigger(rule: &PolicyRule, ctx: &IntentContext) -> Option<(Vec<String>, Vec<String>)> {
    let required = rule.require_context_evidence
        || rule.required_context_evidence_mode == "required"
        || rule.max_context_age_seconds > 0;
    if !required {
        return None;
    }
    let mut reasons = Vec::new();
    let mut violations = Vec::new();
    if ctx.context_set_digest.trim().is_empty() {
        reasons.push("context_evidence_missing".to_owned());
        reasons.push("context_set_digest_missing".to_owned());
        violations.push("missing_context_evidence".to_owned());
    }
    if rule.required_context_evidence_mode == "required"
        && ctx.context_evidence_mode.trim() != "required"
    {
        reasons.push("context_evidence_mode_mismatch".to_owned());
        violations.push("context_evidence_mode_violation".to_owned());
    }
    if rule.max_context_age_seconds > 0 {
        match context_age_seconds(ctx.auth_context.as_ref()) {
            Some(age) if age <= rule.max_context_age_seconds => {}
            _ => {
                reasons.push("context_freshness_exceeded".to_owned());
                violations.push("context_freshness_violation".to_owned());
            }
        }
    }
    if reasons.is_empty() {
        return None;
    }
    reasons.sort_unstable();
    violations.sort_unstable();
    violations.dedup();
    Some((reasons, violations))
}

/// The name as it appears in `matched_rule_<name>`: JSON-escaped, spaces and `-` to `_`, lowercased.
pub fn sanitize_rule_name(name: &str) -> String {
    if name.is_empty() {
        return "rule".to_owned();
    }
    let quoted = go_json_quote(name);
    let inner = quoted.trim_matches('"');
    crate::text::go_lower(&inner.replace([' ', '-'], "_"))
}

/// Go's `json.Marshal` of a string (HTML-safe escaping included), with the surrounding quotes.
fn go_json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// §3.4 step 6 for one matched rule.
pub(crate) fn evaluate_matched_rule(rule: &PolicyRule, view: &View<'_>) -> RuleEffect {
    let mut effect = rule.effect;
    let mut reasons = if rule.reason_codes.is_empty() {
        vec![format!("matched_rule_{}", sanitize_rule_name(&rule.name))]
    } else {
        rule.reason_codes.clone()
    };
    let mut violations = rule.violations.clone();
    let mut dataflow_triggered = false;
    if let Some(replacement) = dataflow_trigger(&rule.dataflow, view) {
        dataflow_triggered = true;
        effect = replacement;
        insert_sorted(&mut reasons, &rule.dataflow.reason_code);
        insert_sorted(&mut violations, &rule.dataflow.violation);
    }
    if let Some((endpoint_effect, endpoint_reasons, endpoint_violations)) =
        endpoint_trigger(&rule.endpoint, view)
    {
        effect = effect.most_restrictive(endpoint_effect);
        merge_unique_sorted(&mut reasons, &endpoint_reasons);
        merge_unique_sorted(&mut violations, &endpoint_violations);
    }
    if let Some((context_reasons, context_violations)) = context_trigger(rule, view.context) {
        effect = effect.most_restrictive(Verdict::Block);
        merge_unique_sorted(&mut reasons, &context_reasons);
        merge_unique_sorted(&mut violations, &context_violations);
    }
    if view.has_destructive_target() {
        match view.context.phase.trim() {
            "plan" => {
                effect = effect.most_restrictive(Verdict::DryRun);
                insert_sorted(&mut reasons, "plan_phase_non_destructive");
            }
            "" | "apply" => {
                effect = effect.most_restrictive(Verdict::RequireApproval);
                insert_sorted(&mut reasons, "destructive_apply_requires_approval");
            }
            _ => {}
        }
    }
    let min_approvals = if effect == Verdict::RequireApproval && rule.min_approvals == 0 {
        1
    } else {
        rule.min_approvals
    };
    RuleEffect {
        effect,
        reasons,
        violations,
        min_approvals,
        dataflow_triggered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_become_reason_suffixes_like_gait() {
        assert_eq!(sanitize_rule_name("endpoint-deny"), "endpoint_deny");
        assert_eq!(sanitize_rule_name("Allow Safe Tools"), "allow_safe_tools");
        assert_eq!(sanitize_rule_name("a<b>\"c"), "a\\u003cb\\u003e\\\"c");
        assert_eq!(sanitize_rule_name(""), "rule");
    }

    #[test]
    fn path_patterns_support_exact_double_star_and_glob() {
        assert!(path_pattern_matches("/etc/hosts", "/etc/**"));
        assert!(path_pattern_matches("/etc", "/etc/**"));
        assert!(!path_pattern_matches("/etcetera", "/etc/**"));
        assert!(path_pattern_matches("/tmp/a.txt", "/tmp/*.txt"));
        assert!(!path_pattern_matches("/tmp/x/a.txt", "/tmp/*.txt"));
        assert!(!path_pattern_matches("/tmp", ""));
    }

    #[test]
    fn domain_patterns_cover_strict_subdomains() {
        assert!(domain_pattern_matches(
            "api.external.example",
            "*.external.example"
        ));
        assert!(!domain_pattern_matches(
            "external.example",
            "*.external.example"
        ));
        assert!(domain_pattern_matches(
            "API.Internal.Local",
            "api.internal.local"
        ));
    }

    #[test]
    fn context_age_accepts_non_negative_numbers_and_integer_strings() {
        let auth = |v: Value| {
            let mut m = Map::new();
            m.insert("context_age_seconds".into(), v);
            m
        };
        assert_eq!(context_age_seconds(Some(&auth(Value::from(12)))), Some(12));
        assert_eq!(
            context_age_seconds(Some(&auth(Value::from(12.9)))),
            Some(12)
        );
        assert_eq!(context_age_seconds(Some(&auth(Value::from(-1)))), None);
        assert_eq!(
            context_age_seconds(Some(&auth(Value::from(" 7 ")))),
            Some(7)
        );
        assert_eq!(context_age_seconds(Some(&auth(Value::from("7s")))), None);
        assert_eq!(context_age_seconds(None), None);
    }
}
