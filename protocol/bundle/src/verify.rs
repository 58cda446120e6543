//! Parsing and verifying a bundle document against a trust root, in the order documented in the crate root.

use crate::manifest::{digest_of_value, malformed, parse_time};
use crate::{BUNDLE_SCHEMA_ID, BundleError, MAX_BUNDLE_LEN, Manifest, Scope, TrustRoot};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gait_canon::sign::{Signature, verify_json};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// A bundle that passed every check of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Bundle digest (DigestJCS of the manifest), raw.
    pub digest: [u8; 32],
    /// Bundle digest, lowercase hex.
    pub digest_hex: String,
    /// Policy and candidate files by name, each matching its manifest entry.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The document exactly as received, for durable storage and re-verification.
    pub raw: Vec<u8>,
    /// Keys the endorsement chain added to the trust root to reach the signing key (oldest first); empty when
    /// the signing key was trusted already. Persist them only together with the bundle's activation.
    pub trust_added: Vec<gait_canon::sign::PublicKey>,
    /// Key ids the bundle revokes (`manifest.trust.revoked`), sorted.
    pub revoked: Vec<String>,
}

/// What [`verify_with`] checks a bundle against.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Keys trusted directly (already without any revoked key).
    pub trust: &'a TrustRoot,
    /// Key ids the verifier learned are revoked: a bundle signed by, or endorsed through, one is refused.
    pub revoked: &'a BTreeSet<String>,
    /// The scope the verifier serves.
    pub expected_scope: &'a Scope,
    /// The active epoch: only strictly newer epochs are accepted.
    pub current_epoch: Option<u64>,
    /// Now, Unix seconds.
    pub now_unix: i64,
}

/// Only the envelope identity, read first so a document of another schema is reported as such.
#[derive(Deserialize)]
struct Head {
    schema_id: String,
    schema_version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "schema_id")]
    _schema_id: String,
    #[serde(rename = "schema_version")]
    _schema_version: String,
    manifest: Manifest,
    signature: SignatureDoc,
    files: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureDoc {
    alg: String,
    key_id: String,
    sig: String,
    signed_digest: String,
}

struct Parsed {
    manifest: Manifest,
    manifest_value: serde_json::Value,
    signature: Signature,
    files: BTreeMap<String, String>,
}

/// Parse and validate a bundle document without any trust decision (for display and diagnostics). The
/// signature, the files and the applicability checks of [`verify`] are NOT performed.
pub fn inspect(bytes: &[u8]) -> Result<Manifest, BundleError> {
    parse(bytes).map(|p| p.manifest)
}

/// The manifest and files of a bundle without any trust decision: the signature is NOT checked, only that each
/// listed file matches its sha256 and size. For the registry re-signing its own stored bundles (a key rotation
/// re-publishes the same policies), never for deciding what to enforce.
pub fn open_unverified(bytes: &[u8]) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), BundleError> {
    let parsed = parse(bytes)?;
    let files = decode_files(&parsed.manifest, &parsed.files)?;
    Ok((parsed.manifest, files))
}

/// Verify a bundle document for `expected_scope` at `now_unix` (seconds), refusing epochs at or below
/// `current_epoch`, with no revoked key known beyond the bundle's own `manifest.trust.revoked`. See
/// [`verify_with`].
pub fn verify(
    bytes: &[u8],
    trust: &TrustRoot,
    expected_scope: &Scope,
    current_epoch: Option<u64>,
    now_unix: i64,
) -> Result<VerifiedBundle, BundleError> {
    verify_with(
        bytes,
        &VerifyOptions {
            trust,
            revoked: &BTreeSet::new(),
            expected_scope,
            current_epoch,
            now_unix,
        },
    )
}

/// Verify a bundle document against `opts`. See the crate documentation for the order of checks: the signing
/// key is refused when revoked (by `opts.revoked` or the bundle's own `manifest.trust.revoked`), and resolved
/// either from the trust root or through the manifest's endorsement chain from a trusted, unrevoked key.
pub fn verify_with(bytes: &[u8], opts: &VerifyOptions<'_>) -> Result<VerifiedBundle, BundleError> {
    let VerifyOptions {
        trust,
        expected_scope,
        current_epoch,
        now_unix,
        ..
    } = *opts;
    let parsed = parse(bytes)?;
    let manifest = parsed.manifest;

    let key_id = &parsed.signature.key_id;
    let mut revoked = opts.revoked.clone();
    revoked.extend(manifest.trust.revoked.iter().cloned());
    let (key, trust_added) =
        crate::trust::resolve_signer(trust, &revoked, &manifest.trust.keys, key_id)?;
    verify_json(&key, &parsed.manifest_value, &parsed.signature)
        .map_err(|e| BundleError::BadSignature(e.to_string()))?;
    if manifest.key_id != *key_id {
        return Err(BundleError::BadSignature(format!(
            "manifest.key_id {:?} differs from the signing key {key_id:?}",
            manifest.key_id
        )));
    }

    let files = decode_files(&manifest, &parsed.files)?;

    if manifest.scope != *expected_scope {
        return Err(BundleError::ScopeMismatch {
            expected: Box::new(expected_scope.clone()),
            got: Box::new(manifest.scope),
        });
    }

    let not_after = parse_time("manifest.not_after", &manifest.not_after)?;
    if i128::from(now_unix) * 1_000_000_000 >= not_after.unix_timestamp_nanos() {
        return Err(BundleError::Expired {
            not_after: manifest.not_after,
        });
    }

    if let Some(current) = current_epoch
        && manifest.epoch <= current
    {
        return Err(BundleError::StaleEpoch {
            offered: manifest.epoch,
            current,
        });
    }

    let (digest, digest_hex) = digest_of_value(&parsed.manifest_value)?;
    let revoked = manifest.trust.revoked.clone();
    Ok(VerifiedBundle {
        manifest,
        digest,
        digest_hex,
        files,
        raw: bytes.to_vec(),
        trust_added,
        revoked,
    })
}

/// Size cap, envelope identity, strict typed parse, strict JSON parse (duplicate keys, depth), manifest rules.
fn parse(bytes: &[u8]) -> Result<Parsed, BundleError> {
    if bytes.len() > MAX_BUNDLE_LEN {
        return Err(BundleError::TooLarge {
            size: bytes.len(),
            limit: MAX_BUNDLE_LEN,
        });
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| BundleError::Malformed(format!("bundle document: {e}")))?;
    if head.schema_id != BUNDLE_SCHEMA_ID || !is_major_1(&head.schema_version) {
        return Err(BundleError::UnsupportedSchema {
            schema_id: head.schema_id,
            schema_version: head.schema_version,
        });
    }
    // Typed first: it refuses unknown fields without building them, which bounds memory before the generic
    // value below is built (needed because the digest is over the manifest exactly as sent).
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| BundleError::Malformed(format!("bundle document: {e}")))?;
    let mut value = gait_canon::parse_json(bytes)
        .map_err(|e| BundleError::Malformed(format!("bundle document: {e}")))?;
    let manifest_value = value
        .get_mut("manifest")
        .map(serde_json::Value::take)
        .ok_or_else(|| malformed("manifest", "missing"))?;
    let reserialized = gait_canon::to_canonical_value(&doc.manifest)
        .map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
    if reserialized != manifest_value {
        return Err(malformed(
            "manifest",
            "fields are not in their canonical form (e.g. null for an absent optional field)",
        ));
    }
    doc.manifest.validate()?;
    let signature = Signature {
        alg: doc.signature.alg,
        key_id: doc.signature.key_id,
        sig: doc.signature.sig,
        signed_digest: doc.signature.signed_digest,
    };
    Ok(Parsed {
        manifest: doc.manifest,
        manifest_value,
        signature,
        files: doc.files,
    })
}

/// `1.<minor>.<patch>` with decimal components.
fn is_major_1(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts[0] == "1"
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Decode every listed file and check it against the manifest; no unlisted file is allowed.
fn decode_files(
    manifest: &Manifest,
    encoded_files: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut files = BTreeMap::new();
    for (name, sha256, size) in manifest.listed_files() {
        let encoded = encoded_files
            .get(name)
            .ok_or_else(|| BundleError::MissingFile {
                name: name.to_owned(),
            })?;
        let decoded = STANDARD.decode(encoded).map_err(|e| {
            malformed(
                &format!("files.{name}"),
                format!("not standard padded base64 ({e})"),
            )
        })?;
        if decoded.len() as u64 != size || gait_canon::sha256_hex(&decoded) != sha256 {
            return Err(BundleError::FileDigestMismatch {
                name: name.to_owned(),
            });
        }
        files.insert(name.to_owned(), decoded);
    }
    if let Some(name) = encoded_files.keys().find(|name| !files.contains_key(*name)) {
        return Err(BundleError::UnlistedFile { name: name.clone() });
    }
    Ok(files)
}
