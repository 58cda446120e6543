//! The fleet analytics domain (migration 0022): the precomputed state incident-family, posture and regress
//! queries read, and the cursor walk over the evidence index that keeps it up to date.
//!
//! **Upkeep.** One job (in the aggregator's `analysis` feature) reads the evidence index in id order
//! ([`crate::Store::analysis_rows`]), folds a batch into an [`AnalysisDelta`] with the pure `gait-analysis`
//! crate, and hands it to [`crate::Store::apply_analysis`], which in **one transaction** moves the job's cursor
//! with a compare-and-set (`UPDATE … WHERE last_id = <the id it read from>`) and adds the delta. A replica whose
//! cursor moved under it adds nothing (the transaction is rolled back), so each evidence row is counted exactly
//! once however many replicas run the job; every fold is a sum, a minimum, a maximum or a set insert, so the
//! stored state does not depend on how rows were batched or in which order they were indexed.
//!
//! **Reading.** Every read takes an [`AnalysisFilter`] (an org, optionally a project and an environment) and
//! returns only rows inside it; a family seen in two projects is two scope rows, so a reader bound to one project
//! sees that project's occurrences, agents and representatives and nothing of the other. Listings have hard
//! caps ([`MAX_FAMILY_SCOPE_ROWS`], [`MAX_POSTURE_ROWS`]): a read past one is refused with what to narrow.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::evidence::{Arg, EvidenceClass, execute, push_row};
use crate::model::{AgentId, Env, Org, Project, Tenant, to_i64, to_u64};
use crate::rows::Columns;

/// Most evidence rows one upkeep read returns.
pub const MAX_ANALYSIS_BATCH: u32 = 20_000;
/// Most family scope rows (families × environments) one read returns.
pub const MAX_FAMILY_SCOPE_ROWS: u32 = 200_000;
/// Most posture rows (days × tools × verdicts × stages) one read returns.
pub const MAX_POSTURE_ROWS: u32 = 200_000;
/// Representative digests kept per family and environment.
pub const REPRESENTATIVES_PER_SCOPE: u32 = 5;

/// Rows per multi-row statement (at most 11 parameters each).
const CHUNK: usize = 64;

/// One evidence row as the upkeep reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisRow {
    /// Position in the evidence index.
    pub id: u64,
    pub tenant: Tenant,
    pub agent_id: AgentId,
    pub seq: u64,
    pub class: EvidenceClass,
    /// When the agent wrote it (the agent's clock).
    pub created_unix_ms: i64,
    /// When the aggregator committed it.
    pub received_unix_ms: i64,
    pub verdict: Option<String>,
    pub policy_name: Option<String>,
    pub policy_digest: Option<String>,
    pub intent_digest: Option<String>,
    pub tool_name: Option<String>,
    pub stage: Option<String>,
    pub would_have_blocked: bool,
    pub reason_codes: Vec<String>,
    pub matched_rule: Option<String>,
    pub risk_class: Option<String>,
    /// Sorted, comma-joined.
    pub endpoint_classes: Option<String>,
    pub destructive: bool,
    pub artifact_kind: Option<String>,
    pub sha256: Option<String>,
    pub regress_status: Option<String>,
    pub failure_kind: Option<String>,
}

/// A family's definition: what went into its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyDef {
    /// The org it belongs to.
    pub org: Org,
    /// The fingerprint hash (64 hex): the family id.
    pub family: String,
    /// The fingerprint algorithm version.
    pub version: u32,
    /// The short stable key for downstream systems.
    pub dedup_key: String,
    /// `decision` or `regress_failure`.
    pub kind: String,
    /// The tool.
    pub tool: String,
    /// The verdict.
    pub verdict: String,
    /// The normalized fingerprint inputs (canonical JSON text).
    pub inputs: String,
}

/// A family's occurrences in one environment: added by upkeep, read per scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyScope {
    pub tenant: Tenant,
    /// The family id.
    pub family: String,
    pub occurrences: u64,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    /// Highest risk rank seen (0 low or unknown, 1 medium, 2 high, 3 critical).
    pub risk_rank: u8,
    pub destructive: bool,
    pub egress_or_taint: bool,
    /// Strongest verdict seen (0 allow, 1 would block, 2 require approval, 3 block or failure).
    pub severity_rank: u8,
}

/// Decisions of one environment, day, tool, verdict and stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PostureCount {
    /// UTC day (days since the Unix epoch, of the agent's clock).
    pub day: i64,
    pub tool: String,
    pub verdict: String,
    /// `enforce`, `observe`, `dry_run`, or `none`.
    pub stage: String,
    pub decisions: u64,
    /// Of which at high or critical risk.
    pub high_risk: u64,
    /// Of which destructive.
    pub destructive: u64,
}

/// Regress results of one environment and day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegressCount {
    pub project: Project,
    pub env: Env,
    pub day: i64,
    pub passed: u64,
    pub failed: u64,
}

/// What one upkeep batch adds. Keys must be distinct within each list (the job folds before handing it over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnalysisDelta {
    /// Families first seen (kept as first written when already known).
    pub families: Vec<FamilyDef>,
    /// Occurrences per family and environment.
    pub scopes: Vec<FamilyScope>,
    /// `(tenant, family, agent)` reached.
    pub agents: Vec<(Tenant, String, AgentId)>,
    /// `(tenant, family, digest)`: candidate representatives (the store keeps the smallest per scope).
    pub representatives: Vec<(Tenant, String, String)>,
    /// Posture counts per environment (the tenant) to add.
    pub posture: Vec<(Tenant, PostureCount)>,
    /// Regress counts to add.
    pub regress: Vec<(Org, RegressCount)>,
}

impl AnalysisDelta {
    /// Nothing to add.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
            && self.scopes.is_empty()
            && self.agents.is_empty()
            && self.representatives.is_empty()
            && self.posture.is_empty()
            && self.regress.is_empty()
    }
}

/// Which part of an org an analytics read covers, and optionally one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisFilter {
    pub org: Org,
    pub project: Option<Project>,
    pub env: Option<Env>,
    /// Only this family (read paths of one family).
    pub family: Option<String>,
}

impl AnalysisFilter {
    /// All of `org`.
    pub fn org(org: Org) -> Self {
        AnalysisFilter {
            org,
            project: None,
            env: None,
            family: None,
        }
    }

    /// The `WHERE` clause over `org`, `project`, `env` (and `family` when `with_family`) and its text arguments,
    /// numbered from `$1`.
    fn clause(&self, with_family: bool) -> (String, Vec<&str>) {
        let mut sql = String::from(" WHERE org = $1");
        let mut args = vec![self.org.as_str()];
        let family = self.family.as_deref().filter(|_| with_family);
        for (col, value) in [
            ("project", self.project.as_ref().map(Project::as_str)),
            ("env", self.env.as_ref().map(Env::as_str)),
            ("family", family),
        ] {
            if let Some(v) = value {
                args.push(v);
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        (sql, args)
    }
}

fn read_bool(row: &impl Columns, col: &str) -> Result<bool, StoreError> {
    Ok(row.opt_int(col)?.unwrap_or(0) != 0)
}

fn tenant_of(row: &impl Columns, table: &'static str) -> Result<Tenant, StoreError> {
    let corrupt = |c: &str, e: gait_identity::IdError| {
        StoreError::corrupt(table, format!("{c} is not a valid identifier: {e}"))
    };
    Ok(Tenant::new(
        Org::try_from(row.text("org")?).map_err(|e| corrupt("org", e))?,
        Project::try_from(row.text("project")?).map_err(|e| corrupt("project", e))?,
        Env::try_from(row.text("env")?).map_err(|e| corrupt("env", e))?,
    ))
}

fn rank(table: &'static str, col: &str, v: i64) -> Result<u8, StoreError> {
    u8::try_from(v).map_err(|_| StoreError::corrupt(table, format!("{col} is {v}")))
}

async fn rows(mut conn: Conn<'_>, after: u64, limit: u32) -> Result<Vec<AnalysisRow>, StoreError> {
    const SQL: &str = "SELECT id, org, project, env, agent_id, seq, class, created_unix_ms, received_unix_ms, \
         verdict, policy_name, policy_digest, intent_digest, tool_name, stage, would_have_blocked, reason_codes, \
         matched_rule, risk_class, endpoint_classes, destructive, artifact_kind, sha256, regress_status, \
         failure_kind FROM evidence_index WHERE id > $1 ORDER BY id LIMIT $2";
    const T: &str = "evidence_index";
    let after = to_i64("after_id", after)?;
    let limit = i64::from(limit.clamp(1, MAX_ANALYSIS_BATCH));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("analysis_rows"))?;
        found
            .iter()
            .map(|r| {
                let class = r.text("class")?;
                let codes = match r.opt_text("reason_codes")? {
                    Some(text) => serde_json::from_str(&text).map_err(|e| {
                        StoreError::corrupt(T, format!("reason_codes is not a JSON array: {e}"))
                    })?,
                    None => Vec::new(),
                };
                Ok(AnalysisRow {
                    id: to_u64(T, "id", r.int("id")?)?,
                    tenant: tenant_of(r, T)?,
                    agent_id: AgentId::try_from(r.text("agent_id")?).map_err(|e| {
                        StoreError::corrupt(T, format!("agent_id is not a valid identifier: {e}"))
                    })?,
                    seq: to_u64(T, "seq", r.int("seq")?)?,
                    class: match class.as_str() {
                        "decision" => EvidenceClass::Decision,
                        "artifact" => EvidenceClass::Artifact,
                        other => return Err(StoreError::corrupt(T, format!("class is `{other}`"))),
                    },
                    created_unix_ms: r.int("created_unix_ms")?,
                    received_unix_ms: r.int("received_unix_ms")?,
                    verdict: r.opt_text("verdict")?,
                    policy_name: r.opt_text("policy_name")?,
                    policy_digest: r.opt_text("policy_digest")?,
                    intent_digest: r.opt_text("intent_digest")?,
                    tool_name: r.opt_text("tool_name")?,
                    stage: r.opt_text("stage")?,
                    would_have_blocked: read_bool(r, "would_have_blocked")?,
                    reason_codes: codes,
                    matched_rule: r.opt_text("matched_rule")?,
                    risk_class: r.opt_text("risk_class")?,
                    endpoint_classes: r.opt_text("endpoint_classes")?,
                    destructive: read_bool(r, "destructive")?,
                    artifact_kind: r.opt_text("artifact_kind")?,
                    sha256: r.opt_text("sha256")?,
                    regress_status: r.opt_text("regress_status")?,
                    failure_kind: r.opt_text("failure_kind")?,
                })
            })
            .collect()
    })
}

async fn cursor(mut conn: Conn<'_>, name: &str) -> Result<u64, StoreError> {
    const SQL: &str = "SELECT last_id FROM analysis_cursors WHERE name = $1";
    let got: Option<i64> = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(name)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("analysis_cursor"))?);
    got.map_or(Ok(0), |v| to_u64("analysis_cursors", "last_id", v))
}

async fn head(mut conn: Conn<'_>) -> Result<u64, StoreError> {
    const SQL: &str = "SELECT COALESCE(MAX(id), 0) FROM evidence_index";
    let got: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .fetch_one(&mut *c)
        .await
        .map_err(db("analysis_head"))?);
    to_u64("evidence_index", "id", got)
}

/// Moves cursor `name` from `from` to `to`; false when it was not at `from` (another replica moved it).
async fn move_cursor(
    mut conn: Conn<'_>,
    name: &str,
    from: u64,
    to: u64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const ENSURE: &str = "INSERT INTO analysis_cursors (name, last_id, updated_unix_ms) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO NOTHING";
    const MOVE: &str = "UPDATE analysis_cursors SET last_id = $2, updated_unix_ms = $3 \
         WHERE name = $1 AND last_id = $4";
    let (from, to) = (to_i64("from_id", from)?, to_i64("to_id", to)?);
    let moved = db_run!(conn, |c| {
        sqlx::query(ENSURE)
            .bind(name)
            .bind(now_ms)
            .execute(&mut *c)
            .await
            .map_err(db("analysis_cursor: ensure"))?;
        sqlx::query(MOVE)
            .bind(name)
            .bind(to)
            .bind(now_ms)
            .bind(from)
            .execute(&mut *c)
            .await
            .map_err(db("analysis_cursor: move"))?
            .rows_affected()
    });
    Ok(moved == 1)
}

/// Runs one multi-row statement per chunk of `rows`: `head` then one `(…)` per row (built by `row`) then `tail`.
async fn bulk<'a, T>(
    mut conn: Conn<'_>,
    head: &str,
    tail: &str,
    rows: &'a [T],
    width: usize,
    row: impl Fn(&'a T) -> Result<Vec<Arg<'a>>, StoreError>,
    op: &'static str,
) -> Result<(), StoreError> {
    let anonymous = matches!(conn, Conn::Sqlite(_));
    for chunk in rows.chunks(CHUNK) {
        let mut sql = String::from(head);
        let mut args: Vec<Arg<'a>> = Vec::with_capacity(chunk.len() * width);
        for (n, r) in chunk.iter().enumerate() {
            sql.push_str(if n == 0 { "" } else { ", " });
            push_row(&mut sql, anonymous, args.len(), width);
            let values = row(r)?;
            debug_assert_eq!(values.len(), width);
            args.extend(values);
        }
        sql.push_str(tail);
        execute(conn.reborrow(), &sql, &args, op).await?;
    }
    Ok(())
}

/// The later / earlier / larger of the stored value and the excluded one, portable (no GREATEST / max()).
macro_rules! fold_col {
    (max, $table:literal, $col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.",
            $col,
            " > ",
            $table,
            ".",
            $col,
            " THEN excluded.",
            $col,
            " ELSE ",
            $table,
            ".",
            $col,
            " END"
        )
    };
    (min, $table:literal, $col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.",
            $col,
            " < ",
            $table,
            ".",
            $col,
            " THEN excluded.",
            $col,
            " ELSE ",
            $table,
            ".",
            $col,
            " END"
        )
    };
    (sum, $table:literal, $col:literal) => {
        concat!($col, " = ", $table, ".", $col, " + excluded.", $col)
    };
}

async fn add_delta(mut conn: Conn<'_>, d: &AnalysisDelta) -> Result<(), StoreError> {
    bulk(
        conn.reborrow(),
        "INSERT INTO incident_families (org, family, version, dedup_key, kind, tool, verdict, inputs) VALUES ",
        " ON CONFLICT (org, family) DO NOTHING",
        &d.families,
        8,
        |f| {
            Ok(vec![
                Arg::Text(Some(f.org.as_str())),
                Arg::Text(Some(&f.family)),
                Arg::Int(Some(i64::from(f.version))),
                Arg::Text(Some(&f.dedup_key)),
                Arg::Text(Some(&f.kind)),
                Arg::Text(Some(&f.tool)),
                Arg::Text(Some(&f.verdict)),
                Arg::Text(Some(&f.inputs)),
            ])
        },
        "analysis: families",
    )
    .await?;
    bulk(
        conn.reborrow(),
        "INSERT INTO incident_family_scopes (org, project, env, family, occurrences, first_seen_unix_ms, \
         last_seen_unix_ms, risk_rank, destructive, egress_or_taint, severity_rank) VALUES ",
        concat!(
            " ON CONFLICT (org, project, env, family) DO UPDATE SET ",
            fold_col!(sum, "incident_family_scopes", "occurrences"),
            ", ",
            fold_col!(min, "incident_family_scopes", "first_seen_unix_ms"),
            ", ",
            fold_col!(max, "incident_family_scopes", "last_seen_unix_ms"),
            ", ",
            fold_col!(max, "incident_family_scopes", "risk_rank"),
            ", ",
            fold_col!(max, "incident_family_scopes", "destructive"),
            ", ",
            fold_col!(max, "incident_family_scopes", "egress_or_taint"),
            ", ",
            fold_col!(max, "incident_family_scopes", "severity_rank"),
        ),
        &d.scopes,
        11,
        |s| {
            Ok(vec![
                Arg::Text(Some(s.tenant.org.as_str())),
                Arg::Text(Some(s.tenant.project.as_str())),
                Arg::Text(Some(s.tenant.env.as_str())),
                Arg::Text(Some(&s.family)),
                Arg::Int(Some(to_i64("occurrences", s.occurrences)?)),
                Arg::Int(Some(s.first_seen_unix_ms)),
                Arg::Int(Some(s.last_seen_unix_ms)),
                Arg::Int(Some(i64::from(s.risk_rank))),
                Arg::Int(Some(i64::from(s.destructive))),
                Arg::Int(Some(i64::from(s.egress_or_taint))),
                Arg::Int(Some(i64::from(s.severity_rank))),
            ])
        },
        "analysis: family scopes",
    )
    .await?;
    bulk(
        conn.reborrow(),
        "INSERT INTO incident_family_agents (org, project, env, family, agent_id) VALUES ",
        " ON CONFLICT (org, project, env, family, agent_id) DO NOTHING",
        &d.agents,
        5,
        |(t, family, agent)| {
            Ok(vec![
                Arg::Text(Some(t.org.as_str())),
                Arg::Text(Some(t.project.as_str())),
                Arg::Text(Some(t.env.as_str())),
                Arg::Text(Some(family)),
                Arg::Text(Some(agent.as_str())),
            ])
        },
        "analysis: family agents",
    )
    .await?;
    bulk(
        conn.reborrow(),
        "INSERT INTO incident_family_representatives (org, project, env, family, digest) VALUES ",
        " ON CONFLICT (org, project, env, family, digest) DO NOTHING",
        &d.representatives,
        5,
        |(t, family, digest)| {
            Ok(vec![
                Arg::Text(Some(t.org.as_str())),
                Arg::Text(Some(t.project.as_str())),
                Arg::Text(Some(t.env.as_str())),
                Arg::Text(Some(family)),
                Arg::Text(Some(digest)),
            ])
        },
        "analysis: representatives",
    )
    .await?;
    // Keep the smallest digests of each scope a representative was offered to.
    const PRUNE: &str = "DELETE FROM incident_family_representatives WHERE org = $1 AND project = $2 \
         AND env = $3 AND family = $4 AND digest NOT IN (SELECT digest FROM incident_family_representatives \
         WHERE org = $1 AND project = $2 AND env = $3 AND family = $4 ORDER BY digest LIMIT $5)";
    let mut pruned: Vec<(&Tenant, &str)> = d
        .representatives
        .iter()
        .map(|(t, f, _)| (t, f.as_str()))
        .collect();
    pruned.sort_unstable();
    pruned.dedup();
    for (t, family) in pruned {
        db_run!(conn, |c| sqlx::query(PRUNE)
            .bind(t.org.as_str())
            .bind(t.project.as_str())
            .bind(t.env.as_str())
            .bind(family)
            .bind(i64::from(REPRESENTATIVES_PER_SCOPE))
            .execute(&mut *c)
            .await
            .map_err(db("analysis: prune representatives"))?
            .rows_affected());
    }
    bulk(
        conn.reborrow(),
        "INSERT INTO posture_daily (org, project, env, day, tool, verdict, stage, decisions, high_risk, \
         destructive) VALUES ",
        concat!(
            " ON CONFLICT (org, project, env, day, tool, verdict, stage) DO UPDATE SET ",
            fold_col!(sum, "posture_daily", "decisions"),
            ", ",
            fold_col!(sum, "posture_daily", "high_risk"),
            ", ",
            fold_col!(sum, "posture_daily", "destructive"),
        ),
        &d.posture,
        10,
        |(t, p)| {
            Ok(vec![
                Arg::Text(Some(t.org.as_str())),
                Arg::Text(Some(t.project.as_str())),
                Arg::Text(Some(t.env.as_str())),
                Arg::Int(Some(p.day)),
                Arg::Text(Some(&p.tool)),
                Arg::Text(Some(&p.verdict)),
                Arg::Text(Some(&p.stage)),
                Arg::Int(Some(to_i64("decisions", p.decisions)?)),
                Arg::Int(Some(to_i64("high_risk", p.high_risk)?)),
                Arg::Int(Some(to_i64("destructive", p.destructive)?)),
            ])
        },
        "analysis: posture",
    )
    .await?;
    bulk(
        conn.reborrow(),
        "INSERT INTO regress_daily (org, project, env, day, passed, failed) VALUES ",
        concat!(
            " ON CONFLICT (org, project, env, day) DO UPDATE SET ",
            fold_col!(sum, "regress_daily", "passed"),
            ", ",
            fold_col!(sum, "regress_daily", "failed"),
        ),
        &d.regress,
        6,
        |(org, r)| {
            Ok(vec![
                Arg::Text(Some(org.as_str())),
                Arg::Text(Some(r.project.as_str())),
                Arg::Text(Some(r.env.as_str())),
                Arg::Int(Some(r.day)),
                Arg::Int(Some(to_i64("passed", r.passed)?)),
                Arg::Int(Some(to_i64("failed", r.failed)?)),
            ])
        },
        "analysis: regress",
    )
    .await
}

/// Runs `sql` (ending in a `WHERE` built by [`AnalysisFilter::clause`]) with the clause's arguments and a final
/// `LIMIT` of `cap + 1`; refuses a result over `cap`.
macro_rules! filtered {
    ($conn:expr, $sql:expr, $args:expr, $cap:expr, $op:literal, |$r:ident| $decode:expr) => {{
        let sql = format!("{} LIMIT {}", $sql, u64::from($cap) + 1);
        let found = db_run!($conn, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for a in &$args {
                q = q.bind(*a);
            }
            let rows = q.fetch_all(&mut *c).await.map_err(db($op))?;
            rows.iter()
                .map(|$r| $decode)
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        if found.len() > $cap as usize {
            return Err(StoreError::invalid(
                "filter",
                format!(
                    "more than {} rows match: narrow the read to a project or an environment",
                    $cap
                ),
            ));
        }
        Ok(found)
    }};
}

async fn scopes(mut conn: Conn<'_>, f: &AnalysisFilter) -> Result<Vec<FamilyScope>, StoreError> {
    const T: &str = "incident_family_scopes";
    let (clause, args) = f.clause(true);
    let sql = format!(
        "SELECT org, project, env, family, occurrences, first_seen_unix_ms, last_seen_unix_ms, risk_rank, \
         destructive, egress_or_taint, severity_rank FROM incident_family_scopes{clause} \
         ORDER BY family, project, env"
    );
    filtered!(
        conn,
        sql,
        args,
        MAX_FAMILY_SCOPE_ROWS,
        "family_scopes",
        |r| {
            Ok(FamilyScope {
                tenant: tenant_of(r, T)?,
                family: r.text("family")?,
                occurrences: to_u64(T, "occurrences", r.int("occurrences")?)?,
                first_seen_unix_ms: r.int("first_seen_unix_ms")?,
                last_seen_unix_ms: r.int("last_seen_unix_ms")?,
                risk_rank: rank(T, "risk_rank", r.int("risk_rank")?)?,
                destructive: r.int("destructive")? != 0,
                egress_or_taint: r.int("egress_or_taint")? != 0,
                severity_rank: rank(T, "severity_rank", r.int("severity_rank")?)?,
            })
        }
    )
}

async fn agent_counts(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
) -> Result<Vec<(String, u64)>, StoreError> {
    let (clause, args) = f.clause(true);
    let sql = format!(
        "SELECT family, COUNT(*) AS agents FROM incident_family_agents{clause} GROUP BY family ORDER BY family"
    );
    filtered!(
        conn,
        sql,
        args,
        MAX_FAMILY_SCOPE_ROWS,
        "family_agents",
        |r| {
            Ok((
                r.text("family")?,
                to_u64("incident_family_agents", "agents", r.int("agents")?)?,
            ))
        }
    )
}

async fn representatives(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
) -> Result<Vec<(String, String)>, StoreError> {
    let (clause, args) = f.clause(true);
    let sql = format!(
        "SELECT DISTINCT family, digest FROM incident_family_representatives{clause} ORDER BY family, digest"
    );
    let cap = MAX_FAMILY_SCOPE_ROWS * REPRESENTATIVES_PER_SCOPE;
    filtered!(conn, sql, args, cap, "family_representatives", |r| {
        Ok((r.text("family")?, r.text("digest")?))
    })
}

async fn definitions(mut conn: Conn<'_>, f: &AnalysisFilter) -> Result<Vec<FamilyDef>, StoreError> {
    const T: &str = "incident_families";
    let mut sql = String::from(
        "SELECT org, family, version, dedup_key, kind, tool, verdict, inputs FROM incident_families \
         WHERE org = $1",
    );
    let mut args = vec![f.org.as_str()];
    if let Some(family) = &f.family {
        sql.push_str(" AND family = $2");
        args.push(family.as_str());
    }
    sql.push_str(" ORDER BY family");
    filtered!(
        conn,
        sql,
        args,
        MAX_FAMILY_SCOPE_ROWS,
        "incident_families",
        |r| {
            Ok(FamilyDef {
                org: Org::try_from(r.text("org")?).map_err(|e| {
                    StoreError::corrupt(T, format!("org is not a valid identifier: {e}"))
                })?,
                family: r.text("family")?,
                version: u32::try_from(r.int("version")?)
                    .map_err(|_| StoreError::corrupt(T, "version out of range"))?,
                dedup_key: r.text("dedup_key")?,
                kind: r.text("kind")?,
                tool: r.text("tool")?,
                verdict: r.text("verdict")?,
                inputs: r.text("inputs")?,
            })
        }
    )
}

async fn posture(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<PostureCount>, StoreError> {
    const T: &str = "posture_daily";
    let (clause, args) = f.clause(false);
    // Days are integers the caller computed, formatted from i64 values, never text. PostgreSQL sums BIGINT to
    // NUMERIC: the sums are cast back.
    let sql = format!(
        "SELECT day, tool, verdict, stage, CAST(SUM(decisions) AS BIGINT) AS decisions, \
         CAST(SUM(high_risk) AS BIGINT) AS high_risk, CAST(SUM(destructive) AS BIGINT) AS destructive \
         FROM posture_daily{clause} AND day >= {from_day} AND day < {to_day} \
         GROUP BY day, tool, verdict, stage ORDER BY day, tool, verdict, stage"
    );
    filtered!(conn, sql, args, MAX_POSTURE_ROWS, "posture_daily", |r| {
        Ok(PostureCount {
            day: r.int("day")?,
            tool: r.text("tool")?,
            verdict: r.text("verdict")?,
            stage: r.text("stage")?,
            decisions: to_u64(T, "decisions", r.int("decisions")?)?,
            high_risk: to_u64(T, "high_risk", r.int("high_risk")?)?,
            destructive: to_u64(T, "destructive", r.int("destructive")?)?,
        })
    })
}

async fn regress(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<RegressCount>, StoreError> {
    const T: &str = "regress_daily";
    let (clause, args) = f.clause(false);
    let sql = format!(
        "SELECT org, project, env, day, passed, failed FROM regress_daily{clause} AND day >= {from_day} \
         AND day < {to_day} ORDER BY project, env, day"
    );
    filtered!(conn, sql, args, MAX_POSTURE_ROWS, "regress_daily", |r| {
        let t = tenant_of(r, T)?;
        Ok(RegressCount {
            project: t.project,
            env: t.env,
            day: r.int("day")?,
            passed: to_u64(T, "passed", r.int("passed")?)?,
            failed: to_u64(T, "failed", r.int("failed")?)?,
        })
    })
}

impl crate::Store {
    /// Up to `limit` (at most [`MAX_ANALYSIS_BATCH`]) evidence rows after index id `after_id`, in id order, of
    /// every org: what the upkeep job folds next.
    pub async fn analysis_rows(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<AnalysisRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        rows(pooled.conn(), after_id, limit).await
    }

    /// Where upkeep job `name` stands (0 before its first batch).
    pub async fn analysis_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let mut pooled = self.acquire().await?;
        cursor(pooled.conn(), name).await
    }

    /// The highest id in the evidence index (0 when empty): how far upkeep could go now.
    pub async fn analysis_head(&self) -> Result<u64, StoreError> {
        let mut pooled = self.acquire().await?;
        head(pooled.conn()).await
    }

    /// Adds `delta` and moves job `name`'s cursor from `from_id` to `to_id`, in one transaction; `false` (and
    /// nothing added) when the cursor was not at `from_id`: another replica counted these rows.
    pub async fn apply_analysis(
        &self,
        name: &str,
        from_id: u64,
        to_id: u64,
        delta: &AnalysisDelta,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_named("apply_analysis").await?;
        if !move_cursor(tx.conn(), name, from_id, to_id, now_ms).await? {
            tx.rollback("apply_analysis").await?;
            return Ok(false);
        }
        add_delta(tx.conn(), delta).await?;
        tx.commit("apply_analysis").await?;
        Ok(true)
    }

    /// The occurrences of families per environment inside `filter`, by family then project and env.
    pub async fn family_scopes(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<FamilyScope>, StoreError> {
        let mut pooled = self.acquire().await?;
        scopes(pooled.conn(), filter).await
    }

    /// Agents each family reached inside `filter`, by family.
    pub async fn family_agent_counts(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut pooled = self.acquire().await?;
        agent_counts(pooled.conn(), filter).await
    }

    /// `(family, digest)` representatives inside `filter` (at most [`REPRESENTATIVES_PER_SCOPE`] per family and
    /// environment), by family then digest.
    pub async fn family_representatives(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut pooled = self.acquire().await?;
        representatives(pooled.conn(), filter).await
    }

    /// The definitions of the org's families (only `filter.family` when set; project and env do not narrow a
    /// definition, which holds no occurrence), by family.
    pub async fn family_definitions(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<FamilyDef>, StoreError> {
        let mut pooled = self.acquire().await?;
        definitions(pooled.conn(), filter).await
    }

    /// Decision counts inside `filter` for UTC days `from_day..to_day`, summed over its environments, by day,
    /// tool, verdict and stage.
    pub async fn posture_counts(
        &self,
        filter: &AnalysisFilter,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<PostureCount>, StoreError> {
        let mut pooled = self.acquire().await?;
        posture(pooled.conn(), filter, from_day, to_day).await
    }

    /// Regress counts inside `filter` for UTC days `from_day..to_day`, by project, env and day.
    pub async fn regress_counts(
        &self,
        filter: &AnalysisFilter,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<RegressCount>, StoreError> {
        let mut pooled = self.acquire().await?;
        regress(pooled.conn(), filter, from_day, to_day).await
    }
}
