#![no_main]
//! Fuzz target intent_parse: arbitrary bytes through Go-compatible intent decoding, normalization and digests;
//! an accepted intent must re-normalize to the same digest and evaluate against a fixed policy without panicking.

use std::sync::LazyLock;

use gait_policy::{EvalOptions, Policy, evaluate, parse_and_normalize_intent, parse_policy_yaml};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<Option<Policy>> = LazyLock::new(|| {
    parse_policy_yaml(
        b"default_verdict: block\nfail_closed: {enabled: true, required_fields: [targets]}\nrules:\n\
          - {name: reads, priority: 1, effect: allow, match: {endpoint_classes: [fs.read]}}\n\
          - name: egress\n  priority: 2\n  effect: allow\n  dataflow: {enabled: true}\n  endpoint: {domain_denylist: ['*.evil.example'], path_allowlist: ['/tmp/**'], destructive_action: require_approval}\n\
          - {name: ctx, priority: 2, effect: allow, require_context_evidence: true, max_context_age_seconds: 10}\n",
    )
    .ok()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(intent) = parse_and_normalize_intent(data) {
        let bytes = intent.canonical_bytes();
        assert_eq!(gait_canon::sha256_hex(&bytes), intent.intent_digest);
        if let Some(policy) = POLICY.as_ref() {
            let _ = evaluate(policy, &intent, &EvalOptions::default());
        }
    }
});
