//! Criterion benchmarks of the record hash chain: the protocol 2 hash (BLAKE3, `compute_hash`) against the
//! protocol 1 hash (SHA-256, `compute_hash_v1`) over the same records in the same run, for a typical 300-byte
//! decision record and a 64 KiB one. The aggregator verifies one hash per ingested record and the agent seals one
//! per appended record, so this is the chain's whole cost per record.
//!
//! Run: `cargo bench -p gait-wire --bench record_hash`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gait_wire::{BundleRef, Record, RecordClass};

fn record(payload_len: usize) -> Record {
    let payload = vec![b'x'; payload_len];
    Record::sealed(
        42,
        [7; 32],
        RecordClass::Allow,
        "gate.decision",
        1_764_000_000_000,
        Some(BundleRef {
            epoch: 3,
            digest: [9; 32],
            since_unix_ms: 1_763_999_000_000,
        }),
        payload,
    )
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_hash");
    for len in [300usize, 64 * 1024] {
        let r = record(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("blake3_v2", len), &r, |b, r| {
            b.iter(|| black_box(r).compute_hash())
        });
        group.bench_with_input(BenchmarkId::new("sha256_v1", len), &r, |b, r| {
            b.iter(|| black_box(r).compute_hash_v1())
        });
    }
    group.finish();
}

criterion_group!(record_hash_benches, benches);
criterion_main!(record_hash_benches);
