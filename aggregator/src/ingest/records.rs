//! Record batches: the checks of each record (the wire rule, this aggregator's payload limit, the hash), the
//! commit, and the refusal of one record (counted, logged, recorded in the store) that the agent quarantines.

use std::time::Instant;

use gait_store::NewRecord;
use gait_wire::{
    BatchAck, ErrorCode, Record, RecordBatch, RecordRefusal, RefusalCode, SeqRange, ServerMsgV2,
};
use tracing::{debug, error, warn};

use super::MAX_BATCH_RECORDS;
use super::connection::Session;
use super::endpoint::IngestState;
use super::request::error_msg;
use crate::clock::unix_ms;
use crate::metrics;

pub(super) async fn on_batch(
    state: &IngestState,
    session: &Session,
    batch: RecordBatch,
) -> ServerMsgV2 {
    if batch.records.len() > MAX_BATCH_RECORDS {
        return error_msg(
            ErrorCode::TooLarge,
            format!(
                "{} records in one batch; send at most {MAX_BATCH_RECORDS}",
                batch.records.len()
            ),
        );
    }
    let started = Instant::now();
    let records = batch.records;
    let max_payload = state.limits.max_record_payload_bytes;
    // Hashing every payload is CPU work: keep it off the async workers for big batches.
    let checked = if records.len() > 64 {
        match tokio::task::spawn_blocking(move || check_records(records, max_payload)).await {
            Ok(r) => r,
            Err(_) => return error_msg(ErrorCode::Internal, "record check task failed"),
        }
    } else {
        check_records(records, max_payload)
    };
    let rows = match checked {
        Ok(rows) => rows,
        Err(refused) => return refuse(state, session, batch.batch_id, refused).await,
    };
    let now = unix_ms();
    // Approval requests the batch raises commit in the same transaction as their records.
    let approval_requests = match &state.approvals {
        Some(approvals)
            if rows
                .iter()
                .any(|r| r.kind == gait_wire::APPROVAL_REQUEST_KIND) =>
        {
            match approvals
                .requests_from_records(&session.key, &rows, now)
                .await
            {
                Ok(requests) => requests,
                Err(e) => {
                    warn!(error = %e, agent = %session.key, "approval requests could not be prepared; agent will retry");
                    return error_msg(ErrorCode::Unavailable, "commit failed; retry");
                }
            }
        }
        _ => Vec::new(),
    };
    // Trace key announcements register, bound to this connection's certificate, with their records.
    let (trace_keys, forged) = crate::fleet::trace_keys::announcements(&rows, &session.cert_serial);
    for error in &forged {
        warn!(agent = %session.key, remote = %session.remote, %error,
            "trace key announcement not registered; its record is stored as sent");
    }
    let commit_started = Instant::now();
    let committed = state
        .intake
        .commit_batch(&session.key, &rows, &approval_requests, &trace_keys, now)
        .await
        .map(|(outcome, raised)| {
            if let Some(approvals) = &state.approvals {
                for _ in 0..raised {
                    approvals.count("requested");
                }
            }
            outcome
        });
    state
        .metrics
        .batch_commit_duration
        .observe(commit_started.elapsed().as_secs_f64());
    match committed {
        Ok(outcome) => {
            state.metrics.batches_committed.inc();
            state.metrics.records_inserted.inc_by(outcome.inserted);
            state.metrics.records_duplicate.inc_by(outcome.duplicates);
            state.metrics.records_conflict.inc_by(outcome.conflicts);
            state.metrics.record_gaps.inc_by(outcome.gaps.len() as u64);
            state
                .metrics
                .records_refused_skipped
                .inc_by(outcome.refused.len() as u64);
            if !outcome.gaps.is_empty() {
                warn!(agent_id = %session.key.agent_id, org = %session.key.tenant.org, gaps = ?outcome.gaps,
                    "agent record stream has gaps");
            }
            if outcome.conflicts > 0 {
                error!(agent = %session.key, remote = %session.remote, conflicts = outcome.conflicts,
                    first_seq = outcome.conflict_seqs.first(), last_seq = outcome.conflict_seqs.last(),
                    "records arrived at seqs already stored with other records (another instance of this \
                     identity wrote them); not stored, the agent quarantines them");
            }
            debug!(agent_id = %session.key.agent_id, inserted = outcome.inserted, duplicates = outcome.duplicates,
                elapsed_ms = started.elapsed().as_millis() as u64, "batch committed");
            ServerMsgV2::BatchAck(BatchAck {
                batch_id: batch.batch_id,
                committed_through: outcome.committed_seq,
                inserted: u32::try_from(outcome.inserted).unwrap_or(u32::MAX),
                duplicates: u32::try_from(outcome.duplicates).unwrap_or(u32::MAX),
                gaps: outcome
                    .gaps
                    .iter()
                    .map(|&(first, last)| SeqRange { first, last })
                    .collect(),
                conflicts: gait_wire::ranges_of(outcome.conflict_seqs.iter().copied()),
            })
        }
        Err(e) if e.is_retryable() => {
            warn!(error = %e, agent_id = %session.key.agent_id, "batch commit failed; agent will retry");
            error_msg(ErrorCode::Unavailable, "commit failed; retry")
        }
        Err(e) => match e
            .refusal_code()
            .and_then(|(index, code)| Some((rows.get(index)?.seq, code)))
        {
            Some((seq, code)) => {
                let refused = Refused {
                    seq,
                    code,
                    message: e.to_string(),
                };
                refuse(state, session, batch.batch_id, refused).await
            }
            None => {
                warn!(error = %e, agent_id = %session.key.agent_id, "batch refused by the store");
                error_msg(ErrorCode::BadRequest, format!("batch refused: {e}"))
            }
        },
    }
}

/// Answers a batch with the refusal of one of its records: counts it by code, logs it naming the agent and the
/// seq, and, for a permanent code, records the refused seq in the store first, so the gap the agent's stream
/// will show there is known as a refusal rather than a loss. When that cannot be recorded now, the batch is
/// answered "unavailable; retry" instead: the agent sends it again and gets the same refusal later.
async fn refuse(
    state: &IngestState,
    session: &Session,
    batch_id: u64,
    refused: Refused,
) -> ServerMsgV2 {
    let Refused { seq, code, message } = refused;
    warn!(agent = %session.key, seq, %code, %message, "record refused");
    if code.is_permanent() {
        let recorded = state
            .intake
            .record_refusal(&session.key, seq, code.as_str(), &message, unix_ms())
            .await;
        match recorded {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                warn!(error = %e, agent = %session.key, seq, "refusal not recorded; agent will retry");
                return error_msg(ErrorCode::Unavailable, "store unavailable; retry");
            }
            Err(e) => {
                warn!(error = %e, agent = %session.key, seq,
                    "refusal not recorded; the agent's stream will show a missing gap there")
            }
        }
    }
    metrics::inc_labelled(&state.metrics.records_refused, "code", code.as_str());
    ServerMsgV2::RecordRefused(RecordRefusal::new(batch_id, seq, code, message))
}

/// A record [`check_records`] refuses, before the batch id is attached.
#[derive(Debug)]
struct Refused {
    seq: u64,
    code: RefusalCode,
    message: String,
}

/// Checks each record under the wire rule ([`Record::validate`]), this aggregator's payload limit
/// (`max_payload`, at most the wire's) and its hash, and turns it into a store row. The first record that
/// fails is named with its [`RefusalCode`].
fn check_records(records: Vec<Record>, max_payload: usize) -> Result<Vec<NewRecord>, Refused> {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        if let Err(e) = r.validate() {
            return Err(Refused {
                seq: r.seq,
                code: e.refusal_code(),
                message: e.to_string(),
            });
        }
        if r.payload.len() > max_payload {
            return Err(Refused {
                seq: r.seq,
                code: RefusalCode::RecordPayloadTooLarge,
                message: format!(
                    "record {}: payload is {} bytes, over this aggregator's limit of {max_payload} bytes \
                     (ingest.max_record_payload_bytes)",
                    r.seq,
                    r.payload.len()
                ),
            });
        }
        if !r.verify_hash() {
            return Err(Refused {
                seq: r.seq,
                code: RefusalCode::RecordHashMismatch,
                message: format!("record {} hash does not match its content", r.seq),
            });
        }
        rows.push(NewRecord {
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            class: r.class.as_str().to_owned(),
            kind: r.kind,
            created_unix_ms: r.created_unix_ms,
            bundle_epoch: r.bundle.as_ref().map(|b| b.epoch),
            bundle_digest: r.bundle.as_ref().map(|b| hex::encode(b.digest)),
            bundle_since_ms: r.bundle.as_ref().map(|b| b.since_unix_ms),
            payload: r.payload,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(seq: u64, prev: [u8; 32], payload_len: usize) -> Record {
        Record::sealed(
            seq,
            prev,
            gait_wire::RecordClass::Block,
            "gate.decision",
            0,
            None,
            vec![b'x'; payload_len],
        )
    }

    #[test]
    fn a_payload_over_the_configured_limit_is_refused_naming_the_seq_and_the_limit() {
        let first = sealed(1, gait_wire::GENESIS_HASH, 100);
        let second = sealed(2, first.hash, 101);
        let rows = check_records(vec![first.clone()], 100).expect("at the limit");
        assert_eq!(rows.len(), 1);
        let refused = check_records(vec![first, second], 100).expect_err("over the limit");
        assert_eq!(refused.seq, 2);
        assert_eq!(refused.code, RefusalCode::RecordPayloadTooLarge);
        assert!(refused.code.is_permanent());
        assert!(
            refused.message.contains("record 2")
                && refused.message.contains("101 bytes")
                && refused.message.contains("limit of 100 bytes"),
            "{}",
            refused.message
        );
    }
}
