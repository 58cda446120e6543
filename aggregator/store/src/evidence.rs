//! The evidence index domain: one row per committed decision or artifact record whose payload the aggregator's
//! evidence feature could read, and the lookups operators make over it.
//!
//! The store never parses a payload (LAYOUT rule 3): the feature hands [`NewIndexEntry`] values to
//! [`crate::Store::commit_batch_indexed`], and `records::commit_batch` writes, in its own transaction, the
//! entries of exactly the records it inserted (a redelivered or conflicting record's entry is dropped with the
//! record), so "indexed" and "committed" never disagree and a retried batch doubles nothing; the
//! `UNIQUE (org, project, env, agent_id, seq)` of `evidence_index` is the backstop.
//!
//! Listings are newest first by `id` (the order rows were indexed in), keyset-paginated on it: a page asks for
//! ids below the last one it saw, so pages never overlap or skip a row that was there when the first page was
//! read. The filter is built from fixed SQL fragments with numbered parameters; no value is ever spliced into
//! the SQL text.

use std::collections::HashMap;

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{AgentId, AgentKey, Env, NewRecord, Org, Project, Tenant, to_i64, to_u64};
use crate::rows::Columns;

/// Most rows one [`crate::Store::evidence`] page returns.
pub const MAX_EVIDENCE_PAGE: u32 = 1000;

/// Rows per multi-row `INSERT` (39 parameters each, far below either backend's parameter limit).
const INSERT_CHUNK: usize = 64;

/// What an indexed record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceClass {
    /// A gate decision (`gate.decision`).
    Decision,
    /// An artifact record (`artifact.*`).
    Artifact,
}

impl EvidenceClass {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceClass::Decision => "decision",
            EvidenceClass::Artifact => "artifact",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "decision" => Some(EvidenceClass::Decision),
            "artifact" => Some(EvidenceClass::Artifact),
            _ => None,
        }
    }
}

/// The indexed fields of one record. Decision fields are `None` on artifact rows and the other way round,
/// except `verdict` and `policy_digest`, which an artifact row carries from its trace projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexFields {
    /// The verdict enforced (a decision), or the trace's verdict (a trace artifact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The policy's own verdict before staging and simulation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_verdict: Option<String>,
    /// Gait policy digest (64 hex) of the policy that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Policy file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// Gait intent digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_digest: Option<String>,
    /// Trace id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The intent's tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// `enforce`, `observe` or `dry_run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Policy digest of the staged candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_digest: Option<String>,
    /// `dry_run`: the candidate would have blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_have_blocked: Option<bool>,
    /// `runpack`, `trace`, `regress_result` or `junit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_kind: Option<String>,
    /// SHA-256 (64 hex) of the artifact file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the artifact file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The artifact's file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The artifact's `producer_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer_version: Option<String>,
    /// `verified`, `missing`, `skipped` or `not_applicable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_status: Option<String>,
    /// A regress result's `pass` or `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regress_status: Option<String>,
    /// The run ids an artifact concerns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub run_ids: Vec<String>,
    /// Verdict of the policy a staged candidate would replace (the stage report's `active_verdict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_verdict: Option<String>,
    /// Verdict of the staged candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_verdict: Option<String>,
    /// The enforced decision's reason codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
    /// The staged candidate's reason codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidate_reason_codes: Vec<String>,
    /// A staged candidate could not be used or evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_error: Option<bool>,
    /// The record carries its normalized intent (capture mode `raw`): part of the replay corpus.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub captured: bool,
    /// The deciding rule of a decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_rule: Option<String>,
    /// The intent's risk class (`low`, `medium`, `high`, `critical`, or what the producer wrote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_class: Option<String>,
    /// The intent's targets' endpoint classes, sorted, comma-joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_classes: Option<String>,
    /// Some target of the intent is destructive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destructive: Option<bool>,
    /// A failed regress result's top failure reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<String>,
    /// The incident family (fingerprint hash, 64 hex) of a decision or a failed regress result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// A decision's arguments digest (Gait's `args_digest` in the signed trace the record carries, 64 hex): what
    /// a runpack's call is matched on (call-level gate coverage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_digest: Option<String>,
    /// A runpack's tool calls by digests (kept in `runpack_calls`, migration 0025, not on the row).
    #[serde(skip)]
    pub runpack_calls: Vec<IndexedCall>,
}

/// One tool call of an indexed runpack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexedCall {
    /// Its place in the runpack's `intents.jsonl` (from 0).
    pub index: u32,
    pub tool_name: String,
    /// 64 hex.
    pub args_digest: String,
    /// 64 hex, when the runpack has a result for the call.
    pub result_digest: Option<String>,
}

/// The index entry of one record of a batch, by its seq; written only when that record is inserted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewIndexEntry {
    /// The seq of the record in the batch.
    pub seq: u64,
    /// Decision or artifact.
    pub class: EvidenceClass,
    /// What is indexed.
    pub fields: IndexFields,
}

/// One indexed record as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexedRecord {
    /// Position in the index (the page cursor).
    pub id: u64,
    pub org: Org,
    pub project: Project,
    pub env: Env,
    pub agent_id: AgentId,
    /// The record's seq in the agent's stream.
    pub seq: u64,
    pub class: EvidenceClass,
    /// The record kind.
    pub kind: String,
    /// When the aggregator committed it.
    pub received_unix_ms: i64,
    /// When the agent wrote it (the agent's clock).
    pub created_unix_ms: i64,
    #[serde(flatten)]
    pub fields: IndexFields,
    /// For an artifact: the record's whole payload as the agent sent it (Gait's §7 projection with the digests,
    /// `gait_artifact::evidence::ArtifactRecord`), embedded as the JSON text it is. Absent for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<RawJson>,
}

/// JSON text embedded as is when serialised (checked to be JSON, never parsed into a tree); equal when the
/// texts are.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// `text` when it is one JSON value.
    pub fn new(text: String) -> Option<RawJson> {
        serde_json::value::RawValue::from_string(text)
            .ok()
            .map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// What to list: an org, optionally narrowed; every other field narrows further when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceFilter {
    pub org: Org,
    pub project: Option<Project>,
    pub env: Option<Env>,
    pub agent_id: Option<AgentId>,
    pub class: Option<EvidenceClass>,
    /// Record kind (`gate.decision`, `artifact.runpack`, …).
    pub kind: Option<String>,
    pub verdict: Option<String>,
    pub stage: Option<String>,
    pub policy_digest: Option<String>,
    pub sha256: Option<String>,
    pub run_id: Option<String>,
    /// Received at or after (unix ms).
    pub received_from_ms: Option<i64>,
    /// Received before (unix ms).
    pub received_to_ms: Option<i64>,
    /// Only ids below this one (the previous page's last id).
    pub before_id: Option<u64>,
    /// Page size, 1..=[`MAX_EVIDENCE_PAGE`].
    pub limit: u32,
}

impl EvidenceFilter {
    /// Everything of `org`, newest first, `limit` at a time.
    pub fn org(org: Org, limit: u32) -> Self {
        Self {
            org,
            project: None,
            env: None,
            agent_id: None,
            class: None,
            kind: None,
            verdict: None,
            stage: None,
            policy_digest: None,
            sha256: None,
            run_id: None,
            received_from_ms: None,
            received_to_ms: None,
            before_id: None,
            limit,
        }
    }

    /// Everything of one environment.
    pub fn tenant(tenant: &Tenant, limit: u32) -> Self {
        Self {
            project: Some(tenant.project.clone()),
            env: Some(tenant.env.clone()),
            ..Self::org(tenant.org.clone(), limit)
        }
    }
}

/// One entry to insert: its record, the entry, its run ids and its two reason-code lists as stored.
type InsertRow<'a> = (
    &'a NewRecord,
    &'a NewIndexEntry,
    Option<String>,
    [Option<String>; 2],
);

/// A bound parameter of a built statement.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

/// `$query` (an sqlx query on either backend) with the [`Arg`]s of `$args` bound in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                $crate::evidence::Arg::Text(t) => query.bind(*t),
                $crate::evidence::Arg::Int(i) => query.bind(*i),
            };
        }
        query
    }};
}
pub(crate) use bind_args;

/// Writes the entries of the records just inserted (`inserted`, ascending by seq); entries of any other seq
/// are dropped. Runs inside `commit_batch`'s transaction. Answers the (seq, id) of every row written, ascending
/// by seq.
pub(crate) async fn insert(
    mut conn: Conn<'_>,
    key: &AgentKey,
    inserted: &[&NewRecord],
    entries: &[NewIndexEntry],
    now_ms: i64,
) -> Result<Vec<(u64, u64)>, StoreError> {
    // SQLite gets anonymous `?` placeholders: with numbered ones sqlx looks each parameter up by name, a
    // linear search in SQLite that makes binding quadratic in the statement size (see `sqlite::insert_records`).
    let anonymous = matches!(conn, Conn::Sqlite(_));
    let mut rows: Vec<InsertRow<'_>> = Vec::new();
    for entry in entries {
        if let Ok(i) = inserted.binary_search_by_key(&entry.seq, |r| r.seq) {
            let run_ids = if entry.fields.run_ids.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&entry.fields.run_ids).map_err(|e| {
                    StoreError::invalid("evidence.run_ids", format!("not encodable: {e}"))
                })?)
            };
            let codes = [
                json_list("evidence.reason_codes", &entry.fields.reason_codes)?,
                json_list(
                    "evidence.candidate_reason_codes",
                    &entry.fields.candidate_reason_codes,
                )?,
            ];
            rows.push((inserted[i], entry, run_ids, codes));
        }
    }
    let mut written: Vec<(u64, u64)> = Vec::with_capacity(rows.len());
    let mut exact = true;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO evidence_index (org, project, env, agent_id, seq, class, kind, received_unix_ms, \
             created_unix_ms, verdict, policy_verdict, policy_digest, policy_name, intent_digest, trace_id, \
             tool_name, stage, candidate_digest, would_have_blocked, artifact_kind, sha256, size_bytes, \
             file_name, producer_version, signature_status, regress_status, run_ids, active_verdict, \
             candidate_verdict, reason_codes, candidate_reason_codes, candidate_error, captured, matched_rule, \
             risk_class, endpoint_classes, destructive, failure_kind, family, args_digest) VALUES ",
        );
        let mut args: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 40);
        for (n, (record, entry, run_ids, codes)) in chunk.iter().enumerate() {
            let f = &entry.fields;
            let row = [
                Arg::Text(Some(key.tenant.org.as_str())),
                Arg::Text(Some(key.tenant.project.as_str())),
                Arg::Text(Some(key.tenant.env.as_str())),
                Arg::Text(Some(key.agent_id.as_str())),
                Arg::Int(Some(to_i64("records.seq", record.seq)?)),
                Arg::Text(Some(entry.class.as_str())),
                Arg::Text(Some(record.kind.as_str())),
                Arg::Int(Some(now_ms)),
                Arg::Int(Some(record.created_unix_ms)),
                Arg::Text(f.verdict.as_deref()),
                Arg::Text(f.policy_verdict.as_deref()),
                Arg::Text(f.policy_digest.as_deref()),
                Arg::Text(f.policy_name.as_deref()),
                Arg::Text(f.intent_digest.as_deref()),
                Arg::Text(f.trace_id.as_deref()),
                Arg::Text(f.tool_name.as_deref()),
                Arg::Text(f.stage.as_deref()),
                Arg::Text(f.candidate_digest.as_deref()),
                Arg::Int(f.would_have_blocked.map(i64::from)),
                Arg::Text(f.artifact_kind.as_deref()),
                Arg::Text(f.sha256.as_deref()),
                // A size past i64 cannot be a file the agent read; keep the row, not the number.
                Arg::Int(f.size_bytes.and_then(|s| i64::try_from(s).ok())),
                Arg::Text(f.file_name.as_deref()),
                Arg::Text(f.producer_version.as_deref()),
                Arg::Text(f.signature_status.as_deref()),
                Arg::Text(f.regress_status.as_deref()),
                Arg::Text(run_ids.as_deref()),
                Arg::Text(f.active_verdict.as_deref()),
                Arg::Text(f.candidate_verdict.as_deref()),
                Arg::Text(codes[0].as_deref()),
                Arg::Text(codes[1].as_deref()),
                Arg::Int(f.candidate_error.map(i64::from)),
                Arg::Int(Some(i64::from(f.captured))),
                Arg::Text(f.matched_rule.as_deref()),
                Arg::Text(f.risk_class.as_deref()),
                Arg::Text(f.endpoint_classes.as_deref()),
                Arg::Int(f.destructive.map(i64::from)),
                Arg::Text(f.failure_kind.as_deref()),
                Arg::Text(f.family.as_deref()),
                Arg::Text(f.args_digest.as_deref()),
            ];
            sql.push_str(if n == 0 { "" } else { ", " });
            push_row(&mut sql, anonymous, args.len(), row.len());
            args.extend(row);
        }
        sql.push_str(" ON CONFLICT (org, project, env, agent_id, seq) DO NOTHING");
        let seqs: Vec<u64> = chunk.iter().map(|(record, ..)| record.seq).collect();
        match indexed_ids(conn.reborrow(), sql, &args, &seqs).await? {
            Some(ids) if exact => written.extend(ids),
            _ => exact = false,
        }
    }
    // Ids only for a batch whose every row is accounted for (the upkeep feed takes all of a batch or none).
    if !exact {
        written.clear();
    }
    written.sort_unstable();

    let runs: Vec<(i64, &str)> = rows
        .iter()
        .flat_map(|(record, entry, _, _)| {
            let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
            entry
                .fields
                .run_ids
                .iter()
                .map(move |run| (seq, run.as_str()))
        })
        .collect();
    for chunk in runs.chunks(INSERT_CHUNK * 4) {
        let mut sql = String::from(
            "INSERT INTO evidence_run_ids (org, project, env, agent_id, seq, run_id) VALUES ",
        );
        let mut args = Vec::with_capacity(chunk.len() * 6);
        for (n, (seq, run)) in chunk.iter().enumerate() {
            sql.push_str(if n == 0 { "" } else { ", " });
            push_row(&mut sql, anonymous, args.len(), 6);
            args.extend([
                Arg::Text(Some(key.tenant.org.as_str())),
                Arg::Text(Some(key.tenant.project.as_str())),
                Arg::Text(Some(key.tenant.env.as_str())),
                Arg::Text(Some(key.agent_id.as_str())),
                Arg::Int(Some(*seq)),
                Arg::Text(Some(run)),
            ]);
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        execute(conn.reborrow(), &sql, &args, "commit_batch: index run ids").await?;
    }

    // A runpack's tool calls, by digests (coverage reads them; migration 0025). Each call carries its runpack's
    // digest, and whether it is the first call of its tool in the runpack, so the coverage read counts runpacks per
    // tool with a sum and needs no join (migration 0028).
    let mut calls: Vec<CallRow<'_>> = Vec::new();
    for (record, entry, _, _) in rows {
        let list = &entry.fields.runpack_calls;
        if list.is_empty() {
            continue;
        }
        let mut first: HashMap<&str, u32> = HashMap::new();
        for c in list {
            first
                .entry(c.tool_name.as_str())
                .and_modify(|i| *i = (*i).min(c.index))
                .or_insert(c.index);
        }
        let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
        for c in list {
            calls.push(CallRow {
                seq,
                call: c,
                created: record.created_unix_ms,
                runpack: entry.fields.sha256.as_deref(),
                first_of_tool: first.get(c.tool_name.as_str()) == Some(&c.index),
            });
        }
    }
    for chunk in calls.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO runpack_calls (org, project, env, agent_id, seq, call_index, tool_name, args_digest, \
             result_digest, created_unix_ms, runpack_sha256, first_of_tool) VALUES ",
        );
        let mut args = Vec::with_capacity(chunk.len() * 12);
        for (n, row) in chunk.iter().enumerate() {
            let call = row.call;
            sql.push_str(if n == 0 { "" } else { ", " });
            push_row(&mut sql, anonymous, args.len(), 12);
            args.extend([
                Arg::Text(Some(key.tenant.org.as_str())),
                Arg::Text(Some(key.tenant.project.as_str())),
                Arg::Text(Some(key.tenant.env.as_str())),
                Arg::Text(Some(key.agent_id.as_str())),
                Arg::Int(Some(row.seq)),
                Arg::Int(Some(i64::from(call.index))),
                Arg::Text(Some(call.tool_name.as_str())),
                Arg::Text(Some(call.args_digest.as_str())),
                Arg::Text(call.result_digest.as_deref()),
                Arg::Int(Some(row.created)),
                Arg::Text(row.runpack),
                Arg::Int(Some(i64::from(row.first_of_tool))),
            ]);
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        execute(
            conn.reborrow(),
            &sql,
            &args,
            "commit_batch: index runpack calls",
        )
        .await?;
    }
    Ok(written)
}

/// One `runpack_calls` row of a batch being committed.
struct CallRow<'a> {
    seq: i64,
    call: &'a IndexedCall,
    created: i64,
    /// The runpack's digest.
    runpack: Option<&'a str>,
    /// The lowest-indexed call of its tool in the runpack.
    first_of_tool: bool,
}

/// A list column as stored: a JSON array, or NULL when empty.
fn json_list(field: &'static str, list: &[String]) -> Result<Option<String>, StoreError> {
    if list.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(list)
        .map(Some)
        .map_err(|e| StoreError::invalid(field, format!("not encodable: {e}")))
}

/// A list column as read back (NULL is empty).
pub(crate) fn read_list(column: &str, text: Option<String>) -> Result<Vec<String>, StoreError> {
    match text {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            StoreError::corrupt(
                "evidence_index",
                format!("{column} is not a JSON array of strings: {e}"),
            )
        }),
        None => Ok(Vec::new()),
    }
}

/// Appends one `VALUES` row of `count` placeholders whose parameters follow the `before` already bound:
/// `(?, ?, …)` when `anonymous` (SQLite), `($n, $n+1, …)` otherwise.
pub(crate) fn push_row(sql: &mut String, anonymous: bool, before: usize, count: usize) {
    sql.push('(');
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        if anonymous {
            sql.push('?');
        } else {
            sql.push('$');
            sql.push_str(&(before + i + 1).to_string());
        }
    }
    sql.push(')');
}

/// Runs a statement built here (fixed fragments and numbered parameters only) with its arguments.
pub(crate) async fn execute<'a>(
    mut conn: Conn<'_>,
    sql: &'a str,
    args: &'a [Arg<'a>],
    op: &'static str,
) -> Result<(), StoreError> {
    db_run!(conn, |c| {
        bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
            .execute(&mut *c)
            .await
            .map_err(db(op))?;
    });
    Ok(())
}

/// Runs one chunk's `INSERT … ON CONFLICT DO NOTHING` of the evidence rows of `seqs` (in `VALUES` order) and
/// answers the (seq, id) of each row written, or `None` when they cannot be told (SQLite, a row not written).
///
/// PostgreSQL returns them (`RETURNING`). On SQLite, `RETURNING` cost a fifth of the ingest rate (sqlx decodes
/// each returned row), and it is not needed: the store's one writer inserts the `VALUES` rows in order, each with
/// the id one past the largest the table ever held (`AUTOINCREMENT`), so when every row was written their ids are
/// the run that ends at the last inserted rowid. A chunk with a conflicting row is not mapped.
async fn indexed_ids<'a>(
    mut conn: Conn<'_>,
    mut sql: String,
    args: &'a [Arg<'a>],
    seqs: &[u64],
) -> Result<Option<Vec<(u64, u64)>>, StoreError> {
    const T: &str = "evidence_index";
    const OP: &str = "commit_batch: index evidence";
    db_run!(conn,
        sqlite: |c| {
            let done = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .execute(&mut *c)
                .await
                .map_err(db(OP))?;
            let n = seqs.len() as u64;
            let last = to_u64(T, "id", done.last_insert_rowid())?;
            if done.rows_affected() != n || last < n {
                return Ok(None);
            }
            Ok(Some(seqs.iter().zip(last + 1 - n..).map(|(s, id)| (*s, id)).collect()))
        },
        postgres: |c| {
            sql.push_str(" RETURNING seq, id");
            let found = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(&mut *c)
                .await
                .map_err(db(OP))?;
            let ids = found
                .iter()
                .map(|r| Ok((to_u64(T, "seq", r.int("seq")?)?, to_u64(T, "id", r.int("id")?)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Some(ids))
        },
    )
}

/// One page of the index under `filter`, newest first.
pub(crate) async fn page(
    mut conn: Conn<'_>,
    filter: &EvidenceFilter,
) -> Result<Vec<IndexedRecord>, StoreError> {
    if filter.limit == 0 || filter.limit > MAX_EVIDENCE_PAGE {
        return Err(StoreError::invalid(
            "limit",
            format!("must be between 1 and {MAX_EVIDENCE_PAGE}"),
        ));
    }
    let before = filter
        .before_id
        .map(|id| to_i64("before_id", id))
        .transpose()?;
    let mut sql = String::from(
        "SELECT e.id, e.org, e.project, e.env, e.agent_id, e.seq, e.class, e.kind, e.received_unix_ms, \
         e.created_unix_ms, e.verdict, e.policy_verdict, e.policy_digest, e.policy_name, e.intent_digest, \
         e.trace_id, e.tool_name, e.stage, e.candidate_digest, e.would_have_blocked, e.artifact_kind, e.sha256, \
         e.size_bytes, e.file_name, e.producer_version, e.signature_status, e.regress_status, e.run_ids, \
         e.active_verdict, e.candidate_verdict, e.reason_codes, e.candidate_reason_codes, e.candidate_error, \
         e.captured, e.matched_rule, e.risk_class, e.endpoint_classes, e.destructive, e.failure_kind, \
         e.family, e.args_digest, r.payload AS artifact_payload \
         FROM evidence_index e LEFT JOIN records r ON e.class = 'artifact' AND r.org = e.org \
         AND r.project = e.project AND r.env = e.env AND r.agent_id = e.agent_id AND r.seq = e.seq \
         WHERE e.org = $1",
    );
    let mut args = vec![Arg::Text(Some(filter.org.as_str()))];
    fn text(v: &Option<String>) -> Option<Arg<'_>> {
        v.as_deref().map(|s| Arg::Text(Some(s)))
    }
    let conditions: [(&str, Option<Arg<'_>>); 13] = [
        (
            " AND e.project = ?",
            filter.project.as_ref().map(|p| Arg::Text(Some(p.as_str()))),
        ),
        (
            " AND e.env = ?",
            filter.env.as_ref().map(|e| Arg::Text(Some(e.as_str()))),
        ),
        (
            " AND e.agent_id = ?",
            filter
                .agent_id
                .as_ref()
                .map(|a| Arg::Text(Some(a.as_str()))),
        ),
        (
            " AND e.class = ?",
            filter.class.map(|c| Arg::Text(Some(c.as_str()))),
        ),
        (" AND e.kind = ?", text(&filter.kind)),
        (" AND e.verdict = ?", text(&filter.verdict)),
        (" AND e.stage = ?", text(&filter.stage)),
        (" AND e.policy_digest = ?", text(&filter.policy_digest)),
        (" AND e.sha256 = ?", text(&filter.sha256)),
        (
            " AND EXISTS (SELECT 1 FROM evidence_run_ids r WHERE r.org = e.org AND r.project = e.project \
             AND r.env = e.env AND r.agent_id = e.agent_id AND r.seq = e.seq AND r.run_id = ?)",
            text(&filter.run_id),
        ),
        (
            " AND e.received_unix_ms >= ?",
            filter.received_from_ms.map(|t| Arg::Int(Some(t))),
        ),
        (
            " AND e.received_unix_ms < ?",
            filter.received_to_ms.map(|t| Arg::Int(Some(t))),
        ),
        (" AND e.id < ?", before.map(|b| Arg::Int(Some(b)))),
    ];
    let limit = [(
        " ORDER BY e.id DESC LIMIT ?",
        Some(Arg::Int(Some(i64::from(filter.limit)))),
    )];
    for (clause, arg) in conditions.into_iter().chain(limit) {
        if let Some(arg) = arg {
            args.push(arg);
            // Each fragment holds one `?`, replaced by the number of the parameter just added.
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        }
    }
    db_run!(conn, |c| {
        let found = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args)
            .fetch_all(&mut *c)
            .await
            .map_err(db("evidence index"))?;
        found.iter().map(indexed_row).collect()
    })
}

fn indexed_row(row: &impl Columns) -> Result<IndexedRecord, StoreError> {
    const TABLE: &str = "evidence_index";
    let corrupt = |column: &str, e: gait_identity::IdError| {
        StoreError::corrupt(TABLE, format!("{column} is not a valid identifier: {e}"))
    };
    let class = row.text("class")?;
    // Checked to be JSON (as the agent records route does), never parsed into a tree: a record the index
    // points at was JSON when it was indexed, so anything else is corruption.
    let artifact = match row.opt_bytes("artifact_payload")? {
        Some(bytes) => Some(
            String::from_utf8(bytes)
                .ok()
                .and_then(RawJson::new)
                .ok_or_else(|| {
                    StoreError::corrupt("records", "an indexed artifact payload is not JSON")
                })?,
        ),
        None => None,
    };
    let run_ids = match row.opt_text("run_ids")? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::corrupt(TABLE, format!("run_ids is not a JSON array: {e}")))?,
        None => Vec::new(),
    };
    Ok(IndexedRecord {
        id: to_u64(TABLE, "id", row.int("id")?)?,
        org: Org::try_from(row.text("org")?).map_err(|e| corrupt("org", e))?,
        project: Project::try_from(row.text("project")?).map_err(|e| corrupt("project", e))?,
        env: Env::try_from(row.text("env")?).map_err(|e| corrupt("env", e))?,
        agent_id: AgentId::try_from(row.text("agent_id")?).map_err(|e| corrupt("agent_id", e))?,
        seq: to_u64(TABLE, "seq", row.int("seq")?)?,
        class: EvidenceClass::parse(&class)
            .ok_or_else(|| StoreError::corrupt(TABLE, format!("class is `{class}`")))?,
        kind: row.text("kind")?,
        received_unix_ms: row.int("received_unix_ms")?,
        created_unix_ms: row.int("created_unix_ms")?,
        fields: IndexFields {
            verdict: row.opt_text("verdict")?,
            policy_verdict: row.opt_text("policy_verdict")?,
            policy_digest: row.opt_text("policy_digest")?,
            policy_name: row.opt_text("policy_name")?,
            intent_digest: row.opt_text("intent_digest")?,
            trace_id: row.opt_text("trace_id")?,
            tool_name: row.opt_text("tool_name")?,
            stage: row.opt_text("stage")?,
            candidate_digest: row.opt_text("candidate_digest")?,
            would_have_blocked: row.opt_int("would_have_blocked")?.map(|b| b != 0),
            artifact_kind: row.opt_text("artifact_kind")?,
            sha256: row.opt_text("sha256")?,
            size_bytes: row
                .opt_int("size_bytes")?
                .map(|s| to_u64(TABLE, "size_bytes", s))
                .transpose()?,
            file_name: row.opt_text("file_name")?,
            producer_version: row.opt_text("producer_version")?,
            signature_status: row.opt_text("signature_status")?,
            regress_status: row.opt_text("regress_status")?,
            run_ids,
            active_verdict: row.opt_text("active_verdict")?,
            candidate_verdict: row.opt_text("candidate_verdict")?,
            reason_codes: read_list("reason_codes", row.opt_text("reason_codes")?)?,
            candidate_reason_codes: read_list(
                "candidate_reason_codes",
                row.opt_text("candidate_reason_codes")?,
            )?,
            candidate_error: row.opt_int("candidate_error")?.map(|b| b != 0),
            captured: row.int("captured")? != 0,
            matched_rule: row.opt_text("matched_rule")?,
            risk_class: row.opt_text("risk_class")?,
            endpoint_classes: row.opt_text("endpoint_classes")?,
            destructive: row.opt_int("destructive")?.map(|b| b != 0),
            failure_kind: row.opt_text("failure_kind")?,
            family: row.opt_text("family")?,
            args_digest: row.opt_text("args_digest")?,
            // Kept in `runpack_calls`, not read back with the row.
            runpack_calls: Vec::new(),
        },
        artifact,
    })
}

/// The replay corpus of an org (issue 13): its captured decisions (`captured = 1`, capture mode `raw`), narrowed
/// to a project and environment when set, up to and including index id `until_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusScope {
    pub org: Org,
    pub project: Option<Project>,
    pub env: Option<Env>,
}

impl CorpusScope {
    /// The `WHERE` clause over `alias` (parameters `$1` org, `$2` until id, then project and env when set) and
    /// the arguments after the until id.
    fn filter(&self, alias: &str) -> (String, Vec<Arg<'_>>) {
        let mut sql = format!(
            "{alias}.org = $1 AND {alias}.captured = 1 AND {alias}.class = 'decision' \
             AND {alias}.intent_digest IS NOT NULL AND {alias}.id <= $2"
        );
        let mut args = Vec::new();
        for (column, value) in [
            ("project", self.project.as_ref().map(|p| p.as_str())),
            ("env", self.env.as_ref().map(|e| e.as_str())),
        ] {
            if let Some(value) = value {
                args.push(Arg::Text(Some(value)));
                sql.push_str(&format!(" AND {alias}.{column} = ${}", args.len() + 2));
            }
        }
        (sql, args)
    }

    /// [`Self::filter`] narrowed to one shard of the intent digests: shard `index` of `of` (at most 16) takes
    /// the digests from its first hex digit's lower bound up to the next shard's. The first shard has no lower
    /// bound and the last no upper one, so every digest — even one that is not hex — is in exactly one shard.
    fn shard_filter(&self, alias: &str, shard: Shard) -> (String, Vec<Arg<'_>>) {
        const HEX: [&str; 16] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
        ];
        let (mut sql, mut args) = self.filter(alias);
        let of = usize::from(shard.of.clamp(1, 16));
        let index = usize::from(shard.index).min(of - 1);
        if index > 0 {
            args.push(Arg::Text(Some(HEX[index * 16 / of])));
            sql.push_str(&format!(
                " AND {alias}.intent_digest >= ${}",
                args.len() + 2
            ));
        }
        if index + 1 < of {
            args.push(Arg::Text(Some(HEX[(index + 1) * 16 / of])));
            sql.push_str(&format!(" AND {alias}.intent_digest < ${}", args.len() + 2));
        }
        (sql, args)
    }
}

/// One of `of` disjoint parts of a corpus by intent digest, walked on its own connection so several walks
/// share the database work ([`crate::Store::replay_corpus_groups_to`]). `Shard::WHOLE` is the whole corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which part, from 0.
    pub index: u8,
    /// How many parts (1 to 16).
    pub of: u8,
}

impl Shard {
    /// The whole corpus in one part.
    pub const WHOLE: Shard = Shard { index: 0, of: 1 };
}

/// A replay walk's statement with the scope's parameters bound: `$1` org, `$2` the pin, then the project and
/// environment the scope names ([`CorpusScope::filter`]); further parameters follow.
macro_rules! scoped_query {
    ($sql:expr, $scope:expr, $until:expr, $extra:expr) => {{
        bind_args!(
            sqlx::query(sqlx::AssertSqlSafe($sql))
                .bind($scope.org.as_str())
                .bind($until),
            $extra
        )
    }};
}

/// One distinct intent of the corpus walk ([`crate::Store::replay_corpus_groups`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusGroup<'a> {
    /// The index id of its first captured decision (the walk's order).
    pub first_id: u64,
    /// The intent's digest (the deduplication key).
    pub intent_digest: &'a str,
    /// How many captured decisions of the scope up to the pin carry it.
    pub count: u64,
    /// Its first decisions (at most the walk's `per_intent`) as sample ids in index order, one space apart:
    /// `<agent>:<seq>` when the scope names an environment, else `<project>/<env>/<agent>:<seq>` (agent ids
    /// are unique only within their environment). Names never hold a space.
    pub samples: &'a str,
    /// The payload of its first decision (absent only if the record is gone).
    pub payload: Option<&'a [u8]>,
}

/// One owned [`CorpusGroup`], for a consumer that awaits between intents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedCorpusGroup {
    /// [`CorpusGroup::first_id`].
    pub first_id: u64,
    /// [`CorpusGroup::intent_digest`].
    pub intent_digest: String,
    /// [`CorpusGroup::count`].
    pub count: u64,
    /// [`CorpusGroup::samples`].
    pub samples: String,
    /// [`CorpusGroup::payload`].
    pub payload: Option<Vec<u8>>,
}

impl OwnedCorpusGroup {
    /// Borrowed.
    pub fn as_group(&self) -> CorpusGroup<'_> {
        CorpusGroup {
            first_id: self.first_id,
            intent_digest: &self.intent_digest,
            count: self.count,
            samples: &self.samples,
            payload: self.payload.as_deref(),
        }
    }
}

/// What [`crate::Store::replay_corpus_groups`] calls per intent; an `Err` stops the walk.
pub type GroupVisitor<'v> = dyn FnMut(CorpusGroup<'_>) -> Result<(), String> + Send + 'v;

/// The grouped corpus walk over `filter` (alias `e`) with `extra` filter arguments after `$1`/`$2`; the
/// per-intent sample limit is the last argument. `ordered` adds the final `ORDER BY` that makes the row order
/// (each intent's first decision) a guarantee rather than the plan's.
///
/// One row per distinct intent digest (a row per decision cost sqlx a value copy per column per decision,
/// ≈ 60 % of a 200,000-intent replay): its first id, count and first sample ids come from one window pass and
/// one aggregation, ordered by first id, and only then is its first decision's payload joined, so the lookups
/// walk `records` in insertion order and no payload goes through a sort. A final `ORDER BY` costs a sort that
/// carries the payloads (1,000,000 distinct intents: 8.2 s against 6.3 s for the statement in `sqlite3`), so
/// a replay, whose report does not depend on the order, goes without it. `string_agg(… ORDER BY …)` is
/// standard on PostgreSQL and SQLite ≥ 3.44 (the bundled one). The joins are LEFT: an intent whose record is
/// gone still comes, without a payload, and the replay counts it skipped.
fn corpus_groups_sql(filter: &str, extra: usize, one_env: bool, ordered: bool) -> String {
    let sample = if one_env {
        "w.agent_id || ':' || CAST(w.seq AS TEXT)"
    } else {
        "w.project || '/' || w.env || '/' || w.agent_id || ':' || CAST(w.seq AS TEXT)"
    };
    format!(
        "SELECT g.first_id, g.intent_digest, g.cnt, g.samples, r.payload \
         FROM (SELECT w.intent_digest, MIN(w.id) AS first_id, COUNT(*) AS cnt, \
                 string_agg(CASE WHEN w.n <= ${limit} THEN {sample} END, ' ' ORDER BY w.id) AS samples \
               FROM (SELECT e.id, e.project, e.env, e.agent_id, e.seq, e.intent_digest, \
                       ROW_NUMBER() OVER (PARTITION BY e.intent_digest ORDER BY e.id) AS n \
                     FROM evidence_index e WHERE {filter}) w \
               GROUP BY w.intent_digest ORDER BY first_id) g \
         LEFT JOIN evidence_index f ON f.id = g.first_id \
         LEFT JOIN records r ON r.org = f.org AND r.project = f.project AND r.env = f.env \
           AND r.agent_id = f.agent_id AND r.seq = f.seq{order}",
        limit = extra + 3,
        order = if ordered { " ORDER BY g.first_id" } else { "" },
    )
}

/// Reads one row of the grouped walk.
fn read_group<R: crate::rows::Columns>(row: &R) -> Result<OwnedCorpusGroup, StoreError> {
    Ok(OwnedCorpusGroup {
        first_id: to_u64("evidence_index", "id", row.int("first_id")?)?,
        intent_digest: row.text("intent_digest")?,
        count: to_u64("evidence_index", "count", row.int("cnt")?)?,
        samples: row.opt_text("samples")?.unwrap_or_default(),
        payload: row.opt_bytes("payload")?,
    })
}

impl crate::Store {
    /// The largest index id of the scope's captured decisions (0 when there are none): the `until_id` a replay
    /// pins when the caller gives none.
    pub async fn replay_corpus_head(&self, scope: &CorpusScope) -> Result<u64, StoreError> {
        let (filter, extra) = scope.filter("e");
        let sql =
            format!("SELECT COALESCE(MAX(e.id), 0) AS head FROM evidence_index e WHERE {filter}");
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        db_run!(conn, |c| {
            let row = scoped_query!(sql.as_str(), scope, i64::MAX, &extra)
                .fetch_one(&mut *c)
                .await
                .map_err(db("replay corpus head"))?;
            to_u64("evidence_index", "id", row.int("head")?)
        })
    }

    /// How many captured decisions the scope holds up to `until_id` (the export's header), read from the index
    /// alone.
    pub async fn replay_corpus_samples(
        &self,
        scope: &CorpusScope,
        until_id: u64,
    ) -> Result<u64, StoreError> {
        let (filter, extra) = scope.filter("e");
        let sql = format!("SELECT COUNT(*) AS samples FROM evidence_index e WHERE {filter}");
        let until = to_i64("until_id", until_id)?;
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        db_run!(conn, |c| {
            let row = scoped_query!(sql.as_str(), scope, until, &extra)
                .fetch_one(&mut *c)
                .await
                .map_err(db("replay corpus samples"))?;
            to_u64("evidence_index", "count", row.int("samples")?)
        })
    }

    /// The corpus in one walk, deduplicated in the database: one [`CorpusGroup`] per intent digest of the
    /// scope's captured decisions up to `until_id`, with its count, its first `per_intent` sample ids and the
    /// payload of its first decision (no other payload is read), in the order of each intent's first decision.
    /// An error `visit` returns stops the walk as [`StoreError::InvalidInput`] on field `payload`.
    pub async fn replay_corpus_groups(
        &self,
        scope: &CorpusScope,
        until_id: u64,
        per_intent: u32,
        visit: &mut GroupVisitor<'_>,
    ) -> Result<(), StoreError> {
        let (filter, extra) = scope.filter("e");
        let sql = corpus_groups_sql(&filter, extra.len(), scope.env.is_some(), true);
        let until = to_i64("until_id", until_id)?;
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        db_run!(conn, |c| {
            use futures_util::TryStreamExt;
            let mut rows = scoped_query!(sql.as_str(), scope, until, &extra)
                .bind(i64::from(per_intent))
                .fetch(&mut *c);
            while let Some(row) = rows.try_next().await.map_err(db("replay corpus"))? {
                visit(read_group(&row)?.as_group())
                    .map_err(|e| StoreError::invalid("payload", e))?;
            }
            Ok(())
        })
    }

    /// [`Self::replay_corpus_groups`] into a bounded channel: each intent is sent owned, and the walk waits
    /// while the channel is full, so a slow consumer holds back the database read instead of buffering it. The
    /// walk stops without error when the receiver is dropped. `ordered: false` drops the guarantee of the
    /// order (the plan still tends to it) for a consumer that does not depend on it, saving a sort that carries
    /// the payloads. `shard` walks only that part of the intent digests (order holds within the shard).
    pub async fn replay_corpus_groups_to(
        &self,
        scope: &CorpusScope,
        until_id: u64,
        per_intent: u32,
        ordered: bool,
        shard: Shard,
        tx: &tokio::sync::mpsc::Sender<OwnedCorpusGroup>,
    ) -> Result<(), StoreError> {
        if shard.of == 0 || shard.of > 16 || shard.index >= shard.of {
            return Err(StoreError::invalid(
                "shard",
                format!(
                    "shard {} of {}: give 1 to 16 shards and an index below their number",
                    shard.index, shard.of
                ),
            ));
        }
        let (filter, extra) = scope.shard_filter("e", shard);
        let sql = corpus_groups_sql(&filter, extra.len(), scope.env.is_some(), ordered);
        let until = to_i64("until_id", until_id)?;
        let mut pooled = self.acquire().await?;
        if matches!(pooled, crate::conn::Pooled::Sqlite(_)) {
            // The walk maps the file on this connection (below): it must not go back to the pool.
            pooled.close_on_drop();
        }
        let mut conn = pooled.conn();
        macro_rules! walk {
            ($c:ident) => {
                async {
                    use futures_util::TryStreamExt;
                    let mut rows = scoped_query!(sql.as_str(), scope, until, &extra)
                        .bind(i64::from(per_intent))
                        .fetch(&mut *$c);
                    while let Some(row) = rows.try_next().await.map_err(db("replay corpus"))? {
                        if tx.send(read_group(&row)?).await.is_err() {
                            break;
                        }
                    }
                    Ok::<(), StoreError>(())
                }
                .await
            };
        }
        db_run!(conn,
            sqlite: |s| {
                // The walk reads every payload once, in file order: through a memory map it skips a read
                // syscall and a copy per page. The map is a session setting, so this connection is closed after
                // the walk, however it ends (finished, failed, or its future dropped by a client that went
                // away), and never handed to another user with the map on.
                sqlx::query(SQLITE_WALK_MMAP_ON)
                    .execute(&mut *s)
                    .await
                    .map_err(db("replay corpus: map the file"))?;
                walk!(s)
            },
            postgres: |p| walk!(p),
        )
    }
}

/// Maps up to 2 GiB (SQLite's default ceiling) of the database file for a replay walk. A read error on a mapped
/// page would stop the process (SIGBUS) instead of failing the statement; the map lives only on the walk's own
/// connection, which is closed after it, and the store never shrinks the file under a reader (no VACUUM).
const SQLITE_WALK_MMAP_ON: &str = "PRAGMA mmap_size = 2147418112";
