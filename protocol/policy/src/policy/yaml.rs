//! The policy file as written (contract §3.2): strict serde structs (unknown keys are errors), every field
//! optional and `null`-tolerant the way goccy/go-yaml fills Go zero values, plus legacy-key detection.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A list of strings in which `null` items are Go's empty string.
pub(crate) type RawList = Option<Vec<Option<String>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub schema_id: Option<String>,
    pub schema_version: Option<String>,
    pub default_verdict: Option<String>,
    pub default_action: Option<String>,
    pub scripts: Option<RawScripts>,
    pub fail_closed: Option<RawFailClosed>,
    pub mcp_trust: Option<RawMcpTrust>,
    pub rules: Option<Vec<Option<RawRule>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScripts {
    pub max_steps: Option<i64>,
    pub require_approval_above: Option<i64>,
    pub block_mixed_risk: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailClosed {
    pub enabled: Option<bool>,
    pub risk_classes: RawList,
    pub required_fields: RawList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcpTrust {
    pub enabled: Option<bool>,
    pub snapshot: Option<String>,
    pub action: Option<String>,
    pub required_risk_classes: RawList,
    pub min_score: Option<f64>,
    pub max_age: Option<String>,
    pub publisher_allowlist: RawList,
    pub require_registry: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: Option<String>,
    pub priority: Option<i64>,
    pub effect: Option<String>,
    pub action: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<RawMatch>,
    pub endpoint: Option<RawEndpoint>,
    pub reason_codes: RawList,
    pub violations: RawList,
    pub min_approvals: Option<i64>,
    pub require_distinct_approvers: Option<bool>,
    pub require_context_evidence: Option<bool>,
    pub required_context_evidence_mode: Option<String>,
    pub max_context_age_seconds: Option<i64>,
    pub require_broker_credential: Option<bool>,
    pub broker_reference: Option<String>,
    pub broker_scopes: RawList,
    pub rate_limit: Option<RawRateLimit>,
    pub destructive_budget: Option<RawRateLimit>,
    pub dataflow: Option<RawDataflow>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests: Option<i64>,
    pub window: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataflow {
    pub enabled: Option<bool>,
    pub tainted_sources: RawList,
    pub destination_kinds: RawList,
    pub destination_values: RawList,
    pub destination_operations: RawList,
    pub action: Option<String>,
    pub reason_code: Option<String>,
    pub violation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub enabled: Option<bool>,
    pub path_allowlist: RawList,
    pub path_denylist: RawList,
    pub domain_allowlist: RawList,
    pub domain_denylist: RawList,
    pub egress_classes: RawList,
    pub action: Option<String>,
    pub destructive_action: Option<String>,
    pub reason_code: Option<String>,
    pub violation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToolAnnotations {
    #[serde(rename = "readOnlyHint")]
    pub read_only_hint: Option<bool>,
    #[serde(rename = "destructiveHint")]
    pub destructive_hint: Option<bool>,
    #[serde(rename = "idempotentHint")]
    pub idempotent_hint: Option<bool>,
    #[serde(rename = "openWorldHint")]
    pub open_world_hint: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub tool_name: Option<String>,
    pub tool_names: RawList,
    pub risk_classes: RawList,
    pub target_kinds: RawList,
    pub target_values: RawList,
    pub endpoint_class: RawList,
    pub endpoint_classes: RawList,
    pub discovery_method: RawList,
    pub tool_annotations: Option<RawToolAnnotations>,
    pub skill_publishers: RawList,
    pub skill_sources: RawList,
    pub data_classes: RawList,
    pub destination_kinds: RawList,
    pub destination_values: RawList,
    pub destination_operations: RawList,
    pub provenance_sources: RawList,
    pub identities: RawList,
    pub workspace_prefixes: RawList,
    pub context_tool_names: RawList,
    pub context_data_classes: RawList,
    pub context_endpoint_classes: RawList,
    pub context_autonomy_levels: RawList,
    pub require_delegation: Option<bool>,
    pub allowed_delegator_identities: RawList,
    pub allowed_delegate_identities: RawList,
    pub delegation_scopes: RawList,
    pub max_delegation_depth: Option<i64>,
}

/// Top-level keys only, for legacy-field detection before the strict parse.
pub(crate) type TopLevelKeys = BTreeMap<String, IgnoredAny>;

/// Flatten a raw list: `None` (absent/null) is empty, `null` items are empty strings.
pub(crate) fn list(raw: &RawList) -> Vec<&str> {
    raw.as_ref()
        .map(|items| items.iter().map(|i| i.as_deref().unwrap_or("")).collect())
        .unwrap_or_default()
}

/// An optional scalar string as Go sees it: absent or `null` is empty.
pub(crate) fn text(raw: &Option<String>) -> &str {
    raw.as_deref().unwrap_or("")
}
