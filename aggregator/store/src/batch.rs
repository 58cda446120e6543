//! Pure planning of one `commit_batch`: de-duplication, classification against stored hashes, the cursor walk
//! and gap detection. No I/O; both backends run the same plan inside their transaction.
//!
//! Rules (the agent streams its outbox oldest first and deletes only what was acknowledged, so a seq it skips
//! will never arrive):
//! - Seqs start at 1; the cursor starts at (0, 32 zero bytes), so record 1 must carry a zero `prev_hash`.
//! - Invariant: no stored record has a seq above `committed_seq`. Hence only seqs at or below the cursor can
//!   already be stored and need a lookup; the unique index on (tenant, agent, seq) is the backstop.
//! - A seq already stored with the same hash is a duplicate; with another hash it is a conflict, and the stored
//!   record is kept. A seq repeated inside the batch is judged against the stored hash, or else against its
//!   first occurrence in the batch.
//! - Walking new records above the cursor in seq order: a record more than one past the cursor opens a
//!   `missing` gap for the seqs in between (the chain cannot be checked across it); a record exactly one past
//!   the cursor whose `prev_hash` is not the cursor hash is a `chain_break`. Either way the record is stored and
//!   the cursor moves to it, so every seq up to the cursor is stored or recorded as a gap.
//! - A new record at or below the cursor (it fills a seq earlier declared missing) is stored and moves nothing;
//!   `records::commit_batch` takes its seq out of that `missing` gap.
//! - A skipped seq the aggregator refused for good (a `record_refusals` row: the agent quarantined that record
//!   and went on) is accounted for, not lost: [`account_refused`] takes it out of the `missing` gaps and lists
//!   it in `BatchOutcome::refused`. The chain is still not checked across it (its hash was never stored).

use std::collections::{BTreeSet, HashMap};

use crate::model::{AgentCursor, BatchOutcome, GapKind, NewRecord};

/// The batch with seqs made unique, in ascending order.
pub(crate) struct Prepared<'a> {
    /// First occurrence of each seq, ascending by seq.
    unique: Vec<&'a NewRecord>,
    /// Later occurrences of seqs present in `unique`.
    repeats: Vec<&'a NewRecord>,
}

/// A gap to insert: inclusive seq range and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlannedGap {
    pub first_seq: u64,
    pub last_seq: u64,
    pub kind: GapKind,
}

/// What the transaction must write, and what it reports.
pub(crate) struct Plan<'a> {
    /// Records to insert, ascending by seq, unique seqs, none stored yet.
    pub insert: Vec<&'a NewRecord>,
    pub gaps: Vec<PlannedGap>,
    pub outcome: BatchOutcome,
}

pub(crate) fn prepare(records: &[NewRecord]) -> Prepared<'_> {
    let mut sorted: Vec<&NewRecord> = records.iter().collect();
    // Stable: the first occurrence of a seq stays first among its repeats.
    sorted.sort_by_key(|r| r.seq);
    let mut unique: Vec<&NewRecord> = Vec::with_capacity(sorted.len());
    let mut repeats = Vec::new();
    for r in sorted {
        match unique.last() {
            Some(last) if last.seq == r.seq => repeats.push(r),
            _ => unique.push(r),
        }
    }
    Prepared { unique, repeats }
}

impl Prepared<'_> {
    /// Seqs that may already be stored (at or below the cursor), as the i64 the databases hold.
    pub(crate) fn seqs_to_look_up(&self, committed_seq: u64) -> Vec<i64> {
        self.unique
            .iter()
            .take_while(|r| r.seq <= committed_seq)
            // Seqs were validated to fit i64 before planning.
            .filter_map(|r| i64::try_from(r.seq).ok())
            .collect()
    }
}

/// Plans the batch against the cursor and the hashes stored for the looked-up seqs.
pub(crate) fn plan<'a>(
    cursor: AgentCursor,
    prepared: Prepared<'a>,
    stored: &HashMap<u64, [u8; 32]>,
) -> Plan<'a> {
    let mut outcome = BatchOutcome::default();
    let mut insert = Vec::with_capacity(prepared.unique.len());
    let mut first_hash: HashMap<u64, [u8; 32]> = HashMap::new();

    for r in &prepared.unique {
        match stored.get(&r.seq) {
            Some(h) if *h == r.hash => outcome.duplicates += 1,
            Some(_) => outcome.conflict_seqs.push(r.seq),
            None => insert.push(*r),
        }
    }
    if !prepared.repeats.is_empty() {
        for r in &prepared.unique {
            first_hash.insert(r.seq, r.hash);
        }
        for r in &prepared.repeats {
            let reference = stored.get(&r.seq).or_else(|| first_hash.get(&r.seq));
            if reference == Some(&r.hash) {
                outcome.duplicates += 1;
            } else {
                outcome.conflict_seqs.push(r.seq);
            }
        }
    }
    outcome.conflict_seqs.sort_unstable();
    outcome.conflicts = outcome.conflict_seqs.len() as u64;
    outcome.inserted = insert.len() as u64;

    let mut gaps = Vec::new();
    let (mut seq, mut hash) = (cursor.committed_seq, cursor.committed_hash);
    for r in &insert {
        if r.seq <= seq {
            continue;
        }
        if r.seq > seq + 1 {
            gaps.push(PlannedGap {
                first_seq: seq + 1,
                last_seq: r.seq - 1,
                kind: GapKind::Missing,
            });
            outcome.gaps.push((seq + 1, r.seq - 1));
        } else if r.prev_hash != hash {
            gaps.push(PlannedGap {
                first_seq: r.seq,
                last_seq: r.seq,
                kind: GapKind::ChainBreak,
            });
            outcome.chain_breaks.push(r.seq);
        }
        seq = r.seq;
        hash = r.hash;
    }
    outcome.committed_seq = seq;
    outcome.committed_hash = hash;
    Plan {
        insert,
        gaps,
        outcome,
    }
}

impl Plan<'_> {
    /// The inclusive seq range spanned by the plan's `missing` gaps, if any: where refused seqs may hide.
    pub(crate) fn missing_span(&self) -> Option<(u64, u64)> {
        let mut missing = self.gaps.iter().filter(|g| g.kind == GapKind::Missing);
        let first = missing.next()?;
        let last = missing.next_back().unwrap_or(first);
        Some((first.first_seq, last.last_seq))
    }
}

/// Takes the seqs in `refused` out of the plan's `missing` gaps (splitting a gap around them) and lists them
/// in `outcome.refused`; `chain_break` gaps are left alone.
pub(crate) fn account_refused(plan: &mut Plan<'_>, refused: &BTreeSet<u64>) {
    if refused.is_empty() {
        return;
    }
    let mut gaps = Vec::with_capacity(plan.gaps.len());
    let mut accounted = Vec::new();
    for gap in plan.gaps.drain(..) {
        if gap.kind != GapKind::Missing {
            gaps.push(gap);
            continue;
        }
        let mut next = gap.first_seq;
        for &seq in refused.range(gap.first_seq..=gap.last_seq) {
            if seq > next {
                gaps.push(PlannedGap {
                    first_seq: next,
                    last_seq: seq - 1,
                    kind: GapKind::Missing,
                });
            }
            accounted.push(seq);
            next = seq + 1;
        }
        if next <= gap.last_seq {
            gaps.push(PlannedGap {
                first_seq: next,
                last_seq: gap.last_seq,
                kind: GapKind::Missing,
            });
        }
    }
    plan.gaps = gaps;
    plan.outcome.gaps = plan
        .gaps
        .iter()
        .filter(|g| g.kind == GapKind::Missing)
        .map(|g| (g.first_seq, g.last_seq))
        .collect();
    accounted.sort_unstable();
    plan.outcome.refused = accounted;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, prev: u8, hash: u8) -> NewRecord {
        NewRecord {
            seq,
            prev_hash: [prev; 32],
            hash: [hash; 32],
            class: "decision".into(),
            kind: "gate".into(),
            created_unix_ms: 0,
            bundle_epoch: None,
            bundle_digest: None,
            bundle_since_ms: None,
            payload: b"{}".to_vec(),
        }
    }

    fn start() -> AgentCursor {
        AgentCursor {
            committed_seq: 0,
            committed_hash: [0; 32],
        }
    }

    #[test]
    fn a_chained_batch_from_genesis_advances_the_cursor_without_gaps() {
        let batch = [rec(1, 0, 1), rec(2, 1, 2), rec(3, 2, 3)];
        let p = plan(start(), prepare(&batch), &HashMap::new());
        assert_eq!(p.insert.len(), 3);
        assert_eq!(
            (p.outcome.committed_seq, p.outcome.committed_hash),
            (3, [3; 32])
        );
        assert!(p.gaps.is_empty());
    }

    #[test]
    fn unordered_input_is_walked_in_seq_order() {
        let batch = [rec(3, 2, 3), rec(1, 0, 1), rec(2, 1, 2)];
        let p = plan(start(), prepare(&batch), &HashMap::new());
        assert_eq!(
            p.insert.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(p.gaps.is_empty());
        assert_eq!(p.outcome.committed_seq, 3);
    }

    #[test]
    fn skipped_seqs_become_missing_gaps_and_the_chain_is_not_checked_across_them() {
        let cursor = AgentCursor {
            committed_seq: 3,
            committed_hash: [3; 32],
        };
        let batch = [rec(6, 99, 6), rec(7, 6, 7), rec(9, 99, 9)];
        let p = plan(cursor, prepare(&batch), &HashMap::new());
        assert_eq!(p.outcome.gaps, vec![(4, 5), (8, 8)]);
        assert!(p.outcome.chain_breaks.is_empty());
        assert_eq!(p.outcome.committed_seq, 9);
    }

    #[test]
    fn a_wrong_prev_hash_right_after_the_cursor_is_a_chain_break() {
        let cursor = AgentCursor {
            committed_seq: 3,
            committed_hash: [3; 32],
        };
        let batch = [rec(4, 42, 4), rec(5, 4, 5)];
        let p = plan(cursor, prepare(&batch), &HashMap::new());
        assert_eq!(p.outcome.chain_breaks, vec![4]);
        assert_eq!(
            p.gaps,
            vec![PlannedGap {
                first_seq: 4,
                last_seq: 4,
                kind: GapKind::ChainBreak
            }]
        );
        assert_eq!(p.outcome.committed_seq, 5);
    }

    #[test]
    fn stored_seqs_are_duplicates_or_conflicts_and_never_reinserted() {
        let cursor = AgentCursor {
            committed_seq: 2,
            committed_hash: [2; 32],
        };
        let stored = HashMap::from([(1, [1; 32]), (2, [2; 32])]);
        let batch = [rec(1, 0, 1), rec(2, 1, 77), rec(3, 2, 3)];
        let prepared = prepare(&batch);
        assert_eq!(prepared.seqs_to_look_up(2), vec![1, 2]);
        let p = plan(cursor, prepared, &stored);
        assert_eq!(
            (
                p.outcome.inserted,
                p.outcome.duplicates,
                p.outcome.conflicts
            ),
            (1, 1, 1)
        );
        assert_eq!(p.outcome.conflict_seqs, vec![2]);
        assert_eq!(p.insert.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
        assert_eq!(p.outcome.committed_seq, 3);
    }

    #[test]
    fn repeats_inside_a_batch_are_judged_against_the_first_occurrence() {
        let batch = [rec(1, 0, 1), rec(1, 0, 1), rec(1, 0, 9), rec(2, 1, 2)];
        let p = plan(start(), prepare(&batch), &HashMap::new());
        assert_eq!(
            (
                p.outcome.inserted,
                p.outcome.duplicates,
                p.outcome.conflicts
            ),
            (2, 1, 1)
        );
        assert_eq!(p.insert[0].hash, [1; 32]);
    }

    #[test]
    fn refused_seqs_are_taken_out_of_missing_gaps_and_split_them() {
        let cursor = AgentCursor {
            committed_seq: 3,
            committed_hash: [3; 32],
        };
        // 4..=8 skipped (8 refused, 5 refused, 6 and 7 lost), 10 skipped and refused; 4 also lost.
        let batch = [rec(9, 99, 9), rec(11, 99, 11)];
        let mut p = plan(cursor, prepare(&batch), &HashMap::new());
        assert_eq!(p.missing_span(), Some((4, 10)));
        account_refused(&mut p, &BTreeSet::from([5, 8, 10, 42]));
        assert_eq!(p.outcome.gaps, vec![(4, 4), (6, 7)]);
        assert_eq!(p.outcome.refused, vec![5, 8, 10]);
        assert_eq!(
            p.gaps
                .iter()
                .map(|g| (g.first_seq, g.last_seq))
                .collect::<Vec<_>>(),
            vec![(4, 4), (6, 7)]
        );
        assert_eq!(p.outcome.committed_seq, 11);
    }

    #[test]
    fn a_refused_seq_never_hides_a_chain_break() {
        let cursor = AgentCursor {
            committed_seq: 3,
            committed_hash: [3; 32],
        };
        let batch = [rec(4, 42, 4)];
        let mut p = plan(cursor, prepare(&batch), &HashMap::new());
        assert_eq!(p.missing_span(), None);
        account_refused(&mut p, &BTreeSet::from([4]));
        assert_eq!(p.outcome.chain_breaks, vec![4]);
        assert_eq!(p.gaps.len(), 1);
        assert!(p.outcome.refused.is_empty());
    }

    #[test]
    fn a_late_record_below_the_cursor_is_stored_without_moving_it() {
        let cursor = AgentCursor {
            committed_seq: 10,
            committed_hash: [10; 32],
        };
        let batch = [rec(5, 4, 5)];
        let p = plan(cursor, prepare(&batch), &HashMap::new());
        assert_eq!(p.outcome.inserted, 1);
        assert_eq!(
            (p.outcome.committed_seq, p.outcome.committed_hash),
            (10, [10; 32])
        );
        assert!(p.gaps.is_empty());
    }
}
