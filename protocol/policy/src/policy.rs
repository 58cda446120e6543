//! Gate policies (`gait.gate.policy`, contract §3): strict YAML parsing with serde-saphyr under a resource
//! budget, legacy-key migration hints, normalization (§3.2) and the policy digest (§3.5).

mod digest;
mod legacy;
mod normalize;
mod yaml;

use crate::verdict::Verdict;

pub use legacy::{LegacyField, LegacyPolicyError};

/// Schema id of a policy.
pub const POLICY_SCHEMA_ID: &str = "gait.gate.policy";
/// Schema version of a policy.
pub const POLICY_SCHEMA_VERSION: &str = "1.0.0";
/// Largest policy file [`parse_policy_yaml`] reads.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// A normalized policy: lists trimmed, de-duplicated, sorted (lowercased where §3.2 says so), defaults filled,
/// aliases merged, rules sorted by (priority, name).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Always `gait.gate.policy`.
    pub schema_id: String,
    /// Always `1.0.0`.
    pub schema_version: String,
    /// Verdict when no rule matches (default `require_approval`).
    pub default_verdict: Verdict,
    /// Script intent limits.
    pub scripts: ScriptPolicy,
    /// Fail-closed gate for high-risk intents.
    pub fail_closed: FailClosedPolicy,
    /// MCP trust settings (enforced only by the MCP proxy; part of the digest when enabled).
    pub mcp_trust: McpTrustPolicy,
    /// Rules in evaluation order.
    pub rules: Vec<PolicyRule>,
}

/// `scripts:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptPolicy {
    /// Most steps allowed (0 ⇒ 64).
    pub max_steps: i64,
    /// More steps than this need approval (0 ⇒ no threshold).
    pub require_approval_above: i64,
    /// Block scripts whose steps span more than one risk class.
    pub block_mixed_risk: bool,
}

/// `fail_closed:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailClosedPolicy {
    /// Whether the gate is on.
    pub enabled: bool,
    /// Risk classes it applies to (default `critical`, `high` when enabled).
    pub risk_classes: Vec<String>,
    /// Fields that must be present: `targets|arg_provenance|endpoint_class|delegation|context_evidence`.
    pub required_fields: Vec<String>,
}

/// `mcp_trust:`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpTrustPolicy {
    /// On when any key is set.
    pub enabled: bool,
    /// `snapshot` path (required when enabled).
    pub snapshot_path: String,
    /// `block|require_approval` (default `block`).
    pub action: String,
    /// Risk classes it applies to (default `critical`, `high`).
    pub required_risk_classes: Vec<String>,
    /// Minimum trust score, 0..=1.
    pub min_score: f64,
    /// Maximum snapshot age as Go's `Duration.String` (e.g. `24h0m0s`), or empty.
    pub max_age: String,
    /// Allowed publishers (lowercased).
    pub publisher_allowlist: Vec<String>,
    /// Require registry verification.
    pub require_registry: bool,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRule {
    /// Trimmed name (required; tie-breaker of the evaluation order).
    pub name: String,
    /// Lower numbers are evaluated first.
    pub priority: i64,
    /// Verdict when the rule matches (`effect` or its alias `action`).
    pub effect: Verdict,
    /// Match criteria (all must hold).
    pub match_: RuleMatch,
    /// Endpoint constraint.
    pub endpoint: EndpointPolicy,
    /// Reason codes (unique, sorted); empty ⇒ `matched_rule_<name>`.
    pub reason_codes: Vec<String>,
    /// Violations (unique, sorted).
    pub violations: Vec<String>,
    /// Approvals needed when the verdict is `require_approval`.
    pub min_approvals: i64,
    /// Approvals must come from distinct approvers (forced on when `min_approvals > 1`).
    pub require_distinct_approvers: bool,
    /// Context evidence required.
    pub require_context_evidence: bool,
    /// `required` or empty.
    pub required_context_evidence_mode: String,
    /// Maximum context age in seconds (0 ⇒ unchecked).
    pub max_context_age_seconds: i64,
    /// A broker credential must be issued before an allow takes effect.
    pub require_broker_credential: bool,
    /// Broker reference.
    pub broker_reference: String,
    /// Broker scopes (lowercased).
    pub broker_scopes: Vec<String>,
    /// Request rate limit (requests 0 ⇒ none).
    pub rate_limit: RateLimitPolicy,
    /// Budget for destructive intents (requests 0 ⇒ none).
    pub destructive_budget: RateLimitPolicy,
    /// Tainted-dataflow constraint.
    pub dataflow: DataflowPolicy,
}

/// `match:`; every list is normalized per §3.2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// Tool names (`tool_name` alias merged in), lowercased.
    pub tool_names: Vec<String>,
    /// Risk classes, lowercased.
    pub risk_classes: Vec<String>,
    /// Target kinds, lowercased.
    pub target_kinds: Vec<String>,
    /// Target values, case preserved.
    pub target_values: Vec<String>,
    /// Endpoint classes (`endpoint_class` alias merged in), lowercased and validated.
    pub endpoint_classes: Vec<String>,
    /// Discovery methods, lowercased and validated.
    pub discovery_methods: Vec<String>,
    /// MCP annotation hints.
    pub tool_annotations: ToolAnnotationMatch,
    /// Skill publishers, lowercased.
    pub skill_publishers: Vec<String>,
    /// Skill sources, lowercased.
    pub skill_sources: Vec<String>,
    /// Data classes (target sensitivity), lowercased.
    pub data_classes: Vec<String>,
    /// Destination kinds, lowercased.
    pub destination_kinds: Vec<String>,
    /// Destination values, case preserved.
    pub destination_values: Vec<String>,
    /// Destination operations, lowercased.
    pub destination_operations: Vec<String>,
    /// Provenance sources, lowercased.
    pub provenance_sources: Vec<String>,
    /// Identities, case preserved.
    pub identities: Vec<String>,
    /// Workspace prefixes, case preserved.
    pub workspace_prefixes: Vec<String>,
    /// `auth_context["wrkr.tool_name"]` values, lowercased.
    pub context_tool_names: Vec<String>,
    /// `auth_context["wrkr.data_class"]` values, lowercased.
    pub context_data_classes: Vec<String>,
    /// `auth_context["wrkr.endpoint_class"]` values, lowercased.
    pub context_endpoint_classes: Vec<String>,
    /// `auth_context["wrkr.autonomy_level"]` values, lowercased.
    pub context_autonomy_levels: Vec<String>,
    /// The intent must carry a delegation (signed tokens are checked later by the CLI).
    pub require_delegation: bool,
    /// Allowed delegators, case preserved.
    pub allowed_delegator_identities: Vec<String>,
    /// Allowed delegates, case preserved.
    pub allowed_delegate_identities: Vec<String>,
    /// Delegation scopes, lowercased.
    pub delegation_scopes: Vec<String>,
    /// Longest delegation chain accepted.
    pub max_delegation_depth: Option<i64>,
}

/// `match.tool_annotations`: each hint given must be carried with that value by some target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolAnnotationMatch {
    /// `readOnlyHint`.
    pub read_only_hint: Option<bool>,
    /// `destructiveHint`.
    pub destructive_hint: Option<bool>,
    /// `idempotentHint`.
    pub idempotent_hint: Option<bool>,
    /// `openWorldHint`.
    pub open_world_hint: Option<bool>,
}

/// `endpoint:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// On when any list or `destructive_action` is set.
    pub enabled: bool,
    /// Allowed path patterns (case preserved).
    pub path_allowlist: Vec<String>,
    /// Denied path patterns.
    pub path_denylist: Vec<String>,
    /// Allowed domain patterns (lowercased).
    pub domain_allowlist: Vec<String>,
    /// Denied domain patterns (lowercased).
    pub domain_denylist: Vec<String>,
    /// Allowed `net.*` classes.
    pub egress_classes: Vec<String>,
    /// Escalation when a list fires: `block|require_approval` (default `block`); `None` when disabled.
    pub action: Option<Verdict>,
    /// Escalation for destructive targets, when set.
    pub destructive_action: Option<Verdict>,
    /// Extra reason code (default `endpoint_constraint_violation`).
    pub reason_code: String,
    /// Extra violation (default `endpoint_constraint_violation`).
    pub violation: String,
}

/// `rate_limit:` / `destructive_budget:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Requests per window; 0 disables the limit.
    pub requests: i64,
    /// `minute|hour` (default `minute`).
    pub window: String,
    /// `tool|identity|tool_identity` (default `tool_identity`).
    pub scope: String,
}

/// `dataflow:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataflowPolicy {
    /// On when any list is set.
    pub enabled: bool,
    /// Provenance sources that taint (default `external`, `tool_output`).
    pub tainted_sources: Vec<String>,
    /// Destination kinds (lowercased).
    pub destination_kinds: Vec<String>,
    /// Destination values (case preserved).
    pub destination_values: Vec<String>,
    /// Destination operations (lowercased).
    pub destination_operations: Vec<String>,
    /// Replacement effect when triggered (default `require_approval`); `None` when disabled.
    pub action: Option<Verdict>,
    /// Reason code (default `dataflow_tainted_destination`).
    pub reason_code: String,
    /// Violation (default `tainted_dataflow`).
    pub violation: String,
}

/// A policy could not be read or is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// Larger than [`MAX_POLICY_BYTES`].
    #[error("policy is {size} bytes, over the {max} byte limit: split or trim the policy")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// YAML syntax error, unknown or duplicate key, wrong type, or a budget limit (aliases, depth, size).
    #[error("parse policy yaml: {message}{}", location_suffix(*line, *column))]
    Yaml {
        /// What is wrong, naming the key when a key is at fault.
        message: String,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// 1-based column, 0 when unknown.
        column: u64,
    },
    /// Legacy top-level keys from the pre-1.0 proposal format.
    #[error(transparent)]
    Legacy(#[from] LegacyPolicyError),
    /// A value violates a §3.2 rule; `field` is the dotted path, `message` uses Gait's wording.
    #[error("invalid policy at {field}: {message}")]
    Invalid {
        /// Dotted path, e.g. `rules[2].endpoint.action`.
        field: String,
        /// Gait's message.
        message: String,
    },
}

fn location_suffix(line: u64, column: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line}, column {column})")
    }
}

impl PolicyError {
    /// Legacy-field migrations for the CLI's JSON `migration` object, when this is a legacy error.
    pub fn migrations(&self) -> &[LegacyField] {
        match self {
            PolicyError::Legacy(err) => &err.fields,
            _ => &[],
        }
    }
}

/// Parse a policy file strictly (unknown keys rejected with their name and line, legacy keys rejected with a
/// migration hint) and normalize it.
pub fn parse_policy_yaml(bytes: &[u8]) -> Result<Policy, PolicyError> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: bytes.len(),
            max: MAX_POLICY_BYTES,
        });
    }
    legacy::reject_legacy_fields(bytes)?;
    let raw: Option<yaml::RawPolicy> =
        serde_saphyr::from_slice_with_options(bytes, legacy::parse_options())
            .map_err(legacy::yaml_error)?;
    normalize::normalize_policy(raw.unwrap_or_default())
}

impl Policy {
    /// The PascalCase payload of §3.5 whose DigestJCS is the policy digest.
    pub fn digest_payload(&self) -> serde_json::Value {
        digest::policy_payload(self)
    }

    /// The policy digest (§3.5).
    pub fn digest(&self) -> String {
        gait_canon::digest_jcs(&self.digest_payload())
    }

    /// Gait's `PolicyRequiresContextEvidence`: `fail_closed.required_fields` names `context_evidence`, or a
    /// rule requires evidence, a `required` evidence mode or a maximum context age.
    pub fn requires_context_evidence(&self) -> bool {
        self.fail_closed
            .required_fields
            .iter()
            .any(|f| f == "context_evidence")
            || self.rules.iter().any(|r| {
                r.require_context_evidence
                    || r.required_context_evidence_mode == "required"
                    || r.max_context_age_seconds > 0
            })
    }
}

impl Default for Policy {
    /// The policy an empty file yields: no rules, default `require_approval`.
    fn default() -> Self {
        Policy {
            schema_id: POLICY_SCHEMA_ID.to_owned(),
            schema_version: POLICY_SCHEMA_VERSION.to_owned(),
            default_verdict: Verdict::RequireApproval,
            scripts: ScriptPolicy::default(),
            fail_closed: FailClosedPolicy::default(),
            mcp_trust: McpTrustPolicy::default(),
            rules: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
