//! The revocations domain: revoked agent certificate serials, which the QUIC edge refuses. Portable SQL only.

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{self, CertSerial, Revocation, StoredRevocation, check_text};
use crate::rows::{self, Columns};

/// Revokes a certificate. Revoking an already revoked serial is a no-op that keeps the first record.
pub(crate) async fn revoke(
    mut conn: Conn<'_>,
    rev: &Revocation,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO revocations (cert_serial, org, project, env, agent_id, reason, \
         revoked_unix_ms, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (cert_serial) DO NOTHING";
    let agent = &rev.agent;
    check_text("revocation.reason", &rev.reason, model::MAX_TEXT_BYTES)?;
    check_text(
        "revocation.revoked_by",
        &rev.revoked_by,
        model::MAX_TEXT_BYTES,
    )?;
    if rev.revoked_by.trim().is_empty() {
        return Err(StoreError::invalid(
            "revocation.revoked_by",
            "must name who revoked the certificate",
        ));
    }
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(rev.cert_serial.as_str())
            .bind(agent.tenant.org.as_str())
            .bind(agent.tenant.project.as_str())
            .bind(agent.tenant.env.as_str())
            .bind(agent.agent_id.as_str())
            .bind(rev.reason.as_str())
            .bind(now_ms)
            .bind(rev.revoked_by.as_str())
            .execute(&mut *c)
            .await
            .map_err(db("revoke"))?;
    });
    // Every replica reloads its revocation list when this commits (crate::notify).
    crate::notify::notify(conn, crate::notify::REVOCATIONS_CHANNEL, "").await?;
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

/// Every revocation, oldest first (ties by serial).
pub(crate) async fn list(mut conn: Conn<'_>) -> Result<Vec<StoredRevocation>, StoreError> {
    const SQL: &str = "SELECT cert_serial, org, project, env, agent_id, reason, revoked_by, revoked_unix_ms \
         FROM revocations ORDER BY revoked_unix_ms, cert_serial";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("revocations"))?;
        found.iter().map(revocation_row).collect()
    })
}

fn revocation_row(row: &impl Columns) -> Result<StoredRevocation, StoreError> {
    const T: &str = "revocations";
    let revoked_by = row.text("revoked_by")?;
    Ok(StoredRevocation {
        cert_serial: stored_serial(T, &row.text("cert_serial")?)?,
        agent: model::AgentKey::new(
            model::Tenant::new(
                rows::stored_id(T, "org", row.text("org")?)?,
                rows::stored_id(T, "project", row.text("project")?)?,
                rows::stored_id(T, "env", row.text("env")?)?,
            ),
            rows::stored_id(T, "agent_id", row.text("agent_id")?)?,
        ),
        reason: row.text("reason")?,
        revoked_by: Some(revoked_by).filter(|r| !r.is_empty()),
        revoked_unix_ms: row.int("revoked_unix_ms")?,
    })
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
