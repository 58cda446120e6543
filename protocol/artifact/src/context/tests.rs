#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
use super::*;

const VALID: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/gait/core/schema/testdata/context_envelope_valid.json"
));
const INVALID: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/gait/core/schema/testdata/context_envelope_invalid.json"
));
/// SHA-256 of the JCS bytes of the valid fixture's records, computed with Python's json module.
const VALID_RECORDS_DIGEST: &str =
    "8c3deb5e350ef67c69d900d59f5a535f9913f4fdb4fc1333e4df4d8ebda49ec5";

fn sealed_fixture() -> String {
    String::from_utf8(VALID.to_vec())
        .unwrap()
        .replace(&"a".repeat(64), VALID_RECORDS_DIGEST)
}

#[test]
fn the_schema_fixture_is_refused_because_its_placeholder_digest_does_not_seal_its_records() {
    match parse_context_envelope(VALID) {
        Err(EnvelopeError::DigestMismatch { computed, .. }) => {
            assert_eq!(computed, VALID_RECORDS_DIGEST)
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
}

#[test]
fn a_sealed_envelope_verifies_and_yields_refs_and_age() {
    let envelope = parse_context_envelope(sealed_fixture().as_bytes()).unwrap();
    assert_eq!(envelope.context_set_digest, VALID_RECORDS_DIGEST);
    assert_eq!(envelope.evidence_mode, "required");
    assert_eq!(envelope.context_refs(), ["ctx_001"]);
    let now = time::macros::datetime!(2026-02-14 00:10:00 UTC);
    assert_eq!(envelope.age_seconds(now), 600);
    // A record retrieved in the future counts as fresh.
    assert_eq!(
        envelope.age_seconds(time::macros::datetime!(2026-02-13 00:00:00 UTC)),
        0
    );
}

#[test]
fn an_empty_declared_digest_is_computed_and_keys_match_in_any_case() {
    let text = sealed_fixture()
        .replace(VALID_RECORDS_DIGEST, "")
        .replace("\"ref_id\"", "\"REF_ID\"")
        .replace("\"evidence_mode\"", "\"Evidence_Mode\"");
    let envelope = parse_context_envelope(text.as_bytes()).unwrap();
    assert_eq!(envelope.context_set_digest, VALID_RECORDS_DIGEST);
}

#[test]
fn tampering_with_a_record_breaks_the_seal() {
    let text = sealed_fixture().replace("security.md", "security2.md");
    assert!(matches!(
        parse_context_envelope(text.as_bytes()),
        Err(EnvelopeError::DigestMismatch { .. })
    ));
}

#[test]
fn records_are_sorted_and_normalized_before_hashing() {
    let record = |id: &str| ReferenceRecord {
        ref_id: format!(" {id} "),
        source_type: "doc".into(),
        source_locator: "x".into(),
        query_digest: "A".repeat(64),
        content_digest: "b".repeat(64),
        redaction_mode: "reference".into(),
        ..ReferenceRecord::default()
    };
    let envelope = ContextEnvelope {
        context_set_id: "set".into(),
        records: vec![record("b"), record("a")],
        ..ContextEnvelope::default()
    }
    .normalized()
    .unwrap();
    assert_eq!(envelope.records[0].ref_id, "a");
    assert_eq!(envelope.records[0].immutability, "unknown");
    assert_eq!(envelope.records[0].query_digest, "a".repeat(64));
    assert_eq!(
        envelope.records[0].retrieved_at.to_rfc3339_nano(),
        "1980-01-01T00:00:00Z"
    );
    assert_eq!(envelope.evidence_mode, "best_effort");
    assert_eq!(
        envelope.context_set_digest,
        context_set_digest(&envelope.records)
    );
    // Age with records at the 1980 default is large, never negative.
    assert!(envelope.age_seconds(OffsetDateTime::now_utc()) > 0);
}

#[test]
fn invalid_envelopes_name_what_is_wrong() {
    assert_eq!(
        parse_context_envelope(INVALID),
        Err(EnvelopeError::ContextSetIdMissing)
    );
    let unknown = sealed_fixture().replacen('{', "{\"extra\":1,", 1);
    assert_eq!(
        parse_context_envelope(unknown.as_bytes()),
        Err(EnvelopeError::UnknownField {
            field: "extra".into()
        })
    );
    let unknown_in_record = sealed_fixture().replace("\"ref_id\"", "\"note\":1,\"ref_id\"");
    assert!(matches!(
        parse_context_envelope(unknown_in_record.as_bytes()),
        Err(EnvelopeError::UnknownField { field }) if field == "records[0].note"
    ));
    let mode = sealed_fixture().replace("\"required\"", "\"always\"");
    assert_eq!(
        parse_context_envelope(mode.as_bytes()),
        Err(EnvelopeError::EvidenceMode)
    );
    let digest = sealed_fixture().replace(&"1".repeat(64), "nothex");
    assert_eq!(
        parse_context_envelope(digest.as_bytes()),
        Err(EnvelopeError::RecordDigest { index: 0 })
    );
    let schema = sealed_fixture().replace("gait.context.envelope", "gait.other");
    assert!(matches!(
        parse_context_envelope(schema.as_bytes()),
        Err(EnvelopeError::SchemaId(_))
    ));
    assert!(matches!(
        parse_context_envelope(b"{\"records\":5}"),
        Err(EnvelopeError::Parse(_))
    ));
    assert!(matches!(
        parse_context_envelope(b"not json"),
        Err(EnvelopeError::Parse(_))
    ));
}
