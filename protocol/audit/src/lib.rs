//! The Gait fleet's tamper-evident audit log, as a second party reads it: the entry format, RFC 6962 / RFC 9162
//! Merkle hashing with inclusion and consistency proofs, C2SP signed-note checkpoints with Ed25519, and the
//! offline verifier of an exported log. No I/O: an auditor's verifier needs this crate and the files only.
//!
//! - [`entry`]: one entry, a canonical JSON object; its bytes are an `entries.jsonl` line and the leaf data.
//! - [`hash`], [`merkle`]: leaf and node hashes, tree hashes over stored complete subtrees, proofs.
//! - [`note`], [`checkpoint`]: `origin\nsize\nbase64(root)\n` signed as a C2SP note.
//! - [`verify`]: an export directory's bytes checked end to end, naming the first bad entry; consistency proofs
//!   between two checkpoints.

pub mod checkpoint;
pub mod entry;
pub mod hash;
pub mod merkle;
pub mod note;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use entry::{Entry, EntryDraft, EntryError, Target, content_digest};
pub use hash::{Hash, empty_root, leaf_hash, node_hash};
pub use merkle::{Frontier, MemoryTree, NodeId, NodeSource, ProofError};
pub use note::{NoteError, NoteSigner, NoteVerifier};
pub use verify::{ConsistencyProof, Verified, VerifyError, verify_export, verify_extension};
