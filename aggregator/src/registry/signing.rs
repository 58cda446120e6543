//! The registry's bundle signing keys: which key signs, the endorsement chain and revocations every bundle
//! carries, rotation with overlap, and revocation.
//!
//! # Lifecycle
//! Keys live in the store (`signing_keys`, migration 0017) with a state: `next` -> `active` -> `retired`, and
//! `next`/`retired` -> `revoked`. Private seeds live beside the other keys, in `keys/registry/<key_id>.key` (0600,
//! written atomically, never logged); replicas sharing a database must share `keys/`, as they already share
//! `keys/registry.key`. At the first start on 0017 the existing `keys/registry.key` becomes the `active` row, so
//! existing deployments and their agents change nothing.
//!
//! - **Rotate** ([`Signer::rotate`]): a new `next` key, endorsed by the active key (an Ed25519 signature over
//!   `gait_bundle::endorsement_input`), active once `overlap` has passed. Until then bundles are still signed
//!   by the old key but carry the new key's endorsement (the introduction bundles), so every agent learns it
//!   from a key it already trusts.
//! - **Promotion** ([`Signer::promote_due`]): at every signing and by housekeeping, a `next` key past its
//!   overlap becomes `active` and the old one `retired` (compare-and-set, so two replicas never both promote).
//! - **Revoke** ([`Signer::revoke`]): `next` or `retired` -> `revoked`; the active key is refused (rotate
//!   first). Every later bundle names every revoked key in `manifest.trust.revoked` (at most 64).
//!
//! # What a bundle carries ([`Signer::sign`])
//! `manifest.trust.keys`: the newest [`gait_bundle::MAX_TRUST_LINKS`] links of the endorsement chain ending at
//! the newest key (the `next` key during an overlap, else the active one), oldest first, so an agent several
//! rotations behind reaches the signing key in one bundle. `manifest.trust.revoked`: every revoked key id.
//!
//! Seam for the rollout controller (WP-C): every bundle, staged or not, goes through `Registry::publish`,
//! which signs through [`Signer::sign`]; nothing else needs to know about keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gait_bundle::{BundleBuilder, KeyEndorsement, MAX_REVOKED_KEYS, MAX_TRUST_LINKS, TrustUpdate};
use gait_canon::sign::{self, PublicKey, SigningKey};
use gait_store::{BindingScope, SigningKeyRow, SigningKeyState, Store, StoreError};

use super::RegistryError;

/// Directory, inside the key directory, holding one private seed file per signing key.
pub const SIGNING_KEYS_DIR: &str = "registry";

/// The rollback reason of a promotion another replica made first.
const PROMOTED_CONCURRENTLY: &str = "the next signing key was promoted concurrently";

/// Actor of the row adopting the pre-0017 `registry.key`.
const BOOTSTRAP_ACTOR: &str = "bootstrap";

/// Which key signs bundles, and the trust news they carry.
pub struct Signer {
    store: Store,
    /// The pre-0017 `keys/registry.key`: adopted as the active key when the store has none.
    legacy: SigningKey,
    /// `keys/registry/`, where seeds are written and read; `None` (tests without a key directory) allows
    /// signing with the legacy key only.
    dir: Option<PathBuf>,
    seeds: Mutex<HashMap<String, SigningKey>>,
}

/// What a rotation or revocation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyChange {
    /// The key rotated to, or revoked, as stored afterwards.
    pub key: SigningKeyRow,
    /// Environments re-published so their agents learn of it at once: `org/project/env` -> new epoch.
    pub republished: BTreeMap<String, u64>,
    /// Environments whose re-publish failed: `org/project/env` -> the error (their agents learn at the next
    /// publish).
    pub republish_errors: BTreeMap<String, String>,
    /// On a revoke: agents that have not activated a bundle since the key's successor was introduced (or never
    /// reported one). They may not know the successor yet; offered a bundle from the successor, they refuse
    /// it and need the current registry key re-provisioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents_at_risk: Option<u64>,
}

impl Signer {
    /// A signer over `store` that adopts `legacy` as the active key at first use when the store has no key.
    pub fn new(store: Store, legacy: SigningKey) -> Self {
        let mut seeds = HashMap::new();
        seeds.insert(legacy.public_key().key_id(), legacy.clone());
        Signer {
            store,
            legacy,
            dir: None,
            seeds: Mutex::new(seeds),
        }
    }

    /// Keep seeds in `key_dir/registry/` (created 0700 on the first rotation).
    pub fn with_key_dir(mut self, key_dir: &Path) -> Self {
        self.dir = Some(key_dir.join(SIGNING_KEYS_DIR));
        self
    }

    /// Every signing key, oldest first (adopting the legacy key first when the store has none).
    pub async fn keys(&self) -> Result<Vec<SigningKeyRow>, RegistryError> {
        let keys = self.store.signing_keys().await?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        self.adopt_legacy().await?;
        Ok(self.store.signing_keys().await?)
    }

    /// The public key of the active signing key.
    pub async fn active_public_key(&self) -> Result<PublicKey, RegistryError> {
        let keys = self.keys().await?;
        let active = active_row(&keys)?;
        public_of(active)
    }

    /// Every key agents may still be trusting: active, next and retired (not revoked).
    pub async fn trusted_public_keys(&self) -> Result<Vec<PublicKey>, RegistryError> {
        self.keys()
            .await?
            .iter()
            .filter(|k| k.state != SigningKeyState::Revoked)
            .map(public_of)
            .collect()
    }

    /// Sign `builder` with the active key, attaching the endorsement chain and the revoked key ids. With
    /// `promote`, a `next` key whose overlap has passed becomes active first; without it (a rotation's
    /// introduction bundles) the current active key signs.
    pub async fn sign(
        &self,
        builder: &mut BundleBuilder,
        now_ms: i64,
        promote: bool,
    ) -> Result<Vec<u8>, RegistryError> {
        if promote {
            self.promote_due(now_ms).await?;
        }
        let keys = self.keys().await?;
        let active = active_row(&keys)?;
        let seed = self.seed(&active.key_id)?;
        builder.trust(trust_update(&keys));
        builder
            .sign(&seed)
            .map_err(|e| RegistryError::Sign(e.to_string()))
    }

    /// Make a `next` key whose overlap has passed the active key, retiring the old one, with the audit entry
    /// `signing_key.activate`. Returns whether a key was promoted. Safe to race: the state changes are
    /// compare-and-set, and the loser changes nothing.
    pub async fn promote_due(&self, now_ms: i64) -> Result<bool, RegistryError> {
        let keys = self.keys().await?;
        let Some(next) = keys.iter().find(|k| {
            k.state == SigningKeyState::Next && k.activate_after_unix_ms.unwrap_or(0) <= now_ms
        }) else {
            return Ok(false);
        };
        let old = active_row(&keys)?.key_id.clone();
        let new = next.key_id.clone();
        let promoted = self
            .store
            .transaction(async |tx| {
                let retired = tx
                    .set_signing_key_state(
                        &old,
                        SigningKeyState::Active,
                        SigningKeyState::Retired,
                        now_ms,
                    )
                    .await?;
                let activated = tx
                    .set_signing_key_state(
                        &new,
                        SigningKeyState::Next,
                        SigningKeyState::Active,
                        now_ms,
                    )
                    .await?;
                if !(retired && activated) {
                    // Another replica promoted first: roll back whatever half of it this one did.
                    return Err(RegistryError::KeyConflict(PROMOTED_CONCURRENTLY.into()));
                }
                audit(tx, "system", "signing_key.activate", &new, Some(&old)).await
            })
            .await;
        match promoted {
            Ok(_) => {
                tracing::info!(key_id = %new, retired = %old, "bundle signing key activated");
                Ok(true)
            }
            Err(RegistryError::KeyConflict(m)) if m == PROMOTED_CONCURRENTLY => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Create a `next` key endorsed by the active key, active after `overlap_ms`. Refused while another
    /// `next` key waits out its overlap.
    pub async fn rotate(
        &self,
        overlap_ms: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<SigningKeyRow, RegistryError> {
        let Some(dir) = &self.dir else {
            return Err(RegistryError::Key {
                path: PathBuf::from(SIGNING_KEYS_DIR),
                message: "this registry has no key directory to keep a new signing key in".into(),
            });
        };
        if overlap_ms < 0 {
            return Err(RegistryError::Field {
                field: "overlap_seconds",
                message: "must not be negative".into(),
            });
        }
        self.promote_due(now_ms).await?;
        let keys = self.keys().await?;
        if let Some(next) = keys.iter().find(|k| k.state == SigningKeyState::Next) {
            return Err(RegistryError::KeyConflict(format!(
                "key {} is already waiting to become active (at {} ms): wait for it, or revoke it, before \
                 rotating again",
                next.key_id,
                next.activate_after_unix_ms.unwrap_or(0)
            )));
        }
        let active = active_row(&keys)?;
        let endorser = self.seed(&active.key_id)?;
        let key = SigningKey::try_generate().map_err(|e| RegistryError::Key {
            path: dir.clone(),
            message: format!("no randomness for a new key: {e}"),
        })?;
        let public = key.public_key();
        let key_id = public.key_id();
        // The seed is durable before the row names the key, so a stored key always has its seed.
        write_seed(dir, &key)?;
        let link = gait_bundle::endorse(&endorser, &public);
        let row = SigningKeyRow {
            key_id: key_id.clone(),
            public_key: public.to_gait_public_key(),
            state: SigningKeyState::Next,
            endorsed_by: Some(link.endorsed_by),
            endorsement_sig: Some(link.sig),
            created_unix_ms: now_ms,
            activate_after_unix_ms: Some(now_ms.saturating_add(overlap_ms)),
            activated_unix_ms: None,
            revoked_unix_ms: None,
            actor: actor.to_owned(),
        };
        self.store
            .transaction(async |tx| {
                tx.insert_signing_key(&row).await?;
                audit(
                    tx,
                    actor,
                    "signing_key.rotate",
                    &key_id,
                    Some(&active.key_id),
                )
                .await
            })
            .await?;
        self.cache_seed(key);
        tracing::info!(%key_id, endorsed_by = %active.key_id, overlap_ms, "bundle signing key rotation started");
        Ok(row)
    }

    /// Revoke `key_id` (a `next` or `retired` key), with the audit entry `signing_key.revoke`. The active key
    /// is refused: rotate first. Revoking a revoked key changes nothing.
    pub async fn revoke(
        &self,
        key_id: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<SigningKeyRow, RegistryError> {
        self.promote_due(now_ms).await?;
        let keys = self.keys().await?;
        let Some(row) = keys.iter().find(|k| k.key_id == key_id) else {
            return Err(RegistryError::KeyNotFound(key_id.to_owned()));
        };
        let from = match row.state {
            SigningKeyState::Revoked => return Ok(row.clone()),
            SigningKeyState::Active => {
                return Err(RegistryError::KeyConflict(format!(
                    "key {key_id} is the active signing key: rotate first (gait-aggregator keys rotate), then \
                     revoke it"
                )));
            }
            state => state,
        };
        let revoked = keys
            .iter()
            .filter(|k| k.state == SigningKeyState::Revoked)
            .count();
        if revoked >= MAX_REVOKED_KEYS {
            return Err(RegistryError::KeyConflict(format!(
                "{revoked} keys are revoked already, the most a bundle can carry ({MAX_REVOKED_KEYS}): \
                 re-provision the agents with the current registry key instead"
            )));
        }
        let changed = self
            .store
            .transaction(async |tx| {
                let changed = tx
                    .set_signing_key_state(key_id, from, SigningKeyState::Revoked, now_ms)
                    .await?;
                if changed {
                    audit(tx, actor, "signing_key.revoke", key_id, None).await?;
                }
                Ok::<_, RegistryError>(changed)
            })
            .await?;
        if !changed {
            return Err(RegistryError::KeyConflict(format!(
                "key {key_id} changed state concurrently; list the keys and retry"
            )));
        }
        tracing::warn!(%key_id, %actor, "bundle signing key revoked");
        self.store
            .signing_keys()
            .await?
            .into_iter()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| RegistryError::KeyNotFound(key_id.to_owned()))
    }

    /// Insert the legacy key as the active row (idempotent across replicas sharing `keys/registry.key`), and
    /// keep its seed under `keys/registry/` too.
    async fn adopt_legacy(&self) -> Result<(), RegistryError> {
        let public = self.legacy.public_key();
        let key_id = public.key_id();
        if let Some(dir) = &self.dir {
            write_seed(dir, &self.legacy)?;
        }
        let row = SigningKeyRow {
            key_id: key_id.clone(),
            public_key: public.to_gait_public_key(),
            state: SigningKeyState::Active,
            endorsed_by: None,
            endorsement_sig: None,
            created_unix_ms: crate::clock::unix_ms(),
            activate_after_unix_ms: None,
            activated_unix_ms: None,
            revoked_unix_ms: None,
            actor: BOOTSTRAP_ACTOR.to_owned(),
        };
        let adopted = self
            .store
            .transaction(async |tx| {
                if tx.signing_keys().await?.is_empty() {
                    return tx.insert_signing_key(&row).await;
                }
                Ok::<_, StoreError>(false)
            })
            .await;
        match adopted {
            Ok(true) => {
                tracing::info!(%key_id, "registry.key adopted as the active bundle signing key");
                Ok(())
            }
            Ok(false) => Ok(()),
            // Two first uses at once (a publish and the start-up refresh, or two replicas): both saw no key and
            // both inserted. On PostgreSQL the loser can fail on the one-active-key index rather than on the
            // key id its `ON CONFLICT` names. Either way a key exists now, which is all adopting asks for.
            Err(e) if !self.store.signing_keys().await?.is_empty() => {
                tracing::debug!(error = %e, "registry.key adopted concurrently by another request");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The private key of `key_id`, from memory or `keys/registry/<key_id>.key`.
    fn seed(&self, key_id: &str) -> Result<SigningKey, RegistryError> {
        if let Some(k) = lock(&self.seeds).get(key_id) {
            return Ok(k.clone());
        }
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{key_id}.key")))
            .ok_or_else(|| RegistryError::Key {
                path: PathBuf::from(format!("{SIGNING_KEYS_DIR}/{key_id}.key")),
                message: "no key directory is configured for this registry".into(),
            })?;
        let key = sign::load_private_key_file(&path).map_err(|e| RegistryError::Key {
            path: path.clone(),
            message: format!(
                "{e}: replicas sharing a database must share keys/ (copy keys/registry/ from the replica that \
                 rotated)"
            ),
        })?;
        if key.public_key().key_id() != key_id {
            return Err(RegistryError::Key {
                path,
                message: format!("holds another key than {key_id}"),
            });
        }
        self.cache_seed(key.clone());
        Ok(key)
    }

    fn cache_seed(&self, key: SigningKey) {
        lock(&self.seeds).insert(key.public_key().key_id(), key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write `key`'s private key file `dir/<key_id>.key` (0600, atomic) unless it exists.
fn write_seed(dir: &Path, key: &SigningKey) -> Result<(), RegistryError> {
    let path = dir.join(format!("{}.key", key.public_key().key_id()));
    let err = |path: &Path, e: std::io::Error| RegistryError::Key {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if path.exists() {
        return Ok(());
    }
    crate::secrets::create_private_dir(dir).map_err(|e| err(dir, e))?;
    crate::secrets::write_atomic(
        &path,
        format!("{}\n", key.to_gait_private_key()).as_bytes(),
        crate::secrets::Access::Private,
    )
    .map_err(|e| err(&path, e))
}

fn active_row(keys: &[SigningKeyRow]) -> Result<&SigningKeyRow, RegistryError> {
    keys.iter()
        .find(|k| k.state == SigningKeyState::Active)
        .ok_or_else(|| {
            RegistryError::Sign(
                "the store has no active bundle signing key: rotate or restore signing_keys".into(),
            )
        })
}

fn public_of(row: &SigningKeyRow) -> Result<PublicKey, RegistryError> {
    PublicKey::from_gait_public_key(&row.public_key).map_err(|e| {
        RegistryError::Sign(format!(
            "signing_keys row {}: public key unreadable: {e}",
            row.key_id
        ))
    })
}

/// The chain ending at the newest live key (next, else active), newest [`MAX_TRUST_LINKS`] links, oldest
/// first; and every revoked key id, sorted.
fn trust_update(keys: &[SigningKeyRow]) -> TrustUpdate {
    let by_id: HashMap<&str, &SigningKeyRow> =
        keys.iter().map(|k| (k.key_id.as_str(), k)).collect();
    let newest = keys
        .iter()
        .find(|k| k.state == SigningKeyState::Next)
        .or_else(|| keys.iter().find(|k| k.state == SigningKeyState::Active));
    let mut links = Vec::new();
    let mut current = newest;
    while let Some(row) = current
        && links.len() < MAX_TRUST_LINKS
    {
        let (Some(by), Some(sig)) = (&row.endorsed_by, &row.endorsement_sig) else {
            break;
        };
        links.push(KeyEndorsement {
            key: row.public_key.clone(),
            key_id: row.key_id.clone(),
            endorsed_by: by.clone(),
            sig: sig.clone(),
        });
        current = by_id.get(by.as_str()).copied();
        if links
            .iter()
            .any(|l| Some(&l.key_id) == current.map(|c| &c.key_id))
        {
            break; // a loop in stored rows: never emit it
        }
    }
    links.reverse();
    let mut revoked: Vec<String> = keys
        .iter()
        .filter(|k| k.state == SigningKeyState::Revoked)
        .map(|k| k.key_id.clone())
        .collect();
    revoked.sort();
    TrustUpdate {
        keys: links,
        revoked,
    }
}

/// The audit entry of a key change, on the deployment (`signing_key`/`<key_id>`); `before`/`after` are the
/// previous and new key as `sha256:<key_id>` (the key id is the SHA-256 of the raw public key).
async fn audit(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    key_id: &str,
    before: Option<&str>,
) -> Result<gait_store::AppendedEntry, RegistryError> {
    crate::audit::append(
        tx,
        actor,
        action,
        crate::audit::scope_target(&BindingScope::deployment(), "signing_key", key_id),
        before.map(|k| format!("sha256:{k}")),
        Some(format!("sha256:{key_id}")),
    )
    .await
    .map_err(|e| match e {
        crate::audit::AuditError::Store(e) => RegistryError::Store(e),
        other => RegistryError::Audit(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u8, state: SigningKeyState, by: Option<u8>) -> SigningKeyRow {
        let key = SigningKey::from_seed(&[n; 32]);
        let link =
            by.map(|b| gait_bundle::endorse(&SigningKey::from_seed(&[b; 32]), &key.public_key()));
        SigningKeyRow {
            key_id: key.public_key().key_id(),
            public_key: key.public_key().to_gait_public_key(),
            state,
            endorsed_by: link.as_ref().map(|l| l.endorsed_by.clone()),
            endorsement_sig: link.map(|l| l.sig),
            created_unix_ms: i64::from(n),
            activate_after_unix_ms: None,
            activated_unix_ms: None,
            revoked_unix_ms: None,
            actor: "t".into(),
        }
    }

    #[test]
    fn the_chain_ends_at_the_newest_live_key_and_lists_revocations() {
        use SigningKeyState::*;
        let keys = vec![
            row(1, Retired, None),
            row(2, Revoked, Some(1)),
            row(3, Active, Some(2)),
            row(4, Next, Some(3)),
        ];
        let t = trust_update(&keys);
        let ids: Vec<&str> = t.keys.iter().map(|l| l.key_id.as_str()).collect();
        assert_eq!(ids, vec![&keys[1].key_id, &keys[2].key_id, &keys[3].key_id]);
        assert_eq!(t.revoked, vec![keys[1].key_id.clone()]);
        // Without a next key, the chain ends at the active key.
        let t = trust_update(&keys[..3]);
        assert_eq!(t.keys.last().map(|l| &l.key_id), Some(&keys[2].key_id));
    }

    gait_store::store_tests!(first_uses_at_once_adopt_the_legacy_key_once);

    /// Many first uses at once on an empty store (a publish racing the start-up refresh, or two replicas): each
    /// gets the key list, and it holds the legacy key once, active. (On PostgreSQL the losers of the race used to
    /// fail on the one-active-key index, and their requests answered 500.)
    #[allow(clippy::disallowed_methods)] // a test's racing tasks end with it
    async fn first_uses_at_once_adopt_the_legacy_key_once(
        db: &gait_store::testing::TestStore,
    ) -> Result<(), RegistryError> {
        let legacy = SigningKey::from_seed(&[7; 32]);
        let signer = std::sync::Arc::new(Signer::new(db.store().clone(), legacy.clone()));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let signer = signer.clone();
                tokio::spawn(async move { signer.keys().await })
            })
            .collect();
        for t in tasks {
            let keys = t.await.expect("task")?;
            assert_eq!(keys.len(), 1, "{keys:?}");
            assert_eq!(keys[0].key_id, legacy.public_key().key_id());
            assert_eq!(keys[0].state, SigningKeyState::Active);
        }
        Ok(())
    }

    #[tokio::test]
    async fn overlap_keeps_the_old_key_signing_and_the_active_key_cannot_be_revoked() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = SigningKey::from_seed(&[1; 32]);
        let signer = Signer::new(db.store().clone(), legacy.clone()).with_key_dir(dir.path());
        let k1 = legacy.public_key().key_id();
        let builder = || {
            let scope = gait_bundle::Scope::from_parts("acme", "web", "prod").expect("scope");
            let mut b = BundleBuilder::new(scope, 1, 4_000_000_000);
            b.created_at(1_800_000_000)
                .add_policy("p.yaml", b"default_verdict: block\n".to_vec());
            b
        };
        let now = 1_800_000_000_000;
        let next = signer.rotate(3_600_000, "t", now).await.expect("rotate");
        // During the overlap the old key signs and the bundle introduces the new one.
        let bytes = signer
            .sign(&mut builder(), now + 1, true)
            .await
            .expect("sign");
        let m = gait_bundle::inspect(&bytes).expect("inspect");
        assert_eq!(m.key_id, k1);
        assert_eq!(m.trust.keys[0].key_id, next.key_id);
        // A second rotation waits for the first.
        let again = signer.rotate(0, "t", now + 2).await.unwrap_err();
        assert!(matches!(again, RegistryError::KeyConflict(_)), "{again}");
        // After the overlap the new key signs; the old one is retired, and the active one cannot be revoked.
        let bytes = signer
            .sign(&mut builder(), now + 3_600_001, true)
            .await
            .expect("sign");
        assert_eq!(
            gait_bundle::inspect(&bytes).expect("inspect").key_id,
            next.key_id
        );
        let err = signer
            .revoke(&next.key_id, "t", now + 3_600_002)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rotate first"), "{err}");
        let revoked = signer
            .revoke(&k1, "t", now + 3_600_003)
            .await
            .expect("revoke");
        assert_eq!(revoked.state, SigningKeyState::Revoked);
        let bytes = signer
            .sign(&mut builder(), now + 3_600_004, true)
            .await
            .expect("sign");
        assert_eq!(
            gait_bundle::inspect(&bytes).expect("inspect").trust.revoked,
            vec![k1.clone()]
        );
        // Seeds are private files in a private directory.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let keys = dir.path().join(SIGNING_KEYS_DIR);
            let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(&keys), 0o700);
            assert_eq!(mode(&keys.join(format!("{}.key", next.key_id))), 0o600);
            assert_eq!(mode(&keys.join(format!("{k1}.key"))), 0o600);
        }
    }
}
