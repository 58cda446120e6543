//! Signing-key rotation: bundles carry an endorsement chain (`manifest.trust.keys`) and revoked key ids
//! (`manifest.trust.revoked`); the verifier walks the chain from a key it trusts, verifying every link, and
//! refuses revoked keys, loops, tampered links and over-long chains.

use gait_bundle::{
    BundleBuilder, BundleError, KeyEndorsement, MAX_TRUST_LINKS, Scope, TrustRoot, TrustUpdate,
    VerifiedBundle, VerifyOptions, endorse, verify, verify_with,
};
use gait_canon::sign::{PublicKey, SigningKey};
use std::collections::BTreeSet;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: i64 = 86_400;

fn k(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

fn id(n: u8) -> String {
    k(n).public_key().key_id()
}

fn scope() -> Scope {
    Scope::from_parts("acme", "payments", "prod").unwrap()
}

fn builder(epoch: u64) -> BundleBuilder {
    let mut b = BundleBuilder::new(scope(), epoch, NOW + DAY);
    b.created_at(NOW - 60).add_policy(
        "base.yaml",
        b"schema_id: gait.gate.policy\ndefault_verdict: block\n".to_vec(),
    );
    b
}

/// The chain k(1) -> k(2) -> ... -> k(n), oldest link first.
fn chain(n: u8) -> Vec<KeyEndorsement> {
    (2..=n)
        .map(|i| endorse(&k(i - 1), &k(i).public_key()))
        .collect()
}

fn signed(signer: u8, keys: Vec<KeyEndorsement>, revoked: Vec<String>) -> Vec<u8> {
    let mut b = builder(5);
    b.trust(TrustUpdate { keys, revoked });
    b.sign(&k(signer)).unwrap()
}

fn check_with(bytes: &[u8], trusted: &[u8], revoked: &[u8]) -> Result<VerifiedBundle, BundleError> {
    let trust = TrustRoot::from_public_keys(trusted.iter().map(|n| k(*n).public_key()).collect());
    let revoked: BTreeSet<String> = revoked.iter().map(|n| id(*n)).collect();
    verify_with(
        bytes,
        &VerifyOptions {
            trust: &trust,
            revoked: &revoked,
            expected_scope: &scope(),
            current_epoch: Some(4),
            now_unix: NOW,
        },
    )
}

fn ids(keys: &[PublicKey]) -> Vec<String> {
    keys.iter().map(PublicKey::key_id).collect()
}

#[test]
fn a_manifest_without_trust_keeps_its_golden_digest() {
    // Built before `manifest.trust` existed: neither the field nor its empty default may change the digest
    // of any bundle already published.
    let bytes = builder(5).sign(&k(1)).unwrap();
    let v = verify(
        &bytes,
        &TrustRoot::from_public_keys(vec![k(1).public_key()]),
        &scope(),
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(
        v.digest_hex, "f5b698ba3b14c09ad585b4c6d9258eafdc12317b42305272b2e9d4c6afcb23ae",
        "the digest of a manifest without trust changed"
    );
    assert!(!String::from_utf8(bytes).unwrap().contains("\"trust\""));
}

#[test]
fn an_agent_two_rotations_behind_walks_the_chain_in_one_bundle() {
    let bytes = signed(3, chain(3), vec![]);
    let v = check_with(&bytes, &[1], &[]).unwrap();
    assert_eq!(v.trust_added.len(), 2);
    assert_eq!(ids(&v.trust_added), vec![id(2), id(3)]);
    // A verifier that trusts the signer directly adds nothing.
    assert!(
        check_with(&bytes, &[3], &[])
            .unwrap()
            .trust_added
            .is_empty()
    );
    // One that trusts nothing on the chain refuses the key as unknown.
    let err = check_with(&bytes, &[9], &[]).unwrap_err();
    assert_eq!(err.code(), "bundle_key_unknown", "{err}");
}

#[test]
fn the_introduction_bundle_is_signed_by_the_old_key_and_carries_the_new_one() {
    let bytes = signed(1, chain(2), vec![]);
    let v = check_with(&bytes, &[1], &[]).unwrap();
    // The signer is trusted, and the key it endorses becomes trusted too: an agent that saw the introduction
    // bundle is not cut off when the old key is revoked later.
    assert_eq!(
        v.trust_added.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        vec![id(2)]
    );
    assert_eq!(v.manifest.trust.keys[0].key_id, id(2));
    // Nothing is added through a revoked key, nor a link from a key this agent never trusted.
    let v = check_with(&signed(1, chain(3), vec![id(2)]), &[1], &[]).unwrap();
    assert!(v.trust_added.is_empty(), "{:?}", v.trust_added);
    let v = check_with(&signed(2, chain(3), vec![]), &[2], &[]).unwrap();
    assert_eq!(
        v.trust_added.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        vec![id(3)],
        "k(1)->k(2) is skipped, k(2)->k(3) added"
    );
}

#[test]
fn a_tampered_endorsement_is_refused() {
    // The link k(1)->k(2) is swapped for one by k(1) over another key: the signature no longer verifies.
    let mut links = chain(3);
    links[0].sig = endorse(&k(1), &k(7).public_key()).sig;
    let err = check_with(&signed(3, links, vec![]), &[1], &[]).unwrap_err();
    assert_eq!(err.code(), "bundle_bad_endorsement", "{err}");

    // A link signed by a key that is not the one it names as endorser is refused too.
    let mut forged = endorse(&k(8), &k(2).public_key());
    forged.endorsed_by = id(1);
    let err = check_with(&signed(2, vec![forged], vec![]), &[1], &[]).unwrap_err();
    assert_eq!(err.code(), "bundle_bad_endorsement", "{err}");
}

#[test]
fn a_chain_loop_is_refused() {
    // k(2) endorsed by k(3) and k(3) by k(2): the walk from k(3) never reaches a trusted key.
    let links = vec![
        endorse(&k(3), &k(2).public_key()),
        endorse(&k(2), &k(3).public_key()),
    ];
    let err = check_with(&signed(3, links, vec![]), &[1], &[]).unwrap_err();
    assert_eq!(err.code(), "bundle_bad_endorsement", "{err}");
    assert!(err.to_string().contains("loops"), "{err}");
}

#[test]
fn a_chain_longer_than_the_limit_is_refused() {
    // The manifest may carry MAX_TRUST_LINKS links; one more is malformed.
    let n = u8::try_from(MAX_TRUST_LINKS).unwrap() + 2;
    let mut b = builder(5);
    b.trust(TrustUpdate {
        keys: chain(n),
        revoked: vec![],
    });
    let err = b.sign(&k(n)).unwrap_err();
    assert_eq!(err.code(), "bundle_malformed", "{err}");
}

#[test]
fn a_revoked_endorser_or_signer_is_refused() {
    let bytes = signed(3, chain(3), vec![]);
    // The verifier learned that k(2) is revoked: the chain through it is refused.
    let err = check_with(&bytes, &[1], &[2]).unwrap_err();
    assert_eq!(err, BundleError::KeyRevoked { key_id: id(2) });
    assert!(!err.is_authentic());
    // The bundle itself revokes k(2): same.
    let err = check_with(&signed(3, chain(3), vec![id(2)]), &[1], &[]).unwrap_err();
    assert_eq!(err.code(), "bundle_key_revoked");
    // A bundle signed by a revoked key is refused even though the key is still in the trust root.
    let err = check_with(&signed(2, vec![], vec![]), &[1, 2], &[2]).unwrap_err();
    assert_eq!(err, BundleError::KeyRevoked { key_id: id(2) });
    // Signed by k(3), trusted directly, revoking k(2): accepted, and the revocation is reported.
    let v = check_with(&signed(3, chain(3), vec![id(2)]), &[3], &[]).unwrap();
    assert_eq!(v.revoked, vec![id(2)]);
}

#[test]
fn revoked_ids_must_be_sorted_and_unique() {
    let mut ids = vec![id(2), id(3)];
    ids.sort();
    ids.reverse();
    let mut b = builder(5);
    b.trust(TrustUpdate {
        keys: vec![],
        revoked: ids,
    });
    assert_eq!(b.sign(&k(1)).unwrap_err().code(), "bundle_malformed");
}
