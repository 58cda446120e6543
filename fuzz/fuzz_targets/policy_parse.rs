#![no_main]
//! Fuzz target policy_parse: arbitrary bytes through the strict policy parser, normalization and digest; any
//! accepted policy must digest deterministically and evaluate a fixed intent without panicking.

use std::sync::LazyLock;

use gait_policy::{
    EvalOptions, NormalizedIntent, evaluate, parse_and_normalize_intent, parse_policy_yaml,
};
use libfuzzer_sys::fuzz_target;

static INTENT: LazyLock<Option<NormalizedIntent>> = LazyLock::new(|| {
    parse_and_normalize_intent(
        br#"{"tool_name":"tool.write","args":{"path":"/etc/hosts"},
            "targets":[{"kind":"path","value":"/etc/hosts","operation":"delete"},
                       {"kind":"url","value":"https://api.example.com/x"}],
            "arg_provenance":[{"arg_path":"$.path","source":"external"}],
            "context":{"identity":"alice","workspace":"/repo","risk_class":"high"}}"#,
    )
    .ok()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = parse_policy_yaml(data) {
        let digest = policy.digest();
        assert_eq!(digest, policy.digest());
        if let Some(intent) = INTENT.as_ref() {
            let _ = evaluate(&policy, intent, &EvalOptions::default());
        }
    }
});
