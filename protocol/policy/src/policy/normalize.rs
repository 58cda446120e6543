//! Policy normalization and validation (contract §3.2, Gait `normalizePolicy`): defaults, alias agreement,
//! which lists are lowercased and which keep case, auto-enabling of endpoint and dataflow blocks, the
//! allowed-value checks in Gait's order, and the final (priority, name) rule order.

use super::yaml::{
    RawDataflow, RawEndpoint, RawFailClosed, RawMatch, RawMcpTrust, RawPolicy, RawRateLimit,
    RawRule, RawScripts, list, text,
};
use super::{
    DataflowPolicy, EndpointPolicy, FailClosedPolicy, McpTrustPolicy, POLICY_SCHEMA_ID,
    POLICY_SCHEMA_VERSION, Policy, PolicyError, PolicyRule, RateLimitPolicy, RuleMatch,
    ScriptPolicy, ToolAnnotationMatch,
};
use crate::gotime::GoDuration;
use crate::intent::normalize::{DISCOVERY_METHODS, ENDPOINT_CLASSES};
use crate::text::{lower_trim, unique_sorted, unique_sorted_lower};
use crate::verdict::Verdict;

const REQUIRED_FIELDS: [&str; 5] = [
    "targets",
    "arg_provenance",
    "endpoint_class",
    "delegation",
    "context_evidence",
];

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// `block` or `require_approval`, the only escalations endpoint, dataflow and MCP trust accept.
fn escalation(value: &str) -> Option<Verdict> {
    match value {
        "block" => Some(Verdict::Block),
        "require_approval" => Some(Verdict::RequireApproval),
        _ => None,
    }
}

pub(crate) fn normalize_policy(raw: RawPolicy) -> Result<Policy, PolicyError> {
    let schema_id = match text(&raw.schema_id) {
        "" => POLICY_SCHEMA_ID,
        other => other,
    };
    if schema_id != POLICY_SCHEMA_ID {
        return Err(invalid(
            "schema_id",
            format!("unsupported policy schema_id: {schema_id}"),
        ));
    }
    let schema_version = match text(&raw.schema_version) {
        "" => POLICY_SCHEMA_VERSION,
        other => other,
    };
    if schema_version != POLICY_SCHEMA_VERSION {
        return Err(invalid(
            "schema_version",
            format!("unsupported policy schema_version: {schema_version}"),
        ));
    }

    let mut default_verdict = lower_trim(text(&raw.default_verdict));
    let default_action = lower_trim(text(&raw.default_action));
    if default_verdict.is_empty() {
        default_verdict.clone_from(&default_action);
    }
    if !default_action.is_empty() && default_verdict != default_action {
        return Err(invalid(
            "default_action",
            "default_action must match default_verdict when both are set",
        ));
    }
    if default_verdict.is_empty() {
        default_verdict = Verdict::RequireApproval.as_str().to_owned();
    }
    let default_verdict = Verdict::parse(&default_verdict).ok_or_else(|| {
        invalid(
            "default_verdict",
            format!("invalid default_verdict: {default_verdict}"),
        )
    })?;

    let fail_closed = normalize_fail_closed(raw.fail_closed.unwrap_or_default())?;
    let mcp_trust = normalize_mcp_trust(raw.mcp_trust.unwrap_or_default())?;
    let scripts = normalize_scripts(raw.scripts.unwrap_or_default())?;

    let raw_rules = raw.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (index, rule) in raw_rules.into_iter().enumerate() {
        rules.push(normalize_rule(rule.unwrap_or_default(), index)?);
    }
    // A stable sort: rules equal on (priority, name) keep file order (Go's small-slice sort is stable too).
    rules.sort_by(|a: &PolicyRule, b: &PolicyRule| {
        (a.priority, &a.name).cmp(&(b.priority, &b.name))
    });

    Ok(Policy {
        schema_id: schema_id.to_owned(),
        schema_version: schema_version.to_owned(),
        default_verdict,
        scripts,
        fail_closed,
        mcp_trust,
        rules,
    })
}

fn normalize_fail_closed(raw: RawFailClosed) -> Result<FailClosedPolicy, PolicyError> {
    let enabled = raw.enabled.unwrap_or(false);
    let mut risk_classes = unique_sorted_lower(list(&raw.risk_classes));
    if enabled && risk_classes.is_empty() {
        risk_classes = vec!["critical".to_owned(), "high".to_owned()];
    }
    let required_fields = unique_sorted_lower(list(&raw.required_fields));
    if let Some(bad) = required_fields
        .iter()
        .find(|f| !REQUIRED_FIELDS.contains(&f.as_str()))
    {
        return Err(invalid(
            "fail_closed.required_fields",
            format!("unsupported fail_closed required_field: {bad}"),
        ));
    }
    Ok(FailClosedPolicy {
        enabled,
        risk_classes,
        required_fields,
    })
}

fn normalize_mcp_trust(raw: RawMcpTrust) -> Result<McpTrustPolicy, PolicyError> {
    let mut out = McpTrustPolicy {
        enabled: raw.enabled.unwrap_or(false),
        snapshot_path: text(&raw.snapshot).trim().to_owned(),
        action: lower_trim(text(&raw.action)),
        required_risk_classes: unique_sorted_lower(list(&raw.required_risk_classes)),
        min_score: raw.min_score.unwrap_or(0.0),
        max_age: text(&raw.max_age).trim().to_owned(),
        publisher_allowlist: unique_sorted_lower(list(&raw.publisher_allowlist)),
        require_registry: raw.require_registry.unwrap_or(false),
    };
    let configured = out.enabled
        || !out.snapshot_path.is_empty()
        || !out.action.is_empty()
        || !out.required_risk_classes.is_empty()
        || out.min_score > 0.0
        || !out.max_age.is_empty()
        || !out.publisher_allowlist.is_empty()
        || out.require_registry;
    if !configured {
        return Ok(out);
    }
    out.enabled = true;
    if out.snapshot_path.is_empty() {
        return Err(invalid(
            "mcp_trust.snapshot",
            "mcp_trust.snapshot is required when mcp_trust is configured",
        ));
    }
    if out.action.is_empty() {
        out.action = "block".to_owned();
    }
    if escalation(&out.action).is_none() {
        return Err(invalid(
            "mcp_trust.action",
            format!("unsupported mcp_trust.action {:?}", out.action),
        ));
    }
    if out.required_risk_classes.is_empty() {
        out.required_risk_classes = vec!["critical".to_owned(), "high".to_owned()];
    }
    if !(0.0..=1.0).contains(&out.min_score) {
        return Err(invalid(
            "mcp_trust.min_score",
            "mcp_trust.min_score must be between 0 and 1",
        ));
    }
    if !out.max_age.is_empty() {
        let duration = GoDuration::parse(&out.max_age).map_err(|err| {
            invalid(
                "mcp_trust.max_age",
                format!("parse mcp_trust.max_age: {err}"),
            )
        })?;
        if duration.0 <= 0 {
            return Err(invalid(
                "mcp_trust.max_age",
                "mcp_trust.max_age must be > 0",
            ));
        }
        out.max_age = duration.to_go_string();
    }
    Ok(out)
}

fn normalize_scripts(raw: RawScripts) -> Result<ScriptPolicy, PolicyError> {
    let out = ScriptPolicy {
        max_steps: raw.max_steps.unwrap_or(0),
        require_approval_above: raw.require_approval_above.unwrap_or(0),
        block_mixed_risk: raw.block_mixed_risk.unwrap_or(false),
    };
    if out.max_steps < 0 {
        return Err(invalid(
            "scripts.max_steps",
            "scripts.max_steps must be >= 0",
        ));
    }
    if out.require_approval_above < 0 {
        return Err(invalid(
            "scripts.require_approval_above",
            "scripts.require_approval_above must be >= 0",
        ));
    }
    Ok(out)
}

fn normalize_rule(raw: RawRule, index: usize) -> Result<PolicyRule, PolicyError> {
    let at = |field: &str| format!("rules[{index}].{field}");
    let name = text(&raw.name).trim().to_owned();
    if name.is_empty() {
        return Err(invalid(at("name"), "rule name is required"));
    }
    let mut effect = lower_trim(text(&raw.effect));
    let action = lower_trim(text(&raw.action));
    if effect.is_empty() {
        effect.clone_from(&action);
    }
    if !action.is_empty() && effect != action {
        return Err(invalid(
            at("action"),
            format!("rule action must match effect for {name}"),
        ));
    }
    if effect.is_empty() {
        return Err(invalid(
            at("effect"),
            format!("rule effect is required for {name}"),
        ));
    }
    let effect = Verdict::parse(&effect).ok_or_else(|| {
        invalid(
            at("effect"),
            format!("invalid rule effect {effect:?} for {name}"),
        )
    })?;

    let match_ = normalize_match(raw.match_.unwrap_or_default(), &name, &at)?;

    let reason_codes = unique_sorted(list(&raw.reason_codes));
    let violations = unique_sorted(list(&raw.violations));
    let min_approvals = raw.min_approvals.unwrap_or(0);
    if min_approvals < 0 {
        return Err(invalid(
            at("min_approvals"),
            format!("min_approvals must be >= 0 for {name}"),
        ));
    }
    let mut required_context_evidence_mode = lower_trim(text(&raw.required_context_evidence_mode));
    if !required_context_evidence_mode.is_empty() && required_context_evidence_mode != "required" {
        return Err(invalid(
            at("required_context_evidence_mode"),
            format!("required_context_evidence_mode must be required for {name}"),
        ));
    }
    let require_context_evidence = raw.require_context_evidence.unwrap_or(false);
    if require_context_evidence && required_context_evidence_mode.is_empty() {
        required_context_evidence_mode = "required".to_owned();
    }
    let max_context_age_seconds = raw.max_context_age_seconds.unwrap_or(0);
    if max_context_age_seconds < 0 {
        return Err(invalid(
            at("max_context_age_seconds"),
            format!("max_context_age_seconds must be >= 0 for {name}"),
        ));
    }
    let require_distinct_approvers =
        raw.require_distinct_approvers.unwrap_or(false) || min_approvals > 1;
    let rate_limit =
        normalize_rate_limit(raw.rate_limit.unwrap_or_default(), &name, &at("rate_limit"))?;
    let destructive_budget = normalize_destructive_budget(
        raw.destructive_budget.unwrap_or_default(),
        &name,
        &at("destructive_budget"),
    )?;
    let dataflow = normalize_dataflow(raw.dataflow.unwrap_or_default(), &name, &at("dataflow"))?;
    let endpoint = normalize_endpoint(raw.endpoint.unwrap_or_default(), &name, &at("endpoint"))?;

    Ok(PolicyRule {
        name,
        priority: raw.priority.unwrap_or(0),
        effect,
        match_,
        endpoint,
        reason_codes,
        violations,
        min_approvals,
        require_distinct_approvers,
        require_context_evidence,
        required_context_evidence_mode,
        max_context_age_seconds,
        require_broker_credential: raw.require_broker_credential.unwrap_or(false),
        broker_reference: text(&raw.broker_reference).trim().to_owned(),
        broker_scopes: unique_sorted_lower(list(&raw.broker_scopes)),
        rate_limit,
        destructive_budget,
        dataflow,
    })
}

fn normalize_match(
    raw: RawMatch,
    name: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<RuleMatch, PolicyError> {
    let mut tool_names: Vec<&str> = list(&raw.tool_names);
    let alias = text(&raw.tool_name).trim();
    if !alias.is_empty() {
        tool_names.push(alias);
    }
    let mut endpoint_classes = list(&raw.endpoint_classes);
    endpoint_classes.extend(list(&raw.endpoint_class));
    let endpoint_classes = unique_sorted_lower(endpoint_classes);
    if let Some(bad) = endpoint_classes
        .iter()
        .find(|c| !ENDPOINT_CLASSES.contains(&c.as_str()))
    {
        return Err(invalid(
            at("match.endpoint_classes"),
            format!("unsupported match endpoint_class {bad:?} for {name}"),
        ));
    }
    let discovery_methods = unique_sorted_lower(list(&raw.discovery_method));
    if let Some(bad) = discovery_methods
        .iter()
        .find(|m| !DISCOVERY_METHODS.contains(&m.as_str()))
    {
        return Err(invalid(
            at("match.discovery_method"),
            format!("unsupported match discovery_method {bad:?} for {name}"),
        ));
    }
    if let Some(depth) = raw.max_delegation_depth
        && depth < 0
    {
        return Err(invalid(
            at("match.max_delegation_depth"),
            format!("max_delegation_depth must be >= 0 for {name}"),
        ));
    }
    let annotations = raw.tool_annotations.unwrap_or_default();
    Ok(RuleMatch {
        tool_names: unique_sorted_lower(tool_names),
        risk_classes: unique_sorted_lower(list(&raw.risk_classes)),
        target_kinds: unique_sorted_lower(list(&raw.target_kinds)),
        target_values: unique_sorted(list(&raw.target_values)),
        endpoint_classes,
        discovery_methods,
        tool_annotations: ToolAnnotationMatch {
            read_only_hint: annotations.read_only_hint,
            destructive_hint: annotations.destructive_hint,
            idempotent_hint: annotations.idempotent_hint,
            open_world_hint: annotations.open_world_hint,
        },
        skill_publishers: unique_sorted_lower(list(&raw.skill_publishers)),
        skill_sources: unique_sorted_lower(list(&raw.skill_sources)),
        data_classes: unique_sorted_lower(list(&raw.data_classes)),
        destination_kinds: unique_sorted_lower(list(&raw.destination_kinds)),
        destination_values: unique_sorted(list(&raw.destination_values)),
        destination_operations: unique_sorted_lower(list(&raw.destination_operations)),
        provenance_sources: unique_sorted_lower(list(&raw.provenance_sources)),
        identities: unique_sorted(list(&raw.identities)),
        workspace_prefixes: unique_sorted(list(&raw.workspace_prefixes)),
        context_tool_names: unique_sorted_lower(list(&raw.context_tool_names)),
        context_data_classes: unique_sorted_lower(list(&raw.context_data_classes)),
        context_endpoint_classes: unique_sorted_lower(list(&raw.context_endpoint_classes)),
        context_autonomy_levels: unique_sorted_lower(list(&raw.context_autonomy_levels)),
        require_delegation: raw.require_delegation.unwrap_or(false),
        allowed_delegator_identities: unique_sorted(list(&raw.allowed_delegator_identities)),
        allowed_delegate_identities: unique_sorted(list(&raw.allowed_delegate_identities)),
        delegation_scopes: unique_sorted_lower(list(&raw.delegation_scopes)),
        max_delegation_depth: raw.max_delegation_depth,
    })
}

fn normalize_rate_limit(
    raw: RawRateLimit,
    name: &str,
    at: &str,
) -> Result<RateLimitPolicy, PolicyError> {
    let mut out = RateLimitPolicy {
        requests: raw.requests.unwrap_or(0),
        window: lower_trim(text(&raw.window)),
        scope: lower_trim(text(&raw.scope)),
    };
    if out.requests < 0 {
        return Err(invalid(
            format!("{at}.requests"),
            format!("rate_limit.requests must be >= 0 for {name}"),
        ));
    }
    if out.requests > 0 {
        fill_window_and_scope(&mut out, "rate_limit", name, at)?;
    }
    Ok(out)
}

fn normalize_destructive_budget(
    raw: RawRateLimit,
    name: &str,
    at: &str,
) -> Result<RateLimitPolicy, PolicyError> {
    let mut out = RateLimitPolicy {
        requests: raw.requests.unwrap_or(0),
        window: lower_trim(text(&raw.window)),
        scope: lower_trim(text(&raw.scope)),
    };
    if out.requests < 0 {
        return Err(invalid(
            format!("{at}.requests"),
            format!("destructive_budget.requests must be >= 0 for {name}"),
        ));
    }
    let configured = out.requests > 0 || !out.window.is_empty() || !out.scope.is_empty();
    if configured {
        if out.requests <= 0 {
            return Err(invalid(
                format!("{at}.requests"),
                format!("destructive_budget.requests must be >= 1 for {name}"),
            ));
        }
        fill_window_and_scope(&mut out, "destructive_budget", name, at)?;
    }
    Ok(out)
}

fn fill_window_and_scope(
    out: &mut RateLimitPolicy,
    key: &str,
    name: &str,
    at: &str,
) -> Result<(), PolicyError> {
    if out.window.is_empty() {
        out.window = "minute".to_owned();
    }
    if !matches!(out.window.as_str(), "minute" | "hour") {
        return Err(invalid(
            format!("{at}.window"),
            format!("unsupported {key}.window {:?} for {name}", out.window),
        ));
    }
    if out.scope.is_empty() {
        out.scope = "tool_identity".to_owned();
    }
    if !matches!(out.scope.as_str(), "tool" | "identity" | "tool_identity") {
        return Err(invalid(
            format!("{at}.scope"),
            format!("unsupported {key}.scope {:?} for {name}", out.scope),
        ));
    }
    Ok(())
}

fn normalize_dataflow(
    raw: RawDataflow,
    name: &str,
    at: &str,
) -> Result<DataflowPolicy, PolicyError> {
    let mut out = DataflowPolicy {
        enabled: raw.enabled.unwrap_or(false),
        tainted_sources: unique_sorted_lower(list(&raw.tainted_sources)),
        destination_kinds: unique_sorted_lower(list(&raw.destination_kinds)),
        destination_values: unique_sorted(list(&raw.destination_values)),
        destination_operations: unique_sorted_lower(list(&raw.destination_operations)),
        action: None,
        reason_code: text(&raw.reason_code).trim().to_owned(),
        violation: text(&raw.violation).trim().to_owned(),
    };
    let enabled = out.enabled
        || !out.tainted_sources.is_empty()
        || !out.destination_kinds.is_empty()
        || !out.destination_values.is_empty()
        || !out.destination_operations.is_empty();
    if !enabled {
        return Ok(out);
    }
    out.enabled = true;
    if out.tainted_sources.is_empty() {
        out.tainted_sources = vec!["external".to_owned(), "tool_output".to_owned()];
    }
    let mut action = lower_trim(text(&raw.action));
    if action.is_empty() {
        action = "require_approval".to_owned();
    }
    out.action = Some(escalation(&action).ok_or_else(|| {
        invalid(
            format!("{at}.action"),
            format!("unsupported dataflow.action {action:?} for {name}"),
        )
    })?);
    if out.reason_code.is_empty() {
        out.reason_code = "dataflow_tainted_destination".to_owned();
    }
    if out.violation.is_empty() {
        out.violation = "tainted_dataflow".to_owned();
    }
    Ok(out)
}

/// Path patterns keep their case and backslashes: Gait's `filepath.ToSlash` is a no-op on Unix hosts.
fn normalize_path_patterns(raw: &super::yaml::RawList) -> Vec<String> {
    unique_sorted(list(raw))
}

fn normalize_endpoint(
    raw: RawEndpoint,
    name: &str,
    at: &str,
) -> Result<EndpointPolicy, PolicyError> {
    let mut out = EndpointPolicy {
        enabled: raw.enabled.unwrap_or(false),
        path_allowlist: normalize_path_patterns(&raw.path_allowlist),
        path_denylist: normalize_path_patterns(&raw.path_denylist),
        domain_allowlist: unique_sorted_lower(list(&raw.domain_allowlist)),
        domain_denylist: unique_sorted_lower(list(&raw.domain_denylist)),
        egress_classes: unique_sorted_lower(list(&raw.egress_classes)),
        action: None,
        destructive_action: None,
        reason_code: text(&raw.reason_code).trim().to_owned(),
        violation: text(&raw.violation).trim().to_owned(),
    };
    for class in &out.egress_classes {
        if !ENDPOINT_CLASSES.contains(&class.as_str()) {
            return Err(invalid(
                format!("{at}.egress_classes"),
                format!("unsupported endpoint.egress_class {class:?} for {name}"),
            ));
        }
        if !class.starts_with("net.") {
            return Err(invalid(
                format!("{at}.egress_classes"),
                format!("endpoint.egress_class must be network class for {name}"),
            ));
        }
    }
    let action = lower_trim(text(&raw.action));
    let destructive_action = lower_trim(text(&raw.destructive_action));
    let enabled = out.enabled
        || !out.path_allowlist.is_empty()
        || !out.path_denylist.is_empty()
        || !out.domain_allowlist.is_empty()
        || !out.domain_denylist.is_empty()
        || !out.egress_classes.is_empty()
        || !destructive_action.is_empty();
    if !enabled {
        return Ok(out);
    }
    out.enabled = true;
    let action = if action.is_empty() {
        "block".to_owned()
    } else {
        action
    };
    out.action = Some(escalation(&action).ok_or_else(|| {
        invalid(
            format!("{at}.action"),
            format!("unsupported endpoint.action {action:?} for {name}"),
        )
    })?);
    if !destructive_action.is_empty() {
        out.destructive_action = Some(escalation(&destructive_action).ok_or_else(|| {
            invalid(
                format!("{at}.destructive_action"),
                format!(
                    "unsupported endpoint.destructive_action {destructive_action:?} for {name}"
                ),
            )
        })?);
    }
    if out.reason_code.is_empty() {
        out.reason_code = "endpoint_constraint_violation".to_owned();
    }
    if out.violation.is_empty() {
        out.violation = "endpoint_constraint_violation".to_owned();
    }
    Ok(out)
}
