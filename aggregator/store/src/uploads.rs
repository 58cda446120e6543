//! The artifact upload domain: `artifact_uploads`, one row per (environment, SHA-256 digest, uploading agent),
//! written when an agent's upload was verified and stored in the blob store. The blob store is shared and
//! content-addressed; these rows are the tenancy: an environment's operators read a digest's bytes only when an
//! agent of that environment uploaded it. Portable SQL only.

use serde::Serialize;

use crate::conn::{Conn, bind_key, db_run};
use crate::error::{StoreError, db};
use crate::model::{AgentKey, Tenant, to_i64, to_u64};
use crate::rows::Columns;

/// A verified upload of `sha256` by an agent of the tenant (the earliest one when several agents uploaded it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArtifactUpload {
    /// SHA-256 of the content, 64 lowercase hex characters.
    pub sha256: String,
    /// Its verified length in bytes.
    pub size_bytes: u64,
    /// The agent that uploaded it (the earliest one).
    pub agent_id: String,
    /// When that upload completed, milliseconds since the Unix epoch.
    pub uploaded_unix_ms: i64,
}

fn check_sha256(sha256: &str) -> Result<(), StoreError> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "sha256",
            "must be 64 lowercase hex characters",
        ))
    }
}

/// Records that `key` uploaded `sha256` (`size_bytes` long). Idempotent: a second upload of the same digest by
/// the same agent keeps the first row. [`StoreError::UnknownAgent`] when the agent has no row.
pub(crate) async fn record(
    mut conn: Conn<'_>,
    key: &AgentKey,
    sha256: &str,
    size_bytes: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    const EXISTS: &str = "SELECT 1 AS one FROM agents \
         WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
    const SQL: &str = "INSERT INTO artifact_uploads (org, project, env, agent_id, sha256, size_bytes, \
         uploaded_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (org, project, env, sha256, agent_id) DO NOTHING";
    check_sha256(sha256)?;
    let size = to_i64("size_bytes", size_bytes)?;
    let known = db_run!(conn, |c| bind_key(sqlx::query(EXISTS), key)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("record_artifact_upload: agent"))?
        .is_some());
    if !known {
        return Err(StoreError::UnknownAgent {
            agent: key.to_string(),
        });
    }
    db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
        .bind(sha256)
        .bind(size)
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("record_artifact_upload"))?
        .rows_affected());
    Ok(())
}

/// The earliest upload of `sha256` by an agent of `tenant`, or `None` when no agent of it uploaded that digest.
pub(crate) async fn find(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    sha256: &str,
) -> Result<Option<ArtifactUpload>, StoreError> {
    const SQL: &str = "SELECT sha256, size_bytes, agent_id, uploaded_unix_ms FROM artifact_uploads \
         WHERE org = $1 AND project = $2 AND env = $3 AND sha256 = $4 \
         ORDER BY uploaded_unix_ms, agent_id LIMIT 1";
    check_sha256(sha256)?;
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(sha256)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("artifact_upload"))?;
        found.as_ref().map(upload_row).transpose()
    })
}

fn upload_row(row: &impl Columns) -> Result<ArtifactUpload, StoreError> {
    const T: &str = "artifact_uploads";
    Ok(ArtifactUpload {
        sha256: row.text("sha256")?,
        size_bytes: to_u64(T, "size_bytes", row.int("size_bytes")?)?,
        agent_id: row.text("agent_id")?,
        uploaded_unix_ms: row.int("uploaded_unix_ms")?,
    })
}
