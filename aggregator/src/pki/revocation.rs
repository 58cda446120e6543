//! Revoked agent certificates: the live set of serials the QUIC handshake refuses, loaded from the store's
//! revocations and updated by `pki revoke` through it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Revoked certificate serials, shared between the handshake verifier and whoever maintains the list.
///
/// Cloning is cheap and every clone sees the same set. Serials are stored in canonical form (see
/// [`gait_identity::CertSerial::parse`]), so `AB:CD`, `0abcd` and `abcd` name the same certificate.
#[derive(Clone, Debug, Default)]
pub struct RevocationSet {
    serials: Arc<RwLock<HashSet<String>>>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `serial` revoked. Returns `false` if it was already revoked or is not a serial.
    pub fn insert(&self, serial: &str) -> bool {
        match gait_identity::CertSerial::parse(serial) {
            Ok(serial) => self.write().insert(serial.as_str().to_owned()),
            Err(_) => false,
        }
    }

    /// Replaces the whole set (e.g. after reloading it from the store). Returns whether it holds a serial it did
    /// not hold before, i.e. whether live connections need checking again.
    pub fn replace_all(&self, serials: Vec<gait_identity::CertSerial>) -> bool {
        let fresh: HashSet<String> = serials.into_iter().map(|s| s.as_str().to_owned()).collect();
        let mut current = self.write();
        let added = !fresh.is_subset(&current);
        *current = fresh;
        added
    }

    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        match gait_identity::CertSerial::parse(serial) {
            Ok(serial) => self.read().contains(serial.as_str()),
            // Not a serial of ours (e.g. longer than RFC 5280 allows): compare the text as it is.
            Err(_) => self.read().contains(serial),
        }
    }

    /// Number of revoked serials.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A panic while holding the lock cannot leave the set half-updated (every update is one call), so a
    // poisoned lock still holds a consistent set.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.serials.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.serials.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records the revocation `rev` and its audit entry (`pki.revoke` by `actor`) in one store transaction, so a
/// certificate is never revoked unaudited. Running aggregators pick the serial up at their next refresh.
pub async fn revoke(
    store: &gait_store::Store,
    rev: &gait_store::Revocation,
    actor: &str,
    now_ms: i64,
) -> Result<gait_store::AppendedEntry, crate::audit::AuditError> {
    let agent = &rev.agent;
    let mut details = serde_json::Map::new();
    details.insert("agent_id".into(), agent.agent_id.as_str().into());
    details.insert("reason".into(), rev.reason.as_str().into());
    let draft = gait_audit::EntryDraft {
        actor: actor.to_owned(),
        action: "pki.revoke".into(),
        target: crate::audit::tenant_target(&agent.tenant, "certificate", rev.cert_serial.as_str()),
        before: None,
        after: None,
        details: Some(details),
    };
    store
        .transaction(async |tx| {
            tx.revoke(rev, now_ms).await?;
            crate::audit::append_draft(tx, draft).await
        })
        .await
}
