//! Property: no single-byte corruption of a signed bundle verifies to different content.

use gait_bundle::{BundleBuilder, Scope, TrustRoot, verify};
use gait_canon::sign::SigningKey;
use proptest::prelude::*;
use std::sync::OnceLock;

const NOW: i64 = 1_767_225_600;

fn fixture() -> &'static (Vec<u8>, TrustRoot, Scope) {
    static FIXTURE: OnceLock<(Vec<u8>, TrustRoot, Scope)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::from_seed(&[3; 32]);
        let scope = Scope::from_parts("acme", "payments", "prod").unwrap();
        let bytes = BundleBuilder::new(scope.clone(), 5, NOW + 3600)
            .created_at(NOW - 3600)
            .add_policy("a.yaml", b"default_verdict: block\n".to_vec())
            .add_policy("b.yaml", b"rules: []\n".to_vec())
            .sign(&key)
            .unwrap();
        (
            bytes,
            TrustRoot::from_public_keys(vec![key.public_key()]),
            scope,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn single_byte_corruption_never_verifies_to_other_content(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (bytes, trust, scope) = fixture();
        let original = verify(bytes, trust, scope, None, NOW).unwrap();
        let mut mutated = bytes.clone();
        let i = pos.index(mutated.len());
        prop_assume!(mutated[i] != byte);
        mutated[i] = byte;
        if let Ok(v) = verify(&mutated, trust, scope, None, NOW) {
            prop_assert_eq!(v.manifest, original.manifest);
            prop_assert_eq!(v.files, original.files);
            prop_assert_eq!(v.digest, original.digest);
        }
    }
}
