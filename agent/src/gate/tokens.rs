//! Gait approval and delegation tokens presented for one intent, judged exactly as `gait gate eval` judges them
//! (contract §2.4 approval tokens, §2.5 delegation chains): signature with the trusted key, binding to the
//! intent and policy digests (and, for approvals, the delegation binding), scope, expiry, target and operation
//! counts, chain depth and link order. Written once here and used by both callers of the pipeline:
//! `gait-agent gate eval` (tokens read from files, keys from flags) and the daemon (tokens delivered by the
//! aggregator or presented with the intent on the local API, keys from the bundle in force).
//!
//! The functions take token bytes and a key; reading files, choosing keys and turning a token that does not
//! decode into an error or a refusal stay with the caller.

use gait_artifact::GoTime;
use gait_artifact::approval::{
    ApprovalAuditEntry, ApprovalCheck, ApprovalToken, validate_approval_token,
};
use gait_artifact::delegation::{
    ClaimedLink, DelegationCheck, DelegationOutcome, LoadedDelegationToken, match_delegation_chain,
    required_links,
};
use gait_canon::sign::PublicKey;
use gait_policy::gate::TokenCheck;
use serde::Serialize;

use super::approvals::{operation_count, target_count};
use super::pipeline::StepContext;

/// Most tokens of each kind one local API request may present.
pub const MAX_PRESENTED_TOKENS: usize = 32;

/// Token documents presented with one intent on the local API (the bytes of each Gait token, as sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresentedTokens {
    /// `gait.gate.approval_token` documents.
    pub approval: Vec<Vec<u8>>,
    /// `gait.gate.delegation_token` documents, in chain order.
    pub delegation: Vec<Vec<u8>>,
}

/// A presented token that does not decode as its Gait document (the CLI answers it as invalid input, the
/// local API with 400 naming the token).
#[derive(Debug, thiserror::Error)]
#[error("parse {kind} token: {message}")]
pub struct TokenDecodeError {
    /// `approval` or `delegation`.
    pub kind: &'static str,
    /// Position of the token among those presented (0-based).
    pub index: usize,
    /// What the decoder said.
    pub message: String,
}

/// One delegation token (or unmatched link) as judged (Gait's delegation audit entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelegationAuditEntry {
    /// Token id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_id: String,
    /// Delegator.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delegator_identity: String,
    /// Delegate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delegate_identity: String,
    /// Granted scope.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Expiry of the token.
    pub expires_at: GoTime,
    /// Whether the token satisfied a link of the chain.
    pub valid: bool,
    /// Gait error code when not valid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error_code: String,
}

/// Decodes an approval token as Gait's decoder does (keys in any case, unknown keys ignored).
pub fn decode_approval_token(
    bytes: &[u8],
    index: usize,
) -> Result<ApprovalToken, TokenDecodeError> {
    gait_canon::gojson::from_slice(bytes).map_err(|e| TokenDecodeError {
        kind: "approval",
        index,
        message: e.to_string(),
    })
}

/// Decodes a delegation token.
pub fn decode_delegation_token(
    bytes: &[u8],
    index: usize,
) -> Result<LoadedDelegationToken, TokenDecodeError> {
    LoadedDelegationToken::from_bytes(bytes).map_err(|e| TokenDecodeError {
        kind: "delegation",
        index,
        message: e.to_string(),
    })
}

/// Judges the presented approval tokens for the intent and policy of `ctx` with `key`: the token checks the
/// pipeline's approval step applies, and one audit entry per token. A token that does not decode is an error.
pub fn check_approval_tokens(
    tokens: &[&[u8]],
    key: &PublicKey,
    ctx: &StepContext<'_>,
) -> Result<(Vec<TokenCheck>, Vec<ApprovalAuditEntry>), TokenDecodeError> {
    let intent = ctx.intent;
    let scope = intent.required_approval_scope();
    let binding = intent.delegation_digest().unwrap_or_default();
    let check = ApprovalCheck {
        intent_digest: &intent.intent_digest,
        policy_digest: ctx.policy_digest,
        delegation_binding_digest: &binding,
        required_scope: &scope,
        target_count: target_count(intent),
        op_count: operation_count(intent),
        now: crate::clock::now_utc(),
    };
    let mut checks = Vec::with_capacity(tokens.len());
    let mut entries = Vec::with_capacity(tokens.len());
    for (index, bytes) in tokens.iter().enumerate() {
        let token = decode_approval_token(bytes, index)?;
        let judged = validate_approval_token(bytes, key, &check);
        let mut scope = token.scope.clone();
        scope.sort_unstable();
        scope.dedup();
        let error_code = judged
            .as_ref()
            .err()
            .map(|e| e.code.as_str().to_owned())
            .unwrap_or_default();
        entries.push(ApprovalAuditEntry {
            token_id: token.token_id.clone(),
            approver_identity: token.approver_identity.clone(),
            reason_code: token.reason_code.clone(),
            scope,
            expires_at: token.expires_at.to_utc(),
            valid: judged.is_ok(),
            error_code: error_code.clone(),
        });
        checks.push(TokenCheck {
            token_id: token.token_id,
            identity: token.approver_identity,
            result: if error_code.is_empty() {
                Ok(())
            } else {
                Err(error_code)
            },
        });
    }
    Ok((checks, entries))
}

/// Judges the presented delegation tokens against the chain the intent claims, with `key`: the token checks the
/// pipeline's delegation step applies, and one audit entry per token. A token that does not decode is an
/// error.
pub fn check_delegation_tokens(
    tokens: &[&[u8]],
    key: &PublicKey,
    ctx: &StepContext<'_>,
) -> Result<(Vec<TokenCheck>, Vec<DelegationAuditEntry>), TokenDecodeError> {
    if tokens.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let intent = ctx.intent;
    let loaded = tokens
        .iter()
        .enumerate()
        .map(|(index, bytes)| decode_delegation_token(bytes, index))
        .collect::<Result<Vec<_>, _>>()?;
    let (requester, scope_class, chain) = match &intent.delegation {
        Some(d) => (
            d.requester_identity.as_str(),
            d.scope_class.as_str(),
            d.chain
                .iter()
                .map(|l| ClaimedLink {
                    delegator_identity: l.delegator_identity.clone(),
                    delegate_identity: l.delegate_identity.clone(),
                    scope_class: l.scope_class.clone(),
                    token_ref: l.token_ref.clone(),
                })
                .collect(),
        ),
        None => ("", "", Vec::new()),
    };
    let required_scope = intent.required_approval_scope();
    let outcome = match required_links(requester, scope_class, &chain) {
        Ok(links) => {
            let check = DelegationCheck {
                intent_digest: &intent.intent_digest,
                policy_digest: ctx.policy_digest,
                required_scope: &required_scope,
                now: crate::clock::now_utc(),
            };
            match_delegation_chain(&links, tokens, key, &check)
        }
        Err(err) => DelegationOutcome {
            reason_codes: vec![
                "delegation_chain_insufficient".into(),
                err.code.as_str().to_owned(),
            ],
            ..Default::default()
        },
    };
    let entries: Vec<DelegationAuditEntry> = loaded
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let token = t.token();
            let judged = outcome.entries.get(i);
            let mut scope = token.scope.clone();
            scope.sort_unstable();
            scope.dedup();
            DelegationAuditEntry {
                token_id: token.token_id.clone(),
                delegator_identity: token.delegator_identity.clone(),
                delegate_identity: token.delegate_identity.clone(),
                scope,
                expires_at: token.expires_at.to_utc(),
                valid: judged.is_some_and(|j| j.valid),
                error_code: judged
                    .and_then(|j| j.error_code)
                    .filter(|_| !judged.is_some_and(|j| j.valid))
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let checks: Vec<TokenCheck> = if outcome.delegated {
        entries
            .iter()
            .filter(|e| e.valid)
            .map(|e| TokenCheck {
                token_id: e.token_id.clone(),
                identity: e.delegator_identity.clone(),
                result: Ok(()),
            })
            .collect()
    } else {
        outcome
            .reason_codes
            .iter()
            .filter(|c| c.as_str() != "delegation_chain_insufficient")
            .map(|c| TokenCheck {
                token_id: String::new(),
                identity: String::new(),
                result: Err(c.clone()),
            })
            .collect()
    };
    Ok((checks, entries))
}
