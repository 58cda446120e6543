//! Gait's artifacts as typed Rust: signed gate traces, approval and delegation tokens, runpacks and regress
//! results, with Gait's JSON names, Go `omitempty` rules, digests and verification (contract §2, §4, §5).
//!
//! Parsing is strict about JSON (via `gait-canon`) and tolerant about unknown fields, as Gait's Go decoder is.
//! Every `parse_*` function also runs the typed validation that the contract and JSON Schemas give.

pub mod approval;
pub mod check;
pub mod context;
pub mod delegation;
pub mod evidence;
pub mod regress;
pub mod relationship;
pub mod runpack;
pub mod signed;
pub mod timestamp;
pub mod trace;

pub use check::{DecodeError, FieldError, InvalidArtifact};
pub use timestamp::GoTime;

/// `schema_version` of every v1 artifact.
pub const SCHEMA_VERSION: &str = "1.0.0";
