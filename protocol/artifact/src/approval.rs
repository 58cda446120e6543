//! Approval tokens (`gait.gate.approval_token`, contract §2.4): minting, validation in Gait's order with its error
//! codes, the scope an intent requires, and the approval audit record written beside a trace.

use std::fmt;

use gait_canon::sign::{PublicKey, Signature, SigningKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::check::{self, Checker, DecodeError, InvalidArtifact, is_zero_i64};
use crate::relationship::RelationshipEnvelope;
use crate::signed::{self, SignatureFailure, SignedDocument};
use crate::{GoTime, SCHEMA_VERSION};

/// `schema_id` of an approval token.
pub const APPROVAL_TOKEN_SCHEMA_ID: &str = "gait.gate.approval_token";
/// `schema_id` of an approval audit record.
pub const APPROVAL_AUDIT_SCHEMA_ID: &str = "gait.gate.approval_audit_record";

/// A signed approval for one intent under one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalToken {
    /// `gait.gate.approval_token`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Minting time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// [`approval_token_id`].
    #[serde(default)]
    pub token_id: String,
    /// Who approved.
    #[serde(default)]
    pub approver_identity: String,
    /// Why (ticket, incident code).
    #[serde(default)]
    pub reason_code: String,
    /// Intent digest the approval binds to.
    #[serde(default)]
    pub intent_digest: String,
    /// Policy digest the approval binds to.
    #[serde(default)]
    pub policy_digest: String,
    /// Delegation binding digest, when the intent was delegated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delegation_binding_digest: String,
    /// Granted scopes (lowercase, sorted); `*` grants all.
    #[serde(default)]
    pub scope: Vec<String>,
    /// Most targets the approved intent may have (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub max_targets: i64,
    /// Most operations (script steps) the approved intent may have (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub max_ops: i64,
    /// End of validity (exclusive).
    #[serde(default)]
    pub expires_at: GoTime,
    /// Signature over the token without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl SignedDocument for ApprovalToken {
    const SCHEMA_ID: &'static str = APPROVAL_TOKEN_SCHEMA_ID;

    fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, signature: Option<Signature>) {
        self.signature = signature;
    }
}

impl ApprovalToken {
    /// Gait's normalization: trimmed identities, lowercase digests, scope trimmed, lowercased, de-duplicated
    /// and sorted.
    pub fn normalized(mut self) -> Self {
        self.approver_identity = self.approver_identity.trim().to_owned();
        self.reason_code = self.reason_code.trim().to_owned();
        for digest in [
            &mut self.intent_digest,
            &mut self.policy_digest,
            &mut self.delegation_binding_digest,
        ] {
            *digest = digest.trim().to_ascii_lowercase();
        }
        self.scope = normalize_scope(&self.scope);
        self
    }

    /// Rules of `approval_token.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(APPROVAL_TOKEN_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        c.non_empty("token_id", &self.token_id);
        c.non_empty("approver_identity", &self.approver_identity);
        c.non_empty("reason_code", &self.reason_code);
        c.hex64("intent_digest", &self.intent_digest, true);
        c.hex64("policy_digest", &self.policy_digest, true);
        c.hex64(
            "delegation_binding_digest",
            &self.delegation_binding_digest,
            false,
        );
        if self.scope.is_empty() {
            c.fail("scope", "must list at least one scope");
        }
        c.non_negative("max_targets", self.max_targets);
        c.non_negative("max_ops", self.max_ops);
        c.time_set("expires_at", &self.expires_at);
        c.finish()
    }

    /// The token as Gait writes it: indented JSON with a trailing newline.
    pub fn to_pretty_json(&self) -> Vec<u8> {
        signed::to_pretty_json(self)
    }
}

/// Trim, lowercase, drop empties, de-duplicate and sort scope entries.
pub fn normalize_scope(scope: &[String]) -> Vec<String> {
    let mut out: Vec<String> = scope
        .iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The scope an intent needs: `tool:<tool_name>`, plus `phase:apply` and `destructive:apply` when the phase is
/// `apply` and any target is destructive.
pub fn required_scope(tool_name: &str, phase: &str, any_destructive_target: bool) -> Vec<String> {
    let mut scope = vec![format!("tool:{}", tool_name.trim().to_lowercase())];
    if phase.trim().eq_ignore_ascii_case("apply") && any_destructive_target {
        scope.push("phase:apply".into());
        scope.push("destructive:apply".into());
    }
    scope
}

/// Whether `granted` covers every entry of `required` (`*` covers everything).
pub fn scope_covers(granted: &[String], required: &[String]) -> bool {
    granted.iter().any(|s| s == "*") || required.iter().all(|r| granted.contains(r))
}

/// `token_id`: first 12 bytes hex of SHA-256 over
/// `intent:policy:approver:reason:<scope csv>:<max_targets>:<max_ops>:<expires_at RFC3339Nano>`.
pub fn approval_token_id(token: &ApprovalToken) -> String {
    check::short_id(&format!(
        "{}:{}:{}:{}:{}:{}:{}:{}",
        token.intent_digest,
        token.policy_digest,
        token.approver_identity,
        token.reason_code,
        token.scope.join(","),
        token.max_targets,
        token.max_ops,
        token.expires_at.to_rfc3339_nano()
    ))
}

/// What to mint an approval for.
#[derive(Debug, Clone, Default)]
pub struct ApprovalGrant {
    /// Who approves.
    pub approver_identity: String,
    /// Why.
    pub reason_code: String,
    /// Intent digest to bind.
    pub intent_digest: String,
    /// Policy digest to bind.
    pub policy_digest: String,
    /// Delegation binding digest, empty when the intent is not delegated.
    pub delegation_binding_digest: String,
    /// Scopes granted.
    pub scope: Vec<String>,
    /// Target limit (0 = none).
    pub max_targets: i64,
    /// Operation limit (0 = none).
    pub max_ops: i64,
    /// Minting time.
    pub created_at: GoTime,
    /// Expiry.
    pub expires_at: GoTime,
    /// Producer version to record.
    pub producer_version: String,
}

/// Mint and sign an approval token (`gait approve`).
pub fn mint_approval_token(grant: ApprovalGrant, key: &SigningKey) -> ApprovalToken {
    let mut token = ApprovalToken {
        schema_id: APPROVAL_TOKEN_SCHEMA_ID.into(),
        schema_version: SCHEMA_VERSION.into(),
        created_at: grant.created_at.to_utc(),
        producer_version: grant.producer_version,
        token_id: String::new(),
        approver_identity: grant.approver_identity,
        reason_code: grant.reason_code,
        intent_digest: grant.intent_digest,
        policy_digest: grant.policy_digest,
        delegation_binding_digest: grant.delegation_binding_digest,
        scope: grant.scope,
        max_targets: grant.max_targets,
        max_ops: grant.max_ops,
        expires_at: grant.expires_at.to_utc(),
        signature: None,
    }
    .normalized();
    token.token_id = approval_token_id(&token);
    signed::sign_document(token, key)
}

/// Parse and validate an approval token (no signature check).
pub fn parse_approval_token(bytes: &[u8]) -> Result<ApprovalToken, DecodeError> {
    let token = check::decode_typed::<ApprovalToken>(APPROVAL_TOKEN_SCHEMA_ID, bytes)?;
    let token = token.normalized();
    token.validate()?;
    Ok(token)
}

/// Gait's approval error codes, in validation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum ApprovalErrorCode {
    /// Not a valid token document.
    Invalid,
    /// No signature.
    SignatureMissing,
    /// Signature does not verify.
    SignatureInvalid,
    /// Bound to another intent.
    IntentMismatch,
    /// Bound to another policy.
    PolicyMismatch,
    /// Bound to another delegation.
    DelegationBindingMismatch,
    /// `now >= expires_at`.
    Expired,
    /// Does not grant the required scope.
    ScopeMismatch,
    /// Intent has more targets than allowed.
    MaxTargetsExceeded,
    /// Intent has more operations than allowed.
    MaxOpsExceeded,
}

impl ApprovalErrorCode {
    /// The wire code, e.g. `approval_token_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "approval_token_invalid",
            Self::SignatureMissing => "approval_token_signature_missing",
            Self::SignatureInvalid => "approval_token_signature_invalid",
            Self::IntentMismatch => "approval_token_intent_mismatch",
            Self::PolicyMismatch => "approval_token_policy_mismatch",
            Self::DelegationBindingMismatch => "approval_token_delegation_binding_mismatch",
            Self::Expired => "approval_token_expired",
            Self::ScopeMismatch => "approval_token_scope_mismatch",
            Self::MaxTargetsExceeded => "approval_token_max_targets_exceeded",
            Self::MaxOpsExceeded => "approval_token_max_ops_exceeded",
        }
    }
}

impl From<ApprovalErrorCode> for &'static str {
    fn from(code: ApprovalErrorCode) -> Self {
        code.as_str()
    }
}

impl fmt::Display for ApprovalErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approval token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApprovalError {
    /// Gait's error code.
    pub code: ApprovalErrorCode,
    /// Human explanation.
    pub detail: String,
}

fn reject(code: ApprovalErrorCode, detail: impl Into<String>) -> ApprovalError {
    ApprovalError {
        code,
        detail: detail.into(),
    }
}

/// The decision a token must match.
#[derive(Debug, Clone)]
pub struct ApprovalCheck<'a> {
    /// Digest of the evaluated intent.
    pub intent_digest: &'a str,
    /// Digest of the evaluating policy.
    pub policy_digest: &'a str,
    /// Delegation binding digest of the intent, empty when not delegated.
    pub delegation_binding_digest: &'a str,
    /// From [`required_scope`].
    pub required_scope: &'a [String],
    /// Targets in the intent.
    pub target_count: usize,
    /// Operations in the intent (script steps, 1 for a single call).
    pub op_count: usize,
    /// Current time.
    pub now: OffsetDateTime,
}

/// Validate token bytes with `key` against `check`, in the contract's order: schema, signature present,
/// signature valid, intent, policy, delegation binding, expiry, scope, limits.
pub fn validate_approval_token(
    bytes: &[u8],
    key: &PublicKey,
    check: &ApprovalCheck<'_>,
) -> Result<ApprovalToken, ApprovalError> {
    let (raw, token) = check::decode::<ApprovalToken>(APPROVAL_TOKEN_SCHEMA_ID, bytes)
        .map_err(|err| reject(ApprovalErrorCode::Invalid, err.to_string()))?;
    let token = token.normalized();
    token
        .validate()
        .map_err(|err| reject(ApprovalErrorCode::Invalid, err.to_string()))?;
    match signed::verify_document(&raw, &token, key) {
        Ok(_) => {}
        Err(SignatureFailure::Missing) => {
            return Err(reject(
                ApprovalErrorCode::SignatureMissing,
                "token has no signature",
            ));
        }
        Err(SignatureFailure::Invalid(err)) => {
            return Err(reject(ApprovalErrorCode::SignatureInvalid, err.to_string()));
        }
    }
    check_approval_claims(&token, check)?;
    Ok(token)
}

/// The checks after the signature: bindings, expiry, scope and limits.
pub fn check_approval_claims(
    token: &ApprovalToken,
    check: &ApprovalCheck<'_>,
) -> Result<(), ApprovalError> {
    use ApprovalErrorCode as Code;
    if !token
        .intent_digest
        .eq_ignore_ascii_case(check.intent_digest)
    {
        return Err(reject(
            Code::IntentMismatch,
            format!(
                "token binds intent {}, evaluated intent is {}",
                token.intent_digest, check.intent_digest
            ),
        ));
    }
    if !token
        .policy_digest
        .eq_ignore_ascii_case(check.policy_digest)
    {
        return Err(reject(
            Code::PolicyMismatch,
            format!(
                "token binds policy {}, evaluating policy is {}",
                token.policy_digest, check.policy_digest
            ),
        ));
    }
    if !token
        .delegation_binding_digest
        .eq_ignore_ascii_case(check.delegation_binding_digest)
    {
        return Err(reject(
            Code::DelegationBindingMismatch,
            "token binds a different delegation than the intent carries",
        ));
    }
    if check.now >= token.expires_at.datetime() {
        return Err(reject(
            Code::Expired,
            format!("token expired at {}", token.expires_at),
        ));
    }
    let required = normalize_scope(check.required_scope);
    if !scope_covers(&token.scope, &required) {
        return Err(reject(
            Code::ScopeMismatch,
            format!(
                "token grants [{}], intent requires [{}]",
                token.scope.join(", "),
                required.join(", ")
            ),
        ));
    }
    if exceeds(token.max_targets, check.target_count) {
        return Err(reject(
            Code::MaxTargetsExceeded,
            format!(
                "intent has {} targets, token allows {}",
                check.target_count, token.max_targets
            ),
        ));
    }
    if exceeds(token.max_ops, check.op_count) {
        return Err(reject(
            Code::MaxOpsExceeded,
            format!(
                "intent has {} operations, token allows {}",
                check.op_count, token.max_ops
            ),
        ));
    }
    Ok(())
}

fn exceeds(limit: i64, count: usize) -> bool {
    limit > 0 && u64::try_from(count).unwrap_or(u64::MAX) > limit.unsigned_abs()
}

/// Record of how approvals were judged for one trace (`approval_audit_<trace_id>.json`, unsigned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAuditRecord {
    /// `gait.gate.approval_audit_record`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Trace the audit belongs to.
    #[serde(default)]
    pub trace_id: String,
    /// Tool name.
    #[serde(default)]
    pub tool_name: String,
    /// Intent digest.
    #[serde(default)]
    pub intent_digest: String,
    /// Policy digest.
    #[serde(default)]
    pub policy_digest: String,
    /// Approvals the policy required.
    #[serde(default)]
    pub required_approvals: i64,
    /// Approvals that validated.
    #[serde(default)]
    pub valid_approvals: i64,
    /// Whether the requirement was met.
    #[serde(default)]
    pub approved: bool,
    /// Distinct identities that approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Links to the trace, policy and approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<RelationshipEnvelope>,
    /// One entry per presented token.
    #[serde(default)]
    pub entries: Vec<ApprovalAuditEntry>,
}

/// How one presented token was judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAuditEntry {
    /// Token id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_id: String,
    /// Approver.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approver_identity: String,
    /// Reason code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason_code: String,
    /// Granted scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Expiry.
    #[serde(default)]
    pub expires_at: GoTime,
    /// Whether the token validated.
    #[serde(default)]
    pub valid: bool,
    /// Gait error code when not valid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_code: String,
}

impl ApprovalAuditRecord {
    /// Rules of `approval_audit_record.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(APPROVAL_AUDIT_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        c.non_empty("trace_id", &self.trace_id);
        c.non_empty("tool_name", &self.tool_name);
        lower_hex64(&mut c, "intent_digest", &self.intent_digest);
        lower_hex64(&mut c, "policy_digest", &self.policy_digest);
        c.non_negative("required_approvals", self.required_approvals);
        c.non_negative("valid_approvals", self.valid_approvals);
        if let Some(r) = &self.relationship {
            r.check(&mut c, "relationship");
        }
        c.finish()
    }
}

/// The audit schema (unlike the token schema) requires lowercase hex.
fn lower_hex64(c: &mut Checker, field: &str, value: &str) {
    if !check::is_hex64(value) || value.bytes().any(|b| b.is_ascii_uppercase()) {
        c.fail(
            field,
            format!("must be 64 lowercase hex characters, got {value:?}"),
        );
    }
}

/// Parse and validate an approval audit record.
pub fn parse_approval_audit_record(bytes: &[u8]) -> Result<ApprovalAuditRecord, DecodeError> {
    let record = check::decode_typed::<ApprovalAuditRecord>(APPROVAL_AUDIT_SCHEMA_ID, bytes)?;
    record.validate()?;
    Ok(record)
}

#[cfg(test)]
mod tests;
