//! The policy digest payload (contract §3.5): Go-struct PascalCase keys built from the normalized policy, with
//! the optional members present exactly when Gait includes them.

use serde_json::{Map, Number, Value};

use super::{DataflowPolicy, EndpointPolicy, Policy, PolicyRule, RateLimitPolicy, RuleMatch};
use crate::verdict::Verdict;

fn strings(values: &[String]) -> Value {
    Value::Array(values.iter().cloned().map(Value::String).collect())
}

fn put_list(map: &mut Map<String, Value>, key: &str, values: &[String]) {
    if !values.is_empty() {
        map.insert(key.to_owned(), strings(values));
    }
}

fn s(value: &str) -> Value {
    Value::String(value.to_owned())
}

fn verdict_text(v: Option<Verdict>) -> Value {
    s(v.map(Verdict::as_str).unwrap_or(""))
}

fn match_payload(m: &RuleMatch) -> Value {
    let mut p = Map::new();
    p.insert("ToolNames".into(), strings(&m.tool_names));
    p.insert("RiskClasses".into(), strings(&m.risk_classes));
    p.insert("TargetKinds".into(), strings(&m.target_kinds));
    p.insert("TargetValues".into(), strings(&m.target_values));
    p.insert("ProvenanceSources".into(), strings(&m.provenance_sources));
    p.insert("Identities".into(), strings(&m.identities));
    p.insert("WorkspacePrefixes".into(), strings(&m.workspace_prefixes));
    put_list(&mut p, "EndpointClasses", &m.endpoint_classes);
    put_list(&mut p, "DiscoveryMethods", &m.discovery_methods);
    let a = &m.tool_annotations;
    let mut annotations = Map::new();
    for (key, value) in [
        ("ReadOnlyHint", a.read_only_hint),
        ("DestructiveHint", a.destructive_hint),
        ("IdempotentHint", a.idempotent_hint),
        ("OpenWorldHint", a.open_world_hint),
    ] {
        if let Some(v) = value {
            annotations.insert(key.into(), Value::Bool(v));
        }
    }
    if !annotations.is_empty() {
        p.insert("ToolAnnotations".into(), Value::Object(annotations));
    }
    put_list(&mut p, "SkillPublishers", &m.skill_publishers);
    put_list(&mut p, "SkillSources", &m.skill_sources);
    put_list(&mut p, "DataClasses", &m.data_classes);
    put_list(&mut p, "DestinationKinds", &m.destination_kinds);
    put_list(&mut p, "DestinationValues", &m.destination_values);
    put_list(&mut p, "DestinationOps", &m.destination_operations);
    put_list(&mut p, "ContextToolNames", &m.context_tool_names);
    put_list(&mut p, "ContextDataClasses", &m.context_data_classes);
    put_list(
        &mut p,
        "ContextEndpointClasses",
        &m.context_endpoint_classes,
    );
    put_list(&mut p, "ContextAutonomyLevels", &m.context_autonomy_levels);
    if m.require_delegation {
        p.insert("RequireDelegation".into(), Value::Bool(true));
    }
    put_list(
        &mut p,
        "AllowedDelegatorIdentities",
        &m.allowed_delegator_identities,
    );
    put_list(
        &mut p,
        "AllowedDelegateIdentities",
        &m.allowed_delegate_identities,
    );
    put_list(&mut p, "DelegationScopes", &m.delegation_scopes);
    if let Some(depth) = m.max_delegation_depth {
        p.insert("MaxDelegationDepth".into(), Value::from(depth));
    }
    Value::Object(p)
}

fn limit_payload(l: &RateLimitPolicy) -> Value {
    let mut p = Map::new();
    p.insert("Requests".into(), Value::from(l.requests));
    p.insert("Window".into(), s(&l.window));
    p.insert("Scope".into(), s(&l.scope));
    Value::Object(p)
}

fn dataflow_payload(d: &DataflowPolicy) -> Value {
    let mut p = Map::new();
    p.insert("Enabled".into(), Value::Bool(d.enabled));
    p.insert("TaintedSources".into(), strings(&d.tainted_sources));
    p.insert("Action".into(), verdict_text(d.action));
    p.insert("ReasonCode".into(), s(&d.reason_code));
    p.insert("Violation".into(), s(&d.violation));
    put_list(&mut p, "DestinationKinds", &d.destination_kinds);
    put_list(&mut p, "DestinationValues", &d.destination_values);
    put_list(&mut p, "DestinationOperations", &d.destination_operations);
    Value::Object(p)
}

fn endpoint_payload(e: &EndpointPolicy) -> Value {
    let mut p = Map::new();
    p.insert("Enabled".into(), Value::Bool(e.enabled));
    p.insert("PathAllowlist".into(), strings(&e.path_allowlist));
    p.insert("PathDenylist".into(), strings(&e.path_denylist));
    p.insert("DomainAllowlist".into(), strings(&e.domain_allowlist));
    p.insert("DomainDenylist".into(), strings(&e.domain_denylist));
    p.insert("EgressClasses".into(), strings(&e.egress_classes));
    p.insert("Action".into(), verdict_text(e.action));
    p.insert(
        "DestructiveAction".into(),
        verdict_text(e.destructive_action),
    );
    p.insert("ReasonCode".into(), s(&e.reason_code));
    p.insert("Violation".into(), s(&e.violation));
    Value::Object(p)
}

fn rule_payload(r: &PolicyRule) -> Value {
    let mut p = Map::new();
    p.insert("Name".into(), s(&r.name));
    p.insert("Priority".into(), Value::from(r.priority));
    p.insert("Effect".into(), s(r.effect.as_str()));
    p.insert("Match".into(), match_payload(&r.match_));
    p.insert("ReasonCodes".into(), strings(&r.reason_codes));
    p.insert("Violations".into(), strings(&r.violations));
    if r.min_approvals > 0 {
        p.insert("MinApprovals".into(), Value::from(r.min_approvals));
    }
    if r.require_distinct_approvers {
        p.insert("RequireDistinctApprovers".into(), Value::Bool(true));
    }
    if r.require_context_evidence {
        p.insert("RequireContextEvidence".into(), Value::Bool(true));
    }
    if !r.required_context_evidence_mode.is_empty() {
        p.insert(
            "RequiredContextEvidenceMode".into(),
            s(&r.required_context_evidence_mode),
        );
    }
    if r.max_context_age_seconds > 0 {
        p.insert(
            "MaxContextAgeSeconds".into(),
            Value::from(r.max_context_age_seconds),
        );
    }
    if r.require_broker_credential {
        p.insert("RequireBrokerCredential".into(), Value::Bool(true));
    }
    if !r.broker_reference.is_empty() {
        p.insert("BrokerReference".into(), s(&r.broker_reference));
    }
    put_list(&mut p, "BrokerScopes", &r.broker_scopes);
    if r.rate_limit.requests > 0 {
        p.insert("RateLimit".into(), limit_payload(&r.rate_limit));
    }
    if r.destructive_budget.requests > 0 {
        p.insert(
            "DestructiveBudget".into(),
            limit_payload(&r.destructive_budget),
        );
    }
    if r.dataflow.enabled {
        p.insert("Dataflow".into(), dataflow_payload(&r.dataflow));
    }
    if r.endpoint.enabled {
        p.insert("Endpoint".into(), endpoint_payload(&r.endpoint));
    }
    Value::Object(p)
}

pub(crate) fn policy_payload(policy: &Policy) -> Value {
    let mut p = Map::new();
    p.insert("SchemaID".into(), s(&policy.schema_id));
    p.insert("SchemaVersion".into(), s(&policy.schema_version));
    p.insert("DefaultVerdict".into(), s(policy.default_verdict.as_str()));
    let mut fail_closed = Map::new();
    fail_closed.insert("Enabled".into(), Value::Bool(policy.fail_closed.enabled));
    fail_closed.insert(
        "RiskClasses".into(),
        strings(&policy.fail_closed.risk_classes),
    );
    fail_closed.insert(
        "RequiredFields".into(),
        strings(&policy.fail_closed.required_fields),
    );
    p.insert("FailClosed".into(), Value::Object(fail_closed));
    p.insert(
        "Rules".into(),
        Value::Array(policy.rules.iter().map(rule_payload).collect()),
    );
    let scripts = &policy.scripts;
    if scripts.max_steps > 0 || scripts.require_approval_above > 0 || scripts.block_mixed_risk {
        let mut sp = Map::new();
        sp.insert("MaxSteps".into(), Value::from(scripts.max_steps));
        sp.insert(
            "RequireApprovalAbove".into(),
            Value::from(scripts.require_approval_above),
        );
        sp.insert(
            "BlockMixedRisk".into(),
            Value::Bool(scripts.block_mixed_risk),
        );
        p.insert("Scripts".into(), Value::Object(sp));
    }
    let mcp = &policy.mcp_trust;
    if mcp.enabled {
        let mut mp = Map::new();
        mp.insert("Enabled".into(), Value::Bool(true));
        mp.insert("SnapshotPath".into(), s(&mcp.snapshot_path));
        mp.insert("Action".into(), s(&mcp.action));
        mp.insert(
            "RequiredRiskClasses".into(),
            strings(&mcp.required_risk_classes),
        );
        // Validated to lie in 0..=1, so always finite.
        mp.insert(
            "MinScore".into(),
            Number::from_f64(mcp.min_score).map_or(Value::Null, Value::Number),
        );
        mp.insert("MaxAge".into(), s(&mcp.max_age));
        mp.insert(
            "PublisherAllowlist".into(),
            strings(&mcp.publisher_allowlist),
        );
        mp.insert("RequireRegistry".into(), Value::Bool(mcp.require_registry));
        p.insert("MCPTrust".into(), Value::Object(mp));
    }
    Value::Object(p)
}
