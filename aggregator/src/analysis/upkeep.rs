//! Incremental upkeep: folds the evidence index, in id order, into the precomputed state the analytics read
//! (incident families per environment, daily posture and regress counts).
//!
//! - **Once per deployment.** Every replica runs the task; only the holder of the `analysis-upkeep` leader lease
//!   folds. The lease is not the fence: [`gait_store::Store::apply_analysis`] moves the cursor with a
//!   compare-and-set in the transaction that adds the batch, so a row is counted once even when two replicas
//!   briefly both believe they lead.
//! - **No row skipped.** On PostgreSQL ids come from a sequence and transactions commit in any order, so id 11
//!   can be visible while id 10 is still being written. A batch is taken only up to the first gap in the ids,
//!   unless the row after the gap was received more than [`SETTLE`] ago, by which time the writer of the
//!   missing id has committed or rolled back (a rolled-back or conflicting insert leaves a permanent gap). On
//!   SQLite ids are dense (one writer at a time).
//! - **Order independent.** [`fold`] is a pure function of the rows: counts add, times take minimum and
//!   maximum, ranks take the maximum, agents and representatives are sets, so any batching or any order of
//!   indexing gives the same stored state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gait_analysis::family::{Fingerprint, IncidentFeatures, IncidentKind, fingerprint};
use gait_runtime::Tasks;
use gait_store::{
    AgentId, AnalysisDelta, AnalysisRow, EvidenceClass, FamilyDef, FamilyScope, LeaderLease, Org,
    PostureCount, REPRESENTATIVES_PER_SCOPE, RegressCount, Store, StoreError, Tenant,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The leader lease and cursor name of the job.
pub const JOB: &str = "analysis-upkeep";
/// Rows folded per transaction.
pub const BATCH: u32 = 5_000;
/// How often an idle job looks for new rows.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a gap in the ids is waited for before it is taken as permanent.
pub const SETTLE: Duration = Duration::from_secs(60);
/// A day in milliseconds (posture and regress counts are per UTC day of the agent's clock).
pub const DAY_MS: i64 = 86_400_000;

/// The tool name recorded when a decision named none.
pub const UNKNOWN_TOOL: &str = "(unknown)";
/// The stage recorded when a decision had none (no bundle stage report).
pub const NO_STAGE: &str = "none";

/// Risk rank of Gait's risk class text: 0 low or unknown, 1 medium, 2 high, 3 critical.
pub fn risk_rank(class: Option<&str>) -> u8 {
    match class.map(|c| c.trim().to_ascii_lowercase()).as_deref() {
        Some("critical") => 3,
        Some("high") => 2,
        Some("medium") => 1,
        _ => 0,
    }
}

/// Severity rank of a decision: 3 block (or a regress failure), 2 require approval, 1 a dry run or a
/// would-have-blocked report, 0 allow.
fn severity_rank(row: &AnalysisRow) -> u8 {
    match row.verdict.as_deref() {
        Some("block") => 3,
        Some("require_approval") => 2,
        Some("dry_run") => 1,
        _ if row.would_have_blocked => 1,
        _ => 0,
    }
}

/// The call sends data out (an HTTP or DNS endpoint) or the policy flagged tainted data.
fn egress_or_taint(row: &AnalysisRow) -> bool {
    let egress = row
        .endpoint_classes
        .as_deref()
        .is_some_and(|c| c.split(',').any(|c| c.starts_with("net.")));
    egress || row.reason_codes.iter().any(|c| c.contains("taint"))
}

/// The incident features of one row, if it is an incident (every decision; a failed regress result).
pub fn features(row: &AnalysisRow) -> Option<(IncidentFeatures, Option<&str>)> {
    match row.class {
        EvidenceClass::Decision => {
            let verdict = row.verdict.as_deref()?;
            Some((
                IncidentFeatures {
                    kind: Some(IncidentKind::Decision),
                    tool: row.tool_name.clone().unwrap_or_default(),
                    verdict: verdict.to_owned(),
                    reason_codes: row.reason_codes.clone(),
                    matched_rule: row.matched_rule.clone(),
                    policy_lineage: row.policy_name.clone(),
                    endpoint_class: row.endpoint_classes.clone(),
                    failure_kind: None,
                },
                row.intent_digest.as_deref(),
            ))
        }
        EvidenceClass::Artifact
            if row.artifact_kind.as_deref() == Some("regress_result")
                && row.regress_status.as_deref() == Some("fail") =>
        {
            Some((
                IncidentFeatures {
                    kind: Some(IncidentKind::RegressFailure),
                    tool: String::new(),
                    verdict: "fail".into(),
                    reason_codes: Vec::new(),
                    matched_rule: None,
                    policy_lineage: None,
                    endpoint_class: None,
                    failure_kind: row.failure_kind.clone(),
                },
                row.sha256.as_deref(),
            ))
        }
        EvidenceClass::Artifact => None,
    }
}

/// (environment, day, tool, verdict, stage) of a posture count.
type PostureKey = (Tenant, i64, String, String, String);

/// Folds `rows` into the delta the store adds (module docs). Pure: any split of the same rows into batches,
/// folded and added, gives the same totals.
pub fn fold(rows: &[AnalysisRow]) -> AnalysisDelta {
    let mut prints: HashMap<IncidentFeatures, Fingerprint> = HashMap::new();
    let mut families: BTreeMap<(Org, String), FamilyDef> = BTreeMap::new();
    let mut scopes: BTreeMap<(Tenant, String), FamilyScope> = BTreeMap::new();
    let mut agents: BTreeSet<(Tenant, String, AgentId)> = BTreeSet::new();
    let mut reps: BTreeMap<(Tenant, String), BTreeSet<String>> = BTreeMap::new();
    let mut posture: BTreeMap<PostureKey, (u64, u64, u64)> = BTreeMap::new();
    let mut regress: BTreeMap<(Org, gait_store::Project, gait_store::Env, i64), (u64, u64)> =
        BTreeMap::new();
    for row in rows {
        let day = row.created_unix_ms.div_euclid(DAY_MS);
        if row.class == EvidenceClass::Decision
            && let Some(verdict) = &row.verdict
        {
            let key = (
                row.tenant.clone(),
                day,
                row.tool_name.clone().unwrap_or_else(|| UNKNOWN_TOOL.into()),
                verdict.clone(),
                row.stage.clone().unwrap_or_else(|| NO_STAGE.into()),
            );
            let e = posture.entry(key).or_default();
            e.0 += 1;
            e.1 += u64::from(risk_rank(row.risk_class.as_deref()) >= 2);
            e.2 += u64::from(row.destructive);
        }
        if row.artifact_kind.as_deref() == Some("regress_result")
            && let Some(status) = row.regress_status.as_deref()
        {
            let t = &row.tenant;
            let e = regress
                .entry((t.org.clone(), t.project.clone(), t.env.clone(), day))
                .or_default();
            if status == "pass" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let Some((features, digest)) = features(row) else {
            continue;
        };
        let fp = prints
            .entry(features)
            .or_insert_with_key(fingerprint)
            .clone();
        let family = fp.hash.clone();
        families
            .entry((row.tenant.org.clone(), family.clone()))
            .or_insert_with(|| definition(&row.tenant.org, &fp));
        let severity = if row.class == EvidenceClass::Artifact {
            3
        } else {
            severity_rank(row)
        };
        let scope = scopes
            .entry((row.tenant.clone(), family.clone()))
            .or_insert_with(|| FamilyScope {
                tenant: row.tenant.clone(),
                family: family.clone(),
                occurrences: 0,
                first_seen_unix_ms: row.created_unix_ms,
                last_seen_unix_ms: row.created_unix_ms,
                risk_rank: 0,
                destructive: false,
                egress_or_taint: false,
                severity_rank: 0,
            });
        scope.occurrences += 1;
        scope.first_seen_unix_ms = scope.first_seen_unix_ms.min(row.created_unix_ms);
        scope.last_seen_unix_ms = scope.last_seen_unix_ms.max(row.created_unix_ms);
        scope.risk_rank = scope.risk_rank.max(risk_rank(row.risk_class.as_deref()));
        scope.destructive |= row.destructive;
        scope.egress_or_taint |= egress_or_taint(row);
        scope.severity_rank = scope.severity_rank.max(severity);
        agents.insert((row.tenant.clone(), family.clone(), row.agent_id.clone()));
        if let Some(d) = digest {
            let set = reps.entry((row.tenant.clone(), family)).or_default();
            set.insert(d.to_owned());
            if set.len() > REPRESENTATIVES_PER_SCOPE as usize {
                set.pop_last();
            }
        }
    }
    AnalysisDelta {
        families: families.into_values().collect(),
        scopes: scopes.into_values().collect(),
        agents: agents.into_iter().collect(),
        representatives: reps
            .into_iter()
            .flat_map(|((t, f), set)| set.into_iter().map(move |d| (t.clone(), f.clone(), d)))
            .collect(),
        posture: posture
            .into_iter()
            .map(|((t, day, tool, verdict, stage), (n, high, destructive))| {
                (
                    t,
                    PostureCount {
                        day,
                        tool,
                        verdict,
                        stage,
                        decisions: n,
                        high_risk: high,
                        destructive,
                    },
                )
            })
            .collect(),
        regress: regress
            .into_iter()
            .map(|((org, project, env, day), (passed, failed))| {
                (
                    org,
                    RegressCount {
                        project,
                        env,
                        day,
                        passed,
                        failed,
                    },
                )
            })
            .collect(),
    }
}

fn definition(org: &Org, fp: &Fingerprint) -> FamilyDef {
    let text = |key: &str| {
        fp.inputs
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    FamilyDef {
        org: org.clone(),
        family: fp.hash.clone(),
        version: fp.version,
        dedup_key: fp.dedup_key(),
        kind: text("kind"),
        tool: text("tool"),
        verdict: text("verdict"),
        inputs: String::from_utf8_lossy(&gait_canon::canonical_bytes(&fp.inputs)).into_owned(),
    }
}

/// The rows of `batch` (ascending ids, all above `cursor`) that may be folded now: up to the first gap that has
/// not settled (module docs).
pub fn settled_prefix(batch: &[AnalysisRow], cursor: u64, now_ms: i64, settle_ms: i64) -> usize {
    let mut expected = cursor + 1;
    for (i, row) in batch.iter().enumerate() {
        if row.id != expected && row.received_unix_ms > now_ms.saturating_sub(settle_ms) {
            return i;
        }
        expected = row.id + 1;
    }
    batch.len()
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Rows folded.
    pub rows: usize,
    /// The cursor after the pass.
    pub cursor: u64,
    /// Another replica moved the cursor first (nothing was added).
    pub lost_race: bool,
}

/// Folds at most one batch; `settle` as in the module docs.
pub async fn pass(store: &Store, settle: Duration, now_ms: i64) -> Result<Pass, StoreError> {
    let cursor = store.analysis_cursor(JOB).await?;
    let batch = store.analysis_rows(cursor, BATCH).await?;
    let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
    let take = settled_prefix(&batch, cursor, now_ms, settle_ms);
    let Some(last) = batch[..take].last() else {
        return Ok(Pass {
            rows: 0,
            cursor,
            lost_race: false,
        });
    };
    let delta = fold(&batch[..take]);
    let applied = store
        .apply_analysis(JOB, cursor, last.id, &delta, now_ms)
        .await?;
    Ok(Pass {
        rows: if applied { take } else { 0 },
        cursor: if applied { last.id } else { cursor },
        lost_race: !applied,
    })
}

/// Folds until nothing is left to fold now (for tests, the bench and `analysis upkeep --once`).
pub async fn catch_up(store: &Store, settle: Duration) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let p = pass(store, settle, crate::clock::unix_ms()).await?;
        total += p.rows as u64;
        if p.rows == 0 && !p.lost_race {
            return Ok(total);
        }
    }
}

/// Starts the upkeep task on this replica.
pub fn spawn(
    tasks: &Tasks,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    settle: Duration,
    token: CancellationToken,
) {
    tasks.spawn_essential(JOB, async move {
        let mut lease: Option<LeaderLease> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut busy = false;
        loop {
            if !busy {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
            } else if token.is_cancelled() {
                break;
            }
            if let Some(held) = lease.as_mut()
                && !held.still_held().await
            {
                warn!("analysis upkeep lost its leader lease");
                lease = None;
            }
            if lease.is_none() {
                match store.try_lead(JOB).await {
                    Ok(Some(l)) => {
                        info!("analysis upkeep leads this deployment");
                        lease = Some(l);
                    }
                    Ok(None) => {
                        busy = false;
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "analysis upkeep could not try the leader lease");
                        busy = false;
                        continue;
                    }
                }
            }
            let started = std::time::Instant::now();
            match pass(&store, settle, crate::clock::unix_ms()).await {
                Ok(p) => {
                    metrics.analysis_rows.inc_by(p.rows as u64);
                    metrics
                        .analysis_cursor
                        .set(i64::try_from(p.cursor).unwrap_or(i64::MAX));
                    metrics
                        .analysis_pass_seconds
                        .observe(started.elapsed().as_secs_f64());
                    // A full batch means more is waiting: go on without waiting for the tick.
                    busy = p.rows == BATCH as usize || p.lost_race;
                }
                Err(e) => {
                    warn!(error = %e, "analysis upkeep pass failed; retrying next tick");
                    busy = false;
                }
            }
        }
        if let Some(l) = lease.take() {
            l.release().await;
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, received: i64) -> AnalysisRow {
        AnalysisRow {
            id,
            tenant: Tenant::new(
                "acme".parse().unwrap(),
                "web".parse().unwrap(),
                "prod".parse().unwrap(),
            ),
            agent_id: "a1".parse().unwrap(),
            seq: id,
            class: EvidenceClass::Decision,
            created_unix_ms: received,
            received_unix_ms: received,
            verdict: Some("block".into()),
            policy_name: Some("base".into()),
            policy_digest: None,
            intent_digest: Some(format!("{id:064x}")),
            tool_name: Some("tool.delete".into()),
            stage: None,
            would_have_blocked: false,
            reason_codes: vec!["destructive_operation".into()],
            matched_rule: Some("no-delete".into()),
            risk_class: Some("high".into()),
            endpoint_classes: Some("fs.delete".into()),
            destructive: true,
            artifact_kind: None,
            sha256: None,
            regress_status: None,
            failure_kind: None,
        }
    }

    #[test]
    fn a_fresh_gap_stops_the_batch_and_a_settled_one_does_not() {
        let now = 1_000_000;
        let batch = [row(1, now), row(2, now), row(4, now), row(5, now)];
        assert_eq!(settled_prefix(&batch, 0, now, 60_000), 2);
        let old = [row(1, 0), row(2, 0), row(4, 0), row(5, now)];
        assert_eq!(settled_prefix(&old, 0, now, 60_000), 4);
        // A gap right after the cursor counts too.
        assert_eq!(settled_prefix(&[row(3, now)], 1, now, 60_000), 0);
        assert_eq!(settled_prefix(&[row(2, now)], 1, now, 60_000), 1);
    }

    #[test]
    fn folding_in_any_split_gives_the_same_totals() {
        let rows: Vec<AnalysisRow> = (1..=40).map(|i| row(i, i as i64 * 1000)).collect();
        let whole = fold(&rows);
        let (a, b) = rows.split_at(17);
        let (pa, pb) = (fold(a), fold(b));
        let total = |d: &[AnalysisDelta]| -> u64 {
            d.iter()
                .flat_map(|d| d.scopes.iter())
                .map(|s| s.occurrences)
                .sum()
        };
        assert_eq!(total(std::slice::from_ref(&whole)), 40);
        assert_eq!(total(&[pa.clone(), pb.clone()]), 40);
        assert_eq!(whole.families, pa.families);
        assert_eq!(whole.scopes[0].severity_rank, 3);
        assert_eq!(whole.scopes[0].risk_rank, 2);
        assert!(whole.scopes[0].destructive);
        assert_eq!(
            whole.representatives.len(),
            REPRESENTATIVES_PER_SCOPE as usize
        );
        assert_eq!(
            whole.posture.iter().map(|(_, p)| p.decisions).sum::<u64>(),
            40
        );
    }
}
