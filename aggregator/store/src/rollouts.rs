//! The rollouts domain (issue 13 item 3): rollouts and their target environments, the timeline of transitions,
//! the audiences of cohort bundles, and the labels operators give agents.
//!
//! The store keeps states and plans as text: the aggregator's `rollout` module owns their meaning. Every
//! transition is a compare-and-set on `version` ([`StoreTx::transition_rollout`]), the fence that keeps a
//! stale controller (one that lost its leadership) and an operator from both winning.

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{
    AgentId, Env, MAX_TEXT_BYTES, Org, Project, StoredBundle, Tenant, check_digest, check_text,
    to_i64, to_u64,
};
use crate::rows::{self, Columns};

/// Most rollouts one listing returns.
pub const MAX_ROLLOUT_PAGE: u32 = 1_000;
/// Most events one timeline read returns.
pub const MAX_ROLLOUT_EVENTS: u32 = 10_000;
/// Most agents [`crate::Store::env_agents`] returns (a cohort is computed over them).
pub const MAX_ENV_AGENTS: u32 = 100_000;
/// Longest `plan_json` / `labels_json` / `gates_json`.
pub const MAX_ROLLOUT_JSON_BYTES: usize = 64 * 1024;
/// Longest rollout id.
pub const MAX_ROLLOUT_ID_BYTES: usize = 64;

/// A rollout to create, with its targets (project, env, baseline digest).
#[derive(Clone, Debug)]
pub struct NewRollout {
    pub org: Org,
    pub id: String,
    pub candidate_digest: String,
    pub plan_json: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub targets: Vec<(Project, Env, String)>,
}

/// A stored rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRow {
    pub org: Org,
    pub id: String,
    pub candidate_digest: String,
    pub plan_json: String,
    pub state: String,
    pub step: u32,
    pub attempt: u32,
    /// The compare-and-set fence, bumped by every transition.
    pub version: u64,
    pub reason: String,
    /// Whether the bundles of `step` are published in every target.
    pub step_published: bool,
    pub step_started_unix_ms: i64,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

/// The fields a transition sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutTransition {
    pub state: String,
    pub step: u32,
    pub attempt: u32,
    pub reason: String,
    pub step_published: bool,
    pub step_started_unix_ms: i64,
    pub updated_unix_ms: i64,
}

/// A target environment of a rollout, and the last bundle the rollout published there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutTargetRow {
    pub project: Project,
    pub env: Env,
    pub baseline_digest: String,
    pub step: Option<u32>,
    pub attempt: Option<u32>,
    pub bundle_epoch: Option<u64>,
    pub bundle_digest: Option<String>,
}

/// One entry of a rollout's timeline.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RolloutEvent {
    pub id: u64,
    pub at_unix_ms: i64,
    /// `created`, `step`, `paused`, `resumed`, `promoted`, `completed`, `rolled_back`, `aborted`, `retried`,
    /// `superseded`.
    pub kind: String,
    pub from_state: String,
    pub to_state: String,
    pub step: u32,
    pub attempt: u32,
    pub reason: String,
    /// The gate figures behind the transition (JSON), when gates decided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates_json: Option<String>,
    pub actor: String,
}

/// The audience of a cohort bundle: only agents in it are offered the bundle's epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudienceRow {
    pub rollout_id: String,
    /// Label selector (`{"key": "value"}`), every pair must match.
    pub labels_json: String,
    /// Cohort size in basis points of the agents matching the labels.
    pub percent_bp: u16,
}

/// An agent of an environment and the bundle it reports active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvAgent {
    pub agent_id: AgentId,
    pub active_bundle_epoch: Option<u64>,
    pub active_bundle_digest: Option<String>,
    pub last_seen_unix_ms: i64,
}

/// The columns `rollout_row` reads, as a literal for `concat!`.
macro_rules! rollout_columns {
    () => {
        "org, id, candidate_digest, plan_json, state, step, attempt, version, reason, step_published, \
         step_started_unix_ms, created_by, created_unix_ms, updated_unix_ms"
    };
}

fn rollout_row(row: &impl Columns) -> Result<RolloutRow, StoreError> {
    const T: &str = "rollouts";
    let org = row.text("org")?;
    Ok(RolloutRow {
        org: org
            .parse()
            .map_err(|e| StoreError::corrupt(T, format!("org {org:?}: {e}")))?,
        id: row.text("id")?,
        candidate_digest: row.text("candidate_digest")?,
        plan_json: row.text("plan_json")?,
        state: row.text("state")?,
        step: to_u32(T, "step", row.int("step")?)?,
        attempt: to_u32(T, "attempt", row.int("attempt")?)?,
        version: to_u64(T, "version", row.int("version")?)?,
        reason: row.text("reason")?,
        step_published: row.int("step_published")? != 0,
        step_started_unix_ms: row.int("step_started_unix_ms")?,
        created_by: row.text("created_by")?,
        created_unix_ms: row.int("created_unix_ms")?,
        updated_unix_ms: row.int("updated_unix_ms")?,
    })
}

fn to_u32(table: &'static str, column: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::corrupt(table, format!("{column} {v}")))
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty()
        || id.len() > MAX_ROLLOUT_ID_BYTES
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(StoreError::invalid(
            "rollout_id",
            format!("use 1-{MAX_ROLLOUT_ID_BYTES} characters [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

fn check_json(field: &str, text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_ROLLOUT_JSON_BYTES {
        return Err(StoreError::invalid(
            field,
            format!("{} bytes; at most {MAX_ROLLOUT_JSON_BYTES}", text.len()),
        ));
    }
    Ok(())
}

fn check_transition(t: &RolloutTransition) -> Result<(), StoreError> {
    check_text("rollout.state", &t.state, 32)?;
    check_text("rollout.reason", &t.reason, MAX_TEXT_BYTES)
}

async fn insert(mut conn: Conn<'_>, r: &NewRollout) -> Result<(), StoreError> {
    const ROLLOUT: &str = "INSERT INTO rollouts (org, id, candidate_digest, plan_json, state, step, attempt, \
         version, reason, step_published, step_started_unix_ms, created_by, created_unix_ms, updated_unix_ms) \
         VALUES ($1, $2, $3, $4, 'progressing', 0, 1, 1, '', 0, $5, $6, $5, $5)";
    const TARGET: &str = "INSERT INTO rollout_targets (org, rollout_id, project, env, baseline_digest) \
         VALUES ($1, $2, $3, $4, $5)";
    check_id(&r.id)?;
    check_digest("candidate_digest", &r.candidate_digest)?;
    check_json("plan_json", &r.plan_json)?;
    check_text("created_by", &r.created_by, MAX_TEXT_BYTES)?;
    if r.targets.is_empty() {
        return Err(StoreError::invalid(
            "targets",
            "name at least one environment",
        ));
    }
    for (_, _, baseline) in &r.targets {
        check_digest("baseline_digest", baseline)?;
    }
    db_run!(conn, |c| {
        sqlx::query(ROLLOUT)
            .bind(r.org.as_str())
            .bind(r.id.as_str())
            .bind(r.candidate_digest.as_str())
            .bind(r.plan_json.as_str())
            .bind(r.created_unix_ms)
            .bind(r.created_by.as_str())
            .execute(&mut *c)
            .await
            .map_err(db("insert_rollout"))?;
        for (project, env, baseline) in &r.targets {
            sqlx::query(TARGET)
                .bind(r.org.as_str())
                .bind(r.id.as_str())
                .bind(project.as_str())
                .bind(env.as_str())
                .bind(baseline.as_str())
                .execute(&mut *c)
                .await
                .map_err(db("insert_rollout_target"))?;
        }
    });
    Ok(())
}

async fn one(mut conn: Conn<'_>, org: &Org, id: &str) -> Result<Option<RolloutRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        rollout_columns!(),
        " FROM rollouts WHERE org = $1 AND id = $2"
    );
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("rollout"))?;
        row.as_ref().map(rollout_row).transpose()
    })
}

async fn list(mut conn: Conn<'_>, org: &Org, limit: u32) -> Result<Vec<RolloutRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        rollout_columns!(),
        " FROM rollouts WHERE org = $1 ORDER BY created_unix_ms DESC, id DESC LIMIT $2"
    );
    let limit = i64::from(limit.clamp(1, MAX_ROLLOUT_PAGE));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("rollouts"))?;
        found.iter().map(rollout_row).collect()
    })
}

async fn in_state(mut conn: Conn<'_>, state: &str) -> Result<Vec<RolloutRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        rollout_columns!(),
        " FROM rollouts WHERE state = $1 ORDER BY org, id LIMIT $2"
    );
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(state)
            .bind(i64::from(MAX_ROLLOUT_PAGE))
            .fetch_all(&mut *c)
            .await
            .map_err(db("rollouts_in_state"))?;
        found.iter().map(rollout_row).collect()
    })
}

async fn targets(
    mut conn: Conn<'_>,
    org: &Org,
    id: &str,
) -> Result<Vec<RolloutTargetRow>, StoreError> {
    const SQL: &str = "SELECT project, env, baseline_digest, step, attempt, bundle_epoch, bundle_digest \
         FROM rollout_targets WHERE org = $1 AND rollout_id = $2 ORDER BY project, env";
    const T: &str = "rollout_targets";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(id)
            .fetch_all(&mut *c)
            .await
            .map_err(db("rollout_targets"))?;
        found
            .iter()
            .map(|row| {
                let (project, env) = (row.text("project")?, row.text("env")?);
                Ok(RolloutTargetRow {
                    project: project
                        .parse()
                        .map_err(|e| StoreError::corrupt(T, format!("project {project:?}: {e}")))?,
                    env: env
                        .parse()
                        .map_err(|e| StoreError::corrupt(T, format!("env {env:?}: {e}")))?,
                    baseline_digest: row.text("baseline_digest")?,
                    step: row
                        .opt_int("step")?
                        .map(|v| to_u32(T, "step", v))
                        .transpose()?,
                    attempt: row
                        .opt_int("attempt")?
                        .map(|v| to_u32(T, "attempt", v))
                        .transpose()?,
                    bundle_epoch: row
                        .opt_int("bundle_epoch")?
                        .map(|v| to_u64(T, "bundle_epoch", v))
                        .transpose()?,
                    bundle_digest: row.opt_text("bundle_digest")?,
                })
            })
            .collect()
    })
}

/// The id of a rollout still running (progressing or paused) that targets `tenant`, if any.
async fn running_on(mut conn: Conn<'_>, tenant: &Tenant) -> Result<Option<String>, StoreError> {
    const SQL: &str = "SELECT r.id FROM rollouts r JOIN rollout_targets t \
         ON t.org = r.org AND t.rollout_id = r.id \
         WHERE t.org = $1 AND t.project = $2 AND t.env = $3 AND r.state IN ('progressing', 'paused') \
         ORDER BY r.id LIMIT 1";
    db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .fetch_optional(&mut *c)
        .await
        .map_err(db("rollout_running_on")))
}

async fn transition(
    mut conn: Conn<'_>,
    org: &Org,
    id: &str,
    expected_version: u64,
    t: &RolloutTransition,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE rollouts SET state = $4, step = $5, attempt = $6, reason = $7, \
         step_published = $8, step_started_unix_ms = $9, updated_unix_ms = $10, version = version + 1 \
         WHERE org = $1 AND id = $2 AND version = $3";
    check_transition(t)?;
    let expected = to_i64("version", expected_version)?;
    let changed = db_run!(conn, |c| sqlx::query(SQL)
        .bind(org.as_str())
        .bind(id)
        .bind(expected)
        .bind(t.state.as_str())
        .bind(i64::from(t.step))
        .bind(i64::from(t.attempt))
        .bind(t.reason.as_str())
        .bind(i64::from(t.step_published))
        .bind(t.step_started_unix_ms)
        .bind(t.updated_unix_ms)
        .execute(&mut *c)
        .await
        .map_err(db("transition_rollout"))?
        .rows_affected());
    Ok(changed == 1)
}

#[allow(clippy::too_many_arguments)]
async fn set_target_bundle(
    mut conn: Conn<'_>,
    org: &Org,
    id: &str,
    tenant: &Tenant,
    step: u32,
    attempt: u32,
    epoch: u64,
    digest: &str,
) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE rollout_targets SET step = $5, attempt = $6, bundle_epoch = $7, bundle_digest = $8 \
         WHERE org = $1 AND rollout_id = $2 AND project = $3 AND env = $4";
    debug_assert_eq!(&tenant.org, org);
    check_digest("bundle_digest", digest)?;
    let epoch = to_i64("bundle_epoch", epoch)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(org.as_str())
        .bind(id)
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(i64::from(step))
        .bind(i64::from(attempt))
        .bind(epoch)
        .bind(digest)
        .execute(&mut *c)
        .await
        .map(|_| ())
        .map_err(db("set_rollout_target_bundle"))?);
    Ok(())
}

async fn insert_event(
    mut conn: Conn<'_>,
    org: &Org,
    rollout_id: &str,
    e: &RolloutEvent,
) -> Result<u64, StoreError> {
    const SQL: &str = "INSERT INTO rollout_events (org, rollout_id, at_unix_ms, kind, from_state, to_state, \
         step, attempt, reason, gates_json, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         RETURNING id";
    check_text("event.kind", &e.kind, 32)?;
    check_text("event.reason", &e.reason, MAX_TEXT_BYTES)?;
    check_text("event.actor", &e.actor, MAX_TEXT_BYTES)?;
    if let Some(g) = &e.gates_json {
        check_json("gates_json", g)?;
    }
    let id: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(org.as_str())
        .bind(rollout_id)
        .bind(e.at_unix_ms)
        .bind(e.kind.as_str())
        .bind(e.from_state.as_str())
        .bind(e.to_state.as_str())
        .bind(i64::from(e.step))
        .bind(i64::from(e.attempt))
        .bind(e.reason.as_str())
        .bind(e.gates_json.as_deref())
        .bind(e.actor.as_str())
        .fetch_one(&mut *c)
        .await
        .map_err(db("insert_rollout_event"))?);
    to_u64("rollout_events", "id", id)
}

async fn events(
    mut conn: Conn<'_>,
    org: &Org,
    rollout_id: &str,
) -> Result<Vec<RolloutEvent>, StoreError> {
    const SQL: &str = "SELECT id, at_unix_ms, kind, from_state, to_state, step, attempt, reason, gates_json, \
         actor FROM rollout_events WHERE org = $1 AND rollout_id = $2 ORDER BY id LIMIT $3";
    const T: &str = "rollout_events";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(rollout_id)
            .bind(i64::from(MAX_ROLLOUT_EVENTS))
            .fetch_all(&mut *c)
            .await
            .map_err(db("rollout_events"))?;
        found
            .iter()
            .map(|row| {
                Ok(RolloutEvent {
                    id: to_u64(T, "id", row.int("id")?)?,
                    at_unix_ms: row.int("at_unix_ms")?,
                    kind: row.text("kind")?,
                    from_state: row.text("from_state")?,
                    to_state: row.text("to_state")?,
                    step: to_u32(T, "step", row.int("step")?)?,
                    attempt: to_u32(T, "attempt", row.int("attempt")?)?,
                    reason: row.text("reason")?,
                    gates_json: row.opt_text("gates_json")?,
                    actor: row.text("actor")?,
                })
            })
            .collect()
    })
}

async fn set_audience(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    epoch: u64,
    a: &AudienceRow,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO bundle_audiences (org, project, env, epoch, rollout_id, labels_json, percent_bp) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    check_id(&a.rollout_id)?;
    check_json("labels_json", &a.labels_json)?;
    if a.percent_bp > gait_bundle_cohort_all() {
        return Err(StoreError::invalid("percent_bp", "at most 10000 (100 %)"));
    }
    let epoch = to_i64("epoch", epoch)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(epoch)
        .bind(a.rollout_id.as_str())
        .bind(a.labels_json.as_str())
        .bind(i64::from(a.percent_bp))
        .execute(&mut *c)
        .await
        .map(|_| ())
        .map_err(db("set_bundle_audience"))?);
    Ok(())
}

/// 100 % in basis points (the store does not depend on the bundle crate).
const fn gait_bundle_cohort_all() -> u16 {
    10_000
}

/// What follows the columns of both reads of a scope's offers: its newest bundle without an audience (offered
/// to every agent) and the newest 63 after it, oldest first, each with its audience (`a.*`, NULL for none). A
/// long run of cohort bundles (many retried steps) cannot push the bundle everyone has out of the answer.
macro_rules! offers_from {
    () => {
        " FROM bundles b LEFT JOIN bundle_audiences a \
           ON a.org = b.org AND a.project = b.project AND a.env = b.env AND a.epoch = b.epoch \
         WHERE b.org = $1 AND b.project = $2 AND b.env = $3 AND (b.epoch = (SELECT epoch FROM base) \
           OR b.epoch IN (SELECT n.epoch FROM bundles n WHERE n.org = $1 AND n.project = $2 AND n.env = $3 \
             AND n.epoch > (SELECT epoch FROM base) ORDER BY n.epoch DESC LIMIT 63)) \
         ORDER BY b.epoch"
    };
}

/// The `base` CTE of [`offers_from!`]: the scope's newest epoch without an audience (0 when none).
macro_rules! offers_base {
    () => {
        "WITH base AS (SELECT COALESCE(MAX(f.epoch), 0) AS epoch FROM bundles f \
           WHERE f.org = $1 AND f.project = $2 AND f.env = $3 AND NOT EXISTS (SELECT 1 FROM bundle_audiences x \
             WHERE x.org = f.org AND x.project = f.project AND x.env = f.env AND x.epoch = f.epoch)) "
    };
}

/// The audience columns (`rollout_id`, `labels_json`, `percent_bp`) of an offers row.
fn audience_of(row: &impl Columns) -> Result<Option<AudienceRow>, StoreError> {
    let Some(rollout_id) = row.opt_text("rollout_id")? else {
        return Ok(None);
    };
    let bp = row.int("percent_bp")?;
    Ok(Some(AudienceRow {
        rollout_id,
        labels_json: row.text("labels_json")?,
        percent_bp: u16::try_from(bp)
            .map_err(|_| StoreError::corrupt("bundle_audiences", format!("percent_bp {bp}")))?,
    }))
}

/// The bundles of `tenant` from its newest bundle without an audience up (see [`offers_from!`]).
async fn since_last_full(
    mut conn: Conn<'_>,
    tenant: &Tenant,
) -> Result<Vec<(StoredBundle, Option<AudienceRow>)>, StoreError> {
    const SQL: &str = concat!(
        offers_base!(),
        "SELECT b.epoch, b.digest, b.bytes, b.created_at, b.created_by, a.rollout_id, a.labels_json, \
         a.percent_bp",
        offers_from!()
    );
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("bundles_since_last_full"))?;
        found
            .iter()
            .map(|row| Ok((rows::bundle_row(row)?, audience_of(row)?)))
            .collect()
    })
}

/// [`since_last_full`] without the bundle bytes: `(epoch, audience)` pairs, oldest first.
async fn offer_epochs(
    mut conn: Conn<'_>,
    tenant: &Tenant,
) -> Result<Vec<(u64, Option<AudienceRow>)>, StoreError> {
    const SQL: &str = concat!(
        offers_base!(),
        "SELECT b.epoch, a.rollout_id, a.labels_json, a.percent_bp",
        offers_from!()
    );
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("bundle_offer_epochs"))?;
        found
            .iter()
            .map(|row| {
                Ok((
                    to_u64("bundles", "epoch", row.int("epoch")?)?,
                    audience_of(row)?,
                ))
            })
            .collect()
    })
}

async fn labels(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    agent: &AgentId,
) -> Result<Option<String>, StoreError> {
    const SQL: &str = "SELECT labels_json FROM agent_labels \
         WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
    db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(agent.as_str())
        .fetch_optional(&mut *c)
        .await
        .map_err(db("agent_labels")))
}

async fn env_labels(
    mut conn: Conn<'_>,
    tenant: &Tenant,
) -> Result<Vec<(AgentId, String)>, StoreError> {
    const SQL: &str = "SELECT agent_id, labels_json FROM agent_labels \
         WHERE org = $1 AND project = $2 AND env = $3 ORDER BY agent_id LIMIT $4";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(i64::from(MAX_ENV_AGENTS))
            .fetch_all(&mut *c)
            .await
            .map_err(db("env_agent_labels"))?;
        found
            .iter()
            .map(|row| {
                let id = row.text("agent_id")?;
                Ok((
                    id.parse().map_err(|e| {
                        StoreError::corrupt("agent_labels", format!("agent_id {id:?}: {e}"))
                    })?,
                    row.text("labels_json")?,
                ))
            })
            .collect()
    })
}

async fn set_labels(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    agent: &AgentId,
    labels_json: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO agent_labels (org, project, env, agent_id, labels_json, updated_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org, project, env, agent_id) \
         DO UPDATE SET labels_json = excluded.labels_json, updated_unix_ms = excluded.updated_unix_ms";
    check_json("labels_json", labels_json)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(agent.as_str())
        .bind(labels_json)
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map(|_| ())
        .map_err(db("set_agent_labels"))?);
    Ok(())
}

async fn env_agents(mut conn: Conn<'_>, tenant: &Tenant) -> Result<Vec<EnvAgent>, StoreError> {
    const SQL: &str = "SELECT agent_id, active_bundle_epoch, active_bundle_digest, last_seen_unix_ms \
         FROM agents WHERE org = $1 AND project = $2 AND env = $3 ORDER BY agent_id LIMIT $4";
    const T: &str = "agents";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(i64::from(MAX_ENV_AGENTS))
            .fetch_all(&mut *c)
            .await
            .map_err(db("env_agents"))?;
        found
            .iter()
            .map(|row| {
                let id = row.text("agent_id")?;
                Ok(EnvAgent {
                    agent_id: id
                        .parse()
                        .map_err(|e| StoreError::corrupt(T, format!("agent_id {id:?}: {e}")))?,
                    active_bundle_epoch: row
                        .opt_int("active_bundle_epoch")?
                        .map(|v| to_u64(T, "active_bundle_epoch", v))
                        .transpose()?,
                    active_bundle_digest: row.opt_text("active_bundle_digest")?,
                    last_seen_unix_ms: row.int("last_seen_unix_ms")?,
                })
            })
            .collect()
    })
}

/// Rollout reads (own connection, outside any transaction).
impl crate::Store {
    /// The org's rollout `id`, if any.
    pub async fn rollout(&self, org: &Org, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        one(pooled.conn(), org, id).await
    }

    /// The org's rollouts, newest first, at most `limit` (clamped to 1..=[`MAX_ROLLOUT_PAGE`]).
    pub async fn rollouts(&self, org: &Org, limit: u32) -> Result<Vec<RolloutRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        list(pooled.conn(), org, limit).await
    }

    /// The ids of the rollouts running (progressing or paused) on `tenant`, by id, at most
    /// [`MAX_ROLLOUT_PAGE`].
    pub async fn rollouts_running_on(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT r.id FROM rollouts r JOIN rollout_targets t \
             ON t.org = r.org AND t.rollout_id = r.id \
             WHERE t.org = $1 AND t.project = $2 AND t.env = $3 AND r.state IN ('progressing', 'paused') \
             ORDER BY r.id LIMIT $4";
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        Ok(db_run!(conn, |c| sqlx::query_scalar(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(i64::from(MAX_ROLLOUT_PAGE))
            .fetch_all(&mut *c)
            .await
            .map_err(db("rollouts_running_on"))?))
    }

    /// Every org's rollouts in `state` (the controller's work list), at most [`MAX_ROLLOUT_PAGE`].
    pub async fn rollouts_in_state(&self, state: &str) -> Result<Vec<RolloutRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        in_state(pooled.conn(), state).await
    }

    /// The target environments of rollout `id`.
    pub async fn rollout_targets(
        &self,
        org: &Org,
        id: &str,
    ) -> Result<Vec<RolloutTargetRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        targets(pooled.conn(), org, id).await
    }

    /// The timeline of rollout `id`, oldest first.
    pub async fn rollout_events(
        &self,
        org: &Org,
        id: &str,
    ) -> Result<Vec<RolloutEvent>, StoreError> {
        let mut pooled = self.acquire().await?;
        events(pooled.conn(), org, id).await
    }

    /// The bundles of `tenant` from its newest bundle offered to every agent up, oldest first, with their
    /// audiences (at most 64).
    pub async fn bundles_since_last_full(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(StoredBundle, Option<AudienceRow>)>, StoreError> {
        let mut pooled = self.acquire().await?;
        since_last_full(pooled.conn(), tenant).await
    }

    /// The epochs of `tenant`'s bundles from the newest one offered to every agent up (that one and at most 63
    /// newer), oldest first, with their audiences (what the fleet inventory compares each agent with).
    pub async fn bundle_offer_epochs(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(u64, Option<AudienceRow>)>, StoreError> {
        let mut pooled = self.acquire().await?;
        offer_epochs(pooled.conn(), tenant).await
    }

    /// The labels (JSON object) an operator gave the agent, if any.
    pub async fn agent_labels(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
    ) -> Result<Option<String>, StoreError> {
        let mut pooled = self.acquire().await?;
        labels(pooled.conn(), tenant, agent).await
    }

    /// Every labelled agent of the environment with its labels (JSON object).
    pub async fn env_agent_labels(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(AgentId, String)>, StoreError> {
        let mut pooled = self.acquire().await?;
        env_labels(pooled.conn(), tenant).await
    }

    /// How many agents (of every tenant) activated their current bundle before `since_ms`, or never reported
    /// one (a revoked key's successor check).
    pub async fn agents_active_before(&self, since_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM agents \
             WHERE active_bundle_since_ms IS NULL OR active_bundle_since_ms < $1";
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let n: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
            .bind(since_ms)
            .fetch_one(&mut *c)
            .await
            .map_err(db("agents_active_before")))?;
        to_u64("agents", "count", n)
    }

    /// The agents of the environment (at most [`MAX_ENV_AGENTS`]) with the bundle each reports active.
    pub async fn env_agents(&self, tenant: &Tenant) -> Result<Vec<EnvAgent>, StoreError> {
        let mut pooled = self.acquire().await?;
        env_agents(pooled.conn(), tenant).await
    }
}

/// Rollout writes inside a transaction, so each commits with its audit entry (and a step's target row with the
/// bundle it names).
impl crate::StoreTx {
    /// Creates a rollout in state `progressing` at step 0, with its targets.
    pub async fn insert_rollout(&mut self, r: &NewRollout) -> Result<(), StoreError> {
        insert(self.conn(), r).await
    }

    /// See [`crate::Store::rollout`].
    pub async fn rollout(&mut self, org: &Org, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        one(self.conn(), org, id).await
    }

    /// The id of a rollout still running (progressing or paused) on `tenant`, if any.
    pub async fn rollout_running_on(
        &mut self,
        tenant: &Tenant,
    ) -> Result<Option<String>, StoreError> {
        running_on(self.conn(), tenant).await
    }

    /// Applies `t` if the rollout's version is still `expected_version` (and bumps it); `false` when another
    /// transition came first.
    pub async fn transition_rollout(
        &mut self,
        org: &Org,
        id: &str,
        expected_version: u64,
        t: &RolloutTransition,
    ) -> Result<bool, StoreError> {
        transition(self.conn(), org, id, expected_version, t).await
    }

    /// Records that rollout `id` published `step` (of `attempt`) in `tenant` as bundle `epoch` / `digest`.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_rollout_target_bundle(
        &mut self,
        org: &Org,
        id: &str,
        tenant: &Tenant,
        step: u32,
        attempt: u32,
        epoch: u64,
        digest: &str,
    ) -> Result<(), StoreError> {
        set_target_bundle(self.conn(), org, id, tenant, step, attempt, epoch, digest).await
    }

    /// Appends `event` (its `id` is ignored) to rollout `rollout_id`'s timeline; returns the new id.
    pub async fn insert_rollout_event(
        &mut self,
        org: &Org,
        rollout_id: &str,
        event: &RolloutEvent,
    ) -> Result<u64, StoreError> {
        insert_event(self.conn(), org, rollout_id, event).await
    }

    /// Records the audience of `tenant`'s bundle `epoch` (in the bundle's publish transaction).
    pub async fn set_bundle_audience(
        &mut self,
        tenant: &Tenant,
        epoch: u64,
        audience: &AudienceRow,
    ) -> Result<(), StoreError> {
        set_audience(self.conn(), tenant, epoch, audience).await
    }

    /// Sets (replaces) the labels of an agent.
    pub async fn set_agent_labels(
        &mut self,
        tenant: &Tenant,
        agent: &AgentId,
        labels_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        set_labels(self.conn(), tenant, agent, labels_json, now_ms).await
    }
}
