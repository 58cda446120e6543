//! Signed policy bundles: a manifest (scope, epoch, validity, staleness rule, policy file digests) signed with an
//! Ed25519 registry key, plus the policy files, in one JSON document that verifies offline with public keys only.
//!
//! # Document
//! ```json
//! {"schema_id":"gait.fleet.policy_bundle","schema_version":"1.0.0",
//!  "manifest":{...},"signature":{"alg":"ed25519","key_id":"..","sig":"..","signed_digest":".."},
//!  "files":{"<name>":"<standard base64 of the bytes>"}}
//! ```
//! The bundle digest is DigestJCS (SHA-256 of the RFC 8785 canonical JSON) of `manifest`, and the signature is
//! Gait's SignJSON over `manifest`, so `signature.signed_digest` is the bundle digest. Files are bound to the
//! manifest by their SHA-256 and size. The full format is in `schemas/bundle/README.md`.
//!
//! # Verification order ([`verify`])
//! size cap -> JSON syntax -> schema id/version -> strict parse (unknown and duplicate fields refused) and
//! manifest field rules -> signing key not revoked (by the verifier or `manifest.trust.revoked`) -> signing key in
//! the trust root, or reached from a trusted unrevoked key by the endorsement chain `manifest.trust.keys` (each
//! link verified from the trusted end, at most 16, no loops) ->
//! signature over the manifest (and `manifest.key_id` equal to the signing key) -> every listed file present with
//! matching sha256 and size, no unlisted file -> scope equals the expected scope -> `now < not_after` -> epoch
//! strictly greater than the current one (replay and rollback protection). The first failing check decides the
//! error, so a forged bundle is never reported as merely expired or stale.

mod builder;
pub mod cohort;
mod error;
mod manifest;
mod trust;
mod verify;

pub use builder::BundleBuilder;
pub use error::BundleError;
pub use manifest::{
    CandidateEntry, CaptureMode, KeyEndorsement, MAX_NAME_LEN, MAX_POLICIES, MAX_REVOKED_KEYS,
    MAX_ROLLBACK_REASON_LEN, MAX_SAFE_INTEGER, MAX_SCOPE_PART_LEN, MAX_TRUST_LINKS, Manifest,
    OnStale, PolicyEntry, Rollback, Scope, Settings, Stage, Staleness, TrustUpdate,
    endorsement_input,
};
pub use trust::{TrustRoot, endorse, verify_endorsement};
pub use verify::{VerifiedBundle, VerifyOptions, inspect, open_unverified, verify, verify_with};

/// `schema_id` of a bundle document.
pub const BUNDLE_SCHEMA_ID: &str = "gait.fleet.policy_bundle";

/// `schema_version` this build writes; it reads any `1.x.y`.
pub const BUNDLE_SCHEMA_VERSION: &str = "1.0.0";

/// Largest bundle document accepted or produced, in bytes. It fits in one wire frame with room to spare.
pub const MAX_BUNDLE_LEN: usize = 6 * 1024 * 1024;
