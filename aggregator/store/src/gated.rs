//! The set of gated calls behind call-level coverage (migration 0029): for each environment, every (tool,
//! arguments digest) some folded decision carried, so a runpack's call can be matched to a gate decision
//! whichever of the two was indexed first.
//!
//! **Sorted runs, not one table of keys.** Stop 36 kept the set as one row per key in a B-tree over every key
//! ever merged. Each merge sorted its range's keys in the database and inserted them at random places across
//! that tree, so a merge cost its own sort plus pages spread over the whole history, and grew with the set
//! (`docs/benchmarks.md`, stops 36–38). Here a merge writes its range's keys as one new **run** per
//! environment: sorted and deduplicated in process, cut into chunks of [`CHUNK_KEYS`] keys, one row
//! (`gated_chunks`) per chunk, so a merge writes about its own size in a few thousand sequential rows. A lookup
//! probes each run of its environment (one index search for the chunk whose first key is the largest at or
//! below it, then a binary search inside the chunk), or, when a run has few chunks for the calls to match,
//! reads the run through in key order. Runs are compacted in tiers: when [`FANOUT`] runs share a level, they
//! are merged (streamed, a chunk page at a time) into one run of the next level. Each key is rewritten once per
//! level, and an environment holds at most `FANOUT - 1` runs per level.
//!
//! **The key.** A call matches a decision when both name the same tool and carry the same Gait `args_digest`
//! (which covers the arguments only). The key is the digest's first 16 bytes XOR the first 16 bytes of
//! SHA-256 of the tool's name (with a domain prefix): one key space per environment instead of one run per tool.
//! Two distinct (tool, digest) pairs share a key only when their digests' prefixes differ by exactly the XOR of
//! the two tools' hashes, which is no easier to arrange than a 128-bit prefix collision of SHA-256 itself
//! (about 2^64 work), and happens by accident with probability 2^-128 per pair.
//!
//! **Where a merge's keys come from.** The upkeep's in-process feed holds the keys of the decisions it folded
//! (ranges whose rows the store counted inside the fold's transaction); a merge of a range the feed holds whole
//! takes them from there ([`RangeKeys`]). Any other range is read back from `evidence_index`. The result is the
//! same either way (a test holds it).

use std::collections::{BTreeMap, HashMap};

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::evidence::{Arg, bind_args};
use crate::model::{AgentKey, Tenant, to_i64, to_u64};
use crate::rows::Columns;

/// A key of the set (see the module docs).
pub type GatedKey = [u8; KEY_LEN];
/// Bytes of a key.
pub const KEY_LEN: usize = 16;
/// Keys per stored chunk: 2 KiB, inline in a SQLite page and in a PostgreSQL row (`STORAGE PLAIN`).
pub const CHUNK_KEYS: usize = 128;
/// Runs of one level that are compacted into one of the next.
pub const FANOUT: usize = 4;
/// Chunk rows read per page when a run is read through.
const PAGE_CHUNKS: i64 = 256;
/// Chunk rows per `INSERT`.
const INSERT_CHUNKS: usize = 200;
/// Calls updated per statement when they are marked gated.
const MARK_BATCH: usize = 1_000;
/// A run is read through instead of probed once per call when the calls to match are at least its chunks
/// divided by this (one probe costs about as much as reading this many chunks in order).
const PROBE_COST_IN_CHUNKS: usize = 8;
/// Tool hashes a thread keeps before it starts again.
const TOOL_CACHE: usize = 4_096;

/// The key of `tool` with arguments digest `args_digest` (Gait's 64 lowercase hex), or `None` when the digest is
/// not at least 32 hex characters (ingest admits only 64-hex digests, so that is a row no merge can match). The
/// tools' hashes are kept per thread (a fleet repeats a few tools many times).
pub fn gated_key(tool: &str, args_digest: &str) -> Option<GatedKey> {
    thread_local! {
        static TOOLS: std::cell::RefCell<HashMap<String, GatedKey>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let hash = TOOLS.with(|cell| {
        let mut tools = cell.borrow_mut();
        if let Some(h) = tools.get(tool) {
            return *h;
        }
        if tools.len() >= TOOL_CACHE {
            tools.clear();
        }
        let h = tool_hash(tool);
        tools.insert(tool.to_owned(), h);
        h
    });
    key_with(&hash, args_digest)
}

fn tool_hash(tool: &str) -> GatedKey {
    let mut h = Sha256::new();
    h.update(b"gait.gated-call.v1\0");
    h.update(tool.as_bytes());
    let full = h.finalize();
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&full[..KEY_LEN]);
    out
}

fn key_with(tool: &GatedKey, args_digest: &str) -> Option<GatedKey> {
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(args_digest.get(..2 * KEY_LEN)?, &mut key).ok()?;
    for (k, t) in key.iter_mut().zip(tool) {
        *k ^= t;
    }
    Some(key)
}

/// The keys of one range's decisions, by environment, as a merge writes them: each environment's keys sorted and
/// without repeats ([`RangeKeys::new`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeKeys {
    by_scope: BTreeMap<Tenant, Vec<GatedKey>>,
    /// The runpacks indexed in the range (those that listed calls), when known: then the merge tells the calls
    /// indexed in its range without joining each call to its runpack's evidence row.
    runpacks: Option<std::collections::HashSet<(Tenant, String, i64)>>,
}

impl RangeKeys {
    /// The set of `keys` per environment, in any order, repeats allowed.
    pub fn new(by_scope: impl IntoIterator<Item = (Tenant, Vec<GatedKey>)>) -> Self {
        let mut out: BTreeMap<Tenant, Vec<GatedKey>> = BTreeMap::new();
        for (scope, keys) in by_scope {
            out.entry(scope).or_default().extend(keys);
        }
        for keys in out.values_mut() {
            keys.sort_unstable();
            keys.dedup();
        }
        out.retain(|_, k| !k.is_empty());
        Self {
            by_scope: out,
            runpacks: None,
        }
    }

    /// [`RangeKeys::new`] that also knows every runpack of the range that listed calls, by agent and seq.
    pub fn with_runpacks(
        by_scope: impl IntoIterator<Item = (Tenant, Vec<GatedKey>)>,
        runpacks: impl IntoIterator<Item = (AgentKey, u64)>,
    ) -> Self {
        let mut keys = Self::new(by_scope);
        keys.runpacks = Some(
            runpacks
                .into_iter()
                .map(|(agent, seq)| {
                    (
                        agent.tenant,
                        agent.agent_id.as_str().to_owned(),
                        i64::try_from(seq).unwrap_or(i64::MAX),
                    )
                })
                .collect(),
        );
        keys
    }

    /// Distinct keys over all environments.
    pub fn len(&self) -> usize {
        self.by_scope.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_scope.is_empty()
    }

    /// Whether `call`'s runpack was indexed in the merge's range `(after, to]`: by its evidence id when read, else
    /// from the range's runpacks.
    fn indexed_in_range(&self, call: &Pending, after: u64, to: u64) -> bool {
        match (call.evidence_id, &self.runpacks) {
            (Some(id), _) => id > after && id <= to,
            (None, Some(runpacks)) => {
                runpacks.contains(&(Tenant::clone(&call.scope), call.agent_id.clone(), call.seq))
            }
            // Not read and not known: probe the stored runs (a call of an earlier range just meets them again).
            (None, None) => true,
        }
    }

    fn contains(&self, scope: &Tenant, key: &GatedKey) -> bool {
        self.by_scope
            .get(scope)
            .is_some_and(|k| k.binary_search(key).is_ok())
    }
}

/// How a call merge finds the runpack calls its new keys gate. Both leave the same calls gated once every
/// range is merged; they differ in what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMarking {
    /// The cheaper of the two for the merge at hand: [`CallMarking::Ungated`] while the calls still ungated are
    /// at most a quarter of the range's rows (counted no further than that), else [`CallMarking::ByRange`].
    Cheaper,
    /// Driven by the range: the calls of the runpacks indexed in it are read and matched against the range's
    /// keys and the stored runs, and the ungated calls of earlier runpacks are matched against the range's
    /// decisions in the database. Reads the range's rows, however few calls wait.
    ByRange,
    /// Driven by the calls still ungated: every one is matched against the range's keys, and those of runpacks
    /// indexed in the range against the stored runs too. The work follows the number of ungated calls, not the
    /// range; a call indexed past the range is gated by this merge if the range holds its key (its own range's
    /// merge would gate it too).
    Ungated,
}

/// [`CallMarking::Cheaper`] takes [`CallMarking::Ungated`] while the ungated calls are at most the range's rows
/// divided by this.
const UNGATED_PER_RANGE_ROW: u64 = 4;

/// A runpack call waiting to be matched: its primary key (scope shared between the calls of one environment),
/// its key and its runpack's evidence id.
#[derive(Debug)]
struct Pending {
    /// The call's rowid on SQLite (how it is marked there).
    rowid: Option<i64>,
    scope: std::sync::Arc<Tenant>,
    agent_id: String,
    seq: i64,
    call_index: i64,
    key: Option<GatedKey>,
    /// Its runpack's evidence id, when read (see [`RangeKeys::runpacks`]).
    evidence_id: Option<u64>,
}

/// The columns [`decode_pending!`] reads (the call `c` joined to its runpack's evidence row `e`), ordered by
/// environment so consecutive rows share one scope.
const PENDING_COLUMNS: &str = "c.org, c.project, c.env, c.agent_id, c.seq, c.call_index, c.tool_name, \
     c.args_digest, e.id";
/// [`PENDING_COLUMNS`] without the runpack's evidence id (no join).
const CALL_COLUMNS: &str =
    "c.org, c.project, c.env, c.agent_id, c.seq, c.call_index, c.tool_name, c.args_digest";
const PENDING_ORDER: &str = "ORDER BY c.org, c.project, c.env";

/// What SQLite selects besides [`PENDING_COLUMNS`]: the call's rowid.
const SQLITE_ROWID: &str = ", c.rowid AS rid";

/// Decodes rows of [`PENDING_COLUMNS`] with borrowed text (either backend's row type), one scope per run of
/// equal (org, project, env); `$rowid` says whether the rows carry [`SQLITE_ROWID`], `$joined` whether they carry
/// the runpack's evidence id (`id`).
macro_rules! decode_pending {
    ($rows:expr, $table:literal, $rowid:expr, $joined:expr) => {{
        let mut scope: Option<std::sync::Arc<Tenant>> = None;
        let mut out = Vec::with_capacity($rows.len());
        for r in &$rows {
            let text = |col: &str| -> Result<&str, StoreError> {
                sqlx::Row::try_get::<&str, _>(r, col).map_err(db("decode row"))
            };
            let int = |col: &str| -> Result<i64, StoreError> {
                sqlx::Row::try_get::<i64, _>(r, col).map_err(db("decode row"))
            };
            let (org, project, env) = (text("org")?, text("project")?, text("env")?);
            let same = scope.as_ref().is_some_and(|s| {
                s.org.as_str() == org && s.project.as_str() == project && s.env.as_str() == env
            });
            if !same {
                scope = Some(std::sync::Arc::new(
                    Tenant::from_parts(org, project, env)
                        .map_err(|e| StoreError::corrupt($table, format!("scope: {e}")))?,
                ));
            }
            let Some(call_scope) = scope.clone() else {
                continue;
            };
            out.push(Pending {
                rowid: if $rowid { Some(int("rid")?) } else { None },
                scope: call_scope,
                agent_id: text("agent_id")?.to_owned(),
                seq: int("seq")?,
                call_index: int("call_index")?,
                key: gated_key(text("tool_name")?, text("args_digest")?),
                evidence_id: if $joined {
                    Some(to_u64("evidence_index", "id", int("id")?)?)
                } else {
                    None
                },
            });
        }
        out
    }};
}

/// What a merge did, for its answer and its debug event.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    /// Distinct keys written as new runs.
    pub keys: u64,
    /// Calls newly gated.
    pub calls: u64,
}

/// Writes the keys of the decisions of `(after, to]` (`fed`, or read back when `None`) as a new run per
/// environment, then marks gated the runpack calls that now match, as `marking` says, and compacts the levels
/// that filled. Runs inside the merge's transaction, after the cursor's compare-and-set.
pub(crate) async fn merge(
    mut conn: Conn<'_>,
    after: u64,
    to: u64,
    fed: Option<RangeKeys>,
    marking: CallMarking,
) -> Result<Merged, StoreError> {
    let mut steps: Vec<(&str, u128)> = Vec::with_capacity(6);
    let mut lap = std::time::Instant::now();
    let mut step = |steps: &mut Vec<(&str, u128)>, name: &'static str| {
        steps.push((name, lap.elapsed().as_micros()));
        lap = std::time::Instant::now();
    };
    let was_fed = fed.is_some();
    let keys = match fed {
        Some(k) => k,
        None => read_range_keys(conn.reborrow(), after, to).await?,
    };
    step(
        &mut steps,
        if was_fed {
            "keys (fed)"
        } else {
            "keys (read back)"
        },
    );
    let limit = to.saturating_sub(after) / UNGATED_PER_RANGE_ROW;
    let by_ungated = match marking {
        CallMarking::ByRange => false,
        CallMarking::Ungated => true,
        CallMarking::Cheaper => {
            let n = count_ungated(conn.reborrow(), limit.saturating_add(1)).await?;
            step(&mut steps, "count ungated");
            n <= limit
        }
    };
    let mut gated: Vec<Pending> = Vec::new();
    let mut calls = 0u64;
    let candidates = if by_ungated {
        ungated_calls(conn.reborrow(), keys.runpacks.is_none()).await?
    } else {
        // Earlier runpacks' ungated calls against the range's decisions, in the database (by digest).
        calls += earlier_calls_by_range(conn.reborrow(), after, to).await?;
        range_calls(conn.reborrow(), after, to).await?
    };
    step(&mut steps, "calls read");
    let mut to_probe: BTreeMap<Tenant, Vec<(GatedKey, Pending)>> = BTreeMap::new();
    for call in candidates {
        let Some(key) = call.key else { continue };
        if keys.contains(&call.scope, &key) {
            gated.push(call);
        } else if keys.indexed_in_range(&call, after, to) {
            // Indexed in this range: never matched against the runs stored before it. Calls of earlier ranges
            // were, at their own range's merge; calls past the range will be at theirs.
            to_probe
                .entry(Tenant::clone(&call.scope))
                .or_default()
                .push((key, call));
        }
    }
    gated.extend(probe_runs(conn.reborrow(), to_probe).await?);
    step(&mut steps, "runs probed");
    calls += mark(conn.reborrow(), &gated).await?;
    step(&mut steps, "calls marked");
    let written = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    let run = to_i64("to_id", to)?;
    let mut compactions = 0usize;
    for (scope, scope_keys) in &keys.by_scope {
        let mut w = RunWriter::new(scope, 0, run);
        for k in scope_keys {
            w.push(conn.reborrow(), k).await?;
        }
        w.finish(conn.reborrow()).await?;
    }
    step(&mut steps, "runs written");
    for scope in keys.by_scope.keys() {
        compactions += compact(conn.reborrow(), scope, run).await?;
    }
    step(&mut steps, "compacted");
    tracing::debug!(
        from_id = after,
        to_id = to,
        keys = written,
        calls,
        compactions,
        by_ungated,
        steps_us = ?steps,
        "analysis: merged a range's calls"
    );
    Ok(Merged {
        keys: written,
        calls,
    })
}

/// The keys of the decisions of `(after, to]`, read from the index (streamed: the range can be a million rows).
async fn read_range_keys(mut conn: Conn<'_>, after: u64, to: u64) -> Result<RangeKeys, StoreError> {
    const SQL: &str = "SELECT org, project, env, tool_name, args_digest FROM evidence_index \
         WHERE id > $1 AND id <= $2 AND class = 'decision' AND args_digest IS NOT NULL \
         AND tool_name IS NOT NULL";
    const OP: &str = "merge_gated_calls: read the range's digests";
    let (after, to) = (to_i64("after_id", after)?, to_i64("to_id", to)?);
    let mut by_scope: HashMap<(String, String, String), Vec<GatedKey>> = HashMap::new();
    macro_rules! fold_rows {
        ($c:expr) => {{
            let mut rows = sqlx::query(SQL).bind(after).bind(to).fetch($c);
            while let Some(r) = rows.try_next().await.map_err(db(OP))? {
                let Some(key) = gated_key(&r.text("tool_name")?, &r.text("args_digest")?) else {
                    continue;
                };
                let scope = (r.text("org")?, r.text("project")?, r.text("env")?);
                match by_scope.get_mut(&scope) {
                    Some(v) => v.push(key),
                    None => {
                        by_scope.insert(scope, vec![key]);
                    }
                }
            }
        }};
    }
    db_run!(conn, |c| fold_rows!(&mut *c));
    let mut scoped = Vec::with_capacity(by_scope.len());
    for ((org, project, env), keys) in by_scope {
        let scope = Tenant::from_parts(&org, &project, &env)
            .map_err(|e| StoreError::corrupt("evidence_index", format!("scope: {e}")))?;
        scoped.push((scope, keys));
    }
    Ok(RangeKeys::new(scoped))
}

/// The ungated calls, counted no further than `up_to`.
async fn count_ungated(mut conn: Conn<'_>, up_to: u64) -> Result<u64, StoreError> {
    const SQL: &str =
        "SELECT COUNT(*) FROM (SELECT 1 FROM runpack_calls WHERE gated = 0 LIMIT $1) u";
    let up_to = to_i64("ungated_limit", up_to)?;
    let n: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(up_to)
        .fetch_one(&mut *c)
        .await
        .map_err(db("merge_gated_calls: count ungated"))?);
    to_u64("runpack_calls", "count", n)
}

/// Every ungated call, with its runpack's evidence id when `with_ids` (a search of the evidence index per call,
/// most of the read: skipped when the range's runpacks are known).
async fn ungated_calls(mut conn: Conn<'_>, with_ids: bool) -> Result<Vec<Pending>, StoreError> {
    let rowid = if matches!(conn, Conn::Sqlite(_)) {
        SQLITE_ROWID
    } else {
        ""
    };
    let sql = if with_ids {
        format!(
            "SELECT {PENDING_COLUMNS}{rowid} FROM runpack_calls c JOIN evidence_index e ON e.org = c.org \
             AND e.project = c.project AND e.env = c.env AND e.agent_id = c.agent_id AND e.seq = c.seq \
             WHERE c.gated = 0 {PENDING_ORDER}"
        )
    } else {
        format!(
            "SELECT {CALL_COLUMNS}{rowid} FROM runpack_calls c WHERE c.gated = 0 {PENDING_ORDER}"
        )
    };
    let out = db_run!(conn, |c| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&mut *c)
            .await
            .map_err(db("merge_gated_calls: ungated calls"))?;
        decode_pending!(rows, "runpack_calls", !rowid.is_empty(), with_ids)
    });
    Ok(out)
}

/// The ungated calls of the runpacks indexed in `(after, to]`.
async fn range_calls(mut conn: Conn<'_>, after: u64, to: u64) -> Result<Vec<Pending>, StoreError> {
    let rowid = if matches!(conn, Conn::Sqlite(_)) {
        SQLITE_ROWID
    } else {
        ""
    };
    let sql = format!(
        "SELECT {PENDING_COLUMNS}{rowid} FROM evidence_index e JOIN runpack_calls c ON c.org = e.org \
         AND c.project = e.project AND c.env = e.env AND c.agent_id = e.agent_id AND c.seq = e.seq \
         WHERE e.id > $1 AND e.id <= $2 AND e.class = 'artifact' AND c.gated = 0 {PENDING_ORDER}"
    );
    let (after, to) = (to_i64("after_id", after)?, to_i64("to_id", to)?);
    let out = db_run!(conn, |c| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(after)
            .bind(to)
            .fetch_all(&mut *c)
            .await
            .map_err(db("merge_gated_calls: the range's calls"))?;
        decode_pending!(rows, "runpack_calls", !rowid.is_empty(), true)
    });
    Ok(out)
}

/// Marks gated the ungated calls of earlier runpacks that a decision of `(after, to]` matches (same tool, same
/// digest): driven by the range's rows, each probing the ungated calls by digest (`runpack_calls_ungated`), so the
/// work follows the range, not the number of calls ever left ungated.
async fn earlier_calls_by_range(
    mut conn: Conn<'_>,
    after: u64,
    to: u64,
) -> Result<u64, StoreError> {
    const SQL: &str = "UPDATE runpack_calls SET gated = 1 FROM (SELECT DISTINCT c.org, c.project, c.env, \
         c.agent_id, c.seq, c.call_index FROM evidence_index d JOIN runpack_calls c ON c.org = d.org \
         AND c.project = d.project AND c.env = d.env AND c.args_digest = d.args_digest AND c.gated = 0 \
         WHERE d.id > $1 AND d.id <= $2 AND d.class = 'decision' AND d.args_digest IS NOT NULL \
         AND c.tool_name = d.tool_name) m \
         WHERE runpack_calls.org = m.org AND runpack_calls.project = m.project \
         AND runpack_calls.env = m.env AND runpack_calls.agent_id = m.agent_id \
         AND runpack_calls.seq = m.seq AND runpack_calls.call_index = m.call_index";
    let (after, to) = (to_i64("after_id", after)?, to_i64("to_id", to)?);
    Ok(db_run!(conn, |c| sqlx::query(SQL)
        .bind(after)
        .bind(to)
        .execute(&mut *c)
        .await
        .map_err(db("merge_gated_calls: earlier calls"))?
        .rows_affected()))
}

/// Sets `gated` on `calls`, each found by its key, so every call costs one search whatever else waits: on SQLite
/// by rowid (a few hundred per statement), on PostgreSQL by primary key from one `UNNEST` of their keys. The calls
/// were read ungated in this transaction, so the rows changed are the calls newly gated. (A version that joined a
/// `VALUES` list cost SQLite 70 µs a call: its planner scanned the partial index of ungated calls for each batch.)
async fn mark(mut conn: Conn<'_>, calls: &[Pending]) -> Result<u64, StoreError> {
    const OP: &str = "merge_gated_calls: mark calls";
    const PG: &str = "UPDATE runpack_calls SET gated = 1 FROM UNNEST($1::text[], $2::text[], $3::text[], \
         $4::text[], $5::bigint[], $6::bigint[]) AS m(org, project, env, agent_id, seq, call_index) \
         WHERE runpack_calls.org = m.org AND runpack_calls.project = m.project AND runpack_calls.env = m.env \
         AND runpack_calls.agent_id = m.agent_id AND runpack_calls.seq = m.seq \
         AND runpack_calls.call_index = m.call_index";
    let mut changed = 0;
    for batch in calls.chunks(MARK_BATCH) {
        changed += db_run!(conn,
            sqlite: |c| {
                let mut sql = String::from("UPDATE runpack_calls SET gated = 1 WHERE rowid IN (");
                for i in 0..batch.len() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                }
                sql.push(')');
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for p in batch {
                    let Some(rowid) = p.rowid else {
                        return Err(StoreError::invalid("runpack_calls", "a call to mark has no rowid"));
                    };
                    q = q.bind(rowid);
                }
                q.execute(&mut *c).await.map_err(db(OP))?.rows_affected()
            },
            postgres: |c| {
                let col = |f: fn(&Pending) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
                sqlx::query(PG)
                    .bind(col(|p| p.scope.org.as_str()))
                    .bind(col(|p| p.scope.project.as_str()))
                    .bind(col(|p| p.scope.env.as_str()))
                    .bind(col(|p| p.agent_id.as_str()))
                    .bind(batch.iter().map(|p| p.seq).collect::<Vec<i64>>())
                    .bind(batch.iter().map(|p| p.call_index).collect::<Vec<i64>>())
                    .execute(&mut *c)
                    .await
                    .map_err(db(OP))?
                    .rows_affected()
            },
        );
    }
    Ok(changed)
}

/// A run's address, `$1`..`$5` of every statement that names one run: org, project, env, level, run.
fn run_address(scope: &Tenant, level: i64, run: i64) -> [Arg<'_>; 5] {
    [
        Arg::Text(Some(scope.org.as_str())),
        Arg::Text(Some(scope.project.as_str())),
        Arg::Text(Some(scope.env.as_str())),
        Arg::Int(Some(level)),
        Arg::Int(Some(run)),
    ]
}

/// One stored run of a scope.
#[derive(Debug)]
struct RunInfo {
    level: i64,
    run: i64,
    keys: u64,
}

async fn runs_of(
    mut conn: Conn<'_>,
    scope: &Tenant,
    level: Option<i64>,
) -> Result<Vec<RunInfo>, StoreError> {
    const SQL: &str = "SELECT level, run, keys FROM gated_runs WHERE org = $1 AND project = $2 AND env = $3 \
         AND ($4 < 0 OR level = $4) ORDER BY level, run";
    let out = db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(scope.org.as_str())
            .bind(scope.project.as_str())
            .bind(scope.env.as_str())
            .bind(level.unwrap_or(-1))
            .fetch_all(&mut *c)
            .await
            .map_err(db("gated runs: list"))?;
        rows.iter()
            .map(|r| {
                Ok(RunInfo {
                    level: r.int("level")?,
                    run: r.int("run")?,
                    keys: to_u64("gated_runs", "keys", r.int("keys")?)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?
    });
    Ok(out)
}

/// The calls of `pending` whose key a stored run of their scope holds.
async fn probe_runs(
    mut conn: Conn<'_>,
    pending: BTreeMap<Tenant, Vec<(GatedKey, Pending)>>,
) -> Result<Vec<Pending>, StoreError> {
    let mut found = Vec::new();
    for (scope, mut calls) in pending {
        calls.sort_unstable_by_key(|c| c.0);
        for run in runs_of(conn.reborrow(), &scope, None).await? {
            if calls.is_empty() {
                break;
            }
            let chunks =
                usize::try_from(run.keys.div_ceil(CHUNK_KEYS as u64)).unwrap_or(usize::MAX);
            let hits = if calls.len().saturating_mul(PROBE_COST_IN_CHUNKS) >= chunks {
                read_through(conn.reborrow(), &scope, &run, &calls).await?
            } else {
                probe_each(conn.reborrow(), &scope, &run, &calls).await?
            };
            // Keep the misses (in order) for the next run; move the hits out.
            let mut rest = Vec::with_capacity(calls.len());
            for (hit, call) in hits.into_iter().zip(calls) {
                if hit {
                    found.push(call.1);
                } else {
                    rest.push(call);
                }
            }
            calls = rest;
        }
    }
    Ok(found)
}

fn chunk_holds(chunk: &[u8], key: &GatedKey) -> bool {
    chunk.as_chunks::<KEY_LEN>().0.binary_search(key).is_ok()
}

/// For each of `calls` (sorted by key), whether `run` holds its key: one index search per call.
async fn probe_each(
    mut conn: Conn<'_>,
    scope: &Tenant,
    run: &RunInfo,
    calls: &[(GatedKey, Pending)],
) -> Result<Vec<bool>, StoreError> {
    const SQL: &str = "SELECT keys FROM gated_chunks WHERE org = $1 AND project = $2 AND env = $3 \
         AND level = $4 AND run = $5 AND first_key <= $6 ORDER BY first_key DESC LIMIT 1";
    let mut out = Vec::with_capacity(calls.len());
    for (key, _) in calls {
        let chunk: Option<Vec<u8>> = db_run!(conn, |c| bind_args!(
            sqlx::query_scalar(SQL),
            &run_address(scope, run.level, run.run)
        )
        .bind(key.as_slice())
        .fetch_optional(&mut *c)
        .await
        .map_err(db("gated runs: probe"))?);
        out.push(chunk.is_some_and(|c| chunk_holds(&c, key)));
    }
    Ok(out)
}

/// [`probe_each`]'s answer by reading `run` through in key order, merged with `calls` (sorted by key).
async fn read_through(
    mut conn: Conn<'_>,
    scope: &Tenant,
    run: &RunInfo,
    calls: &[(GatedKey, Pending)],
) -> Result<Vec<bool>, StoreError> {
    let mut out = vec![false; calls.len()];
    let mut reader = RunReader::new(scope, run.level, run.run);
    let mut i = 0;
    'chunks: while i < calls.len() {
        let Some(chunk) = reader.next_chunk(conn.reborrow()).await? else {
            break;
        };
        let Some(last) = chunk.get(chunk.len().saturating_sub(KEY_LEN)..) else {
            continue;
        };
        while i < calls.len() {
            if calls[i].0.as_slice() > last {
                continue 'chunks;
            }
            out[i] = chunk_holds(&chunk, &calls[i].0);
            i += 1;
        }
    }
    Ok(out)
}

/// Reads one run's chunks in key order, a page at a time.
struct RunReader<'s> {
    scope: &'s Tenant,
    level: i64,
    run: i64,
    page: std::collections::VecDeque<Vec<u8>>,
    after: Option<Vec<u8>>,
    done: bool,
}

impl<'s> RunReader<'s> {
    fn new(scope: &'s Tenant, level: i64, run: i64) -> Self {
        Self {
            scope,
            level,
            run,
            page: std::collections::VecDeque::new(),
            after: None,
            done: false,
        }
    }

    async fn next_chunk(&mut self, mut conn: Conn<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        const SQL: &str = "SELECT first_key, keys FROM gated_chunks WHERE org = $1 AND project = $2 \
             AND env = $3 AND level = $4 AND run = $5 AND first_key > $6 ORDER BY first_key LIMIT $7";
        if self.page.is_empty() && !self.done {
            let after = self.after.clone().unwrap_or_default();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = db_run!(conn, |c| {
                let rows = bind_args!(
                    sqlx::query(SQL),
                    &run_address(self.scope, self.level, self.run)
                )
                .bind(after.as_slice())
                .bind(PAGE_CHUNKS)
                .fetch_all(&mut *c)
                .await
                .map_err(db("gated runs: read"))?;
                rows.iter()
                    .map(|r| Ok((r.bytes("first_key")?, r.bytes("keys")?)))
                    .collect::<Result<Vec<_>, StoreError>>()?
            });
            self.done = rows.len() < PAGE_CHUNKS as usize;
            if let Some((first, _)) = rows.last() {
                self.after = Some(first.clone());
            }
            for (_, keys) in rows {
                if keys.is_empty() || keys.len() % KEY_LEN != 0 {
                    return Err(StoreError::corrupt(
                        "gated_chunks",
                        format!("a chunk of {} bytes is not whole keys", keys.len()),
                    ));
                }
                self.page.push_back(keys);
            }
        }
        Ok(self.page.pop_front())
    }
}

/// Reads one run key by key ([`RunReader`] underneath).
struct KeyReader<'s> {
    chunks: RunReader<'s>,
    chunk: Vec<u8>,
    at: usize,
}

impl<'s> KeyReader<'s> {
    fn new(scope: &'s Tenant, level: i64, run: i64) -> Self {
        Self {
            chunks: RunReader::new(scope, level, run),
            chunk: Vec::new(),
            at: 0,
        }
    }

    async fn next(&mut self, mut conn: Conn<'_>) -> Result<Option<GatedKey>, StoreError> {
        if self.at >= self.chunk.len() {
            match self.chunks.next_chunk(conn.reborrow()).await? {
                Some(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                None => return Ok(None),
            }
        }
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&self.chunk[self.at..self.at + KEY_LEN]);
        self.at += KEY_LEN;
        Ok(Some(k))
    }
}

/// Writes one run: keys pushed in strictly increasing order, chunked and inserted a few hundred chunks per
/// statement, and its `gated_runs` row at the end.
struct RunWriter<'s> {
    scope: &'s Tenant,
    level: i64,
    run: i64,
    chunk: Vec<u8>,
    full: Vec<Vec<u8>>,
    keys: u64,
}

impl<'s> RunWriter<'s> {
    fn new(scope: &'s Tenant, level: i64, run: i64) -> Self {
        Self {
            scope,
            level,
            run,
            chunk: Vec::with_capacity(CHUNK_KEYS * KEY_LEN),
            full: Vec::new(),
            keys: 0,
        }
    }

    async fn push(&mut self, conn: Conn<'_>, key: &GatedKey) -> Result<(), StoreError> {
        self.chunk.extend_from_slice(key);
        self.keys += 1;
        if self.chunk.len() == CHUNK_KEYS * KEY_LEN {
            let chunk =
                std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_KEYS * KEY_LEN));
            self.full.push(chunk);
            if self.full.len() >= INSERT_CHUNKS {
                self.flush(conn).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, mut conn: Conn<'_>) -> Result<(), StoreError> {
        if self.full.is_empty() {
            return Ok(());
        }
        let anonymous = matches!(conn, Conn::Sqlite(_));
        let mut sql = String::from(
            "INSERT INTO gated_chunks (org, project, env, level, run, first_key, keys) VALUES ",
        );
        for (i, _) in self.full.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            crate::evidence::push_row(&mut sql, anonymous, i * 7, 7);
        }
        let rows = std::mem::take(&mut self.full);
        db_run!(conn, |c| {
            let address = run_address(self.scope, self.level, self.run);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for keys in &rows {
                q = bind_args!(q, &address)
                    .bind(&keys[..KEY_LEN])
                    .bind(keys.as_slice());
            }
            q.execute(&mut *c)
                .await
                .map_err(db("gated runs: write chunks"))?;
        });
        Ok(())
    }

    async fn finish(mut self, mut conn: Conn<'_>) -> Result<u64, StoreError> {
        const SQL: &str = "INSERT INTO gated_runs (org, project, env, level, run, keys) VALUES ($1, $2, $3, $4, $5, $6)";
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            self.full.push(chunk);
        }
        self.flush(conn.reborrow()).await?;
        if self.keys == 0 {
            return Ok(0);
        }
        let keys = to_i64("keys", self.keys)?;
        db_run!(conn, |c| bind_args!(
            sqlx::query(SQL),
            &run_address(self.scope, self.level, self.run)
        )
        .bind(keys)
        .execute(&mut *c)
        .await
        .map_err(db("gated runs: write run"))?
        .rows_affected());
        Ok(self.keys)
    }
}

/// Compacts `scope`'s levels from the bottom: while a level holds [`FANOUT`] runs or more, they are merged into one
/// run (`run`) of the next level and removed. Answers the compactions made.
async fn compact(mut conn: Conn<'_>, scope: &Tenant, run: i64) -> Result<usize, StoreError> {
    const DROP_CHUNKS: &str =
        "DELETE FROM gated_chunks WHERE org = $1 AND project = $2 AND env = $3 AND level = $4";
    const DROP_RUNS: &str =
        "DELETE FROM gated_runs WHERE org = $1 AND project = $2 AND env = $3 AND level = $4";
    let mut made = 0;
    let mut level = 0i64;
    loop {
        let runs = runs_of(conn.reborrow(), scope, Some(level)).await?;
        if runs.len() < FANOUT {
            return Ok(made);
        }
        let mut readers: Vec<KeyReader<'_>> = runs
            .iter()
            .map(|r| KeyReader::new(scope, r.level, r.run))
            .collect();
        let mut heads: Vec<Option<GatedKey>> = Vec::with_capacity(readers.len());
        for r in &mut readers {
            heads.push(r.next(conn.reborrow()).await?);
        }
        let mut out = RunWriter::new(scope, level + 1, run);
        while let Some(min) = heads.iter().flatten().min().copied() {
            out.push(conn.reborrow(), &min).await?;
            for (head, reader) in heads.iter_mut().zip(readers.iter_mut()) {
                if *head == Some(min) {
                    *head = reader.next(conn.reborrow()).await?;
                }
            }
        }
        out.finish(conn.reborrow()).await?;
        for sql in [DROP_CHUNKS, DROP_RUNS] {
            db_run!(conn, |c| sqlx::query(sql)
                .bind(scope.org.as_str())
                .bind(scope.project.as_str())
                .bind(scope.env.as_str())
                .bind(level)
                .execute(&mut *c)
                .await
                .map_err(db("gated runs: drop compacted"))?
                .rows_affected());
        }
        made += 1;
        level += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_binds_the_tool_and_the_digest() {
        let d = "ab".repeat(32);
        let e = format!("{}{}", "ab".repeat(16), "cd".repeat(16));
        let k = gated_key("tool.search", &d).expect("a 64-hex digest has a key");
        assert_eq!(gated_key("tool.search", &d), Some(k));
        assert_ne!(gated_key("tool.fetch", &d), Some(k));
        // Only the first 16 bytes count (as the set always kept them).
        assert_eq!(gated_key("tool.search", &e), Some(k));
        assert_eq!(gated_key("tool.search", "abc"), None);
        assert_eq!(gated_key("tool.search", &"zz".repeat(32)), None);
        assert_eq!(key_with(&tool_hash("tool.search"), &d), Some(k));
    }

    #[test]
    fn a_chunk_is_searched_by_whole_keys() {
        let keys: Vec<GatedKey> = (0u8..10).map(|i| [i * 2; KEY_LEN]).collect();
        let chunk: Vec<u8> = keys.concat();
        for i in 0u8..20 {
            assert_eq!(chunk_holds(&chunk, &[i; KEY_LEN]), i % 2 == 0, "{i}");
        }
        assert!(!chunk_holds(&[], &[0; KEY_LEN]));
    }

    #[test]
    fn range_keys_are_sorted_and_distinct_per_scope() {
        let a = Tenant::from_parts("acme", "web", "prod").expect("tenant");
        let b = Tenant::from_parts("acme", "web", "dev").expect("tenant");
        let k = RangeKeys::new([
            (a.clone(), vec![[3; KEY_LEN], [1; KEY_LEN], [3; KEY_LEN]]),
            (b.clone(), vec![]),
            (a.clone(), vec![[2; KEY_LEN]]),
        ]);
        assert_eq!(k.len(), 3);
        assert!(k.contains(&a, &[2; KEY_LEN]));
        assert!(!k.contains(&b, &[2; KEY_LEN]));
        assert_eq!(k.by_scope.get(&a).map(Vec::len), Some(3));
        assert!(!k.by_scope.contains_key(&b));
    }

    /// Deterministic pseudo-random keys (splitmix64), so a failure repeats.
    fn keys(seed: u64, n: usize) -> Vec<GatedKey> {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| {
                let mut k = [0u8; KEY_LEN];
                k[..8].copy_from_slice(&next().to_be_bytes());
                k[8..].copy_from_slice(&next().to_be_bytes());
                k
            })
            .collect()
    }

    fn pending(scope: &Tenant, n: usize) -> Pending {
        Pending {
            rowid: None,
            scope: std::sync::Arc::new(scope.clone()),
            agent_id: "a".into(),
            seq: i64::try_from(n).unwrap_or(i64::MAX),
            call_index: 0,
            key: None,
            evidence_id: Some(1),
        }
    }

    async fn stored_keys(
        conn: &mut Conn<'_>,
        scope: &Tenant,
        run: &RunInfo,
    ) -> Result<Vec<GatedKey>, StoreError> {
        let mut r = KeyReader::new(scope, run.level, run.run);
        let mut out = Vec::new();
        while let Some(k) = r.next(conn.reborrow()).await? {
            out.push(k);
        }
        Ok(out)
    }

    /// Five merges' runs of 1,000 keys (a hundred shared between neighbours) into one environment, each
    /// followed by the merge's compaction; a run of another environment beside them. The first four become one
    /// level-1 run holding each of their keys once, in order; every key stays findable by a probe and by a read
    /// through, and no key of the other environment or none written is found.
    async fn runs_compact_and_find_every_key_both_ways(db: crate::testing::TestStore) {
        let store = db.store();
        let web = Tenant::from_parts("acme", "web", "prod").expect("tenant");
        let other = Tenant::from_parts("acme", "billing", "prod").expect("tenant");
        let mut tx = store.begin_named("test").await.expect("begin");
        let mut conn = tx.conn();
        let mut written: Vec<Vec<GatedKey>> = Vec::new();
        for m in 0..5u64 {
            let mut run_keys = keys(m, 1_000);
            if let Some(prev) = written.last() {
                run_keys.extend_from_slice(&prev[..100]);
            }
            let range = RangeKeys::new([(web.clone(), run_keys.clone())]);
            let run = i64::try_from(1_000 * (m + 1)).expect("run id");
            let mut w = RunWriter::new(&web, 0, run);
            for k in &range.by_scope[&web] {
                w.push(conn.reborrow(), k).await.expect("push");
            }
            w.finish(conn.reborrow()).await.expect("finish");
            let made = compact(conn.reborrow(), &web, run).await.expect("compact");
            assert_eq!(made, usize::from(m == 3), "merge {m}");
            written.push(run_keys);
        }
        let mut w = RunWriter::new(&other, 0, 9_999);
        let foreign = keys(99, 300);
        let mut sorted_foreign = foreign.clone();
        sorted_foreign.sort_unstable();
        for k in &sorted_foreign {
            w.push(conn.reborrow(), k).await.expect("push");
        }
        w.finish(conn.reborrow()).await.expect("finish");

        let runs = runs_of(conn.reborrow(), &web, None).await.expect("runs");
        let shape: Vec<(i64, i64)> = runs.iter().map(|r| (r.level, r.run)).collect();
        assert_eq!(shape, vec![(0, 5_000), (1, 4_000)]);
        let mut first_four: Vec<GatedKey> = written[..4].concat();
        first_four.sort_unstable();
        first_four.dedup();
        assert_eq!(
            first_four.len(),
            4_000,
            "a key shared by two runs is stored once"
        );
        let compacted = stored_keys(&mut conn, &web, &runs[1]).await.expect("read");
        assert_eq!(compacted, first_four);
        assert_eq!(runs[1].keys, first_four.len() as u64);

        // Every written key, and as many never written, probed against each run both ways.
        let mut all: Vec<GatedKey> = written.concat();
        all.sort_unstable();
        all.dedup();
        let mut probes: Vec<(GatedKey, Pending)> = all
            .iter()
            .chain(keys(1_000, 2_000).iter())
            .chain(foreign.iter())
            .enumerate()
            .map(|(n, k)| (*k, pending(&web, n)))
            .collect();
        probes.sort_unstable_by_key(|p| p.0);
        for run in &runs {
            let held = stored_keys(&mut conn, &web, run).await.expect("read");
            let expect: Vec<bool> = probes
                .iter()
                .map(|(k, _)| held.binary_search(k).is_ok())
                .collect();
            let each = probe_each(conn.reborrow(), &web, run, &probes)
                .await
                .expect("probe");
            let through = read_through(conn.reborrow(), &web, run, &probes)
                .await
                .expect("read through");
            assert_eq!(each, expect, "probes of run {run:?}");
            assert_eq!(through, expect, "read-through of run {run:?}");
        }
        let mut pending_by_scope = BTreeMap::new();
        pending_by_scope.insert(web.clone(), probes);
        let found = probe_runs(conn.reborrow(), pending_by_scope)
            .await
            .expect("probe runs");
        assert_eq!(found.len(), all.len(), "each written key once, no other");
        tx.rollback("test").await.expect("rollback");
    }

    #[tokio::test]
    async fn runs_compact_and_find_every_key_both_ways_sqlite() {
        runs_compact_and_find_every_key_both_ways(
            crate::testing::sqlite_temp().await.expect("sqlite"),
        )
        .await;
    }

    #[tokio::test]
    async fn runs_compact_and_find_every_key_both_ways_postgres() {
        match crate::testing::postgres_fresh().await.expect("postgres") {
            Some(db) => runs_compact_and_find_every_key_both_ways(db).await,
            None => eprintln!("SKIPPED postgres: GAIT_TEST_DATABASE_URL is not set"),
        }
    }
}
