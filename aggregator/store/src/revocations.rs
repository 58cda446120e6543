//! The revocations domain: revoked agent certificate serials, which the QUIC edge refuses. Portable SQL only.

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{self, Revocation, check_name, check_text, normalize_cert_serial};

/// Revokes a certificate. Revoking an already revoked serial is a no-op that keeps the first record.
pub(crate) async fn revoke(
    mut conn: Conn<'_>,
    rev: &Revocation,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO revocations (cert_serial, org, project, env, agent_id, reason, \
         revoked_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cert_serial) DO NOTHING";
    let serial = normalize_cert_serial("revocation.cert_serial", &rev.cert_serial)?;
    rev.tenant.validate()?;
    check_name("revocation.agent_id", &rev.agent_id)?;
    check_text("revocation.reason", &rev.reason, model::MAX_TEXT_BYTES)?;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(serial.as_str())
            .bind(rev.tenant.org.as_str())
            .bind(rev.tenant.project.as_str())
            .bind(rev.tenant.env.as_str())
            .bind(rev.agent_id.as_str())
            .bind(rev.reason.as_str())
            .bind(now_ms)
            .execute(&mut *c)
            .await
            .map_err(db("revoke"))?;
    });
    Ok(())
}

/// Every revoked serial (normalised lowercase hex), sorted.
pub(crate) async fn serials(mut conn: Conn<'_>) -> Result<Vec<String>, StoreError> {
    const SQL: &str = "SELECT cert_serial FROM revocations ORDER BY cert_serial";
    db_run!(conn, |c| sqlx::query_scalar(SQL)
        .fetch_all(&mut *c)
        .await
        .map_err(db("revoked_serials")))
}
