//! Unit tests for the safe zip reader and runpack verification, with hostile zips built in the test.

use std::io::{Cursor, Write};

use gait_canon::sign::SigningKey;
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

use super::*;

const DEMO: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/artifacts/runpack_run_demo.zip"
));

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Replace every occurrence of `from` by `to` (same length) in the zip bytes: names are not covered by the CRC,
/// so this forges names the writer would refuse (duplicates, traversal).
fn patch(mut bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut i = 0;
    let mut hits = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
        i += 1;
    }
    assert!(hits >= 2, "expected local and central names");
    bytes
}

fn open(bytes: &[u8]) -> Result<SafeZip<Cursor<&[u8]>>, ArchiveError> {
    SafeZip::open(Cursor::new(bytes), ZipLimits::default())
}

fn demo_entries() -> Vec<(String, Vec<u8>)> {
    let mut zip = open(DEMO).unwrap();
    let names: Vec<String> = zip.names().map(str::to_owned).collect();
    names
        .into_iter()
        .map(|n| {
            let data = zip.read(&n).unwrap().unwrap();
            (n, data)
        })
        .collect()
}

fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    zip_of(&refs)
}

fn verify(bytes: &[u8], options: VerifyOptions<'_>) -> Result<RunpackVerifyReport, RunpackError> {
    verify_runpack(
        RunpackSource::Bytes {
            bytes,
            path: "runpack.zip",
        },
        options,
    )
}

#[test]
fn demo_runpack_lists_its_five_files() {
    let zip = open(DEMO).unwrap();
    let names: Vec<&str> = zip.names().collect();
    assert_eq!(
        names,
        [
            "intents.jsonl",
            "manifest.json",
            "refs.json",
            "results.jsonl",
            "run.json"
        ]
    );
}

#[test]
fn duplicate_entry_names_are_rejected() {
    let bytes = patch(
        zip_of(&[("a.json", b"1"), ("b.json", b"2")]),
        b"b.json",
        b"a.json",
    );
    assert_eq!(open(&bytes).err(), Some(ArchiveError::DuplicateName));
}

#[test]
fn traversal_and_absolute_names_are_rejected() {
    let bytes = patch(zip_of(&[("zz/x", b"1")]), b"zz/x", b"../x");
    assert!(
        matches!(open(&bytes), Err(ArchiveError::UnsafeName { ref name, .. }) if name == "../x")
    );
    let bytes = patch(zip_of(&[("zetc/x", b"1")]), b"zetc/x", b"/etc/x");
    assert!(matches!(open(&bytes), Err(ArchiveError::UnsafeName { .. })));
    let bytes = patch(zip_of(&[("a_b", b"1")]), b"a_b", b"a\\b");
    assert!(matches!(open(&bytes), Err(ArchiveError::UnsafeName { .. })));
    let bytes = patch(zip_of(&[("ok/zz/x", b"1")]), b"ok/zz/x", b"ok/../x");
    assert!(matches!(open(&bytes), Err(ArchiveError::UnsafeName { .. })));
}

#[test]
fn symlink_entries_are_rejected() {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .add_symlink("run.json", "/etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    assert!(matches!(open(&bytes), Err(ArchiveError::Symlink { .. })));
}

#[test]
fn directories_are_ignored() {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .add_directory("dir/", SimpleFileOptions::default())
        .unwrap();
    writer
        .start_file("dir/a", SimpleFileOptions::default())
        .unwrap();
    writer.write_all(b"x").unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    let zip = open(&bytes).unwrap();
    assert_eq!(zip.names().collect::<Vec<_>>(), ["dir/a"]);
}

#[test]
fn ten_thousand_entries_are_rejected_by_count() {
    let names: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let bytes = zip_of(&entries);
    assert!(matches!(
        open(&bytes),
        Err(ArchiveError::TooManyEntries {
            count: 10_000,
            max: 64
        })
    ));
}

#[test]
fn zip_bomb_is_stopped_at_the_ratio_bound() {
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let bytes = zip_of(&[("bomb", &zeros)]);
    assert!(
        bytes.len() < 1024 * 1024,
        "fixture should be highly compressed"
    );
    let mut zip = open(&bytes).unwrap();
    let err = zip.sha256_hex("bomb").unwrap_err();
    assert!(matches!(err, ArchiveError::Bomb { .. }), "{err}");
    assert!(err.to_string().contains("zip bomb"));
}

#[test]
fn entry_and_total_size_bounds_hold() {
    let data: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let bytes = zip_of(&[("a", &data), ("b", &data)]);
    let small = ZipLimits {
        max_entry_bytes: 1000,
        ..ZipLimits::default()
    };
    assert!(matches!(
        SafeZip::open(Cursor::new(&bytes[..]), small),
        Err(ArchiveError::EntryTooLarge { .. })
    ));
    let total = ZipLimits {
        max_total_bytes: 6000,
        ..ZipLimits::default()
    };
    let mut zip = SafeZip::open(Cursor::new(&bytes[..]), total).unwrap();
    zip.read("a").unwrap();
    assert!(matches!(
        zip.read("b"),
        Err(ArchiveError::TotalTooLarge { max: 6000 })
    ));
}

#[test]
fn garbage_is_not_a_zip() {
    assert!(matches!(
        open(b"definitely not a zip"),
        Err(ArchiveError::NotZip(_))
    ));
    assert!(matches!(
        open(&DEMO[..DEMO.len() / 2]),
        Err(ArchiveError::NotZip(_))
    ));
}

#[test]
fn changed_entry_content_is_a_hash_mismatch() {
    let mut entries = demo_entries();
    let run = entries.iter_mut().find(|(n, _)| n == "run.json").unwrap();
    let pos = run.1.iter().position(|&b| b == b'2').unwrap();
    run.1[pos] = b'3';
    let report = verify(&rezip(&entries), VerifyOptions::default()).unwrap();
    assert!(!report.ok);
    assert_eq!(report.hash_mismatches.len(), 1);
    assert_eq!(report.hash_mismatches[0].path, "run.json");
    assert_eq!(
        report.hash_mismatches[0].expected,
        "3b4a95934a26c509618c07761cb6312473a376059d5000de008fca3ad8287925"
    );
}

#[test]
fn flipped_byte_anywhere_never_verifies_changed_content() {
    // A flip may break the zip (error), break a digest (failed report), or hit bits without effect on the
    // inflated bytes (e.g. deflate's final-block flag at the end of the input); it may never verify other content.
    let original = demo_entries();
    let step = DEMO.len() / 211 + 1;
    for i in (0..DEMO.len()).step_by(step) {
        let mut bytes = DEMO.to_vec();
        bytes[i] ^= 0x01;
        let Ok(report) = verify(&bytes, VerifyOptions::default()) else {
            continue;
        };
        if report.ok {
            let mut zip = open(&bytes).unwrap();
            for (name, data) in &original {
                assert_eq!(
                    zip.read(name).unwrap().as_ref(),
                    Some(data),
                    "flip at {i} changed {name} yet verified"
                );
            }
        }
    }
}

#[test]
fn missing_entry_and_undeclared_required_file_are_reported() {
    let entries: Vec<(String, Vec<u8>)> = demo_entries()
        .into_iter()
        .filter(|(n, _)| n != "refs.json")
        .collect();
    let report = verify(&rezip(&entries), VerifyOptions::default()).unwrap();
    assert_eq!(report.missing_files, ["refs.json"]);
    assert!(!report.ok);
    let err = verify(&zip_of(&[("run.json", b"{}")]), VerifyOptions::default()).unwrap_err();
    assert!(matches!(err, RunpackError::MissingManifest));
}

/// Re-seal the demo manifest with a signature by `key`.
fn signed_demo(key: &SigningKey) -> Vec<u8> {
    let mut entries = demo_entries();
    let manifest = entries
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let value = gait_canon::parse_json(&manifest.1).unwrap();
    let sig = gait_canon::sign::sign_json(key, &value);
    let mut value = value;
    value["signatures"] = serde_json::json!([sig]);
    manifest.1 = gait_canon::canonical_bytes(&value);
    rezip(&entries)
}

#[test]
fn signature_status_follows_key_and_requirement() {
    let key = SigningKey::from_seed(&[4; 32]);
    let pk = key.public_key();
    let other = SigningKey::from_seed(&[5; 32]).public_key();
    let bytes = signed_demo(&key);

    let verified = verify(
        &bytes,
        VerifyOptions {
            public_key: Some(&pk),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(verified.signature_status, SignatureStatus::Verified);
    assert_eq!(
        (verified.signatures_total, verified.signatures_valid),
        (1, 1)
    );
    assert!(verified.ok);

    let skipped = verify(&bytes, VerifyOptions::default()).unwrap();
    assert_eq!(skipped.signature_status, SignatureStatus::Skipped);
    assert_eq!(skipped.signature_errors, ["public key not configured"]);
    assert!(skipped.ok);
    let required = verify(
        &bytes,
        VerifyOptions {
            require_signature: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(!required.ok);

    let failed = verify(
        &bytes,
        VerifyOptions {
            public_key: Some(&other),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(failed.signature_status, SignatureStatus::Failed);
    assert!(!failed.ok);
    assert!(
        failed.signature_errors[0].contains("key_id mismatch"),
        "{:?}",
        failed.signature_errors
    );

    let unsigned_required = verify(
        DEMO,
        VerifyOptions {
            require_signature: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(!unsigned_required.ok);
    assert_eq!(
        unsigned_required.signature_errors,
        ["manifest has no signatures"]
    );
    assert!(matches!(
        verify(
            DEMO,
            VerifyOptions {
                profile: Profile::Strict,
                ..VerifyOptions::default()
            }
        ),
        Err(RunpackError::StrictNeedsKey)
    ));
}

#[test]
fn read_runpack_decodes_all_files_and_projects_them() {
    let runpack = read_runpack(DEMO).unwrap();
    assert_eq!(runpack.intents.len(), 3);
    assert_eq!(runpack.results.len(), 3);
    assert_eq!(runpack.intents[0].tool_name, "tool.search");
    let projection = runpack.projection();
    assert_eq!(projection.run_id, "run_demo");
    assert_eq!(projection.receipt_count, 3);
    assert_eq!(projection.receipt_digest_vector.len(), 3);
    assert!(
        projection
            .receipt_digest_vector
            .windows(2)
            .all(|w| w[0] <= w[1])
    );
    // Intent args digests are DigestJCS of the captured args.
    for intent in &runpack.intents {
        let args = serde_json::Value::Object(intent.args.clone().unwrap());
        assert_eq!(gait_canon::digest_jcs(&args), intent.args_digest);
    }
}

#[test]
fn calls_list_each_intent_with_its_result_digest_and_count_what_a_cap_leaves_out() {
    let rp = read_runpack(DEMO).unwrap();
    let (calls, omitted) = rp.calls(100, 1 << 20);
    assert_eq!(omitted, 0);
    let tools: Vec<&str> = calls.iter().map(|c| c.tool_name.as_str()).collect();
    assert_eq!(tools, ["tool.search", "tool.fetch", "tool.summarize"]);
    assert_eq!(calls[0].intent_id, "intent_1");
    assert_eq!(
        calls[0].args_digest,
        "33d148a7de89102bce5e2be136ca2acc3398ff9970a1f922faa3838eae837e3c"
    );
    assert_eq!(
        calls[0].result_digest,
        "0b2abfe8ba8a9dae03e92bcb4fe8fb733661a8b0560dda0ce8d7ac553e7a79a6"
    );
    let (capped, omitted) = rp.calls(2, 1 << 20);
    assert_eq!((capped.len(), omitted), (2, 1));
    // A byte budget that fits only the first call's id and tool name.
    let (budget, omitted) = rp.calls(100, "intent_1tool.search".len());
    assert_eq!((budget.len(), omitted), (1, 2));
    assert_eq!(
        rp.created_unix_ms(),
        Some(1_770_249_600_000),
        "2026-02-05T00:00:00Z"
    );
}
