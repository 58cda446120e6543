//! C2SP `signed-note` with Ed25519 signatures (<https://c2sp.org/signed-note>): the envelope of a checkpoint.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one line per signature:
//! `— <key name> <base64(key id ‖ signature)>` (the dash is U+2014). The key id is the first four bytes of
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`, 0x01 naming Ed25519; the signature is Ed25519 over the
//! note text, its final newline included. A verifier key is written `<name>+<key id hex>+<base64(0x01 ‖ public
//! key)>` — the form `<data-dir>/keys/audit.vkey` holds.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in C2SP signed notes.
pub const ALG_ED25519: u8 = 0x01;
/// The dash that opens a signature line.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// The most signature lines a note may carry before it is refused as junk.
pub const MAX_SIGNATURES: usize = 100;

/// Why a key or a note was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    /// A key name breaks the rule (non-empty, no whitespace, no `+`).
    #[error("key name {0:?} must be non-empty and contain no whitespace and no '+'")]
    KeyName(String),
    /// The verifier key text is not `name+hex8+base64`.
    #[error(
        "verifier key is not <name>+<8 hex key id>+<base64 of 0x01 and a 32-byte Ed25519 key>: {0}"
    )]
    VerifierKey(String),
    /// The note text is not a valid note.
    #[error("malformed note: {0}")]
    Malformed(String),
    /// No signature line is by the verifier's key.
    #[error("the note carries no signature by key {name} ({key_id})")]
    UnknownKey {
        /// The verifier key's name.
        name: String,
        /// Its key id, hex.
        key_id: String,
    },
    /// A signature by the verifier's key did not verify: the note text was changed after signing.
    #[error("the signature by key {0} does not verify: the note was altered after it was signed")]
    BadSignature(String),
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::KeyName(name.to_owned()));
    }
    Ok(())
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ALG_ED25519]);
    h.update(public);
    let digest: [u8; 32] = h.finalize().into();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A note signer: a key name and an Ed25519 private key.
pub struct NoteSigner {
    name: String,
    key: ed25519_dalek::SigningKey,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// The signer named `name` whose Ed25519 private key is the 32-byte `seed`.
    pub fn new(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The signed note: `text` (which must be a valid note text, see [`check_text`]), a blank line and this
    /// key's signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// A note verifier: a key name, its key id and an Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl NoteVerifier {
    /// Reads a verifier key `<name>+<key id hex>+<base64(0x01 ‖ public key)>` (surrounding whitespace ignored);
    /// the key id must match the name and key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let bad = |why: &str| NoteError::VerifierKey(why.to_owned());
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three parts separated by '+'"));
        };
        check_name(name)?;
        let mut id = [0u8; 4];
        if id_hex.len() != 8 || hex::decode_to_slice(id_hex, &mut id).is_err() {
            return Err(bad("the key id must be 8 hex characters"));
        }
        let raw = STANDARD
            .decode(key_b64)
            .map_err(|e| NoteError::VerifierKey(format!("the key is not base64: {e}")))?;
        let Some((&ALG_ED25519, public)) = raw.split_first() else {
            return Err(bad(
                "the key does not start with the Ed25519 type byte 0x01",
            ));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| bad("an Ed25519 public key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| bad("the bytes are not an Ed25519 public key"))?;
        if key_id(name, &public) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id, hex.
    pub fn key_id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Verifies `note` and returns its text (final newline included). Signature lines by other keys are
    /// ignored, as the spec asks; at least one must be by this key, and every one by this key must verify.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let malformed = |why: String| NoteError::Malformed(why);
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("no blank line between the text and its signatures".into()))?;
        let text = &note[..=split];
        let sigs = &note[split + 2..];
        check_text(text)?;
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(malformed(
                "the signature block must end with a newline".into(),
            ));
        }
        let mut found = false;
        for (n, line) in sigs.lines().enumerate() {
            if n >= MAX_SIGNATURES {
                return Err(malformed(format!("more than {MAX_SIGNATURES} signatures")));
            }
            let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(|| {
                malformed(format!(
                    "signature line {line:?} does not start with \"— \""
                ))
            })?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| malformed(format!("signature line {line:?} has no signature")))?;
            check_name(name)?;
            let blob = STANDARD
                .decode(b64)
                .map_err(|e| malformed(format!("signature by {name} is not base64: {e}")))?;
            if blob.len() < 4 {
                return Err(malformed(format!(
                    "signature by {name} is shorter than its key id"
                )));
            }
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            self.key
                .verify(text.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::UnknownKey {
                name: self.name.clone(),
                key_id: self.key_id_hex(),
            })
        }
    }
}

impl std::fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            STANDARD.encode(raw)
        )
    }
}

/// A note text must be non-empty UTF-8 ending in a newline, without control characters other than newline and
/// without a blank line (which would end it early).
pub fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "the text must end with a newline".into(),
        ));
    }
    if text.chars().any(|c| c != '\n' && c.is_control()) {
        return Err(NoteError::Malformed(
            "the text holds a control character".into(),
        ));
    }
    if text.starts_with('\n') || text.contains("\n\n") {
        return Err(NoteError::Malformed("the text holds a blank line".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_and_verifier_key_follow_the_c2sp_example() {
        // The example key of c2sp.org/signed-note: PeterNeumann, seed from its private key text.
        let v = NoteVerifier::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id_hex(), "c74f20a3");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(
            v.open(note).unwrap(),
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
        );
        // The spec's private key (`PRIVATE+KEY+PeterNeumann+c74f20a3+` base64 of 0x01 and the seed) signs the
        // same text byte for byte: Ed25519 is deterministic.
        let raw = STANDARD
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        let seed: [u8; 32] = raw[1..].try_into().unwrap();
        let signer = NoteSigner::new("PeterNeumann", &seed).unwrap();
        assert_eq!(signer.verifier(), v);
        let text = v.open(note).unwrap();
        assert_eq!(signer.sign(text).unwrap(), note);
        let altered = note.replace("answer", "Answer");
        assert_eq!(
            v.open(&altered),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
    }

    #[test]
    fn a_signed_note_opens_with_its_verifier_and_not_with_another() {
        let signer = NoteSigner::new("example.com/log", &[9u8; 32]).unwrap();
        let note = signer.sign("hello\nworld\n").unwrap();
        let v = signer.verifier();
        assert_eq!(v.open(&note).unwrap(), "hello\nworld\n");
        assert_eq!(NoteVerifier::parse(&v.to_string()).unwrap(), v);
        let other = NoteSigner::new("example.com/log", &[8u8; 32])
            .unwrap()
            .verifier();
        assert!(matches!(
            other.open(&note),
            Err(NoteError::UnknownKey { .. })
        ));
        let tampered = v.to_string().replacen('+', "+0", 1);
        assert!(NoteVerifier::parse(&tampered).is_err());
        assert!(signer.sign("no newline").is_err());
        assert!(NoteSigner::new("bad name", &[1u8; 32]).is_err());
    }
}
