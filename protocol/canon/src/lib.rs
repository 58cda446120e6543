//! Gait's cross-cutting primitives: strict JSON parsing, RFC 8785 canonical JSON, SHA-256 digests and Ed25519
//! signatures over them (contract §0.1, §0.2).
//!
//! Every digest in the Gait contract is "DigestJCS": SHA-256 over the RFC 8785 canonical bytes of a JSON value,
//! rendered as 64 lowercase hex characters. Signatures sign the 32 raw digest bytes, never the JSON itself.

mod digest;
pub mod gojson;
pub mod gotime;
mod jcs;
mod json;
pub mod sign;

pub use digest::{sha256, sha256_hex};
pub use jcs::{canonical_bytes, digest_jcs};
pub use json::{CanonError, MAX_DEPTH, parse_json, to_canonical_value};
