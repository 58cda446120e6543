//! The agents domain: one row per agent (keyed by tenant and agent id) holding what its last hello said, its
//! bundle reports, its presence (`last_seen`) and the cursor of its record stream. Portable SQL only.

use crate::conn::{Conn, agent_where, bind_key, db_run, later};
use crate::error::{StoreError, db};
use crate::model::{
    self, AgentCursor, AgentFilter, AgentHello, AgentKey, AgentRow, BundleReportRow, CertSerial,
    Tenant, check_digest, check_label, to_i64,
};
use crate::rows::{self, Columns as _, agent_columns};
use serde::Serialize;

/// Upserts each valid hello's agent row and returns one result per input, in order: an invalid hello gets its
/// own validation error and does not affect the others. Run inside a transaction so a burst of reconnects
/// costs one commit; the outer error means a statement failed.
pub(crate) async fn connected(
    mut conn: Conn<'_>,
    hellos: &[(&AgentKey, &AgentHello)],
    now_ms: i64,
) -> Result<Vec<Result<AgentCursor, StoreError>>, StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO agents (org, project, env, agent_id, cert_serial, first_seen_unix_ms, \
         last_seen_unix_ms, remote_addr, agent_version, active_bundle_epoch, active_bundle_digest, \
         active_bundle_since_ms, received_bundle_epoch, received_bundle_digest, outbox_depth, shed_total, \
         cert_not_after_unix_ms, cert_issuer) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (org, project, env, agent_id) DO UPDATE SET \
         cert_serial = excluded.cert_serial, cert_not_after_unix_ms = excluded.cert_not_after_unix_ms, \
         cert_issuer = excluded.cert_issuer, last_seen_unix_ms = ",
        later!("agents.last_seen_unix_ms", "excluded.last_seen_unix_ms"),
        ", remote_addr = excluded.remote_addr, agent_version = excluded.agent_version, \
         active_bundle_epoch = excluded.active_bundle_epoch, \
         active_bundle_digest = excluded.active_bundle_digest, \
         active_bundle_since_ms = excluded.active_bundle_since_ms, \
         received_bundle_epoch = excluded.received_bundle_epoch, \
         received_bundle_digest = excluded.received_bundle_digest, \
         outbox_depth = excluded.outbox_depth, shed_total = excluded.shed_total \
         RETURNING committed_seq, committed_hash"
    );
    let mut results = Vec::with_capacity(hellos.len());
    for (key, hello) in hellos {
        let serial = hello.cert_serial.as_str();
        match hello.validate() {
            Ok(()) => {}
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let active = hello.active_bundle.as_ref();
        let received = hello.received_bundle.as_ref();
        let active_epoch = active
            .map(|b| to_i64("hello.active_bundle.epoch", b.epoch))
            .transpose()?;
        let received_epoch = received
            .map(|b| to_i64("hello.received_bundle.epoch", b.epoch))
            .transpose()?;
        let outbox_depth = to_i64("hello.outbox_depth", hello.outbox_depth)?;
        let shed_total = to_i64("hello.shed_total", hello.shed_total)?;
        let cursor = db_run!(conn, |c| {
            let row = bind_key(sqlx::query(SQL), key)
                .bind(serial)
                .bind(now_ms)
                .bind(hello.remote_addr.as_str())
                .bind(hello.agent_version.as_str())
                .bind(active_epoch)
                .bind(active.map(|b| b.digest.as_str()))
                .bind(active.map(|b| b.since_unix_ms))
                .bind(received_epoch)
                .bind(received.map(|b| b.digest.as_str()))
                .bind(outbox_depth)
                .bind(shed_total)
                .bind(hello.cert_not_after_unix_ms)
                .bind(hello.cert_issuer.as_str())
                .fetch_one(&mut *c)
                .await
                .map_err(db("agents_connected"))?;
            rows::cursor_row(&row)?
        });
        results.push(Ok(cursor));
    }
    Ok(results)
}

/// Creates the row of an agent known only from a verified certificate (records carried in on a file, never a
/// hello): its certificate serial, expiry and issuer, first and last seen at `seen_ms`. An existing row is left
/// as it is. Returns whether a row was created.
pub(crate) async fn ensure(
    mut conn: Conn<'_>,
    key: &AgentKey,
    cert_serial: &CertSerial,
    cert_not_after_unix_ms: Option<i64>,
    cert_issuer: &str,
    seen_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO agents (org, project, env, agent_id, cert_serial, first_seen_unix_ms, \
         last_seen_unix_ms, remote_addr, agent_version, cert_not_after_unix_ms, cert_issuer) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, '', '', $7, $8) \
         ON CONFLICT (org, project, env, agent_id) DO NOTHING";
    let created = db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
        .bind(cert_serial.as_str())
        .bind(seen_ms)
        .bind(cert_not_after_unix_ms)
        .bind(cert_issuer)
        .execute(&mut *c)
        .await
        .map_err(db("agents_ensure"))?
        .rows_affected());
    Ok(created > 0)
}

/// Moves `last_seen` forward (never backward) for each agent; unknown agents are skipped. Returns how many
/// agents were found.
pub(crate) async fn seen(
    mut conn: Conn<'_>,
    keys: &[&AgentKey],
    now_ms: i64,
) -> Result<u64, StoreError> {
    const SQL: &str = concat!(
        "UPDATE agents SET last_seen_unix_ms = ",
        later!("last_seen_unix_ms", "$5"),
        agent_where!()
    );
    let mut found = 0;
    for key in keys {
        found += db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
            .bind(now_ms)
            .execute(&mut *c)
            .await
            .map_err(db("agents_seen"))?
            .rows_affected());
    }
    Ok(found)
}

/// Records what the agent did with a bundle. Refused with [`StoreError::UnknownAgent`] when it has no row.
pub(crate) async fn bundle_report(
    mut conn: Conn<'_>,
    key: &AgentKey,
    report: &BundleReportRow,
    now_ms: i64,
) -> Result<(), StoreError> {
    // Reports travel on separate streams, so an older one can arrive after a newer one: epochs only go
    // forward here (a reconnecting agent's hello still sets what it really runs).
    const RECEIVED: &str = concat!(
        "UPDATE agents SET received_bundle_epoch = $5, received_bundle_digest = $6, last_seen_unix_ms = ",
        later!("last_seen_unix_ms", "$7"),
        agent_where!(),
        " AND (received_bundle_epoch IS NULL OR received_bundle_epoch <= $5)"
    );
    const ACTIVATED: &str = concat!(
        "UPDATE agents SET active_bundle_epoch = $5, active_bundle_digest = $6, active_bundle_since_ms = $7, \
         last_seen_unix_ms = ",
        later!("last_seen_unix_ms", "$8"),
        agent_where!(),
        " AND (active_bundle_epoch IS NULL OR active_bundle_epoch <= $5)"
    );
    const REFUSED: &str = concat!(
        "UPDATE agents SET last_refusal_epoch = $5, last_refusal_code = $6, last_refusal_message = $7, \
         last_refusal_unix_ms = $8, last_seen_unix_ms = ",
        later!("last_seen_unix_ms", "$8"),
        agent_where!()
    );
    let (sql, epoch, text, since) = match report {
        BundleReportRow::Received(b) => (RECEIVED, b.epoch, b.digest.as_str(), None),
        BundleReportRow::Activated(b) => {
            (ACTIVATED, b.epoch, b.digest.as_str(), Some(b.since_unix_ms))
        }
        BundleReportRow::Refused { epoch, code, .. } => (REFUSED, *epoch, code.as_str(), None),
    };
    let epoch = to_i64("report.epoch", epoch)?;
    match report {
        BundleReportRow::Received(_) | BundleReportRow::Activated(_) => {
            check_digest("report.digest", text)?
        }
        BundleReportRow::Refused { .. } => {
            check_label("report.code", text)?;
        }
    }
    let found = db_run!(conn, |c| {
        let mut query = bind_key(sqlx::query(sql), key).bind(epoch).bind(text);
        if let Some(since) = since {
            query = query.bind(since);
        }
        if let BundleReportRow::Refused { message, .. } = report {
            query = query.bind(model::truncate_utf8(
                message,
                model::MAX_REFUSAL_MESSAGE_BYTES,
            ));
        }
        query
            .bind(now_ms)
            .execute(&mut *c)
            .await
            .map_err(db("record_bundle_report"))?
            .rows_affected()
    });
    if found > 0 {
        return Ok(());
    }
    // Nothing updated: an unknown agent, or a report older than what is recorded (kept as it is).
    const EXISTS: &str = concat!("SELECT COUNT(*) FROM agents", agent_where!());
    let known: i64 = db_run!(conn, |c| sqlx::query_scalar(EXISTS)
        .bind(key.tenant.org.as_str())
        .bind(key.tenant.project.as_str())
        .bind(key.tenant.env.as_str())
        .bind(key.agent_id.as_str())
        .fetch_one(&mut *c)
        .await
        .map_err(db("record_bundle_report: agent")))?;
    if known > 0 {
        Ok(())
    } else {
        Err(StoreError::UnknownAgent {
            agent: key.to_string(),
        })
    }
}

/// One page of the agents of one org, optionally narrowed to a project and env, ordered by (project, env,
/// agent_id), starting after `filter.after`.
pub(crate) async fn list(
    mut conn: Conn<'_>,
    filter: &AgentFilter,
) -> Result<Vec<AgentRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE org = $1 AND (CAST($2 AS TEXT) IS NULL OR project = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR env = $3) \
         AND (CAST($4 AS TEXT) IS NULL \
              OR (project, env, agent_id) > (CAST($4 AS TEXT), CAST($5 AS TEXT), CAST($6 AS TEXT))) \
         ORDER BY project, env, agent_id LIMIT $7"
    );
    let after = filter.after.as_ref();
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(filter.org.as_str())
            .bind(filter.project.as_deref())
            .bind(filter.env.as_deref())
            .bind(after.map(|a| a.project.as_str()))
            .bind(after.map(|a| a.env.as_str()))
            .bind(after.map(|a| a.agent_id.as_str()))
            .bind(i64::from(filter.page_size()))
            .fetch_all(&mut *c)
            .await
            .map_err(db("list_agents"))?;
        found.iter().map(rows::agent_row).collect()
    })
}

/// The agents whose last hello presented the certificate `serial`, in tenant order. A serial is unique under
/// one CA, so this is at most one agent unless the CA was replaced; an agent that rotated its certificate is
/// found only under its newest serial.
pub(crate) async fn with_cert_serial(
    mut conn: Conn<'_>,
    serial: &CertSerial,
) -> Result<Vec<AgentRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE cert_serial = $1 ORDER BY org, project, env, agent_id"
    );
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(serial.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("agents_with_cert_serial"))?;
        found.iter().map(rows::agent_row).collect()
    })
}

/// Where the aggregator learnt of a [`KnownCertificate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// The agent presented it at its last connection (hand-minted certificates are known this way).
    Presented,
    /// The aggregator signed it online (enrollment or renewal), whether or not the agent has used it yet.
    Issued,
}

/// A live, unrevoked agent certificate the aggregator knows of: what CA rotation needs to tell which agents
/// still depend on a CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KnownCertificate {
    /// The agent it certifies.
    pub agent: AgentKey,
    /// Its serial.
    pub cert_serial: CertSerial,
    /// Its issuer's distinguished name (RFC 4514 text); `None` when it was recorded before issuers were.
    pub issuer: Option<String>,
    /// Its `notAfter` (unix ms); `None` when it was recorded before expiries were.
    pub not_after_unix_ms: Option<i64>,
    /// Presented at the last connection, or signed online.
    pub source: CertificateSource,
}

/// Every agent certificate known to be live at `now_ms` and not revoked: the one each agent presented at its
/// last connection (also when its expiry is unknown) and every one signed online, ordered by agent, then
/// presented before issued, then serial.
pub(crate) async fn live_certificates(
    mut conn: Conn<'_>,
    now_ms: i64,
) -> Result<Vec<KnownCertificate>, StoreError> {
    const SQL: &str = "SELECT org, project, env, agent_id, cert_serial, cert_issuer AS issuer, \
         cert_not_after_unix_ms AS not_after_unix_ms, CAST(0 AS BIGINT) AS source FROM agents \
         WHERE (cert_not_after_unix_ms IS NULL OR cert_not_after_unix_ms > $1) \
         AND cert_serial NOT IN (SELECT cert_serial FROM revocations) \
         UNION ALL \
         SELECT org, project, env, agent_id, cert_serial, issuer, not_after_unix_ms, CAST(1 AS BIGINT) AS source \
         FROM issued_certificates \
         WHERE not_after_unix_ms > $1 AND cert_serial NOT IN (SELECT cert_serial FROM revocations) \
         ORDER BY org, project, env, agent_id, source, cert_serial";
    const T: &str = "agents";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(now_ms)
            .fetch_all(&mut *c)
            .await
            .map_err(db("live_certificates"))?;
        found
            .iter()
            .map(|row| {
                Ok(KnownCertificate {
                    agent: AgentKey::new(
                        Tenant::new(
                            rows::stored_id(T, "org", row.text("org")?)?,
                            rows::stored_id(T, "project", row.text("project")?)?,
                            rows::stored_id(T, "env", row.text("env")?)?,
                        ),
                        rows::stored_id(T, "agent_id", row.text("agent_id")?)?,
                    ),
                    cert_serial: crate::revocations::stored_serial(T, &row.text("cert_serial")?)?,
                    issuer: row.opt_text("issuer")?,
                    not_after_unix_ms: row.opt_int("not_after_unix_ms")?,
                    source: if row.int("source")? == 0 {
                        CertificateSource::Presented
                    } else {
                        CertificateSource::Issued
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
    })
}

impl crate::Store {
    /// Every live, unrevoked agent certificate known at `now_ms` (see [`KnownCertificate`]), across all tenants:
    /// for the CA host's `pki retire-ca`, which is not scoped to a tenant.
    pub async fn live_agent_certificates(
        &self,
        now_ms: i64,
    ) -> Result<Vec<KnownCertificate>, StoreError> {
        let mut pooled = self.acquire().await?;
        live_certificates(pooled.conn(), now_ms).await
    }
}
