//! Where enrollment's privileged operations meet the audit log: one function per operation, called inside the
//! store transaction that performs it, with the actor, the action and the target; each logs an INFO line and
//! appends its audit entry in that transaction, so the operation and its entry commit together. CA rotation
//! works on the CA host's files, outside any transaction: its entry follows in a transaction of its own.

use gait_audit::{EntryDraft, Target};
use gait_store::{IssuedCertificate, JoinTokenRow, StoreError, StoreTx};
use serde_json::{Map, Value};
use tracing::info;

/// Action names as the audit log will record them.
pub mod action {
    /// A join token was minted.
    pub const JOIN_TOKEN_CREATE: &str = "join_token.create";
    /// A join token was revoked.
    pub const JOIN_TOKEN_REVOKE: &str = "join_token.revoke";
    /// A certificate was issued to an enrolling agent.
    pub const CERT_ENROLL: &str = "pki.enroll";
    /// A certificate was renewed over the agent's authenticated connection.
    pub const CERT_RENEW: &str = "pki.renew";
    /// The CA was rotated (a new CA made, or the rotation finished).
    pub const CA_ROTATE: &str = "pki.rotate_ca";
}

/// Appends one entry in `tx`; an entry the log refuses is an invalid input to the operation (nothing commits).
async fn record(
    tx: &mut StoreTx,
    actor: &str,
    action: &str,
    target: Target,
    details: Map<String, Value>,
) -> Result<(), StoreError> {
    let draft = EntryDraft {
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        before: None,
        after: None,
        details: Some(details),
    };
    match crate::audit::append_draft(tx, draft).await {
        Ok(_) => Ok(()),
        Err(crate::audit::AuditError::Store(e)) => Err(e),
        Err(e) => Err(StoreError::InvalidInput {
            field: "audit".into(),
            reason: e.to_string(),
        }),
    }
}

fn token_target(token: &JoinTokenRow) -> Target {
    crate::audit::tenant_target(&token.tenant, "join_token", token.token_id.as_str())
}

/// `actor` minted `token` (target: the token id in its tenant; never its secret).
pub async fn join_token_created(
    tx: &mut StoreTx,
    actor: &str,
    token: &JoinTokenRow,
) -> Result<(), StoreError> {
    info!(actor, action = action::JOIN_TOKEN_CREATE, token = %token.token_id, tenant = %token.tenant,
        uses = token.uses_allowed, expires_unix_ms = token.expires_unix_ms, "join token created");
    let mut details = Map::new();
    details.insert("uses".into(), token.uses_allowed.into());
    details.insert("expires_unix_ms".into(), token.expires_unix_ms.into());
    record(
        tx,
        actor,
        action::JOIN_TOKEN_CREATE,
        token_target(token),
        details,
    )
    .await
}

/// `actor` revoked `token`.
pub async fn join_token_revoked(
    tx: &mut StoreTx,
    actor: &str,
    token: &JoinTokenRow,
) -> Result<(), StoreError> {
    info!(actor, action = action::JOIN_TOKEN_REVOKE, token = %token.token_id, tenant = %token.tenant,
        "join token revoked");
    record(
        tx,
        actor,
        action::JOIN_TOKEN_REVOKE,
        token_target(token),
        Map::new(),
    )
    .await
}

/// A certificate was issued (`action::CERT_ENROLL` with the join token, or `action::CERT_RENEW`) by `actor`.
pub async fn certificate_issued(
    tx: &mut StoreTx,
    actor: &str,
    cert: &IssuedCertificate,
) -> Result<(), StoreError> {
    let action = match cert.kind {
        gait_store::IssueKind::Enroll => action::CERT_ENROLL,
        gait_store::IssueKind::Renew => action::CERT_RENEW,
    };
    info!(actor, action, agent = %cert.agent, serial = %cert.cert_serial, join_token = cert.join_token_id,
        not_after_unix_ms = cert.not_after_unix_ms, "agent certificate issued");
    let t = &cert.agent.tenant;
    let mut details = Map::new();
    details.insert("agent_id".into(), cert.agent.agent_id.as_str().into());
    details.insert("not_after_unix_ms".into(), cert.not_after_unix_ms.into());
    if !cert.join_token_id.is_empty() {
        details.insert("join_token".into(), cert.join_token_id.as_str().into());
    }
    let target = crate::audit::tenant_target(t, "certificate", cert.cert_serial.as_str());
    record(tx, actor, action, target, details).await
}

/// `actor` rotated the CA (`phase`: `start` or `finish`); `detail` names the CAs involved. CA rotation works on
/// the CA host's files, outside any store transaction, so its entry is appended in a transaction of its own right
/// after the files changed.
pub async fn ca_rotated(
    store: &gait_store::Store,
    actor: &str,
    phase: &str,
    detail: &str,
) -> Result<(), crate::audit::AuditError> {
    info!(
        actor,
        action = action::CA_ROTATE,
        phase,
        target = "pki/ca",
        detail,
        "CA rotation"
    );
    let mut details = Map::new();
    details.insert("phase".into(), phase.into());
    details.insert("detail".into(), detail.into());
    let draft = EntryDraft {
        actor: actor.to_owned(),
        action: action::CA_ROTATE.to_owned(),
        target: Target::global("ca", phase),
        before: None,
        after: None,
        details: Some(details),
    };
    store
        .transaction(async |tx| crate::audit::append_draft(tx, draft).await.map(|_| ()))
        .await
}
