//! The unsigned audit records `gate eval` writes next to its trace (contract §2.4, §2.5):
//! `approval_audit_<trace_id>.json` (`gait.gate.approval_audit_record`) whenever approvals were evaluated, and
//! `delegation_audit_<trace_id>.json` (`gait.gate.delegation_audit_record`) whenever delegation was required.
//! Entries are sorted and counted as Gait's `BuildApprovalAuditRecord` / `BuildDelegationAuditRecord` do.

use gait_artifact::GoTime;
use gait_artifact::approval::{APPROVAL_AUDIT_SCHEMA_ID, ApprovalAuditEntry, ApprovalAuditRecord};
use serde::Serialize;

/// `schema_id` of a delegation audit record.
pub const DELEGATION_AUDIT_SCHEMA_ID: &str = "gait.gate.delegation_audit_record";

/// Facts shared by both audit records.
#[derive(Debug, Clone)]
pub struct AuditHeader<'a> {
    /// Gate result `created_at`.
    pub created_at: GoTime,
    /// Producer version.
    pub producer_version: &'a str,
    /// Trace the audit belongs to.
    pub trace_id: &'a str,
    /// Tool name of the trace.
    pub tool_name: &'a str,
    /// Intent digest of the trace.
    pub intent_digest: &'a str,
    /// Policy digest of the trace.
    pub policy_digest: &'a str,
}

fn unique_sorted(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Gait's `BuildApprovalAuditRecord`: entries trimmed and sorted (token, approver, reason, expiry, scope),
/// `approved` when the valid entries reach `required_approvals`.
pub fn approval_audit(
    header: &AuditHeader<'_>,
    required_approvals: i64,
    entries: &[ApprovalAuditEntry],
) -> ApprovalAuditRecord {
    let mut entries: Vec<ApprovalAuditEntry> = entries
        .iter()
        .map(|e| ApprovalAuditEntry {
            token_id: e.token_id.trim().to_owned(),
            approver_identity: e.approver_identity.trim().to_owned(),
            reason_code: e.reason_code.trim().to_owned(),
            scope: unique_sorted(&e.scope),
            expires_at: e.expires_at.to_utc(),
            valid: e.valid,
            error_code: e.error_code.trim().to_owned(),
        })
        .collect();
    entries.sort_by(|a, b| {
        (
            &a.token_id,
            &a.approver_identity,
            &a.reason_code,
            a.expires_at,
        )
            .cmp(&(
                &b.token_id,
                &b.approver_identity,
                &b.reason_code,
                b.expires_at,
            ))
            .then_with(|| a.scope.join(",").cmp(&b.scope.join(",")))
    });
    let valid: Vec<&ApprovalAuditEntry> = entries.iter().filter(|e| e.valid).collect();
    let valid_approvals = i64::try_from(valid.len()).unwrap_or(i64::MAX);
    let approvers: Vec<String> = valid.iter().map(|e| e.approver_identity.clone()).collect();
    let required = required_approvals.max(0);
    ApprovalAuditRecord {
        schema_id: APPROVAL_AUDIT_SCHEMA_ID.to_owned(),
        schema_version: gait_artifact::SCHEMA_VERSION.to_owned(),
        created_at: header.created_at,
        producer_version: header.producer_version.to_owned(),
        trace_id: header.trace_id.trim().to_owned(),
        tool_name: header.tool_name.trim().to_owned(),
        intent_digest: header.intent_digest.trim().to_lowercase(),
        policy_digest: header.policy_digest.trim().to_lowercase(),
        required_approvals: required,
        valid_approvals,
        approved: valid_approvals >= required,
        approvers: unique_sorted(&approvers),
        relationship: None,
        entries,
    }
}

pub use crate::gate::tokens::DelegationAuditEntry;

/// `gait.gate.delegation_audit_record`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DelegationAuditRecord {
    /// `gait.gate.delegation_audit_record`.
    pub schema_id: String,
    /// `1.0.0`.
    pub schema_version: String,
    /// Gate result `created_at`.
    pub created_at: GoTime,
    /// Producer version.
    pub producer_version: String,
    /// Trace the audit belongs to.
    pub trace_id: String,
    /// Tool name.
    pub tool_name: String,
    /// Intent digest.
    pub intent_digest: String,
    /// Policy digest.
    pub policy_digest: String,
    /// A signed delegation chain was required.
    pub delegation_required: bool,
    /// Tokens that satisfied a link.
    pub valid_delegations: i64,
    /// At least one token was valid (Gait's definition).
    pub delegated: bool,
    /// Comma-joined ids of the valid tokens.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delegation_ref: String,
    /// Entries sorted by delegator, delegate, token id.
    pub entries: Vec<DelegationAuditEntry>,
}

/// Gait's `BuildDelegationAuditRecord`.
pub fn delegation_audit(
    header: &AuditHeader<'_>,
    required: bool,
    delegation_ref: &str,
    entries: &[DelegationAuditEntry],
) -> DelegationAuditRecord {
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| {
        (&a.delegator_identity, &a.delegate_identity, &a.token_id).cmp(&(
            &b.delegator_identity,
            &b.delegate_identity,
            &b.token_id,
        ))
    });
    let valid = entries.iter().filter(|e| e.valid).count();
    let valid_delegations = i64::try_from(valid).unwrap_or(i64::MAX);
    DelegationAuditRecord {
        schema_id: DELEGATION_AUDIT_SCHEMA_ID.to_owned(),
        schema_version: gait_artifact::SCHEMA_VERSION.to_owned(),
        created_at: header.created_at,
        producer_version: header.producer_version.to_owned(),
        trace_id: header.trace_id.trim().to_owned(),
        tool_name: header.tool_name.trim().to_owned(),
        intent_digest: header.intent_digest.trim().to_lowercase(),
        policy_digest: header.policy_digest.trim().to_lowercase(),
        delegation_required: required,
        valid_delegations,
        delegated: valid > 0,
        delegation_ref: delegation_ref.trim().to_owned(),
        entries,
    }
}

/// 2-space indented JSON with a trailing newline, as Gait writes audit files.
pub fn to_pretty_json<T: Serialize>(record: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec_pretty(record)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> AuditHeader<'static> {
        AuditHeader {
            created_at: GoTime::zero(),
            producer_version: "0.1.0",
            trace_id: "t",
            tool_name: "tool.write",
            intent_digest: "AA",
            policy_digest: "BB",
        }
    }

    fn approval(token: &str, who: &str, valid: bool) -> ApprovalAuditEntry {
        ApprovalAuditEntry {
            token_id: token.into(),
            approver_identity: who.into(),
            scope: vec!["tool:b".into(), "tool:a".into(), "tool:a".into()],
            valid,
            error_code: if valid {
                String::new()
            } else {
                "approval_token_expired".into()
            },
            ..ApprovalAuditEntry::default()
        }
    }

    #[test]
    fn approval_audit_sorts_entries_and_counts_valid_approvers() {
        let record = approval_audit(
            &header(),
            2,
            &[
                approval("t2", "bob", true),
                approval("t1", "alice", true),
                approval("t3", "carol", false),
            ],
        );
        let ids: Vec<&str> = record.entries.iter().map(|e| e.token_id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2", "t3"]);
        assert_eq!(record.valid_approvals, 2);
        assert!(record.approved);
        assert_eq!(record.approvers, ["alice", "bob"]);
        assert_eq!(record.entries[0].scope, ["tool:a", "tool:b"]);
        assert_eq!(record.intent_digest, "aa");
        let insufficient = approval_audit(&header(), 3, &[approval("t1", "alice", true)]);
        assert!(!insufficient.approved);
    }

    #[test]
    fn delegation_audit_counts_valid_tokens() {
        let entries = [
            DelegationAuditEntry {
                token_id: "b".into(),
                delegator_identity: "z".into(),
                valid: true,
                ..DelegationAuditEntry::default()
            },
            DelegationAuditEntry {
                delegator_identity: "a".into(),
                error_code: "delegation_token_missing".into(),
                ..DelegationAuditEntry::default()
            },
        ];
        let record = delegation_audit(&header(), true, "b", &entries);
        assert_eq!(record.valid_delegations, 1);
        assert!(record.delegated);
        assert_eq!(record.entries[0].delegator_identity, "a");
        let json = String::from_utf8(to_pretty_json(&record).unwrap()).unwrap();
        assert!(json.ends_with("}\n"));
        assert!(json.contains("\"schema_id\": \"gait.gate.delegation_audit_record\""));
    }
}
