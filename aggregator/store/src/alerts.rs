//! The agent identity domain: which agent data directory (instance id) last spoke for each identity, the
//! durable count of conflicting records per identity, and `agent_alerts`, one row per identity alert (a
//! second live instance refused, or a new instance behind the committed head). Portable SQL only.

use serde::Serialize;

use crate::conn::{Conn, agent_where, bind_key, db_run};
use crate::error::{StoreError, db};
use crate::model::{AgentKey, Tenant, check_label, to_u64, truncate_utf8};
use crate::rows::Columns;

/// Longest alert detail stored, in bytes (longer text is cut at a character boundary).
pub const MAX_ALERT_DETAIL_BYTES: usize = 1024;
/// Most alerts one listing returns (newest first).
pub const MAX_ALERTS_PAGE: u32 = 1000;

/// What kind of identity alert a row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A second instance of a connected identity was refused.
    DuplicateInstance,
    /// A new instance arrived with `last_seq` behind the committed head: a wiped or copied data directory
    /// reusing a certificate; its records at already committed seqs will conflict.
    InstanceBehind,
}

impl AlertKind {
    /// Stable snake_case name (stored, logged, shown).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::DuplicateInstance => "duplicate_instance",
            AlertKind::InstanceBehind => "instance_behind",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [AlertKind::DuplicateInstance, AlertKind::InstanceBehind]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An alert to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAgentAlert {
    /// What happened.
    pub kind: AlertKind,
    /// The instance id the alert is about (the refused or the new instance), 32 hex digits.
    pub instance_id: String,
    /// The other instance id (the live session's, or the last known one), 32 hex digits or empty.
    pub other_instance_id: String,
    /// Peer address of `instance_id`'s connection.
    pub remote_addr: String,
    /// Peer address of the other instance's connection, or empty when unknown.
    pub other_remote_addr: String,
    /// Human-readable detail (cut to [`MAX_ALERT_DETAIL_BYTES`]).
    pub detail: String,
}

/// A stored alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentAlert {
    /// Row id, increasing with time.
    pub id: u64,
    /// The agent the alert is about.
    pub agent: AgentKey,
    /// What happened.
    pub kind: AlertKind,
    /// See [`NewAgentAlert::instance_id`].
    pub instance_id: String,
    /// See [`NewAgentAlert::other_instance_id`].
    pub other_instance_id: String,
    /// See [`NewAgentAlert::remote_addr`].
    pub remote_addr: String,
    /// See [`NewAgentAlert::other_remote_addr`].
    pub other_remote_addr: String,
    /// See [`NewAgentAlert::detail`].
    pub detail: String,
    /// When it was stored, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

/// What the store knew of an identity before an instance said hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceChange {
    /// The instance id stored before this call (`None` when no instance had said hello).
    pub previous: Option<String>,
    /// The identity's committed seq.
    pub committed_seq: u64,
    /// Records not stored because a different record held their seq, over the identity's life.
    pub conflict_count: u64,
}

fn check_instance(field: &str, id: &str) -> Result<(), StoreError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StoreError::invalid(field, "must be 32 hex digits"))
    }
}

/// Stores `instance_id` as the identity's current instance and returns what was stored before. Run inside a
/// transaction so read and write see the same row. [`StoreError::UnknownAgent`] when the agent has no row.
pub(crate) async fn note_instance(
    mut conn: Conn<'_>,
    key: &AgentKey,
    instance_id: &str,
) -> Result<InstanceChange, StoreError> {
    const READ: &str = concat!(
        "SELECT instance_id, committed_seq, conflict_count FROM agents",
        agent_where!()
    );
    const WRITE: &str = concat!("UPDATE agents SET instance_id = $5", agent_where!());
    check_instance("instance_id", instance_id)?;
    let found = db_run!(conn, |c| bind_key(sqlx::query(READ), key)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("note_instance: read"))?
        .map(|row| -> Result<_, StoreError> {
            Ok((
                row.text("instance_id")?,
                row.int("committed_seq")?,
                row.int("conflict_count")?,
            ))
        })
        .transpose()?);
    let Some((previous, committed, conflicts)) = found else {
        return Err(StoreError::UnknownAgent {
            agent: key.to_string(),
        });
    };
    if previous != instance_id {
        db_run!(conn, |c| bind_key(sqlx::query(WRITE), key)
            .bind(instance_id)
            .execute(&mut *c)
            .await
            .map_err(db("note_instance: write"))?
            .rows_affected());
    }
    Ok(InstanceChange {
        previous: (!previous.is_empty()).then_some(previous),
        committed_seq: to_u64("agents", "committed_seq", committed)?,
        conflict_count: to_u64("agents", "conflict_count", conflicts)?,
    })
}

/// Stores one alert. [`StoreError::UnknownAgent`] when the agent has no row.
pub(crate) async fn record(
    mut conn: Conn<'_>,
    key: &AgentKey,
    alert: &NewAgentAlert,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO agent_alerts (org, project, env, agent_id, kind, instance_id, other_instance_id, \
         remote_addr, other_remote_addr, detail, created_unix_ms) \
         SELECT org, project, env, agent_id, $5, $6, $7, $8, $9, $10, $11 FROM agents",
        agent_where!()
    );
    check_instance("alert.instance_id", &alert.instance_id)?;
    if !alert.other_instance_id.is_empty() {
        check_instance("alert.other_instance_id", &alert.other_instance_id)?;
    }
    check_label("alert.remote_addr", &alert.remote_addr)?;
    let written = db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
        .bind(alert.kind.as_str())
        .bind(alert.instance_id.as_str())
        .bind(alert.other_instance_id.as_str())
        .bind(truncate_utf8(&alert.remote_addr, 128))
        .bind(truncate_utf8(&alert.other_remote_addr, 128))
        .bind(truncate_utf8(&alert.detail, MAX_ALERT_DETAIL_BYTES))
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("record_alert"))?
        .rows_affected());
    if written == 0 {
        return Err(StoreError::UnknownAgent {
            agent: key.to_string(),
        });
    }
    Ok(())
}

/// The tenant's alerts, newest first, at most `limit` (clamped to [`MAX_ALERTS_PAGE`]).
pub(crate) async fn list(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    limit: u32,
) -> Result<Vec<AgentAlert>, StoreError> {
    const SQL: &str = "SELECT id, org, project, env, agent_id, kind, instance_id, other_instance_id, \
         remote_addr, other_remote_addr, detail, created_unix_ms FROM agent_alerts \
         WHERE org = $1 AND project = $2 AND env = $3 ORDER BY id DESC LIMIT $4";
    let limit = i64::from(limit.clamp(1, MAX_ALERTS_PAGE));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("agent_alerts"))?;
        found.iter().map(|row| alert_row(row, tenant)).collect()
    })
}

fn alert_row(row: &impl Columns, tenant: &Tenant) -> Result<AgentAlert, StoreError> {
    const T: &str = "agent_alerts";
    let kind = row.text("kind")?;
    let agent_id = row.text("agent_id")?;
    Ok(AgentAlert {
        id: to_u64(T, "id", row.int("id")?)?,
        agent: AgentKey {
            tenant: tenant.clone(),
            agent_id: agent_id
                .parse()
                .map_err(|_| StoreError::corrupt(T, format!("agent_id {agent_id:?} is invalid")))?,
        },
        kind: AlertKind::parse(&kind)
            .ok_or_else(|| StoreError::corrupt(T, format!("unknown kind {kind:?}")))?,
        instance_id: row.text("instance_id")?,
        other_instance_id: row.text("other_instance_id")?,
        remote_addr: row.text("remote_addr")?,
        other_remote_addr: row.text("other_remote_addr")?,
        detail: row.text("detail")?,
        created_unix_ms: row.int("created_unix_ms")?,
    })
}
