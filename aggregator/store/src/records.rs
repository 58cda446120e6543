//! The records domain: each agent's hash-chained record stream, its gaps, the seqs the aggregator refused for
//! good, and its committed cursor. The batch rules are the pure `batch` module; this module runs its plan. The
//! cursor lock, the seq lookup and the bulk inserts differ per dialect (`sqlite`, `postgres`); the rest is
//! portable SQL.

use std::collections::{BTreeSet, HashMap};

use crate::batch;
use crate::conn::{Conn, agent_where, bind_key, db_run, later};
use crate::error::{StoreError, db};
use crate::evidence::{self, NewIndexEntry};
use crate::model::{
    AgentKey, BatchOutcome, GapRow, MAX_BATCH_RECORDS, MAX_RECORDS_PAGE, MAX_REFUSAL_MESSAGE_BYTES,
    NewRecord, RefusedRecord, StoredRecord, check_label, to_i64, to_u64, truncate_utf8,
};
use crate::rows::{self, Columns, record_columns};
use crate::{postgres, sqlite};

/// Stores a batch of the agent's records and moves its cursor, inside the caller's transaction; the rules are
/// in the `batch` module docs. Refused with [`StoreError::UnknownAgent`] when the agent has no row.
pub(crate) async fn commit_batch(
    mut conn: Conn<'_>,
    key: &AgentKey,
    records: &[NewRecord],
    index: &[NewIndexEntry],
    now_ms: i64,
) -> Result<BatchOutcome, StoreError> {
    const ADVANCE: &str = concat!(
        "UPDATE agents SET committed_seq = $5, committed_hash = $6, gap_count = gap_count + $7, \
         conflict_count = conflict_count + $9, last_seen_unix_ms = ",
        later!("last_seen_unix_ms", "$8"),
        agent_where!()
    );
    if records.len() > MAX_BATCH_RECORDS {
        return Err(StoreError::invalid(
            "records",
            format!(
                "batch of {} records exceeds the limit of {MAX_BATCH_RECORDS}: split it",
                records.len()
            ),
        ));
    }
    for (index, record) in records.iter().enumerate() {
        record.validate(index)?;
    }

    let cursor = db_run!(conn,
        sqlite: |c| sqlite::lock_cursor(c, key).await,
        postgres: |c| postgres::lock_cursor(c, key).await,
    )?
    .ok_or_else(|| StoreError::UnknownAgent {
        agent: key.to_string(),
    })?;
    let head = cursor.committed_seq;
    let prepared = batch::prepare(records);
    let lookup = prepared.seqs_to_look_up(cursor.committed_seq);
    let stored = if lookup.is_empty() {
        HashMap::new()
    } else {
        db_run!(conn,
            sqlite: |c| sqlite::stored_hashes(c, key, &lookup).await,
            postgres: |c| postgres::stored_hashes(c, key, &lookup).await,
        )?
    };
    let mut plan = batch::plan(cursor, prepared, &stored);
    if let Some((first, last)) = plan.missing_span() {
        let refused = refused_between(conn.reborrow(), key, first, last).await?;
        batch::account_refused(&mut plan, &refused);
    }

    if !plan.insert.is_empty() {
        db_run!(conn,
            sqlite: |c| sqlite::insert_records(c, key, now_ms, &plan.insert).await,
            postgres: |c| postgres::insert_records(c, key, now_ms, &plan.insert).await,
        )?;
        // The index entries of exactly the records inserted, in the same transaction (module `evidence`).
        if !index.is_empty() {
            plan.outcome.indexed =
                evidence::insert(conn.reborrow(), key, &plan.insert, index, now_ms).await?;
        }
    }
    if !plan.gaps.is_empty() {
        db_run!(conn,
            sqlite: |c| sqlite::insert_gaps(c, key, now_ms, &plan.gaps).await,
            postgres: |c| postgres::insert_gaps(c, key, now_ms, &plan.gaps).await,
        )?;
    }
    // Records at or below the cursor fill seqs an earlier batch recorded as missing (the agent had batches in
    // flight when one was refused and resent): take them out of their gaps, a contiguous run at a time.
    let late: Vec<u64> = plan
        .insert
        .iter()
        .map(|r| r.seq)
        .take_while(|seq| *seq <= head)
        .collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for seq in late {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == seq => *end = seq,
            _ => runs.push((seq, seq)),
        }
    }
    let mut filled = 0_u64;
    for (start, end) in runs {
        filled += end - start + 1;
        take_out_of_missing_gaps(
            conn.reborrow(),
            key,
            to_i64("seq", start)?,
            to_i64("seq", end)?,
        )
        .await?;
    }
    if filled > 0 {
        tracing::info!(agent = %key, filled, "records arrived for seqs below the head; their missing gaps were taken back");
    }
    let committed_seq = to_i64("committed_seq", plan.outcome.committed_seq)?;
    let gap_count = i64::try_from(plan.gaps.len())
        .map_err(|_| StoreError::invalid("records", "too many gaps in one batch"))?;
    let conflict_count = to_i64("conflicts", plan.outcome.conflicts)?;
    db_run!(conn, |c| {
        bind_key(sqlx::query(ADVANCE), key)
            .bind(committed_seq)
            .bind(plan.outcome.committed_hash.as_slice())
            .bind(gap_count)
            .bind(now_ms)
            .bind(conflict_count)
            .execute(&mut *c)
            .await
            .map_err(db("commit_batch: advance cursor"))?;
    });

    let outcome = plan.outcome;
    if outcome.conflicts > 0 {
        tracing::warn!(agent = %key, conflicts = outcome.conflicts, first_seq = outcome.conflict_seqs.first(),
            "records arrived with a different hash at stored seqs; the stored records were kept and the \
             agent told to quarantine the new ones");
    }
    if !outcome.refused.is_empty() {
        tracing::info!(agent = %key, refused = ?outcome.refused,
            "skipped seqs were refused earlier and quarantined by the agent; not recorded as gaps");
    }
    if !outcome.gaps.is_empty() || !outcome.chain_breaks.is_empty() {
        tracing::warn!(agent = %key, missing = ?outcome.gaps, chain_breaks = ?outcome.chain_breaks,
            "gaps in the agent's record stream");
    }
    Ok(outcome)
}

/// How many records of the agent are stored.
pub(crate) async fn count(mut conn: Conn<'_>, key: &AgentKey) -> Result<u64, StoreError> {
    const SQL: &str = concat!("SELECT count(*) AS n FROM records", agent_where!());
    let n = db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
        .fetch_one(&mut *c)
        .await
        .map_err(db("count_records"))?
        .int("n")?);
    to_u64("records", "count", n)
}

/// The agent's records with seq above `after_seq`, ascending; at most `limit`, clamped to
/// [`MAX_RECORDS_PAGE`].
pub(crate) async fn page(
    conn: Conn<'_>,
    key: &AgentKey,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<StoredRecord>, StoreError> {
    let (records, _) = page_within(conn, key, after_seq, limit, usize::MAX).await?;
    Ok(records)
}

/// The agent's recorded gaps, by first seq.
pub(crate) async fn gaps(mut conn: Conn<'_>, key: &AgentKey) -> Result<Vec<GapRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT first_seq, last_seq, kind, detected_unix_ms FROM record_gaps",
        agent_where!(),
        " ORDER BY first_seq, id"
    );
    db_run!(conn, |c| {
        let found = bind_key(sqlx::query(SQL), key)
            .fetch_all(&mut *c)
            .await
            .map_err(db("gaps"))?;
        found.iter().map(rows::gap_row).collect()
    })
}

/// The agent's refused seqs in `first..=last` (see [`refuse`]).
async fn refused_between(
    mut conn: Conn<'_>,
    key: &AgentKey,
    first: u64,
    last: u64,
) -> Result<BTreeSet<u64>, StoreError> {
    const SQL: &str = concat!(
        "SELECT seq FROM record_refusals",
        agent_where!(),
        " AND seq >= $5 AND seq <= $6"
    );
    let (first, last) = (to_i64("first_seq", first)?, to_i64("last_seq", last)?);
    db_run!(conn, |c| {
        let found = bind_key(sqlx::query(SQL), key)
            .bind(first)
            .bind(last)
            .fetch_all(&mut *c)
            .await
            .map_err(db("commit_batch: refused seqs"))?;
        found
            .iter()
            .map(|row| to_u64("record_refusals", "seq", rows::Columns::int(row, "seq")?))
            .collect()
    })
}

/// Records that the aggregator refused the agent's record `seq` for good with `code` (a permanent
/// `gait_wire::RefusalCode`). A later batch that skips `seq` then does not record it as a `missing` gap. A
/// second refusal of the same seq keeps the latest code and message. `message` is cut to
/// [`MAX_REFUSAL_MESSAGE_BYTES`]. Refused with [`StoreError::UnknownAgent`] when the agent has no row.
///
/// The agent has several batches on the wire at once, so a batch after the refused record can commit before
/// the refusal is written, recording `seq` as a `missing` gap. The refusal takes such a gap back in the same
/// transaction (see [`settle_refused_gap`]): run it inside one, as [`crate::Store::record_refusal`] does. The
/// agent's cursor row is locked first, which orders this against [`commit_batch`].
pub(crate) async fn refuse(
    mut conn: Conn<'_>,
    key: &AgentKey,
    seq: u64,
    code: &str,
    message: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO record_refusals (org, project, env, agent_id, seq, code, message, refused_unix_ms) ",
        "SELECT org, project, env, agent_id, $5, $6, $7, $8 FROM agents",
        agent_where!(),
        " ON CONFLICT (org, project, env, agent_id, seq) DO UPDATE SET code = excluded.code, \
         message = excluded.message, refused_unix_ms = excluded.refused_unix_ms"
    );
    if seq == 0 {
        return Err(StoreError::invalid("refusal.seq", "must be at least 1"));
    }
    let seq = to_i64("refusal.seq", seq)?;
    check_label("refusal.code", code)?;
    let message = truncate_utf8(message, MAX_REFUSAL_MESSAGE_BYTES);
    let locked = db_run!(conn,
        sqlite: |c| sqlite::lock_cursor(c, key).await,
        postgres: |c| postgres::lock_cursor(c, key).await,
    )?;
    if locked.is_none() {
        return Err(StoreError::UnknownAgent {
            agent: key.to_string(),
        });
    }
    db_run!(conn, |c| bind_key(sqlx::query(SQL), key)
        .bind(seq)
        .bind(code)
        .bind(message)
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("record_refusal"))?
        .rows_affected());
    settle_refused_gap(conn, key, seq).await
}

/// Takes the refused `seq` out of any `missing` gap that holds it, so a refusal that lands after a later batch
/// leaves the same rows as one that landed before it.
async fn settle_refused_gap(conn: Conn<'_>, key: &AgentKey, seq: i64) -> Result<(), StoreError> {
    if take_out_of_missing_gaps(conn, key, seq, seq).await? {
        tracing::info!(agent = %key, seq,
            "a refused seq had been recorded as a missing gap by a later batch; the gap was taken back");
    }
    Ok(())
}

/// Takes the seqs `first..=last` out of the agent's `missing` gaps: a gap inside the range is deleted, one
/// overlapping an end shrinks, one around the range splits in two (keeping its detection time), and the
/// agent's `gap_count` moves by the difference. `chain_break` gaps are left alone. Returns whether any gap
/// changed. Runs in the caller's transaction, after the agent's cursor row was locked.
async fn take_out_of_missing_gaps(
    mut conn: Conn<'_>,
    key: &AgentKey,
    first: i64,
    last: i64,
) -> Result<bool, StoreError> {
    const FIND: &str = concat!(
        "SELECT id, first_seq, last_seq, detected_unix_ms FROM record_gaps",
        agent_where!(),
        " AND kind = 'missing' AND first_seq <= $6 AND last_seq >= $5"
    );
    const DELETE: &str = "DELETE FROM record_gaps WHERE id = $1";
    const RESHAPE: &str = "UPDATE record_gaps SET first_seq = $2, last_seq = $3 WHERE id = $1";
    const SPLIT_OFF: &str = "INSERT INTO record_gaps (org, project, env, agent_id, first_seq, last_seq, \
         kind, detected_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, 'missing', $7)";
    const TAKE: &str = "take seqs out of their missing gap";
    const COUNT: &str = concat!(
        "UPDATE agents SET gap_count = gap_count + $5",
        agent_where!()
    );
    let found = db_run!(conn, |c| bind_key(sqlx::query(FIND), key)
        .bind(first)
        .bind(last)
        .fetch_all(&mut *c)
        .await
        .map_err(db("gaps overlapping stored or refused seqs"))?
        .iter()
        .map(|row| {
            Ok((
                row.int("id")?,
                row.int("first_seq")?,
                row.int("last_seq")?,
                row.int("detected_unix_ms")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?);
    if found.is_empty() {
        return Ok(false);
    }
    let mut delta = 0_i64;
    for (id, gap_first, gap_last, detected) in found {
        let left = (gap_first < first).then_some((gap_first, first - 1));
        let right = (gap_last > last).then_some((last + 1, gap_last));
        db_run!(conn, |c| {
            match (left, right) {
                (None, None) => {
                    sqlx::query(DELETE)
                        .bind(id)
                        .execute(&mut *c)
                        .await
                        .map_err(db(TAKE))?;
                    delta -= 1;
                }
                (Some((a, b)), None) | (None, Some((a, b))) => {
                    sqlx::query(RESHAPE)
                        .bind(id)
                        .bind(a)
                        .bind(b)
                        .execute(&mut *c)
                        .await
                        .map_err(db(TAKE))?;
                }
                (Some((a, b)), Some((c_first, c_last))) => {
                    sqlx::query(RESHAPE)
                        .bind(id)
                        .bind(a)
                        .bind(b)
                        .execute(&mut *c)
                        .await
                        .map_err(db(TAKE))?;
                    bind_key(sqlx::query(SPLIT_OFF), key)
                        .bind(c_first)
                        .bind(c_last)
                        .bind(detected)
                        .execute(&mut *c)
                        .await
                        .map_err(db(TAKE))?;
                    delta += 1;
                }
            }
        });
    }
    if delta != 0 {
        db_run!(conn, |c| bind_key(sqlx::query(COUNT), key)
            .bind(delta)
            .execute(&mut *c)
            .await
            .map_err(db("gap count"))?
            .rows_affected());
    }
    Ok(true)
}

/// The agent's refused records, by seq.
pub(crate) async fn refusals(
    mut conn: Conn<'_>,
    key: &AgentKey,
) -> Result<Vec<RefusedRecord>, StoreError> {
    const SQL: &str = concat!(
        "SELECT seq, code, message, refused_unix_ms FROM record_refusals",
        agent_where!(),
        " ORDER BY seq"
    );
    db_run!(conn, |c| {
        let found = bind_key(sqlx::query(SQL), key)
            .fetch_all(&mut *c)
            .await
            .map_err(db("refusals"))?;
        found.iter().map(rows::refused_row).collect()
    })
}

/// Like [`page`], but stops once the payloads returned reach `max_bytes` (the first record is always returned,
/// whatever its size): the rows are streamed from the database and the rest of the page is never read, so a
/// listing of large records holds at most `max_bytes` plus one record of payload in memory. The flag says
/// whether the byte budget (not `limit` or the end of the stream) ended the page.
pub(crate) async fn page_within(
    mut conn: Conn<'_>,
    key: &AgentKey,
    after_seq: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<(Vec<StoredRecord>, bool), StoreError> {
    use futures_util::TryStreamExt as _;
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM records",
        agent_where!(),
        " AND seq > $5 ORDER BY seq LIMIT $6"
    );
    let after = to_i64("after_seq", after_seq)?;
    let limit = limit.min(MAX_RECORDS_PAGE);
    if limit == 0 {
        return Ok((Vec::new(), false));
    }
    db_run!(conn, |c| {
        let mut rows = bind_key(sqlx::query(SQL), key)
            .bind(after)
            .bind(i64::from(limit))
            .fetch(&mut *c);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut cut = false;
        while let Some(row) = rows.try_next().await.map_err(db("records"))? {
            let record = rows::record_row(&row)?;
            if !out.is_empty() && bytes.saturating_add(record.payload.len()) > max_bytes {
                cut = true;
                break;
            }
            bytes = bytes.saturating_add(record.payload.len());
            out.push(record);
        }
        Ok((out, cut))
    })
}
