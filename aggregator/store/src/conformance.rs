//! The conformance domain (migration 0020): each org's required baseline (`conformance_baselines`, at most one
//! row per org) and the bounded reads conformance is computed from: the newest bundle of each environment, a
//! bundle by its digest (what an agent reports as active), the agents with their active bundle, and the org's
//! version lineage (`policy_versions.parent_digest`). Portable SQL only; every listing has a hard cap.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{AgentId, MAX_TEXT_BYTES, Org, Tenant, check_digest, check_text, to_u64};
use crate::rows::Columns;

/// Most rule names a baseline may require.
pub const MAX_REQUIRED_RULES: usize = 256;
/// Longest required rule name, in bytes.
pub const MAX_RULE_NAME_BYTES: usize = 128;
/// Most environments one conformance read covers.
pub const MAX_CONFORMANCE_ENVS: u32 = 10_000;
/// Most versions of one org the lineage read returns.
pub const MAX_LINEAGE_VERSIONS: u32 = 100_000;

/// An org's required baseline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConformanceBaseline {
    /// The org.
    pub org: Org,
    /// Minimum policy version: a registry digest of the org; it and its descendants conform.
    pub min_digest: Option<String>,
    /// Rule names every policy in force must carry (sorted, distinct).
    pub required_rules: Vec<String>,
    /// Who set it.
    pub set_by: String,
    /// When, Unix ms.
    pub set_unix_ms: i64,
}

/// The newest bundle of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleHead {
    /// The environment.
    pub tenant: Tenant,
    /// Its newest epoch.
    pub epoch: u64,
    /// That bundle's digest.
    pub digest: String,
}

/// An agent and the bundle it reported active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentActiveBundle {
    /// The agent's environment.
    pub tenant: Tenant,
    /// The agent.
    pub agent_id: AgentId,
    /// The epoch it reported active, if any.
    pub active_epoch: Option<u64>,
    /// The digest it reported active, if any.
    pub active_digest: Option<String>,
}

/// One version's place in the org's lineage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineageEntry {
    /// The version's digest.
    pub digest: String,
    /// The version it derives from.
    pub parent: Option<String>,
    /// When it was stored, Unix ms.
    pub created_unix_ms: i64,
}

/// Which environments and agents a conformance read covers (`None`: all of the org).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConformanceFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this environment (of any project, or of `project`).
    pub env: Option<String>,
    /// Only agents with this id.
    pub agent: Option<String>,
}

fn check_baseline(b: &ConformanceBaseline) -> Result<(), StoreError> {
    if let Some(d) = &b.min_digest {
        check_digest("baseline.min_digest", d)?;
    }
    if b.required_rules.len() > MAX_REQUIRED_RULES {
        return Err(StoreError::invalid(
            "baseline.required_rules",
            format!("at most {MAX_REQUIRED_RULES} rule names"),
        ));
    }
    for rule in &b.required_rules {
        check_text("baseline.required_rules", rule, MAX_RULE_NAME_BYTES)?;
    }
    check_text("baseline.set_by", &b.set_by, MAX_TEXT_BYTES)
}

async fn baseline(
    mut conn: Conn<'_>,
    org: &Org,
) -> Result<Option<ConformanceBaseline>, StoreError> {
    const SQL: &str = "SELECT min_digest, required_rules_json, set_by, set_unix_ms \
         FROM conformance_baselines WHERE org = $1";
    const T: &str = "conformance_baselines";
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(org.as_str())
            .fetch_optional(&mut *c)
            .await
            .map_err(db("conformance_baseline"))?;
        row.as_ref()
            .map(|r| {
                let rules = r.text("required_rules_json")?;
                Ok(ConformanceBaseline {
                    org: org.clone(),
                    min_digest: r.opt_text("min_digest")?,
                    required_rules: serde_json::from_str(&rules).map_err(|e| {
                        StoreError::corrupt(T, format!("required_rules_json of {org}: {e}"))
                    })?,
                    set_by: r.text("set_by")?,
                    set_unix_ms: r.int("set_unix_ms")?,
                })
            })
            .transpose()
    })
}

async fn put_baseline(mut conn: Conn<'_>, b: &ConformanceBaseline) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO conformance_baselines (org, min_digest, required_rules_json, set_by, \
         set_unix_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org) DO UPDATE SET \
         min_digest = excluded.min_digest, required_rules_json = excluded.required_rules_json, \
         set_by = excluded.set_by, set_unix_ms = excluded.set_unix_ms";
    check_baseline(b)?;
    let rules = serde_json::to_string(&b.required_rules)
        .map_err(|e| StoreError::invalid("baseline.required_rules", e.to_string()))?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(b.org.as_str())
        .bind(b.min_digest.as_deref())
        .bind(rules.as_str())
        .bind(b.set_by.as_str())
        .bind(b.set_unix_ms)
        .execute(&mut *c)
        .await
        .map_err(db("put_conformance_baseline"))?
        .rows_affected());
    Ok(())
}

async fn delete_baseline(mut conn: Conn<'_>, org: &Org) -> Result<bool, StoreError> {
    const SQL: &str = "DELETE FROM conformance_baselines WHERE org = $1";
    let n = db_run!(conn, |c| sqlx::query(SQL)
        .bind(org.as_str())
        .execute(&mut *c)
        .await
        .map_err(db("delete_conformance_baseline"))?
        .rows_affected());
    Ok(n > 0)
}

fn tenant_of(table: &'static str, org: &Org, row: &impl Columns) -> Result<Tenant, StoreError> {
    let (project, env) = (row.text("project")?, row.text("env")?);
    Tenant::from_parts(org.as_str(), &project, &env)
        .map_err(|e| StoreError::corrupt(table, format!("{org}/{project}/{env}: {e}")))
}

async fn bundle_heads(
    mut conn: Conn<'_>,
    org: &Org,
    filter: &ConformanceFilter,
) -> Result<Vec<BundleHead>, StoreError> {
    const SQL: &str = "SELECT b.project, b.env, b.epoch, b.digest FROM bundles b \
         WHERE b.org = $1 AND (CAST($2 AS TEXT) IS NULL OR b.project = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR b.env = $3) \
         AND b.epoch = (SELECT MAX(m.epoch) FROM bundles m \
                        WHERE m.org = b.org AND m.project = b.project AND m.env = b.env) \
         ORDER BY b.project, b.env LIMIT $4";
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(filter.project.as_deref())
            .bind(filter.env.as_deref())
            .bind(i64::from(MAX_CONFORMANCE_ENVS))
            .fetch_all(&mut *c)
            .await
            .map_err(db("conformance bundle heads"))?;
        rows.iter()
            .map(|r| {
                Ok(BundleHead {
                    tenant: tenant_of("bundles", org, r)?,
                    epoch: to_u64("bundles", "epoch", r.int("epoch")?)?,
                    digest: r.text("digest")?,
                })
            })
            .collect()
    })
}

async fn bundle_by_digest(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    digest: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    const SQL: &str = "SELECT bytes FROM bundles WHERE org = $1 AND project = $2 AND env = $3 \
         AND digest = $4 ORDER BY epoch DESC LIMIT 1";
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(digest)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("bundle by digest"))?;
        row.as_ref().map(|r| r.bytes("bytes")).transpose()
    })
}

async fn agents(
    mut conn: Conn<'_>,
    org: &Org,
    filter: &ConformanceFilter,
    limit: u32,
) -> Result<Vec<AgentActiveBundle>, StoreError> {
    const SQL: &str = "SELECT project, env, agent_id, active_bundle_epoch, active_bundle_digest FROM agents \
         WHERE org = $1 AND (CAST($2 AS TEXT) IS NULL OR project = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR env = $3) AND (CAST($4 AS TEXT) IS NULL OR agent_id = $4) \
         ORDER BY project, env, agent_id LIMIT $5";
    const T: &str = "agents";
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(filter.project.as_deref())
            .bind(filter.env.as_deref())
            .bind(filter.agent.as_deref())
            .bind(i64::from(limit))
            .fetch_all(&mut *c)
            .await
            .map_err(db("conformance agents"))?;
        rows.iter()
            .map(|r| {
                let id = r.text("agent_id")?;
                Ok(AgentActiveBundle {
                    tenant: tenant_of(T, org, r)?,
                    agent_id: id
                        .parse()
                        .map_err(|_| StoreError::corrupt(T, format!("agent_id {id:?}")))?,
                    active_epoch: r
                        .opt_int("active_bundle_epoch")?
                        .map(|e| to_u64(T, "active_bundle_epoch", e))
                        .transpose()?,
                    active_digest: r.opt_text("active_bundle_digest")?,
                })
            })
            .collect()
    })
}

async fn lineage(mut conn: Conn<'_>, org: &Org) -> Result<Vec<LineageEntry>, StoreError> {
    const SQL: &str = "SELECT digest, parent_digest, created_unix_ms FROM policy_versions \
         WHERE org = $1 ORDER BY created_unix_ms, digest LIMIT $2";
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(i64::from(MAX_LINEAGE_VERSIONS))
            .fetch_all(&mut *c)
            .await
            .map_err(db("policy lineage"))?;
        rows.iter()
            .map(|r| {
                Ok(LineageEntry {
                    digest: r.text("digest")?,
                    parent: r.opt_text("parent_digest")?,
                    created_unix_ms: r.int("created_unix_ms")?,
                })
            })
            .collect()
    })
}

/// Conformance reads on the store (own connection, outside any transaction).
impl crate::Store {
    /// The org's required baseline, if one is set.
    pub async fn conformance_baseline(
        &self,
        org: &Org,
    ) -> Result<Option<ConformanceBaseline>, StoreError> {
        let mut pooled = self.acquire().await?;
        baseline(pooled.conn(), org).await
    }

    /// The newest bundle of each environment of `org` matching `filter` (its project and env), sorted by
    /// project and env, at most [`MAX_CONFORMANCE_ENVS`].
    pub async fn bundle_heads(
        &self,
        org: &Org,
        filter: &ConformanceFilter,
    ) -> Result<Vec<BundleHead>, StoreError> {
        let mut pooled = self.acquire().await?;
        bundle_heads(pooled.conn(), org, filter).await
    }

    /// The bytes of `tenant`'s bundle with `digest` (the newest epoch carrying it), if any.
    pub async fn bundle_by_digest(
        &self,
        tenant: &Tenant,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut pooled = self.acquire().await?;
        bundle_by_digest(pooled.conn(), tenant, digest).await
    }

    /// The agents of `org` matching `filter` with the bundle each reported active, sorted by project, env and
    /// agent id, at most `limit`.
    pub async fn agents_active_bundles(
        &self,
        org: &Org,
        filter: &ConformanceFilter,
        limit: u32,
    ) -> Result<Vec<AgentActiveBundle>, StoreError> {
        let mut pooled = self.acquire().await?;
        agents(pooled.conn(), org, filter, limit).await
    }

    /// Every version of `org` with its parent, oldest first, at most [`MAX_LINEAGE_VERSIONS`].
    pub async fn policy_lineage(&self, org: &Org) -> Result<Vec<LineageEntry>, StoreError> {
        let mut pooled = self.acquire().await?;
        lineage(pooled.conn(), org).await
    }
}

/// Baseline changes inside a transaction, so each commits with its audit entry.
impl crate::StoreTx {
    /// See [`crate::Store::conformance_baseline`].
    pub async fn conformance_baseline(
        &mut self,
        org: &Org,
    ) -> Result<Option<ConformanceBaseline>, StoreError> {
        baseline(self.conn(), org).await
    }

    /// Sets (inserts or replaces) the org's baseline.
    pub async fn put_conformance_baseline(
        &mut self,
        b: &ConformanceBaseline,
    ) -> Result<(), StoreError> {
        put_baseline(self.conn(), b).await
    }

    /// Removes the org's baseline; `false` when it had none.
    pub async fn delete_conformance_baseline(&mut self, org: &Org) -> Result<bool, StoreError> {
        delete_baseline(self.conn(), org).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewPolicyVersion;

    async fn version(store: &crate::Store, org: &Org, digest: &str, parent: Option<&str>) {
        let v = NewPolicyVersion {
            org: org.clone(),
            digest: digest.to_owned(),
            name: "p.yaml".into(),
            yaml: b"default_verdict: block\n".to_vec(),
            sha256: "a".repeat(64),
            author: "t".into(),
            message: String::new(),
            parent_digest: parent.map(str::to_owned),
            rule_count: 0,
            default_verdict: "block".into(),
            created_unix_ms: 1,
            warnings_json: None,
        };
        store
            .transaction(async |tx| tx.insert_policy_version(&v).await)
            .await
            .expect("version");
    }

    async fn baselines_round_trip_and_bundle_reads_are_scoped(store: crate::Store) {
        let org: Org = "acme".parse().expect("org");
        let other: Org = "other".parse().expect("org");
        let min = "b".repeat(64);
        version(&store, &org, &min, None).await;
        version(&store, &org, &"c".repeat(64), Some(&min)).await;
        assert_eq!(store.conformance_baseline(&org).await.expect("read"), None);
        let b = ConformanceBaseline {
            org: org.clone(),
            min_digest: Some(min.clone()),
            required_rules: vec!["r1".into(), "r2".into()],
            set_by: "admin".into(),
            set_unix_ms: 5,
        };
        store
            .transaction(async |tx| tx.put_conformance_baseline(&b).await)
            .await
            .expect("put");
        assert_eq!(
            store.conformance_baseline(&org).await.expect("read"),
            Some(b.clone())
        );
        assert_eq!(
            store.conformance_baseline(&other).await.expect("read"),
            None
        );
        let cleared = ConformanceBaseline {
            min_digest: None,
            required_rules: vec![],
            ..b.clone()
        };
        store
            .transaction(async |tx| tx.put_conformance_baseline(&cleared).await)
            .await
            .expect("replace");
        assert_eq!(
            store.conformance_baseline(&org).await.expect("read"),
            Some(cleared)
        );
        let bad = ConformanceBaseline {
            min_digest: Some("nope".into()),
            ..b.clone()
        };
        let err = store
            .transaction(async |tx| tx.put_conformance_baseline(&bad).await)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("min_digest"), "{err}");
        assert!(
            store
                .transaction(async |tx| tx.delete_conformance_baseline(&org).await)
                .await
                .expect("delete")
        );
        assert!(
            !store
                .transaction(async |tx| tx.delete_conformance_baseline(&org).await)
                .await
                .expect("delete again")
        );
        let lineage = store.policy_lineage(&org).await.expect("lineage");
        assert_eq!(lineage.len(), 2);
        assert!(store.policy_lineage(&other).await.expect("l").is_empty());

        let prod = Tenant::from_parts("acme", "web", "prod").expect("t");
        let dev = Tenant::from_parts("acme", "web", "dev").expect("t");
        let theirs = Tenant::from_parts("other", "web", "prod").expect("t");
        for (t, epoch, d) in [
            (&prod, 1, "1"),
            (&prod, 2, "2"),
            (&dev, 1, "3"),
            (&theirs, 1, "4"),
        ] {
            let digest = d.repeat(64);
            store
                .transaction(async |tx| {
                    tx.publish_bundle(t, epoch, &digest, digest.as_bytes(), "t", 1)
                        .await
                })
                .await
                .expect("publish");
        }
        let all = ConformanceFilter::default();
        let heads = store.bundle_heads(&org, &all).await.expect("heads");
        let got: Vec<(String, u64)> = heads
            .iter()
            .map(|h| (h.tenant.env.to_string(), h.epoch))
            .collect();
        assert_eq!(got, [("dev".to_owned(), 1), ("prod".to_owned(), 2)]);
        assert_eq!(heads[1].digest, "2".repeat(64));
        let only_prod = ConformanceFilter {
            env: Some("prod".into()),
            ..Default::default()
        };
        assert_eq!(
            store.bundle_heads(&org, &only_prod).await.expect("h").len(),
            1
        );
        assert_eq!(
            store
                .bundle_by_digest(&prod, &"1".repeat(64))
                .await
                .expect("by digest"),
            Some("1".repeat(64).into_bytes())
        );
        assert_eq!(
            store
                .bundle_by_digest(&dev, &"1".repeat(64))
                .await
                .expect("other env"),
            None,
            "a digest is looked up in the agent's own environment only"
        );
        assert!(
            store
                .agents_active_bundles(&org, &all, 10)
                .await
                .expect("agents")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn sqlite_baselines_round_trip_and_bundle_reads_are_scoped() {
        let db = crate::testing::sqlite_temp().await.expect("store");
        baselines_round_trip_and_bundle_reads_are_scoped(db.store().clone()).await;
    }

    #[tokio::test]
    async fn postgres_baselines_round_trip_and_bundle_reads_are_scoped() {
        let Some(db) = crate::testing::postgres_fresh().await.expect("postgres") else {
            return;
        };
        baselines_round_trip_and_bundle_reads_are_scoped(db.store().clone()).await;
    }
}
