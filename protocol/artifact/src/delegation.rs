//! Delegation tokens (`gait.gate.delegation_token`, contract §2.5): parsing, per-token validation with Gait's
//! error codes, and matching a claimed delegation chain to one unused valid token per link.
//!
//! The chain matcher follows the contract's description: each required link (delegator → delegate, or the
//! requester alone when the intent has no chain) consumes one distinct valid token. Gait's exact tie-breaking
//! between several candidate tokens is not specified; this matcher prefers the token whose id the link names.

use std::fmt;

use gait_canon::sign::{PublicKey, Signature, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::approval::{normalize_scope, scope_covers};
use crate::check::{self, Checker, DecodeError, InvalidArtifact};
use crate::signed::{self, SignatureFailure, SignedDocument};
use crate::{GoTime, SCHEMA_VERSION};

/// `schema_id` of a delegation token.
pub const DELEGATION_TOKEN_SCHEMA_ID: &str = "gait.gate.delegation_token";

/// A signed grant from a delegator to a delegate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationToken {
    /// `gait.gate.delegation_token`.
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
    /// [`delegation_token_id`].
    #[serde(default)]
    pub token_id: String,
    /// Who delegates.
    #[serde(default)]
    pub delegator_identity: String,
    /// Who receives the delegation.
    #[serde(default)]
    pub delegate_identity: String,
    /// Granted scopes.
    #[serde(default)]
    pub scope: Vec<String>,
    /// Scope class (e.g. `write`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope_class: String,
    /// Intent the delegation is limited to, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent_digest: String,
    /// Policy the delegation is limited to, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_digest: String,
    /// End of validity (exclusive).
    #[serde(default)]
    pub expires_at: GoTime,
    /// Signature over the token without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl SignedDocument for DelegationToken {
    const SCHEMA_ID: &'static str = DELEGATION_TOKEN_SCHEMA_ID;

    fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    fn set_signature(&mut self, signature: Option<Signature>) {
        self.signature = signature;
    }
}

impl DelegationToken {
    /// Trimmed identities, lowercase scope class and digests, normalized scope.
    pub fn normalized(mut self) -> Self {
        self.delegator_identity = self.delegator_identity.trim().to_owned();
        self.delegate_identity = self.delegate_identity.trim().to_owned();
        self.scope_class = self.scope_class.trim().to_lowercase();
        self.intent_digest = self.intent_digest.trim().to_ascii_lowercase();
        self.policy_digest = self.policy_digest.trim().to_ascii_lowercase();
        self.scope = normalize_scope(&self.scope);
        self
    }

    /// Rules of `delegation_token.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(DELEGATION_TOKEN_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        c.non_empty("token_id", &self.token_id);
        c.non_empty("delegator_identity", &self.delegator_identity);
        c.non_empty("delegate_identity", &self.delegate_identity);
        if self.scope.is_empty() {
            c.fail("scope", "must list at least one scope");
        }
        c.hex64("intent_digest", &self.intent_digest, false);
        c.hex64("policy_digest", &self.policy_digest, false);
        c.time_set("expires_at", &self.expires_at);
        c.finish()
    }

    /// The token as Gait writes it: indented JSON with a trailing newline.
    pub fn to_pretty_json(&self) -> Vec<u8> {
        signed::to_pretty_json(self)
    }
}

/// `token_id`: first 12 bytes hex of SHA-256 over
/// `delegator:delegate:<scope csv>:scope_class:intent_digest:policy_digest:<expires_at RFC3339Nano>`
/// (reproduces the ids of Gait-minted tokens in the conformance fixtures).
pub fn delegation_token_id(token: &DelegationToken) -> String {
    check::short_id(&format!(
        "{}:{}:{}:{}:{}:{}:{}",
        token.delegator_identity,
        token.delegate_identity,
        token.scope.join(","),
        token.scope_class,
        token.intent_digest,
        token.policy_digest,
        token.expires_at.to_rfc3339_nano()
    ))
}

/// Mint and sign a delegation token (`gait delegate mint`); `token_id` and `schema_*` are filled in.
pub fn mint_delegation_token(token: DelegationToken, key: &SigningKey) -> DelegationToken {
    let mut token = DelegationToken {
        schema_id: DELEGATION_TOKEN_SCHEMA_ID.into(),
        schema_version: SCHEMA_VERSION.into(),
        created_at: token.created_at.to_utc(),
        expires_at: token.expires_at.to_utc(),
        signature: None,
        ..token
    }
    .normalized();
    token.token_id = delegation_token_id(&token);
    signed::sign_document(token, key)
}

/// Parse and validate a delegation token (no signature check).
pub fn parse_delegation_token(bytes: &[u8]) -> Result<DelegationToken, DecodeError> {
    let token = check::decode_typed::<DelegationToken>(DELEGATION_TOKEN_SCHEMA_ID, bytes)?;
    let token = token.normalized();
    token.validate()?;
    Ok(token)
}

/// Gait's delegation error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
pub enum DelegationErrorCode {
    /// Not a valid token document.
    Invalid,
    /// No signature.
    SignatureMissing,
    /// Signature does not verify.
    SignatureInvalid,
    /// `now >= expires_at`.
    Expired,
    /// Delegator differs from the link's.
    DelegatorMismatch,
    /// Delegate differs from the link's.
    DelegateMismatch,
    /// Scope or scope class does not cover the intent.
    ScopeMismatch,
    /// Limited to another intent.
    IntentMismatch,
    /// Limited to another policy.
    PolicyMismatch,
    /// The claimed chain is not continuous or does not end at the requester.
    ChainMismatch,
    /// No token for a required link.
    Missing,
}

impl DelegationErrorCode {
    /// The wire code, e.g. `delegation_token_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "delegation_token_invalid",
            Self::SignatureMissing => "delegation_token_signature_missing",
            Self::SignatureInvalid => "delegation_token_signature_invalid",
            Self::Expired => "delegation_token_expired",
            Self::DelegatorMismatch => "delegation_token_delegator_mismatch",
            Self::DelegateMismatch => "delegation_token_delegate_mismatch",
            Self::ScopeMismatch => "delegation_token_scope_mismatch",
            Self::IntentMismatch => "delegation_token_intent_mismatch",
            Self::PolicyMismatch => "delegation_token_policy_mismatch",
            Self::ChainMismatch => "delegation_token_chain_mismatch",
            Self::Missing => "delegation_token_missing",
        }
    }
}

impl From<DelegationErrorCode> for &'static str {
    fn from(code: DelegationErrorCode) -> Self {
        code.as_str()
    }
}

impl fmt::Display for DelegationErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delegation token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct DelegationError {
    /// Gait's error code.
    pub code: DelegationErrorCode,
    /// Human explanation.
    pub detail: String,
}

fn reject(code: DelegationErrorCode, detail: impl Into<String>) -> DelegationError {
    DelegationError {
        code,
        detail: detail.into(),
    }
}

/// One link a token must cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredLink {
    /// Expected delegator; `None` when only the requester is known (intent without a chain).
    pub delegator_identity: Option<String>,
    /// Expected delegate.
    pub delegate_identity: String,
    /// Scope class claimed for the link (empty = any).
    pub scope_class: String,
    /// Token id the intent names for this link (empty = any).
    pub token_ref: String,
}

/// The intent-side facts a delegation token is checked against.
#[derive(Debug, Clone)]
pub struct DelegationCheck<'a> {
    /// Digest of the evaluated intent.
    pub intent_digest: &'a str,
    /// Digest of the evaluating policy.
    pub policy_digest: &'a str,
    /// Scopes the intent requires (see [`crate::approval::required_scope`]).
    pub required_scope: &'a [String],
    /// Current time.
    pub now: OffsetDateTime,
}

/// A token decoded for checking: the raw object is kept for the signature's raw-digest fallback.
#[derive(Debug, Clone)]
pub struct LoadedDelegationToken {
    raw: Map<String, Value>,
    token: DelegationToken,
}

impl LoadedDelegationToken {
    /// Decode token bytes (normalized, schema-validated later by [`check_delegation_token`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (raw, token) = check::decode::<DelegationToken>(DELEGATION_TOKEN_SCHEMA_ID, bytes)?;
        Ok(Self {
            raw,
            token: token.normalized(),
        })
    }

    /// The decoded token.
    pub fn token(&self) -> &DelegationToken {
        &self.token
    }
}

/// Check one token against one link, in the order of the contract's code list: schema, signature present,
/// signature valid, expiry, delegator, delegate, scope, intent, policy.
pub fn check_delegation_token(
    loaded: &LoadedDelegationToken,
    key: &PublicKey,
    link: &RequiredLink,
    check: &DelegationCheck<'_>,
) -> Result<(), DelegationError> {
    use DelegationErrorCode as Code;
    let token = &loaded.token;
    token
        .validate()
        .map_err(|err| reject(Code::Invalid, err.to_string()))?;
    match signed::verify_document(&loaded.raw, token, key) {
        Ok(_) => {}
        Err(SignatureFailure::Missing) => {
            return Err(reject(Code::SignatureMissing, "token has no signature"));
        }
        Err(SignatureFailure::Invalid(err)) => {
            return Err(reject(Code::SignatureInvalid, err.to_string()));
        }
    }
    if check.now >= token.expires_at.datetime() {
        return Err(reject(
            Code::Expired,
            format!("token expired at {}", token.expires_at),
        ));
    }
    if let Some(delegator) = &link.delegator_identity
        && delegator != &token.delegator_identity
    {
        return Err(reject(
            Code::DelegatorMismatch,
            format!(
                "token delegator {:?}, link needs {delegator:?}",
                token.delegator_identity
            ),
        ));
    }
    if link.delegate_identity != token.delegate_identity {
        return Err(reject(
            Code::DelegateMismatch,
            format!(
                "token delegate {:?}, link needs {:?}",
                token.delegate_identity, link.delegate_identity
            ),
        ));
    }
    let class = link.scope_class.trim().to_lowercase();
    let required = normalize_scope(check.required_scope);
    if (!class.is_empty() && !token.scope_class.is_empty() && class != token.scope_class)
        || !scope_covers(&token.scope, &required)
    {
        return Err(reject(
            Code::ScopeMismatch,
            format!(
                "token grants [{}] class {:?}, intent requires [{}] class {class:?}",
                token.scope.join(", "),
                token.scope_class,
                required.join(", ")
            ),
        ));
    }
    if !token.intent_digest.is_empty()
        && !token
            .intent_digest
            .eq_ignore_ascii_case(check.intent_digest)
    {
        return Err(reject(
            Code::IntentMismatch,
            "token is limited to another intent",
        ));
    }
    if !token.policy_digest.is_empty()
        && !token
            .policy_digest
            .eq_ignore_ascii_case(check.policy_digest)
    {
        return Err(reject(
            Code::PolicyMismatch,
            "token is limited to another policy",
        ));
    }
    Ok(())
}

/// One claimed hop of the intent's delegation chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedLink {
    /// Delegator.
    pub delegator_identity: String,
    /// Delegate.
    pub delegate_identity: String,
    /// Scope class.
    pub scope_class: String,
    /// Token id.
    pub token_ref: String,
}

/// The links the intent's delegation claim requires tokens for, or `ChainMismatch` when the claimed chain is not
/// continuous (link[i].delegator = link[i-1].delegate) or does not end at the requester.
pub fn required_links(
    requester_identity: &str,
    scope_class: &str,
    chain: &[ClaimedLink],
) -> Result<Vec<RequiredLink>, DelegationError> {
    if chain.is_empty() {
        return Ok(vec![RequiredLink {
            delegator_identity: None,
            delegate_identity: requester_identity.to_owned(),
            scope_class: scope_class.to_owned(),
            token_ref: String::new(),
        }]);
    }
    for pair in chain.windows(2) {
        if pair[1].delegator_identity != pair[0].delegate_identity {
            return Err(reject(
                DelegationErrorCode::ChainMismatch,
                format!(
                    "link delegator {:?} does not continue from delegate {:?}",
                    pair[1].delegator_identity, pair[0].delegate_identity
                ),
            ));
        }
    }
    if chain
        .last()
        .is_some_and(|last| last.delegate_identity != requester_identity)
    {
        return Err(reject(
            DelegationErrorCode::ChainMismatch,
            format!("chain does not end at requester {requester_identity:?}"),
        ));
    }
    Ok(chain
        .iter()
        .map(|link| RequiredLink {
            delegator_identity: Some(link.delegator_identity.clone()),
            delegate_identity: link.delegate_identity.clone(),
            scope_class: if link.scope_class.is_empty() {
                scope_class.to_owned()
            } else {
                link.scope_class.clone()
            },
            token_ref: link.token_ref.clone(),
        })
        .collect())
}

/// How one token was judged (delegation audit entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelegationAuditEntry {
    /// Token id (empty when the token did not decode).
    pub token_id: String,
    /// Delegator.
    pub delegator_identity: String,
    /// Delegate.
    pub delegate_identity: String,
    /// Whether it satisfied a link.
    pub valid: bool,
    /// Code of the last check it failed, when not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<DelegationErrorCode>,
}

/// Result of matching a chain to tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelegationOutcome {
    /// Every required link has a valid token.
    pub delegated: bool,
    /// Tokens that satisfied a link.
    pub valid_delegations: usize,
    /// `delegation_granted`, or why not.
    pub reason_codes: Vec<String>,
    /// One entry per presented token.
    pub entries: Vec<DelegationAuditEntry>,
}

/// Match each required link to one unused token that passes [`check_delegation_token`].
pub fn match_delegation_chain(
    links: &[RequiredLink],
    tokens: &[&[u8]],
    key: &PublicKey,
    check: &DelegationCheck<'_>,
) -> DelegationOutcome {
    let loaded: Vec<Result<LoadedDelegationToken, DelegationError>> = tokens
        .iter()
        .map(|bytes| {
            LoadedDelegationToken::from_bytes(bytes)
                .map_err(|err| reject(DelegationErrorCode::Invalid, err.to_string()))
        })
        .collect();
    let mut entries: Vec<DelegationAuditEntry> = loaded
        .iter()
        .map(|t| match t {
            Ok(t) => DelegationAuditEntry {
                token_id: t.token.token_id.clone(),
                delegator_identity: t.token.delegator_identity.clone(),
                delegate_identity: t.token.delegate_identity.clone(),
                ..DelegationAuditEntry::default()
            },
            Err(err) => DelegationAuditEntry {
                error_code: Some(err.code),
                ..DelegationAuditEntry::default()
            },
        })
        .collect();
    let mut codes: Vec<DelegationErrorCode> = Vec::new();
    let mut satisfied = 0;
    for link in links {
        // Tokens the link names by id come first.
        let mut order: Vec<usize> = (0..loaded.len()).filter(|&i| !entries[i].valid).collect();
        order.sort_by_key(|&i| match &loaded[i] {
            Ok(t) => link.token_ref.is_empty() || t.token.token_id != link.token_ref,
            Err(_) => true,
        });
        let mut matched = false;
        for i in order {
            let Ok(token) = &loaded[i] else { continue };
            match check_delegation_token(token, key, link, check) {
                Ok(()) => {
                    entries[i].valid = true;
                    entries[i].error_code = None;
                    matched = true;
                    break;
                }
                Err(err) => entries[i].error_code = Some(err.code),
            }
        }
        if matched {
            satisfied += 1;
        } else {
            codes.push(DelegationErrorCode::Missing);
        }
    }
    codes.extend(
        entries
            .iter()
            .filter(|e| !e.valid)
            .filter_map(|e| e.error_code),
    );
    let delegated = !links.is_empty() && satisfied == links.len();
    let reason_codes = if delegated {
        vec!["delegation_granted".to_owned()]
    } else if tokens.is_empty() {
        vec![DelegationErrorCode::Missing.as_str().to_owned()]
    } else {
        codes.sort();
        codes.dedup();
        let mut out = vec!["delegation_chain_insufficient".to_owned()];
        out.extend(codes.into_iter().map(|c| c.as_str().to_owned()));
        out.sort();
        out
    };
    DelegationOutcome {
        delegated,
        valid_delegations: entries.iter().filter(|e| e.valid).count(),
        reason_codes,
        entries,
    }
}

#[cfg(test)]
mod tests;
