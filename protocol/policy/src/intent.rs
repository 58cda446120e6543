//! Gate intent requests (`gait.gate.intent_request`, contract §1): the Go-compatible input model, parsing with
//! Go's leniency, normalization (§1.2) and the args / intent / script digests (§1.3).
//!
//! Flow: bytes → [`parse_intent`] → [`IntentRequest`] (as Go's struct holds it) → [`normalize_intent`] →
//! [`NormalizedIntent`] (trimmed, lowercased, inferred, de-duplicated, sorted, digests filled).

mod decode;
mod digest;
pub(crate) mod evidence;
pub(crate) mod normalize;

use serde_json::{Map, Value};

pub use decode::DecodeError;
pub use evidence::{
    ContextEvidence, EvidenceError, prepare_for_evaluation, strip_context_evidence,
};
pub use normalize::{NormalizeError, normalize_args, normalize_intent};

use crate::gotime::GoTime;

/// Schema id of an intent request.
pub const INTENT_SCHEMA_ID: &str = "gait.gate.intent_request";
/// Schema version of an intent request.
pub const INTENT_SCHEMA_VERSION: &str = "1.0.0";
/// Largest intent document [`parse_intent`] reads; real intents are a few KiB.
pub const MAX_INTENT_BYTES: usize = 4 * 1024 * 1024;
/// Most steps a script intent may carry.
pub const MAX_SCRIPT_STEPS: usize = 64;

/// An intent request exactly as Go's `IntentRequest` struct holds it after `json.Unmarshal`: nothing trimmed or
/// validated yet. Strings absent from the document are empty, `args: None` is Go's nil map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentRequest {
    /// `schema_id` (defaulted by normalization).
    pub schema_id: String,
    /// `schema_version` (defaulted by normalization).
    pub schema_version: String,
    /// `created_at`, in UTC; Go's zero time when absent.
    pub created_at: GoTime,
    /// `producer_version`.
    pub producer_version: String,
    /// `tool_name`.
    pub tool_name: String,
    /// `args`: an object, or `None` when absent or `null`.
    pub args: Option<Map<String, Value>>,
    /// `args_digest` as supplied (ignored: normalization recomputes it).
    pub args_digest: String,
    /// `intent_digest` as supplied (ignored).
    pub intent_digest: String,
    /// `script_hash` as supplied (ignored).
    pub script_hash: String,
    /// `script`, for compound intents.
    pub script: Option<IntentScript>,
    /// `targets`.
    pub targets: Vec<IntentTarget>,
    /// `arg_provenance`.
    pub arg_provenance: Vec<IntentArgProvenance>,
    /// `skill_provenance`.
    pub skill_provenance: Option<SkillProvenance>,
    /// `delegation`.
    pub delegation: Option<IntentDelegation>,
    /// `relationship`, kept verbatim (never part of a digest).
    pub relationship: Option<Value>,
    /// `context`.
    pub context: IntentContext,
}

/// `script`: the steps of a compound intent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentScript {
    /// `steps`, 1..=64 after normalization.
    pub steps: Vec<IntentScriptStep>,
}

/// One step of a script intent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentScriptStep {
    /// `tool_name`.
    pub tool_name: String,
    /// `args`.
    pub args: Option<Map<String, Value>>,
    /// `targets`.
    pub targets: Vec<IntentTarget>,
    /// `arg_provenance`.
    pub arg_provenance: Vec<IntentArgProvenance>,
}

/// A resource the tool call touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IntentTarget {
    /// `path|url|host|repo|bucket|table|queue|topic|other`.
    pub kind: String,
    /// The resource itself (path, URL, host name, ...).
    pub value: String,
    /// What the tool does to it (`read`, `write`, `delete`, ...).
    pub operation: String,
    /// Data class of the resource.
    pub sensitivity: String,
    /// `fs.read|fs.write|fs.delete|proc.exec|net.http|net.dns|ui.click|ui.type|ui.navigate|other`.
    pub endpoint_class: String,
    /// Host name for network targets.
    pub endpoint_domain: String,
    /// Whether the call destroys data or runs code.
    pub destructive: bool,
    /// How the tool was discovered (`mcp`, `manual`, ..., `unknown`).
    pub discovery_method: String,
    /// MCP annotation `readOnlyHint`.
    pub read_only_hint: bool,
    /// MCP annotation `destructiveHint`.
    pub destructive_hint: bool,
    /// MCP annotation `idempotentHint`.
    pub idempotent_hint: bool,
    /// MCP annotation `openWorldHint`.
    pub open_world_hint: bool,
}

/// Where an argument's value came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IntentArgProvenance {
    /// JSON path of the argument.
    pub arg_path: String,
    /// `user|tool_output|external|system`.
    pub source: String,
    /// Reference to the source (e.g. a trace id).
    pub source_ref: String,
    /// SHA-256 hex of the source content.
    pub integrity_digest: String,
}

/// Provenance of the skill that issued the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkillProvenance {
    /// `skill_name`.
    pub skill_name: String,
    /// `skill_version`.
    pub skill_version: String,
    /// `source` (e.g. `registry`, `git`).
    pub source: String,
    /// `publisher`.
    pub publisher: String,
    /// SHA-256 hex of the skill.
    pub digest: String,
    /// Key id of the skill's signature.
    pub signature_key_id: String,
}

/// The delegation chain an agent claims for this call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentDelegation {
    /// Identity on whose behalf the call is made (the last delegate).
    pub requester_identity: String,
    /// Scope class of the delegation.
    pub scope_class: String,
    /// Delegation token references.
    pub token_refs: Vec<String>,
    /// Delegator → delegate links, in order.
    pub chain: Vec<DelegationLink>,
    /// `issued_at` (Go zero time when absent).
    pub issued_at: GoTime,
    /// `expires_at` (Go zero time when absent).
    pub expires_at: GoTime,
}

/// One delegator → delegate hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelegationLink {
    /// Who delegates.
    pub delegator_identity: String,
    /// To whom.
    pub delegate_identity: String,
    /// Scope class of this hop.
    pub scope_class: String,
    /// Token reference for this hop.
    pub token_ref: String,
    /// `issued_at` (Go zero time when absent).
    pub issued_at: GoTime,
    /// `expires_at` (Go zero time when absent).
    pub expires_at: GoTime,
}

/// Who asks, where, at which risk, with which evidence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentContext {
    /// Caller identity (required).
    pub identity: String,
    /// Workspace path (required; `\` becomes `/`).
    pub workspace: String,
    /// Risk class, conventionally `low|medium|high|critical` (required, lowercased).
    pub risk_class: String,
    /// `plan|apply`, default `apply`.
    pub phase: String,
    /// `job_id`.
    pub job_id: String,
    /// `session_id`.
    pub session_id: String,
    /// `request_id`.
    pub request_id: String,
    /// Free-form authentication context; `None` when absent or empty.
    pub auth_context: Option<Map<String, Value>>,
    /// Credential scopes (trimmed, de-duplicated, sorted).
    pub credential_scopes: Vec<String>,
    /// `environment_fingerprint`.
    pub environment_fingerprint: String,
    /// Claimed context set digest (hex64).
    pub context_set_digest: String,
    /// Claimed evidence mode, `best_effort|required`.
    pub context_evidence_mode: String,
    /// Claimed context references.
    pub context_refs: Vec<String>,
}

/// A normalized script step.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedStep {
    /// Trimmed, lowercased tool name.
    pub tool_name: String,
    /// Normalized args (always an object).
    pub args: Map<String, Value>,
    /// Normalized targets, inferred with this step's tool name.
    pub targets: Vec<IntentTarget>,
    /// Normalized provenance.
    pub arg_provenance: Vec<IntentArgProvenance>,
}

/// An intent after §1.2 normalization, with its digests. Produced only by [`normalize_intent`]; if a caller
/// edits fields it must call [`NormalizedIntent::recompute_digests`].
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedIntent {
    /// `schema_id` (defaulted to `gait.gate.intent_request`).
    pub schema_id: String,
    /// `schema_version` (defaulted to `1.0.0`).
    pub schema_version: String,
    /// `created_at` in UTC (Go zero time when absent).
    pub created_at: GoTime,
    /// `producer_version` as supplied.
    pub producer_version: String,
    /// Trimmed, lowercased tool name; `script` for script intents.
    pub tool_name: String,
    /// Normalized args.
    pub args: Map<String, Value>,
    /// DigestJCS of `args`.
    pub args_digest: String,
    /// DigestJCS of the §1.3 normalized intent object.
    pub intent_digest: String,
    /// DigestJCS of the normalized steps; empty when not a script.
    pub script_hash: String,
    /// Normalized steps of a script intent.
    pub script: Option<Vec<NormalizedStep>>,
    /// Normalized targets (filled from the steps when a script has none of its own).
    pub targets: Vec<IntentTarget>,
    /// Normalized provenance (filled from the steps likewise).
    pub arg_provenance: Vec<IntentArgProvenance>,
    /// Normalized skill provenance.
    pub skill_provenance: Option<SkillProvenance>,
    /// Normalized delegation.
    pub delegation: Option<IntentDelegation>,
    /// `relationship` as supplied.
    pub relationship: Option<Value>,
    /// Normalized context.
    pub context: IntentContext,
}

/// An intent document could not be read or normalized; the messages follow Gait's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// Larger than [`MAX_INTENT_BYTES`].
    #[error("intent is {size} bytes, over the {max} byte limit: send a smaller intent")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or a known field has the wrong JSON type.
    #[error("parse intent json: {0}")]
    Parse(#[from] DecodeError),
    /// Violates a normalization rule.
    #[error("normalize intent: {0}")]
    Normalize(#[from] NormalizeError),
}

/// Decode an intent document with Go's `json.Unmarshal` leniency (see the `decode` module) without normalizing it.
pub fn parse_intent(bytes: &[u8]) -> Result<IntentRequest, IntentError> {
    if bytes.len() > MAX_INTENT_BYTES {
        return Err(IntentError::TooLarge {
            size: bytes.len(),
            max: MAX_INTENT_BYTES,
        });
    }
    Ok(decode::decode_intent(bytes)?)
}

/// [`parse_intent`] then [`normalize_intent`].
pub fn parse_and_normalize_intent(bytes: &[u8]) -> Result<NormalizedIntent, IntentError> {
    let raw = parse_intent(bytes)?;
    Ok(normalize_intent(&raw)?)
}

/// DigestJCS of normalized args (`args_digest`).
pub fn args_digest(args: &Map<String, Value>) -> String {
    digest::args_digest(args)
}

impl NormalizedIntent {
    /// Whether this is a script (compound) intent.
    pub fn is_script(&self) -> bool {
        self.script.is_some()
    }

    /// Whether any target is destructive.
    pub fn has_destructive_target(&self) -> bool {
        self.targets.iter().any(|t| t.destructive)
    }

    /// The exact JSON object whose DigestJCS is the intent digest (§1.3, Go `omitempty` rules).
    pub fn digest_payload(&self) -> Value {
        digest::intent_payload(self)
    }

    /// The canonical (RFC 8785) bytes of [`Self::digest_payload`].
    pub fn canonical_bytes(&self) -> Vec<u8> {
        gait_canon::canonical_bytes(&self.digest_payload())
    }

    /// Recompute `args_digest`, `script_hash` and `intent_digest` after editing fields.
    pub fn recompute_digests(&mut self) {
        self.args_digest = digest::args_digest(&self.args);
        self.script_hash = match &self.script {
            Some(steps) => digest::script_hash(steps),
            None => String::new(),
        };
        self.intent_digest = gait_canon::digest_jcs(&self.digest_payload());
    }

    /// DigestJCS of the normalized delegation with times always present (Gait's delegation binding digest and
    /// trace `chain_digest`); `None` without delegation.
    pub fn delegation_digest(&self) -> Option<String> {
        self.delegation
            .as_ref()
            .map(|d| gait_canon::digest_jcs(&digest::delegation_payload(d)))
    }

    /// Approval scope a token must grant: `tool:<tool_name>`, plus `phase:apply` and `destructive:apply` when
    /// the phase is apply and a target is destructive (contract §2.4).
    pub fn required_approval_scope(&self) -> Vec<String> {
        let mut scope = vec![format!("tool:{}", self.tool_name)];
        if self.context.phase == "apply" && self.has_destructive_target() {
            scope.push("phase:apply".to_owned());
            scope.push("destructive:apply".to_owned());
        }
        crate::text::unique_sorted(scope)
    }
}

#[cfg(test)]
mod tests;
