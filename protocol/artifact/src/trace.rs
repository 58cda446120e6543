//! The signed gate trace (`gait.gate.trace`, contract §2.3): one record per gate decision, its deterministic ids,
//! signing and verification.

use gait_canon::sign::{PublicKey, Signature, SigningKey};
use serde::{Deserialize, Serialize};

use crate::GoTime;
use crate::check::{
    self, Checker, DecodeError, EVIDENCE_MODES, InvalidArtifact, VERDICTS, is_false, is_zero_f64,
    is_zero_i64,
};
use crate::relationship::RelationshipEnvelope;
use crate::signed::{self, DigestBasis, SignatureFailure, SignedDocument};

/// `schema_id` of a trace record.
pub const TRACE_SCHEMA_ID: &str = "gait.gate.trace";

/// A gate trace record. Field order follows Gait's files; `omitempty` follows Go (times are never omitted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// `gait.gate.trace`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// The intent's `created_at` (UTC).
    #[serde(default)]
    pub created_at: GoTime,
    /// Wall-clock time of the decision.
    #[serde(default)]
    pub observed_at: GoTime,
    /// Version of the producer.
    #[serde(default)]
    pub producer_version: String,
    /// [`trace_id`] of the decision.
    #[serde(default)]
    pub trace_id: String,
    /// [`event_id`] of this emission.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    /// Hash of the producing command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
    /// Normalized tool name.
    #[serde(default)]
    pub tool_name: String,
    /// DigestJCS of the normalized args.
    #[serde(default)]
    pub args_digest: String,
    /// DigestJCS of the normalized intent.
    #[serde(default)]
    pub intent_digest: String,
    /// Policy digest.
    #[serde(default)]
    pub policy_digest: String,
    /// Policy schema id (`gait.gate.policy`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_id: String,
    /// Policy schema version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_version: String,
    /// Matched rule names (script intents only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_rule_ids: Vec<String>,
    /// `allow`, `block`, `dry_run` or `require_approval`.
    #[serde(default)]
    pub verdict: String,
    /// Digest of the verified context evidence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_set_digest: String,
    /// `best_effort` or `required`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_evidence_mode: String,
    /// Number of context references.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub context_ref_count: i64,
    /// Where the context came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_source: String,
    /// Whether the intent was a script.
    #[serde(default, skip_serializing_if = "is_false")]
    pub script: bool,
    /// Script step count.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub step_count: i64,
    /// Script hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub script_hash: String,
    /// `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub composite_risk_class: String,
    /// Per-step verdicts of a script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_verdicts: Vec<StepVerdict>,
    /// Allowed by the approved-script registry.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pre_approved: bool,
    /// Registry pattern that pre-approved it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pattern_id: String,
    /// Why the registry decided.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry_reason: String,
    /// Violations (the trace has no top-level reason codes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Evaluation wall time in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub latency_ms: f64,
    /// Approval token that granted the call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approval_token_ref: String,
    /// Delegation evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_ref: Option<DelegationRef>,
    /// MCP server trust decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_trust: Option<McpTrust>,
    /// Links to agents, tools, policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<RelationshipEnvelope>,
    /// Skill that issued the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_provenance: Option<SkillProvenance>,
    /// Ed25519 signature over the record without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Verdict of one script step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepVerdict {
    /// 0-based step index.
    #[serde(default)]
    pub index: i64,
    /// Step tool name.
    #[serde(default)]
    pub tool_name: String,
    /// Step verdict.
    #[serde(default)]
    pub verdict: String,
    /// Step reason codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
    /// Step violations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Matched rule names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub matched_rule: String,
}

/// Delegation evidence bound into the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationRef {
    /// Token that granted the delegation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delegation_token_ref: String,
    /// Requesting identity.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requester_identity: String,
    /// Chain length.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub delegation_depth: i64,
    /// Delegated scope class.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope_class: String,
    /// DigestJCS of the normalized delegation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain_digest: String,
    /// Delegation reason codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
}

/// MCP trust decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpTrust {
    /// Server id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_id: String,
    /// Server name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_name: String,
    /// Publisher.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publisher: String,
    /// Source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// `trusted`, `missing`, `unknown`, `untrusted`, `invalid`, `stale` or `below_threshold`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Where the decision came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision_source: String,
    /// Trust score.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub score: f64,
    /// Required score.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub threshold: f64,
    /// Snapshot time.
    #[serde(default)]
    pub updated_at: GoTime,
    /// Maximum snapshot age.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub max_age_seconds: i64,
    /// Trust was required.
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// Trust was enforced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enforced: bool,
    /// Registry signature verified.
    #[serde(default, skip_serializing_if = "is_false")]
    pub registry_verified: bool,
    /// Publisher on the allowlist.
    #[serde(default, skip_serializing_if = "is_false")]
    pub publisher_allowed: bool,
    /// Trust reason codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
}

/// The skill that issued the call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkillProvenance {
    /// Skill name.
    #[serde(default)]
    pub skill_name: String,
    /// Skill version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub skill_version: String,
    /// Where the skill came from.
    #[serde(default)]
    pub source: String,
    /// Who published it.
    #[serde(default)]
    pub publisher: String,
    /// Skill content digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Key that signed the skill.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature_key_id: String,
}

const MCP_STATUSES: &[&str] = &[
    "trusted",
    "missing",
    "unknown",
    "untrusted",
    "invalid",
    "stale",
    "below_threshold",
];

impl SignedDocument for TraceRecord {
    const SCHEMA_ID: &'static str = TRACE_SCHEMA_ID;

    fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, signature: Option<Signature>) {
        self.signature = signature;
    }
}

impl TraceRecord {
    /// Check the rules of `trace_record.schema.json` that the typed record can express.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(TRACE_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        c.non_empty("trace_id", &self.trace_id);
        c.non_empty("tool_name", &self.tool_name);
        c.hex64("args_digest", &self.args_digest, true);
        c.hex64("intent_digest", &self.intent_digest, true);
        c.hex64("policy_digest", &self.policy_digest, true);
        c.one_of("verdict", &self.verdict, VERDICTS, true);
        for (i, rule) in self.matched_rule_ids.iter().enumerate() {
            c.non_empty(&format!("matched_rule_ids[{i}]"), rule);
        }
        c.hex64("context_set_digest", &self.context_set_digest, false);
        c.one_of(
            "context_evidence_mode",
            &self.context_evidence_mode,
            EVIDENCE_MODES,
            false,
        );
        c.non_negative("context_ref_count", self.context_ref_count);
        c.non_negative("step_count", self.step_count);
        c.hex64("script_hash", &self.script_hash, false);
        for (i, step) in self.step_verdicts.iter().enumerate() {
            c.non_negative(&format!("step_verdicts[{i}].index"), step.index);
            c.one_of(
                &format!("step_verdicts[{i}].verdict"),
                &step.verdict,
                VERDICTS,
                true,
            );
        }
        if let Some(d) = &self.delegation_ref {
            c.non_negative("delegation_ref.delegation_depth", d.delegation_depth);
            c.hex64("delegation_ref.chain_digest", &d.chain_digest, false);
        }
        if let Some(m) = &self.mcp_trust {
            c.one_of("mcp_trust.status", &m.status, MCP_STATUSES, false);
            c.non_negative("mcp_trust.max_age_seconds", m.max_age_seconds);
        }
        if let Some(r) = &self.relationship {
            r.check(&mut c, "relationship");
        }
        if let Some(s) = &self.skill_provenance {
            c.non_empty("skill_provenance.skill_name", &s.skill_name);
            c.non_empty("skill_provenance.source", &s.source);
            c.non_empty("skill_provenance.publisher", &s.publisher);
            c.hex64("skill_provenance.digest", &s.digest, false);
        }
        c.finish()
    }

    /// The record as Gait writes trace files: 2-space indented JSON with a trailing newline.
    pub fn to_pretty_json(&self) -> Vec<u8> {
        signed::to_pretty_json(self)
    }

    /// Fields the enterprise consumer projects from a trace (contract §7).
    pub fn projection(&self) -> TraceProjection {
        let skill = self.skill_provenance.as_ref();
        TraceProjection {
            trace_id: self.trace_id.clone(),
            trace_verdict: self.verdict.clone(),
            trace_intent_digest: self.intent_digest.clone(),
            trace_policy_digest: self.policy_digest.clone(),
            trace_skill_source: skill.map(|s| s.source.clone()).unwrap_or_default(),
            trace_skill_publisher: skill.map(|s| s.publisher.clone()).unwrap_or_default(),
        }
    }
}

/// The trace fields an enterprise consumer keeps; unchanged by unknown additive fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceProjection {
    /// Trace id.
    pub trace_id: String,
    /// Verdict.
    pub trace_verdict: String,
    /// Intent digest.
    pub trace_intent_digest: String,
    /// Policy digest.
    pub trace_policy_digest: String,
    /// Skill source, empty without skill provenance.
    pub trace_skill_source: String,
    /// Skill publisher, empty without skill provenance.
    pub trace_skill_publisher: String,
}

/// `trace_id`: first 12 bytes (24 hex) of SHA-256 over `policy_digest:intent_digest:verdict`.
pub fn trace_id(policy_digest: &str, intent_digest: &str, verdict: &str) -> String {
    check::short_id(&format!("{policy_digest}:{intent_digest}:{verdict}"))
}

/// `event_id`: first 12 bytes (24 hex) of SHA-256 over `trace_id:observed_at` (Go RFC3339Nano).
pub fn event_id(trace_id: &str, observed_at: &GoTime) -> String {
    check::short_id(&format!("{trace_id}:{}", observed_at.to_rfc3339_nano()))
}

/// Parse and validate a trace file.
pub fn parse_trace(bytes: &[u8]) -> Result<TraceRecord, DecodeError> {
    let record = check::decode_typed::<TraceRecord>(TRACE_SCHEMA_ID, bytes)?;
    record.validate()?;
    Ok(record)
}

/// Sign `record` with `key`: `signed_digest` = DigestJCS of the record as serialized without `signature`.
pub fn sign_trace(record: TraceRecord, key: &SigningKey) -> TraceRecord {
    signed::sign_document(record, key)
}

/// Result of `gait trace verify`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceVerifyOutcome {
    /// The decoded record (unknown fields dropped).
    pub record: TraceRecord,
    /// `key_id` of the verifying key.
    pub key_id: String,
    /// Which digest form verified, when it did.
    pub basis: Option<DigestBasis>,
    /// Why it did not verify, when it did not.
    pub failure: Option<SignatureFailure>,
}

impl TraceVerifyOutcome {
    /// The signature holds.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// `verified` or `failed`, as in Gait's JSON output.
    pub fn signature_status(&self) -> &'static str {
        if self.ok() { "verified" } else { "failed" }
    }
}

/// Verify a trace file's signature with `key`. Unparsable bytes are an error; a bad or missing signature is a
/// failed outcome (Gait: exit 2).
pub fn verify_trace(bytes: &[u8], key: &PublicKey) -> Result<TraceVerifyOutcome, DecodeError> {
    let (raw, record) = check::decode::<TraceRecord>(TRACE_SCHEMA_ID, bytes)?;
    let checked = signed::verify_document(&raw, &record, key);
    let (basis, failure) = match checked {
        Ok(basis) => (Some(basis), None),
        Err(failure) => (None, Some(failure)),
    };
    Ok(TraceVerifyOutcome {
        record,
        key_id: key.key_id(),
        basis,
        failure,
    })
}

#[cfg(test)]
mod tests;
