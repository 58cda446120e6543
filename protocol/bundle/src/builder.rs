//! Building and signing a bundle document from policy files (used by the aggregator's registry and by tests).

use crate::manifest::{check_name, format_time, malformed};
use crate::{
    BUNDLE_SCHEMA_ID, BUNDLE_SCHEMA_VERSION, BundleError, CandidateEntry, MAX_BUNDLE_LEN, Manifest,
    PolicyEntry, Rollback, Scope, Settings, Stage, Staleness, TrustUpdate,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gait_canon::sign::{SigningKey, sign_json};
use std::collections::BTreeMap;

/// Collects the parts of a bundle, then signs it into the document bytes.
#[derive(Debug, Clone)]
pub struct BundleBuilder {
    scope: Scope,
    epoch: u64,
    created_at_unix: Option<i64>,
    not_after_unix: i64,
    parent: Option<[u8; 32]>,
    staleness: Staleness,
    settings: Settings,
    approval_key: Option<String>,
    delegation_key: Option<String>,
    files: BTreeMap<String, Vec<u8>>,
    /// Policy name -> (stage, candidate file name, candidate bytes).
    candidates: BTreeMap<String, (Stage, String, Vec<u8>)>,
    duplicate: Option<String>,
    trust: TrustUpdate,
    rollback: Option<Rollback>,
}

impl BundleBuilder {
    /// A bundle for `scope` at `epoch` that expires at `not_after_unix` (seconds). `created_at` defaults to the
    /// system clock at signing time, staleness to [`Staleness::default`].
    pub fn new(scope: Scope, epoch: u64, not_after_unix: i64) -> Self {
        BundleBuilder {
            scope,
            epoch,
            created_at_unix: None,
            not_after_unix,
            parent: None,
            staleness: Staleness::default(),
            settings: Settings::default(),
            approval_key: None,
            delegation_key: None,
            files: BTreeMap::new(),
            candidates: BTreeMap::new(),
            duplicate: None,
            trust: TrustUpdate::default(),
            rollback: None,
        }
    }

    /// Set `created_at` (Unix seconds) instead of reading the clock.
    pub fn created_at(&mut self, unix: i64) -> &mut Self {
        self.created_at_unix = Some(unix);
        self
    }

    /// Mark the bundle as a rollback (`manifest.rollback`).
    pub fn rollback(&mut self, rollback: Rollback) -> &mut Self {
        self.rollback = Some(rollback);
        self
    }

    /// Set `not_after` (Unix seconds).
    pub fn not_after(&mut self, unix: i64) -> &mut Self {
        self.not_after_unix = unix;
        self
    }

    /// Record the digest of the bundle this one supersedes.
    pub fn parent(&mut self, digest: [u8; 32]) -> &mut Self {
        self.parent = Some(digest);
        self
    }

    /// Set the offline tolerance.
    pub fn staleness(&mut self, staleness: Staleness) -> &mut Self {
        self.staleness = staleness;
        self
    }

    /// Set the environment settings (default: all off, and the manifest omits them).
    pub fn settings(&mut self, settings: Settings) -> &mut Self {
        self.settings = settings;
        self
    }

    /// Carry the aggregator's approval public key (agents then accept approval tokens it signs).
    pub fn approval_key(&mut self, key: &gait_canon::sign::PublicKey) -> &mut Self {
        self.approval_key = Some(key.to_gait_public_key());
        self
    }

    /// Carry the public key delegation tokens must be signed with (agents then accept delegation tokens it
    /// signs).
    pub fn delegation_key(&mut self, key: &gait_canon::sign::PublicKey) -> &mut Self {
        self.delegation_key = Some(key.to_gait_public_key());
        self
    }

    /// Stage `bytes` as the candidate of the policy `policy` (added with [`add_policy`](Self::add_policy))
    /// at `stage`, stored as the file `name`. [`sign`](Self::sign) fails when `policy` is not in the bundle,
    /// when `name` is taken, or when `stage` is `enforce` (a candidate is enforced by publishing it as the
    /// policy).
    pub fn candidate(
        &mut self,
        policy: impl Into<String>,
        stage: Stage,
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.candidates
            .insert(policy.into(), (stage, name.into(), bytes.into()));
        self
    }

    /// Carry signing-key rotation news (`manifest.trust`): endorsement links and revoked key ids.
    pub fn trust(&mut self, trust: TrustUpdate) -> &mut Self {
        self.trust = trust;
        self
    }

    /// Add a policy file. Adding the same name twice makes [`sign`](Self::sign) fail.
    pub fn add_policy(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> &mut Self {
        let name = name.into();
        if self.files.contains_key(&name) && self.duplicate.is_none() {
            self.duplicate = Some(name.clone());
        }
        self.files.insert(name, bytes.into());
        self
    }

    /// The manifest this builder would sign with `key_id`.
    #[allow(clippy::disallowed_methods)] // `created_at` defaults to now; callers that care set it explicitly
    pub fn manifest(&self, key_id: &str) -> Result<Manifest, BundleError> {
        if let Some(name) = &self.duplicate {
            return Err(malformed(
                "manifest.policies",
                format!("file {name:?} was added twice"),
            ));
        }
        for name in self.files.keys() {
            check_name("manifest.policies[].name", name)?;
        }
        if let Some(policy) = self
            .candidates
            .keys()
            .find(|p| !self.files.contains_key(*p))
        {
            return Err(malformed(
                "manifest.policies[].candidate",
                format!(
                    "the candidate is staged for {policy:?}, which is not a policy of the bundle"
                ),
            ));
        }
        let created_at_unix = match self.created_at_unix {
            Some(t) => t,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| malformed("manifest.created_at", "system clock is before 1970"))?
                .as_secs()
                .try_into()
                .map_err(|_| malformed("manifest.created_at", "system clock is out of range"))?,
        };
        let manifest = Manifest {
            scope: self.scope.clone(),
            epoch: self.epoch,
            created_at: format_time("manifest.created_at", created_at_unix)?,
            not_after: format_time("manifest.not_after", self.not_after_unix)?,
            parent_digest: self.parent.map(hex::encode),
            staleness: self.staleness,
            settings: self.settings,
            policies: self
                .files
                .iter()
                .map(|(name, bytes)| {
                    let staged = self.candidates.get(name);
                    PolicyEntry {
                        name: name.clone(),
                        sha256: gait_canon::sha256_hex(bytes),
                        size: bytes.len() as u64,
                        stage: staged.map(|(stage, _, _)| *stage).unwrap_or_default(),
                        candidate: staged.map(|(_, cname, cbytes)| CandidateEntry {
                            name: cname.clone(),
                            sha256: gait_canon::sha256_hex(cbytes),
                            size: cbytes.len() as u64,
                        }),
                    }
                })
                .collect(),
            key_id: key_id.to_owned(),
            approval_key: self.approval_key.clone(),
            delegation_key: self.delegation_key.clone(),
            trust: self.trust.clone(),
            rollback: self.rollback.clone(),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Sign with `key` and return the bundle document bytes (compact JSON).
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
        let manifest = self.manifest(&key.public_key().key_id())?;
        let manifest_value = gait_canon::to_canonical_value(&manifest)
            .map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
        let signature = sign_json(key, &manifest_value);
        let files: BTreeMap<&str, String> = self
            .files
            .iter()
            .chain(
                self.candidates
                    .values()
                    .map(|(_, name, bytes)| (name, bytes)),
            )
            .map(|(name, bytes)| (name.as_str(), STANDARD.encode(bytes)))
            .collect();
        let document = serde_json::json!({
            "schema_id": BUNDLE_SCHEMA_ID,
            "schema_version": BUNDLE_SCHEMA_VERSION,
            "manifest": manifest_value,
            "signature": {
                "alg": signature.alg,
                "key_id": signature.key_id,
                "sig": signature.sig,
                "signed_digest": signature.signed_digest,
            },
            "files": files,
        });
        let bytes = serde_json::to_vec(&document)
            .map_err(|e| BundleError::Malformed(format!("bundle document: {e}")))?;
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(BundleError::TooLarge {
                size: bytes.len(),
                limit: MAX_BUNDLE_LEN,
            });
        }
        Ok(bytes)
    }
}
