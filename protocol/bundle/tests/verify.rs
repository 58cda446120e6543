//! Bundle verification end to end: a real Ed25519 key signs real bundles, which are then tampered with in every
//! way the verifier must catch.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gait_bundle::{
    BUNDLE_SCHEMA_ID, BundleBuilder, BundleError, CaptureMode, MAX_BUNDLE_LEN, MAX_SAFE_INTEGER,
    OnStale, Scope, Settings, Staleness, TrustRoot, inspect, verify,
};
use gait_canon::sign::{SigningKey, sign_json};
use serde_json::{Value, json};

/// An in-place change to a JSON document.
type Edit = fn(&mut Value);

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: i64 = 86_400;
const EPOCH: u64 = 12;

const POLICY_A: &[u8] = b"schema_id: gait.gate.policy\ndefault_verdict: block\n";
const POLICY_B: &[u8] = b"rules:\n  - name: allow-read\n    effect: allow\n";

fn key() -> SigningKey {
    SigningKey::from_seed(&[7; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_seed(&[8; 32])
}

fn trust() -> TrustRoot {
    TrustRoot::from_public_keys(vec![key().public_key()])
}

fn scope() -> Scope {
    Scope::from_parts("acme", "payments", "prod").unwrap()
}

fn builder() -> BundleBuilder {
    let mut b = BundleBuilder::new(scope(), EPOCH, NOW + DAY);
    b.created_at(NOW - 60)
        .parent([0xab; 32])
        .staleness(Staleness {
            max_offline_seconds: 3600,
            on_stale: OnStale::FailClosed,
        })
        .add_policy("base.yaml", POLICY_A)
        .add_policy("api.yaml", POLICY_B);
    b
}

fn bundle() -> Vec<u8> {
    builder().sign(&key()).unwrap()
}

fn check(bytes: &[u8]) -> Result<gait_bundle::VerifiedBundle, BundleError> {
    verify(bytes, &trust(), &scope(), Some(EPOCH - 1), NOW)
}

fn doc(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn bytes_of(doc: &Value) -> Vec<u8> {
    serde_json::to_vec(doc).unwrap()
}

/// Re-sign `manifest` with `key` and put it into `doc` (a forger holding `key`).
fn resign(mut doc: Value, manifest: Value, key: &SigningKey) -> Vec<u8> {
    let sig = sign_json(key, &manifest);
    doc["manifest"] = manifest;
    doc["signature"] = json!({"alg": sig.alg, "key_id": sig.key_id, "sig": sig.sig, "signed_digest": sig.signed_digest});
    bytes_of(&doc)
}

#[test]
fn signed_bundle_verifies_and_returns_manifest_files_and_digest() {
    let bytes = bundle();
    let v = check(&bytes).unwrap();
    assert_eq!(v.manifest.scope, scope());
    assert_eq!(v.manifest.epoch, EPOCH);
    assert_eq!(v.manifest.created_at, "2025-12-31T23:59:00Z");
    assert_eq!(v.manifest.not_after, "2026-01-02T00:00:00Z");
    assert_eq!(
        v.manifest.parent_digest.as_deref(),
        Some("ab".repeat(32).as_str())
    );
    assert_eq!(v.manifest.staleness.on_stale, OnStale::FailClosed);
    assert_eq!(v.manifest.key_id, key().public_key().key_id());
    let names: Vec<_> = v
        .manifest
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["api.yaml", "base.yaml"],
        "policies are sorted by name"
    );
    assert_eq!(v.files["base.yaml"], POLICY_A);
    assert_eq!(v.files["api.yaml"], POLICY_B);
    assert_eq!(v.raw, bytes);

    let d = doc(&bytes);
    assert_eq!(v.digest_hex, gait_canon::digest_jcs(&d["manifest"]));
    assert_eq!(d["signature"]["signed_digest"], json!(v.digest_hex));
    assert_eq!(hex::encode(v.digest), v.digest_hex);
    assert_eq!(
        v.manifest.digest().unwrap(),
        (v.digest, v.digest_hex.clone())
    );
    assert_eq!(inspect(&bytes).unwrap(), v.manifest);
    // Without a current epoch (first bundle ever) it verifies too.
    assert!(verify(&bytes, &trust(), &scope(), None, NOW).is_ok());
}

#[test]
fn flipped_signature_bit_is_refused() {
    let mut d = doc(&bundle());
    let mut raw = STANDARD
        .decode(d["signature"]["sig"].as_str().unwrap())
        .unwrap();
    raw[10] ^= 0x01;
    d["signature"]["sig"] = json!(STANDARD.encode(raw));
    let err = check(&bytes_of(&d)).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature(_)), "{err:?}");
    assert_eq!(err.code(), "bundle_signature_invalid");
}

#[test]
fn signature_by_an_untrusted_key_claiming_a_trusted_key_id_is_refused() {
    let d = doc(&bundle());
    let manifest = d["manifest"].clone();
    let forged = sign_json(&other_key(), &manifest);
    let mut d2 = d.clone();
    d2["signature"]["sig"] = json!(forged.sig);
    assert!(matches!(
        check(&bytes_of(&d2)),
        Err(BundleError::BadSignature(_))
    ));
}

#[test]
fn tampered_policy_file_byte_is_refused() {
    let mut d = doc(&bundle());
    let mut raw = STANDARD
        .decode(d["files"]["base.yaml"].as_str().unwrap())
        .unwrap();
    raw[0] ^= 0x20;
    d["files"]["base.yaml"] = json!(STANDARD.encode(raw));
    assert_eq!(
        check(&bytes_of(&d)).unwrap_err(),
        BundleError::FileDigestMismatch {
            name: "base.yaml".into()
        }
    );
}

#[test]
fn truncated_policy_file_is_refused() {
    let mut d = doc(&bundle());
    d["files"]["api.yaml"] = json!(STANDARD.encode(&POLICY_B[..POLICY_B.len() - 1]));
    assert_eq!(
        check(&bytes_of(&d)).unwrap_err(),
        BundleError::FileDigestMismatch {
            name: "api.yaml".into()
        }
    );
}

#[test]
fn unlisted_extra_file_is_refused() {
    let mut d = doc(&bundle());
    d["files"]["extra.yaml"] = json!(STANDARD.encode(b"default_verdict: allow\n"));
    let err = check(&bytes_of(&d)).unwrap_err();
    assert_eq!(
        err,
        BundleError::UnlistedFile {
            name: "extra.yaml".into()
        }
    );
    assert_eq!(err.code(), "bundle_file_unlisted");
}

#[test]
fn missing_listed_file_is_refused() {
    let mut d = doc(&bundle());
    d["files"].as_object_mut().unwrap().remove("api.yaml");
    assert_eq!(
        check(&bytes_of(&d)).unwrap_err(),
        BundleError::MissingFile {
            name: "api.yaml".into()
        }
    );
}

#[test]
fn file_that_is_not_base64_is_malformed() {
    let mut d = doc(&bundle());
    d["files"]["api.yaml"] = json!("not base64!");
    assert!(
        matches!(check(&bytes_of(&d)), Err(BundleError::Malformed(m)) if m.contains("files.api.yaml"))
    );
}

#[test]
fn bundle_for_another_scope_is_refused_on_each_scope_part() {
    let bytes = bundle();
    for other in [
        Scope::from_parts("other", "payments", "prod").unwrap(),
        Scope::from_parts("acme", "other", "prod").unwrap(),
        Scope::from_parts("acme", "payments", "staging").unwrap(),
    ] {
        let err = verify(&bytes, &trust(), &other, None, NOW).unwrap_err();
        assert_eq!(
            err,
            BundleError::ScopeMismatch {
                expected: Box::new(other.clone()),
                got: Box::new(scope())
            }
        );
        assert!(err.is_authentic());
    }
}

#[test]
fn bundle_is_refused_from_the_instant_of_not_after() {
    let bytes = bundle();
    assert!(verify(&bytes, &trust(), &scope(), None, NOW + DAY - 1).is_ok());
    let err = verify(&bytes, &trust(), &scope(), None, NOW + DAY).unwrap_err();
    assert_eq!(
        err,
        BundleError::Expired {
            not_after: "2026-01-02T00:00:00Z".into()
        }
    );
    assert_eq!(err.code(), "bundle_expired");
}

#[test]
fn equal_and_older_epochs_are_refused_as_replay_or_rollback() {
    let bytes = bundle();
    for current in [EPOCH, EPOCH + 1, u64::MAX] {
        let err = verify(&bytes, &trust(), &scope(), Some(current), NOW).unwrap_err();
        assert_eq!(
            err,
            BundleError::StaleEpoch {
                offered: EPOCH,
                current
            }
        );
        assert_eq!(err.code(), "bundle_epoch_stale");
    }
    assert!(verify(&bytes, &trust(), &scope(), Some(0), NOW).is_ok());
}

#[test]
fn key_not_in_the_trust_root_is_refused() {
    let bytes = builder().sign(&other_key()).unwrap();
    let err = check(&bytes).unwrap_err();
    assert_eq!(
        err,
        BundleError::UnknownKey {
            key_id: other_key().public_key().key_id()
        }
    );
    assert_eq!(err.code(), "bundle_key_unknown");
    assert!(matches!(
        verify(&bundle(), &TrustRoot::default(), &scope(), None, NOW),
        Err(BundleError::UnknownKey { .. })
    ));
    // Display needs no trust.
    assert_eq!(
        inspect(&bytes).unwrap().key_id,
        other_key().public_key().key_id()
    );
}

#[test]
fn any_manifest_field_changed_after_signing_is_refused() {
    let d = doc(&bundle());
    let edits: Vec<(&str, Edit)> = vec![
        ("epoch", |m| m["epoch"] = json!(EPOCH + 100)),
        ("not_after", |m| {
            m["not_after"] = json!("2099-01-01T00:00:00Z")
        }),
        ("scope.env", |m| m["scope"]["env"] = json!("dev")),
        ("staleness", |m| m["staleness"]["on_stale"] = json!("keep")),
        ("policy size", |m| m["policies"][0]["size"] = json!(1)),
        ("parent removed", |m| {
            m.as_object_mut().unwrap().remove("parent_digest");
        }),
    ];
    for (what, edit) in edits {
        let mut d2 = d.clone();
        edit(&mut d2["manifest"]);
        let err = check(&bytes_of(&d2)).unwrap_err();
        assert!(
            matches!(err, BundleError::BadSignature(_)),
            "{what}: {err:?}"
        );

        // Updating signed_digest to the new digest does not help: the Ed25519 check fails.
        let mut d3 = d2.clone();
        d3["signature"]["signed_digest"] = json!(gait_canon::digest_jcs(&d2["manifest"]));
        let err = check(&bytes_of(&d3)).unwrap_err();
        assert!(
            matches!(err, BundleError::BadSignature(_)),
            "{what} with new signed_digest: {err:?}"
        );
    }
}

#[test]
fn forged_bundle_reports_the_signature_not_expiry_or_epoch() {
    let mut d = doc(&bundle());
    d["manifest"]["not_after"] = json!("2000-01-02T00:00:00Z");
    d["manifest"]["created_at"] = json!("2000-01-01T00:00:00Z");
    let err = verify(&bytes_of(&d), &trust(), &scope(), Some(EPOCH + 5), NOW).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature(_)), "{err:?}");
    assert!(!err.is_authentic());
}

#[test]
fn manifest_key_id_must_name_the_signing_key() {
    let d = doc(&bundle());
    let mut manifest = d["manifest"].clone();
    manifest["key_id"] = json!(other_key().public_key().key_id());
    let err = check(&resign(d, manifest, &key())).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature(m) if m.contains("manifest.key_id")));
}

#[test]
fn capture_mode_is_signed_and_omitted_at_reference() {
    // `reference` (the default) leaves the manifest and its digest as they were before the field existed.
    let plain = check(&bundle()).unwrap();
    assert_eq!(plain.manifest.settings.capture_mode, CaptureMode::Reference);
    let mut b = builder();
    b.settings(Settings {
        capture_mode: CaptureMode::Reference,
        ..Settings::default()
    });
    let same = b.sign(&key()).unwrap();
    assert!(doc(&same)["manifest"].get("settings").is_none());
    assert_eq!(check(&same).unwrap().digest_hex, plain.digest_hex);

    let mut b = builder();
    b.settings(Settings {
        capture_mode: CaptureMode::Raw,
        ..Settings::default()
    });
    let bytes = b.sign(&key()).unwrap();
    let v = check(&bytes).unwrap();
    assert_eq!(v.manifest.settings.capture_mode, CaptureMode::Raw);
    assert_eq!(
        doc(&bytes)["manifest"]["settings"],
        json!({"capture_mode": "raw"})
    );
    assert_ne!(v.digest_hex, plain.digest_hex, "the mode is signed");
    // Turning raw capture on locally breaks the signature.
    let mut forged = doc(&bundle());
    forged["manifest"]["settings"] = json!({"capture_mode": "raw"});
    assert!(matches!(
        check(&bytes_of(&forged)),
        Err(BundleError::BadSignature(_))
    ));
    // An unknown mode is refused like any malformed field.
    let mut manifest = doc(&bytes)["manifest"].clone();
    manifest["settings"]["capture_mode"] = json!("everything");
    assert!(check(&resign(doc(&bytes), manifest, &key())).is_err());
}

#[test]
fn settings_are_signed_and_omitted_while_default() {
    // Default settings leave the manifest (and so the digest of every bundle published before them) unchanged.
    let plain = doc(&bundle());
    assert!(plain["manifest"].get("settings").is_none(), "{plain}");
    assert!(
        !check(&bundle())
            .unwrap()
            .manifest
            .settings
            .allow_caller_simulate
    );

    let mut b = builder();
    b.settings(Settings {
        allow_caller_simulate: true,
        ..Settings::default()
    });
    let bytes = b.sign(&key()).unwrap();
    let v = check(&bytes).unwrap();
    assert!(v.manifest.settings.allow_caller_simulate);
    let d = doc(&bytes);
    assert_eq!(
        d["manifest"]["settings"],
        json!({"allow_caller_simulate": true})
    );
    assert_ne!(
        v.digest_hex,
        check(&bundle()).unwrap().digest_hex,
        "the setting is part of the signed digest"
    );
    // A local edit of the setting breaks the signature.
    let mut forged = doc(&bundle());
    forged["manifest"]["settings"] = json!({"allow_caller_simulate": true});
    assert!(matches!(
        check(&bytes_of(&forged)),
        Err(BundleError::BadSignature(_))
    ));
    // Unknown settings are refused like any unknown manifest field.
    let mut manifest = d["manifest"].clone();
    manifest["settings"]["allow_everything"] = json!(true);
    assert!(matches!(
        check(&resign(d, manifest, &key())),
        Err(BundleError::Malformed(m)) if m.contains("allow_everything")
    ));
}

#[test]
fn upload_artifacts_is_signed_apart_and_omitted_while_false() {
    let mut b = builder();
    b.settings(Settings {
        upload_artifacts: true,
        ..Settings::default()
    });
    let bytes = b.sign(&key()).unwrap();
    let v = check(&bytes).unwrap();
    assert!(v.manifest.settings.upload_artifacts && !v.manifest.settings.allow_caller_simulate);
    assert_eq!(
        doc(&bytes)["manifest"]["settings"],
        json!({"upload_artifacts": true})
    );
    assert!(!check(&bundle()).unwrap().manifest.settings.upload_artifacts);
    let mut forged = doc(&bundle());
    forged["manifest"]["settings"] = json!({"upload_artifacts": true});
    assert!(matches!(
        check(&bytes_of(&forged)),
        Err(BundleError::BadSignature(_))
    ));
}

#[test]
fn validly_signed_manifest_with_an_unknown_field_is_malformed() {
    let d = doc(&bundle());
    let mut manifest = d["manifest"].clone();
    // (`rollback` was this test's unknown field until it became a field of the format.)
    manifest["downgrade"] = json!(true);
    let err = check(&resign(d, manifest, &key())).unwrap_err();
    assert!(
        matches!(&err, BundleError::Malformed(m) if m.contains("downgrade")),
        "{err:?}"
    );
    assert_eq!(err.code(), "bundle_malformed");
}

#[test]
fn validly_signed_manifest_breaking_field_rules_is_malformed() {
    let d = doc(&bundle());
    let cases: Vec<(&str, Edit)> = vec![
        ("null parent", |m| m["parent_digest"] = Value::Null),
        ("unsorted policies", |m| {
            let p = m["policies"].as_array_mut().unwrap();
            p.swap(0, 1);
        }),
        ("epoch zero", |m| m["epoch"] = json!(0)),
        ("epoch beyond 2^53", |m| {
            m["epoch"] = json!(MAX_SAFE_INTEGER + 1)
        }),
        ("float epoch", |m| m["epoch"] = json!(12.0)),
        ("bad time", |m| m["not_after"] = json!("tomorrow")),
        ("upper-case hex", |m| {
            m["parent_digest"] = json!("AB".repeat(32))
        }),
        ("path in name", |m| {
            m["policies"][0]["name"] = json!("../etc/passwd")
        }),
        ("empty org", |m| m["scope"]["org"] = json!("")),
        ("on_stale", |m| {
            m["staleness"]["on_stale"] = json!("explode")
        }),
    ];
    for (what, edit) in cases {
        let mut manifest = d["manifest"].clone();
        edit(&mut manifest);
        let err = check(&resign(d.clone(), manifest, &key())).unwrap_err();
        assert!(matches!(err, BundleError::Malformed(_)), "{what}: {err:?}");
    }
}

#[test]
fn document_level_problems_are_malformed_or_unsupported() {
    let bytes = bundle();
    let text = String::from_utf8(bytes.clone()).unwrap();

    assert!(matches!(check(b"not json"), Err(BundleError::Malformed(_))));
    assert!(matches!(check(b""), Err(BundleError::Malformed(_))));
    assert!(matches!(check(b"[]"), Err(BundleError::Malformed(_))));

    // Duplicate key (the second "files" would otherwise silently win).
    let dup = format!("{},\"files\":{{}}}}", &text[..text.len() - 1]);
    assert!(
        matches!(check(dup.as_bytes()), Err(BundleError::Malformed(m)) if m.contains("duplicate"))
    );

    let mut d = doc(&bytes);
    d["extra"] = json!(1);
    assert!(matches!(check(&bytes_of(&d)), Err(BundleError::Malformed(m)) if m.contains("extra")));

    let mut d = doc(&bytes);
    d["signature"]["note"] = json!("x");
    assert!(matches!(
        check(&bytes_of(&d)),
        Err(BundleError::Malformed(_))
    ));

    let mut d = doc(&bytes);
    d["schema_id"] = json!("gait.fleet.something_else");
    let err = check(&bytes_of(&d)).unwrap_err();
    assert_eq!(err.code(), "bundle_schema_unsupported");

    let mut d = doc(&bytes);
    d["schema_version"] = json!("2.0.0");
    assert!(matches!(
        check(&bytes_of(&d)),
        Err(BundleError::UnsupportedSchema { .. })
    ));

    // A later 1.x reader-compatible version is accepted.
    let mut d = doc(&bytes);
    d["schema_version"] = json!("1.4.0");
    assert!(check(&bytes_of(&d)).is_ok());
    assert_eq!(d["schema_id"], json!(BUNDLE_SCHEMA_ID));
}

#[test]
fn oversized_document_is_refused_before_parsing() {
    let mut big = bundle();
    big.resize(MAX_BUNDLE_LEN + 1, b' ');
    assert_eq!(
        check(&big).unwrap_err(),
        BundleError::TooLarge {
            size: MAX_BUNDLE_LEN + 1,
            limit: MAX_BUNDLE_LEN
        }
    );
    assert!(matches!(inspect(&big), Err(BundleError::TooLarge { .. })));
    // Trailing whitespace below the cap is fine JSON.
    let mut padded = bundle();
    padded.extend_from_slice(b"  \n");
    assert!(check(&padded).is_ok());
}

#[test]
fn builder_refuses_bad_input() {
    let mut b = builder();
    b.add_policy("api.yaml", b"again".to_vec());
    assert!(matches!(b.sign(&key()), Err(BundleError::Malformed(m)) if m.contains("twice")));

    let mut b = builder();
    b.add_policy("sub/dir.yaml", b"x".to_vec());
    assert!(matches!(b.sign(&key()), Err(BundleError::Malformed(m)) if m.contains("sub/dir.yaml")));

    let mut b = builder();
    b.not_after(NOW - 60);
    assert!(matches!(b.sign(&key()), Err(BundleError::Malformed(m)) if m.contains("not_after")));

    let b = BundleBuilder::new(scope(), 0, NOW + DAY);
    assert!(matches!(b.sign(&key()), Err(BundleError::Malformed(m)) if m.contains("epoch")));

    let mut b = builder();
    b.add_policy("huge.bin", vec![0u8; MAX_BUNDLE_LEN]);
    assert!(matches!(b.sign(&key()), Err(BundleError::TooLarge { .. })));
}

#[test]
fn builder_defaults_created_at_to_the_clock_and_allows_an_empty_policy_set() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let bytes = BundleBuilder::new(scope(), 1, now + DAY)
        .sign(&key())
        .unwrap();
    let v = verify(&bytes, &trust(), &scope(), None, now).unwrap();
    let created = v.manifest.created_at_unix().unwrap();
    assert!(
        (now - 5..=now + 5).contains(&created),
        "created_at {created} vs clock {now}"
    );
    assert!(v.manifest.policies.is_empty() && v.files.is_empty());
    assert_eq!(v.manifest.parent_digest, None);
    assert!(!String::from_utf8(bytes).unwrap().contains("parent_digest"));
}

#[test]
fn error_codes_are_distinct_and_prefixed() {
    let errors = [
        BundleError::TooLarge { size: 1, limit: 0 },
        BundleError::Malformed(String::new()),
        BundleError::UnsupportedSchema {
            schema_id: String::new(),
            schema_version: String::new(),
        },
        BundleError::UnknownKey {
            key_id: String::new(),
        },
        BundleError::BadSignature(String::new()),
        BundleError::FileDigestMismatch {
            name: String::new(),
        },
        BundleError::MissingFile {
            name: String::new(),
        },
        BundleError::UnlistedFile {
            name: String::new(),
        },
        BundleError::ScopeMismatch {
            expected: Box::new(scope()),
            got: Box::new(scope()),
        },
        BundleError::Expired {
            not_after: String::new(),
        },
        BundleError::StaleEpoch {
            offered: 0,
            current: 0,
        },
    ];
    let codes: std::collections::BTreeSet<_> = errors.iter().map(BundleError::code).collect();
    assert_eq!(codes.len(), errors.len());
    assert!(codes.iter().all(|c| c.starts_with("bundle_")));
}

#[test]
fn validly_signed_scope_breaking_the_identifier_rule_is_malformed_naming_the_part() {
    let d = doc(&bundle());
    let cases: Vec<(&str, Edit)> = vec![
        ("manifest.scope.org", |m| m["scope"]["org"] = json!("Acme")),
        ("manifest.scope.org", |m| m["scope"]["org"] = json!("")),
        ("manifest.scope.project", |m| {
            m["scope"]["project"] = json!("p".repeat(64))
        }),
        ("manifest.scope.env", |m| m["scope"]["env"] = json!("..")),
        ("manifest.scope.env", |m| m["scope"]["env"] = json!("prød")),
    ];
    for (field, edit) in cases {
        let mut manifest = d["manifest"].clone();
        edit(&mut manifest);
        let err = check(&resign(d.clone(), manifest, &key())).unwrap_err();
        assert!(
            matches!(&err, BundleError::Malformed(m) if m.contains(&format!("{field}: invalid"))),
            "{field}: {err:?}"
        );
    }
    let mut manifest = d["manifest"].clone();
    manifest["scope"]["tier"] = json!("gold");
    let err = check(&resign(d.clone(), manifest, &key())).unwrap_err();
    assert!(
        matches!(&err, BundleError::Malformed(m) if m.contains("tier")),
        "{err:?}"
    );
}

#[test]
fn manifest_scope_json_is_three_plain_strings() {
    let d = doc(&bundle());
    assert_eq!(
        d["manifest"]["scope"],
        json!({"org": "acme", "project": "payments", "env": "prod"})
    );
    let v = check(&bundle()).unwrap();
    assert_eq!(v.manifest.scope.to_string(), "acme/payments/prod");
}

#[test]
fn a_staged_candidate_is_signed_bound_and_verified_like_a_policy() {
    use gait_bundle::Stage;
    let mut b = builder();
    b.candidate("base.yaml", Stage::Observe, "base.candidate.yaml", POLICY_B)
        .delegation_key(&other_key().public_key());
    let bytes = b.sign(&key()).unwrap();
    let v = check(&bytes).unwrap();
    let base = &v.manifest.policies[1];
    assert_eq!(base.stage, Stage::Observe);
    let candidate = base.candidate.as_ref().expect("candidate listed");
    assert_eq!(candidate.name, "base.candidate.yaml");
    assert_eq!(candidate.sha256, gait_canon::sha256_hex(POLICY_B));
    assert_eq!(v.files["base.candidate.yaml"], POLICY_B);
    assert_eq!(
        v.manifest.policies[0].stage,
        Stage::Enforce,
        "unstaged is enforce"
    );
    assert_eq!(
        v.manifest.delegation_public_key(),
        Some(other_key().public_key())
    );

    // The candidate's bytes are bound like a policy's.
    let mut d = doc(&bytes);
    d["files"]["base.candidate.yaml"] = Value::from(STANDARD.encode(POLICY_A));
    assert!(matches!(
        check(&bytes_of(&d)),
        Err(BundleError::FileDigestMismatch { name }) if name == "base.candidate.yaml"
    ));
    // The stage is signed: moving it is a forgery.
    let mut d = doc(&bytes);
    d["manifest"]["policies"][1]["stage"] = Value::from("dry_run");
    assert!(matches!(
        check(&bytes_of(&d)),
        Err(BundleError::BadSignature(_))
    ));
    // A stage without candidate, a candidate at enforce and a candidate named like a policy are malformed.
    let mut d = doc(&bytes);
    let mut manifest = d["manifest"].take();
    manifest["policies"][1]
        .as_object_mut()
        .unwrap()
        .remove("candidate");
    let err = check(&resign(d, manifest, &key())).unwrap_err();
    assert!(
        err.to_string().contains("manifest.policies[1].stage"),
        "{err}"
    );
    let mut enforce = builder();
    enforce.candidate("base.yaml", Stage::Enforce, "c.yaml", POLICY_B);
    let err = enforce.sign(&key()).unwrap_err();
    assert!(
        err.to_string().contains("manifest.policies[1].candidate"),
        "{err}"
    );
    let mut clash = builder();
    clash.candidate("base.yaml", Stage::DryRun, "api.yaml", POLICY_B);
    let err = clash.sign(&key()).unwrap_err();
    assert!(err.to_string().contains("candidate.name"), "{err}");
    let mut orphan = builder();
    orphan.candidate("nope.yaml", Stage::DryRun, "c.yaml", POLICY_B);
    assert!(orphan.sign(&key()).is_err());
}

#[test]
fn a_bundle_without_stages_keeps_its_manifest_bytes() {
    // No stage, candidate or delegation key: none of the new fields appears, so older digests stay.
    let d = doc(&bundle());
    let text = d["manifest"].to_string();
    for field in ["stage", "candidate", "delegation_key"] {
        assert!(!text.contains(field), "{field} in {text}");
    }
}

/// The digest of `builder()`'s manifest as every release before `manifest.rollback` computed it.
const GOLDEN_DIGEST: &str = "e47bcaf4ce52fedee4eb214bf2761de6de028b69c2591bf17675519a926ba1bb";

#[test]
fn a_manifest_without_a_rollback_keeps_its_golden_digest() {
    let v = check(&bundle()).unwrap();
    assert_eq!(v.digest_hex, GOLDEN_DIGEST);
    assert!(
        !doc(&bundle())["manifest"]
            .as_object()
            .unwrap()
            .contains_key("rollback")
    );
}

fn rollback() -> gait_bundle::Rollback {
    gait_bundle::Rollback {
        from_digest: "cd".repeat(32),
        restores_epoch: EPOCH - 2,
        restores_digest: "ef".repeat(32),
        reason: "v2 blocks reads".into(),
    }
}

#[test]
fn a_rollback_marker_is_signed_and_verifies_as_a_new_epoch_only() {
    let mut b = builder();
    b.rollback(rollback());
    let bytes = b.sign(&key()).unwrap();
    let v = check(&bytes).unwrap();
    assert_eq!(v.manifest.rollback, Some(rollback()));
    assert_ne!(
        v.digest_hex, GOLDEN_DIGEST,
        "the marker is part of the digest"
    );
    // Anti-rollback is unchanged: a rollback bundle is still refused at or below the current epoch.
    let stale = verify(&bytes, &trust(), &scope(), Some(EPOCH), NOW).unwrap_err();
    assert_eq!(stale.code(), "bundle_epoch_stale", "{stale:?}");
    // Stripping the marker breaks the signature.
    let mut d = doc(&bytes);
    d["manifest"].as_object_mut().unwrap().remove("rollback");
    let err = check(&bytes_of(&d)).unwrap_err();
    assert!(!err.is_authentic(), "{err:?}");
}

#[test]
fn a_rollback_marker_breaking_its_rules_is_refused_naming_the_field() {
    type RollbackEdit = fn(&mut gait_bundle::Rollback);
    let cases: [(RollbackEdit, &str); 4] = [
        (
            |r| r.restores_epoch = EPOCH,
            "manifest.rollback.restores_epoch",
        ),
        (|r| r.restores_epoch = 0, "manifest.rollback.restores_epoch"),
        (
            |r| r.from_digest = "XY".into(),
            "manifest.rollback.from_digest",
        ),
        (|r| r.reason = "a\nb".into(), "manifest.rollback.reason"),
    ];
    for (edit, field) in cases {
        let mut r = rollback();
        edit(&mut r);
        let mut b = builder();
        b.rollback(r);
        let err = b.sign(&key()).unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}
