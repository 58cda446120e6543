//! Ed25519 signatures over DigestJCS, Gait's key formats and key files (contract §0.2).
//!
//! The message given to Ed25519 is the 32 raw bytes of the SHA-256 digest (hex-decoded), `sig` is standard padded
//! base64 of the 64-byte signature, and `key_id` is the lowercase hex SHA-256 of the 32-byte public key. Private key
//! files hold base64 of Go's 64-byte private key (seed ‖ public key), public key files base64 of the 32-byte key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{canonical_bytes, digest_jcs, sha256, sha256_hex};

/// The only signature algorithm Gait emits or accepts.
pub const ALG_ED25519: &str = "ed25519";

/// Largest key file read; real files are 45 or 89 bytes.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Standard padded base64 that, like Go's `base64.StdEncoding`, tolerates non-zero trailing bits when decoding.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// A Gait signature object, identical in traces, tokens and manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Signature {
    /// Always `ed25519`.
    #[serde(default)]
    pub alg: String,
    /// Lowercase hex SHA-256 of the signer's raw public key.
    #[serde(default)]
    pub key_id: String,
    /// Standard padded base64 of the 64-byte Ed25519 signature.
    #[serde(default)]
    pub sig: String,
    /// Lowercase hex DigestJCS of the signed document without its signature.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signed_digest: String,
}

/// An Ed25519 private key.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// A key could not be decoded or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard padded base64.
    #[error("key is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The decoded key has the wrong size.
    #[error("{kind} key must decode to {expected} bytes, got {actual}")]
    Length {
        /// `private` or `public`.
        kind: &'static str,
        /// Bytes a Gait key of this kind has.
        expected: usize,
        /// Bytes found.
        actual: usize,
    },
    /// The public half stored in a 64-byte private key does not belong to its seed.
    #[error("private key is inconsistent: its public half does not match its seed")]
    InconsistentPrivateKey,
    /// The 32 bytes are not a valid Ed25519 point.
    #[error("public key is not a valid ed25519 point")]
    InvalidPublicKey,
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The key file was read but its content is not a Gait key.
    #[error("key file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<KeyError>,
    },
}

/// A digest could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The digest is not 64 hex characters.
    #[error("digest to sign must be 64 hex characters (sha-256), got {0:?}")]
    BadDigest(String),
}

/// A signature did not verify; messages follow Gait's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `alg` is not `ed25519`.
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlg(String),
    /// `key_id` names another key than the one given.
    #[error("key_id mismatch: signature names {signature}, key is {key}")]
    KeyIdMismatch {
        /// key_id in the signature.
        signature: String,
        /// key_id of the verifying key.
        key: String,
    },
    /// The signature carries no `signed_digest`.
    #[error("signed_digest missing")]
    SignedDigestMissing,
    /// `signed_digest` differs from the digest recomputed from the document.
    #[error("signed_digest mismatch")]
    SignedDigestMismatch {
        /// signed_digest in the signature.
        signed: String,
        /// Digest recomputed from the document.
        computed: String,
    },
    /// `sig` is not base64 of 64 bytes, or the digest is not hex of 32 bytes.
    #[error("invalid signature encoding: {0}")]
    BadEncoding(String),
    /// The Ed25519 check failed.
    #[error("signature verification failed")]
    BadSignature,
}

impl SigningKey {
    /// A fresh key from the operating system's RNG.
    ///
    /// # Panics
    /// Only if the OS cannot provide randomness at all, which leaves nothing safe to sign with.
    pub fn generate() -> Self {
        Self::try_generate().expect("operating system random number generator is unavailable")
    }

    /// A fresh key from the operating system's RNG, reporting RNG failure instead of panicking.
    pub fn try_generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The key from its 32-byte seed (tests and deterministic fixtures).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// Decode Gait's private key text: base64 of seed ‖ public key (64 bytes); surrounding whitespace ignored.
    pub fn from_gait_private_key(b64: &str) -> Result<Self, KeyError> {
        let bytes = GO_STD_BASE64.decode(b64.trim())?;
        let pair: [u8; 64] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            kind: "private",
            expected: 64,
            actual: bytes.len(),
        })?;
        ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
            .map(Self)
            .map_err(|_| KeyError::InconsistentPrivateKey)
    }

    /// Gait's private key text (no trailing newline).
    pub fn to_gait_private_key(&self) -> String {
        general_purpose::STANDARD.encode(self.0.to_keypair_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign a DigestJCS given as 64 hex characters; the signature records it (lowercased) as `signed_digest`.
    pub fn sign_digest_hex(&self, digest_hex: &str) -> Result<Signature, SignError> {
        let digest =
            decode_digest(digest_hex).ok_or_else(|| SignError::BadDigest(digest_hex.into()))?;
        Ok(self.sign_digest(&digest))
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Signature {
        let sig = self.0.sign(digest);
        Signature {
            alg: ALG_ED25519.to_owned(),
            key_id: self.public_key().key_id(),
            sig: general_purpose::STANDARD.encode(sig.to_bytes()),
            signed_digest: hex::encode(digest),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Decode Gait's public key text: base64 of the 32-byte key; surrounding whitespace ignored.
    pub fn from_gait_public_key(b64: &str) -> Result<Self, KeyError> {
        let bytes = GO_STD_BASE64.decode(b64.trim())?;
        Self::from_bytes(&bytes)
    }

    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length {
            kind: "public",
            expected: 32,
            actual: bytes.len(),
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map(Self)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// Gait's public key text (no trailing newline).
    pub fn to_gait_public_key(&self) -> String {
        general_purpose::STANDARD.encode(self.0.as_bytes())
    }

    /// Lowercase hex SHA-256 of the raw key: Gait's `key_id`.
    pub fn key_id(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }

    /// The 32 raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.key_id()).finish()
    }
}

/// SignJSON: sign DigestJCS of `document_without_signature`.
pub fn sign_json(key: &SigningKey, document_without_signature: &Value) -> Signature {
    key.sign_digest(&sha256(&canonical_bytes(document_without_signature)))
}

/// VerifyJSON: recompute DigestJCS of `document_without_signature` and check `sig` against it.
pub fn verify_json(
    key: &PublicKey,
    document_without_signature: &Value,
    sig: &Signature,
) -> Result<(), VerifyError> {
    verify_digest_hex(key, &digest_jcs(document_without_signature), sig)
}

/// Check `sig` for an already computed digest, in Gait's order: signed_digest present and equal to `digest_hex`,
/// algorithm, key id (when set), encoding, then the Ed25519 equation.
pub fn verify_digest_hex(
    key: &PublicKey,
    digest_hex: &str,
    sig: &Signature,
) -> Result<(), VerifyError> {
    if sig.signed_digest.is_empty() {
        return Err(VerifyError::SignedDigestMissing);
    }
    if sig.signed_digest != digest_hex {
        return Err(VerifyError::SignedDigestMismatch {
            signed: sig.signed_digest.clone(),
            computed: digest_hex.to_owned(),
        });
    }
    if sig.alg != ALG_ED25519 {
        return Err(VerifyError::UnsupportedAlg(sig.alg.clone()));
    }
    if !sig.key_id.is_empty() && sig.key_id != key.key_id() {
        return Err(VerifyError::KeyIdMismatch {
            signature: sig.key_id.clone(),
            key: key.key_id(),
        });
    }
    let digest = decode_digest(digest_hex).ok_or_else(|| {
        VerifyError::BadEncoding(format!("digest {digest_hex:?} is not 64 hex characters"))
    })?;
    let raw = GO_STD_BASE64
        .decode(sig.sig.as_bytes())
        .map_err(|err| VerifyError::BadEncoding(format!("sig is not base64: {err}")))?;
    let raw: [u8; 64] = raw.as_slice().try_into().map_err(|_| {
        VerifyError::BadEncoding(format!("sig must decode to 64 bytes, got {}", raw.len()))
    })?;
    let signature = ed25519_dalek::Signature::from_bytes(&raw);
    // dalek's `verify` matches Go's ed25519.Verify: cofactorless equation, canonical S required.
    key.0
        .verify(&digest, &signature)
        .map_err(|_| VerifyError::BadSignature)
}

fn decode_digest(digest_hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest_hex, &mut out).ok()?;
    Some(out)
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text))
        .map_err(io_err)?;
    Ok(text)
}

fn in_file(path: &Path) -> impl FnOnce(KeyError) -> KeyError + '_ {
    move |err| KeyError::File {
        path: path.to_path_buf(),
        source: Box::new(err),
    }
}

/// Read a Gait private key file (`gait keys init` format).
pub fn load_private_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    SigningKey::from_gait_private_key(&read_key_file(path)?).map_err(in_file(path))
}

/// Read a Gait public key file.
pub fn load_public_key_file(path: &Path) -> Result<PublicKey, KeyError> {
    PublicKey::from_gait_public_key(&read_key_file(path)?).map_err(in_file(path))
}

/// Write a key pair in Gait's file format (base64 + newline); the private file gets mode 0600 on Unix.
pub fn write_key_pair(private: &Path, public: &Path, key: &SigningKey) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(private)?;
    #[cfg(unix)]
    {
        // An existing file keeps its old mode on open: tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(format!("{}\n", key.to_gait_private_key()).as_bytes())?;
    file.sync_all()?;
    fs::write(
        public,
        format!("{}\n", key.public_key().to_gait_public_key()),
    )
}

#[cfg(test)]
mod tests;
