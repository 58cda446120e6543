//! The tamper-evident audit log: every privileged operation appends an entry in the same store transaction as
//! the operation ([`append`]); the log's Ed25519 key signs C2SP checkpoints over its RFC 6962 Merkle tree
//! ([`AuditLog::sign_checkpoint`]); [`AuditLog::export`] writes what an auditor verifies offline with
//! `gait-audit` alone (`gait-aggregator audit verify`). Format and verification: `protocol/audit`.
//!
//! # Keys
//! The signing key is a 32-byte Ed25519 seed in `<data-dir>/keys/audit.key` (0600), made at first start by the
//! data-dir secret writer; its verifier key, in the signed-note form `<origin>+<key id>+<base64>`, is written
//! beside it as `audit.vkey` (0644) for auditors. The key's name is the log's origin (`audit.origin`, default
//! `gait-aggregator/<pki.trust_domain>`).
//!
//! # Checkpoints
//! Signed on demand (every export and every `GET /v1/audit/checkpoint`) and periodically by
//! [`spawn_checkpointer`] (`audit.checkpoint_interval_seconds`, default 60) when the log grew, and stored, so a
//! recent signed tree head exists even when nobody exports. A checkpoint is never signed twice for one size.

pub mod export;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gait_audit::{EntryDraft, NoteSigner, NoteVerifier, Target};
use gait_runtime::Tasks;
use gait_store::{AppendedEntry, AuditRow, Store, StoreError, StoreTx, StoredCheckpoint};
use tokio_util::sync::CancellationToken;

use crate::auth::{Authorized, Deployment};
use crate::clock::unix_ms;
use crate::secrets::{self, Access};

pub use export::ExportSummary;

/// File name of the log's private signing key (a 32-byte Ed25519 seed) inside the key directory.
pub const AUDIT_KEY_FILE: &str = "audit.key";
/// File name of the log's verifier key (signed-note form) inside the key directory.
pub const AUDIT_VKEY_FILE: &str = "audit.vkey";
/// Default period of [`spawn_checkpointer`].
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// The origin of a deployment's log when `audit.origin` is not set.
pub fn default_origin(trust_domain: &str) -> String {
    format!("gait-aggregator/{trust_domain}")
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The key files could not be read or written.
    #[error("audit key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// `audit.origin` cannot name a signed-note key.
    #[error("audit.origin: {0}")]
    Origin(String),
    /// The entry a feature asked to append is invalid.
    #[error("audit entry: {0}")]
    Entry(String),
    /// Signing a checkpoint failed.
    #[error("signing the audit checkpoint: {0}")]
    Checkpoint(String),
    /// A file of an export could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The checkpoint given with `--since` is refused.
    #[error("{path}: {reason}")]
    Since {
        /// The older checkpoint's file.
        path: PathBuf,
        /// Why it cannot be extended.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuditError {
    /// Whether the caller supplied something wrong (an invalid entry or an unusable older checkpoint).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Entry(_) | Self::Since { .. })
            || matches!(self, Self::Store(e) if matches!(e, StoreError::InvalidInput { .. }))
    }
}

/// The audit target `kind`/`id` in `tenant`'s environment.
pub fn tenant_target(
    tenant: &gait_store::Tenant,
    kind: impl Into<String>,
    id: impl Into<String>,
) -> Target {
    Target::in_env(
        tenant.org.as_str(),
        tenant.project.as_str(),
        tenant.env.as_str(),
        kind,
        id,
    )
}

/// The audit target `kind`/`id` at `scope` (the deployment, an org, a project or an environment): a role
/// binding's or an approval policy's own scope.
pub fn scope_target(
    scope: &gait_store::BindingScope,
    kind: impl Into<String>,
    id: impl Into<String>,
) -> Target {
    Target {
        org: scope.org_part().map(|o| o.as_str().to_owned()),
        project: scope.project_part().map(|p| p.as_str().to_owned()),
        env: scope.env_part().map(|e| e.as_str().to_owned()),
        kind: kind.into(),
        id: id.into(),
    }
}

/// Appends an audit entry inside the operation's transaction `tx`, so both commit together or neither does.
/// `actor` is who did it (`admin-token`, `oidc:<issuer>#<subject>`, `agent:<spiffe id>`), `action` a dotted
/// name (`bundle.publish`), `before`/`after` `sha256:<hex>` digests of the object (see
/// [`gait_audit::content_digest`]). Call it last in the transaction: on PostgreSQL it holds the log's head lock
/// until the commit.
pub async fn append(
    tx: &mut StoreTx,
    actor: &str,
    action: &str,
    target: Target,
    before: Option<String>,
    after: Option<String>,
) -> Result<AppendedEntry, AuditError> {
    append_draft(
        tx,
        EntryDraft {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            before,
            after,
            details: None,
        },
    )
    .await
}

/// [`append`] with every field of the entry given, `details` included.
pub async fn append_draft(
    tx: &mut StoreTx,
    draft: EntryDraft,
) -> Result<AppendedEntry, AuditError> {
    draft
        .validate()
        .map_err(|e| AuditError::Entry(e.to_string()))?;
    Ok(tx.audit_append(&draft, unix_ms()).await?)
}

/// An entry's inclusion proof against a tree size: recompute the root from `leaf_hash` and `proof` (RFC 9162
/// §2.1.3.2, `gait_audit::merkle::verify_inclusion`) and compare it with the checkpoint's of `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's leaf index.
    pub seq: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The entry's RFC 6962 leaf hash (SHA-256 of 0x00 and its canonical bytes).
    pub leaf_hash: gait_audit::Hash,
    /// The sibling hashes, leaf first.
    pub proof: Vec<gait_audit::Hash>,
}

/// The log of one deployment: its store and its signing key.
pub struct AuditLog {
    store: Store,
    signer: Arc<NoteSigner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.signer.name())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// The log on `store`, signing with the key in `key_dir` (created at first use, see the module docs) under
    /// the name `origin`. The verifier key file is (re)written whenever it does not hold the current key.
    pub fn open(store: Store, key_dir: &Path, origin: &str) -> Result<Self, AuditError> {
        let signer = load_or_create_signer(key_dir, origin)?;
        Ok(Self {
            store,
            signer: Arc::new(signer),
        })
    }

    /// The log's origin (its key name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The verifier of the log's checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// The store the log lives in (for the export, beside; never handed to an edge).
    fn store(&self) -> &Store {
        &self.store
    }

    /// Up to `limit` entries of the whole log from leaf index `from` on, in order: the deployment-wide read of
    /// an auditor authorized over the [`Deployment`].
    pub async fn entries(
        &self,
        _caller: &Authorized<Deployment>,
        from: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, AuditError> {
        Ok(self.store.audit_entries(from, limit).await?)
    }

    /// Up to `limit` entries from leaf index `from` on whose target lies inside the caller's scope, in order,
    /// each with its leaf index in the whole log: the per-tenant view of an auditor bound to an org or an
    /// environment (entries on the deployment or on other tenants are not in it).
    pub async fn entries_in<T: crate::auth::Target>(
        &self,
        caller: &Authorized<T>,
        from: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, AuditError> {
        let scope = caller.target().scope();
        Ok(self.store.audit_entries_in(&scope, from, limit).await?)
    }

    /// The RFC 9162 inclusion proof of entry `seq` in the tree of the first `size` entries (a checkpoint's
    /// size), with the entry's leaf hash; `None` when no entry `seq` lies inside the caller's scope, so a
    /// tenant's auditor proves its own entries against the deployment's checkpoint and learns nothing of
    /// others' but the hashes a proof carries.
    pub async fn inclusion_proof<T: crate::auth::Target>(
        &self,
        caller: &Authorized<T>,
        seq: u64,
        size: u64,
    ) -> Result<Option<InclusionProof>, AuditError> {
        let scope = caller.target().scope();
        let found = self.store.audit_entries_in(&scope, seq, 1).await?;
        let Some(row) = found.into_iter().next().filter(|r| r.seq == seq) else {
            return Ok(None);
        };
        let proof = self.store.audit_inclusion_proof(seq, size).await?;
        Ok(Some(InclusionProof {
            seq,
            size,
            leaf_hash: gait_audit::leaf_hash(&row.line),
            proof,
        }))
    }

    /// A signed checkpoint of the log as it is now: the stored one when it already covers the current size,
    /// otherwise a fresh one, stored.
    pub async fn sign_checkpoint(&self) -> Result<StoredCheckpoint, AuditError> {
        let head = self.store.audit_head().await?;
        if let Some(existing) = self.store.audit_checkpoint(head.size).await? {
            if existing.root == head.root {
                return Ok(existing);
            }
            // Two roots for one size: the stored tree is not the one signed before. Signing it would put the
            // log's key under a rewritten history.
            return Err(AuditError::Checkpoint(format!(
                "a checkpoint of size {} with another root was signed before: the stored log was changed \
                 since; run `gait-aggregator audit verify` against an earlier export with --since",
                head.size
            )));
        }
        let note = gait_audit::Checkpoint {
            origin: self.origin().to_owned(),
            size: head.size,
            root: head.root,
        }
        .sign(&self.signer)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
        let stored = StoredCheckpoint {
            size: head.size,
            root: head.root,
            note,
            signed_unix_ms: unix_ms(),
        };
        self.store.audit_save_checkpoint(&stored).await?;
        Ok(stored)
    }
}

fn load_or_create_signer(key_dir: &Path, origin: &str) -> Result<NoteSigner, AuditError> {
    let private = key_dir.join(AUDIT_KEY_FILE);
    let public = key_dir.join(AUDIT_VKEY_FILE);
    let seed = secrets::load_or_create_32(&private).map_err(|e| AuditError::Key {
        path: private.clone(),
        message: e.to_string(),
    })?;
    let signer = NoteSigner::new(origin, &seed).map_err(|e| AuditError::Origin(e.to_string()))?;
    let vkey = format!("{}\n", signer.verifier());
    let existing = std::fs::read_to_string(&public).ok();
    if let Some(other) = existing
        .as_deref()
        .and_then(|t| NoteVerifier::parse(t).ok())
        && other.name() != origin
    {
        // A command run without the server's configuration would otherwise rename the log under the
        // auditors' feet.
        return Err(AuditError::Origin(format!(
            "{} names the log {:?}, and the configured origin is {origin:?}: run with the server's \
             configuration (--config), or set audit.origin to {:?}; to start a new log identity on purpose, \
             delete {} and hand auditors the new one",
            public.display(),
            other.name(),
            other.name(),
            public.display()
        )));
    }
    if existing.as_deref() != Some(vkey.as_str()) {
        secrets::write_atomic(&public, vkey.as_bytes(), Access::Public).map_err(|e| {
            AuditError::Key {
                path: public.clone(),
                message: e.to_string(),
            }
        })?;
        tracing::info!(path = %public.display(), origin, "audit log verifier key written");
    }
    Ok(signer)
}

/// Signs a checkpoint every `every` while the log grows, until `token` is cancelled. A failed signing is
/// logged and retried at the next tick (the log itself is unaffected).
pub fn spawn_checkpointer(
    tasks: &Tasks,
    log: Arc<AuditLog>,
    every: Duration,
    token: CancellationToken,
) {
    tasks.spawn_essential("audit-checkpointer", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    match log.sign_checkpoint().await {
                        Ok(cp) => tracing::debug!(size = cp.size, "audit checkpoint signed"),
                        Err(e) => tracing::warn!(error = %e, "signing the periodic audit checkpoint failed"),
                    }
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish whose audit entry cannot be appended (an empty actor) is not stored either: both are one
    /// transaction.
    #[tokio::test]
    async fn a_publish_whose_audit_append_fails_is_not_stored() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let store = db.store().clone();
        let registry = crate::registry::Registry::new(
            store.clone(),
            gait_canon::sign::SigningKey::generate(),
            crate::registry::BundleDefaults::default(),
            Arc::new(crate::metrics::Metrics::new()),
        );
        let tenant = gait_store::Tenant::from_parts("acme", "web", "prod").expect("tenant");
        let request = |created_by: &str| crate::registry::PublishRequest {
            policies: [(
                "p.yaml".to_owned(),
                "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n"
                    .to_owned(),
            )]
            .into(),
            max_offline_seconds: None,
            on_stale: None,
            validity: None,
            settings: Default::default(),
            created_by: created_by.to_owned(),
            candidates: Default::default(),
            delegation_key: None,
            rollback: None,
            audience: None,
        };
        let refused = registry.publish(&tenant, request("")).await;
        assert!(
            matches!(refused, Err(crate::registry::RegistryError::Audit(_))),
            "{refused:?}"
        );
        assert!(
            store
                .latest_bundle(&tenant)
                .await
                .expect("latest")
                .is_none()
        );
        assert_eq!(store.audit_head().await.expect("head").size, 0);
        registry
            .publish(&tenant, request("admin-token"))
            .await
            .expect("publish");
        assert_eq!(store.audit_head().await.expect("head").size, 1);
        assert_eq!(
            store
                .latest_bundle(&tenant)
                .await
                .expect("latest")
                .map(|b| b.epoch),
            Some(1)
        );
    }

    /// Likewise a revocation: refused with its audit entry, kept with it.
    #[tokio::test]
    async fn a_revocation_whose_audit_append_fails_is_not_stored() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let store = db.store();
        let rev = gait_store::Revocation {
            cert_serial: gait_store::CertSerial::parse("0a1b").expect("serial"),
            agent: gait_store::AgentKey::new(
                gait_store::Tenant::from_parts("acme", "web", "prod").expect("tenant"),
                "a1".parse().expect("agent id"),
            ),
            reason: "key compromise".into(),
            revoked_by: "alice".into(),
        };
        let refused = crate::pki::revocation::revoke(store, &rev, "", 1).await;
        assert!(matches!(refused, Err(AuditError::Entry(_))), "{refused:?}");
        assert!(store.revocations().await.expect("list").is_empty());
        let entry = crate::pki::revocation::revoke(store, &rev, "local:alice", 1)
            .await
            .expect("revoke");
        assert_eq!(entry.seq, 0);
        assert_eq!(store.revocations().await.expect("list").len(), 1);
        let line = gait_audit::Entry::parse_line(&entry.line).expect("entry");
        assert_eq!(
            (line.action.as_str(), line.target.id.as_str()),
            ("pki.revoke", "0a1b")
        );
    }

    #[test]
    fn the_key_is_made_once_private_and_its_verifier_key_is_written_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_signer(dir.path(), "gait-aggregator/example.org").expect("create");
        let b = load_or_create_signer(dir.path(), "gait-aggregator/example.org").expect("reload");
        assert_eq!(a.verifier(), b.verifier());
        let vkey = std::fs::read_to_string(dir.path().join(AUDIT_VKEY_FILE)).expect("vkey");
        assert_eq!(NoteVerifier::parse(&vkey).expect("parse"), a.verifier());
        assert!(vkey.starts_with("gait-aggregator/example.org+"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(AUDIT_KEY_FILE))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            load_or_create_signer(dir.path(), "has space"),
            Err(AuditError::Origin(_))
        ));
        // Another origin than the one auditors hold is refused, not silently renamed.
        match load_or_create_signer(dir.path(), "gait-aggregator/other.org") {
            Err(AuditError::Origin(message)) => {
                assert!(message.contains("gait-aggregator/example.org"), "{message}")
            }
            other => panic!("another origin gave {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join(AUDIT_VKEY_FILE)).expect("vkey"),
            vkey
        );
    }
}
