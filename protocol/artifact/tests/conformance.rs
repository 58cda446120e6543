//! Conformance against real Gait output (`shared/conformance`, `shared/fixtures/gait`): traces Gait signed
//! verify, tampering is caught, the demo runpack report matches `gait verify --json`, traces we sign pass the
//! independent Python checker, and the schema testdata pairs parse / are rejected.

use std::path::{Path, PathBuf};
use std::process::Command;

use gait_artifact::approval::{parse_approval_audit_record, parse_approval_token};
use gait_artifact::delegation::parse_delegation_token;
use gait_artifact::regress::parse_regress_result;
use gait_artifact::runpack::record::{parse_manifest, parse_refs, parse_run};
use gait_artifact::runpack::{RunpackSource, SignatureStatus, VerifyOptions, verify_runpack};
use gait_artifact::signed::{DigestBasis, SignatureFailure};
use gait_artifact::trace::{self, TraceRecord, parse_trace, sign_trace, verify_trace};
use gait_artifact::{DecodeError, GoTime};
use gait_canon::sign::{PublicKey, SigningKey, VerifyError, load_public_key_file, write_key_pair};

fn shared(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(rel)
}

fn artifact(name: &str) -> Vec<u8> {
    std::fs::read(shared("conformance/artifacts").join(name)).unwrap()
}

fn gait_key() -> PublicKey {
    load_public_key_file(&shared("conformance/artifacts/gait_public.key")).unwrap()
}

#[test]
fn gait_signed_traces_verify_over_the_typed_projection() {
    for name in ["trace_endpoint_allow.json", "trace_endpoint_block.json"] {
        let outcome = verify_trace(&artifact(name), &gait_key()).unwrap();
        assert!(outcome.ok(), "{name}: {:?}", outcome.failure);
        // The projection reproduces Gait's own bytes: no fallback needed.
        assert_eq!(outcome.basis, Some(DigestBasis::Projected), "{name}");
        outcome.record.validate().unwrap();
        let r = &outcome.record;
        assert_eq!(
            r.trace_id,
            trace::trace_id(&r.policy_digest, &r.intent_digest, &r.verdict)
        );
        assert_eq!(r.event_id, trace::event_id(&r.trace_id, &r.observed_at));
    }
}

#[test]
fn trace_verify_matches_gait_trace_verify_output() {
    let gait: serde_json::Value =
        serde_json::from_slice(&artifact("trace_verify_endpoint_block.stdout.json")).unwrap();
    let outcome = verify_trace(&artifact("trace_endpoint_block.json"), &gait_key()).unwrap();
    assert_eq!(gait["signature_status"], outcome.signature_status());
    assert_eq!(gait["key_id"], outcome.key_id.as_str());
    assert_eq!(gait["trace_id"], outcome.record.trace_id.as_str());
    assert_eq!(gait["verdict"], outcome.record.verdict.as_str());
    let eval: serde_json::Value =
        serde_json::from_slice(&artifact("gate_eval_endpoint_block.stdout.json")).unwrap();
    assert_eq!(eval["intent_digest"], outcome.record.intent_digest.as_str());
    assert_eq!(eval["policy_digest"], outcome.record.policy_digest.as_str());
}

#[test]
fn flipping_any_byte_of_the_signed_content_fails_verification() {
    let bytes = artifact("trace_endpoint_block.json");
    let text = String::from_utf8(bytes.clone()).unwrap();
    let signed_end = text.find("\"signature\"").unwrap();
    let key = gait_key();
    let mut failed = 0;
    let mut unparsable = 0;
    for i in 0..signed_end {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        match verify_trace(&tampered, &key) {
            Err(_) => unparsable += 1,
            Ok(outcome) => {
                assert!(
                    !outcome.ok(),
                    "flip at byte {i} ({:?}) still verified",
                    bytes[i] as char
                );
                failed += 1;
            }
        }
    }
    assert_eq!(failed + unparsable, signed_end);
    assert!(
        failed > 1000,
        "most flips keep valid JSON and must fail the digest ({failed})"
    );
}

#[test]
fn tampered_signature_fields_fail_with_gait_messages() {
    let mut value = gait_canon::parse_json(&artifact("trace_endpoint_block.json")).unwrap();
    value["verdict"] = "allow".into();
    let outcome = verify_trace(&serde_json::to_vec(&value).unwrap(), &gait_key()).unwrap();
    assert_eq!(
        outcome.failure.unwrap().to_string(),
        "signed_digest mismatch"
    );

    let demo = std::fs::read(shared(
        "fixtures/gait/scripts/testdata/trace_block_violation.json",
    ))
    .unwrap();
    let outcome = verify_trace(&demo, &gait_key()).unwrap();
    assert_eq!(
        outcome.failure,
        Some(SignatureFailure::Invalid(VerifyError::SignedDigestMissing))
    );
}

#[test]
fn demo_runpack_report_equals_gait_verify_output() {
    let gait: serde_json::Value =
        serde_json::from_slice(&artifact("verify_run_demo.stdout.json")).unwrap();
    let bytes = artifact("runpack_run_demo.zip");
    let report = verify_runpack(
        RunpackSource::Bytes {
            bytes: &bytes,
            path: "gait-out/runpack_run_demo.zip",
        },
        VerifyOptions::default(),
    )
    .unwrap();
    assert!(report.ok);
    assert_eq!(report.signature_status, SignatureStatus::Missing);
    assert_eq!(gait["manifest_digest"], report.manifest_digest.as_str());
    let mut ours = serde_json::to_value(&report).unwrap();
    let mut theirs = gait;
    theirs.as_object_mut().unwrap().remove("correlation_id");
    assert_eq!(
        ours.as_object_mut().unwrap().remove("path"),
        theirs.as_object_mut().unwrap().remove("path")
    );
    assert_eq!(ours, theirs);
}

#[test]
fn demo_runpack_verifies_from_a_path_too() {
    let report = verify_runpack(
        RunpackSource::Path(&shared("conformance/artifacts/runpack_run_demo.zip")),
        VerifyOptions::default(),
    )
    .unwrap();
    assert!(report.ok);
    assert_eq!(report.files_checked, 4);
    let err = verify_runpack(
        RunpackSource::Path(Path::new("/nonexistent/runpack.zip")),
        VerifyOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/runpack.zip"),
        "{err}"
    );
}

fn sample_trace() -> TraceRecord {
    let policy = "2c40a4674ab591d53b4e72c280c91f5ae35c119dc004d320c3c054730be788f2";
    let intent = "56306d8bd752d5b462e3f017d2482ce575985e3ef673945c39a1a58411214149";
    let observed = GoTime::parse("2026-11-25T10:00:00.5Z").unwrap();
    let id = trace::trace_id(policy, intent, "block");
    TraceRecord {
        schema_id: trace::TRACE_SCHEMA_ID.into(),
        schema_version: "1.0.0".into(),
        created_at: GoTime::parse("2026-02-09T00:00:00Z").unwrap(),
        observed_at: observed,
        producer_version: "0.1.0".into(),
        event_id: trace::event_id(&id, &observed),
        trace_id: id,
        tool_name: "tool.write".into(),
        args_digest: intent.into(),
        intent_digest: intent.into(),
        policy_digest: policy.into(),
        policy_id: "gait.gate.policy".into(),
        policy_version: "1.0.0".into(),
        verdict: "block".into(),
        violations: vec!["endpoint_path_denied".into(), "ünïcödé \u{1f600}".into()],
        latency_ms: 0.12389399999999999,
        ..TraceRecord::default()
    }
}

#[test]
fn trace_signed_with_a_fresh_key_passes_the_independent_python_checker() {
    let python = Command::new("python3")
        .arg("-c")
        .arg("import cryptography")
        .output();
    if !python.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipping python cross-check: python3 with the cryptography package is not available"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let (private, public) = (dir.path().join("k.key"), dir.path().join("k.pub"));
    write_key_pair(&private, &public, &key).unwrap();
    let signed = sign_trace(sample_trace(), &key);
    let trace_path = dir.path().join("trace.json");
    std::fs::write(&trace_path, signed.to_pretty_json()).unwrap();

    let checker = shared("tools/gait_verify.py");
    let run = |doc: &Path| {
        Command::new("python3")
            .arg(&checker)
            .arg(doc)
            .arg(&public)
            .output()
            .unwrap()
    };
    let out = run(&trace_path);
    assert!(
        out.status.success(),
        "gait_verify.py rejected our trace: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it notices tampering, so the check above can fail.
    let tampered = String::from_utf8(signed.to_pretty_json())
        .unwrap()
        .replace("\"block\"", "\"allow\"");
    let tampered_path = dir.path().join("tampered.json");
    std::fs::write(&tampered_path, tampered).unwrap();
    assert_eq!(run(&tampered_path).status.code(), Some(2));
    // Our verifier agrees with it on the same file.
    assert!(
        verify_trace(&std::fs::read(&trace_path).unwrap(), &key.public_key())
            .unwrap()
            .ok()
    );
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(shared("fixtures/gait/core/schema/testdata").join(name)).unwrap()
}

fn expect_pair<T: std::fmt::Debug>(
    parse: fn(&[u8]) -> Result<T, DecodeError>,
    valid: &[&str],
    invalid: &[&str],
) {
    for name in valid {
        if let Err(err) = parse(&testdata(name)) {
            panic!("{name} should parse: {err}");
        }
    }
    for name in invalid {
        match parse(&testdata(name)) {
            Ok(v) => panic!("{name} should be rejected, parsed as {v:?}"),
            Err(err) => eprintln!("{name} rejected: {err}"),
        }
    }
}

#[test]
fn schema_testdata_pairs_parse_or_are_rejected() {
    expect_pair(
        parse_trace,
        &[
            "gate_trace_record_valid.json",
            "gate_trace_record_relationship_valid.json",
            "gate_trace_record_skill_valid.json",
        ],
        &[
            "gate_trace_record_invalid.json",
            "gate_trace_record_relationship_invalid.json",
            "gate_trace_record_skill_invalid.json",
        ],
    );
    expect_pair(
        parse_approval_token,
        &["gate_approval_token_valid.json"],
        &["gate_approval_token_invalid.json"],
    );
    expect_pair(
        parse_delegation_token,
        &["gate_delegation_token_valid.json"],
        &["gate_delegation_token_invalid.json"],
    );
    expect_pair(
        parse_approval_audit_record,
        &[
            "gate_approval_audit_record_valid.json",
            "gate_approval_audit_record_relationship_valid.json",
        ],
        &["gate_approval_audit_record_invalid.json"],
    );
    expect_pair(
        parse_manifest,
        &["manifest_valid.json"],
        &["manifest_invalid.json"],
    );
    expect_pair(
        parse_run,
        &["run_valid.json", "run_relationship_valid.json"],
        &["run_invalid.json"],
    );
    expect_pair(parse_refs, &["refs_valid.json"], &["refs_invalid.json"]);
    expect_pair(
        parse_regress_result,
        &["regress_result_valid.json"],
        &["regress_result_invalid.json"],
    );
}

#[test]
fn invalid_fixtures_are_rejected_for_the_documented_rule() {
    let err = parse_trace(&testdata("gate_trace_record_invalid.json")).unwrap_err();
    let DecodeError::Invalid(invalid) = err else {
        panic!("{err}")
    };
    assert!(invalid.mentions("intent_digest") && invalid.mentions("policy_digest"));
    let err = parse_trace(&testdata("gate_trace_record_skill_invalid.json")).unwrap_err();
    assert!(err.to_string().contains("skill_provenance.digest"), "{err}");
    let err = parse_trace(&testdata("gate_trace_record_relationship_invalid.json")).unwrap_err();
    assert!(
        err.to_string().contains("relationship.entity_refs[0].kind"),
        "{err}"
    );
    let err = parse_regress_result(&testdata("regress_result_invalid.json")).unwrap_err();
    assert!(err.to_string().contains("status"), "{err}");
    let err = parse_refs(&testdata("refs_invalid.json")).unwrap_err();
    assert!(
        err.to_string().contains("receipts[0].content_digest"),
        "{err}"
    );
    let err = parse_run(&testdata("run_invalid.json")).unwrap_err();
    assert!(err.to_string().contains("run_id"), "{err}");
    // Timestamps that are not RFC 3339 fail at decode, as Go's time.Time decoder does.
    let err = parse_manifest(&testdata("manifest_invalid.json")).unwrap_err();
    assert!(
        matches!(err, DecodeError::Shape { .. }) && err.to_string().contains("not-a-time"),
        "{err}"
    );

    // With the bad timestamps repaired, the remaining rules still reject each fixture.
    let repaired = |name: &str| {
        String::from_utf8(testdata(name))
            .unwrap()
            .replace("\"not-a-date\"", "\"2026-02-05T01:00:00Z\"")
            .replace("\"not-a-time\"", "\"2026-02-05T01:00:00Z\"")
            .into_bytes()
    };
    let err = parse_approval_token(&repaired("gate_approval_token_invalid.json")).unwrap_err();
    let DecodeError::Invalid(e) = err else {
        panic!("{err}")
    };
    assert!(
        e.mentions("token_id") && e.mentions("policy_digest") && e.mentions("scope"),
        "{e}"
    );
    let err = parse_delegation_token(&repaired("gate_delegation_token_invalid.json")).unwrap_err();
    let DecodeError::Invalid(e) = err else {
        panic!("{err}")
    };
    assert!(
        e.mentions("token_id") && e.mentions("delegate_identity") && e.mentions("scope"),
        "{e}"
    );
    let err = parse_approval_audit_record(&repaired("gate_approval_audit_record_invalid.json"))
        .unwrap_err();
    let DecodeError::Invalid(e) = err else {
        panic!("{err}")
    };
    assert!(
        e.mentions("trace_id") && e.mentions("intent_digest") && e.mentions("required_approvals"),
        "{e}"
    );
    let err = parse_manifest(&repaired("manifest_invalid.json")).unwrap_err();
    let DecodeError::Invalid(e) = err else {
        panic!("{err}")
    };
    assert!(e.mentions("run_id") && e.mentions("manifest_digest"), "{e}");
}
