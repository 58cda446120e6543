//! Incremental upkeep: folds the evidence index, in id order, into the precomputed state the analytics read
//! (incident families per environment, daily posture and regress counts).
//!
//! - **Family at ingest.** [`family_of`] computes a decision's (or failed regress result's) fingerprint when it
//!   is indexed, from the fields the index holds, so the evidence row carries its family; repeated feature sets
//!   hit a small cache. The same function defines a family when the job first meets it
//!   ([`definitions`]), so the stored definition is the one the rows were indexed with.
//! - **Folding in the database.** A pass picks the next range of ids and has the store fold it with
//!   `INSERT … SELECT … GROUP BY` ([`gait_store::Store::apply_analysis`]): no evidence row travels to the
//!   aggregator, and the cost is a few statements per range, not per row.
//! - **Fed, not read back, when it can be.** The range's one pass over its wide rows is half that cost. Ingest on
//!   this replica hands each committed batch to the [`super::feed`], pre-aggregated at the pass's grain; a pass
//!   whose range the feed holds exactly (checked against the store's count of ids) writes that pre-aggregate
//!   instead of reading the rows back. Any range it does not hold is read back as before.
//! - **Once per deployment.** Every replica runs the task; only the holder of the `analysis-upkeep` leader lease
//!   folds. The lease is not the fence: the store moves the cursor with a compare-and-set in the transaction that
//!   folds the range, so a row is counted once even when two replicas briefly both believe they lead.
//! - **No row skipped.** On PostgreSQL ids come from a sequence and transactions commit in any order, so id 11
//!   can be visible while id 10 is still being written. A range ends before the first gap in the ids, unless the
//!   row after the gap was received more than [`SETTLE`] ago, by which time the writer of the missing id has
//!   committed or rolled back (a rolled-back or conflicting insert leaves a permanent gap). On SQLite ids are
//!   dense (one writer at a time).
//! - **Calls matched in bulk.** Call-level coverage needs each decision's arguments digest looked up by a
//!   runpack's call. An index on it put every decision at a random place in a large B-tree and halved ingest, so
//!   the leader merges the (tool, digest) keys of folded decisions into per-environment sets of sorted runs
//!   ([`merge_calls`], cursor [`CALLS_JOB`], `gait_store`'s `gated` module): every [`MERGE_ROWS`] folded rows, or
//!   when the oldest waited the configured lag (`analysis.call_merge_lag_seconds`). A merge takes its keys from
//!   the feed when the fold took the whole range from it, else the store reads them back. Each merge marks gated
//!   the runpack calls its keys and the stored runs now match, whichever arrived first. Call coverage is that lag
//!   behind the rest.
//! - **Order independent.** Every fold is a count, a sum, a minimum, a maximum, a set or "the five smallest
//!   digests", so any batching or order of indexing gives the same stored state (tests hold it on both
//!   backends with shuffled and redelivered ingest).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use gait_analysis::family::{IncidentFeatures, IncidentKind, fingerprint};
use gait_runtime::Tasks;
use gait_store::{
    CallMarking, EvidenceClass, FamilyDef, FamilySample, IndexFields, LeaderLease, RangesApplied,
    Store, StoreError,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::feed::Feed;

/// The leader lease and cursor name of the job.
pub const JOB: &str = "analysis-upkeep";
/// Evidence rows folded per transaction at most.
pub const BATCH: u32 = 100_000;
/// How often the job looks for new rows.
pub const TICK: Duration = Duration::from_secs(1);
/// Fewer new rows than this wait for the next tick, up to [`MAX_LAG`]: folding larger ranges costs less per
/// row (one upsert per family and environment per range, however many rows).
pub const MIN_ROWS: u64 = 10_000;
/// The longest new rows wait to be folded (how stale families and posture can be).
pub const MAX_LAG: Duration = Duration::from_secs(5);
/// How long a gap in the ids is waited for before it is taken as permanent.
pub const SETTLE: Duration = Duration::from_secs(60);
/// A day in milliseconds (posture and regress counts are per UTC day of the agent's clock).
pub const DAY_MS: i64 = 86_400_000;
/// The cursor of the call merge: how far the decisions' arguments digests are merged into the gated sets.
pub const CALLS_JOB: &str = "analysis-calls";
/// Folded rows that start a call merge at once, and the most one merge takes: a merge rewrites the pages of the
/// gated sets it lands on, so the more rows it carries, the less each costs.
pub const MERGE_ROWS: u64 = 1_000_000;
/// The default longest wait of folded rows for the call merge (`analysis.call_merge_lag_seconds`).
pub const MERGE_LAG: Duration = Duration::from_secs(60);
/// Distinct feature sets whose fingerprint ingest keeps at hand.
const FINGERPRINT_CACHE: usize = 16_384;

/// The incident features of an indexed record, if it is an incident: every decision, and a failed regress
/// result. `kind` is the record kind.
pub fn incident_features(class: EvidenceClass, f: &IndexFields) -> Option<IncidentFeatures> {
    match class {
        EvidenceClass::Decision => Some(IncidentFeatures {
            kind: Some(IncidentKind::Decision),
            tool: f.tool_name.clone().unwrap_or_default(),
            verdict: f.verdict.clone()?,
            reason_codes: f.reason_codes.clone(),
            matched_rule: f.matched_rule.clone(),
            policy_lineage: f.policy_name.clone(),
            endpoint_class: f.endpoint_classes.clone(),
            failure_kind: None,
        }),
        EvidenceClass::Artifact
            if f.artifact_kind.as_deref() == Some("regress_result")
                && f.regress_status.as_deref() == Some("fail") =>
        {
            Some(IncidentFeatures {
                kind: Some(IncidentKind::RegressFailure),
                tool: String::new(),
                verdict: "fail".into(),
                reason_codes: Vec::new(),
                matched_rule: None,
                policy_lineage: None,
                endpoint_class: None,
                failure_kind: f.failure_kind.clone(),
            })
        }
        EvidenceClass::Artifact => None,
    }
}

static FINGERPRINTS: LazyLock<quick_cache::sync::Cache<IncidentFeatures, Arc<str>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(FINGERPRINT_CACHE));

/// The family (fingerprint v1 hash) an indexed record belongs to, if it is an incident.
pub fn family_of(class: EvidenceClass, fields: &IndexFields) -> Option<String> {
    let features = incident_features(class, fields)?;
    if let Some(hash) = FINGERPRINTS.get(&features) {
        return Some(hash.to_string());
    }
    let hash: Arc<str> = fingerprint(&features).hash.into();
    FINGERPRINTS.insert(features, hash.clone());
    Some(hash.to_string())
}

/// The definitions of the families first met in a range, from their first rows. A row whose fields no longer
/// give its stored family (an index written by another fingerprint version) is defined under the stored id
/// with the inputs as computed now, and logged.
pub fn definitions(samples: &[FamilySample]) -> Vec<FamilyDef> {
    samples
        .iter()
        .filter_map(|s| {
            let fp = fingerprint(&incident_features(s.class, &s.fields)?);
            if fp.hash != s.family {
                warn!(org = %s.org, family = %s.family, computed = %fp.hash,
                    "an indexed family does not match its fields' fingerprint; defined under the indexed id");
            }
            let text = |key: &str| {
                fp.inputs
                    .get(key)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(FamilyDef {
                org: s.org.clone(),
                family: s.family.clone(),
                version: fp.version,
                dedup_key: fp.dedup_key(),
                kind: text("kind"),
                tool: text("tool"),
                verdict: text("verdict"),
                inputs: String::from_utf8_lossy(&gait_canon::canonical_bytes(&fp.inputs))
                    .into_owned(),
            })
        })
        .collect()
}

/// How many of `ids` (ascending `(id, received_unix_ms)`, all above `cursor`) may be folded now: up to the first
/// gap that has not settled (module docs).
pub fn settled_prefix(ids: &[(u64, i64)], cursor: u64, now_ms: i64, settle_ms: i64) -> usize {
    let mut expected = cursor + 1;
    for (i, (id, received)) in ids.iter().enumerate() {
        if *id != expected && *received > now_ms.saturating_sub(settle_ms) {
            return i;
        }
        expected = id + 1;
    }
    ids.len()
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
    /// The range came pre-aggregated from the in-process feed ([`super::feed`]), not read back.
    pub fed: bool,
    /// A full [`BATCH`] of rows was waiting (a fed pass may fold fewer: the batch the range's end cuts waits).
    pub full: bool,
}

/// Folds at most one range of [`BATCH`] rows; `settle` as in the module docs.
pub async fn pass(store: &Store, settle: Duration, now_ms: i64) -> Result<Pass, StoreError> {
    pass_fed(store, None, settle, now_ms).await
}

/// [`pass`], folding the range from `feed`'s segments when they hold exactly its rows ([`super::feed`]).
pub async fn pass_fed(
    store: &Store,
    feed: Option<&Feed>,
    settle: Duration,
    now_ms: i64,
) -> Result<Pass, StoreError> {
    let cursor = store.analysis_cursor(JOB).await?;
    // The common case, a range with no gap, needs only its size and end; the ids are read for a gap.
    let (rows, end) = store.analysis_span(cursor, BATCH).await?;
    let (take, last) = if end.checked_sub(cursor) == Some(rows) {
        (rows as usize, end)
    } else {
        let ids = store.analysis_ids(cursor, BATCH).await?;
        let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
        let take = settled_prefix(&ids, cursor, now_ms, settle_ms);
        (take, ids[..take].last().map_or(cursor, |(id, _)| *id))
    };
    if take == 0 {
        return Ok(Pass {
            rows: 0,
            cursor,
            lost_race: false,
            fed: false,
            full: false,
        });
    }
    let full = take == BATCH as usize;
    if let Some(feed) = feed
        && let Some(mut taken) = feed.take(cursor, last)
    {
        // The segments' ids are real and disjoint: the store's count of the range, taken inside the fold's
        // transaction, equal to theirs means the same rows.
        let applied = store
            .apply_analysis_ranges(
                JOB,
                cursor,
                taken.end,
                taken.ids,
                &taken.ranges,
                &|agent, family| feed.knows(agent, family),
                &definitions,
                now_ms,
            )
            .await?;
        match applied {
            RangesApplied::Folded => {
                feed.remember(&taken.ranges);
                feed.folded(cursor, taken.end, &mut taken.ranges);
                return Ok(Pass {
                    rows: usize::try_from(taken.ids).unwrap_or(usize::MAX),
                    cursor: taken.end,
                    lost_race: false,
                    fed: true,
                    full,
                });
            }
            RangesApplied::LostRace => {
                return Ok(Pass {
                    rows: 0,
                    cursor,
                    lost_race: true,
                    fed: false,
                    full,
                });
            }
            // Rows the feed did not see: read the range back.
            RangesApplied::Mismatch => {}
        }
    }
    let applied = store
        .apply_analysis(JOB, cursor, last, &definitions, now_ms)
        .await?;
    Ok(Pass {
        rows: if applied { take } else { 0 },
        cursor: if applied { last } else { cursor },
        lost_race: !applied,
        fed: false,
        full,
    })
}

/// What one call merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merge {
    /// The merge cursor after it.
    pub cursor: u64,
    /// Distinct (tool, digest) keys of the range, written as new runs of their environments' sets.
    pub digests: u64,
    /// Runpack calls newly gated.
    pub calls: u64,
    /// Another replica moved the cursor first (nothing changed).
    pub lost_race: bool,
    /// The keys came from the feed, not read back.
    pub fed: bool,
}

/// Folded rows the call merge has not taken yet: `(merge cursor, fold cursor)`.
pub async fn unmerged(store: &Store) -> Result<(u64, u64), StoreError> {
    Ok((
        store.analysis_cursor(CALLS_JOB).await?,
        store.analysis_cursor(JOB).await?,
    ))
}

/// Merges the (tool, arguments digest) keys of the decisions the fold has passed (at most `max_ids` ids of them;
/// the job takes [`MERGE_ROWS`]) into their environments' gated sets and marks the runpack calls those now match,
/// finding them the cheaper way ([`CallMarking::Cheaper`]). The keys come from `feed` when it holds the whole
/// range, else the store reads them back.
pub async fn merge_calls(
    store: &Store,
    feed: Option<&Feed>,
    max_ids: u64,
    now_ms: i64,
) -> Result<Merge, StoreError> {
    merge_calls_with(store, feed, max_ids, CallMarking::Cheaper, now_ms).await
}

/// [`merge_calls`] finding the calls to mark as `marking` says (tests hold both ways to the same result).
pub async fn merge_calls_with(
    store: &Store,
    feed: Option<&Feed>,
    max_ids: u64,
    marking: CallMarking,
    now_ms: i64,
) -> Result<Merge, StoreError> {
    let (from, folded) = unmerged(store).await?;
    let to = folded.min(from.saturating_add(max_ids));
    if to <= from {
        return Ok(Merge {
            cursor: from,
            ..Merge::default()
        });
    }
    let keys = feed.and_then(|f| f.take_calls(from, to));
    let fed = keys.is_some();
    Ok(
        match store
            .merge_gated_calls(CALLS_JOB, from, to, keys, marking, now_ms)
            .await?
        {
            Some((digests, calls)) => Merge {
                cursor: to,
                digests,
                calls,
                lost_race: false,
                fed,
            },
            None => Merge {
                cursor: from,
                lost_race: true,
                ..Merge::default()
            },
        },
    )
}

/// Whether a call merge is due with `(merge cursor, fold cursor)`, the time since the last one ended (`None`:
/// none yet on this leader) and whether that one failed: a failed merge waits out the lag before the next try,
/// however many rows wait.
pub fn merge_due(
    cursors: (u64, u64),
    since_last: Option<Duration>,
    failed: bool,
    lag: Duration,
) -> bool {
    let waiting = cursors.1.saturating_sub(cursors.0);
    let lag_passed = since_last.is_none_or(|t| t >= lag);
    waiting > 0 && (lag_passed || (waiting >= MERGE_ROWS && !failed))
}

/// Rows indexed and not folded yet (ids past the cursor; gaps make it an upper bound).
async fn pending(store: &Store) -> Result<u64, StoreError> {
    let head = store.analysis_head().await?;
    Ok(head.saturating_sub(store.analysis_cursor(JOB).await?))
}

/// Folds until nothing is left to fold now (tests, the bench); answers the rows folded.
pub async fn catch_up(store: &Store, settle: Duration) -> Result<u64, StoreError> {
    Ok(catch_up_fed(store, None, settle).await?.0)
}

/// [`catch_up`] with `feed`, the call merge included; answers the rows folded and of them the rows folded from
/// the feed.
pub async fn catch_up_fed(
    store: &Store,
    feed: Option<&Feed>,
    settle: Duration,
) -> Result<(u64, u64), StoreError> {
    let folded = fold_up(store, feed, settle).await?;
    loop {
        let m = merge_calls(store, feed, MERGE_ROWS, crate::clock::unix_ms()).await?;
        let (merged, to) = unmerged(store).await?;
        if merged >= to && !m.lost_race {
            return Ok(folded);
        }
    }
}

/// Folds until nothing is left to fold now, without the call merge; answers as [`catch_up_fed`].
pub async fn fold_up(
    store: &Store,
    feed: Option<&Feed>,
    settle: Duration,
) -> Result<(u64, u64), StoreError> {
    let (mut total, mut fed) = (0u64, 0u64);
    loop {
        let p = pass_fed(store, feed, settle, crate::clock::unix_ms()).await?;
        total += p.rows as u64;
        if p.fed {
            fed += p.rows as u64;
        }
        if p.rows == 0 && !p.lost_race {
            return Ok((total, fed));
        }
    }
}

/// Starts the upkeep task on this replica.
pub fn spawn(
    tasks: &Tasks,
    store: Store,
    feed: Option<Arc<Feed>>,
    metrics: Arc<crate::metrics::Metrics>,
    settle: Duration,
    merge_lag: Duration,
    token: CancellationToken,
) {
    // Only the leader folds: until this replica leads, its feed holds nothing.
    if let Some(f) = &feed {
        f.set_leading(false);
    }
    tasks.spawn_essential(JOB, async move {
        let mut lease: Option<LeaderLease> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut busy = false;
        let mut last_pass: Option<std::time::Instant> = None;
        let mut last_merge: Option<std::time::Instant> = None;
        let mut merge_failed = false;
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
                if let Some(f) = &feed {
                    f.set_leading(false);
                }
            }
            if lease.is_none() {
                match store.try_lead(JOB).await {
                    Ok(Some(l)) => {
                        info!("analysis upkeep leads this deployment");
                        lease = Some(l);
                        last_merge = None;
                        if let Some(f) = &feed {
                            f.set_leading(true);
                        }
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
            // Between passes, also while the fold catches up, so a backlog never starves call coverage.
            match unmerged(&store).await {
                Ok(c) if merge_due(c, last_merge.map(|t| t.elapsed()), merge_failed, merge_lag) => {
                    let started = std::time::Instant::now();
                    let merged =
                        merge_calls(&store, feed.as_deref(), MERGE_ROWS, crate::clock::unix_ms())
                            .await;
                    // The lag counts from the end, so a merge longer than the lag still leaves folds between.
                    last_merge = Some(std::time::Instant::now());
                    merge_failed = merged.is_err();
                    match merged {
                        Ok(m) => {
                            metrics
                                .analysis_call_merge_seconds
                                .observe(started.elapsed().as_secs_f64());
                            if m.calls > 0 {
                                info!(
                                    calls = m.calls,
                                    digests = m.digests,
                                    "runpack calls matched to gate decisions"
                                );
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, lag_seconds = merge_lag.as_secs(),
                                "analysis call merge failed; retrying after the lag")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "analysis upkeep could not read its cursors"),
            }
            if !busy && last_pass.is_some_and(|t| t.elapsed() < MAX_LAG) {
                match pending(&store).await {
                    Ok(n) if n >= MIN_ROWS => {}
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(error = %e, "analysis upkeep could not read how far the index is");
                        continue;
                    }
                }
            }
            let started = std::time::Instant::now();
            last_pass = Some(started);
            match pass_fed(&store, feed.as_deref(), settle, crate::clock::unix_ms()).await {
                Ok(p) => {
                    metrics.analysis_rows.inc_by(p.rows as u64);
                    if p.fed {
                        metrics.analysis_fed_rows.inc_by(p.rows as u64);
                    }
                    metrics
                        .analysis_cursor
                        .set(i64::try_from(p.cursor).unwrap_or(i64::MAX));
                    metrics
                        .analysis_pass_seconds
                        .observe(started.elapsed().as_secs_f64());
                    // A full batch means more is waiting: go on without waiting for the tick.
                    busy = p.full || p.lost_race;
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

    #[test]
    fn a_fresh_gap_stops_the_range_and_a_settled_one_does_not() {
        let now = 1_000_000;
        let ids = [(1, now), (2, now), (4, now), (5, now)];
        assert_eq!(settled_prefix(&ids, 0, now, 60_000), 2);
        let old = [(1, 0), (2, 0), (4, 0), (5, now)];
        assert_eq!(settled_prefix(&old, 0, now, 60_000), 4);
        // A gap right after the cursor counts too.
        assert_eq!(settled_prefix(&[(3, now)], 1, now, 60_000), 0);
        assert_eq!(settled_prefix(&[(2, now)], 1, now, 60_000), 1);
    }

    #[test]
    fn a_merge_is_due_at_a_million_rows_or_after_the_lag_and_waits_the_lag_out_after_a_failure() {
        let lag = Duration::from_secs(60);
        let soon = Some(Duration::from_secs(1));
        let later = Some(Duration::from_secs(60));
        // Nothing waiting: never.
        assert!(!merge_due((5, 5), None, false, lag));
        // The first merge of a leader, and any after the lag.
        assert!(merge_due((0, 1), None, false, lag));
        assert!(merge_due((0, 1), later, false, lag));
        // Within the lag only a million waiting rows start one.
        assert!(!merge_due((0, MERGE_ROWS - 1), soon, false, lag));
        assert!(merge_due((0, MERGE_ROWS), soon, false, lag));
        // After a failure, even a million rows wait out the lag.
        assert!(!merge_due((0, MERGE_ROWS), soon, true, lag));
        assert!(merge_due((0, MERGE_ROWS), later, true, lag));
    }

    fn decision(tool: &str, codes: &[&str]) -> IndexFields {
        IndexFields {
            verdict: Some("block".into()),
            tool_name: Some(tool.into()),
            reason_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
            matched_rule: Some("no-delete".into()),
            policy_name: Some("base.yaml".into()),
            endpoint_classes: Some("fs.delete".into()),
            // Volatile fields never reach the fingerprint.
            intent_digest: Some("1".repeat(64)),
            trace_id: Some("t-1".into()),
            ..IndexFields::default()
        }
    }

    #[test]
    fn the_family_at_ingest_is_the_fingerprint_of_the_fields_and_its_definition_agrees() {
        let a = family_of(
            EvidenceClass::Decision,
            &decision("tool.delete", &["x", "y"]),
        );
        let mut other = decision("tool.delete", &["y", "x", "x"]);
        other.intent_digest = Some("2".repeat(64));
        // Order and repeats of reason codes, and every per-occurrence field, leave the family alone.
        assert_eq!(a, family_of(EvidenceClass::Decision, &other));
        assert_ne!(
            a,
            family_of(EvidenceClass::Decision, &decision("tool.write", &["x"]))
        );
        let fields = decision("tool.delete", &["x", "y"]);
        let family = a.expect("a decision is an incident");
        let defs = definitions(&[FamilySample {
            org: "acme".parse().expect("org"),
            family: family.clone(),
            class: EvidenceClass::Decision,
            fields,
        }]);
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].family, family);
        assert_eq!(defs[0].dedup_key, format!("gfam1-{}", &family[..32]));
        assert!(
            defs[0].inputs.contains("\"matched_rule\":\"no-delete\""),
            "{}",
            defs[0].inputs
        );
        // A passing regress result and an artifact of another kind are no incident.
        let pass = IndexFields {
            artifact_kind: Some("regress_result".into()),
            regress_status: Some("pass".into()),
            ..IndexFields::default()
        };
        assert_eq!(family_of(EvidenceClass::Artifact, &pass), None);
        let fail = IndexFields {
            regress_status: Some("fail".into()),
            failure_kind: Some("result_digest_changed".into()),
            ..pass
        };
        assert!(family_of(EvidenceClass::Artifact, &fail).is_some());
    }
}
