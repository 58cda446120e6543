//! Approval governance on the wire: the `approval.request` record an agent writes to its outbox when a Gait
//! verdict is `require_approval` (a JSON payload, so the aggregator and an auditor read it the same way), and
//! the `FetchApprovals` -> `Approvals` exchange that hands the issued Gait approval tokens back to the agent.
//!
//! The aggregator takes the request's tenancy from the agent's certificate, never from the payload; the
//! payload says only what the agent decided and who asked it.

use serde::{Deserialize, Serialize};

/// Record kind of an approval request.
pub const APPROVAL_REQUEST_KIND: &str = "approval.request";
/// Schema id in the payload.
pub const APPROVAL_REQUEST_SCHEMA: &str = "gait.fleet.approval_request";
/// Most scope entries a request may list.
pub const MAX_APPROVAL_SCOPE: usize = 64;
/// Longest text field of a request, in bytes.
pub const MAX_APPROVAL_TEXT_BYTES: usize = 1024;
/// Most approvals one `Approvals` reply carries.
pub const MAX_DELIVERED_APPROVALS: usize = 100;
/// Longest request lifetime an agent may ask for: one day.
pub const MAX_APPROVAL_REQUEST_TTL_SECONDS: u64 = 24 * 3600;

/// The JSON payload of an `approval.request` record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequestPayload {
    /// [`APPROVAL_REQUEST_SCHEMA`].
    pub schema_id: String,
    /// Gait intent digest (64 lowercase hex) the approval must bind.
    pub intent_digest: String,
    /// Gait policy digest (64 lowercase hex) the approval must bind.
    pub policy_digest: String,
    /// The intent's tool name.
    pub tool_name: String,
    /// The intent's phase (`plan`, `apply`, …), empty when unknown.
    #[serde(default)]
    pub phase: String,
    /// Whether any target is destructive.
    #[serde(default)]
    pub destructive: bool,
    /// The Gait approval scope the intent requires (`tool:<name>`, `phase:apply`, `destructive:apply`).
    pub scope: Vec<String>,
    /// Who asked for the intent, as the agent knows them (its local API caller).
    pub requested_by: String,
    /// Trace id of the decision.
    #[serde(default)]
    pub trace_id: String,
    /// When the agent made the request, Unix milliseconds on its clock.
    pub created_unix_ms: i64,
    /// How long the request may wait for approval, in seconds (1 to [`MAX_APPROVAL_REQUEST_TTL_SECONDS`]).
    pub ttl_seconds: u64,
}

/// An `approval.request` payload broke a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval request {field}: {reason}")]
pub struct ApprovalPayloadError {
    /// The payload field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ApprovalPayloadError {
    ApprovalPayloadError {
        field,
        reason: reason.into(),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn text(field: &'static str, value: &str, required: bool) -> Result<(), ApprovalPayloadError> {
    if required && value.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if value.len() > MAX_APPROVAL_TEXT_BYTES {
        return Err(bad(
            field,
            format!(
                "is {} bytes, the limit is {MAX_APPROVAL_TEXT_BYTES}",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

impl ApprovalRequestPayload {
    /// Every field rule; the error names the field.
    pub fn validate(&self) -> Result<(), ApprovalPayloadError> {
        if self.schema_id != APPROVAL_REQUEST_SCHEMA {
            return Err(bad(
                "schema_id",
                format!("must be {APPROVAL_REQUEST_SCHEMA}"),
            ));
        }
        for (field, digest) in [
            ("intent_digest", &self.intent_digest),
            ("policy_digest", &self.policy_digest),
        ] {
            if !is_hex64(digest) {
                return Err(bad(field, "must be 64 lowercase hex characters"));
            }
        }
        text("tool_name", &self.tool_name, true)?;
        text("phase", &self.phase, false)?;
        text("requested_by", &self.requested_by, false)?;
        text("trace_id", &self.trace_id, false)?;
        if self.scope.is_empty() || self.scope.len() > MAX_APPROVAL_SCOPE {
            return Err(bad(
                "scope",
                format!("must list 1 to {MAX_APPROVAL_SCOPE} entries"),
            ));
        }
        for entry in &self.scope {
            text("scope", entry, true)?;
        }
        if self.ttl_seconds == 0 || self.ttl_seconds > MAX_APPROVAL_REQUEST_TTL_SECONDS {
            return Err(bad(
                "ttl_seconds",
                format!("must be 1 to {MAX_APPROVAL_REQUEST_TTL_SECONDS}"),
            ));
        }
        Ok(())
    }
}

/// `FetchApprovals`: the approvals issued for this agent's requests whose tokens are still valid.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchApprovals {
    /// Only approvals of requests with a larger id (0: all).
    pub after_request_id: u64,
}

/// Reply to `FetchApprovals`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ApprovalDelivery {
    /// At most [`MAX_DELIVERED_APPROVALS`], by request id.
    pub approvals: Vec<DeliveredApproval>,
}

/// The tokens issued for one approved request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeliveredApproval {
    /// The aggregator's request id.
    pub request_id: u64,
    /// Gait intent digest the tokens bind.
    pub intent_digest: String,
    /// Gait policy digest the tokens bind.
    pub policy_digest: String,
    /// Gait approval token documents (`gait.gate.approval_token` JSON), one per approver.
    pub tokens: Vec<TokenDocument>,
}

/// One Gait approval token document, as the aggregator signed it (JSON bytes).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenDocument(#[serde(with = "crate::byte_buf")] pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> ApprovalRequestPayload {
        ApprovalRequestPayload {
            schema_id: APPROVAL_REQUEST_SCHEMA.into(),
            intent_digest: "a".repeat(64),
            policy_digest: "b".repeat(64),
            tool_name: "db.drop".into(),
            phase: "apply".into(),
            destructive: true,
            scope: vec!["tool:db.drop".into()],
            requested_by: "uid:1000".into(),
            trace_id: "t".into(),
            created_unix_ms: 1,
            ttl_seconds: 3600,
        }
    }

    #[test]
    fn a_payload_breaking_a_rule_is_refused_naming_the_field() {
        assert!(payload().validate().is_ok());
        type Break = fn(&mut ApprovalRequestPayload);
        let cases: [(&str, Break); 5] = [
            ("intent_digest", |p| p.intent_digest = "A".repeat(64)),
            ("tool_name", |p| p.tool_name = " ".into()),
            ("scope", |p| p.scope.clear()),
            ("ttl_seconds", |p| p.ttl_seconds = 0),
            ("requested_by", |p| p.requested_by = "a\nb".into()),
        ];
        for (field, break_it) in cases {
            let mut p = payload();
            break_it(&mut p);
            assert_eq!(p.validate().map_err(|e| e.field), Err(field));
        }
    }
}
