//! Criterion benchmarks: signing + serializing a gate trace, verifying a signed trace, and verifying the
//! conformance runpack from bytes already in memory.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gait_artifact::GoTime;
use gait_artifact::runpack::{RunpackSource, VerifyOptions, verify_runpack};
use gait_artifact::trace::{self, TraceRecord, sign_trace, verify_trace};
use gait_canon::sign::SigningKey;

const RUNPACK: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/artifacts/runpack_run_demo.zip"
));

fn record() -> TraceRecord {
    let digest = "56306d8bd752d5b462e3f017d2482ce575985e3ef673945c39a1a58411214149";
    let observed = GoTime::parse("2026-11-24T12:24:28.86346774Z").unwrap_or_default();
    let id = trace::trace_id(digest, digest, "block");
    TraceRecord {
        schema_id: trace::TRACE_SCHEMA_ID.into(),
        schema_version: "1.0.0".into(),
        created_at: GoTime::parse("2026-02-09T00:00:00Z").unwrap_or_default(),
        observed_at: observed,
        producer_version: "0.1.0".into(),
        event_id: trace::event_id(&id, &observed),
        trace_id: id,
        tool_name: "tool.write".into(),
        args_digest: digest.into(),
        intent_digest: digest.into(),
        policy_digest: digest.into(),
        policy_id: "gait.gate.policy".into(),
        policy_version: "1.0.0".into(),
        verdict: "block".into(),
        violations: vec![
            "endpoint_path_denied".into(),
            "endpoint_policy_violation".into(),
        ],
        latency_ms: 0.144134,
        ..TraceRecord::default()
    }
}

fn benches(c: &mut Criterion) {
    let key = SigningKey::from_seed(&[1; 32]);
    let public = key.public_key();
    let template = record();
    c.bench_function("trace_sign_and_serialize", |b| {
        b.iter(|| black_box(sign_trace(black_box(template.clone()), &key).to_pretty_json()))
    });
    let signed = sign_trace(record(), &key).to_pretty_json();
    c.bench_function("trace_verify", |b| {
        b.iter(|| black_box(verify_trace(black_box(&signed), &public).map(|o| o.ok())))
    });
    c.bench_function("runpack_verify_conformance_demo", |b| {
        b.iter(|| {
            let source = RunpackSource::Bytes {
                bytes: black_box(RUNPACK),
                path: "runpack_run_demo.zip",
            };
            black_box(verify_runpack(source, VerifyOptions::default()).map(|r| r.ok))
        })
    });
}

criterion_group!(artifact, benches);
criterion_main!(artifact);
