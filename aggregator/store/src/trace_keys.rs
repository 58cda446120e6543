//! The trace key domain (`agent_trace_keys`, migration 0013): the Ed25519 keys agents sign Gait traces with,
//! each bound to the agent identity and certificate serial of the connection that delivered its announcement.
//! Registering is idempotent per (agent, key id): a repeated announcement changes nothing, a rotation adds a
//! row, and no row is ever replaced or deleted, so traces signed with a retired key still verify. Portable SQL
//! only.

use serde::Serialize;

use crate::conn::{Conn, bind_key, db_run};
use crate::error::{StoreError, db};
use crate::model::{AgentKey, CertSerial, Tenant, check_digest, to_i64, to_u64};
use crate::rows::Columns;

/// Most trace keys one listing returns.
pub const MAX_TRACE_KEYS_PAGE: u32 = 10_000;

/// Longest public key text stored: base64 of a 32-byte key is 44 characters.
const MAX_PUBLIC_KEY_BYTES: usize = 64;

/// A verified trace key announcement to register for an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTraceKey {
    /// Lowercase hex SHA-256 of the raw public key (the caller checked it against `public_key`).
    pub key_id: String,
    /// Gait's public key text: standard base64 of the raw 32-byte Ed25519 key.
    pub public_key: String,
    /// Key id of the key this one replaces, if the agent said so.
    pub replaces: Option<String>,
    /// Serial of the certificate whose connection delivered the announcement.
    pub cert_serial: CertSerial,
    /// Seq of the `agent.trace_key` record.
    pub record_seq: u64,
    /// When the agent started signing with it (the agent's clock, as it claims), Unix ms.
    pub since_unix_ms: i64,
}

/// A registered trace key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceKey {
    /// The agent that announced it.
    pub agent: AgentKey,
    /// See [`NewTraceKey::key_id`].
    pub key_id: String,
    /// See [`NewTraceKey::public_key`].
    pub public_key: String,
    /// See [`NewTraceKey::replaces`].
    pub replaces: Option<String>,
    /// See [`NewTraceKey::cert_serial`].
    pub cert_serial: CertSerial,
    /// See [`NewTraceKey::record_seq`].
    pub record_seq: u64,
    /// See [`NewTraceKey::since_unix_ms`].
    pub since_unix_ms: i64,
    /// When the aggregator registered it, Unix ms.
    pub registered_unix_ms: i64,
}

fn check(key: &NewTraceKey) -> Result<(), StoreError> {
    check_digest("trace_key.key_id", &key.key_id)?;
    if let Some(replaces) = &key.replaces {
        check_digest("trace_key.replaces", replaces)?;
    }
    let public = &key.public_key;
    if public.is_empty()
        || public.len() > MAX_PUBLIC_KEY_BYTES
        || !public
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(StoreError::invalid(
            "trace_key.public_key",
            "must be standard base64 of a raw Ed25519 public key",
        ));
    }
    Ok(())
}

/// Registers `key` for `agent` unless that agent already has it; returns whether a row was added.
/// [`StoreError::UnknownAgent`] when the agent has no row.
pub(crate) async fn register(
    mut conn: Conn<'_>,
    agent: &AgentKey,
    key: &NewTraceKey,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO agent_trace_keys (org, project, env, agent_id, key_id, public_key, \
         replaces, cert_serial, record_seq, since_unix_ms, registered_unix_ms) \
         SELECT org, project, env, agent_id, $5, $6, $7, $8, $9, $10, $11 FROM agents \
         WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 \
         ON CONFLICT (org, project, env, agent_id, key_id) DO NOTHING";
    const KNOWN: &str = "SELECT 1 AS one FROM agents \
         WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
    check(key)?;
    let seq = to_i64("trace_key.record_seq", key.record_seq)?;
    let added = db_run!(conn, |c| bind_key(sqlx::query(SQL), agent)
        .bind(key.key_id.as_str())
        .bind(key.public_key.as_str())
        .bind(key.replaces.as_deref().unwrap_or(""))
        .bind(key.cert_serial.as_str())
        .bind(seq)
        .bind(key.since_unix_ms)
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("register_trace_key"))?
        .rows_affected());
    if added == 0 {
        let known = db_run!(conn, |c| bind_key(sqlx::query(KNOWN), agent)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("register_trace_key: agent"))?
            .is_some());
        if !known {
            return Err(StoreError::UnknownAgent {
                agent: agent.to_string(),
            });
        }
    }
    Ok(added > 0)
}

/// The tenant's trace keys (only `agent_id`'s when given), by agent then registration, at most `limit`
/// (clamped to 1..=[`MAX_TRACE_KEYS_PAGE`]).
pub(crate) async fn list(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    agent_id: Option<&str>,
    limit: u32,
) -> Result<Vec<TraceKey>, StoreError> {
    const SQL: &str = "SELECT agent_id, key_id, public_key, replaces, cert_serial, record_seq, \
         since_unix_ms, registered_unix_ms FROM agent_trace_keys \
         WHERE org = $1 AND project = $2 AND env = $3 AND ($4 = '' OR agent_id = $4) \
         ORDER BY agent_id, registered_unix_ms, record_seq, key_id LIMIT $5";
    let limit = i64::from(limit.clamp(1, MAX_TRACE_KEYS_PAGE));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(agent_id.unwrap_or(""))
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("agent_trace_keys"))?;
        found.iter().map(|row| key_row(row, tenant)).collect()
    })
}

fn key_row(row: &impl Columns, tenant: &Tenant) -> Result<TraceKey, StoreError> {
    const T: &str = "agent_trace_keys";
    let agent_id = row.text("agent_id")?;
    let serial = row.text("cert_serial")?;
    let replaces = row.text("replaces")?;
    Ok(TraceKey {
        agent: AgentKey {
            tenant: tenant.clone(),
            agent_id: agent_id
                .parse()
                .map_err(|_| StoreError::corrupt(T, format!("agent_id {agent_id:?} is invalid")))?,
        },
        key_id: row.text("key_id")?,
        public_key: row.text("public_key")?,
        replaces: (!replaces.is_empty()).then_some(replaces),
        cert_serial: serial
            .parse()
            .map_err(|_| StoreError::corrupt(T, format!("cert_serial {serial:?} is invalid")))?,
        record_seq: to_u64(T, "record_seq", row.int("record_seq")?)?,
        since_unix_ms: row.int("since_unix_ms")?,
        registered_unix_ms: row.int("registered_unix_ms")?,
    })
}

/// Trace key reads on the store (own connection, outside any transaction).
impl crate::Store {
    /// See [`list`]: the tenant's registered trace keys, optionally one agent's.
    pub async fn trace_keys(
        &self,
        tenant: &Tenant,
        agent_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TraceKey>, StoreError> {
        let mut pooled = self.acquire().await?;
        list(pooled.conn(), tenant, agent_id, limit).await
    }
}

/// Trace key registration inside a transaction, so it commits with the record batch that carried it.
impl crate::StoreTx {
    /// Registers `key` for `agent` unless it already has it; `true` when a row was added.
    pub async fn register_trace_key(
        &mut self,
        agent: &AgentKey,
        key: &NewTraceKey,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        register(self.conn(), agent, key, now_ms).await
    }
}
