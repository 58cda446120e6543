//! Unit tests for trace ids, omitempty serialization and sign/verify round trips.

use gait_canon::sign::SigningKey;
use serde_json::Value;

use super::*;

const DIGEST_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn sample() -> TraceRecord {
    let created_at = GoTime::parse("2026-02-05T00:00:00Z").unwrap();
    let observed_at = GoTime::parse("2026-11-24T12:24:28.86346774Z").unwrap();
    let id = trace_id(DIGEST_A, DIGEST_A, "allow");
    TraceRecord {
        schema_id: TRACE_SCHEMA_ID.into(),
        schema_version: "1.0.0".into(),
        created_at,
        observed_at,
        producer_version: "0.1.0".into(),
        event_id: event_id(&id, &observed_at),
        trace_id: id,
        tool_name: "tool.write".into(),
        args_digest: DIGEST_A.into(),
        intent_digest: DIGEST_A.into(),
        policy_digest: DIGEST_A.into(),
        verdict: "allow".into(),
        latency_ms: 0.25,
        ..TraceRecord::default()
    }
}

#[test]
fn trace_and_event_ids_match_gait_for_the_conformance_block_trace() {
    let policy = "2c40a4674ab591d53b4e72c280c91f5ae35c119dc004d320c3c054730be788f2";
    let intent = "56306d8bd752d5b462e3f017d2482ce575985e3ef673945c39a1a58411214149";
    let id = trace_id(policy, intent, "block");
    assert_eq!(id, "1ebcafc90e5778ca4e9d442e");
    let observed = GoTime::parse("2026-11-24T12:24:28.86346774Z").unwrap();
    assert_eq!(event_id(&id, &observed), "01c63641d25ec5dbdf3fb2a3");
}

#[test]
fn empty_optional_fields_are_omitted_but_times_are_not() {
    let record = TraceRecord {
        observed_at: GoTime::zero(),
        ..sample()
    };
    let value = serde_json::to_value(&record).unwrap();
    let Value::Object(map) = value else {
        panic!("not an object")
    };
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "args_digest",
            "created_at",
            "event_id",
            "intent_digest",
            "latency_ms",
            "observed_at",
            "policy_digest",
            "producer_version",
            "schema_id",
            "schema_version",
            "tool_name",
            "trace_id",
            "verdict"
        ]
    );
    assert_eq!(map["observed_at"], "0001-01-01T00:00:00Z");
}

#[test]
fn signed_trace_verifies_and_any_field_change_breaks_it() {
    let key = SigningKey::from_seed(&[3; 32]);
    let signed = sign_trace(sample(), &key);
    let bytes = signed.to_pretty_json();
    assert!(bytes.ends_with(b"}\n"));
    let outcome = verify_trace(&bytes, &key.public_key()).unwrap();
    assert!(outcome.ok(), "{:?}", outcome.failure);
    assert_eq!(outcome.basis, Some(DigestBasis::Projected));
    assert_eq!(outcome.signature_status(), "verified");
    assert_eq!(outcome.record, signed);

    let tampered = String::from_utf8(bytes)
        .unwrap()
        .replace("\"allow\"", "\"block\"");
    let outcome = verify_trace(tampered.as_bytes(), &key.public_key()).unwrap();
    assert_eq!(outcome.signature_status(), "failed");
    assert_eq!(
        outcome.failure.unwrap().to_string(),
        "signed_digest mismatch"
    );
}

#[test]
fn unsigned_trace_reports_signature_missing() {
    let key = SigningKey::from_seed(&[3; 32]);
    let bytes = sample().to_pretty_json();
    let outcome = verify_trace(&bytes, &key.public_key()).unwrap();
    assert_eq!(outcome.failure, Some(SignatureFailure::Missing));
}

#[test]
fn unknown_fields_are_ignored_when_verifying_like_go() {
    let key = SigningKey::from_seed(&[3; 32]);
    let signed = sign_trace(sample(), &key);
    let mut value = serde_json::to_value(&signed).unwrap();
    value["enterprise_extension"] = serde_json::json!({"tenant": "acme"});
    let bytes = serde_json::to_vec(&value).unwrap();
    let outcome = verify_trace(&bytes, &key.public_key()).unwrap();
    assert_eq!(outcome.basis, Some(DigestBasis::Projected));
    assert_eq!(outcome.record.projection(), signed.projection());
}

#[test]
fn signature_over_raw_object_with_extra_fields_verifies_by_fallback() {
    let key = SigningKey::from_seed(&[3; 32]);
    let mut value = serde_json::to_value(sample()).unwrap();
    value["x_vendor"] = serde_json::json!(1);
    let sig = gait_canon::sign::sign_json(&key, &value);
    value["signature"] = serde_json::to_value(sig).unwrap();
    let bytes = serde_json::to_vec(&value).unwrap();
    let outcome = verify_trace(&bytes, &key.public_key()).unwrap();
    assert_eq!(outcome.basis, Some(DigestBasis::Raw));
}

#[test]
fn validation_names_each_broken_field() {
    let record = TraceRecord {
        verdict: "maybe".into(),
        args_digest: "xyz".into(),
        schema_version: "2.0.0".into(),
        ..sample()
    };
    let err = record.validate().unwrap_err();
    assert!(
        err.mentions("verdict") && err.mentions("args_digest") && err.mentions("schema_version")
    );
    assert!(
        err.to_string().starts_with("invalid gait.gate.trace: "),
        "{err}"
    );
}

#[test]
fn wrong_field_types_are_a_shape_error() {
    let err = parse_trace(br#"{"schema_id":"gait.gate.trace","script":"yes"}"#).unwrap_err();
    assert!(matches!(err, DecodeError::Shape { .. }), "{err}");
    let err = parse_trace(b"[1]").unwrap_err();
    assert!(matches!(err, DecodeError::Shape { .. }), "{err}");
}
