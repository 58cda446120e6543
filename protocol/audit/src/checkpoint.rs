//! C2SP `tlog-checkpoint` (<https://c2sp.org/tlog-checkpoint>): the signed statement of a log's size and root.
//!
//! The body is three lines — the log's origin, its size in decimal, the root hash in standard base64 — each
//! ending in a newline; further lines are extensions, which this log does not write and verifiers ignore. The
//! body is the text of a signed note ([`crate::note`]) whose key name is the origin.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::hash::Hash;
use crate::note::{NoteError, NoteSigner, NoteVerifier};

/// A log's size and root hash, named by its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name (`gait-aggregator/<trust domain>` by default).
    pub origin: String,
    /// How many entries the tree holds.
    pub size: u64,
    /// The RFC 6962 root hash of those entries.
    pub root: Hash,
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The body is not `origin\nsize\nbase64 root\n`.
    #[error("malformed checkpoint body: {0}")]
    Malformed(String),
    /// The signed-note envelope or its signature was refused.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The origin is not the verifier key's name, so the checkpoint is for another log.
    #[error("the checkpoint is for log {found:?}, but the key is for log {expected:?}")]
    Origin {
        /// The verifier key's name.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
}

impl Checkpoint {
    /// The body text (the signed-note text).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Reads a body; extension lines after the root are ignored.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let mut lines = text.split_terminator('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size_text = lines.next().ok_or_else(|| bad("no size line"))?;
        let size = (!size_text.starts_with('0') || size_text == "0")
            .then(|| size_text.parse::<u64>().ok())
            .flatten()
            .filter(|_| size_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("the size line is not a decimal number without leading zeros"))?;
        let root_text = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = STANDARD
            .decode(root_text)
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| bad("the root hash line is not base64 of 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// The signed note of this checkpoint; the signer's name must be the origin.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, CheckpointError> {
        if signer.name() != self.origin {
            return Err(CheckpointError::Origin {
                expected: signer.name().to_owned(),
                found: self.origin.clone(),
            });
        }
        Ok(signer.sign(&self.body())?)
    }

    /// Verifies a signed checkpoint note and reads its body.
    pub fn open(verifier: &NoteVerifier, note: &str) -> Result<Self, CheckpointError> {
        let text = verifier.open(note)?;
        let cp = Self::parse_body(text)?;
        if cp.origin != verifier.name() {
            return Err(CheckpointError::Origin {
                expected: verifier.name().to_owned(),
                found: cp.origin,
            });
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_an_altered_one_does_not() {
        let signer = NoteSigner::new("gait-aggregator/example.org", &[3u8; 32]).unwrap();
        let cp = Checkpoint {
            origin: "gait-aggregator/example.org".into(),
            size: 12,
            root: [5u8; 32],
        };
        let note = cp.sign(&signer).unwrap();
        assert!(note.starts_with("gait-aggregator/example.org\n12\nBQUF"));
        assert_eq!(Checkpoint::open(&signer.verifier(), &note).unwrap(), cp);
        let altered = note.replacen("\n12\n", "\n11\n", 1);
        assert!(matches!(
            Checkpoint::open(&signer.verifier(), &altered),
            Err(CheckpointError::Note(NoteError::BadSignature(_)))
        ));
        assert!(Checkpoint::parse_body("o\n012\nBQUF\n").is_err());
        assert!(Checkpoint::parse_body("o\n12\n").is_err());
    }
}
