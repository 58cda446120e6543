//! The fleet analytics domain (migration 0022): the precomputed state incident-family, posture and regress
//! queries read, and the cursor walk over the evidence index that keeps it up to date.
//!
//! **Upkeep.** Ingest writes each decision's and failed regress result's incident family (its fingerprint hash)
//! on its evidence row. One job (in the aggregator's `analysis` feature) walks the index in id order: it picks
//! the next range of ids ([`crate::Store::analysis_span`], and [`crate::Store::analysis_ids`] when the range
//! has a gap) and hands it to [`crate::Store::apply_analysis`], which in **one transaction** moves the job's
//! cursor with a compare-and-set (`UPDATE … WHERE last_id = <the id it read from>`), pre-aggregates the range
//! once into a temporary table (one sort of the wide rows), defines the families first seen in it (their
//! fingerprint inputs computed by the pure `gait-analysis` crate, through a callback, from each one's first
//! row), and folds the pre-aggregate into the precomputed tables with `INSERT … SELECT … GROUP BY … ON CONFLICT
//! DO UPDATE` — the aggregation runs inside the database, no evidence row is shipped to the aggregator. (An
//! upkeep that pre-aggregated the range in process as ingest committed it hands that in instead,
//! [`crate::Store::apply_analysis_ranges`] with [`AgentRange`]s: the store then computes each fold's rows from
//! them and upserts those, writing no temporary table and reading no evidence row back.) A
//! replica whose cursor moved under it adds nothing (the transaction is rolled back), so each evidence row is
//! counted exactly once however many replicas run the job; every fold is a sum, a minimum, a maximum, a set
//! insert or "the smallest digest", so the stored state does not depend on how rows were batched or in which
//! order they were indexed.
//!
//! **Reading.** Every read takes an [`AnalysisFilter`] (an org, optionally a project and an environment) and
//! returns only rows inside it; a family seen in two projects is two scope rows, so a reader bound to one project
//! sees that project's occurrences, agents and representatives and nothing of the other. Listings have hard
//! caps ([`MAX_FAMILY_SCOPE_ROWS`], [`MAX_POSTURE_ROWS`]): a read past one is refused with what to narrow.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::evidence::{Arg, EvidenceClass, IndexFields, NewIndexEntry, bind_args, push_row};
use crate::gated::{CallMarking, GatedKey, RangeKeys, gated_key};
use crate::model::{AgentKey, Env, Org, Project, Tenant, to_i64, to_u64};
use crate::rows::Columns;

/// Most evidence rows one upkeep read returns.
pub const MAX_ANALYSIS_BATCH: u32 = 100_000;
/// Most family scope rows (families × environments) one read returns.
pub const MAX_FAMILY_SCOPE_ROWS: u32 = 200_000;
/// Most posture rows (days × tools × verdicts × stages) one read returns.
pub const MAX_POSTURE_ROWS: u32 = 200_000;
/// Representative digests a family shows (the smallest of its environments' representatives).
pub const MAX_REPRESENTATIVES: usize = 5;
/// The policy digest `policy_daily` records for a decision that named none (the range pass's SQL spells it too).
pub const NO_POLICY: &str = "(none)";

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

/// The first evidence row of a family not yet defined: what its fingerprint is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilySample {
    pub org: Org,
    /// The family the row was indexed with.
    pub family: String,
    pub class: EvidenceClass,
    /// The fields a fingerprint reads (the others are empty).
    pub fields: IndexFields,
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
    /// The smallest evidence digest of the family here.
    pub representative: Option<String>,
    /// Agents it reached here.
    pub agents: u64,
}

/// Decisions of one environment, day and tool under one policy digest (`policy_daily`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyCount {
    /// UTC day (days since the Unix epoch, of the agent's clock, as [`PostureCount::day`]).
    pub day: i64,
    pub tool: String,
    /// The deciding policy's digest, or [`NO_POLICY`].
    pub policy_digest: String,
    pub decisions: u64,
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

/// An approval request of a posture window, as approval-path health reads it (aggregator clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalTiming {
    pub state: crate::ApprovalState,
    pub received_unix_ms: i64,
    /// When it was approved or denied (its last change).
    pub updated_unix_ms: i64,
    pub expires_unix_ms: i64,
}

/// The newest folded evidence of one environment (agent clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvFreshness {
    pub project: Project,
    pub env: Env,
    pub last_seen_unix_ms: i64,
}

/// One tool's calls in the indexed runpacks of a scope and window (migration 0025).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunpackTool {
    pub tool: String,
    /// Calls of it.
    pub calls: u64,
    /// Runpacks with at least one.
    pub runpacks: u64,
    /// The smallest SHA-256 of those runpacks (the evidence to open).
    pub runpack_sha256: Option<String>,
    /// Calls with a gate decision in their environment on the same arguments digest (call-level coverage).
    pub gated_calls: u64,
    /// The smallest SHA-256 of the runpacks with a call of it that has none (the ungated call to open).
    pub ungated_runpack_sha256: Option<String>,
}

/// Most manual merges an org holds.
pub const MAX_FAMILY_MERGES: u32 = 10_000;

/// A manual merge in force: `family` reads as part of `into_family` (migration 0023).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyMerge {
    pub org: Org,
    pub family: String,
    pub into_family: String,
    pub reason: String,
    pub merged_by: String,
    pub merged_unix_ms: i64,
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

    /// One environment.
    pub fn env(tenant: &Tenant) -> Self {
        AnalysisFilter {
            org: tenant.org.clone(),
            project: Some(tenant.project.clone()),
            env: Some(tenant.env.clone()),
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

async fn ids(mut conn: Conn<'_>, after: u64, limit: u32) -> Result<Vec<(u64, i64)>, StoreError> {
    const SQL: &str =
        "SELECT id, received_unix_ms FROM evidence_index WHERE id > $1 ORDER BY id LIMIT $2";
    let after = to_i64("after_id", after)?;
    let limit = i64::from(limit.clamp(1, MAX_ANALYSIS_BATCH));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("analysis_ids"))?;
        found
            .iter()
            .map(|r| {
                Ok((
                    to_u64("evidence_index", "id", r.int("id")?)?,
                    r.int("received_unix_ms")?,
                ))
            })
            .collect()
    })
}

async fn span(mut conn: Conn<'_>, after: u64, limit: u32) -> Result<(u64, u64), StoreError> {
    const SQL: &str = "SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS last FROM \
         (SELECT id FROM evidence_index WHERE id > $1 ORDER BY id LIMIT $2) s";
    let after = to_i64("after_id", after)?;
    let limit = i64::from(limit.clamp(1, MAX_ANALYSIS_BATCH));
    let (n, last) = db_run!(conn, |c| {
        let r = sqlx::query(SQL)
            .bind(after)
            .bind(limit)
            .fetch_one(&mut *c)
            .await
            .map_err(db("analysis_span"))?;
        (r.int("n")?, r.int("last")?)
    });
    Ok((
        to_u64("evidence_index", "count", n)?,
        to_u64("evidence_index", "id", last)?,
    ))
}

async fn count_between(mut conn: Conn<'_>, after: u64, to: u64) -> Result<u64, StoreError> {
    const SQL: &str = "SELECT COUNT(*) FROM evidence_index WHERE id > $1 AND id <= $2";
    let (after, to) = (to_i64("after_id", after)?, to_i64("to_id", to)?);
    let n: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(after)
        .bind(to)
        .fetch_one(&mut *c)
        .await
        .map_err(db("analysis_count"))?);
    to_u64("evidence_index", "count", n)
}

/// The columns a [`FamilySample`] is read from (of `evidence_index e`).
macro_rules! sample_columns {
    () => {
        "SELECT e.org, e.family, e.class, e.verdict, e.tool_name, e.reason_codes, e.matched_rule, \
         e.policy_name, e.endpoint_classes, e.failure_kind, e.artifact_kind, e.regress_status"
    };
}

/// A [`FamilySample`] from a row of [`sample_columns`].
fn sample_of(r: &impl Columns) -> Result<FamilySample, StoreError> {
    const T: &str = "evidence_index";
    let class = r.text("class")?;
    let reason_codes = match r.opt_text("reason_codes")? {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            StoreError::corrupt(T, format!("reason_codes is not a JSON array: {e}"))
        })?,
        None => Vec::new(),
    };
    Ok(FamilySample {
        org: Org::try_from(r.text("org")?)
            .map_err(|e| StoreError::corrupt(T, format!("org is not a valid identifier: {e}")))?,
        family: r.text("family")?,
        class: match class.as_str() {
            "decision" => EvidenceClass::Decision,
            "artifact" => EvidenceClass::Artifact,
            other => return Err(StoreError::corrupt(T, format!("class is `{other}`"))),
        },
        fields: IndexFields {
            verdict: r.opt_text("verdict")?,
            tool_name: r.opt_text("tool_name")?,
            reason_codes,
            matched_rule: r.opt_text("matched_rule")?,
            policy_name: r.opt_text("policy_name")?,
            endpoint_classes: r.opt_text("endpoint_classes")?,
            failure_kind: r.opt_text("failure_kind")?,
            artifact_kind: r.opt_text("artifact_kind")?,
            regress_status: r.opt_text("regress_status")?,
            ..IndexFields::default()
        },
    })
}

async fn samples(mut conn: Conn<'_>) -> Result<Vec<FamilySample>, StoreError> {
    // One row per family of the range (pre-aggregated in `analysis_range`) that has no definition yet: the
    // first row of it.
    const SQL: &str = concat!(
        sample_columns!(),
        " FROM (SELECT org, family, MIN(first_id) AS id FROM analysis_range WHERE family IS NOT NULL \
         GROUP BY org, family) g JOIN evidence_index e ON e.id = g.id \
         WHERE NOT EXISTS (SELECT 1 FROM incident_families f WHERE f.org = g.org AND f.family = g.family) \
         ORDER BY e.org, e.family"
    );
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("new_family_samples"))?;
        found.iter().map(sample_of).collect()
    })
}

/// [`samples`] of a fed range: `firsts` are the first rows of the range's families that may have no
/// definition yet (the first row of each, by family); the rows of families defined already are left out.
async fn samples_at(mut conn: Conn<'_>, firsts: &[i64]) -> Result<Vec<FamilySample>, StoreError> {
    const OP: &str = "new_family_samples";
    const NOT_DEFINED: &str = " AND NOT EXISTS (SELECT 1 FROM incident_families f WHERE f.org = e.org \
         AND f.family = e.family)";
    let mut found = Vec::new();
    for chunk in firsts.chunks(rows_per_statement(&conn)) {
        let mut rows = db_run!(conn,
            sqlite: |c| {
                let mut sql = String::from(concat!(sample_columns!(), " FROM evidence_index e WHERE e.id IN ("));
                for i in 0..chunk.len() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                }
                sql.push(')');
                sql.push_str(NOT_DEFINED);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(*id);
                }
                let rows = q.fetch_all(&mut *c).await.map_err(db(OP))?;
                rows.iter().map(sample_of).collect::<Result<Vec<_>, _>>()?
            },
            postgres: |c| {
                let sql = format!(
                    "{} FROM evidence_index e WHERE e.id = ANY($1){NOT_DEFINED}",
                    sample_columns!()
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(chunk)
                    .fetch_all(&mut *c)
                    .await
                    .map_err(db(OP))?;
                rows.iter().map(sample_of).collect::<Result<Vec<_>, _>>()?
            },
        );
        found.append(&mut rows);
    }
    // As `samples` orders them.
    found.sort_by(|a, b| (a.org.as_str(), &a.family).cmp(&(b.org.as_str(), &b.family)));
    Ok(found)
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

/// The rows of the range `id > $1 AND id <= $2` (a literal for `concat!`).
macro_rules! in_range {
    () => {
        " FROM evidence_index WHERE id > $1 AND id <= $2"
    };
}

/// When a row happened for analytics: the agent's clock, unless it is more than 5 minutes ahead of the
/// aggregator's arrival time (a skewed clock), then the arrival time. A future-dated row would otherwise keep its
/// family open and its posture day in the future; a late (offline, synced later) row keeps its own time.
macro_rules! at_ms {
    () => {
        "(CASE WHEN created_unix_ms > received_unix_ms + 300000 THEN received_unix_ms ELSE created_unix_ms END)"
    };
}

/// Risk rank of the `risk_class` column: 0 low or unknown, 1 medium, 2 high, 3 critical.
macro_rules! risk_rank {
    () => {
        "CASE WHEN risk_class = 'critical' THEN 3 WHEN risk_class = 'high' THEN 2 \
         WHEN risk_class = 'medium' THEN 1 ELSE 0 END"
    };
}

/// The range's columns with `$lower_codes` as the lowercased reason codes ([`RANGE_COLUMNS`]).
macro_rules! range_columns {
    ($lower_codes:literal) => {
        concat!(
            " AS SELECT org, project, env, family, agent_id, ",
            at_ms!(),
            " / 86400000 AS day, COALESCE(tool_name, '(unknown)') AS tool, verdict, COALESCE(stage, 'none') AS stage, \
             class, COALESCE(policy_digest, '(none)') AS policy, MIN(id) AS first_id, COUNT(*) AS n, MIN(",
            at_ms!(),
            ") AS first_seen, MAX(",
            at_ms!(),
            ") AS last_seen, MAX(",
            risk_rank!(),
            ") AS risk_rank, MAX(CASE WHEN destructive = 1 THEN 1 ELSE 0 END) AS destructive, \
             MAX(CASE WHEN LOWER(endpoint_classes) LIKE 'net.%' OR LOWER(endpoint_classes) LIKE '%,net.%' \
             OR ",
            $lower_codes,
            " LIKE '%taint%' THEN 1 ELSE 0 END) AS egress_or_taint, \
             MAX(CASE WHEN class = 'artifact' OR verdict = 'block' THEN 3 WHEN verdict = 'require_approval' THEN 2 \
             WHEN verdict = 'dry_run' OR would_have_blocked = 1 THEN 1 ELSE 0 END) AS severity_rank, \
             SUM(CASE WHEN risk_class = 'high' OR risk_class = 'critical' THEN 1 ELSE 0 END) AS high_risk, \
             SUM(CASE WHEN destructive = 1 THEN 1 ELSE 0 END) AS destructive_n, \
             SUM(CASE WHEN regress_status = 'pass' THEN 1 ELSE 0 END) AS passed, \
             SUM(CASE WHEN regress_status IS NOT NULL AND regress_status <> 'pass' THEN 1 ELSE 0 END) AS failed, \
             MIN(CASE WHEN class = 'artifact' THEN sha256 ELSE intent_digest END) AS representative",
            in_range!(),
            " AND (class = 'decision' OR artifact_kind = 'regress_result') \
             GROUP BY org, project, env, family, agent_id, ",
            at_ms!(),
            " / 86400000, COALESCE(tool_name, '(unknown)'), verdict, COALESCE(stage, 'none'), class, \
             COALESCE(policy_digest, '(none)')"
        )
    };
}

/// The range `($1, $2]` pre-aggregated once into the temporary table `analysis_range` at the grain every
/// fold needs (environment, family, agent, day, tool, verdict, stage, class): one pass over the wide evidence
/// rows, after which the folds, the agents new to a family and the families to define read a table of a few
/// rows per family, agent and day. (The family implies tool, verdict and class; they are keys for rows indexed
/// before families existed, which count in posture only.)
/// Letters are lowercased as ASCII on both backends (SQLite's `LOWER`; PostgreSQL's under the C collation), as
/// [`AgentRange::add`] does.
const RANGE_COLUMNS: &str = range_columns!("LOWER(reason_codes)");
/// [`RANGE_COLUMNS`] on PostgreSQL.
const RANGE_COLUMNS_PG: &str = range_columns!("LOWER(reason_codes COLLATE \"C\")");

/// The upkeep's in-process maps, keyed by evidence fields: foldhash, hashbrown's default hasher (seeded per
/// process, so keys an agent chooses cannot be aimed at one bucket), cheaper than std's SipHash on these short
/// string keys (docs/benchmarks.md, stop 38).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The grain of [`RANGE_COLUMNS`] below the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RangeKey {
    family: Option<String>,
    day: i64,
    tool: String,
    verdict: Option<String>,
    stage: String,
    class: EvidenceClass,
    /// The deciding policy's digest, `(none)` when the record named none.
    policy: String,
}

/// A [`RangeKey`] borrowed from a record's fields, to look its group up without allocating (most records of a
/// range fall into a group that exists). Its fields are [`RangeKey`]'s, in the same order and hashing alike
/// (`&str` hashes as `String`), as [`hashbrown::Equivalent`] requires.
#[derive(Hash)]
struct RangeKeyRef<'a> {
    family: Option<&'a str>,
    day: i64,
    tool: &'a str,
    verdict: Option<&'a str>,
    stage: &'a str,
    class: EvidenceClass,
    policy: &'a str,
}

impl hashbrown::Equivalent<RangeKey> for RangeKeyRef<'_> {
    fn equivalent(&self, key: &RangeKey) -> bool {
        self.day == key.day
            && self.class == key.class
            && self.family == key.family.as_deref()
            && self.tool == key.tool
            && self.verdict == key.verdict.as_deref()
            && self.stage == key.stage
            && self.policy == key.policy
    }
}

impl RangeKeyRef<'_> {
    fn to_owned(&self) -> RangeKey {
        RangeKey {
            family: self.family.map(str::to_owned),
            day: self.day,
            tool: self.tool.to_owned(),
            verdict: self.verdict.map(str::to_owned),
            stage: self.stage.to_owned(),
            class: self.class,
            policy: self.policy.to_owned(),
        }
    }
}

/// [`AgentRange`]'s groups.
type Groups = hashbrown::HashMap<RangeKey, RangeCounts, foldhash::fast::RandomState>;

/// The aggregates of one [`RangeKey`], as [`RANGE_COLUMNS`] computes them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RangeCounts {
    first_id: u64,
    n: u64,
    first_seen: i64,
    last_seen: i64,
    risk_rank: i64,
    destructive: i64,
    egress_or_taint: i64,
    severity_rank: i64,
    high_risk: u64,
    destructive_n: u64,
    passed: u64,
    failed: u64,
    representative: Option<String>,
}

impl RangeCounts {
    /// Adds `o`'s counts to this group's, as the `GROUP BY` of [`RANGE_COLUMNS`] would; `o`'s representative is
    /// copied only when it wins.
    fn merge_from(&mut self, o: &RangeCounts) {
        self.merge_counts(o);
        self.offer(o.representative.as_deref());
    }

    /// [`RangeCounts::merge_from`] but the representative.
    fn merge_counts(&mut self, o: &RangeCounts) {
        self.first_id = self.first_id.min(o.first_id);
        self.n += o.n;
        self.first_seen = self.first_seen.min(o.first_seen);
        self.last_seen = self.last_seen.max(o.last_seen);
        self.risk_rank = self.risk_rank.max(o.risk_rank);
        self.destructive = self.destructive.max(o.destructive);
        self.egress_or_taint = self.egress_or_taint.max(o.egress_or_taint);
        self.severity_rank = self.severity_rank.max(o.severity_rank);
        self.high_risk += o.high_risk;
        self.destructive_n += o.destructive_n;
        self.passed += o.passed;
        self.failed += o.failed;
    }

    /// Keeps `theirs` as the representative when it is smaller (`MIN`, which ignores NULL).
    fn offer(&mut self, theirs: Option<&str>) {
        if let Some(theirs) = theirs
            && self
                .representative
                .as_deref()
                .is_none_or(|ours| theirs < ours)
        {
            self.representative = Some(theirs.to_owned());
        }
    }
}

/// Whether `haystack` contains `needle` (ASCII lowercase), ignoring ASCII case: `LOWER(haystack) LIKE
/// '%needle%'` without lowering a copy.
fn contains_ascii_lowercase(haystack: &str, needle: &[u8]) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether a reason-code list, as stored (a JSON array), mentions taint: `LOWER(reason_codes) LIKE '%taint%'`.
fn mentions_taint(codes: &[String]) -> bool {
    // A code that JSON escapes could spell the word only in its stored form; check that form then.
    // (The characters JSON escapes: controls below U+0020, quote and backslash.)
    if codes
        .iter()
        .any(|c| c.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'))
    {
        return serde_json::to_string(codes)
            .is_ok_and(|text| text.to_ascii_lowercase().contains("taint"));
    }
    // Otherwise codes are separated by `","`, so the word lies inside one code.
    codes.iter().any(|c| contains_ascii_lowercase(c, b"taint"))
}

/// What [`crate::Store::apply_analysis_ranges`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangesApplied {
    /// The range was folded from the ranges given.
    Folded,
    /// Another replica moved the cursor first: nothing was added.
    LostRace,
    /// The index holds another number of ids in the range than the ranges: nothing was added.
    Mismatch,
}

/// One agent's evidence rows of a range pre-aggregated in process, at the grain and with the aggregates of
/// `analysis_range` ([`RANGE_COLUMNS`], which the store computes from the rows when no [`AgentRange`] is given):
/// an upkeep that saw the rows committed folds them without reading them back
/// ([`crate::Store::apply_analysis_ranges`]). Its `add` and the SQL must count alike (a test holds them
/// equal on both backends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRange {
    key: AgentKey,
    groups: Groups,
    /// The evidence id and gated-call key of each decision with a tool and an arguments digest, for the call
    /// merge ([`crate::gated`]).
    calls: Vec<(u64, GatedKey)>,
    /// The evidence id and seq of each runpack added that listed calls (so the call merge knows which calls
    /// were indexed in a fed range without reading their runpacks' rows).
    runpacks: Vec<(u64, u64)>,
}

impl AgentRange {
    /// An empty range of `key`'s rows.
    pub fn new(key: AgentKey) -> Self {
        Self {
            key,
            groups: Groups::default(),
            calls: Vec::new(),
            runpacks: Vec::new(),
        }
    }

    /// Takes the (evidence id, seq) of the runpacks added that listed calls.
    pub fn take_runpacks(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.runpacks)
    }

    /// Takes the (evidence id, gated-call key) of the decisions added that carry a tool and an arguments digest
    /// (what the call merge reads back from the same rows).
    pub fn take_calls(&mut self) -> Vec<(u64, GatedKey)> {
        std::mem::take(&mut self.calls)
    }

    /// The agent.
    pub fn key(&self) -> &AgentKey {
        &self.key
    }

    /// Pre-aggregated rows held.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no row was added (or none that upkeep counts).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds evidence row `id`, indexed from `entry` at `received_ms` for a record created at `created_ms`, as
    /// the range pass counts it: decisions and regress results only (other artifacts count in no fold).
    pub fn add(&mut self, id: u64, created_ms: i64, received_ms: i64, entry: &NewIndexEntry) {
        let f = &entry.fields;
        let class = entry.class;
        if !f.runpack_calls.is_empty() {
            self.runpacks.push((id, entry.seq));
        }
        if class != EvidenceClass::Decision && f.artifact_kind.as_deref() != Some("regress_result")
        {
            return;
        }
        let at = if created_ms > received_ms.saturating_add(300_000) {
            received_ms
        } else {
            created_ms
        };
        if class == EvidenceClass::Decision
            && let (Some(tool), Some(args)) = (f.tool_name.as_deref(), f.args_digest.as_deref())
            && let Some(k) = gated_key(tool, args)
        {
            self.calls.push((id, k));
        }
        let verdict = f.verdict.as_deref();
        let risk = f.risk_class.as_deref();
        let destructive = i64::from(f.destructive == Some(true));
        let egress = f.endpoint_classes.as_deref().is_some_and(|e| {
            e.as_bytes()
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"net."))
                || contains_ascii_lowercase(e, b",net.")
        }) || mentions_taint(&f.reason_codes);
        let severity = if class == EvidenceClass::Artifact || verdict == Some("block") {
            3
        } else if verdict == Some("require_approval") {
            2
        } else if verdict == Some("dry_run") || f.would_have_blocked == Some(true) {
            1
        } else {
            0
        };
        let one = RangeCounts {
            first_id: id,
            n: 1,
            first_seen: at,
            last_seen: at,
            risk_rank: match risk {
                Some("critical") => 3,
                Some("high") => 2,
                Some("medium") => 1,
                _ => 0,
            },
            destructive,
            egress_or_taint: i64::from(egress),
            severity_rank: severity,
            high_risk: u64::from(matches!(risk, Some("high" | "critical"))),
            destructive_n: destructive.unsigned_abs(),
            passed: u64::from(f.regress_status.as_deref() == Some("pass")),
            failed: u64::from(f.regress_status.as_deref().is_some_and(|s| s != "pass")),
            representative: None,
        };
        let representative = match class {
            EvidenceClass::Artifact => f.sha256.as_deref(),
            EvidenceClass::Decision => f.intent_digest.as_deref(),
        };
        let key = RangeKeyRef {
            family: f.family.as_deref(),
            day: at / 86_400_000,
            tool: f.tool_name.as_deref().unwrap_or("(unknown)"),
            verdict,
            stage: f.stage.as_deref().unwrap_or("none"),
            class,
            policy: f.policy_digest.as_deref().unwrap_or(NO_POLICY),
        };
        // Strings are copied only for a new group, or a representative that wins.
        match self.groups.get_mut(&key) {
            Some(group) => {
                group.merge_counts(&one);
                group.offer(representative);
            }
            None => {
                self.groups.insert(
                    key.to_owned(),
                    RangeCounts {
                        representative: representative.map(str::to_owned),
                        ..one
                    },
                );
            }
        }
    }

    /// Counts `counts` in `key`'s group.
    fn put(&mut self, key: RangeKey, counts: RangeCounts) {
        match self.groups.entry(key) {
            hashbrown::hash_map::Entry::Occupied(mut o) => o.get_mut().merge_from(&counts),
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(counts);
            }
        }
    }

    /// The families of the rows held.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().filter_map(|k| k.family.as_deref())
    }

    /// Adds `other` (rows of the same agent, none of them already here).
    pub fn merge(&mut self, mut other: AgentRange) {
        self.calls.append(&mut other.calls);
        self.runpacks.append(&mut other.runpacks);
        for (key, counts) in other.groups {
            self.put(key, counts);
        }
    }
}

/// Each precomputed table with the columns a fold writes (literals for `concat!`).
macro_rules! scopes_into {
    () => {
        "incident_family_scopes (org, project, env, family, occurrences, first_seen_unix_ms, last_seen_unix_ms, \
         risk_rank, destructive, egress_or_taint, severity_rank, representative, agents)"
    };
}
macro_rules! posture_into {
    () => {
        "posture_daily (org, project, env, day, tool, verdict, stage, decisions, high_risk, destructive)"
    };
}
macro_rules! org_posture_into {
    () => {
        "posture_daily_org (org, day, tool, verdict, stage, decisions, high_risk, destructive)"
    };
}
macro_rules! policies_into {
    () => {
        "policy_daily (org, project, env, day, tool, policy_digest, decisions)"
    };
}
macro_rules! regress_into {
    () => {
        "regress_daily (org, project, env, day, passed, failed)"
    };
}

/// How each fold adds a range's row to the stored one.
macro_rules! scopes_upsert {
    () => {
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
            ", ",
            fold_col!(sum, "incident_family_scopes", "agents"),
            ", representative = CASE WHEN incident_family_scopes.representative IS NULL \
             OR excluded.representative < incident_family_scopes.representative THEN excluded.representative \
             ELSE incident_family_scopes.representative END",
        )
    };
}
macro_rules! posture_upsert {
    () => {
        concat!(
            " ON CONFLICT (org, project, env, day, tool, verdict, stage) DO UPDATE SET ",
            fold_col!(sum, "posture_daily", "decisions"),
            ", ",
            fold_col!(sum, "posture_daily", "high_risk"),
            ", ",
            fold_col!(sum, "posture_daily", "destructive"),
        )
    };
}
macro_rules! org_posture_upsert {
    () => {
        concat!(
            " ON CONFLICT (org, day, tool, verdict, stage) DO UPDATE SET ",
            fold_col!(sum, "posture_daily_org", "decisions"),
            ", ",
            fold_col!(sum, "posture_daily_org", "high_risk"),
            ", ",
            fold_col!(sum, "posture_daily_org", "destructive"),
        )
    };
}
macro_rules! policies_upsert {
    () => {
        concat!(
            " ON CONFLICT (org, project, env, day, tool, policy_digest) DO UPDATE SET ",
            fold_col!(sum, "policy_daily", "decisions"),
        )
    };
}
macro_rules! regress_upsert {
    () => {
        concat!(
            " ON CONFLICT (org, project, env, day) DO UPDATE SET ",
            fold_col!(sum, "regress_daily", "passed"),
            ", ",
            fold_col!(sum, "regress_daily", "failed"),
        )
    };
}

/// Rows per statement on SQLite (its bound parameters stay under 32,766).
const ROWS_PER_STATEMENT: usize = 1_000;

/// Rows per statement on `conn`'s backend: PostgreSQL binds a column as one array, so it takes them all at once
/// (up to a range's rows).
fn rows_per_statement(conn: &Conn<'_>) -> usize {
    match conn {
        Conn::Sqlite(_) => ROWS_PER_STATEMENT,
        _ => 1 << 24,
    }
}

/// The `INSERT` of `rows` rows of `types.len()` columns into `into` (a table and its column list), then
/// `suffix` (an `ON CONFLICT …` and/or `RETURNING …`): multi-row `VALUES` with anonymous placeholders on SQLite
/// (numbered ones make sqlx's binding quadratic, see [`crate::evidence`]), one `UNNEST` of a column array per
/// column on PostgreSQL (`types` are the columns' types there).
fn insert_sql(sqlite: bool, into: &str, types: &[&str], rows: usize, suffix: &str) -> String {
    let width = types.len();
    let mut sql = String::with_capacity(64 + into.len() + suffix.len() + rows * width * 3);
    sql.push_str("INSERT INTO ");
    sql.push_str(into);
    if sqlite {
        sql.push_str(" VALUES ");
        for n in 0..rows {
            sql.push_str(if n == 0 { "" } else { ", " });
            push_row(&mut sql, true, 0, width);
        }
    } else {
        sql.push_str(" SELECT * FROM UNNEST(");
        for (i, t) in types.iter().enumerate() {
            sql.push_str(&format!(
                "{}${}::{t}[]",
                if i == 0 { "" } else { ", " },
                i + 1
            ));
        }
        sql.push(')');
    }
    sql.push_str(suffix);
    sql
}

/// A column's values, as PostgreSQL binds an `UNNEST` argument.
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
}

/// Column `col` of the flat rows `args` (`width` to a row).
fn column<'a>(args: &[Arg<'a>], width: usize, col: usize) -> Column<'a> {
    let cells = args.iter().skip(col).step_by(width);
    match args.get(col) {
        Some(Arg::Int(_)) => Column::Int(
            cells
                .map(|a| match a {
                    Arg::Int(i) => *i,
                    Arg::Text(_) => None,
                })
                .collect(),
        ),
        _ => Column::Text(
            cells
                .map(|a| match a {
                    Arg::Text(t) => *t,
                    Arg::Int(_) => None,
                })
                .collect(),
        ),
    }
}

/// The [`insert_sql`] statement of the flat rows `$args` (`$types.len()` to a row) into `$into`, then `$suffix`,
/// with its arguments bound: row by row on `sqlite`, one array per column on `postgres`.
macro_rules! insert_query {
    (sqlite, $into:expr, $types:expr, $args:expr, $suffix:expr) => {
        bind_args!(
            sqlx::query(sqlx::AssertSqlSafe(insert_sql(
                true,
                $into,
                $types,
                $args.len() / $types.len(),
                $suffix
            ))),
            $args
        )
    };
    (postgres, $into:expr, $types:expr, $args:expr, $suffix:expr) => {{
        let width = $types.len();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(
            false,
            $into,
            $types,
            $args.len() / width,
            $suffix,
        )));
        for col in 0..width {
            q = match column($args, width, col) {
                Column::Text(v) => q.bind(v),
                Column::Int(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Runs the [`insert_sql`] of the flat rows `args` (`types.len()` to a row) into `into`, then `suffix`.
async fn insert_rows(
    mut conn: Conn<'_>,
    op: &'static str,
    into: &str,
    types: &[&str],
    args: &[Arg<'_>],
    suffix: &str,
) -> Result<(), StoreError> {
    for chunk in args.chunks(rows_per_statement(&conn) * types.len()) {
        db_run!(conn,
            sqlite: |c| insert_query!(sqlite, into, types, chunk, suffix)
                .execute(&mut *c)
                .await
                .map_err(db(op))?
                .rows_affected(),
            postgres: |c| insert_query!(postgres, into, types, chunk, suffix)
                .execute(&mut *c)
                .await
                .map_err(db(op))?
                .rows_affected(),
        );
    }
    Ok(())
}

/// Records the (org, project, env, family, agent) pairs `args` (flat, five to a pair, distinct) in
/// `incident_family_agents` and answers the (org, project, env, family) of each pair that was not there yet.
async fn add_family_agents(
    mut conn: Conn<'_>,
    args: &[Arg<'_>],
) -> Result<Vec<(String, String, String, String)>, StoreError> {
    const OP: &str = "analysis: family agents";
    const INTO: &str = "incident_family_agents (org, project, env, family, agent_id)";
    const SUFFIX: &str = " ON CONFLICT DO NOTHING RETURNING org, project, env, family";
    const TYPES: [&str; 5] = ["text"; 5];
    fn scope_of(r: &impl Columns) -> Result<(String, String, String, String), StoreError> {
        Ok((
            r.text("org")?,
            r.text("project")?,
            r.text("env")?,
            r.text("family")?,
        ))
    }
    let mut added = Vec::new();
    for chunk in args.chunks(rows_per_statement(&conn) * TYPES.len()) {
        let rows = db_run!(conn,
            sqlite: |c| insert_query!(sqlite, INTO, &TYPES, chunk, SUFFIX)
                .fetch_all(&mut *c)
                .await
                .map_err(db(OP))?
                .iter()
                .map(scope_of)
                .collect::<Result<Vec<_>, _>>()?,
            postgres: |c| insert_query!(postgres, INTO, &TYPES, chunk, SUFFIX)
                .fetch_all(&mut *c)
                .await
                .map_err(db(OP))?
                .iter()
                .map(scope_of)
                .collect::<Result<Vec<_>, _>>()?,
        );
        added.extend(rows);
    }
    Ok(added)
}

/// A fold's rows keyed in its table's primary-key order, so they are written in key order (the upserts then
/// probe the table's B-tree in order).
fn sorted<K: Ord, V>(rows: HashMap<K, V>) -> Vec<(K, V)> {
    let mut rows: Vec<(K, V)> = rows.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// One family's aggregates in one environment, as the family scope fold computes them.
struct ScopeRow<'a> {
    n: u64,
    first_seen: i64,
    last_seen: i64,
    risk_rank: i64,
    destructive: i64,
    egress_or_taint: i64,
    severity_rank: i64,
    representative: Option<&'a str>,
}

impl<'a> ScopeRow<'a> {
    fn of(c: &'a RangeCounts) -> Self {
        Self {
            n: c.n,
            first_seen: c.first_seen,
            last_seen: c.last_seen,
            risk_rank: c.risk_rank,
            destructive: c.destructive,
            egress_or_taint: c.egress_or_taint,
            severity_rank: c.severity_rank,
            representative: c.representative.as_deref(),
        }
    }

    /// Adds `c`. The representative is the smaller digest by bytes: `MIN` orders them alike on both backends,
    /// since the index admits only 64 lowercase hex digests.
    fn add(&mut self, c: &'a RangeCounts) {
        self.n += c.n;
        self.first_seen = self.first_seen.min(c.first_seen);
        self.last_seen = self.last_seen.max(c.last_seen);
        self.risk_rank = self.risk_rank.max(c.risk_rank);
        self.destructive = self.destructive.max(c.destructive);
        self.egress_or_taint = self.egress_or_taint.max(c.egress_or_taint);
        self.severity_rank = self.severity_rank.max(c.severity_rank);
        if let Some(theirs) = c.representative.as_deref()
            && self.representative.is_none_or(|ours| theirs < ours)
        {
            self.representative = Some(theirs);
        }
    }
}

/// Folds a fed range straight from its agents' pre-aggregated rows: each fold's rows are computed here, at the
/// fold's own grain, and upserted as they are ([`FOLD`] computes the same rows from `analysis_range` when a range
/// is read back; a test holds the two equal on both backends). No temporary table is written. Families are
/// defined and (family, agent) pairs recorded only for the pairs `known` does not vouch for: a pair a fold
/// from this feed committed is recorded, and its family defined, for good.
async fn fold_fed(
    mut conn: Conn<'_>,
    ranges: &[AgentRange],
    known: &(dyn Fn(&AgentKey, &str) -> bool + Sync),
    define: &(dyn Fn(&[FamilySample]) -> Vec<FamilyDef> + Sync),
    laps: &mut Laps,
) -> Result<(), StoreError> {
    /// (org, project, env)
    type Scope<'a> = (&'a str, &'a str, &'a str);
    let mut scopes: HashMap<(Scope<'_>, &str), ScopeRow<'_>> = HashMap::default();
    let mut posture: HashMap<(Scope<'_>, i64, &str, &str, &str), [u64; 3]> = HashMap::default();
    let mut org_posture: HashMap<(&str, i64, &str, &str, &str), [u64; 3]> = HashMap::default();
    let mut policies: HashMap<(Scope<'_>, i64, &str, &str), u64> = HashMap::default();
    let mut regress: HashMap<(Scope<'_>, i64), [u64; 2]> = HashMap::default();
    // The first row of each family, by org (for the families that may have no definition yet).
    let mut firsts: HashMap<(&str, &str), u64> = HashMap::default();
    let mut pairs: Vec<(Scope<'_>, &str, &str)> = Vec::new();
    let mut maybe_new: HashSet<(&str, &str)> = HashSet::default();
    for r in ranges {
        let t = &r.key.tenant;
        let env = (t.org.as_str(), t.project.as_str(), t.env.as_str());
        let mut families: Vec<&str> = Vec::new();
        for (k, c) in &r.groups {
            if let Some(family) = k.family.as_deref() {
                families.push(family);
                scopes
                    .entry((env, family))
                    .and_modify(|s| s.add(c))
                    .or_insert_with(|| ScopeRow::of(c));
                firsts
                    .entry((env.0, family))
                    .and_modify(|f| *f = (*f).min(c.first_id))
                    .or_insert(c.first_id);
            }
            match (k.class, k.verdict.as_deref()) {
                (EvidenceClass::Decision, Some(verdict)) => {
                    let counts = [c.n, c.high_risk, c.destructive_n];
                    let add = |sum: &mut [u64; 3]| {
                        for (s, n) in sum.iter_mut().zip(counts) {
                            *s += n;
                        }
                    };
                    add(posture
                        .entry((env, k.day, k.tool.as_str(), verdict, k.stage.as_str()))
                        .or_default());
                    add(org_posture
                        .entry((env.0, k.day, k.tool.as_str(), verdict, k.stage.as_str()))
                        .or_default());
                    *policies
                        .entry((env, k.day, k.tool.as_str(), k.policy.as_str()))
                        .or_default() += c.n;
                }
                (EvidenceClass::Artifact, _) if c.passed + c.failed > 0 => {
                    let sum = regress.entry((env, k.day)).or_default();
                    sum[0] += c.passed;
                    sum[1] += c.failed;
                }
                _ => {}
            }
        }
        families.sort_unstable();
        families.dedup();
        for f in families {
            if !known(&r.key, f) {
                pairs.push((env, f, r.key.agent_id.as_str()));
                maybe_new.insert((env.0, f));
            }
        }
    }
    laps.took("range (in process)");

    // Families met first here: their first rows, unless defined already.
    if !maybe_new.is_empty() {
        let mut ids = maybe_new
            .iter()
            .filter_map(|k| firsts.get(k))
            .map(|id| to_i64("first_id", *id))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        for d in &define(&samples_at(conn.reborrow(), &ids).await?) {
            define_family(conn.reborrow(), d).await?;
        }
    }
    laps.took("define");

    // (family, agent) pairs recorded now, counted per scope.
    pairs.sort_unstable();
    let mut added: HashMap<(String, String, String, String), u64> = HashMap::default();
    if !pairs.is_empty() {
        let args: Vec<Arg<'_>> = pairs
            .iter()
            .flat_map(|((org, project, env), family, agent)| {
                [org, project, env, family, agent].map(|v| Arg::Text(Some(*v)))
            })
            .collect();
        for scope in add_family_agents(conn.reborrow(), &args).await? {
            *added.entry(scope).or_default() += 1;
        }
    }
    laps.took("new agents");

    let mut args: Vec<Arg<'_>> = Vec::new();
    for (((org, project, env), family), s) in sorted(scopes) {
        let agents = if added.is_empty() {
            0
        } else {
            added
                .get(&(org.into(), project.into(), env.into(), family.into()))
                .copied()
                .unwrap_or(0)
        };
        args.extend([
            Arg::Text(Some(org)),
            Arg::Text(Some(project)),
            Arg::Text(Some(env)),
            Arg::Text(Some(family)),
            Arg::Int(Some(to_i64("occurrences", s.n)?)),
            Arg::Int(Some(s.first_seen)),
            Arg::Int(Some(s.last_seen)),
            Arg::Int(Some(s.risk_rank)),
            Arg::Int(Some(s.destructive)),
            Arg::Int(Some(s.egress_or_taint)),
            Arg::Int(Some(s.severity_rank)),
            Arg::Text(s.representative),
            Arg::Int(Some(to_i64("agents", agents)?)),
        ]);
    }
    const SCOPE_TYPES: [&str; 13] = [
        "text", "text", "text", "text", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint",
        "bigint", "text", "bigint",
    ];
    insert_rows(
        conn.reborrow(),
        "analysis: family scopes",
        scopes_into!(),
        &SCOPE_TYPES,
        &args,
        scopes_upsert!(),
    )
    .await?;
    laps.took("family scopes");

    args.clear();
    for (((org, project, env), day, tool, verdict, stage), [n, high, destructive]) in
        sorted(posture)
    {
        args.extend([
            Arg::Text(Some(org)),
            Arg::Text(Some(project)),
            Arg::Text(Some(env)),
            Arg::Int(Some(day)),
            Arg::Text(Some(tool)),
            Arg::Text(Some(verdict)),
            Arg::Text(Some(stage)),
            Arg::Int(Some(to_i64("decisions", n)?)),
            Arg::Int(Some(to_i64("high_risk", high)?)),
            Arg::Int(Some(to_i64("destructive", destructive)?)),
        ]);
    }
    const POSTURE_TYPES: [&str; 10] = [
        "text", "text", "text", "bigint", "text", "text", "text", "bigint", "bigint", "bigint",
    ];
    insert_rows(
        conn.reborrow(),
        "analysis: posture",
        posture_into!(),
        &POSTURE_TYPES,
        &args,
        posture_upsert!(),
    )
    .await?;
    laps.took("posture");

    args.clear();
    for ((org, day, tool, verdict, stage), [n, high, destructive]) in sorted(org_posture) {
        args.extend([
            Arg::Text(Some(org)),
            Arg::Int(Some(day)),
            Arg::Text(Some(tool)),
            Arg::Text(Some(verdict)),
            Arg::Text(Some(stage)),
            Arg::Int(Some(to_i64("decisions", n)?)),
            Arg::Int(Some(to_i64("high_risk", high)?)),
            Arg::Int(Some(to_i64("destructive", destructive)?)),
        ]);
    }
    const ORG_POSTURE_TYPES: [&str; 8] = [
        "text", "bigint", "text", "text", "text", "bigint", "bigint", "bigint",
    ];
    insert_rows(
        conn.reborrow(),
        "analysis: org posture",
        org_posture_into!(),
        &ORG_POSTURE_TYPES,
        &args,
        org_posture_upsert!(),
    )
    .await?;
    laps.took("org posture");

    args.clear();
    for (((org, project, env), day, tool, policy), n) in sorted(policies) {
        args.extend([
            Arg::Text(Some(org)),
            Arg::Text(Some(project)),
            Arg::Text(Some(env)),
            Arg::Int(Some(day)),
            Arg::Text(Some(tool)),
            Arg::Text(Some(policy)),
            Arg::Int(Some(to_i64("decisions", n)?)),
        ]);
    }
    const POLICY_TYPES: [&str; 7] = ["text", "text", "text", "bigint", "text", "text", "bigint"];
    insert_rows(
        conn.reborrow(),
        "analysis: policies",
        policies_into!(),
        &POLICY_TYPES,
        &args,
        policies_upsert!(),
    )
    .await?;
    laps.took("policies");

    args.clear();
    for (((org, project, env), day), [passed, failed]) in sorted(regress) {
        args.extend([
            Arg::Text(Some(org)),
            Arg::Text(Some(project)),
            Arg::Text(Some(env)),
            Arg::Int(Some(day)),
            Arg::Int(Some(to_i64("passed", passed)?)),
            Arg::Int(Some(to_i64("failed", failed)?)),
        ]);
    }
    const REGRESS_TYPES: [&str; 6] = ["text", "text", "text", "bigint", "bigint", "bigint"];
    insert_rows(
        conn.reborrow(),
        "analysis: regress",
        regress_into!(),
        &REGRESS_TYPES,
        &args,
        regress_upsert!(),
    )
    .await?;
    laps.took("regress");
    Ok(())
}

/// The (scope, family, agent) pairs of `analysis_range` that `incident_family_agents` does not hold yet.
/// Ranges fold one at a time (the cursor's compare-and-set serializes them), so none is added twice.
const NEW_AGENTS: &str = " AS SELECT DISTINCT org, project, env, family, agent_id FROM analysis_range r \
     WHERE family IS NOT NULL AND NOT EXISTS (SELECT 1 FROM incident_family_agents a WHERE a.org = r.org \
     AND a.project = r.project AND a.env = r.env AND a.family = r.family AND a.agent_id = r.agent_id)";

/// Records the new agents (after the scope fold counted them).
const ADD_AGENTS: &str = "INSERT INTO incident_family_agents (org, project, env, family, agent_id) \
     SELECT org, project, env, family, agent_id FROM analysis_new_agents";

/// The statements that fold `analysis_range` into the precomputed tables (a range read back; [`fold_fed`]
/// computes the same rows in process).
const FOLD: [(&str, &str); 5] = [
    (
        "analysis: family scopes",
        concat!(
            "INSERT INTO ",
            scopes_into!(),
            " SELECT s.org, s.project, s.env, s.family, s.n, s.first_seen, s.last_seen, s.risk_rank, \
             s.destructive, s.egress_or_taint, s.severity_rank, s.representative, COALESCE(a.n, 0) \
             FROM (SELECT org, project, env, family, SUM(n) AS n, MIN(first_seen) AS first_seen, \
             MAX(last_seen) AS last_seen, MAX(risk_rank) AS risk_rank, MAX(destructive) AS destructive, \
             MAX(egress_or_taint) AS egress_or_taint, MAX(severity_rank) AS severity_rank, \
             MIN(representative) AS representative FROM analysis_range WHERE family IS NOT NULL \
             GROUP BY org, project, env, family) s \
             LEFT JOIN (SELECT org, project, env, family, COUNT(*) AS n FROM analysis_new_agents \
             GROUP BY org, project, env, family) a ON a.org = s.org AND a.project = s.project AND a.env = s.env \
             AND a.family = s.family WHERE s.n > 0",
            scopes_upsert!(),
        ),
    ),
    (
        "analysis: posture",
        concat!(
            "INSERT INTO ",
            posture_into!(),
            " SELECT org, project, env, day, tool, verdict, stage, SUM(n), SUM(high_risk), \
             SUM(destructive_n) FROM analysis_range WHERE class = 'decision' AND verdict IS NOT NULL \
             GROUP BY org, project, env, day, tool, verdict, stage",
            posture_upsert!(),
        ),
    ),
    (
        "analysis: org posture",
        concat!(
            "INSERT INTO ",
            org_posture_into!(),
            " SELECT org, day, tool, verdict, stage, SUM(n), SUM(high_risk), SUM(destructive_n) FROM analysis_range \
             WHERE class = 'decision' AND verdict IS NOT NULL GROUP BY org, day, tool, verdict, stage",
            org_posture_upsert!(),
        ),
    ),
    (
        "analysis: policies",
        concat!(
            "INSERT INTO ",
            policies_into!(),
            " SELECT org, project, env, day, tool, policy, SUM(n) FROM analysis_range \
             WHERE class = 'decision' AND verdict IS NOT NULL GROUP BY org, project, env, day, tool, policy",
            policies_upsert!(),
        ),
    ),
    (
        "analysis: regress",
        concat!(
            "INSERT INTO ",
            regress_into!(),
            " SELECT org, project, env, day, SUM(passed), SUM(failed) FROM analysis_range \
             WHERE class = 'artifact' AND passed + failed > 0 GROUP BY org, project, env, day",
            regress_upsert!(),
        ),
    ),
];

/// Creates temporary table `name` as `select` (` AS SELECT …`, binding `args` in order) for this transaction
/// only: dropped at commit on PostgreSQL, and by [`drop_temp`] on SQLite (which first drops one a failed
/// transaction may have left on its connection).
async fn create_temp(
    mut conn: Conn<'_>,
    name: &str,
    select: &str,
    args: &[i64],
) -> Result<(), StoreError> {
    const OP: &str = "analysis: temporary table";
    // PostgreSQL's `ON COMMIT DROP` goes before `AS SELECT`.
    let sqlite = format!("CREATE TEMP TABLE {name}{select}");
    let postgres = format!("CREATE TEMP TABLE {name} ON COMMIT DROP{select}");
    db_run!(conn,
        sqlite: |c| {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS temp.{name}")))
                .execute(&mut *c)
                .await
                .map_err(db(OP))?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sqlite.as_str()));
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut *c).await.map_err(db(OP))?.rows_affected()
        },
        postgres: |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(postgres.as_str()));
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut *c).await.map_err(db(OP))?.rows_affected()
        },
    );
    Ok(())
}

async fn drop_temp(mut conn: Conn<'_>, name: &str) -> Result<(), StoreError> {
    db_run!(conn,
        sqlite: |c| sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE temp.{name}")))
            .execute(&mut *c)
            .await
            .map_err(db("analysis: temporary table"))?
            .rows_affected(),
        postgres: |_c| 0,
    );
    Ok(())
}

/// A fed range ([`crate::Store::apply_analysis_ranges`]): its rows by agent, and which (agent, family) pairs are
/// known to be recorded already.
type Fed<'a> = (
    &'a [AgentRange],
    &'a (dyn Fn(&AgentKey, &str) -> bool + Sync),
);

/// What each step of a fold took, for its debug event (`GAIT_LOG=gait_store=debug`).
struct Laps {
    steps: Vec<(&'static str, u128)>,
    lap: std::time::Instant,
}

impl Laps {
    fn new() -> Self {
        Self {
            steps: Vec::with_capacity(10),
            lap: std::time::Instant::now(),
        }
    }

    /// Step `step` ended now.
    fn took(&mut self, step: &'static str) {
        self.steps.push((step, self.lap.elapsed().as_micros()));
        self.lap = std::time::Instant::now();
    }
}

/// Defines family `d` unless it is defined already.
async fn define_family(mut conn: Conn<'_>, d: &FamilyDef) -> Result<(), StoreError> {
    const DEFINE: &str = "INSERT INTO incident_families (org, family, version, dedup_key, kind, tool, verdict, \
         inputs) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (org, family) DO NOTHING";
    db_run!(conn, |c| sqlx::query(DEFINE)
        .bind(d.org.as_str())
        .bind(d.family.as_str())
        .bind(i64::from(d.version))
        .bind(d.dedup_key.as_str())
        .bind(d.kind.as_str())
        .bind(d.tool.as_str())
        .bind(d.verdict.as_str())
        .bind(d.inputs.as_str())
        .execute(&mut *c)
        .await
        .map_err(db("analysis: define family"))?
        .rows_affected());
    Ok(())
}

/// Folds `(from, to]`: from the agents' pre-aggregated rows when `fed` ([`fold_fed`]), else by pre-aggregating the
/// range into `analysis_range`, defining the families it meets first (`define` computes their definitions from
/// their first rows) and running the [`FOLD`]s.
async fn fold_range(
    mut conn: Conn<'_>,
    from: u64,
    to: u64,
    fed: Option<Fed<'_>>,
    define: &(dyn Fn(&[FamilySample]) -> Vec<FamilyDef> + Sync),
) -> Result<(), StoreError> {
    let (from, to) = (to_i64("from_id", from)?, to_i64("to_id", to)?);
    let mut laps = Laps::new();
    if let Some((ranges, known)) = fed {
        fold_fed(conn.reborrow(), ranges, known, define, &mut laps).await?;
    } else {
        fold_read_back(conn.reborrow(), from, to, define, &mut laps).await?;
    }
    tracing::debug!(
        from_id = from,
        to_id = to,
        fed = fed.is_some(),
        steps_us = ?laps.steps,
        "analysis: folded a range"
    );
    Ok(())
}

/// [`fold_range`] of a range read back from the index.
async fn fold_read_back(
    mut conn: Conn<'_>,
    from: i64,
    to: i64,
    define: &(dyn Fn(&[FamilySample]) -> Vec<FamilyDef> + Sync),
    laps: &mut Laps,
) -> Result<(), StoreError> {
    // The range's aggregations hash tens of thousands of groups: give them the memory to do it without
    // spilling (this transaction only).
    db_run!(conn,
        sqlite: |_c| 0,
        postgres: |c| sqlx::query("SET LOCAL work_mem = '64MB'")
            .execute(&mut *c)
            .await
            .map_err(db("analysis: work_mem"))?
            .rows_affected(),
    );
    let columns = match conn {
        Conn::Sqlite(_) => RANGE_COLUMNS,
        _ => RANGE_COLUMNS_PG,
    };
    create_temp(conn.reborrow(), "analysis_range", columns, &[from, to]).await?;
    laps.took("range");
    for d in &define(&samples(conn.reborrow()).await?) {
        define_family(conn.reborrow(), d).await?;
    }
    laps.took("define");
    create_temp(conn.reborrow(), "analysis_new_agents", NEW_AGENTS, &[]).await?;
    laps.took("new agents");
    for (op, sql) in FOLD {
        db_run!(conn, |c| sqlx::query(sql)
            .execute(&mut *c)
            .await
            .map_err(db(op))?
            .rows_affected());
        laps.took(op.trim_start_matches("analysis: "));
    }
    db_run!(conn, |c| sqlx::query(ADD_AGENTS)
        .execute(&mut *c)
        .await
        .map_err(db("analysis: family agents"))?
        .rows_affected());
    drop_temp(conn.reborrow(), "analysis_new_agents").await?;
    drop_temp(conn.reborrow(), "analysis_range").await?;
    laps.took("add agents");
    Ok(())
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
         destructive, egress_or_taint, severity_rank, representative, agents FROM incident_family_scopes{clause} \
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
                representative: r.opt_text("representative")?,
                agents: to_u64(T, "agents", r.int("agents")?)?,
            })
        }
    )
}

async fn definitions(mut conn: Conn<'_>, f: &AnalysisFilter) -> Result<Vec<FamilyDef>, StoreError> {
    const T: &str = "incident_families";
    // Only families with an occurrence inside the filter's scope: a reader of one project never loads (or
    // learns of) another's families, and a project with many families cannot crowd out the others.
    let (clause, args) = f.clause(true);
    let sql = format!(
        "SELECT org, family, version, dedup_key, kind, tool, verdict, inputs FROM incident_families \
         WHERE org = $1 AND family IN (SELECT family FROM incident_family_scopes{clause}) ORDER BY family"
    );
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

/// `clause` narrowed to `tool` when one is given (its argument appended to `args`).
fn with_tool<'a>(clause: &mut String, args: &mut Vec<&'a str>, tool: Option<&'a str>) {
    if let Some(t) = tool {
        args.push(t);
        clause.push_str(&format!(" AND tool = ${}", args.len()));
    }
}

async fn posture(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    tool: Option<&str>,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<PostureCount>, StoreError> {
    const T: &str = "posture_daily";
    let (mut clause, mut args) = f.clause(false);
    with_tool(&mut clause, &mut args, tool);
    // Days are integers the caller computed, formatted from i64 values, never text. PostgreSQL sums BIGINT to
    // NUMERIC: the sums are cast back. An org-wide read takes the org roll-up.
    let table = if f.project.is_none() && f.env.is_none() {
        "posture_daily_org"
    } else {
        "posture_daily"
    };
    let sql = format!(
        "SELECT day, tool, verdict, stage, CAST(SUM(decisions) AS BIGINT) AS decisions, \
         CAST(SUM(high_risk) AS BIGINT) AS high_risk, CAST(SUM(destructive) AS BIGINT) AS destructive \
         FROM {table}{clause} AND day >= {from_day} AND day < {to_day} \
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

async fn policies(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    tool: Option<&str>,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<PolicyCount>, StoreError> {
    const T: &str = "policy_daily";
    let (mut clause, mut args) = f.clause(false);
    with_tool(&mut clause, &mut args, tool);
    // As `posture`: the days are integers, and the sums are cast back from NUMERIC on PostgreSQL. Rows of
    // [`NO_POLICY`] are returned too (the feed-versus-read-back test compares them); callers drop them.
    let sql = format!(
        "SELECT day, tool, policy_digest, CAST(SUM(decisions) AS BIGINT) AS decisions FROM policy_daily{clause} \
         AND day >= {from_day} AND day < {to_day} GROUP BY day, tool, policy_digest \
         ORDER BY day, tool, policy_digest"
    );
    filtered!(conn, sql, args, MAX_POSTURE_ROWS, "policy_daily", |r| {
        Ok(PolicyCount {
            day: r.int("day")?,
            tool: r.text("tool")?,
            policy_digest: r.text("policy_digest")?,
            decisions: to_u64(T, "decisions", r.int("decisions")?)?,
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

async fn approval_timings(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    from_ms: i64,
) -> Result<Vec<ApprovalTiming>, StoreError> {
    let (clause, args) = f.clause(false);
    // `from_ms` is an integer the caller computed, formatted from an i64, never text.
    let sql = format!(
        "SELECT state, received_unix_ms, updated_unix_ms, expires_unix_ms FROM approval_requests{clause} \
         AND received_unix_ms >= {from_ms} ORDER BY id"
    );
    filtered!(conn, sql, args, MAX_POSTURE_ROWS, "approval_timings", |r| {
        Ok(ApprovalTiming {
            state: crate::ApprovalState::parse(&r.text("state")?)?,
            received_unix_ms: r.int("received_unix_ms")?,
            updated_unix_ms: r.int("updated_unix_ms")?,
            expires_unix_ms: r.int("expires_unix_ms")?,
        })
    })
}

async fn freshness(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
) -> Result<Vec<EnvFreshness>, StoreError> {
    const T: &str = "incident_family_scopes";
    let (clause, args) = f.clause(false);
    let sql = format!(
        "SELECT org, project, env, MAX(last_seen_unix_ms) AS last_seen FROM incident_family_scopes{clause} \
         GROUP BY org, project, env ORDER BY project, env"
    );
    filtered!(conn, sql, args, MAX_POSTURE_ROWS, "freshness", |r| {
        let t = tenant_of(r, T)?;
        Ok(EnvFreshness {
            project: t.project,
            env: t.env,
            last_seen_unix_ms: r.int("last_seen")?,
        })
    })
}

/// Most tools one coverage read returns (most called first); past it the read says it was cut.
pub const MAX_RUNPACK_TOOLS: usize = 10_000;

async fn runpack_tools(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Vec<RunpackTool>, bool), StoreError> {
    const T: &str = "runpack_calls";
    let (clause, args) = f.clause(false);
    // The times are integers the caller computed, formatted from i64 values, never text. Each call row carries its
    // runpack's digest and the time index covers every column read here (migration 0028), so the read scans one
    // index. A runpack (a record) that called a tool has exactly one call of it flagged `first_of_tool`. A call is
    // gated once the call merge found a decision of its environment with its arguments digest
    // ([`crate::Store::merge_gated_calls`]).
    let sql = format!(
        "SELECT tool_name AS tool, COUNT(*) AS calls, SUM(first_of_tool) AS runpacks, \
         MIN(runpack_sha256) AS runpack, SUM(gated) AS gated_calls, \
         MIN(CASE WHEN gated = 0 THEN runpack_sha256 END) AS ungated_runpack \
         FROM runpack_calls{clause} AND created_unix_ms >= {from_ms} AND created_unix_ms < {to_ms} \
         GROUP BY tool_name ORDER BY COUNT(*) DESC, tool_name LIMIT {}",
        MAX_RUNPACK_TOOLS + 1
    );
    let mut found = db_run!(conn, |c| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for a in &args {
            q = q.bind(*a);
        }
        let rows = q.fetch_all(&mut *c).await.map_err(db("runpack_tools"))?;
        rows.iter()
            .map(|r| {
                Ok(RunpackTool {
                    tool: r.text("tool")?,
                    calls: to_u64(T, "calls", r.int("calls")?)?,
                    runpacks: to_u64(T, "runpacks", r.int("runpacks")?)?,
                    runpack_sha256: r.opt_text("runpack")?,
                    gated_calls: to_u64(T, "gated_calls", r.int("gated_calls")?)?,
                    ungated_runpack_sha256: r.opt_text("ungated_runpack")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?
    });
    let cut = found.len() > MAX_RUNPACK_TOOLS;
    found.truncate(MAX_RUNPACK_TOOLS);
    Ok((found, cut))
}

fn merge_of(r: &impl Columns) -> Result<FamilyMerge, StoreError> {
    Ok(FamilyMerge {
        org: Org::try_from(r.text("org")?).map_err(|e| {
            StoreError::corrupt(
                "incident_family_merges",
                format!("org is not a valid identifier: {e}"),
            )
        })?,
        family: r.text("family")?,
        into_family: r.text("into_family")?,
        reason: r.text("reason")?,
        merged_by: r.text("merged_by")?,
        merged_unix_ms: r.int("merged_unix_ms")?,
    })
}

const MERGE_COLUMNS: &str = "org, family, into_family, reason, merged_by, merged_unix_ms";

async fn merges(mut conn: Conn<'_>, org: &Org) -> Result<Vec<FamilyMerge>, StoreError> {
    let sql = format!(
        "SELECT {MERGE_COLUMNS} FROM incident_family_merges WHERE org = $1 ORDER BY family LIMIT {}",
        u64::from(MAX_FAMILY_MERGES) + 1
    );
    let found = db_run!(conn, |c| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("family_merges"))?;
        rows.iter().map(merge_of).collect::<Result<Vec<_>, _>>()?
    });
    if found.len() > MAX_FAMILY_MERGES as usize {
        return Err(StoreError::corrupt(
            "incident_family_merges",
            format!("more than {MAX_FAMILY_MERGES} merges in org {org}"),
        ));
    }
    Ok(found)
}

async fn agent_counts(
    mut conn: Conn<'_>,
    f: &AnalysisFilter,
    families: &[String],
) -> Result<Vec<(Tenant, u64)>, StoreError> {
    const T: &str = "incident_family_agents";
    if families.is_empty() {
        return Ok(Vec::new());
    }
    let (clause, mut args) = f.clause(false);
    let mut list = Vec::with_capacity(families.len());
    for fam in families {
        args.push(fam.as_str());
        list.push(format!("${}", args.len()));
    }
    let sql = format!(
        "SELECT org, project, env, COUNT(DISTINCT agent_id) AS agents FROM incident_family_agents{clause} \
         AND family IN ({}) GROUP BY org, project, env ORDER BY project, env",
        list.join(", ")
    );
    filtered!(
        conn,
        sql,
        args,
        MAX_FAMILY_SCOPE_ROWS,
        "family_agent_counts",
        |r| { Ok((tenant_of(r, T)?, to_u64(T, "agents", r.int("agents")?)?)) }
    )
}

impl crate::StoreTx {
    /// Records that `m.family` reads as part of `m.into_family`; `false` when it already was merged.
    pub async fn insert_family_merge(&mut self, m: &FamilyMerge) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO incident_family_merges (org, family, into_family, reason, merged_by, \
             merged_unix_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org, family) DO NOTHING";
        crate::model::check_text("reason", &m.reason, crate::model::MAX_TEXT_BYTES)?;
        crate::model::check_text("merged_by", &m.merged_by, crate::model::MAX_TEXT_BYTES)?;
        if m.family == m.into_family {
            return Err(StoreError::invalid(
                "into",
                "a family cannot be merged into itself",
            ));
        }
        let mut conn = self.conn();
        let n = db_run!(conn, |c| sqlx::query(SQL)
            .bind(m.org.as_str())
            .bind(m.family.as_str())
            .bind(m.into_family.as_str())
            .bind(m.reason.as_str())
            .bind(m.merged_by.as_str())
            .bind(m.merged_unix_ms)
            .execute(&mut *c)
            .await
            .map_err(db("insert_family_merge"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Removes the merge of `family` (a split) and answers it; `None` when it was not merged.
    pub async fn delete_family_merge(
        &mut self,
        org: &Org,
        family: &str,
    ) -> Result<Option<FamilyMerge>, StoreError> {
        let sql = format!(
            "DELETE FROM incident_family_merges WHERE org = $1 AND family = $2 RETURNING {MERGE_COLUMNS}"
        );
        let mut conn = self.conn();
        Ok(db_run!(conn, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(org.as_str())
                .bind(family)
                .fetch_optional(&mut *c)
                .await
                .map_err(db("delete_family_merge"))?;
            row.as_ref().map(merge_of).transpose()?
        }))
    }

    /// Serializes merges of `org` until this transaction ends (PostgreSQL: an advisory lock; SQLite's write
    /// transactions are serial already), so two merges cannot both pass their checks and form a cycle.
    pub async fn lock_family_merges(&mut self, org: &Org) -> Result<(), StoreError> {
        let key = format!("gait-store/family-merges/{}:{org}", org.as_str().len());
        let mut conn = self.conn();
        db_run!(conn,
            sqlite: |_c| 0,
            postgres: |c| sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key.as_str())
                .execute(&mut *c)
                .await
                .map_err(db("family_merges: lock"))?
                .rows_affected(),
        );
        Ok(())
    }

    /// See [`crate::Store::family_merges`] (inside this transaction).
    pub async fn family_merges(&mut self, org: &Org) -> Result<Vec<FamilyMerge>, StoreError> {
        merges(self.conn(), org).await
    }
}

impl crate::Store {
    /// Up to `limit` (at most [`MAX_ANALYSIS_BATCH`]) `(id, received_unix_ms)` of the evidence index after
    /// `after_id`, in id order, of every org: the range the upkeep job may fold next.
    pub async fn analysis_ids(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let mut pooled = self.acquire().await?;
        ids(pooled.conn(), after_id, limit).await
    }

    /// `(rows, highest id)` of the next `limit` (at most [`MAX_ANALYSIS_BATCH`]) ids of the evidence index
    /// after `after_id`: when `highest - after_id == rows` the range has no gap and [`Self::analysis_ids`] need
    /// not be read.
    pub async fn analysis_span(&self, after_id: u64, limit: u32) -> Result<(u64, u64), StoreError> {
        let mut pooled = self.acquire().await?;
        span(pooled.conn(), after_id, limit).await
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

    /// Moves job `name`'s cursor from `from_id` to `to_id`, stores the definitions of the families the range
    /// meets first (`define` computes them from each one's first row) and folds the evidence rows of
    /// `(from_id, to_id]` into families and posture, in one transaction; `false` (and nothing added) when the
    /// cursor was not at `from_id`: another replica counted these rows.
    pub async fn apply_analysis(
        &self,
        name: &str,
        from_id: u64,
        to_id: u64,
        define: &(dyn Fn(&[FamilySample]) -> Vec<FamilyDef> + Sync),
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_named("apply_analysis").await?;
        if !move_cursor(tx.conn(), name, from_id, to_id, now_ms).await? {
            tx.rollback("apply_analysis").await?;
            return Ok(false);
        }
        fold_range(tx.conn(), from_id, to_id, None, define).await?;
        tx.commit("apply_analysis").await?;
        Ok(true)
    }

    /// Moves job `name`'s cursor from `from_id` to `to_id`, writes the (tool, arguments digest) keys of the
    /// decisions of `(from_id, to_id]` as a new run of their environments' sets of gated calls (`fed`, or read
    /// back from the index when `None`), and marks gated every runpack call those now match, in one transaction
    /// (call-level coverage, migration 0029, [`crate::gated`]). `to_id` must be a range the fold has passed, so no
    /// id below it can still appear; `fed` must hold exactly that range's keys. Answers `None` (and nothing
    /// changed) when the cursor was not at `from_id`, else the distinct keys written and the calls newly gated.
    /// `marking` chooses how the calls are found ([`CallMarking::Cheaper`] outside tests).
    pub async fn merge_gated_calls(
        &self,
        name: &str,
        from_id: u64,
        to_id: u64,
        fed: Option<RangeKeys>,
        marking: CallMarking,
        now_ms: i64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let mut tx = self.begin_named("merge_gated_calls").await?;
        if !move_cursor(tx.conn(), name, from_id, to_id, now_ms).await? {
            tx.rollback("merge_gated_calls").await?;
            return Ok(None);
        }
        let merged = crate::gated::merge(tx.conn(), from_id, to_id, fed, marking).await?;
        tx.commit("merge_gated_calls").await?;
        Ok(Some((merged.keys, merged.calls)))
    }

    /// [`Store::apply_analysis`] with the range already pre-aggregated in process (`ranges`, by agent), so the
    /// store skips its pass over the range's rows. The caller vouches that `ranges` hold `ids` distinct evidence
    /// ids of `(from_id, to_id]`, each added once ([`AgentRange::add`]); inside the transaction, after the
    /// cursor's compare-and-set, the store counts the ids it holds there, and only when that is `ids` too (so
    /// the ranges hold every row of the range and no other — evidence rows are never deleted) does it fold.
    /// Otherwise nothing changes and the answer is [`RangesApplied::Mismatch`]: fold the range by reading it back.
    /// `known(agent, family)` vouches that the pair is recorded already and its family defined (a fold committed
    /// both; pairs and definitions are never removed), so neither is checked again. That holds because every
    /// sample yields a definition (`definitions` is computed from the fields that gave the row its family).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_analysis_ranges(
        &self,
        name: &str,
        from_id: u64,
        to_id: u64,
        ids: u64,
        ranges: &[AgentRange],
        known: &(dyn Fn(&AgentKey, &str) -> bool + Sync),
        define: &(dyn Fn(&[FamilySample]) -> Vec<FamilyDef> + Sync),
        now_ms: i64,
    ) -> Result<RangesApplied, StoreError> {
        let mut tx = self.begin_named("apply_analysis").await?;
        if !move_cursor(tx.conn(), name, from_id, to_id, now_ms).await? {
            tx.rollback("apply_analysis").await?;
            return Ok(RangesApplied::LostRace);
        }
        if count_between(tx.conn(), from_id, to_id).await? != ids {
            tx.rollback("apply_analysis").await?;
            return Ok(RangesApplied::Mismatch);
        }
        fold_range(tx.conn(), from_id, to_id, Some((ranges, known)), define).await?;
        tx.commit("apply_analysis").await?;
        Ok(RangesApplied::Folded)
    }

    /// The occurrences of families per environment inside `filter`, by family then project and env.
    pub async fn family_scopes(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<FamilyScope>, StoreError> {
        let mut pooled = self.acquire().await?;
        scopes(pooled.conn(), filter).await
    }

    /// The definitions of the families with an occurrence inside `filter` (only `filter.family` when set), by
    /// family.
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
        posture(pooled.conn(), filter, None, from_day, to_day).await
    }

    /// Decisions inside `filter` (of `tool` only, when given) for UTC days `from_day..to_day` by day, tool and
    /// the deciding policy's digest, summed over the scope's environments.
    pub async fn policy_counts(
        &self,
        filter: &AnalysisFilter,
        tool: Option<&str>,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<PolicyCount>, StoreError> {
        let mut pooled = self.acquire().await?;
        policies(pooled.conn(), filter, tool, from_day, to_day).await
    }

    /// [`Store::posture_counts`] of one tool (of every tool, when `None`).
    pub async fn tool_posture_counts(
        &self,
        filter: &AnalysisFilter,
        tool: Option<&str>,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<PostureCount>, StoreError> {
        let mut pooled = self.acquire().await?;
        posture(pooled.conn(), filter, tool, from_day, to_day).await
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

    /// The family whose dedup key is `key` with an occurrence inside `filter`'s scope.
    pub async fn family_by_dedup_key(
        &self,
        filter: &AnalysisFilter,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let (clause, mut args) = filter.clause(false);
        args.push(key);
        let sql = format!(
            "SELECT family FROM incident_families WHERE org = $1 AND dedup_key = ${} \
             AND family IN (SELECT family FROM incident_family_scopes{clause}) ORDER BY family LIMIT 1",
            args.len()
        );
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        Ok(db_run!(conn, |c| {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()));
            for a in &args {
                q = q.bind(*a);
            }
            q.fetch_optional(&mut *c)
                .await
                .map_err(db("family_by_dedup_key"))?
        }))
    }

    /// The tools called in the runpacks indexed inside `filter` in `[from_ms, to_ms)` (agent clock), most
    /// called first, at most [`MAX_RUNPACK_TOOLS`]; `true` when more were cut.
    pub async fn runpack_tools(
        &self,
        filter: &AnalysisFilter,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(Vec<RunpackTool>, bool), StoreError> {
        let mut pooled = self.acquire().await?;
        runpack_tools(pooled.conn(), filter, from_ms, to_ms).await
    }

    /// The manual merges in force in `org`, by family.
    pub async fn family_merges(&self, org: &Org) -> Result<Vec<FamilyMerge>, StoreError> {
        let mut pooled = self.acquire().await?;
        merges(pooled.conn(), org).await
    }

    /// Distinct agents of the union of `families` per environment inside `filter` (a merged family's agents,
    /// each counted once).
    pub async fn family_agent_counts(
        &self,
        filter: &AnalysisFilter,
        families: &[String],
    ) -> Result<Vec<(Tenant, u64)>, StoreError> {
        let mut pooled = self.acquire().await?;
        agent_counts(pooled.conn(), filter, families).await
    }

    /// The approval requests inside `filter` received at or after `from_ms`, in arrival order.
    pub async fn approval_timings(
        &self,
        filter: &AnalysisFilter,
        from_ms: i64,
    ) -> Result<Vec<ApprovalTiming>, StoreError> {
        let mut pooled = self.acquire().await?;
        approval_timings(pooled.conn(), filter, from_ms).await
    }

    /// The newest folded evidence (decision or regress failure) of each environment inside `filter`.
    pub async fn evidence_freshness(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<EnvFreshness>, StoreError> {
        let mut pooled = self.acquire().await?;
        freshness(pooled.conn(), filter).await
    }
}
