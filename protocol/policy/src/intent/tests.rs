//! Intent parsing, normalization and digest unit tests.

use super::*;

const INTENT_BLOCK: &str = r#"{
  "schema_id": "gait.gate.intent_request",
  "schema_version": "1.0.0",
  "created_at": "2026-02-09T00:00:00Z",
  "producer_version": "0.0.0-example",
  "tool_name": "tool.write",
  "args": {"path": "/etc/hosts"},
  "targets": [{"kind": "path", "value": "/etc/hosts", "operation": "write", "endpoint_class": "fs.write"}],
  "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
  "context": {"identity": "ci-user", "workspace": "/tmp/gait", "risk_class": "high"}
}"#;

fn normalized(doc: &str) -> NormalizedIntent {
    parse_and_normalize_intent(doc.as_bytes()).unwrap()
}

#[test]
fn worked_example_canonical_bytes_match_the_contract() {
    let intent = normalized(INTENT_BLOCK);
    let expected = r#"{"arg_provenance":[{"arg_path":"$.path","source":"user"}],"args":{"path":"/etc/hosts"},"context":{"identity":"ci-user","phase":"apply","risk_class":"high","workspace":"/tmp/gait"},"targets":[{"discovery_method":"unknown","endpoint_class":"fs.write","kind":"path","operation":"write","value":"/etc/hosts"}],"tool_name":"tool.write"}"#;
    assert_eq!(
        String::from_utf8(intent.canonical_bytes()).unwrap(),
        expected
    );
    assert_eq!(
        intent.intent_digest,
        gait_canon::sha256_hex(expected.as_bytes())
    );
    assert_eq!(
        intent.args_digest,
        gait_canon::sha256_hex(br#"{"path":"/etc/hosts"}"#)
    );
}

#[test]
fn delegation_times_are_always_in_the_digest_even_when_zero() {
    let intent = normalized(
        r#"{"tool_name":"t","args":{},"targets":[],
            "delegation":{"requester_identity":"b","chain":[{"delegator_identity":"a","delegate_identity":"b",
              "issued_at":"2026-02-05T01:00:00+01:00"}]},
            "context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
    );
    let payload = intent.digest_payload();
    let d = &payload["delegation"];
    assert_eq!(d["issued_at"], "0001-01-01T00:00:00Z");
    assert_eq!(d["expires_at"], "0001-01-01T00:00:00Z");
    assert_eq!(d["chain"][0]["issued_at"], "2026-02-05T00:00:00Z");
    assert_eq!(d["chain"][0]["expires_at"], "0001-01-01T00:00:00Z");
    assert!(d.get("token_refs").is_none());
    assert!(intent.delegation_digest().is_some());
}

#[test]
fn delegation_that_expires_before_issue_is_rejected() {
    let err = parse_and_normalize_intent(
        br#"{"tool_name":"t","delegation":{"requester_identity":"b",
             "issued_at":"2026-02-05T00:00:00Z","expires_at":"2026-02-05T00:00:00Z"},
             "context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "normalize intent: delegation.expires_at must be after issued_at"
    );
}

#[test]
fn script_intents_get_tool_name_script_hash_and_step_targets() {
    let intent = normalized(
        r#"{"tool_name":"anything","args":{},"targets":[],
            "script":{"steps":[
              {"tool_name":"Tool.Read","args":{"path":" /tmp/in "},"targets":[{"kind":"path","value":"/tmp/in","operation":"read"}]},
              {"tool_name":"tool.write","args":{"path":"/tmp/out"},"targets":[{"kind":"path","value":"/tmp/out","operation":"write"}],
               "arg_provenance":[{"arg_path":"$.path","source":"USER"}]}]},
            "context":{"identity":"i","workspace":"w","risk_class":"medium"}}"#,
    );
    assert_eq!(intent.tool_name, "script");
    assert_eq!(
        intent.targets.len(),
        2,
        "top-level targets filled from the steps"
    );
    assert_eq!(intent.arg_provenance.len(), 1);
    let steps = intent.script.as_ref().unwrap();
    assert_eq!(steps[0].tool_name, "tool.read");
    assert_eq!(steps[0].args["path"], "/tmp/in");
    let expected_hash = gait_canon::digest_jcs(&serde_json::json!({"steps": [
        {"tool_name":"tool.read","args":{"path":"/tmp/in"},
         "targets":[{"kind":"path","value":"/tmp/in","operation":"read","endpoint_class":"fs.read","discovery_method":"unknown"}]},
        {"tool_name":"tool.write","args":{"path":"/tmp/out"},
         "targets":[{"kind":"path","value":"/tmp/out","operation":"write","endpoint_class":"fs.write","discovery_method":"unknown"}],
         "arg_provenance":[{"arg_path":"$.path","source":"user"}]}]}));
    assert_eq!(intent.script_hash, expected_hash);
    assert_eq!(
        intent.digest_payload()["script_hash"],
        expected_hash.as_str()
    );
}

#[test]
fn script_step_limits_are_enforced() {
    let err = parse_and_normalize_intent(
        br#"{"script":{"steps":[]},"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "normalize intent: script.steps must not be empty"
    );
    let step = r#"{"tool_name":"t","args":{}}"#;
    let many = format!(
        r#"{{"script":{{"steps":[{}]}},"context":{{"identity":"i","workspace":"w","risk_class":"low"}}}}"#,
        vec![step; MAX_SCRIPT_STEPS + 1].join(",")
    );
    let err = parse_and_normalize_intent(many.as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "normalize intent: script.steps exceeds max supported steps (64)"
    );
    let bad_step =
        br#"{"script":{"steps":[{"tool_name":"t","targets":[{"kind":"disk","value":"x"}]}]},
        "context":{"identity":"i","workspace":"w","risk_class":"low"}}"#;
    assert_eq!(
        parse_and_normalize_intent(bad_step)
            .unwrap_err()
            .to_string(),
        "normalize intent: normalize script.steps[0].targets: unsupported target kind: disk"
    );
}

#[test]
fn normalization_errors_use_gaits_wording() {
    let cases = [
        (
            r#"{"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "tool_name is required",
        ),
        (
            r#"{"tool_name":"t","context":{"workspace":"w","risk_class":"low"}}"#,
            "context.identity is required",
        ),
        (
            r#"{"tool_name":"t","context":{"identity":"i","workspace":"w","risk_class":"low","phase":"run"}}"#,
            "context.phase must be plan or apply",
        ),
        (
            r#"{"tool_name":"t","targets":[{"kind":"path"}],"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "targets require kind and value",
        ),
        (
            r#"{"tool_name":"t","targets":[{"kind":"path","value":"/a","endpoint_class":"fs.invalid"}],"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "unsupported endpoint class: fs.invalid",
        ),
        (
            r#"{"tool_name":"t","arg_provenance":[{"arg_path":"a","source":"rumor"}],"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "unsupported provenance source: rumor",
        ),
        (
            r#"{"tool_name":"t","skill_provenance":{"skill_name":"s","source":"r","publisher":"p","digest":"bad"},"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "invalid skill provenance digest: bad",
        ),
        (
            r#"{"tool_name":"t","args":{" ":1},"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
            "normalize args: args contains empty key",
        ),
        (
            r#"{"tool_name":"t","context":{"identity":"i","workspace":"w","risk_class":"low","context_set_digest":"xyz"}}"#,
            "context.context_set_digest must be sha256 hex",
        ),
    ];
    for (doc, message) in cases {
        let err = parse_and_normalize_intent(doc.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("normalize intent: {message}"),
            "{doc}"
        );
    }
}

#[test]
fn context_lists_and_auth_context_are_normalized() {
    let intent = normalized(
        r#"{"tool_name":"t","context":{"identity":"i","workspace":"w","risk_class":"low",
            "credential_scopes":[" b","a","b",""],"auth_context":{" k ":" v "},"context_refs":[]}}"#,
    );
    assert_eq!(intent.context.credential_scopes, ["a", "b"]);
    assert_eq!(intent.context.auth_context.as_ref().unwrap()["k"], "v");
    let empty_auth = normalized(
        r#"{"tool_name":"t","context":{"identity":"i","workspace":"w","risk_class":"low","auth_context":{}}}"#,
    );
    assert!(
        empty_auth.digest_payload()["context"]
            .get("auth_context")
            .is_none()
    );
}

#[test]
fn stripping_context_claims_changes_the_digest_only_when_claims_exist() {
    let plain = normalized(INTENT_BLOCK);
    assert_eq!(
        strip_context_evidence(&plain).intent_digest,
        plain.intent_digest
    );
    let with_claims = normalized(
        r#"{"tool_name":"tool.write","args":{"path":"/etc/hosts"},
            "targets":[{"kind":"path","value":"/etc/hosts","operation":"write","endpoint_class":"fs.write"}],
            "arg_provenance":[{"arg_path":"$.path","source":"user"}],
            "context":{"identity":"ci-user","workspace":"/tmp/gait","risk_class":"high",
              "context_set_digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
              "context_evidence_mode":"required","context_refs":["r1"],"auth_context":{"context_age_seconds":5}}}"#,
    );
    assert_ne!(with_claims.intent_digest, plain.intent_digest);
    let stripped = strip_context_evidence(&with_claims);
    assert_eq!(stripped.intent_digest, plain.intent_digest);
    assert!(stripped.context.auth_context.is_none());
}

#[test]
fn binding_an_envelope_replaces_claims_and_rejects_contradictions() {
    let intent = normalized(INTENT_BLOCK);
    let evidence = ContextEvidence {
        context_set_digest: "b".repeat(64),
        evidence_mode: "required".into(),
        context_refs: vec!["z".into(), "a".into(), "a".into()],
        context_age_seconds: 30,
    };
    let bound = prepare_for_evaluation(&intent, Some(&evidence)).unwrap();
    assert_eq!(bound.context.context_refs, ["a", "z"]);
    assert_eq!(
        bound.context.auth_context.as_ref().unwrap()["context_age_seconds"],
        30
    );
    assert_ne!(bound.intent_digest, intent.intent_digest);
    let mut claiming = intent.clone();
    claiming.context.context_evidence_mode = "best_effort".into();
    assert_eq!(
        prepare_for_evaluation(&claiming, Some(&evidence)).unwrap_err(),
        EvidenceError::ModeMismatch
    );
}

#[test]
fn approval_scope_adds_destructive_apply_for_destructive_targets() {
    let intent = normalized(INTENT_BLOCK);
    assert_eq!(intent.required_approval_scope(), ["tool:tool.write"]);
    let destructive = normalized(
        r#"{"tool_name":"tool.write","targets":[{"kind":"path","value":"/a","operation":"delete"}],
            "context":{"identity":"i","workspace":"w","risk_class":"high"}}"#,
    );
    assert_eq!(
        destructive.required_approval_scope(),
        ["destructive:apply", "phase:apply", "tool:tool.write"]
    );
}

#[test]
fn numbers_in_args_are_hashed_as_doubles() {
    let a = normalized(
        r#"{"tool_name":"t","args":{"n":1.0,"m":9007199254740993},"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
    );
    let b = normalized(
        r#"{"tool_name":"t","args":{"n":1,"m":9007199254740992},"context":{"identity":"i","workspace":"w","risk_class":"low"}}"#,
    );
    assert_eq!(
        a.args_digest, b.args_digest,
        "Go decodes both to the same float64 values"
    );
}

#[test]
fn oversized_intent_is_rejected_before_parsing() {
    let big = vec![b' '; MAX_INTENT_BYTES + 1];
    assert!(matches!(
        parse_intent(&big),
        Err(IntentError::TooLarge { .. })
    ));
}
