//! Leadership for periodic work that must run once per deployment (the rollout controller), however many
//! aggregator replicas share the database.
//!
//! On PostgreSQL a lease is a session advisory lock held on a **dedicated** connection, never a pooled one: a
//! session lock taken on a pooled connection would stay held by whichever task borrows that connection next.
//! Dropping the lease closes the connection, which releases the lock; a replica that dies loses it when
//! PostgreSQL notices the closed socket. On SQLite one process owns the database file, so the lease is always
//! granted.
//!
//! A lease is a hint, not a fence: the holder must still make every change conditional (the rollouts'
//! `version` compare-and-set), because between [`LeaderLease::still_held`] and a write the lock can be lost.

use sqlx::{Connection, PgConnection};

use crate::error::{StoreError, db};

/// Leadership of one named job; see the module docs.
#[derive(Debug)]
pub struct LeaderLease {
    name: String,
    conn: Option<PgConnection>,
}

impl LeaderLease {
    /// The job this lease leads.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lease still holds: one round trip on its connection (PostgreSQL), always on SQLite. A
    /// failed probe means the lock may be gone: stop leading and call [`crate::Store::try_lead`] again.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok(),
        }
    }

    /// Releases the lock now (dropping the lease also does, when the connection closes).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl crate::Store {
    /// Tries to become the leader of job `name` in this deployment; `None` while another replica leads it.
    pub async fn try_lead(&self, name: &str) -> Result<Option<LeaderLease>, StoreError> {
        match self {
            crate::Store::Sqlite(_) => Ok(Some(LeaderLease {
                name: name.to_owned(),
                conn: None,
            })),
            crate::Store::Postgres(pg) => {
                let mut conn = PgConnection::connect_with(&pg.connect_options())
                    .await
                    .map_err(db("try_lead: connect"))?;
                let got: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(format!("gait.leader.{name}"))
                        .fetch_one(&mut conn)
                        .await
                        .map_err(db("try_lead: lock"))?;
                if got {
                    Ok(Some(LeaderLease {
                        name: name.to_owned(),
                        conn: Some(conn),
                    }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}
