//! Detection, verification and projection against Gait's conformance artifacts, with the §7 projection
//! computed here independently (from the raw files, as Gait's reference consumer
//! `scripts/test_ent_consumer_contract.sh` does), and exactly-once enqueueing by digest.

use std::collections::BTreeSet;
use std::io::{Cursor, Read, Write};

use gait_artifact::evidence::{ArtifactKind, ArtifactSource};
use gait_canon::sign::PublicKey;
use serde_json::Value;

use super::import::{self, Offered, Outcome};
use super::verify::{self, InvalidArtifact, TraceKeys};
use crate::db::AgentDb;
use crate::outbox::{Outbox, OutboxLimits};

macro_rules! conformance {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/conformance/artifacts/",
            $name
        ))
    };
}

const RUNPACK: &[u8] = conformance!("runpack_run_demo.zip");
const TRACE_ALLOW: &[u8] = conformance!("trace_endpoint_allow.json");
const TRACE_BLOCK: &[u8] = conformance!("trace_endpoint_block.json");
const REGRESS: &[u8] = conformance!("regress_result.json");
const JUNIT: &[u8] = conformance!("junit.xml");
const GAIT_PUBLIC_KEY: &[u8] = conformance!("gait_public.key");

fn gait_keys() -> TraceKeys {
    let text = std::str::from_utf8(GAIT_PUBLIC_KEY).unwrap();
    TraceKeys::new([PublicKey::from_gait_public_key(text.trim()).unwrap()])
}

fn check(
    bytes: &[u8],
    keys: &TraceKeys,
) -> Result<gait_artifact::evidence::ArtifactRecord, InvalidArtifact> {
    verify::verify(bytes, "file", ArtifactSource::Push, keys)
}

/// Every entry of a zip, by name.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            (file.name().unwrap().to_string(), data)
        })
        .collect()
}

fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(name.as_str(), options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn entry<'a>(entries: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &entries.iter().find(|(n, _)| n == name).unwrap().1
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn lines(bytes: &[u8]) -> usize {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

#[test]
fn runpack_projection_is_the_reference_consumers() {
    let record = check(RUNPACK, &TraceKeys::default()).unwrap();
    assert_eq!(record.artifact_kind, ArtifactKind::Runpack);
    assert_eq!(record.sha256, gait_canon::sha256_hex(RUNPACK));
    // The reference consumer's fields, from the raw files.
    let entries = unzip(RUNPACK);
    let manifest = json(entry(&entries, "manifest.json"));
    let refs = json(entry(&entries, "refs.json"));
    let receipts = refs["receipts"].as_array().cloned().unwrap_or_default();
    let mut vector: Vec<String> = receipts
        .iter()
        .map(|r| format!("{}:{}", s(&r["query_digest"]), s(&r["content_digest"])))
        .collect();
    vector.sort();
    let p = record.runpack.as_ref().unwrap();
    assert_eq!(p.run_id, s(&manifest["run_id"]));
    assert_eq!(p.runpack_manifest_digest, s(&manifest["manifest_digest"]));
    assert_eq!(p.capture_mode, s(&manifest["capture_mode"]));
    assert_eq!(p.intent_count, lines(entry(&entries, "intents.jsonl")));
    assert_eq!(p.result_count, lines(entry(&entries, "results.jsonl")));
    assert_eq!(p.receipt_count, receipts.len());
    assert_eq!(p.receipt_digest_vector, vector);
    assert_eq!(record.run_ids, vec![s(&manifest["run_id"])]);
    assert_eq!(record.producer_version, s(&manifest["producer_version"]));
    assert!(!record.producer_version.is_empty());
}

#[test]
fn a_runpack_with_one_changed_byte_is_refused_naming_the_entry() {
    let mut entries = unzip(RUNPACK);
    let intents = entries
        .iter_mut()
        .find(|(n, _)| n == "intents.jsonl")
        .unwrap();
    let at = intents.1.iter().position(|b| b.is_ascii_digit()).unwrap();
    intents.1[at] = if intents.1[at] == b'9' {
        b'8'
    } else {
        intents.1[at] + 1
    };
    let err = check(&rezip(&entries), &TraceKeys::default()).unwrap_err();
    assert!(
        matches!(err, InvalidArtifact::RunpackTampered { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("intents.jsonl"), "{message}");
    assert!(!message.contains("manifest.json"), "{message}");
}

#[test]
fn a_runpack_with_an_edited_manifest_is_refused_naming_the_manifest() {
    let mut entries = unzip(RUNPACK);
    let manifest = entries
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut value = json(&manifest.1);
    value["capture_mode"] = Value::from("raw");
    manifest.1 = serde_json::to_vec(&value).unwrap();
    let err = check(&rezip(&entries), &TraceKeys::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("runpack tampered"), "{message}");
    assert!(message.contains("manifest.json"), "{message}");
}

#[test]
fn the_untouched_rezipped_runpack_still_verifies() {
    // The tamper tests above change one thing only: the rezip itself is not what they refuse.
    check(&rezip(&unzip(RUNPACK)), &TraceKeys::default()).unwrap();
}

#[test]
fn traces_verify_with_the_gait_key_and_project_as_the_consumer_does() {
    for bytes in [TRACE_ALLOW, TRACE_BLOCK] {
        let record = check(bytes, &gait_keys()).unwrap();
        assert_eq!(record.artifact_kind, ArtifactKind::Trace);
        assert_eq!(record.signature_status, "verified");
        let raw = json(bytes);
        let p = record.trace.as_ref().unwrap();
        assert_eq!(p.trace_id, s(&raw["trace_id"]));
        assert_eq!(p.trace_verdict, s(&raw["verdict"]));
        assert_eq!(p.trace_skill_source, s(&raw["skill_provenance"]["source"]));
        assert_eq!(
            p.trace_skill_publisher,
            s(&raw["skill_provenance"]["publisher"])
        );
        assert_eq!(record.producer_version, s(&raw["producer_version"]));
        assert!(record.run_ids.is_empty());
    }
    let verdicts: BTreeSet<String> = [TRACE_ALLOW, TRACE_BLOCK]
        .iter()
        .map(|b| check(b, &gait_keys()).unwrap().trace.unwrap().trace_verdict)
        .collect();
    assert_eq!(verdicts.len(), 2, "allow and block are told apart");
}

#[test]
fn a_trace_signed_by_an_unknown_key_is_skipped_but_its_digest_is_checked() {
    let record = check(TRACE_ALLOW, &TraceKeys::default()).unwrap();
    assert_eq!(record.signature_status, "skipped");
    let mut raw = json(TRACE_ALLOW);
    raw["verdict"] = Value::from("block");
    let edited = serde_json::to_vec(&raw).unwrap();
    let err = check(&edited, &TraceKeys::default()).unwrap_err();
    assert!(
        matches!(err, InvalidArtifact::TraceDigestMismatch { .. }),
        "{err:?}"
    );
    // With the key known, the same edit is a signature failure.
    assert!(check(&edited, &gait_keys()).is_err());
}

#[test]
fn a_bad_signature_by_a_known_key_is_refused() {
    let mut raw = json(TRACE_ALLOW);
    let sig = s(&raw["signature"]["sig"]);
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    raw["signature"]["sig"] = Value::from(format!("{flipped}{}", &sig[1..]));
    let err = check(&serde_json::to_vec(&raw).unwrap(), &gait_keys()).unwrap_err();
    assert!(
        matches!(err, InvalidArtifact::TraceSignature { .. }),
        "{err:?}"
    );
}

#[test]
fn an_enterprise_extension_changes_nothing() {
    let mut trace = json(TRACE_ALLOW);
    trace["enterprise_extension"] = serde_json::json!({"tenant": "x", "n": 1});
    let extended = check(&serde_json::to_vec(&trace).unwrap(), &gait_keys()).unwrap();
    let plain = check(TRACE_ALLOW, &gait_keys()).unwrap();
    assert_eq!(extended.trace, plain.trace);
    assert_eq!(extended.signature_status, "verified");
    assert_eq!(extended.producer_version, plain.producer_version);

    let mut regress = json(REGRESS);
    regress["enterprise_extension"] = serde_json::json!({"tenant": "x"});
    let extended = check(&serde_json::to_vec(&regress).unwrap(), &gait_keys()).unwrap();
    let plain = check(REGRESS, &gait_keys()).unwrap();
    assert_eq!(extended.regress, plain.regress);
    assert_eq!(extended.run_ids, plain.run_ids);
}

#[test]
fn regress_result_projects_status_fixture_set_and_run_ids() {
    let record = check(REGRESS, &TraceKeys::default()).unwrap();
    assert_eq!(record.artifact_kind, ArtifactKind::RegressResult);
    let raw = json(REGRESS);
    let p = record.regress.as_ref().unwrap();
    assert_eq!(p.regress_status, s(&raw["status"]));
    assert_eq!(p.regress_fixture_set, s(&raw["fixture_set"]));
    let run_ids: BTreeSet<String> = raw["graders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| s(&g["details"]["run_id"]))
        .filter(|r| !r.is_empty())
        .collect();
    assert!(!run_ids.is_empty());
    assert_eq!(record.run_ids, run_ids.into_iter().collect::<Vec<_>>());
    assert_eq!(record.producer_version, s(&raw["producer_version"]));
}

#[test]
fn junit_is_detected_from_its_root_element() {
    let record = check(JUNIT, &TraceKeys::default()).unwrap();
    assert_eq!(record.artifact_kind, ArtifactKind::Junit);
    assert_eq!(record.signature_status, "not_applicable");
    let err = check(
        b"<?xml version=\"1.0\"?>\n<html></html>",
        &TraceKeys::default(),
    )
    .unwrap_err();
    assert!(err.is_unknown_kind(), "{err:?}");
    let truncated = &JUNIT[..JUNIT.len() / 2];
    assert!(matches!(
        check(truncated, &TraceKeys::default()),
        Err(InvalidArtifact::Junit(_))
    ));
}

#[test]
fn bad_json_is_reported_at_its_line_and_column() {
    let err = check(
        b"{\n  \"schema_id\": \"gait.gate.trace\",\n  oops\n}",
        &TraceKeys::default(),
    )
    .unwrap_err();
    match err {
        InvalidArtifact::BadJson { line, column, .. } => assert_eq!((line, column), (3, 3)),
        other => panic!("{other:?}"),
    }
    let truncated = &TRACE_ALLOW[..TRACE_ALLOW.len() / 2];
    let message = check(truncated, &TraceKeys::default())
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("bad json at line"), "{message}");
}

#[test]
fn unknown_kinds_are_named() {
    for bytes in [
        &b"{\"schema_id\":\"gait.other\"}"[..],
        b"{\"a\":1}",
        b"plain text",
    ] {
        let err = check(bytes, &TraceKeys::default()).unwrap_err();
        assert!(err.is_unknown_kind(), "{err:?}");
        assert!(
            err.to_string().starts_with("unknown artifact kind"),
            "{err}"
        );
    }
}

#[test]
fn the_same_bytes_are_enqueued_once_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let offered = |name: &str, bytes: &[u8]| Offered {
        name: name.to_owned(),
        bytes: bytes.to_vec(),
    };
    let first_seq;
    {
        let db = AgentDb::open(&path).unwrap();
        let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
        let outcomes = import::import(
            &outbox,
            &[
                offered("a/trace.json", TRACE_ALLOW),
                offered("b/copy.json", TRACE_ALLOW),
                offered("bad.json", b"{"),
                offered("regress_result.json", REGRESS),
            ],
            ArtifactSource::Push,
            &gait_keys(),
            None,
            1,
        )
        .unwrap();
        let Outcome::Enqueued { seq, record } = &outcomes[0] else {
            panic!("{:?}", outcomes[0]);
        };
        assert_eq!(record.file_name, "trace.json");
        first_seq = *seq;
        assert!(
            matches!(outcomes[1], Outcome::Duplicate { seq, .. } if seq == first_seq),
            "the same bytes under another name in the same batch: {:?}",
            outcomes[1]
        );
        assert!(matches!(outcomes[2], Outcome::Invalid(_)));
        assert!(matches!(outcomes[3], Outcome::Enqueued { .. }));
        assert_eq!(
            outbox.stats().depth,
            2,
            "two records, the invalid one never enqueued"
        );
        let batch = outbox.peek_batch(0, 10, 1 << 20).unwrap();
        assert_eq!(batch[0].kind, "artifact.trace");
        assert_eq!(batch[0].class, gait_wire::RecordClass::ArtifactDigest);
        let payload: gait_artifact::evidence::ArtifactRecord =
            serde_json::from_slice(&batch[0].payload).unwrap();
        assert_eq!(payload.sha256, gait_canon::sha256_hex(TRACE_ALLOW));
    }
    let db = AgentDb::open(&path).unwrap();
    let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
    let again = import::import(
        &outbox,
        &[offered("trace.json", TRACE_ALLOW)],
        ArtifactSource::Watch,
        &gait_keys(),
        None,
        2,
    )
    .unwrap();
    assert!(
        matches!(again[0], Outcome::Duplicate { seq, .. } if seq == first_seq),
        "{:?}",
        again[0]
    );
    assert_eq!(
        outbox.stats().last_seq,
        2,
        "nothing enqueued after the reopen"
    );
    assert_eq!(
        import::imported_seq(&outbox, &gait_canon::sha256_hex(TRACE_ALLOW)).unwrap(),
        Some(first_seq)
    );
}
