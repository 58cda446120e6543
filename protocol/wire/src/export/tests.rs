//! Unit tests of the outbox export format: round trip, tamper of any byte, caps, chain and time checks.

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
    SigningKey as _,
};

use super::*;
use crate::GENESIS_HASH;

const URI: &str = "spiffe://gait.local/org/acme/project/web/env/prod/agent/a1";
/// 2026-01-01T00:00:00Z in seconds.
const JAN_2026: i64 = 1_767_225_600;

struct Pki {
    ca_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_key: KeyPair,
}

/// A CA valid 2025-2035 and an agent certificate valid for 2026 only.
fn pki() -> Pki {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = rcgen::date_time_ymd(2025, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(URI.try_into().unwrap())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = rcgen::date_time_ymd(2026, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2027, 1, 1);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca_der: ca_cert.der().to_vec(),
        leaf_der: leaf_cert.der().to_vec(),
        leaf_key,
    }
}

fn records(first: u64, last: u64) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for seq in first..=last {
        let prev = out.last().map_or(
            if seq == 1 { GENESIS_HASH } else { [7; 32] },
            |r: &Record| r.hash,
        );
        out.push(Record::sealed(
            seq,
            prev,
            if seq % 2 == 0 {
                RecordClass::Allow
            } else {
                RecordClass::Block
            },
            "gate.decision",
            JAN_2026 * 1000 + seq as i64,
            (seq % 3 == 0).then_some(BundleRef {
                epoch: 4,
                digest: [9; 32],
                since_unix_ms: 5,
            }),
            format!(r#"{{"verdict":"allow","n":{seq}}}"#).into_bytes(),
        ));
    }
    out
}

fn sealed(pki: &Pki, recs: Vec<Record>, created_unix_ms: i64) -> OutboxExport {
    OutboxExport::seal(
        URI,
        recs,
        created_unix_ms,
        vec![pki.leaf_der.clone()],
        SignatureAlgorithm::EcdsaP256Sha256,
        |input| pki.leaf_key.sign(input),
    )
    .unwrap()
}

fn mid_2026_ms() -> i64 {
    (JAN_2026 + 180 * 86_400) * 1000
}

#[test]
fn a_sealed_export_round_trips_and_verifies_against_its_ca_at_the_export_time() {
    let pki = pki();
    let export = sealed(&pki, records(1, 5), mid_2026_ms());
    let bytes = export.encode();
    let decoded = OutboxExport::decode(&bytes).expect("decodes");
    assert_eq!(decoded, export);
    assert_eq!(decoded.header.first_seq, 1);
    assert_eq!(decoded.header.last_seq, 5);
    assert_eq!(decoded.header.count, 5);
    decoded.verify_signature().expect("signature");
    decoded
        .verify_certificate_chain(
            std::slice::from_ref(&pki.ca_der),
            (mid_2026_ms() / 1000) as u64,
        )
        .expect("chain at the export time");
}

#[test]
fn changing_any_byte_of_the_file_is_refused() {
    let pki = pki();
    let bytes = sealed(&pki, records(3, 4), mid_2026_ms()).encode();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x20] {
            let mut tampered = bytes.clone();
            tampered[i] ^= flip;
            let verdict = OutboxExport::decode(&tampered).and_then(|e| e.verify_signature());
            assert!(
                verdict.is_err(),
                "byte {i} ({:?}) ^ {flip:#x} was accepted",
                bytes[i] as char
            );
        }
    }
}

#[test]
fn a_record_changed_and_resealed_breaks_the_header_digest_or_the_signature() {
    let pki = pki();
    let export = sealed(&pki, records(1, 3), mid_2026_ms());
    let mut forged = export.clone();
    let r = &mut forged.records[2];
    r.payload = br#"{"verdict":"block"}"#.to_vec();
    r.hash = r.compute_hash();
    let err = OutboxExport::decode(&forged.encode()).unwrap_err();
    assert_eq!(err.what(), "digest", "{err}");
    // A forger who also fixes the header still lacks the agent's key.
    forged.header =
        ExportHeader::describe(URI, &forged.records, export.header.created_unix_ms).unwrap();
    let decoded = OutboxExport::decode(&forged.encode()).expect("consistent");
    assert_eq!(decoded.verify_signature().unwrap_err().what(), "signature");
}

#[test]
fn records_must_be_consecutive_and_linked() {
    let mut recs = records(1, 4);
    recs.remove(2);
    assert_eq!(check_records(&recs).unwrap_err().what(), "chain");
    let mut recs = records(1, 3);
    recs[2].prev_hash = [1; 32];
    recs[2].hash = recs[2].compute_hash();
    let err = check_records(&recs).unwrap_err();
    assert!(matches!(err, ExportError::Chain { seq: 3, .. }), "{err}");
    assert_eq!(check_records(&[]).unwrap_err().what(), "format");
    let mut recs = records(1, 2);
    recs[1].kind = String::new();
    recs[1].hash = recs[1].compute_hash();
    assert_eq!(check_records(&recs).unwrap_err().what(), "record");
}

#[test]
fn a_foreign_ca_or_a_time_outside_the_certificate_is_refused() {
    let pki = pki();
    let other = self::pki();
    let export = sealed(&pki, records(1, 1), mid_2026_ms());
    let at = (mid_2026_ms() / 1000) as u64;
    let err = export
        .verify_certificate_chain(std::slice::from_ref(&other.ca_der), at)
        .unwrap_err();
    assert_eq!(err.what(), "certificate", "{err}");
    // After the certificate expired: refused at that time, still valid at the signed export time.
    let later = (JAN_2026 + 2 * 365 * 86_400) as u64;
    assert!(
        export
            .verify_certificate_chain(std::slice::from_ref(&pki.ca_der), later)
            .is_err()
    );
    // Signed by another key than the embedded certificate's.
    let mut swapped = export.clone();
    swapped.certificate_chain = vec![other.leaf_der.clone()];
    let reencoded = OutboxExport::decode(&swapped.encode()).expect("structurally fine");
    assert_eq!(
        reencoded.verify_signature().unwrap_err().what(),
        "signature"
    );
}

#[test]
fn caps_are_enforced_before_and_while_parsing() {
    let pki = pki();
    let export = sealed(&pki, records(1, 1), mid_2026_ms());
    let mut many = export.clone();
    many.certificate_chain = vec![pki.leaf_der.clone(); MAX_CHAIN_CERTS + 1];
    let err = OutboxExport::decode(&many.encode()).unwrap_err();
    assert!(err.to_string().contains("certificate_chain"), "{err}");
    let mut big = export.clone();
    big.certificate_chain = vec![vec![0x30; MAX_CERT_BYTES + 1]];
    let err = OutboxExport::decode(&big.encode()).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    let mut sig = export.clone();
    sig.signature = vec![0; MAX_SIGNATURE_BYTES + 1];
    let err = OutboxExport::decode(&sig.encode()).unwrap_err();
    assert!(err.to_string().contains("signature.value"), "{err}");
    let seal_empty = OutboxExport::seal(
        URI,
        Vec::new(),
        0,
        vec![pki.leaf_der.clone()],
        SignatureAlgorithm::EcdsaP256Sha256,
        |input| pki.leaf_key.sign(input),
    );
    assert_eq!(seal_empty.unwrap_err().what(), "format");
    // Not JSON, another schema, an unknown field, whitespace.
    for bad in [
        b"\x00\x01".to_vec(),
        String::from_utf8(export.encode())
            .unwrap()
            .replace(SCHEMA_ID, "gait.other")
            .into_bytes(),
        String::from_utf8(export.encode())
            .unwrap()
            .replacen("{\"schema_id\"", "{\"extra\":1,\"schema_id\"", 1)
            .into_bytes(),
        String::from_utf8(export.encode())
            .unwrap()
            .replacen(",", ", ", 1)
            .into_bytes(),
    ] {
        assert_eq!(
            OutboxExport::decode(&bad).unwrap_err().what(),
            "format",
            "{}",
            String::from_utf8_lossy(&bad)
        );
    }
}

#[test]
fn the_size_cap_is_checked_on_the_length_alone() {
    assert_eq!(MAX_EXPORT_BYTES, 256 << 20);
    let err = ExportError::TooLarge {
        size: MAX_EXPORT_BYTES + 1,
    };
    assert_eq!(err.what(), "size");
    assert!(err.to_string().contains("over the limit"));
}

#[test]
fn signature_algorithm_names_round_trip() {
    for a in SignatureAlgorithm::ALL {
        assert_eq!(SignatureAlgorithm::parse(a.as_str()), Some(a));
    }
    assert_eq!(SignatureAlgorithm::parse("rsa"), None);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(OutboxExport::decode(&bytes).is_err());
        }

        #[test]
        fn any_replaced_byte_or_truncation_of_a_valid_file_is_refused(
            index in any::<prop::sample::Index>(),
            value in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let pki = fixture();
            let bytes = pki.1.clone();
            let i = index.index(bytes.len());
            let mut replaced = bytes.clone();
            prop_assume!(replaced[i] != value);
            replaced[i] = value;
            prop_assert!(OutboxExport::decode(&replaced).and_then(|e| e.verify_signature()).is_err());
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(OutboxExport::decode(truncated).is_err());
        }
    }

    /// One sealed file, made once for all cases.
    fn fixture() -> &'static (Pki, Vec<u8>) {
        static FIXTURE: std::sync::OnceLock<(Pki, Vec<u8>)> = std::sync::OnceLock::new();
        FIXTURE.get_or_init(|| {
            let pki = pki();
            let bytes = sealed(&pki, records(1, 3), mid_2026_ms()).encode();
            (pki, bytes)
        })
    }
}
