//! A jsonwebtoken [`CryptoProvider`] that verifies with ring (the crypto library rustls and quinn already use
//! here) instead of the RustCrypto crates: RSA-2048 verification through `rsa` 0.9 took about 120 µs and P-256
//! about 230 µs per token on the development machine, several times ring's cost, and the goal is ≤ 50 µs per
//! request. jsonwebtoken still parses, decodes and checks the token; only the signature check moves here.
//!
//! Verification only: signing (which the aggregator never does; tests mint tokens) and the JWK key utilities
//! stay with the RustCrypto provider. HMAC is refused outright — the verifier never accepts it anyway.
//! ring takes RSA moduli of 2048 to 8192 bits; a shorter provider key fails every signature (`bad_signature`).

use std::sync::LazyLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as rs;

/// The provider: ring verification, RustCrypto for the rest.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| {
    let rust_crypto = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    CryptoProvider {
        signer_factory: rust_crypto.signer_factory,
        verifier_factory: new_verifier,
        key_utils: rust_crypto.key_utils.clone(),
    }
});

/// Makes this provider jsonwebtoken's process-wide default. Returns `false` when another provider was already
/// in use (jsonwebtoken was used before; verification then stays correct, only slower).
pub fn install() -> bool {
    PROVIDER.install_default().is_ok()
}

/// The public key of one token check, owned (jsonwebtoken's verifier objects are `'static`).
enum PublicKey {
    /// RSA modulus and exponent (big-endian).
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
    /// Bytes ring parses itself: an uncompressed EC point, an Ed25519 key, or a PKCS#1 RSA public key.
    Unparsed(Vec<u8>),
}

struct RingVerifier {
    algorithm: Algorithm,
    params: &'static dyn rs::VerificationAlgorithm,
    rsa: Option<&'static rs::RsaParameters>,
    key: PublicKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let verified = match (&self.key, self.rsa) {
            (PublicKey::RsaComponents { n, e }, Some(rsa)) => {
                rs::RsaPublicKeyComponents { n, e }.verify(rsa, message, sig)
            }
            (PublicKey::RsaComponents { .. }, None) => Err(ring::error::Unspecified),
            (PublicKey::Unparsed(bytes), _) => {
                rs::UnparsedPublicKey::new(self.params, bytes).verify(message, sig)
            }
        };
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    use Algorithm as A;
    let (family, params, rsa): (
        AlgorithmFamily,
        &'static dyn rs::VerificationAlgorithm,
        Option<&'static rs::RsaParameters>,
    ) = match algorithm {
        A::RS256 => rsa(&rs::RSA_PKCS1_2048_8192_SHA256),
        A::RS384 => rsa(&rs::RSA_PKCS1_2048_8192_SHA384),
        A::RS512 => rsa(&rs::RSA_PKCS1_2048_8192_SHA512),
        A::PS256 => rsa(&rs::RSA_PSS_2048_8192_SHA256),
        A::PS384 => rsa(&rs::RSA_PSS_2048_8192_SHA384),
        A::PS512 => rsa(&rs::RSA_PSS_2048_8192_SHA512),
        A::ES256 => (AlgorithmFamily::Ec, &rs::ECDSA_P256_SHA256_FIXED, None),
        A::ES384 => (AlgorithmFamily::Ec, &rs::ECDSA_P384_SHA384_FIXED, None),
        A::EdDSA => (AlgorithmFamily::Ed, &rs::ED25519, None),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKey::RsaComponents {
            n: n.clone(),
            e: e.clone(),
        },
        DecodingKeyKind::SecretOrDer(bytes) => PublicKey::Unparsed(bytes.clone()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        params,
        rsa,
        key,
    }))
}

fn rsa(
    params: &'static rs::RsaParameters,
) -> (
    AlgorithmFamily,
    &'static dyn rs::VerificationAlgorithm,
    Option<&'static rs::RsaParameters>,
) {
    (AlgorithmFamily::Rsa, params, Some(params))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};

    use super::*;

    const RSA: &str = include_str!("../../../../tests/oidc/keys/rsa.pem");
    const EC: &str = include_str!("../../../../tests/oidc/keys/ec.pem");
    const ED: &str = include_str!("../../../../tests/oidc/keys/ed25519.pem");

    fn public(key: &EncodingKey, alg: Algorithm) -> DecodingKey {
        let jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
        assert!(!matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)));
        DecodingKey::from_jwk(&jwk).expect("decoding key")
    }

    #[test]
    fn ring_verifies_what_rustcrypto_signs_and_refuses_altered_messages_and_wrong_families() {
        // Keeps the process default ring for the other verifier tests, whichever runs first.
        install();
        for (alg, key) in [
            (Algorithm::RS256, EncodingKey::from_rsa_pem(RSA.as_bytes())),
            (Algorithm::PS256, EncodingKey::from_rsa_pem(RSA.as_bytes())),
            (Algorithm::ES256, EncodingKey::from_ec_pem(EC.as_bytes())),
            (Algorithm::EdDSA, EncodingKey::from_ed_pem(ED.as_bytes())),
        ] {
            let key = key.expect("test key");
            let signer = (PROVIDER.signer_factory)(&alg, &key).expect("signer");
            let sig = signature::Signer::try_sign(&*signer, b"header.payload").expect("sign");
            let verifier = new_verifier(&alg, &public(&key, alg)).expect("verifier");
            assert!(verifier.verify(b"header.payload", &sig).is_ok(), "{alg:?}");
            assert!(verifier.verify(b"header.payloaD", &sig).is_err(), "{alg:?}");
        }
        let ec = public(
            &EncodingKey::from_ec_pem(EC.as_bytes()).expect("key"),
            Algorithm::ES256,
        );
        for alg in [Algorithm::RS256, Algorithm::HS256, Algorithm::EdDSA] {
            assert!(new_verifier(&alg, &ec).is_err(), "{alg:?} with an EC key");
        }
    }
}
