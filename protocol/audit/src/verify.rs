//! Offline verification of an exported log: the signed checkpoint, every entry line, the hash chain, the root;
//! and of a consistency proof between two checkpoints. Everything an auditor needs is here and in the files.
//!
//! An export directory holds `checkpoint` (the signed note) and `entries.jsonl` (entry `i` on line `i + 1`, each
//! line the entry's canonical bytes and a newline). [`verify_export`] checks, in order: the checkpoint's
//! signature and origin; each line parses as a canonical entry whose `seq` is its position (so a deleted,
//! inserted or moved entry is named where it breaks the sequence); each entry's `prev` is the leaf hash of the
//! line before it (so an altered entry is named by the entry after it: the first entry whose own bytes are no
//! longer what its successor recorded); the line count is the checkpoint's size; and the recomputed root is the
//! signed one (which catches an altered last entry, the only one without a successor).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::Entry;
use crate::hash::{Hash, leaf_hash, to_hex};
use crate::merkle::{Frontier, verify_consistency};
use crate::note::NoteVerifier;

/// The first line of a consistency proof file.
pub const CONSISTENCY_HEADER: &str = "gait-audit/consistency-proof/v1";

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The log's origin.
    pub origin: String,
    /// How many entries were checked.
    pub size: u64,
    /// The root hash they hash to, which the checkpoint signs.
    pub root: Hash,
}

/// Why an export or a proof did not verify. Entry faults name the first bad entry by its line in
/// `entries.jsonl` (from 1) and its `seq` (the leaf index that line must hold, from 0).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The checkpoint was refused (signature, origin, format).
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A file is not UTF-8 text where text is required.
    #[error("{file} is not UTF-8 text")]
    NotText {
        /// The file's role.
        file: &'static str,
    },
    /// An entry is bad; `line` and `seq` name it.
    #[error("entry seq {seq} (entries.jsonl line {line}): {reason}")]
    Entry {
        /// Line number in `entries.jsonl`, from 1.
        line: u64,
        /// Leaf index the line must hold.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// `entries.jsonl` ends before the checkpoint's size.
    #[error(
        "entries.jsonl ends after {found} entries but the checkpoint covers {size}: entry seq {found} (line {}) and later are missing",
        found + 1
    )]
    Missing {
        /// Entries present.
        found: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// A consistency proof file is malformed or does not match the checkpoints.
    #[error("consistency proof: {0}")]
    ProofFormat(String),
    /// The proof does not show that the newer checkpoint extends the older one: history was rewritten.
    #[error(
        "the log of size {new} does not extend the checkpoint of size {old}: its first {old} entries are not the ones the older checkpoint signed (history was rewritten)"
    )]
    NotAnExtension {
        /// The older checkpoint's size.
        old: u64,
        /// The newer checkpoint's size.
        new: u64,
    },
}

impl VerifyError {
    /// The line (from 1) and seq of the first bad entry, where the fault is in one.
    pub fn first_bad_entry(&self) -> Option<(u64, u64)> {
        match self {
            VerifyError::Entry { line, seq, .. } => Some((*line, *seq)),
            VerifyError::Missing { found, .. } => Some((found + 1, *found)),
            _ => None,
        }
    }
}

fn entry_fault(index: u64, reason: impl Into<String>) -> VerifyError {
    VerifyError::Entry {
        line: index + 1,
        seq: index,
        reason: reason.into(),
    }
}

/// Verifies a signed checkpoint note given as bytes.
pub fn open_checkpoint(verifier: &NoteVerifier, note: &[u8]) -> Result<Checkpoint, VerifyError> {
    let text =
        std::str::from_utf8(note).map_err(|_| VerifyError::NotText { file: "checkpoint" })?;
    Ok(Checkpoint::open(verifier, text)?)
}

/// Verifies an export: the checkpoint note's bytes and `entries.jsonl`'s bytes. See the module docs.
pub fn verify_export(
    verifier: &NoteVerifier,
    checkpoint: &[u8],
    entries: &[u8],
) -> Result<Verified, VerifyError> {
    let cp = open_checkpoint(verifier, checkpoint)?;
    let mut frontier = Frontier::new();
    let mut prev: Option<Hash> = None;
    let mut rest = entries;
    while !rest.is_empty() {
        let index = frontier.size();
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(entry_fault(
                index,
                "the last line has no newline (the file was cut short)",
            ));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if index >= cp.size {
            return Err(entry_fault(
                index,
                format!(
                    "the checkpoint covers {} entries, and this one is beyond them (appended without a signed checkpoint)",
                    cp.size
                ),
            ));
        }
        let entry = Entry::parse_line(line).map_err(|e| entry_fault(index, e.to_string()))?;
        if entry.seq != index {
            return Err(entry_fault(
                index,
                format!(
                    "the line holds seq {} where seq {index} belongs: an entry was deleted, inserted or moved here",
                    entry.seq
                ),
            ));
        }
        let recorded = entry.prev_hash();
        if recorded != prev {
            let Some(previous) = index.checked_sub(1) else {
                return Err(entry_fault(
                    index,
                    "the first entry must have prev null: it was altered",
                ));
            };
            return Err(entry_fault(
                previous,
                format!(
                    "the entry was altered: entry seq {index} recorded its leaf hash as {}, and its bytes now hash to {}",
                    recorded.map_or_else(|| "null".to_owned(), |h| to_hex(&h)),
                    prev.map_or_else(|| "null".to_owned(), |h| to_hex(&h)),
                ),
            ));
        }
        let leaf = leaf_hash(line);
        frontier.append(leaf);
        prev = Some(leaf);
    }
    if frontier.size() < cp.size {
        return Err(VerifyError::Missing {
            found: frontier.size(),
            size: cp.size,
        });
    }
    if frontier.root() != cp.root {
        let last = frontier.size().saturating_sub(1);
        return Err(entry_fault(
            last,
            "the entries do not hash to the signed root, and every earlier entry matches the hash chain: the last entry was altered",
        ));
    }
    Ok(Verified {
        origin: cp.origin,
        size: cp.size,
        root: cp.root,
    })
}

/// A consistency proof between two sizes of one log, as written to `consistency-from-<old size>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older size.
    pub old: u64,
    /// The newer size.
    pub new: u64,
    /// The RFC 9162 proof hashes.
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    /// The file text: [`CONSISTENCY_HEADER`], the old size, the new size, then one base64 hash per line.
    pub fn to_text(&self) -> String {
        let mut out = format!("{CONSISTENCY_HEADER}\n{}\n{}\n", self.old, self.new);
        for h in &self.hashes {
            out.push_str(&STANDARD.encode(h));
            out.push('\n');
        }
        out
    }

    /// Reads the file text.
    pub fn parse(text: &str) -> Result<Self, VerifyError> {
        let bad = |why: String| VerifyError::ProofFormat(why);
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(CONSISTENCY_HEADER) {
            return Err(bad(format!("the first line must be {CONSISTENCY_HEADER}")));
        }
        let mut size = |what: &str| {
            lines
                .next()
                .and_then(|l| l.parse::<u64>().ok())
                .ok_or_else(|| bad(format!("line for the {what} size is not a number")))
        };
        let old = size("old")?;
        let new = size("new")?;
        let hashes = lines
            .enumerate()
            .map(|(i, l)| {
                STANDARD
                    .decode(l)
                    .ok()
                    .and_then(|raw| raw.try_into().ok())
                    .ok_or_else(|| bad(format!("hash {} is not base64 of 32 bytes", i + 1)))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        Ok(Self { old, new, hashes })
    }
}

/// Verifies that the signed checkpoint `new_note` extends the signed checkpoint `old_note` by `proof`: both
/// signatures, equal origins, the proof's sizes, and the RFC 9162 consistency check.
pub fn verify_extension(
    verifier: &NoteVerifier,
    old_note: &[u8],
    new_note: &[u8],
    proof: &ConsistencyProof,
) -> Result<(Checkpoint, Checkpoint), VerifyError> {
    let old = open_checkpoint(verifier, old_note)?;
    let new = open_checkpoint(verifier, new_note)?;
    if proof.old != old.size || proof.new != new.size {
        return Err(VerifyError::ProofFormat(format!(
            "the proof is from size {} to {}, the checkpoints are of sizes {} and {}",
            proof.old, proof.new, old.size, new.size
        )));
    }
    if !verify_consistency(old.size, new.size, &old.root, &new.root, &proof.hashes) {
        return Err(VerifyError::NotAnExtension {
            old: old.size,
            new: new.size,
        });
    }
    Ok((old, new))
}
