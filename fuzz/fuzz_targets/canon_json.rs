#![no_main]
//! Fuzz target canon_json: hostile bytes through the strict JSON parser; nothing may panic, and whatever parses
//! canonicalizes idempotently (the canonical bytes re-parse strictly to the same canonical bytes and digest).
use gait_canon::{canonical_bytes, digest_jcs, parse_json, sha256_hex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse_json(data) else {
        return;
    };
    let canonical = canonical_bytes(&value);
    let reparsed = parse_json(&canonical).expect("canonical output is strict JSON");
    assert_eq!(
        canonical_bytes(&reparsed),
        canonical,
        "canonicalization is idempotent"
    );
    assert_eq!(digest_jcs(&reparsed), sha256_hex(&canonical));
});
