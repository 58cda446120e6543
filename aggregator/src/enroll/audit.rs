//! Where enrollment's privileged operations meet the audit log: one function per operation, called inside the
//! store transaction that performs it, with the actor, the action and the target. Until the audit log lands
//! they write a structured INFO line; the integrator replaces each body with the audit append (same
//! transaction, so the operation and its entry commit together).

use gait_store::{IssuedCertificate, JoinTokenRow, StoreError, StoreTx};
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

/// `actor` minted `token` (target: the token id in its tenant).
pub async fn join_token_created(
    _tx: &mut StoreTx,
    actor: &str,
    token: &JoinTokenRow,
) -> Result<(), StoreError> {
    info!(
        actor,
        action = action::JOIN_TOKEN_CREATE,
        target = %format!("{}/join-token/{}", token.tenant, token.token_id),
        uses = token.uses_allowed,
        expires_unix_ms = token.expires_unix_ms,
        "join token created"
    );
    Ok(())
}

/// `actor` revoked `token`.
pub async fn join_token_revoked(
    _tx: &mut StoreTx,
    actor: &str,
    token: &JoinTokenRow,
) -> Result<(), StoreError> {
    info!(
        actor,
        action = action::JOIN_TOKEN_REVOKE,
        target = %format!("{}/join-token/{}", token.tenant, token.token_id),
        "join token revoked"
    );
    Ok(())
}

/// A certificate was issued (`action::CERT_ENROLL` with the join token, or `action::CERT_RENEW`) by `actor`.
pub async fn certificate_issued(
    _tx: &mut StoreTx,
    actor: &str,
    cert: &IssuedCertificate,
) -> Result<(), StoreError> {
    let action = match cert.kind {
        gait_store::IssueKind::Enroll => action::CERT_ENROLL,
        gait_store::IssueKind::Renew => action::CERT_RENEW,
    };
    info!(
        actor,
        action,
        target = %cert.agent,
        serial = %cert.cert_serial,
        join_token = cert.join_token_id,
        not_after_unix_ms = cert.not_after_unix_ms,
        "agent certificate issued"
    );
    Ok(())
}

/// `actor` rotated the CA (`phase`: `start` or `finish`); `detail` names the CAs involved. CA rotation runs on
/// the CA host's files, so it has no store transaction of its own: the audit append is its own transaction.
pub fn ca_rotated(actor: &str, phase: &str, detail: &str) {
    info!(
        actor,
        action = action::CA_ROTATE,
        phase,
        target = "pki/ca",
        detail,
        "CA rotation"
    );
}
