#![no_main]
//! Fuzz target bundle_verify: hostile documents through `inspect` and `verify`; nothing may panic, and a
//! corrupted copy of a genuine bundle that still verifies must carry exactly the genuine content.
use gait_bundle::{BundleBuilder, Scope, TrustRoot, VerifiedBundle, inspect, verify};
use gait_canon::sign::SigningKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: i64 = 1_767_225_600;

struct Fixture {
    bytes: Vec<u8>,
    genuine: VerifiedBundle,
    trust: TrustRoot,
    scope: Scope,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::from_seed(&[9; 32]);
        let scope = Scope::from_parts("acme", "payments", "prod").expect("valid scope");
        let bytes = BundleBuilder::new(scope.clone(), 3, NOW + 3600)
            .created_at(NOW - 3600)
            .parent([0x5a; 32])
            .add_policy("a.yaml", b"default_verdict: block\n".to_vec())
            .add_policy("b.yaml", b"rules: []\n".to_vec())
            .sign(&key)
            .expect("fixture bundle signs");
        let trust = TrustRoot::from_public_keys(vec![key.public_key()]);
        let genuine = verify(&bytes, &trust, &scope, None, NOW).expect("fixture bundle verifies");
        Fixture {
            bytes,
            genuine,
            trust,
            scope,
        }
    })
}

fn check(doc: &[u8], f: &Fixture) {
    let _ = inspect(doc);
    if let Ok(v) = verify(doc, &f.trust, &f.scope, Some(1), NOW) {
        assert_eq!(v.manifest, f.genuine.manifest);
        assert_eq!(v.files, f.genuine.files);
        assert_eq!(v.digest, f.genuine.digest);
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // The input is the document.
        check(rest, f);
    } else {
        // The input is a list of (position, byte) overwrites applied to the genuine bundle.
        let mut doc = f.bytes.clone();
        for pair in rest.chunks_exact(3) {
            let pos = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % doc.len();
            doc[pos] = pair[2];
        }
        check(&doc, f);
    }
});
