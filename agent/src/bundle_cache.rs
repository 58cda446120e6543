//! Durable cache of verified policy bundles, in the agent's redb file: what was received, which one is
//! active, and why the last offered bundle was refused.
//!
//! # On-disk format
//! - `bundle_received`: key = epoch as 8 bytes big-endian, value = postcard `StoredBundle::V1` {epoch,
//!   digest, digest_hex, raw signed bundle bytes, received_at}.
//! - `bundle_state`: `active` -> postcard `ActivePointer::V1` {epoch, digest, activated_at};
//!   `last_refusal` -> postcard `StoredRefusal::V1` {epoch, digest, code, message, at}.
//! - `bundle_trust`: bundle signing keys learned from activated bundles' endorsement chains, `key:<key_id>` ->
//!   the raw 32-byte public key, and key ids they revoked, `revoked:<key_id>` -> when, 8 bytes big-endian ms.
//!   Written only in the commit that activates the bundle that announced them ([`BundleCache::activate_trusting`]),
//!   so a crash never leaves keys trusted from a bundle that never became active.
//!
//! Times are milliseconds since the Unix epoch on the agent's clock.
//!
//! # Rules
//! - Only bundles that `gait_bundle::verify` accepted are stored; [`BundleCache::store_received`] commits
//!   durably before it returns, so the agent may report "received" right after.
//! - [`BundleCache::activate`] flips the `active` pointer in one transaction: a crash leaves either the old
//!   or the new bundle active, never neither. The previously active bundle stays active until that commit.
//! - The cache does not judge bundles: rollback protection (never activate an older epoch without a signed
//!   rollback instruction) belongs to the caller, which knows the instruction.
//! - Stored bytes are not trusted on load: the caller re-verifies [`CachedBundle::raw`] with `gait-bundle`
//!   against its trust root and checks the digest matches before enforcing it.
//! - Two different bundles claiming one epoch are refused ([`BundleCacheError::EpochConflict`]).
//! - Pruning keeps the active bundle plus the [`KEEP_RECEIVED`] newest epochs.

use gait_wire::BundleRef;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::db::{AgentDb, DbError};

/// Largest signed bundle the cache stores: the same cap `gait_bundle::verify` applies.
pub const MAX_BUNDLE_BYTES: usize = gait_bundle::MAX_BUNDLE_LEN;
/// How many of the newest received epochs are kept besides the active one.
pub const KEEP_RECEIVED: usize = 3;
/// Refusal `code` and `message` are cut to these lengths (bytes, on a char boundary).
pub const MAX_REFUSAL_CODE: usize = 128;
pub const MAX_REFUSAL_MESSAGE: usize = 2048;

const RECEIVED: TableDefinition<'static, [u8; 8], &[u8]> = TableDefinition::new("bundle_received");
const STATE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("bundle_state");
const TRUST: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("bundle_trust");
const ACTIVE_KEY: &str = "active";
const REFUSAL_KEY: &str = "last_refusal";

/// A verified bundle as cached, with when it was received and (if it is the active one) activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBundle {
    pub epoch: u64,
    /// Bundle digest (raw bytes) as computed by `gait-bundle` when it was verified.
    pub digest: [u8; 32],
    pub digest_hex: String,
    /// The signed bundle bytes exactly as received; re-verify before use.
    pub raw: Vec<u8>,
    pub received_at_unix_ms: i64,
    /// Set only on the bundle returned by [`BundleCache::active`].
    pub activated_at_unix_ms: Option<i64>,
}

impl CachedBundle {
    /// The wire reference of this bundle, `since` = activation time if active, else receipt time.
    pub fn bundle_ref(&self) -> BundleRef {
        BundleRef {
            epoch: self.epoch,
            digest: self.digest,
            since_unix_ms: self
                .activated_at_unix_ms
                .unwrap_or(self.received_at_unix_ms),
        }
    }
}

/// Signing-key news of a bundle, persisted with its activation: keys its endorsement chain added and key ids
/// it revokes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustChange {
    /// Keys to trust from now on.
    pub added: Vec<gait_canon::sign::PublicKey>,
    /// Key ids to distrust from now on (a revoked id is never trusted again, even if a later link names it).
    pub revoked: Vec<String>,
}

impl TrustChange {
    /// The change a verified bundle announces.
    pub fn of(bundle: &gait_bundle::VerifiedBundle) -> Self {
        TrustChange {
            added: bundle.trust_added.clone(),
            revoked: bundle.revoked.clone(),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.revoked.is_empty()
    }
}

/// The persisted trust additions and revocations (`bundle_trust`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistedTrust {
    /// Keys learned from activated bundles, revoked ones excluded.
    pub added: Vec<gait_canon::sign::PublicKey>,
    /// Revoked key ids.
    pub revoked: std::collections::BTreeSet<String>,
}

/// Why an offered bundle was refused (kept for status and the next `BundleReport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRefusal {
    pub epoch: u64,
    pub digest: [u8; 32],
    /// Stable machine code, e.g. `gait_bundle` error codes.
    pub code: String,
    pub message: String,
    pub at_unix_ms: i64,
}

impl BundleRefusal {
    /// The wire form (drops the timestamp).
    pub fn to_wire(&self) -> gait_wire::Refusal {
        gait_wire::Refusal {
            epoch: self.epoch,
            digest: self.digest,
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleCacheError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// `activate` named an epoch that was never stored (or was pruned).
    #[error(
        "bundle epoch {epoch} is not in the cache: store it with store_received before activating it"
    )]
    NotReceived { epoch: u64 },
    /// A different bundle is already stored under this epoch.
    #[error(
        "bundle epoch {epoch} is already cached with digest {stored_hex}, refusing a different bundle \
         {offered_hex} for the same epoch: the registry must publish a new epoch"
    )]
    EpochConflict {
        epoch: u64,
        stored_hex: String,
        offered_hex: String,
    },
    /// The signed bundle is larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle epoch {epoch} is {size} bytes, over the cache limit of {max} bytes")]
    TooLarge { epoch: u64, size: usize, max: usize },
    /// A cached value does not decode.
    #[error(
        "bundle cache in {path} is damaged ({detail}): the agent will pull its bundle again; if it \
         persists, move the file aside"
    )]
    Corrupt { path: String, detail: String },
}

impl BundleCacheError {
    /// True when retrying later may succeed (transient storage I/O only).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BundleCacheError::Db(e) if e.is_retryable())
    }
}

#[derive(Serialize, Deserialize)]
enum StoredBundle {
    V1(StoredBundleV1),
}

#[derive(Serialize, Deserialize)]
struct StoredBundleV1 {
    epoch: u64,
    digest: [u8; 32],
    digest_hex: String,
    raw: Vec<u8>,
    received_at_unix_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
enum ActivePointer {
    V1 {
        epoch: u64,
        digest: [u8; 32],
        activated_at_unix_ms: i64,
    },
}

#[derive(Serialize, Deserialize)]
enum StoredRefusal {
    V1(BundleRefusal),
}

/// Handle to the bundle cache; clone freely.
#[derive(Debug, Clone)]
pub struct BundleCache {
    db: AgentDb,
}

impl BundleCache {
    /// Opens (creating on first use) the cache tables in `db`.
    pub fn open(db: &AgentDb) -> Result<Self, BundleCacheError> {
        let this = BundleCache { db: db.clone() };
        let txn = this.begin_write()?;
        txn.open_table(RECEIVED).map_err(|e| this.db_err(e))?;
        txn.open_table(STATE).map_err(|e| this.db_err(e))?;
        txn.commit().map_err(|e| this.db_err(e))?;
        Ok(this)
    }

    /// Durably stores a bundle that `gait_bundle::verify` accepted. Storing the same bundle again is a
    /// no-op that returns the original entry.
    pub fn store_received(
        &self,
        bundle: &gait_bundle::VerifiedBundle,
        now_unix_ms: i64,
    ) -> Result<CachedBundle, BundleCacheError> {
        self.store(
            bundle.manifest.epoch,
            bundle.digest,
            &bundle.digest_hex,
            &bundle.raw,
            now_unix_ms,
        )
    }

    fn store(
        &self,
        epoch: u64,
        digest: [u8; 32],
        digest_hex: &str,
        raw: &[u8],
        now_unix_ms: i64,
    ) -> Result<CachedBundle, BundleCacheError> {
        if raw.len() > MAX_BUNDLE_BYTES {
            return Err(BundleCacheError::TooLarge {
                epoch,
                size: raw.len(),
                max: MAX_BUNDLE_BYTES,
            });
        }
        let txn = self.begin_write()?;
        let stored = {
            let mut received = txn.open_table(RECEIVED).map_err(|e| self.db_err(e))?;
            let existing = match received
                .get(epoch.to_be_bytes())
                .map_err(|e| self.db_err(e))?
            {
                Some(v) => Some(self.decode_bundle(v.value())?),
                None => None,
            };
            if let Some(existing) = existing {
                if existing.digest != digest {
                    return Err(BundleCacheError::EpochConflict {
                        epoch,
                        stored_hex: existing.digest_hex,
                        offered_hex: digest_hex.to_string(),
                    });
                }
                return Ok(existing);
            }
            let entry = StoredBundleV1 {
                epoch,
                digest,
                digest_hex: digest_hex.to_string(),
                raw: raw.to_vec(),
                received_at_unix_ms: now_unix_ms,
            };
            let value = postcard::to_allocvec(&StoredBundle::V1(entry))
                .map_err(|e| self.corrupt(format!("cannot encode bundle: {e}")))?;
            received
                .insert(epoch.to_be_bytes(), value.as_slice())
                .map_err(|e| self.db_err(e))?;
            let state = txn.open_table(STATE).map_err(|e| self.db_err(e))?;
            let active = self.read_active(&state)?.map(|(epoch, _, _)| epoch);
            self.prune(&mut received, active)?;
            CachedBundle {
                epoch,
                digest,
                digest_hex: digest_hex.to_string(),
                raw: raw.to_vec(),
                received_at_unix_ms: now_unix_ms,
                activated_at_unix_ms: None,
            }
        };
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(stored)
    }

    /// Makes the cached bundle `epoch` the active one, in one durable transaction. Activating the bundle
    /// that is already active is a no-op that keeps its original activation time.
    pub fn activate(&self, epoch: u64, now_unix_ms: i64) -> Result<CachedBundle, BundleCacheError> {
        self.activate_trusting(epoch, now_unix_ms, &TrustChange::default())
    }

    /// [`activate`](Self::activate), persisting the bundle's trust change in the same commit.
    pub fn activate_trusting(
        &self,
        epoch: u64,
        now_unix_ms: i64,
        trust: &TrustChange,
    ) -> Result<CachedBundle, BundleCacheError> {
        let txn = self.begin_write()?;
        let activated = {
            let received = txn.open_table(RECEIVED).map_err(|e| self.db_err(e))?;
            let mut state = txn.open_table(STATE).map_err(|e| self.db_err(e))?;
            let entry = match received
                .get(epoch.to_be_bytes())
                .map_err(|e| self.db_err(e))?
            {
                Some(v) => self.decode_bundle(v.value())?,
                None => return Err(BundleCacheError::NotReceived { epoch }),
            };
            if let Some((e, d, at)) = self.read_active(&state)?
                && e == epoch
                && d == entry.digest
            {
                return Ok(CachedBundle {
                    activated_at_unix_ms: Some(at),
                    ..entry
                });
            }
            let pointer = ActivePointer::V1 {
                epoch,
                digest: entry.digest,
                activated_at_unix_ms: now_unix_ms,
            };
            let value = postcard::to_allocvec(&pointer)
                .map_err(|e| self.corrupt(format!("cannot encode active pointer: {e}")))?;
            state
                .insert(ACTIVE_KEY, value.as_slice())
                .map_err(|e| self.db_err(e))?;
            if !trust.is_empty() {
                let mut table = txn.open_table(TRUST).map_err(|e| self.db_err(e))?;
                for id in &trust.revoked {
                    let key = format!("revoked:{id}");
                    if table
                        .get(key.as_str())
                        .map_err(|e| self.db_err(e))?
                        .is_none()
                    {
                        table
                            .insert(key.as_str(), now_unix_ms.to_be_bytes().as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                    table
                        .remove(format!("key:{id}").as_str())
                        .map_err(|e| self.db_err(e))?;
                }
                for key in &trust.added {
                    let id = key.key_id();
                    if !trust.revoked.contains(&id) {
                        table
                            .insert(format!("key:{id}").as_str(), key.as_bytes().as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                }
            }
            CachedBundle {
                activated_at_unix_ms: Some(now_unix_ms),
                ..entry
            }
        };
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(activated)
    }

    /// The trust additions and revocations of every bundle activated so far.
    pub fn persisted_trust(&self) -> Result<PersistedTrust, BundleCacheError> {
        let read = self.db.redb().begin_read().map_err(|e| self.db_err(e))?;
        let table = match read.open_table(TRUST) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(PersistedTrust::default()),
            Err(e) => return Err(self.db_err(e)),
        };
        let mut out = PersistedTrust::default();
        for row in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let (k, v) = (k.value(), v.value());
            if let Some(id) = k.strip_prefix("revoked:") {
                out.revoked.insert(id.to_owned());
            } else if let Some(id) = k.strip_prefix("key:") {
                let key = gait_canon::sign::PublicKey::from_bytes(v)
                    .ok()
                    .filter(|key| key.key_id() == id)
                    .ok_or_else(|| self.corrupt(format!("bundle_trust: key {id} is damaged")))?;
                out.added.push(key);
            } else {
                return Err(self.corrupt(format!("bundle_trust: unknown entry {k:?}")));
            }
        }
        out.added.retain(|k| !out.revoked.contains(&k.key_id()));
        Ok(out)
    }

    /// The active bundle, if one was ever activated.
    pub fn active(&self) -> Result<Option<CachedBundle>, BundleCacheError> {
        let read = self.db.redb().begin_read().map_err(|e| self.db_err(e))?;
        let state = read.open_table(STATE).map_err(|e| self.db_err(e))?;
        let Some((epoch, digest, at)) = self.read_active(&state)? else {
            return Ok(None);
        };
        let received = read.open_table(RECEIVED).map_err(|e| self.db_err(e))?;
        let Some(v) = received
            .get(epoch.to_be_bytes())
            .map_err(|e| self.db_err(e))?
        else {
            return Err(self.corrupt(format!("active epoch {epoch} has no cached bundle")));
        };
        let entry = self.decode_bundle(v.value())?;
        if entry.digest != digest {
            return Err(self.corrupt(format!("active epoch {epoch} points at a different digest")));
        }
        Ok(Some(CachedBundle {
            activated_at_unix_ms: Some(at),
            ..entry
        }))
    }

    /// The newest received bundle (highest epoch), active or not.
    pub fn received(&self) -> Result<Option<CachedBundle>, BundleCacheError> {
        let read = self.db.redb().begin_read().map_err(|e| self.db_err(e))?;
        let received = read.open_table(RECEIVED).map_err(|e| self.db_err(e))?;
        let Some((_, v)) = received.last().map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        let mut entry = self.decode_bundle(v.value())?;
        let state = read.open_table(STATE).map_err(|e| self.db_err(e))?;
        if let Some((epoch, digest, at)) = self.read_active(&state)?
            && epoch == entry.epoch
            && digest == entry.digest
        {
            entry.activated_at_unix_ms = Some(at);
        }
        Ok(Some(entry))
    }

    /// Durably records why an offered bundle was refused, replacing the previous refusal. Long codes and
    /// messages are cut to [`MAX_REFUSAL_CODE`] / [`MAX_REFUSAL_MESSAGE`] bytes.
    pub fn record_refusal(&self, refusal: &BundleRefusal) -> Result<(), BundleCacheError> {
        let stored = BundleRefusal {
            code: truncate(&refusal.code, MAX_REFUSAL_CODE),
            message: truncate(&refusal.message, MAX_REFUSAL_MESSAGE),
            ..refusal.clone()
        };
        let value = postcard::to_allocvec(&StoredRefusal::V1(stored))
            .map_err(|e| self.corrupt(format!("cannot encode refusal: {e}")))?;
        let txn = self.begin_write()?;
        {
            let mut state = txn.open_table(STATE).map_err(|e| self.db_err(e))?;
            state
                .insert(REFUSAL_KEY, value.as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// The most recent refusal, if any.
    pub fn last_refusal(&self) -> Result<Option<BundleRefusal>, BundleCacheError> {
        let read = self.db.redb().begin_read().map_err(|e| self.db_err(e))?;
        let state = read.open_table(STATE).map_err(|e| self.db_err(e))?;
        let Some(v) = state.get(REFUSAL_KEY).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        match postcard::from_bytes::<StoredRefusal>(v.value()) {
            Ok(StoredRefusal::V1(r)) => Ok(Some(r)),
            Err(e) => Err(self.corrupt(format!("last refusal does not decode: {e}"))),
        }
    }

    /// Epochs currently cached, ascending.
    pub fn cached_epochs(&self) -> Result<Vec<u64>, BundleCacheError> {
        let read = self.db.redb().begin_read().map_err(|e| self.db_err(e))?;
        let received = read.open_table(RECEIVED).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in received.iter().map_err(|e| self.db_err(e))? {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            out.push(u64::from_be_bytes(k.value()));
        }
        Ok(out)
    }

    /// Deletes received bundles beyond the [`KEEP_RECEIVED`] newest, never the active one.
    fn prune(
        &self,
        received: &mut redb::Table<'_, [u8; 8], &'static [u8]>,
        active: Option<u64>,
    ) -> Result<(), BundleCacheError> {
        let mut kept = 0usize;
        let mut doomed = Vec::new();
        for entry in received.iter().map_err(|e| self.db_err(e))?.rev() {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            let epoch = u64::from_be_bytes(k.value());
            if Some(epoch) == active {
                continue;
            }
            if kept < KEEP_RECEIVED {
                kept += 1;
            } else {
                doomed.push(epoch);
            }
        }
        for epoch in doomed {
            received
                .remove(epoch.to_be_bytes())
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    fn read_active<T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        state: &T,
    ) -> Result<Option<(u64, [u8; 32], i64)>, BundleCacheError> {
        let Some(v) = state.get(ACTIVE_KEY).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        match postcard::from_bytes::<ActivePointer>(v.value()) {
            Ok(ActivePointer::V1 {
                epoch,
                digest,
                activated_at_unix_ms,
            }) => Ok(Some((epoch, digest, activated_at_unix_ms))),
            Err(e) => Err(self.corrupt(format!("active pointer does not decode: {e}"))),
        }
    }

    fn decode_bundle(&self, bytes: &[u8]) -> Result<CachedBundle, BundleCacheError> {
        match postcard::from_bytes::<StoredBundle>(bytes) {
            Ok(StoredBundle::V1(b)) => Ok(CachedBundle {
                epoch: b.epoch,
                digest: b.digest,
                digest_hex: b.digest_hex,
                raw: b.raw,
                received_at_unix_ms: b.received_at_unix_ms,
                activated_at_unix_ms: None,
            }),
            Err(e) => Err(self.corrupt(format!("cached bundle does not decode: {e}"))),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, BundleCacheError> {
        self.db.redb().begin_write().map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> BundleCacheError {
        BundleCacheError::Db(self.db.err(e))
    }

    fn corrupt(&self, detail: String) -> BundleCacheError {
        BundleCacheError::Corrupt {
            path: self.db.path().display().to_string(),
            detail,
        }
    }
}

/// `s` cut to at most `max` bytes on a char boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> (AgentDb, BundleCache) {
        let db = AgentDb::open(path).unwrap();
        let cache = BundleCache::open(&db).unwrap();
        (db, cache)
    }

    fn put(
        cache: &BundleCache,
        epoch: u64,
        tag: u8,
        now: i64,
    ) -> Result<CachedBundle, BundleCacheError> {
        let digest = [tag; 32];
        cache.store(epoch, digest, &hex::encode(digest), &[tag; 100], now)
    }

    #[test]
    fn a_received_bundle_is_not_active_until_activated_and_both_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let (_db, cache) = open(&path);
            assert_eq!(cache.active().unwrap(), None);
            assert_eq!(cache.received().unwrap(), None);
            put(&cache, 1, 0xa1, 1000).unwrap();
            assert_eq!(cache.active().unwrap(), None);
            let received = cache.received().unwrap().unwrap();
            assert_eq!((received.epoch, received.received_at_unix_ms), (1, 1000));
            assert_eq!(received.activated_at_unix_ms, None);
            let active = cache.activate(1, 2000).unwrap();
            assert_eq!(active.activated_at_unix_ms, Some(2000));
        }
        let (_db, cache) = open(&path);
        let active = cache.active().unwrap().unwrap();
        assert_eq!(active.epoch, 1);
        assert_eq!(active.raw, vec![0xa1; 100]);
        assert_eq!(active.digest_hex, hex::encode([0xa1; 32]));
        assert_eq!(active.bundle_ref().since_unix_ms, 2000);
        assert_eq!(
            cache.received().unwrap().unwrap().activated_at_unix_ms,
            Some(2000)
        );
    }

    #[test]
    fn the_previous_bundle_stays_active_until_the_new_one_is_activated() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, cache) = open(&dir.path().join("agent.redb"));
        put(&cache, 1, 1, 10).unwrap();
        cache.activate(1, 11).unwrap();
        put(&cache, 2, 2, 20).unwrap();
        assert_eq!(cache.active().unwrap().unwrap().epoch, 1);
        assert_eq!(cache.received().unwrap().unwrap().epoch, 2);
        cache.activate(2, 21).unwrap();
        assert_eq!(cache.active().unwrap().unwrap().epoch, 2);
        // Re-activating keeps the original activation time.
        assert_eq!(
            cache.activate(2, 99).unwrap().activated_at_unix_ms,
            Some(21)
        );
        assert_eq!(
            cache.active().unwrap().unwrap().activated_at_unix_ms,
            Some(21)
        );
    }

    #[test]
    fn activating_an_unknown_epoch_fails_and_leaves_the_active_bundle_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, cache) = open(&dir.path().join("agent.redb"));
        put(&cache, 4, 4, 10).unwrap();
        cache.activate(4, 11).unwrap();
        let err = cache.activate(5, 12).unwrap_err();
        assert!(
            matches!(err, BundleCacheError::NotReceived { epoch: 5 }),
            "{err:?}"
        );
        assert_eq!(cache.active().unwrap().unwrap().epoch, 4);
    }

    #[test]
    fn a_different_bundle_for_a_cached_epoch_is_refused_and_the_same_one_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, cache) = open(&dir.path().join("agent.redb"));
        put(&cache, 3, 3, 10).unwrap();
        let again = put(&cache, 3, 3, 50).unwrap();
        assert_eq!(again.received_at_unix_ms, 10);
        let err = put(&cache, 3, 9, 60).unwrap_err();
        assert!(
            matches!(err, BundleCacheError::EpochConflict { epoch: 3, .. }),
            "{err:?}"
        );
        assert_eq!(cache.received().unwrap().unwrap().digest, [3; 32]);
    }

    #[test]
    fn pruning_keeps_the_newest_epochs_and_always_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, cache) = open(&dir.path().join("agent.redb"));
        put(&cache, 1, 1, 1).unwrap();
        cache.activate(1, 1).unwrap();
        for epoch in 2..=6 {
            put(&cache, epoch, epoch as u8, epoch as i64).unwrap();
        }
        assert_eq!(cache.cached_epochs().unwrap(), vec![1, 4, 5, 6]);
        assert_eq!(cache.active().unwrap().unwrap().epoch, 1);
        cache.activate(6, 7).unwrap();
        put(&cache, 7, 7, 8).unwrap();
        assert_eq!(cache.cached_epochs().unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(cache.active().unwrap().unwrap().epoch, 6);
    }

    #[test]
    fn an_oversized_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, cache) = open(&dir.path().join("agent.redb"));
        let raw = vec![0; MAX_BUNDLE_BYTES + 1];
        let err = cache.store(1, [0; 32], "00", &raw, 0).unwrap_err();
        assert!(matches!(err, BundleCacheError::TooLarge { .. }), "{err:?}");
        assert_eq!(cache.received().unwrap(), None);
    }

    #[test]
    fn the_last_refusal_is_kept_across_reopen_with_long_text_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let (_db, cache) = open(&path);
            assert_eq!(cache.last_refusal().unwrap(), None);
            let first = BundleRefusal {
                epoch: 8,
                digest: [8; 32],
                code: "bundle_signature_invalid".into(),
                message: "signature does not verify".into(),
                at_unix_ms: 5,
            };
            cache.record_refusal(&first).unwrap();
            assert_eq!(cache.last_refusal().unwrap(), Some(first));
            cache
                .record_refusal(&BundleRefusal {
                    epoch: 9,
                    digest: [9; 32],
                    code: "c".repeat(500),
                    message: "é".repeat(MAX_REFUSAL_MESSAGE),
                    at_unix_ms: 6,
                })
                .unwrap();
        }
        let (_db, cache) = open(&path);
        let last = cache.last_refusal().unwrap().unwrap();
        assert_eq!((last.epoch, last.at_unix_ms), (9, 6));
        assert_eq!(last.code.len(), MAX_REFUSAL_CODE);
        assert!(
            last.message.len() <= MAX_REFUSAL_MESSAGE && last.message.chars().all(|c| c == 'é')
        );
        assert_eq!(last.to_wire().epoch, 9);
    }

    #[test]
    fn a_really_signed_bundle_round_trips_and_its_cached_bytes_verify_again_after_reopen() {
        use gait_bundle::{BundleBuilder, Scope, TrustRoot};
        use gait_canon::sign::SigningKey;

        let key = SigningKey::from_seed(&[7; 32]);
        let trust = TrustRoot::from_public_keys(vec![key.public_key()]);
        let scope = Scope::from_parts("acme", "payments", "prod").unwrap();
        let now = 1_800_000_000;
        let raw = BundleBuilder::new(scope.clone(), 5, now + 3600)
            .created_at(now - 60)
            .add_policy("base.yaml", b"default_verdict: block\n".to_vec())
            .sign(&key)
            .unwrap();
        let verified = gait_bundle::verify(&raw, &trust, &scope, None, now).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let (_db, cache) = open(&path);
            let stored = cache.store_received(&verified, now * 1000).unwrap();
            assert_eq!((stored.epoch, stored.digest), (5, verified.digest));
            cache.activate(5, now * 1000 + 1).unwrap();
        }
        let (_db, cache) = open(&path);
        let active = cache.active().unwrap().unwrap();
        let again = gait_bundle::verify(&active.raw, &trust, &scope, None, now).unwrap();
        assert_eq!(again.digest, active.digest);
        assert_eq!(again.digest_hex, active.digest_hex);
        assert_eq!(again.manifest.epoch, active.epoch);
    }

    #[test]
    fn a_damaged_active_pointer_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (db, cache) = open(&dir.path().join("agent.redb"));
        put(&cache, 1, 1, 1).unwrap();
        cache.activate(1, 1).unwrap();
        let txn = db.redb().begin_write().unwrap();
        txn.open_table(STATE)
            .unwrap()
            .insert(ACTIVE_KEY, &b"\xff\xff\xff"[..])
            .unwrap();
        txn.commit().unwrap();
        let err = cache.active().unwrap_err();
        assert!(matches!(err, BundleCacheError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("agent.redb"), "{err}");
    }

    #[test]
    fn trust_changes_persist_only_with_an_activation_and_revocations_win() {
        use gait_canon::sign::SigningKey;
        let (k2, k3) = (
            SigningKey::from_seed(&[2; 32]).public_key(),
            SigningKey::from_seed(&[3; 32]).public_key(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let (_db, cache) = open(&path);
            assert_eq!(cache.persisted_trust().unwrap(), PersistedTrust::default());
            put(&cache, 1, 1, 10).unwrap();
            let change = TrustChange {
                added: vec![k2, k3],
                revoked: vec![],
            };
            // Activating an epoch that was never stored fails, and nothing of its trust is kept.
            assert!(cache.activate_trusting(9, 11, &change).is_err());
            assert!(cache.persisted_trust().unwrap().added.is_empty());
            cache.activate_trusting(1, 11, &change).unwrap();
            put(&cache, 2, 2, 20).unwrap();
            cache
                .activate_trusting(
                    2,
                    21,
                    &TrustChange {
                        added: vec![],
                        revoked: vec![k2.key_id()],
                    },
                )
                .unwrap();
        }
        let (_db, cache) = open(&path);
        let trust = cache.persisted_trust().unwrap();
        assert_eq!(trust.added, vec![k3]);
        assert_eq!(
            trust.revoked.into_iter().collect::<Vec<_>>(),
            vec![k2.key_id()]
        );
    }
}
