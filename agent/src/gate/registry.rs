//! The approved-script registry of `gate eval --approved-script-registry` (contract §3.4, first CLI step):
//! signed `gait.gate.approved_script_entry` documents that pre-approve a script intent (same policy digest,
//! script hash and tool sequence, unexpired, scope satisfied). Reading, normalizing, verifying and matching
//! follow Gait's `core/gate/approved_scripts.go`; the fail-closed decisions around them live in `gate_eval`.

use std::path::Path;

use gait_artifact::GoTime;
use gait_artifact::signed::{self, SignedDocument};
use gait_canon::gojson::{self, Node};
use gait_canon::sign::{PublicKey, Signature};
use gait_policy::NormalizedIntent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::gate::files;

/// `schema_id` of an approved-script entry.
pub const APPROVED_SCRIPT_SCHEMA_ID: &str = "gait.gate.approved_script_entry";
/// Largest registry file read.
const MAX_REGISTRY_BYTES: usize = 8 * 1024 * 1024;
/// Reason recorded when an entry pre-approved the intent.
pub const REASON_MATCH: &str = "approved_script_match";
/// Reason recorded when no entry matched.
pub const REASON_NOT_FOUND: &str = "approved_script_not_found";
/// Reason recorded for a non-script intent.
pub const REASON_NOT_SCRIPT: &str = "not_script";

/// One signed registry entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedScriptEntry {
    /// `gait.gate.approved_script_entry`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Approval time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Pattern id.
    #[serde(default)]
    pub pattern_id: String,
    /// Policy the approval is bound to.
    #[serde(default)]
    pub policy_digest: String,
    /// Script hash the approval is bound to.
    #[serde(default)]
    pub script_hash: String,
    /// Tool names in step order.
    #[serde(default)]
    pub tool_sequence: Vec<String>,
    /// Extra constraints (`risk:`, `tool:`, `workspace_prefix:`, `endpoint:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Who approved.
    #[serde(default)]
    pub approver_identity: String,
    /// End of validity.
    #[serde(default)]
    pub expires_at: GoTime,
    /// Signature over the entry without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl SignedDocument for ApprovedScriptEntry {
    const SCHEMA_ID: &'static str = APPROVED_SCRIPT_SCHEMA_ID;

    fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, signature: Option<Signature>) {
        self.signature = signature;
    }
}

/// An entry as loaded: its raw object (for the signature's raw-digest fallback) and its normalized form.
#[derive(Debug, Clone)]
pub struct LoadedEntry {
    raw: Map<String, Value>,
    /// The normalized entry.
    pub entry: ApprovedScriptEntry,
}

fn lower_unique_sorted(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Gait's `NormalizeApprovedScriptEntry`.
pub fn normalize_entry(mut entry: ApprovedScriptEntry) -> Result<ApprovedScriptEntry, String> {
    if entry.schema_id.trim().is_empty() {
        entry.schema_id = APPROVED_SCRIPT_SCHEMA_ID.to_owned();
    }
    if entry.schema_id.trim() != APPROVED_SCRIPT_SCHEMA_ID {
        return Err(format!(
            "unsupported approved script schema_id: {}",
            entry.schema_id
        ));
    }
    if entry.schema_version.trim().is_empty() {
        entry.schema_version = gait_artifact::SCHEMA_VERSION.to_owned();
    }
    if entry.schema_version.trim() != gait_artifact::SCHEMA_VERSION {
        return Err(format!(
            "unsupported approved script schema_version: {}",
            entry.schema_version
        ));
    }
    entry.pattern_id = entry.pattern_id.trim().to_owned();
    entry.policy_digest = entry.policy_digest.trim().to_lowercase();
    entry.script_hash = entry.script_hash.trim().to_lowercase();
    entry.approver_identity = entry.approver_identity.trim().to_owned();
    entry.tool_sequence = lower_unique_sorted(&entry.tool_sequence);
    entry.scope = lower_unique_sorted(&entry.scope);
    entry.created_at = entry.created_at.to_utc();
    entry.expires_at = entry.expires_at.to_utc();
    if entry.created_at.is_zero() {
        entry.created_at = GoTime::from_datetime(time::macros::datetime!(1980-01-01 00:00:00 UTC));
    }
    if entry.pattern_id.is_empty() {
        return Err("pattern_id is required".into());
    }
    if !is_hex64(&entry.policy_digest) {
        return Err("policy_digest must be sha256 hex".into());
    }
    if !is_hex64(&entry.script_hash) {
        return Err("script_hash must be sha256 hex".into());
    }
    if entry.tool_sequence.is_empty() {
        return Err("tool_sequence is required".into());
    }
    if entry.approver_identity.is_empty() {
        return Err("approver_identity is required".into());
    }
    if entry.expires_at.is_zero() || entry.expires_at <= entry.created_at {
        return Err("expires_at must be after created_at".into());
    }
    Ok(entry)
}

/// Gait's `ReadApprovedScriptRegistry`: a missing or blank file is an empty registry; the content is either
/// `{"entries":[...]}` or a bare array; every entry must normalize.
pub fn read_registry(path: &Path) -> Result<Vec<LoadedEntry>, String> {
    let bytes = match files::read_bounded(path, MAX_REGISTRY_BYTES) {
        Ok(b) => b,
        Err(_) if !path.exists() => return Ok(Vec::new()),
        Err(e) => return Err(format!("read approved script registry: {e}")),
    };
    if bytes.len() > MAX_REGISTRY_BYTES {
        return Err(format!(
            "read approved script registry: file exceeds {MAX_REGISTRY_BYTES} bytes"
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let parse_err = |e: &dyn std::fmt::Display| format!("parse approved script registry: {e}");
    // Go's decoder: the `entries` key and every entry's keys match in any case, unknown keys are ignored and
    // a repeated key keeps its last value.
    let node = gojson::parse_node(&bytes).map_err(|e| parse_err(&e))?;
    let empty = Vec::new();
    let items = match &node {
        Node::Object(members) => {
            let Some((_, entries)) = members
                .iter()
                .rev()
                .find(|(key, _)| gojson::match_field(key, &["entries"]).is_some())
            else {
                return Err(parse_err(&"expected an entries object or an array"));
            };
            match entries {
                Node::Array(items) => items,
                Node::Null => &empty,
                _ => return Err(parse_err(&"entries must be a JSON array")),
            }
        }
        Node::Array(items) => items,
        _ => return Err(parse_err(&"expected an entries object or an array")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(raw) = item.to_map() else {
            return Err(parse_err(&format!("entries[{index}] must be an object")));
        };
        let entry: ApprovedScriptEntry =
            gojson::from_node(item).map_err(|e| parse_err(&format!("entries[{index}]: {e}")))?;
        let entry =
            normalize_entry(entry).map_err(|e| format!("approved script entries[{index}]: {e}"))?;
        out.push(LoadedEntry { raw, entry });
    }
    Ok(out)
}

/// Gait's `VerifyApprovedScriptEntry`: signature present, unexpired at `now`, Ed25519 over the normalized entry.
pub fn verify_entry(
    loaded: &LoadedEntry,
    key: &PublicKey,
    now: OffsetDateTime,
) -> Result<(), String> {
    let entry = &loaded.entry;
    if entry.signature.is_none() {
        return Err("signature is required".into());
    }
    if entry.expires_at.datetime() <= now {
        return Err("approved script entry is expired".into());
    }
    match signed::verify_document(&loaded.raw, entry, key) {
        Ok(_) => Ok(()),
        Err(signed::SignatureFailure::Invalid(gait_canon::sign::VerifyError::BadSignature)) => {
            Err("approved script signature did not verify".into())
        }
        Err(err) => Err(format!("verify approved script entry signature: {err}")),
    }
}

/// What the registry decided for an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptMatch {
    /// An entry pre-approves the intent.
    pub matched: bool,
    /// The matching entry's pattern id.
    pub pattern_id: String,
    /// `approved_script_match`, `approved_script_not_found` or `not_script`.
    pub reason: String,
}

fn scope_matches(intent: &NormalizedIntent, scope: &[String]) -> bool {
    scope.iter().all(|raw| {
        if let Some(risk) = raw.strip_prefix("risk:") {
            intent.context.risk_class.trim().to_lowercase() == risk
        } else if let Some(tool) = raw.strip_prefix("tool:") {
            intent.tool_name.trim().to_lowercase() == tool
        } else if let Some(prefix) = raw.strip_prefix("workspace_prefix:") {
            let workspace = intent
                .context
                .workspace
                .trim()
                .replace('\\', "/")
                .trim_end_matches('/')
                .to_owned();
            workspace == prefix || workspace.starts_with(&format!("{prefix}/"))
        } else if let Some(class) = raw.strip_prefix("endpoint:") {
            match &intent.script {
                Some(steps) => steps
                    .iter()
                    .flat_map(|s| &s.targets)
                    .any(|t| t.endpoint_class.trim().to_lowercase() == class),
                None => intent
                    .targets
                    .iter()
                    .any(|t| t.endpoint_class.trim().to_lowercase() == class),
            }
        } else {
            false
        }
    })
}

/// Gait's `MatchApprovedScript` for a normalized intent.
pub fn match_script(
    intent: &NormalizedIntent,
    policy_digest: &str,
    entries: &[LoadedEntry],
    now: OffsetDateTime,
) -> ScriptMatch {
    let Some(steps) = &intent.script else {
        return ScriptMatch {
            matched: false,
            pattern_id: String::new(),
            reason: REASON_NOT_SCRIPT.into(),
        };
    };
    let sequence: Vec<&str> = steps.iter().map(|s| s.tool_name.as_str()).collect();
    let policy_digest = policy_digest.trim().to_lowercase();
    for LoadedEntry { entry, .. } in entries {
        let matched = entry.policy_digest == policy_digest
            && entry.script_hash == intent.script_hash
            && entry.expires_at.datetime() > now
            && entry
                .tool_sequence
                .iter()
                .map(String::as_str)
                .eq(sequence.iter().copied())
            && scope_matches(intent, &entry.scope);
        if matched {
            return ScriptMatch {
                matched: true,
                pattern_id: entry.pattern_id.clone(),
                reason: REASON_MATCH.into(),
            };
        }
    }
    ScriptMatch {
        matched: false,
        pattern_id: String::new(),
        reason: REASON_NOT_FOUND.into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use gait_canon::sign::SigningKey;

    fn script_intent() -> NormalizedIntent {
        gait_policy::parse_and_normalize_intent(
            br#"{"tool_name":"script","args":{},"targets":[],"context":{"identity":"alice","workspace":"/repo/gait","risk_class":"high"},
            "script":{"steps":[{"tool_name":"tool.read","args":{"path":"/a"},"targets":[{"kind":"path","value":"/a","operation":"read"}]},
                               {"tool_name":"tool.write","args":{"path":"/b"},"targets":[{"kind":"path","value":"/b","operation":"write"}]}]}}"#,
        )
        .unwrap()
    }

    fn signed_entry(intent: &NormalizedIntent, key: &SigningKey, scope: &[&str]) -> LoadedEntry {
        let now = OffsetDateTime::now_utc();
        let entry = normalize_entry(ApprovedScriptEntry {
            pattern_id: "pattern_x".into(),
            policy_digest: "a".repeat(64),
            script_hash: intent.script_hash.clone(),
            tool_sequence: vec!["tool.read".into(), "tool.write".into()],
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            approver_identity: "secops".into(),
            created_at: GoTime::from_datetime(now),
            expires_at: GoTime::from_datetime(now + time::Duration::hours(1)),
            producer_version: "0.1.0".into(),
            ..ApprovedScriptEntry::default()
        })
        .unwrap();
        let entry = signed::sign_document(entry, key);
        let Value::Object(raw) = serde_json::to_value(&entry).unwrap() else {
            unreachable!("entries serialize to objects")
        };
        LoadedEntry { raw, entry }
    }

    #[test]
    fn a_signed_entry_verifies_and_pre_approves_its_script() {
        let key = SigningKey::from_seed(&[3; 32]);
        let intent = script_intent();
        let loaded = signed_entry(&intent, &key, &["risk:high", "workspace_prefix:/repo"]);
        let now = OffsetDateTime::now_utc();
        verify_entry(&loaded, &key.public_key(), now).unwrap();
        let found = match_script(&intent, &"a".repeat(64), std::slice::from_ref(&loaded), now);
        assert!(found.matched);
        assert_eq!(found.pattern_id, "pattern_x");
        let other_policy = match_script(&intent, &"b".repeat(64), &[loaded], now);
        assert_eq!(other_policy.reason, REASON_NOT_FOUND);
    }

    #[test]
    fn tampered_or_foreign_entries_do_not_verify() {
        let key = SigningKey::from_seed(&[3; 32]);
        let intent = script_intent();
        let mut loaded = signed_entry(&intent, &key, &[]);
        let now = OffsetDateTime::now_utc();
        let other = SigningKey::from_seed(&[4; 32]).public_key();
        assert!(verify_entry(&loaded, &other, now).is_err());
        loaded.entry.script_hash = "f".repeat(64);
        loaded
            .raw
            .insert("script_hash".into(), Value::String("f".repeat(64)));
        let err = verify_entry(&loaded, &key.public_key(), now).expect_err("tampered");
        assert!(err.contains("signed_digest mismatch"), "{err}");
        let late = now + time::Duration::hours(2);
        assert_eq!(
            verify_entry(&loaded, &key.public_key(), late).expect_err("expired"),
            "approved script entry is expired"
        );
    }

    #[test]
    fn scope_constraints_must_all_hold() {
        let key = SigningKey::from_seed(&[3; 32]);
        let intent = script_intent();
        let now = OffsetDateTime::now_utc();
        let wrong_risk = signed_entry(&intent, &key, &["risk:low"]);
        assert!(!match_script(&intent, &"a".repeat(64), &[wrong_risk], now).matched);
        let unknown = signed_entry(&intent, &key, &["team:x"]);
        assert!(!match_script(&intent, &"a".repeat(64), &[unknown], now).matched);
    }
}
