//! Unit tests for Gait signatures and key formats.

use serde_json::json;

use super::*;

const GAIT_PUBLIC_KEY: &str = "Ui21qF1AQrqK2LMWlGnTq1xFByIukTXX6hK+5dBsB/A=\n";

fn key() -> SigningKey {
    SigningKey::from_seed(&[7u8; 32])
}

#[test]
fn gait_public_key_text_yields_the_documented_key_id() {
    let pk = PublicKey::from_gait_public_key(GAIT_PUBLIC_KEY).unwrap();
    assert_eq!(
        pk.key_id(),
        "9b97aa2fdb1fc1e717ad9b1002ae70eb3df736a48abcbacb2f6578eb646ea398"
    );
    assert_eq!(pk.to_gait_public_key(), GAIT_PUBLIC_KEY.trim());
}

#[test]
fn private_key_text_round_trips_and_is_88_characters() {
    let k = key();
    let text = k.to_gait_private_key();
    assert_eq!(text.len(), 88);
    let back = SigningKey::from_gait_private_key(&format!("  {text}\n")).unwrap();
    assert_eq!(back.public_key(), k.public_key());
}

#[test]
fn private_key_with_a_foreign_public_half_is_rejected() {
    let mut pair = key().0.to_keypair_bytes();
    pair[40] ^= 1;
    let text = general_purpose::STANDARD.encode(pair);
    assert!(matches!(
        SigningKey::from_gait_private_key(&text),
        Err(KeyError::InconsistentPrivateKey)
    ));
}

#[test]
fn keys_of_the_wrong_length_or_encoding_are_rejected() {
    assert!(matches!(
        PublicKey::from_gait_public_key("AAAA"),
        Err(KeyError::Length {
            expected: 32,
            actual: 3,
            ..
        })
    ));
    assert!(matches!(
        SigningKey::from_gait_private_key(GAIT_PUBLIC_KEY),
        Err(KeyError::Length {
            expected: 64,
            actual: 32,
            ..
        })
    ));
    assert!(matches!(
        PublicKey::from_gait_public_key("not base64!"),
        Err(KeyError::Base64(_))
    ));
}

#[test]
fn sign_json_then_verify_json_accepts_and_records_the_digest() {
    let doc = json!({"b": 1, "a": [true, null, "x"]});
    let sig = sign_json(&key(), &doc);
    assert_eq!(sig.alg, "ed25519");
    assert_eq!(sig.key_id, key().public_key().key_id());
    assert_eq!(sig.signed_digest, crate::digest_jcs(&doc));
    assert_eq!(
        general_purpose::STANDARD.decode(&sig.sig).unwrap().len(),
        64
    );
    verify_json(&key().public_key(), &doc, &sig).unwrap();
}

#[test]
fn verify_distinguishes_every_failure() {
    let pk = key().public_key();
    let doc = json!({"verdict": "allow"});
    let good = sign_json(&key(), &doc);

    let changed = json!({"verdict": "block"});
    let err = verify_json(&pk, &changed, &good).unwrap_err();
    assert!(matches!(err, VerifyError::SignedDigestMismatch { .. }));
    assert_eq!(err.to_string(), "signed_digest mismatch");

    let missing = Signature {
        signed_digest: String::new(),
        ..good.clone()
    };
    assert_eq!(
        verify_json(&pk, &doc, &missing),
        Err(VerifyError::SignedDigestMissing)
    );

    let alg = Signature {
        alg: "rsa".into(),
        ..good.clone()
    };
    assert!(matches!(
        verify_json(&pk, &doc, &alg),
        Err(VerifyError::UnsupportedAlg(a)) if a == "rsa"
    ));

    let other = SigningKey::from_seed(&[8u8; 32]).public_key();
    assert!(matches!(
        verify_json(&other, &doc, &good),
        Err(VerifyError::KeyIdMismatch { .. })
    ));
    let no_key_id = Signature {
        key_id: String::new(),
        ..good.clone()
    };
    assert_eq!(
        verify_json(&other, &doc, &no_key_id),
        Err(VerifyError::BadSignature)
    );

    let short = Signature {
        sig: general_purpose::STANDARD.encode([0u8; 63]),
        ..good.clone()
    };
    assert!(matches!(
        verify_json(&pk, &doc, &short),
        Err(VerifyError::BadEncoding(_))
    ));
    let garbage = Signature {
        sig: "%%%".into(),
        ..good.clone()
    };
    assert!(matches!(
        verify_json(&pk, &doc, &garbage),
        Err(VerifyError::BadEncoding(_))
    ));

    let mut raw = general_purpose::STANDARD.decode(&good.sig).unwrap();
    raw[10] ^= 0x40;
    let flipped = Signature {
        sig: general_purpose::STANDARD.encode(raw),
        ..good
    };
    assert_eq!(
        verify_json(&pk, &doc, &flipped),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sign_digest_hex_rejects_non_digests_and_normalizes_case() {
    assert!(key().sign_digest_hex("abc").is_err());
    assert!(key().sign_digest_hex(&"g".repeat(64)).is_err());
    let upper = "AB".repeat(32);
    let sig = key().sign_digest_hex(&upper).unwrap();
    assert_eq!(sig.signed_digest, "ab".repeat(32));
    verify_digest_hex(&key().public_key(), &sig.signed_digest, &sig).unwrap();
}

#[test]
fn signature_serializes_with_gait_field_names() {
    let sig = Signature {
        alg: "ed25519".into(),
        key_id: "k".into(),
        sig: "s".into(),
        signed_digest: "d".into(),
    };
    assert_eq!(
        serde_json::to_string(&sig).unwrap(),
        r#"{"alg":"ed25519","key_id":"k","sig":"s","signed_digest":"d"}"#
    );
    let parsed: Signature = serde_json::from_str(r#"{"alg":"ed25519","sig":"s"}"#).unwrap();
    assert!(parsed.signed_digest.is_empty() && parsed.key_id.is_empty());
}

#[test]
fn key_files_round_trip_with_private_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (dir.path().join("k.key"), dir.path().join("k.pub"));
    let k = SigningKey::generate();
    write_key_pair(&private, &public, &k).unwrap();
    assert_eq!(fs::read_to_string(&private).unwrap().len(), 89);
    assert_eq!(fs::read_to_string(&public).unwrap().len(), 45);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        load_private_key_file(&private).unwrap().public_key(),
        k.public_key()
    );
    assert_eq!(load_public_key_file(&public).unwrap(), k.public_key());
}

#[test]
fn key_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.key");
    let err = load_public_key_file(&missing).unwrap_err();
    assert!(err.to_string().contains("absent.key"), "{err}");
    let bad = dir.path().join("bad.pub");
    fs::write(&bad, "AAAA\n").unwrap();
    let err = load_public_key_file(&bad).unwrap_err();
    assert!(
        err.to_string().contains("bad.pub") && err.to_string().contains("32 bytes"),
        "{err}"
    );
}

#[test]
fn generated_keys_differ() {
    assert_ne!(
        SigningKey::generate().public_key(),
        SigningKey::generate().public_key()
    );
}
