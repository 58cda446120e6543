//! Outbox tests: a proptest model check against an in-memory queue, plus the quota, ack, recovery and
//! corruption rules one by one.

use std::collections::VecDeque;
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn new_record(class: RecordClass, payload_len: usize) -> NewRecord {
    NewRecord {
        class,
        kind: format!("test.{}", class.as_str()),
        created_unix_ms: 1_700_000_000_000 + payload_len as i64,
        bundle: payload_len.is_multiple_of(2).then_some(BundleRef {
            epoch: 7,
            digest: [0xab; 32],
            since_unix_ms: 1_699_000_000_000,
        }),
        payload: vec![b'x'; payload_len],
    }
}

fn open_at(path: &Path, limits: OutboxLimits) -> (AgentDb, Outbox) {
    let db = AgentDb::open(path).unwrap();
    let outbox = Outbox::open(&db, limits).unwrap();
    (db, outbox)
}

fn everything(outbox: &Outbox) -> Vec<Record> {
    outbox.peek_batch(0, usize::MAX, usize::MAX).unwrap()
}

fn encoded_len(record: &Record) -> u64 {
    postcard::to_allocvec(record).unwrap().len() as u64
}

/// The reference: a queue in memory with the quota rules written out plainly.
#[derive(Clone, Debug)]
struct Model {
    limits: OutboxLimits,
    queue: VecDeque<Record>,
    last_seq: u64,
    last_hash: [u8; 32],
    shed_total: u64,
    acked_through: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelError {
    Full,
    AckBeyondLastSeq,
}

impl Model {
    fn new(limits: OutboxLimits) -> Self {
        Model {
            limits,
            queue: VecDeque::new(),
            last_seq: 0,
            last_hash: GENESIS_HASH,
            shed_total: 0,
            acked_through: 0,
        }
    }

    fn bytes(&self) -> u64 {
        self.queue.iter().map(encoded_len).sum()
    }

    fn append_many(&mut self, recs: Vec<NewRecord>) -> Result<Vec<AppendOutcome>, ModelError> {
        let mut next = self.clone();
        let mut out = Vec::new();
        for r in recs {
            let record = Record::sealed(
                next.last_seq + 1,
                next.last_hash,
                r.class,
                r.kind,
                r.created_unix_ms,
                r.bundle,
                r.payload,
            );
            let count = next.queue.len() as u64 + 1;
            let bytes = next.bytes() + encoded_len(&record);
            let over_soft = count > self.limits.max_records || bytes > self.limits.max_bytes;
            let over_hard =
                count > 2 * self.limits.max_records || bytes > 2 * self.limits.max_bytes;
            if record.class == RecordClass::Allow && over_soft {
                next.shed_total += 1;
                out.push(AppendOutcome::Shed);
            } else if over_hard {
                return Err(ModelError::Full);
            } else {
                next.last_seq = record.seq;
                next.last_hash = record.hash;
                out.push(AppendOutcome::Appended { seq: record.seq });
                next.queue.push_back(record);
            }
        }
        *self = next;
        Ok(out)
    }

    fn peek(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut total = 0;
        for r in self.queue.iter().filter(|r| r.seq > after) {
            if out.len() == max_records {
                break;
            }
            let size = encoded_len(r) as usize;
            if !out.is_empty() && total + size > max_bytes {
                break;
            }
            total += size;
            out.push(r.clone());
        }
        out
    }

    fn ack(&mut self, seq: u64) -> Result<u64, ModelError> {
        if seq > self.last_seq && seq > self.acked_through {
            return Err(ModelError::AckBeyondLastSeq);
        }
        let before = self.queue.len();
        self.queue.retain(|r| r.seq > seq);
        self.acked_through = self.acked_through.max(seq);
        Ok((before - self.queue.len()) as u64)
    }

    fn stats(&self) -> OutboxStats {
        OutboxStats {
            depth: self.queue.len() as u64,
            bytes: self.bytes(),
            last_seq: self.last_seq,
            last_hash: self.last_hash,
            shed_total: self.shed_total,
            oldest_seq: self.queue.front().map(|r| r.seq),
            acked_through: self.acked_through,
        }
    }
}

fn model_error(e: &OutboxError) -> Option<ModelError> {
    match e {
        OutboxError::Full { .. } => Some(ModelError::Full),
        OutboxError::AckBeyondLastSeq { .. } => Some(ModelError::AckBeyondLastSeq),
        _ => None,
    }
}

/// The outbox and the model agree on the value, or both fail with the same kind of error.
fn same<T: PartialEq + std::fmt::Debug>(
    got: &Result<T, OutboxError>,
    want: &Result<T, ModelError>,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
        (Err(g), Err(w)) => prop_assert_eq!(model_error(g), Some(*w)),
        _ => prop_assert!(false, "outbox {:?} vs model {:?}", got, want),
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Append(RecordClass, usize),
    AppendMany(Vec<(RecordClass, usize)>),
    /// `after` = acked_through - 2 + offset, clamped at 0.
    Peek {
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    },
    /// seq = acked_through - 1 + offset, clamped at 0 (so below, at and beyond the live range).
    Ack {
        offset: u64,
    },
    Reopen,
}

fn class() -> impl Strategy<Value = RecordClass> {
    prop::sample::select(RecordClass::ALL.to_vec())
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..64, 1 => 64usize..600]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (class(), payload_len()).prop_map(|(c, n)| Op::Append(c, n)),
        3 => prop::collection::vec((class(), payload_len()), 0..8).prop_map(Op::AppendMany),
        2 => (0u64..8, 0usize..6, 0usize..1500)
            .prop_map(|(offset, max_records, max_bytes)| Op::Peek { offset, max_records, max_bytes }),
        3 => (0u64..10).prop_map(|offset| Op::Ack { offset }),
        1 => Just(Op::Reopen),
    ]
}

fn limits() -> impl Strategy<Value = OutboxLimits> {
    (1u64..8, 150u64..3000).prop_map(|(max_records, max_bytes)| OutboxLimits {
        max_records,
        max_bytes,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn outbox_behaves_like_an_in_memory_queue_across_reopens(
        limits in limits(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let mut model = Model::new(limits);
        let mut handle = Some(open_at(&path, limits));
        for op in ops {
            let (_, outbox) = handle.as_ref().unwrap();
            match op {
                Op::Append(class, len) => {
                    let got = outbox.append(new_record(class, len)).map(|o| vec![o]);
                    let want = model.append_many(vec![new_record(class, len)]);
                    same(&got, &want)?;
                }
                Op::AppendMany(specs) => {
                    let recs: Vec<_> = specs.iter().map(|(c, n)| new_record(*c, *n)).collect();
                    let got = outbox.append_many(recs.clone());
                    let want = model.append_many(recs);
                    same(&got, &want)?;
                }
                Op::Peek { offset, max_records, max_bytes } => {
                    let after = (model.acked_through + offset).saturating_sub(2);
                    let got = outbox.peek_batch(after, max_records, max_bytes).unwrap();
                    prop_assert_eq!(got, model.peek(after, max_records, max_bytes));
                }
                Op::Ack { offset } => {
                    let seq = (model.acked_through + offset).saturating_sub(1);
                    let got = outbox.ack_through(seq);
                    let want = model.ack(seq);
                    same(&got, &want)?;
                }
                Op::Reopen => {
                    drop(handle.take());
                    handle = Some(open_at(&path, limits));
                }
            }
            let (_, outbox) = handle.as_ref().unwrap();
            prop_assert_eq!(outbox.stats(), model.stats());
        }
        let (_, outbox) = handle.as_ref().unwrap();
        prop_assert_eq!(everything(outbox), Vec::from(model.queue.clone()));
        outbox.verify_chain().unwrap();
        drop(handle.take());
        let (_, reopened) = open_at(&path, limits);
        prop_assert_eq!(reopened.stats(), model.stats());
        prop_assert_eq!(everything(&reopened), Vec::from(model.queue.clone()));
        let report = reopened.verify_chain().unwrap();
        prop_assert_eq!(report.records, model.queue.len() as u64);
    }
}

const ROOMY: OutboxLimits = OutboxLimits {
    max_records: 1000,
    max_bytes: 1 << 30,
};

#[test]
fn seqs_start_at_one_chain_from_genesis_and_are_not_reused_after_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    let outcomes = outbox
        .append_many((0..3).map(|i| new_record(RecordClass::Block, i)).collect())
        .unwrap();
    assert_eq!(
        outcomes,
        (1..=3)
            .map(|seq| AppendOutcome::Appended { seq })
            .collect::<Vec<_>>()
    );
    let stored = everything(&outbox);
    assert_eq!(stored[0].prev_hash, GENESIS_HASH);
    assert_eq!(stored[1].prev_hash, stored[0].hash);
    assert_eq!(stored[2].prev_hash, stored[1].hash);
    assert!(stored.iter().all(Record::verify_hash));

    assert_eq!(outbox.ack_through(3).unwrap(), 3);
    assert_eq!(outbox.stats().depth, 0);
    assert_eq!(outbox.stats().oldest_seq, None);
    assert_eq!(
        outbox.append(new_record(RecordClass::Status, 1)).unwrap(),
        AppendOutcome::Appended { seq: 4 }
    );
    let fourth = everything(&outbox);
    assert_eq!(fourth.len(), 1);
    assert_eq!(fourth[0].seq, 4);
    assert_eq!(fourth[0].prev_hash, stored[2].hash);
}

#[test]
fn ack_is_idempotent_and_an_ack_beyond_the_last_seq_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    for i in 0..5 {
        outbox.append(new_record(RecordClass::Block, i)).unwrap();
    }
    assert_eq!(outbox.ack_through(2).unwrap(), 2);
    assert_eq!(outbox.ack_through(2).unwrap(), 0);
    assert_eq!(outbox.ack_through(1).unwrap(), 0);
    let err = outbox.ack_through(6).unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::AckBeyondLastSeq {
                acked: 6,
                last_seq: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!(outbox.stats().depth, 3);
    assert_eq!(outbox.stats().oldest_seq, Some(3));
    assert_eq!(outbox.ack_through(5).unwrap(), 3);
}

#[test]
fn allows_are_shed_above_the_soft_quota_blocks_fill_to_the_hard_ceiling_then_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let limits = OutboxLimits {
        max_records: 3,
        max_bytes: 1 << 20,
    };
    let (db, outbox) = open_at(&path, limits);
    for _ in 0..3 {
        assert!(matches!(
            outbox.append(new_record(RecordClass::Allow, 10)).unwrap(),
            AppendOutcome::Appended { .. }
        ));
    }
    // Soft quota reached: a new allow is shed without consuming a seq.
    assert_eq!(
        outbox.append(new_record(RecordClass::Allow, 10)).unwrap(),
        AppendOutcome::Shed
    );
    assert_eq!(outbox.stats().shed_total, 1);
    assert_eq!(outbox.stats().last_seq, 3);
    // Blocks and the other non-sheddable classes still go in, up to 2x.
    for class in [
        RecordClass::Block,
        RecordClass::Approval,
        RecordClass::ArtifactDigest,
    ] {
        assert!(matches!(
            outbox.append(new_record(class, 10)).unwrap(),
            AppendOutcome::Appended { .. }
        ));
    }
    assert_eq!(outbox.stats().depth, 6);
    let err = outbox
        .append(new_record(RecordClass::Status, 10))
        .unwrap_err();
    assert!(matches!(err, OutboxError::Full { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("is full"), "{err}");
    // Allows keep being shed (not refused) at the ceiling.
    assert_eq!(
        outbox.append(new_record(RecordClass::Allow, 10)).unwrap(),
        AppendOutcome::Shed
    );
    assert_eq!(outbox.stats().shed_total, 2);
    assert_eq!(outbox.stats().depth, 6);

    drop(outbox);
    drop(db);
    let (_db, reopened) = open_at(&path, limits);
    assert_eq!(reopened.stats().shed_total, 2);
    assert_eq!(reopened.stats().depth, 6);
    // Draining makes room again.
    reopened.ack_through(4).unwrap();
    assert!(matches!(
        reopened.append(new_record(RecordClass::Allow, 10)).unwrap(),
        AppendOutcome::Appended { seq: 7 }
    ));
}

#[test]
fn byte_quota_sheds_allows_and_refuses_blocks_at_twice_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let limits = OutboxLimits {
        max_records: 1000,
        max_bytes: 1000,
    };
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), limits);
    // Each record is ~500 bytes encoded: two fit the soft quota, four the hard ceiling.
    let mut appended = 0;
    while let AppendOutcome::Appended { .. } =
        outbox.append(new_record(RecordClass::Allow, 400)).unwrap()
    {
        appended += 1;
    }
    assert_eq!(appended, 1);
    assert!(outbox.stats().bytes <= 1000);
    let mut blocks = 0;
    let err = loop {
        match outbox.append(new_record(RecordClass::Block, 400)) {
            Ok(_) => blocks += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, OutboxError::Full { .. }), "{err:?}");
    assert_eq!(blocks, 2);
    assert!(outbox.stats().bytes <= 2000);
}

#[test]
fn a_batch_that_would_cross_the_hard_ceiling_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = OutboxLimits {
        max_records: 2,
        max_bytes: 1 << 20,
    };
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), limits);
    let batch = vec![
        new_record(RecordClass::Block, 1),
        new_record(RecordClass::Block, 1),
        new_record(RecordClass::Allow, 1),
        new_record(RecordClass::Block, 1),
        new_record(RecordClass::Block, 1),
        new_record(RecordClass::Block, 1),
    ];
    let err = outbox.append_many(batch).unwrap_err();
    assert!(matches!(err, OutboxError::Full { .. }), "{err:?}");
    let stats = outbox.stats();
    assert_eq!((stats.depth, stats.last_seq, stats.shed_total), (0, 0, 0));
    assert!(everything(&outbox).is_empty());
}

#[test]
fn oversized_payload_and_kind_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    let mut big = new_record(RecordClass::Block, MAX_PAYLOAD_BYTES + 1);
    big.kind = "artifact.runpack".into();
    let err = outbox.append(big).unwrap_err();
    assert!(
        matches!(
            &err,
            OutboxError::InvalidRecord {
                source: gait_wire::RecordError::PayloadTooLarge { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("artifact.runpack") && msg.contains(&MAX_PAYLOAD_BYTES.to_string()),
        "{msg}"
    );

    let mut long_kind = new_record(RecordClass::Block, 1);
    long_kind.kind = "k".repeat(MAX_KIND_BYTES + 1);
    assert!(matches!(
        outbox.append(long_kind).unwrap_err(),
        OutboxError::InvalidRecord {
            source: gait_wire::RecordError::Kind { .. },
            ..
        }
    ));
    assert_eq!(outbox.stats().last_seq, 0);
    // Exactly at the limit is fine.
    assert!(
        outbox
            .append(new_record(RecordClass::Block, MAX_PAYLOAD_BYTES))
            .is_ok()
    );
}

#[test]
fn peek_returns_an_oversized_first_record_alone_and_respects_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    outbox.append(new_record(RecordClass::Block, 5000)).unwrap();
    for _ in 0..4 {
        outbox.append(new_record(RecordClass::Block, 100)).unwrap();
    }
    let first = outbox.peek_batch(0, 10, 1000).unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    let all = everything(&outbox);
    let two_and_three = (encoded_len(&all[1]) + encoded_len(&all[2])) as usize;
    let next = outbox.peek_batch(1, 10, two_and_three).unwrap();
    assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    let next = outbox.peek_batch(1, 10, two_and_three - 1).unwrap();
    assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    let next = outbox.peek_batch(1, 2, usize::MAX).unwrap();
    assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(outbox.peek_batch(5, 10, 1000).unwrap().is_empty());
    assert!(outbox.peek_batch(u64::MAX, 10, 1000).unwrap().is_empty());
}

#[test]
fn an_empty_outbox_continues_after_the_aggregators_committed_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let (db, outbox) = open_at(&path, ROOMY);
    assert!(!outbox.adopt_committed_head(0, GENESIS_HASH).unwrap());
    assert!(outbox.adopt_committed_head(41, [9; 32]).unwrap());
    let AppendOutcome::Appended { seq } = outbox.append(new_record(RecordClass::Block, 1)).unwrap()
    else {
        panic!("block was shed");
    };
    assert_eq!(seq, 42);
    assert_eq!(everything(&outbox)[0].prev_hash, [9; 32]);
    drop((db, outbox));
    let (_db, outbox) = open_at(&path, ROOMY);
    outbox.verify_chain().unwrap();
    let err = outbox.adopt_committed_head(100, [1; 32]).unwrap_err();
    assert!(matches!(err, OutboxError::Diverged { .. }), "{err:?}");
    assert_eq!(outbox.stats().last_seq, 42);
}

#[test]
fn clones_append_concurrently_into_one_contiguous_chain() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<Outbox>();

    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(
                        |i| match outbox.append(new_record(RecordClass::Block, i)).unwrap() {
                            AppendOutcome::Appended { seq } => seq,
                            AppendOutcome::Shed => 0,
                        },
                    )
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let report = outbox.verify_chain().unwrap();
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (100, Some(1), Some(100))
    );
}

/// Rewrites the stored value of `seq` (simulating damage redb's checksums would not see, e.g. a bug).
fn overwrite_record(db: &AgentDb, seq: u64, value: &[u8]) {
    let txn = db.redb().begin_write().unwrap();
    txn.open_table(RECORDS)
        .unwrap()
        .insert(seq.to_be_bytes(), value)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn verify_chain_catches_a_tampered_or_relinked_record() {
    let dir = tempfile::tempdir().unwrap();
    let (db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    for i in 0..4 {
        outbox.append(new_record(RecordClass::Block, i)).unwrap();
    }
    outbox.verify_chain().unwrap();

    let mut records = everything(&outbox);
    let original = postcard::to_allocvec(&records[1]).unwrap();
    records[1].payload.push(b'!');
    overwrite_record(&db, 2, &postcard::to_allocvec(&records[1]).unwrap());
    let err = outbox.verify_chain().unwrap_err();
    assert!(
        matches!(err, OutboxError::Corrupt { seq: 2, .. }),
        "{err:?}"
    );

    // A record re-sealed with a valid hash of its own but a wrong link is caught too.
    let relinked = Record::sealed(2, [7; 32], RecordClass::Block, "x", 0, None, Vec::new());
    overwrite_record(&db, 2, &postcard::to_allocvec(&relinked).unwrap());
    let err = outbox.verify_chain().unwrap_err();
    assert!(err.to_string().contains("prev_hash"), "{err}");

    overwrite_record(&db, 2, &original);
    outbox.verify_chain().unwrap();
    overwrite_record(&db, 3, b"\xff\xff not postcard");
    assert!(matches!(
        outbox.peek_batch(0, 10, usize::MAX).unwrap_err(),
        OutboxError::Corrupt { seq: 3, .. }
    ));
}

#[test]
fn open_refuses_a_file_whose_newest_record_disagrees_with_meta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    {
        let (db, outbox) = open_at(&path, ROOMY);
        for i in 0..3 {
            outbox.append(new_record(RecordClass::Block, i)).unwrap();
        }
        let forged = Record::sealed(3, [1; 32], RecordClass::Block, "x", 0, None, Vec::new());
        overwrite_record(&db, 3, &postcard::to_allocvec(&forged).unwrap());
    }
    let db = AgentDb::open(&path).unwrap();
    let err = Outbox::open(&db, ROOMY).unwrap_err();
    assert!(
        matches!(err, OutboxError::Corrupt { seq: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn zero_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = AgentDb::open(dir.path().join("a.redb")).unwrap();
    for limits in [
        OutboxLimits {
            max_records: 0,
            max_bytes: 1,
        },
        OutboxLimits {
            max_records: 1,
            max_bytes: 0,
        },
    ] {
        assert!(matches!(
            Outbox::open(&db, limits).unwrap_err(),
            OutboxError::InvalidLimits(_)
        ));
    }
}

fn append_n(outbox: &Outbox, n: usize) {
    for _ in 0..n {
        outbox.append(new_record(RecordClass::Block, 8)).unwrap();
    }
}

#[test]
fn quarantine_moves_only_the_oldest_record_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    {
        let (_db, outbox) = open_at(&path, ROOMY);
        append_n(&outbox, 3);
        let err = outbox
            .quarantine_oldest(2, "record_kind_invalid", "too long", 5)
            .unwrap_err();
        assert!(
            matches!(
                err,
                OutboxError::NotOldest {
                    seq: 2,
                    oldest: Some(1)
                }
            ),
            "{err:?}"
        );
        let outcome = outbox
            .quarantine_oldest(1, "record_kind_invalid", "kind is 65 bytes", 5)
            .unwrap();
        assert_eq!(
            outcome,
            QuarantineOutcome::Quarantined { seq: 1, dropped: 0 }
        );
        assert_eq!(
            outbox
                .quarantine_oldest(1, "record_kind_invalid", "again", 6)
                .unwrap(),
            QuarantineOutcome::NotWaiting
        );
        let stats = outbox.stats();
        assert_eq!(
            (stats.depth, stats.acked_through, stats.oldest_seq),
            (2, 1, Some(2))
        );
        assert_eq!(outbox.quarantine_stats().held, 1);
        // The records after it are still shipped, and acking them deletes exactly them.
        let batch = outbox
            .peek_batch(stats.acked_through, 10, usize::MAX)
            .unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        outbox.verify_chain().unwrap();
    }
    // Crash-safe: a fresh open (as after a restart) sees the same quarantine and outbox.
    let (db, outbox) = open_at(&path, ROOMY);
    assert_eq!(
        outbox.quarantine_stats(),
        QuarantineStats {
            held: 1,
            bytes: outbox.quarantine_stats().bytes,
            total: 1,
            dropped: 0
        }
    );
    assert_eq!(outbox.stats().acked_through, 1);
    assert_eq!(outbox.ack_through(3).unwrap(), 2);
    let (stats, records) = quarantine::read(&db).unwrap();
    assert_eq!(stats.held, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.seq, 1);
    assert!(records[0].record.verify_hash());
    assert_eq!(records[0].code, "record_kind_invalid");
    assert_eq!(records[0].quarantined_unix_ms, 5);
    let json = records[0].to_json();
    assert_eq!(json["seq"], 1);
    assert_eq!(json["code"], "record_kind_invalid");
}

#[test]
fn a_full_quarantine_drops_its_oldest_entries_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = AgentDb::open(dir.path().join("a.redb")).unwrap();
    let outbox = Outbox::open_with_quarantine(
        &db,
        ROOMY,
        QuarantineLimits {
            max_records: 2,
            max_bytes: u64::MAX,
        },
    )
    .unwrap();
    append_n(&outbox, 4);
    for seq in 1..=3 {
        outbox
            .quarantine_oldest(seq, "record_hash_mismatch", "x", 0)
            .unwrap();
    }
    let q = outbox.quarantine_stats();
    assert_eq!((q.held, q.total, q.dropped), (2, 3, 1));
    let (_, records) = quarantine::read(&db).unwrap();
    assert_eq!(
        records.iter().map(|r| r.record.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(outbox.stats().oldest_seq, Some(4));
}

#[test]
fn records_sealed_under_protocol_version_1_are_resealed_on_open_and_still_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let anchor = [0x5a; 32];
    {
        let (_db, outbox) = open_at(&path, ROOMY);
        // The aggregator already holds seqs 1..=2; the old build's chain continues from its stored hash.
        outbox.adopt_committed_head(2, anchor).unwrap();
        append_n(&outbox, 3);
        // Rewrite the waiting records as an older build would have sealed them (SHA-256, v1 tag).
        let write = outbox.db().redb().begin_write().unwrap();
        let mut prev = anchor;
        {
            let mut table = write.open_table(RECORDS).unwrap();
            for seq in 3..=5u64 {
                let bytes = table
                    .get(seq.to_be_bytes())
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec();
                let mut r: Record = postcard::from_bytes(&bytes).unwrap();
                r.prev_hash = prev;
                r.hash = r.compute_hash_v1();
                prev = r.hash;
                let v = postcard::to_allocvec(&r).unwrap();
                table.insert(seq.to_be_bytes(), v.as_slice()).unwrap();
            }
            let mut meta_table = write.open_table(META).unwrap();
            let mut meta = read_meta(&meta_table).ok().unwrap();
            meta.last_hash = prev;
            let v = postcard::to_allocvec(&MetaOnDisk::V1(meta)).unwrap();
            meta_table.insert(META_KEY, v.as_slice()).unwrap();
        }
        write.commit().unwrap();
    }
    let (_db, outbox) = open_at(&path, ROOMY);
    outbox.verify_chain().unwrap();
    let records = everything(&outbox);
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0].prev_hash, anchor,
        "the chain still links to the aggregator's head"
    );
    assert!(records.iter().all(Record::verify_hash));
    assert_eq!(outbox.stats().last_hash, records[2].hash);
}

/// The ack rule of protocol version 3: a record listed in `BatchAck.conflicts` was NOT committed by the
/// aggregator, so it leaves the outbox only into the quarantine; the committed records around it are deleted.
#[test]
fn conflicting_records_are_quarantined_and_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, outbox) = open_at(&dir.path().join("agent.redb"), OutboxLimits::default());
    for n in 1..=6 {
        outbox.append(new_record(RecordClass::Block, n)).unwrap();
    }
    let before = everything(&outbox);
    let conflicts = [gait_wire::SeqRange { first: 2, last: 3 }];
    let outcome = outbox
        .ack_with_conflicts(4, &conflicts, "another instance wrote it", 42)
        .unwrap();
    assert_eq!(outcome.deleted, 2, "seqs 1 and 4 were committed");
    assert_eq!(outcome.quarantined, vec![2, 3]);
    let stats = outbox.stats();
    assert_eq!((stats.acked_through, stats.depth), (4, 2));
    assert_eq!(outbox.quarantine_stats().held, 2);

    // Idempotent: the same ack again changes nothing.
    let again = outbox
        .ack_with_conflicts(4, &conflicts, "another instance wrote it", 43)
        .unwrap();
    assert_eq!(again, AckOutcome::default());

    drop(outbox);
    let (_, held) = quarantine::read(&db).unwrap();
    let seqs: Vec<u64> = held.iter().map(|q| q.record.seq).collect();
    assert_eq!(seqs, vec![2, 3]);
    for q in &held {
        assert_eq!(q.code, "record_seq_conflict");
        assert_eq!(
            q.record,
            before[(q.record.seq - 1) as usize],
            "kept byte for byte"
        );
    }
}

#[test]
fn an_ack_beyond_the_outbox_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("agent.redb"), OutboxLimits::default());
    for n in 1..=3 {
        outbox.append(new_record(RecordClass::Block, n)).unwrap();
    }
    let e = outbox.ack_with_conflicts(9, &[], "", 1).unwrap_err();
    assert!(matches!(e, OutboxError::AckBeyondLastSeq { .. }), "{e}");
    assert_eq!(outbox.stats().depth, 3);
}

#[test]
fn hash_at_answers_only_for_waiting_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("agent.redb"), OutboxLimits::default());
    for n in 1..=3 {
        outbox.append(new_record(RecordClass::Block, n)).unwrap();
    }
    let records = everything(&outbox);
    assert_eq!(outbox.hash_at(2).unwrap(), Some(records[1].hash));
    outbox.ack_through(2).unwrap();
    assert_eq!(outbox.hash_at(2).unwrap(), None, "acknowledged");
    assert_eq!(outbox.hash_at(4).unwrap(), None, "never written");
    assert_eq!(outbox.hash_at(3).unwrap(), Some(records[2].hash));
}

/// The ack path trims the quarantine like the refusal path: conflicts that overflow it drop the oldest entries
/// (counted, and the counters survive a reopen), and the newest conflicts are the ones kept.
#[test]
fn conflicts_that_overflow_the_quarantine_drop_its_oldest_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let limits = QuarantineLimits {
        max_records: 2,
        max_bytes: u64::MAX,
    };
    {
        let db = AgentDb::open(&path).unwrap();
        let outbox = Outbox::open_with_quarantine(&db, ROOMY, limits).unwrap();
        append_n(&outbox, 6);
        outbox
            .quarantine_oldest(1, "record_hash_mismatch", "x", 0)
            .unwrap();
        let conflicts = [gait_wire::SeqRange { first: 3, last: 5 }];
        let outcome = outbox
            .ack_with_conflicts(6, &conflicts, "another instance wrote it", 7)
            .unwrap();
        assert_eq!(outcome.deleted, 2, "seqs 2 and 6 were committed");
        assert_eq!(outcome.quarantined, vec![3, 4, 5]);
        assert_eq!(outcome.dropped, 2, "seq 1 and seq 3 made room");
        let q = outbox.quarantine_stats();
        assert_eq!((q.held, q.total, q.dropped), (2, 4, 2));
    }
    let db = AgentDb::open(&path).unwrap();
    let outbox = Outbox::open_with_quarantine(&db, ROOMY, limits).unwrap();
    let q = outbox.quarantine_stats();
    assert_eq!((q.held, q.total, q.dropped), (2, 4, 2));
    drop(outbox);
    let (_, held) = quarantine::read(&db).unwrap();
    assert_eq!(
        held.iter().map(|r| r.record.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

#[test]
fn stats_do_not_wait_for_a_write_in_progress() {
    // An async caller (the shipper, the status API) reads the counters while the committer holds the writer
    // lock through its fsync; it must get the last committed counters at once, not wait for the commit.
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open_at(&dir.path().join("a.redb"), ROOMY);
    outbox.append(new_record(RecordClass::Block, 1)).unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let writing = &outbox;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            writing.append_in_transaction(|_, append| {
                let outcome = append(new_record(RecordClass::Block, 2))?;
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(outcome)
            })
        });
        entered_rx.recv().unwrap();
        // The write is open (its record not committed): the counters are those of the last commit.
        let during = outbox.stats();
        assert_eq!((during.last_seq, during.depth), (1, 1));
        release_tx.send(()).unwrap();
        assert_eq!(
            writer.join().unwrap().unwrap(),
            AppendOutcome::Appended { seq: 2 }
        );
    });
    assert_eq!((outbox.stats().last_seq, outbox.stats().depth), (2, 2));
}

#[test]
fn a_plain_ack_is_kept_across_a_reopen_and_a_conflict_ack_quarantines() {
    // A plain acknowledgement commits without fsync; closing the database (or the next durable append) makes
    // it durable, so a clean restart does not send acknowledged records again.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    {
        let (_db, outbox) = open_at(&path, ROOMY);
        for i in 0..4 {
            outbox.append(new_record(RecordClass::Block, i)).unwrap();
        }
        let settled = outbox.ack_with_conflicts(2, &[], "", 1).unwrap();
        assert!(settled.quarantined.is_empty());
        assert_eq!(outbox.stats().acked_through, 2);
    }
    let (_db, outbox) = open_at(&path, ROOMY);
    assert_eq!((outbox.stats().acked_through, outbox.stats().depth), (2, 2));
    assert_eq!(
        everything(&outbox)
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    let conflict = [gait_wire::SeqRange { first: 4, last: 4 }];
    let settled = outbox
        .ack_with_conflicts(4, &conflict, "another instance", 2)
        .unwrap();
    assert_eq!(settled.quarantined, vec![4]);
    assert_eq!(outbox.stats().depth, 0);
}

/// The child side of [`groups_answered_through_the_log_survive_an_abort`]: appends groups through a small log
/// (so it fills and starts over several times), prints each answered group, then aborts: no destructor runs,
/// so redb keeps nothing it did not sync.
fn abort_child(dir: &Path, with_applier: bool) -> ! {
    let (db, outbox) = open_at(&dir.join("agent.redb"), OutboxLimits::default());
    outbox.enable_log(wal::HEADER_LEN + 16 * 1024).unwrap();
    // With the applier beside the appends, as in the daemon, groups reach redb in commits without fsync (and
    // durably when a file of the log is left), some before the abort, some not. Without it, only the
    // committer's own moves between the two files put groups into redb, durably.
    let applier = with_applier.then(|| {
        let outbox = outbox.clone();
        std::thread::spawn(move || outbox.run_applier())
    });
    for group in 0..300i64 {
        let records = (0..1 + group % 5)
            .map(|i| new_record(RecordClass::Block, 100 + i as usize))
            .collect();
        let count = group + 1;
        let counters = vec![("window|scope|bucket|key".to_owned(), count)];
        outbox
            .append_logged(records, Some(counters.clone()), |txn| {
                crate::gate::ratelimit_counters::write_logged(&db, txn, &counters)?;
                Ok(())
            })
            .unwrap();
        println!("answered {} {count}", outbox.stats().last_seq);
    }
    if !with_applier {
        let pending = outbox.pending_lock();
        // 300 groups through a 16 KiB file pair moved between the files many times: the groups left in
        // memory are only those logged since the last move.
        assert!(
            pending.groups.len() < 300 && pending.durable.is_some(),
            "the committer's moves between the files should have applied groups durably ({} pending)",
            pending.groups.len()
        );
    }
    drop(applier);
    std::process::abort();
}

#[test]
fn groups_answered_through_the_log_survive_an_abort() {
    if let Some(dir) = std::env::var_os("GAIT_OUTBOX_ABORT_CHILD") {
        abort_child(Path::new(&dir), true);
    }
    abort_and_reopen("groups_answered_through_the_log_survive_an_abort");
}

/// The applier never runs: every move from one file of the log to the other must first make redb hold the
/// other file's groups durably, or the groups logged there before would be overwritten and lost at the abort.
#[test]
fn groups_answered_with_the_applier_behind_survive_an_abort() {
    if let Some(dir) = std::env::var_os("GAIT_OUTBOX_ABORT_CHILD") {
        abort_child(Path::new(&dir), false);
    }
    abort_and_reopen("groups_answered_with_the_applier_behind_survive_an_abort");
}

/// Runs `test` (one of the two above) as an aborting child, then reopens its database and checks that every
/// answered group is back.
fn abort_and_reopen(test: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("outbox::tests::{test}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GAIT_OUTBOX_ABORT_CHILD", dir.path())
        .output()
        .unwrap();
    // SIGABRT: the child reached its abort (a failed assertion in it exits with a code instead).
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(6),
        "the child should have aborted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (last_seq, count) = stdout
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("answered "))
        .filter_map(|l| l.split_once(' '))
        .map(|(s, c)| (s.parse::<u64>().unwrap(), c.parse::<i64>().unwrap()))
        .next()
        .unwrap_or_else(|| panic!("the child answered nothing: {stdout}"));
    assert_eq!(count, 300, "every group was answered before the abort");
    // The log was replayed: every answered record is back, chained, with the counter of the last group.
    let path = dir.path().join("agent.redb");
    let (db, outbox) = open_at(&path, OutboxLimits::default());
    assert_eq!(outbox.stats().last_seq, last_seq);
    assert_eq!(outbox.stats().depth, last_seq);
    assert_eq!(outbox.verify_chain().unwrap().records, last_seq);
    let counters = crate::gate::ratelimit_counters::load(&db).unwrap();
    assert_eq!(counters.get("window|scope|bucket|key"), Some(&300));
    // And the log started over: opening again restores nothing and changes nothing.
    drop(outbox);
    drop(db);
    let (_db, outbox) = open_at(&path, OutboxLimits::default());
    assert_eq!(outbox.stats().last_seq, last_seq);
}

/// A group whose counters cannot be logged (a rewrite of the table) commits durably; groups after it are
/// logged again, and a replay on top of it skips what redb already holds.
#[test]
fn a_group_that_cannot_be_logged_commits_durably_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let (_db, outbox) = open_at(&path, OutboxLimits::default());
    outbox
        .enable_log(wal::DEFAULT_CAPACITY.min(1 << 20))
        .unwrap();
    let log = |outbox: &Outbox| outbox.log_lock().wal.as_ref().map(wal::Wal::needs_reset);
    outbox
        .append_logged(
            vec![new_record(RecordClass::Block, 10)],
            Some(Vec::new()),
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!(log(&outbox), Some(true), "the first group is in the log");
    assert_eq!(
        outbox.unapplied_records(),
        1,
        "no applier ran: redb lacks it"
    );
    outbox
        .append_logged(vec![new_record(RecordClass::Block, 11)], None, |_| Ok(()))
        .unwrap();
    assert_eq!(
        log(&outbox),
        Some(false),
        "a durable commit starts the log over"
    );
    assert_eq!(
        outbox.unapplied_records(),
        0,
        "the durable commit applied the group before it"
    );
    outbox
        .append_logged(
            vec![new_record(RecordClass::Block, 12)],
            Some(Vec::new()),
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!(log(&outbox), Some(true));
    drop(outbox);
    drop(_db);
    let (_db, outbox) = open_at(&path, OutboxLimits::default());
    assert_eq!(outbox.stats().last_seq, 3);
    assert_eq!(outbox.verify_chain().unwrap().records, 3);
}

/// A replay applies only the frames after the position redb stores. Here redb holds both logged groups (the
/// applier wrote them without fsync, and a durable commit since made that durable) and a newer count
/// written durably since; replaying the frames' counts again would take the counter back.
#[test]
fn a_replay_skips_frames_the_stored_position_covers_and_never_regresses_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let key = "window|scope|bucket|key";
    {
        let (db, outbox) = open_at(&path, OutboxLimits::default());
        outbox.enable_log(1 << 20).unwrap();
        for count in [50i64, 60] {
            let counters = vec![(key.to_owned(), count)];
            outbox
                .append_logged(
                    vec![new_record(RecordClass::Block, 10)],
                    Some(counters.clone()),
                    |txn| {
                        crate::gate::ratelimit_counters::write_logged(&db, txn, &counters)?;
                        Ok(())
                    },
                )
                .unwrap();
        }
        outbox.apply_pending().unwrap();
        let txn = db.redb().begin_write().unwrap();
        crate::gate::ratelimit_counters::write_logged(&db, &txn, &[(key.to_owned(), 70)]).unwrap();
        txn.commit().unwrap();
        assert!(
            outbox
                .log_lock()
                .wal
                .as_ref()
                .is_some_and(wal::Wal::needs_reset),
            "both frames are still in the log"
        );
    }
    let (db, outbox) = open_at(&path, OutboxLimits::default());
    assert_eq!(outbox.stats().last_seq, 2);
    assert_eq!(outbox.verify_chain().unwrap().records, 2);
    let counters = crate::gate::ratelimit_counters::load(&db).unwrap();
    assert_eq!(counters.get(key), Some(&70));
}

/// A storage failure latches redb, and the re-open that heals it takes redb back to its last durable commit,
/// which lacks the groups committed through the log since. The first write after the re-open replays them,
/// even though the log itself had been marked failed, so no answered seq is handed out again.
#[test]
fn groups_a_reopen_took_back_are_replayed_before_the_next_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let db = AgentDb::open_failable(dir.path().join("agent.redb"), Arc::clone(&fail)).unwrap();
    let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
    outbox.enable_log(1 << 20).unwrap();
    let group = |len: usize| vec![new_record(RecordClass::Block, len)];
    for len in 10..13 {
        outbox
            .append_logged(group(len), Some(Vec::new()), |_| Ok(()))
            .unwrap();
    }
    if let Some(wal) = outbox.log_lock().wal.as_mut() {
        wal.mark_failed();
    }
    // The next group commits durably (the log is failed), and that commit fails: redb latches.
    fail.store(true, Ordering::Release);
    assert!(
        outbox
            .append_logged(group(20), Some(Vec::new()), |_| Ok(()))
            .is_err()
    );
    fail.store(false, Ordering::Release);
    assert!(db.heal().unwrap(), "the database was failing and is healed");
    assert_eq!(db.reopens(), 1, "healing re-opened the database");
    let (outcomes, _) = outbox
        .append_logged(group(30), Some(Vec::new()), |_| Ok(()))
        .unwrap();
    assert_eq!(outcomes, vec![AppendOutcome::Appended { seq: 4 }]);
    assert_eq!(outbox.verify_chain().unwrap().records, 4);
    assert_eq!(outbox.stats().last_seq, 4);
}
