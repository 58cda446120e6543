//! Outbox throughput: durable single appends vs group commits of 100, and the sender's peek+ack cycle.
//!
//! Run: `cargo bench -p gait-agent --bench outbox`. Files live under the target dir (a real disk), not /tmp,
//! because each commit waits for fsync and tmpfs would make that free.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gait_agent::db::AgentDb;
use gait_agent::outbox::{NewRecord, Outbox, OutboxLimits};
use gait_wire::{BundleRef, RecordClass};

const PAYLOAD: usize = 256;
const GROUP: usize = 100;
const LIMITS: OutboxLimits = OutboxLimits {
    max_records: u64::MAX / 4,
    max_bytes: u64::MAX / 4,
};

fn record(i: usize) -> NewRecord {
    NewRecord {
        class: RecordClass::Block,
        kind: "gate.decision".into(),
        created_unix_ms: 1_700_000_000_000 + i as i64,
        bundle: Some(BundleRef {
            epoch: 3,
            digest: [0x42; 32],
            since_unix_ms: 1_699_000_000_000,
        }),
        payload: vec![b'{'; PAYLOAD],
    }
}

fn fresh() -> (tempfile::TempDir, AgentDb, Outbox) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target");
    let db = AgentDb::open(dir.path().join("bench.redb")).expect("open bench db");
    let outbox = Outbox::open(&db, LIMITS).expect("open outbox");
    (dir, db, outbox)
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_append_durable");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));

    let (_dir, _db, outbox) = fresh();
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_commit_per_record", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(outbox.append(record(i)).expect("append"))
        })
    });

    let (_dir, _db, outbox) = fresh();
    group.throughput(Throughput::Elements(GROUP as u64));
    group.bench_function("group_commit_of_100", |b| {
        b.iter_batched(
            || (0..GROUP).map(record).collect::<Vec<_>>(),
            |recs| black_box(outbox.append_many(recs).expect("append_many")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn peek_and_ack(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_drain");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(GROUP as u64));
    let (_dir, _db, outbox) = fresh();
    group.bench_function("peek_100_then_ack", |b| {
        b.iter_batched(
            // Setup (not timed): one group commit of 100 records to drain.
            || {
                outbox
                    .append_many((0..GROUP).map(record).collect())
                    .expect("fill")
            },
            |_| {
                let after = outbox.stats().acked_through;
                let batch = outbox.peek_batch(after, GROUP, usize::MAX).expect("peek");
                let last = batch.last().map(|r| r.seq).expect("non-empty batch");
                black_box(outbox.ack_through(last).expect("ack"))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, appends, peek_and_ack);
criterion_main!(benches);
