//! Decision statistics for rollout health gates (issue 13, Build item 5): counts over the evidence index of one
//! environment's decisions in a receipt-time window, optionally only those made with one staged candidate, one
//! policy of record, or by a set of agents (a rollout's cohort).
//!
//! Definitions (each over the decisions selected):
//! - `verdict_diffs`: staged (`stage <> 'enforce'`) and both verdicts known and different;
//! - `new_blocks`: the candidate blocks where the active policy does not, or the agent reported
//!   `would_have_blocked` (a `dry_run` block it did not enforce);
//! - `candidate_errors`: staged with a candidate digest but no candidate verdict, or flagged `candidate_error`;
//! - `blocks`: the enforced verdict is `block`;
//! - `diffs_by_reason`: over the verdict diffs, each reason code one side gives and the other does not, the
//!   agent's stage markers (`stage_*`, e.g. `stage_dry_run_would_have_blocked`, which only the enforced side
//!   carries) left out: they say how the decision was staged, not what either policy decided;
//! - `diffs_by_tool`: the verdict diffs by tool.
//!
//! Agents older than the candidate reason codes leave `diffs_by_reason` empty; a gate must read "no data" as
//! inconclusive, never as healthy.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::conn::db_run;
use crate::error::{StoreError, db};
use crate::evidence::read_list;
use crate::model::{AgentId, Tenant};
use crate::rows::Columns;

/// Most agents one [`DecisionStatsQuery`] may name.
pub const MAX_STATS_AGENTS: usize = 10_000;

/// Which decisions to count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionStatsQuery {
    /// The environment.
    pub tenant: Tenant,
    /// Only decisions made with this staged candidate (Gait policy digest).
    pub candidate_digest: Option<String>,
    /// Only decisions whose policy of record has this digest.
    pub policy_digest: Option<String>,
    /// Only decisions of these agents (at most [`MAX_STATS_AGENTS`]); `None` = every agent.
    pub agents: Option<Vec<AgentId>>,
    /// Received at or after (unix ms).
    pub since_received_ms: i64,
    /// Received before (unix ms).
    pub until_received_ms: i64,
}

/// The counts; see the module documentation for each definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecisionStats {
    /// Decisions selected.
    pub decisions: u64,
    /// Distinct agents among them.
    pub agents_reporting: u64,
    /// Staged decisions whose candidate and active verdicts differ.
    pub verdict_diffs: u64,
    /// Decisions the candidate blocks and the active policy does not.
    pub new_blocks: u64,
    /// Staged decisions whose candidate could not be used or evaluated.
    pub candidate_errors: u64,
    /// Decisions enforced as `block`.
    pub blocks: u64,
    /// Verdict diffs by reason code (symmetric difference of the two sides' codes).
    pub diffs_by_reason: BTreeMap<String, u64>,
    /// Verdict diffs by tool.
    pub diffs_by_tool: BTreeMap<String, u64>,
}

const DIFF: &str = "(stage <> 'enforce' AND candidate_verdict IS NOT NULL AND active_verdict IS NOT NULL \
                    AND candidate_verdict <> active_verdict)";

impl DecisionStatsQuery {
    /// The `WHERE` clause and its text arguments after `$1..$5` (org, project, env, since, until).
    fn filter(&self) -> Result<(String, Vec<&str>), StoreError> {
        let mut sql = String::from(
            "org = $1 AND project = $2 AND env = $3 AND class = 'decision' \
             AND received_unix_ms >= $4 AND received_unix_ms < $5",
        );
        let mut args: Vec<&str> = Vec::new();
        let next = |args: &mut Vec<&str>| format!("${}", args.len() + 5);
        if let Some(c) = &self.candidate_digest {
            args.push(c);
            sql.push_str(&format!(" AND candidate_digest = {}", next(&mut args)));
        }
        if let Some(p) = &self.policy_digest {
            args.push(p);
            sql.push_str(&format!(" AND policy_digest = {}", next(&mut args)));
        }
        if let Some(agents) = &self.agents {
            if agents.len() > MAX_STATS_AGENTS {
                return Err(StoreError::invalid(
                    "agents",
                    format!("at most {MAX_STATS_AGENTS} agents per query"),
                ));
            }
            if agents.is_empty() {
                // No agent selected: nothing matches.
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(" AND agent_id IN (");
                for (n, agent) in agents.iter().enumerate() {
                    args.push(agent.as_str());
                    sql.push_str(if n == 0 { "" } else { ", " });
                    sql.push_str(&next(&mut args));
                }
                sql.push(')');
            }
        }
        Ok((sql, args))
    }
}

impl crate::Store {
    /// The decision statistics of `q` (rollout health gates).
    pub async fn decision_stats(
        &self,
        q: &DecisionStatsQuery,
    ) -> Result<DecisionStats, StoreError> {
        let (filter, extra) = q.filter()?;
        let totals = format!(
            "SELECT COUNT(*) AS decisions, COUNT(DISTINCT agent_id) AS agents, \
             COALESCE(SUM(CASE WHEN {DIFF} THEN 1 ELSE 0 END), 0) AS diffs, \
             COALESCE(SUM(CASE WHEN (candidate_verdict = 'block' AND (active_verdict IS NULL \
               OR active_verdict <> 'block')) OR would_have_blocked = 1 THEN 1 ELSE 0 END), 0) AS new_blocks, \
             COALESCE(SUM(CASE WHEN stage <> 'enforce' AND ((candidate_digest IS NOT NULL \
               AND candidate_verdict IS NULL) OR candidate_error = 1) THEN 1 ELSE 0 END), 0) AS errors, \
             COALESCE(SUM(CASE WHEN verdict = 'block' THEN 1 ELSE 0 END), 0) AS blocks \
             FROM evidence_index WHERE {filter}"
        );
        let diffs = format!(
            "SELECT tool_name, reason_codes, candidate_reason_codes FROM evidence_index \
             WHERE {filter} AND {DIFF}"
        );
        let count = |v: i64| to_count(v);
        let mut stats = DecisionStats::default();
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        db_run!(conn, |c| {
            use futures_util::TryStreamExt;
            let bind = |sql: &'_ str| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(q.tenant.org.as_str())
                    .bind(q.tenant.project.as_str())
                    .bind(q.tenant.env.as_str())
                    .bind(q.since_received_ms)
                    .bind(q.until_received_ms);
                for arg in &extra {
                    query = query.bind(*arg);
                }
                query
            };
            let row = bind(&totals)
                .fetch_one(&mut *c)
                .await
                .map_err(db("decision stats"))?;
            stats.decisions = count(row.int("decisions")?);
            stats.agents_reporting = count(row.int("agents")?);
            stats.verdict_diffs = count(row.int("diffs")?);
            stats.new_blocks = count(row.int("new_blocks")?);
            stats.candidate_errors = count(row.int("errors")?);
            stats.blocks = count(row.int("blocks")?);
            let query = bind(&diffs);
            let mut rows = query.fetch(&mut *c);
            while let Some(row) = rows.try_next().await.map_err(db("decision stats: diffs"))? {
                let tool = row.opt_text("tool_name")?.unwrap_or_default();
                *stats.diffs_by_tool.entry(tool).or_insert(0) += 1;
                let active = read_list("reason_codes", row.opt_text("reason_codes")?)?;
                let candidate = read_list(
                    "candidate_reason_codes",
                    row.opt_text("candidate_reason_codes")?,
                )?;
                for code in active
                    .iter()
                    .filter(|r| !candidate.contains(r))
                    .chain(candidate.iter().filter(|r| !active.contains(r)))
                    .filter(|r| !r.starts_with(STAGE_MARKER_PREFIX))
                {
                    *stats.diffs_by_reason.entry(code.clone()).or_insert(0) += 1;
                }
            }
        });
        Ok(stats)
    }
}

/// Prefix of the reason codes an agent adds to the enforced decision to mark how it was staged.
pub const STAGE_MARKER_PREFIX: &str = "stage_";

fn to_count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
