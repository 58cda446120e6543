//! Criterion benchmarks: in-process evaluation of a typical intent against a typical pre-parsed policy, on its
//! own (intent already normalized) and with the work Gait's `EvaluatePolicyTypical` does per call (normalize and
//! digest the decoded intent, then evaluate), and intent parse + normalize + digest from bytes.
//!
//! Run: `cargo bench -p gait-policy --bench eval`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use gait_policy::{
    EvalOptions, evaluate, evaluate_request, parse_and_normalize_intent, parse_intent,
    parse_policy_yaml,
};

fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/gait"
    ))
    .join(rel);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) => panic!("benchmark fixture {} is unreadable: {err}", path.display()),
    }
}

fn benches(c: &mut Criterion) {
    let policy = match parse_policy_yaml(&fixture("examples/policy/base_high_risk.yaml")) {
        Ok(p) => p,
        Err(err) => panic!("base_high_risk.yaml: {err}"),
    };
    let intent_bytes = fixture("examples/policy/endpoint/fixtures/intent_block.json");
    let intent = match parse_and_normalize_intent(&intent_bytes) {
        Ok(i) => i,
        Err(err) => panic!("intent_block.json: {err}"),
    };
    let request = match parse_intent(&intent_bytes) {
        Ok(r) => r,
        Err(err) => panic!("intent_block.json: {err}"),
    };
    let opts = EvalOptions::default();

    c.bench_function("evaluate/base_high_risk+intent_block", |b| {
        b.iter(|| evaluate(black_box(&policy), black_box(&intent), black_box(&opts)))
    });
    c.bench_function("evaluate_request/normalize+digest+evaluate", |b| {
        b.iter(|| evaluate_request(black_box(&policy), black_box(&request), black_box(&opts)))
    });
    c.bench_function("intent/parse+normalize+digest", |b| {
        b.iter(|| parse_and_normalize_intent(black_box(&intent_bytes)))
    });
    c.bench_function("policy/digest/base_high_risk", |b| {
        b.iter(|| black_box(&policy).digest())
    });
}

criterion_group!(eval_benches, benches);
criterion_main!(eval_benches);
