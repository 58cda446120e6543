//! The revocations domain: revoked agent certificate serials, which the QUIC edge refuses. Portable SQL only.

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{self, CertSerial, Revocation, check_text};

/// Revokes a certificate. Revoking an already revoked serial is a no-op that keeps the first record.
pub(crate) async fn revoke(
    mut conn: Conn<'_>,
    rev: &Revocation,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO revocations (cert_serial, org, project, env, agent_id, reason, \
         revoked_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cert_serial) DO NOTHING";
    let agent = &rev.agent;
    check_text("revocation.reason", &rev.reason, model::MAX_TEXT_BYTES)?;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(rev.cert_serial.as_str())
            .bind(agent.tenant.org.as_str())
            .bind(agent.tenant.project.as_str())
            .bind(agent.tenant.env.as_str())
            .bind(agent.agent_id.as_str())
            .bind(rev.reason.as_str())
            .bind(now_ms)
            .execute(&mut *c)
            .await
            .map_err(db("revoke"))?;
    });
    Ok(())
}

/// Every revoked serial, sorted by its canonical text. A stored serial that is not canonical is reported as
/// [`StoreError::Corrupt`].
pub(crate) async fn serials(mut conn: Conn<'_>) -> Result<Vec<CertSerial>, StoreError> {
    const SQL: &str = "SELECT cert_serial FROM revocations ORDER BY cert_serial";
    let texts: Vec<String> = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .fetch_all(&mut *c)
        .await
        .map_err(db("revoked_serials")))?;
    texts
        .iter()
        .map(|text| stored_serial("revocations", text))
        .collect()
}

/// A serial read back from the database: it must already be in canonical form (the store writes only
/// [`CertSerial`] text), anything else is corruption.
pub(crate) fn stored_serial(table: &'static str, text: &str) -> Result<CertSerial, StoreError> {
    match CertSerial::parse(text) {
        Ok(serial) if serial.as_str() == text => Ok(serial),
        Ok(serial) => Err(StoreError::corrupt(
            table,
            format!("cert_serial {text:?} is not canonical (expected {serial})"),
        )),
        Err(e) => Err(StoreError::corrupt(
            table,
            format!("cert_serial {text:?}: {e}"),
        )),
    }
}
