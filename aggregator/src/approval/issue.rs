//! Issuing approvals: the approval signing key (`<data-dir>/keys/approval.key`, 0600, made at first start, its
//! public half beside it in Gait's key form) and the minting of Gait approval tokens (contract §2.4), one per
//! approver, each bound to the request's intent and policy digests and required scope.

use std::path::{Path, PathBuf};

use gait_artifact::GoTime;
use gait_artifact::approval::{ApprovalGrant, ApprovalToken, mint_approval_token};
use gait_canon::sign::{self, SigningKey};
use gait_store::StoredApprovalRequest;
use time::OffsetDateTime;

/// File name of the approval signing key in the key directory.
pub const APPROVAL_KEY_FILE: &str = "approval.key";
/// File name of its public half (what agents and `gait gate eval --approval-public-key` verify with).
pub const APPROVAL_PUB_FILE: &str = "approval.pub";

/// The approval key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[error(
    "approval key {}: {message}; the key is made at first start under <data-dir>/keys/ — restore the file or \
     remove both approval.key and approval.pub to make a new one (tokens signed by the old key then stop \
     verifying once agents receive a bundle carrying the new one)",
    path.display()
)]
pub struct KeyError {
    /// The file at fault.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Loads the approval key from `dir`, or creates it (private 0600, public beside it).
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, KeyError> {
    let private = dir.join(APPROVAL_KEY_FILE);
    let public = dir.join(APPROVAL_PUB_FILE);
    let err = |path: &Path, message: String| KeyError {
        path: path.to_path_buf(),
        message,
    };
    if private.exists() {
        let key =
            sign::load_private_key_file(&private).map_err(|e| err(&private, e.to_string()))?;
        if !public.exists() {
            crate::secrets::write_atomic(
                &public,
                format!("{}\n", key.public_key().to_gait_public_key()).as_bytes(),
                crate::secrets::Access::Public,
            )
            .map_err(|e| err(&public, e.to_string()))?;
        }
        return Ok(key);
    }
    crate::secrets::create_private_dir(dir).map_err(|e| err(dir, e.to_string()))?;
    let key = SigningKey::generate();
    sign::write_key_pair(&private, &public, &key).map_err(|e| err(&private, e.to_string()))?;
    tracing::info!(key_id = %key.public_key().key_id(), path = %private.display(), "approval signing key created");
    Ok(key)
}

/// Mints one token per approver for `request`, valid from `now` for `ttl_seconds` (already capped by the
/// policy's maximum). `reason` is recorded as each token's `reason_code`.
pub fn mint_tokens(
    key: &SigningKey,
    request: &StoredApprovalRequest,
    approvers: &[String],
    reason: &str,
    now: OffsetDateTime,
    ttl_seconds: u64,
) -> Vec<ApprovalToken> {
    let expires = now + time::Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX));
    approvers
        .iter()
        .map(|approver| {
            mint_approval_token(
                ApprovalGrant {
                    approver_identity: approver.clone(),
                    reason_code: reason.to_owned(),
                    intent_digest: request.intent_digest.clone(),
                    policy_digest: request.policy_digest.clone(),
                    delegation_binding_digest: String::new(),
                    scope: request.scope.clone(),
                    max_targets: 0,
                    max_ops: 0,
                    created_at: GoTime::from_datetime(now),
                    expires_at: GoTime::from_datetime(expires),
                    producer_version: concat!("gait-aggregator/", env!("CARGO_PKG_VERSION")).into(),
                },
                key,
            )
        })
        .collect()
}
