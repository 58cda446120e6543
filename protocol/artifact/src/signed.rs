//! Signing and verifying Gait documents that carry one `signature` object (traces, approval and delegation
//! tokens). Gait signs what its Go struct marshals, so verification first recomputes the digest from the typed
//! projection (unknown fields dropped, times re-formatted); when that does not match, it falls back to the raw
//! object minus `signature` (contract §2.3). Either way Ed25519 must hold over the digest that matched.

use gait_canon::sign::{self, PublicKey, Signature, SigningKey, VerifyError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A Gait document with a `signature` member.
pub trait SignedDocument: Serialize + DeserializeOwned + Clone {
    /// The artifact's `schema_id`.
    const SCHEMA_ID: &'static str;
    /// The signature, if any.
    fn signature(&self) -> Option<&Signature>;
    /// Replace the signature.
    fn set_signature(&mut self, signature: Option<Signature>);
}

/// Which byte form of the document the signed digest matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestBasis {
    /// The typed projection, exactly what Gait's Go code hashes.
    Projected,
    /// The raw object minus `signature` (documents whose extra or re-formatted members were signed as-is).
    Raw,
}

/// Why a signed document did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFailure {
    /// No `signature` object.
    #[error("signature missing")]
    Missing,
    /// The signature is present but wrong.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
}

/// DigestJCS of `doc` without its signature, as Gait computes it from the Go struct.
pub fn projected_digest<T: SignedDocument>(doc: &T) -> String {
    let mut unsigned = doc.clone();
    unsigned.set_signature(None);
    gait_canon::digest_jcs(&to_value(&unsigned))
}

/// Sign `doc` (any previous signature is replaced) over its projection.
pub fn sign_document<T: SignedDocument>(mut doc: T, key: &SigningKey) -> T {
    doc.set_signature(None);
    let signature = sign::sign_json(key, &to_value(&doc));
    doc.set_signature(Some(signature));
    doc
}

/// Verify `typed` (decoded from `raw`) with `key`; returns which digest form matched.
pub fn verify_document<T: SignedDocument>(
    raw: &Map<String, Value>,
    typed: &T,
    key: &PublicKey,
) -> Result<DigestBasis, SignatureFailure> {
    let signature = typed.signature().ok_or(SignatureFailure::Missing)?;
    let projected = projected_digest(typed);
    if signature.signed_digest == projected {
        sign::verify_digest_hex(key, &projected, signature)?;
        return Ok(DigestBasis::Projected);
    }
    let mut unsigned = raw.clone();
    unsigned.remove("signature");
    let raw_digest = gait_canon::digest_jcs(&Value::Object(unsigned));
    if signature.signed_digest == raw_digest {
        sign::verify_digest_hex(key, &raw_digest, signature)?;
        return Ok(DigestBasis::Raw);
    }
    // Neither matches: report against Gait's own form (missing or mismatching signed_digest).
    sign::verify_digest_hex(key, &projected, signature)?;
    Ok(DigestBasis::Projected)
}

/// Our artifact structs have string keys and plain fields only, so they always convert to a JSON value.
pub(crate) fn to_value<T: Serialize>(doc: &T) -> Value {
    match serde_json::to_value(doc) {
        Ok(value) => value,
        Err(err) => unreachable!("artifact structs always serialize to JSON: {err}"),
    }
}

/// 2-space indented JSON in struct field order with a trailing newline, as Gait writes artifact files.
pub(crate) fn to_pretty_json<T: Serialize>(doc: &T) -> Vec<u8> {
    match serde_json::to_vec_pretty(doc) {
        Ok(mut out) => {
            out.push(b'\n');
            out
        }
        Err(err) => unreachable!("artifact structs always serialize to JSON: {err}"),
    }
}
