//! Go-style decoding of real Gait artifacts (contract §0.1): keys in any case (Go's folding, including the
//! Kelvin sign), unknown keys ignored and repeated keys resolved as Go does, while every digest and signature
//! is still computed over the canonical lower-case projection.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use gait_artifact::approval::{ApprovalCheck, parse_approval_token, validate_approval_token};
use gait_artifact::delegation::parse_delegation_token;
use gait_artifact::regress::parse_regress_result;
use gait_artifact::runpack::{
    RunpackSource, SafeZip, SignatureStatus, VerifyOptions, ZipLimits, read_runpack, verify_runpack,
};
use gait_artifact::signed::DigestBasis;
use gait_artifact::trace::verify_trace;
use gait_canon::sign::{PublicKey, load_public_key_file};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

fn shared(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(shared(rel)).unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Keys rewritten the ways Go still matches: upper case, mixed case, and `k` as U+212A KELVIN SIGN.
fn recase_key(key: &str, style: usize) -> String {
    match style % 3 {
        0 => key.to_ascii_uppercase(),
        1 => key
            .char_indices()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
        _ => key.replace('k', "\u{212a}").to_ascii_uppercase(),
    }
}

/// Recase every object key, except below the members named in `free` (free-form maps whose keys are data).
fn recase(value: &Value, free: &[&str], style: &mut usize) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                *style += 1;
                let item = if free.contains(&key.as_str()) {
                    item.clone()
                } else {
                    recase(item, free, style)
                };
                out.insert(recase_key(key, *style), item);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| recase(v, free, style)).collect()),
        other => other.clone(),
    }
}

fn recased_bytes(bytes: &[u8], free: &[&str]) -> Vec<u8> {
    let recased = recase(&json_of(bytes), free, &mut 0);
    let out = serde_json::to_vec_pretty(&recased).unwrap();
    assert_ne!(out, serde_json::to_vec_pretty(&json_of(bytes)).unwrap());
    out
}

fn gait_key() -> PublicKey {
    load_public_key_file(&shared("conformance/artifacts/gait_public.key")).unwrap()
}

#[test]
fn gait_traces_with_recased_keys_still_verify_over_the_canonical_projection() {
    for name in ["trace_endpoint_allow.json", "trace_endpoint_block.json"] {
        let original = read(&format!("conformance/artifacts/{name}"));
        let recased = recased_bytes(&original, &[]);
        let text = String::from_utf8(recased.clone()).unwrap();
        assert!(
            text.contains("\"SIGNATURE\"") || text.contains("\"SiGnAtUrE\""),
            "{text}"
        );
        let key = gait_key();
        let outcome = verify_trace(&recased, &key).unwrap();
        assert!(outcome.ok(), "{name}: {:?}", outcome.failure);
        assert_eq!(outcome.basis, Some(DigestBasis::Projected), "{name}");
        let baseline = verify_trace(&original, &key).unwrap();
        assert_eq!(outcome.record, baseline.record, "{name}");
    }
}

#[test]
fn a_recased_trace_with_a_changed_value_still_fails() {
    let original = read("conformance/artifacts/trace_endpoint_block.json");
    let mut value = recase(&json_of(&original), &[], &mut 0);
    let verdict_key = value
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.eq_ignore_ascii_case("verdict"))
        .unwrap()
        .clone();
    value[&verdict_key] = json!("allow");
    let outcome = verify_trace(&serde_json::to_vec(&value).unwrap(), &gait_key()).unwrap();
    assert!(!outcome.ok());
}

#[test]
fn unknown_trace_keys_are_ignored_and_a_repeated_key_keeps_the_last_value() {
    let original = read("conformance/artifacts/trace_endpoint_block.json");
    let text = String::from_utf8(original).unwrap();
    // A repeated key first (Go keeps the later, signed value) and an unknown additive member.
    let patched = text.replacen(
        '{',
        "{\"VERDICT\":\"allow\",\"enterprise_extension\":{\"tenant\":\"acme\",\"verdict\":\"allow\"},",
        1,
    );
    let outcome = verify_trace(patched.as_bytes(), &gait_key()).unwrap();
    assert!(outcome.ok(), "{:?}", outcome.failure);
    assert_eq!(outcome.basis, Some(DigestBasis::Projected));
    assert_eq!(outcome.record.verdict, "block");
    // The other order: the later (unsigned) value wins and the signature no longer holds.
    let last = text.replacen(
        "\"verdict\": \"block\"",
        "\"verdict\": \"block\", \"Verdict\": \"allow\"",
        1,
    );
    let outcome = verify_trace(last.as_bytes(), &gait_key()).unwrap();
    assert_eq!(outcome.record.verdict, "allow");
    assert!(!outcome.ok());
}

fn approval_check<'a>(intent: &'a str, policy: &'a str, scope: &'a [String]) -> ApprovalCheck<'a> {
    ApprovalCheck {
        intent_digest: intent,
        policy_digest: policy,
        delegation_binding_digest: "",
        required_scope: scope,
        target_count: 1,
        op_count: 1,
        now: OffsetDateTime::now_utc(),
    }
}

#[test]
fn a_gait_approval_token_with_recased_keys_still_validates() {
    let dir = "fixtures/gait/scenarios/gait/approval-token-valid";
    let original = read(&format!("{dir}/approval-token.json"));
    let key = load_public_key_file(&shared(&format!("{dir}/approval_public.key"))).unwrap();
    let token = parse_approval_token(&original).unwrap();
    let scope = vec!["tool:tool.write".to_owned()];
    let check = approval_check(&token.intent_digest, &token.policy_digest, &scope);
    validate_approval_token(&original, &key, &check).unwrap();

    let mut recased = recase(&json_of(&original), &[], &mut 0);
    recased
        .as_object_mut()
        .unwrap()
        .insert("unknown_future_field".into(), json!([1, 2, 3]));
    let recased = serde_json::to_vec(&recased).unwrap();
    assert_eq!(parse_approval_token(&recased).unwrap(), token);
    let validated = validate_approval_token(&recased, &key, &check).unwrap();
    assert_eq!(validated, token);
}

#[test]
fn gait_delegation_tokens_with_recased_keys_decode_to_the_same_token() {
    let dir = shared("fixtures/gait/scenarios/gait/delegation-chain-depth-3");
    for n in 1..=3 {
        let original = std::fs::read(dir.join(format!("delegation-token-{n}.json"))).unwrap();
        let recased = recased_bytes(&original, &[]);
        assert_eq!(
            parse_delegation_token(&recased).unwrap(),
            parse_delegation_token(&original).unwrap()
        );
    }
}

#[test]
fn regress_result_with_recased_keys_decodes_to_the_same_result() {
    let original = read("conformance/artifacts/regress_result.json");
    // `details` is a free-form map: its keys are data, not field names.
    let recased = recased_bytes(&original, &["details"]);
    assert_eq!(
        parse_regress_result(&recased).unwrap(),
        parse_regress_result(&original).unwrap()
    );
}

fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = SafeZip::open(Cursor::new(zip_bytes), ZipLimits::default()).unwrap();
    let names: Vec<String> = zip.names().map(str::to_owned).collect();
    names
        .into_iter()
        .map(|name| {
            let data = zip.read(&name).unwrap().unwrap();
            (name, data)
        })
        .collect()
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        writer
            .start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn verify(bytes: &[u8]) -> gait_artifact::runpack::RunpackVerifyReport {
    verify_runpack(
        RunpackSource::Bytes {
            bytes,
            path: "runpack.zip",
        },
        VerifyOptions::default(),
    )
    .unwrap()
}

#[test]
fn gait_runpack_with_a_recased_manifest_still_verifies_and_reads_the_same() {
    let original = read("conformance/artifacts/runpack_run_demo.zip");
    let baseline = verify(&original);
    assert!(baseline.ok);
    let mut files = entries(&original);
    for (name, data) in &mut files {
        if name == "manifest.json" {
            let mut value = recase(&json_of(data), &[], &mut 0);
            value
                .as_object_mut()
                .unwrap()
                .insert("enterprise_extension".into(), json!({"x": 1}));
            *data = serde_json::to_vec(&value).unwrap();
        }
    }
    let rebuilt = zip_of(&files);
    let report = verify(&rebuilt);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.manifest_digest, baseline.manifest_digest);
    assert_eq!(report.files_checked, 4);
    assert_eq!(report.signature_status, SignatureStatus::Missing);
    assert_eq!(
        read_runpack(&rebuilt).unwrap().manifest,
        read_runpack(&original).unwrap().manifest
    );
}

#[test]
fn a_recased_manifest_with_a_wrong_file_digest_is_still_a_mismatch() {
    let original = read("conformance/artifacts/runpack_run_demo.zip");
    let mut files = entries(&original);
    for (name, data) in &mut files {
        if name == "manifest.json" {
            let text = String::from_utf8(data.clone()).unwrap();
            let value = recase(&json_of(text.as_bytes()), &[], &mut 0);
            let text = serde_json::to_string(&value).unwrap();
            // Corrupt the first file digest (whatever its key case now is).
            let at = text.to_ascii_lowercase().find("\"sha256\":\"").unwrap();
            let mut bytes = text.into_bytes();
            let digit = at + 11;
            bytes[digit] = if bytes[digit] == b'0' { b'1' } else { b'0' };
            *data = bytes;
        }
    }
    let report = verify(&zip_of(&files));
    assert!(!report.ok);
    assert!(!report.hash_mismatches.is_empty(), "{report:?}");
}

#[test]
fn runpack_records_with_recased_keys_read_the_same() {
    let original = read("conformance/artifacts/runpack_run_demo.zip");
    let mut files = entries(&original);
    for (name, data) in &mut files {
        let free: &[&str] = &["args", "result", "retrieval_params"];
        match name.as_str() {
            "run.json" | "refs.json" => *data = recased_bytes(data, free),
            "intents.jsonl" | "results.jsonl" => {
                let mut out = Vec::new();
                for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    out.extend(serde_json::to_vec(&recase(&json_of(line), free, &mut 1)).unwrap());
                    out.push(b'\n');
                }
                *data = out;
            }
            _ => {}
        }
    }
    let theirs = read_runpack(&zip_of(&files)).unwrap();
    let ours = read_runpack(&original).unwrap();
    assert_eq!(theirs.run, ours.run);
    assert_eq!(theirs.refs, ours.refs);
    assert_eq!(theirs.intents, ours.intents);
    assert_eq!(theirs.results, ours.results);
    assert_eq!(theirs.projection(), ours.projection());
}
