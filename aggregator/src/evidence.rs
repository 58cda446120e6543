//! Evidence operations: where the bytes of the artifacts the fleet produced (runpacks, traces, regress results)
//! live, addressed by their SHA-256 digest, and verified on the way in and on the way out.
//!
//! [`blob::BlobStore`] is the one interface: a directory under the data dir by default (`evidence.blobs.backend:
//! dir`), or any S3-compatible object store (`s3`) for deployments that outgrow one disk. Both go through the
//! `object_store` crate, so the two backends share every rule: content addressing, the size cap, and the digest
//! check on every read (a blob edited in place is refused, never served).
//!
//! [`upload::Uploads`] takes artifact bytes from agents over their connection, resumable, and records which
//! environment's agent uploaded which digest: the tenancy the content route reads through.
//!
//! [`index`] computes what the evidence index holds of each committed batch (decision and artifact records by
//! their digests, run ids, verdicts and stage), and [`query::EvidenceIndex`] serves operators' lookups in it.

pub mod blob;
pub mod index;
pub mod query;
pub mod upload;

pub use blob::{BlobError, BlobStore, PutOutcome};
pub use upload::{Progress, UploadError, Uploads};
