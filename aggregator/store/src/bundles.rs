//! The bundles domain: signed policy bundles published per tenant with strictly increasing epochs. Portable
//! SQL, plus PostgreSQL's per-tenant advisory lock (`postgres::lock_tenant_bundles`).

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{self, StoredBundle, Tenant, check_digest, check_text, to_i64, to_u64};
use crate::{postgres, rows};

/// The filter of both bundle statements; the tenant binds to `$1`..`$3`.
macro_rules! tenant_where {
    () => {
        " WHERE org = $1 AND project = $2 AND env = $3"
    };
}

/// Stores a published bundle inside the caller's transaction. `epoch` must exceed the tenant's latest epoch,
/// else [`StoreError::EpochConflict`]; concurrent publishes of one tenant are serialised (SQLite: the write
/// transaction; PostgreSQL: an advisory lock held to the end of the transaction).
pub(crate) async fn publish(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    epoch: u64,
    digest_hex: &str,
    bytes: &[u8],
    created_by: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    const INSERT: &str = "INSERT INTO bundles (org, project, env, epoch, digest, bytes, created_at, \
         created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    if epoch == 0 {
        return Err(StoreError::invalid("epoch", "bundle epochs start at 1"));
    }
    let epoch_i64 = to_i64("epoch", epoch)?;
    check_digest("digest", digest_hex)?;
    check_text("created_by", created_by, model::MAX_TEXT_BYTES)?;

    db_run!(conn,
        sqlite: |_c| (),
        postgres: |c| postgres::lock_tenant_bundles(c, tenant).await?,
    );
    if let Some(latest) = latest_epoch(conn.reborrow(), tenant)
        .await?
        .filter(|l| *l >= epoch)
    {
        return Err(StoreError::EpochConflict {
            tenant: tenant.to_string(),
            epoch,
            latest,
            next: latest + 1,
        });
    }
    db_run!(conn, |c| {
        sqlx::query(INSERT)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(epoch_i64)
            .bind(digest_hex)
            .bind(bytes)
            .bind(now_ms)
            .bind(created_by)
            .execute(&mut *c)
            .await
            .map_err(db("publish_bundle: insert"))?;
    });
    // Other replicas' long-polls wake when this commits (crate::notify).
    crate::notify::notify(
        conn,
        crate::notify::BUNDLES_CHANNEL,
        &crate::notify::scope_payload(tenant),
    )
    .await?;
    Ok(())
}

/// The tenant's bundle with the highest epoch.
pub(crate) async fn latest(
    mut conn: Conn<'_>,
    tenant: &Tenant,
) -> Result<Option<StoredBundle>, StoreError> {
    const SQL: &str = concat!(
        "SELECT epoch, digest, bytes, created_at, created_by FROM bundles",
        tenant_where!(),
        " ORDER BY epoch DESC LIMIT 1"
    );
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .fetch_optional(&mut *c)
            .await
            .map_err(db("latest_bundle"))?;
        row.as_ref().map(rows::bundle_row).transpose()
    })
}

/// The tenant's bundle published with `epoch`, if any (an older one, e.g. to carry a rollback to a site).
pub(crate) async fn at_epoch(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    epoch: u64,
) -> Result<Option<StoredBundle>, StoreError> {
    const SQL: &str = concat!(
        "SELECT epoch, digest, bytes, created_at, created_by FROM bundles",
        tenant_where!(),
        " AND epoch = $4"
    );
    let epoch = to_i64("epoch", epoch)?;
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(epoch)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("bundle_at_epoch"))?;
        row.as_ref().map(rows::bundle_row).transpose()
    })
}

/// The newest published epoch of `tenant`, without reading the bundle itself.
pub(crate) async fn latest_epoch(
    mut conn: Conn<'_>,
    tenant: &Tenant,
) -> Result<Option<u64>, StoreError> {
    const SQL: &str = concat!("SELECT MAX(epoch) FROM bundles", tenant_where!());
    let epoch: Option<i64> = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .fetch_one(&mut *c)
        .await
        .map_err(db("latest_epoch")))?;
    epoch.map(|e| to_u64("bundles", "epoch", e)).transpose()
}
