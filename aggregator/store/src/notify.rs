//! Change notifications between aggregator replicas sharing one PostgreSQL database.
//!
//! A publish and a revocation each send a PostgreSQL `NOTIFY` inside their own transaction, so it is delivered
//! exactly when (and only if) the change commits, to every replica listening. A replica's [`ChangeListener`]
//! turns them into [`Change`]s: the registry reloads the scope and wakes its long-polls, ingest reloads the
//! revocation list and closes revoked connections. A publish through replica A therefore reaches the agents
//! connected to replica B in one notification round trip, not at B's next poll.
//!
//! Notifications are not durable: while a listener's connection is down, changes are missed. The listener
//! then reports [`Change::Resync`] after it reconnected, and the replica re-reads everything it serves (the
//! same re-read a slow periodic fallback does). On SQLite there is one process per database and no listener.

use sqlx::postgres::PgListener;

use crate::Store;
use crate::Tenant;
use crate::conn::Conn;
use crate::error::{StoreError, db};

/// Channel of bundle publishes; the payload is the scope as a JSON array `[org, project, env]`.
pub const BUNDLES_CHANNEL: &str = "gait_bundles";
/// Channel of certificate revocations; no payload.
pub const REVOCATIONS_CHANNEL: &str = "gait_revocations";

/// A change another replica (or an operator command on the database) committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A bundle was published for this scope.
    Bundle(Tenant),
    /// A certificate was revoked.
    Revocation,
    /// Notifications may have been missed (the listener reconnected): re-read everything.
    Resync,
}

/// Sends `channel` with `payload` inside the caller's transaction (PostgreSQL; nothing on SQLite).
pub(crate) async fn notify(conn: Conn<'_>, channel: &str, payload: &str) -> Result<(), StoreError> {
    if let Conn::Postgres(c) = conn {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *c)
            .await
            .map_err(db("notify"))?;
    }
    Ok(())
}

/// The payload of a bundle notification.
pub(crate) fn scope_payload(tenant: &Tenant) -> String {
    serde_json::json!([
        tenant.org.as_str(),
        tenant.project.as_str(),
        tenant.env.as_str()
    ])
    .to_string()
}

fn parse_scope(payload: &str) -> Option<Tenant> {
    let [org, project, env]: [String; 3] = serde_json::from_str(payload).ok()?;
    Tenant::from_parts(&org, &project, &env).ok()
}

/// A replica's subscription to [`Change`]s (PostgreSQL only).
pub struct ChangeListener {
    inner: PgListener,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// The next change. A lost connection is re-established (by the underlying listener) and reported as
    /// [`Change::Resync`]; an unparsable payload also reads as a resync rather than being dropped.
    pub async fn next(&mut self) -> Result<Change, StoreError> {
        match self.inner.try_recv().await.map_err(db("listen"))? {
            None => Ok(Change::Resync),
            Some(n) if n.channel() == BUNDLES_CHANNEL => {
                Ok(parse_scope(n.payload()).map_or(Change::Resync, Change::Bundle))
            }
            Some(n) if n.channel() == REVOCATIONS_CHANNEL => Ok(Change::Revocation),
            Some(_) => Ok(Change::Resync),
        }
    }
}

impl Store {
    /// Listens for changes committed by other replicas; `None` on SQLite (one process per database).
    pub async fn listen_for_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(pg) => {
                let mut inner = PgListener::connect_with(pg.pool())
                    .await
                    .map_err(db("listen: connect"))?;
                inner
                    .listen_all([BUNDLES_CHANNEL, REVOCATIONS_CHANNEL])
                    .await
                    .map_err(db("listen"))?;
                Ok(Some(ChangeListener { inner }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_payloads_round_trip_and_garbage_is_not_a_scope() {
        let t = Tenant::from_parts("acme", "web", "prod").unwrap();
        assert_eq!(parse_scope(&scope_payload(&t)), Some(t));
        for bad in [
            "",
            "[]",
            "[\"a\",\"b\"]",
            "[\"a\",\"b\",\"c\",\"d\"]",
            "{}",
            "[\"Bad Org\",\"b\",\"c\"]",
        ] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
    }
}
