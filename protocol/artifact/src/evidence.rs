//! The payload of an `artifact.*` outbox record: what the agent tells the aggregator about one Gait artifact it
//! verified (a runpack, a signed trace, a regress result and its JUnit report), so that the aggregator can index
//! it by its digests without holding the bytes.
//!
//! The agent writes one record per artifact file (`gait-agent push`, watched directories); the aggregator's
//! evidence index reads the same struct. The projection fields are the enterprise projection of contract §7,
//! computed by [`crate::runpack::Runpack::projection`], [`crate::trace::TraceRecord`]'s projection and
//! [`crate::regress::RegressResult`]'s projection, so unknown additive fields in an artifact (such as
//! `enterprise_extension`) change nothing here. Only artifacts that verified are recorded: an invalid one is
//! reported to whoever offered it and never written as a record.
//!
//! The payload is JSON (UTF-8), at most the wire's record payload limit. Readers ignore unknown fields, so later
//! versions may add fields without a new schema id.

use serde::{Deserialize, Serialize};

use crate::regress::RegressProjection;
use crate::runpack::RunpackProjection;
use crate::trace::TraceProjection;

/// `schema` of every artifact record payload.
pub const ARTIFACT_RECORD_SCHEMA: &str = "gait.agent.artifact";

/// Record kinds of artifact records all start with this prefix.
pub const ARTIFACT_KIND_PREFIX: &str = "artifact.";

/// Which Gait artifact a record describes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// `runpack_<run_id>.zip` (contract §4).
    Runpack,
    /// A signed gate trace, `gait.gate.trace` (contract §2.3).
    Trace,
    /// `regress_result.json`, `gait.regress.result` (contract §5).
    RegressResult,
    /// The JUnit XML report `gait regress run --junit` writes beside a regress result.
    Junit,
}

impl ArtifactKind {
    /// Every kind.
    pub const ALL: [ArtifactKind; 4] = [
        ArtifactKind::Runpack,
        ArtifactKind::Trace,
        ArtifactKind::RegressResult,
        ArtifactKind::Junit,
    ];

    /// The kind's name in payloads, query parameters and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Runpack => "runpack",
            ArtifactKind::Trace => "trace",
            ArtifactKind::RegressResult => "regress_result",
            ArtifactKind::Junit => "junit",
        }
    }

    /// Inverse of [`ArtifactKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        ArtifactKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The outbox record kind: `artifact.<name>`.
    pub fn record_kind(self) -> &'static str {
        match self {
            ArtifactKind::Runpack => "artifact.runpack",
            ArtifactKind::Trace => "artifact.trace",
            ArtifactKind::RegressResult => "artifact.regress_result",
            ArtifactKind::Junit => "artifact.junit",
        }
    }

    /// Inverse of [`ArtifactKind::record_kind`].
    pub fn from_record_kind(kind: &str) -> Option<Self> {
        ArtifactKind::ALL
            .into_iter()
            .find(|k| k.record_kind() == kind)
    }
}

/// Most tool calls of one runpack an artifact record lists (the rest are counted in `calls_omitted`).
pub const MAX_RUNPACK_CALLS: usize = 1_000;
/// Most bytes of call text (ids and tool names) one artifact record carries, so a runpack with long names still
/// fits a record however the aggregator's payload limit is set; calls past it are counted, not listed.
pub const MAX_RUNPACK_CALL_BYTES: usize = 64 * 1024;
/// Longest intent id or tool name a listed call may have; a call with a longer one is counted, not listed.
pub const MAX_CALL_TEXT_BYTES: usize = 256;

/// One tool call a runpack recorded, by digests only (never a value): what coverage and drift read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunpackCall {
    /// The intent's id within the run.
    pub intent_id: String,
    /// The tool called.
    pub tool_name: String,
    /// DigestJCS of the call's arguments (as the gate computes it).
    pub args_digest: String,
    /// DigestJCS of its result, when the runpack has one for this intent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result_digest: String,
}

/// How the agent came to hold the artifact.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactSource {
    /// `gait-agent push` (a CI job or an operator).
    Push,
    /// A directory the daemon watches (`capture.watch`).
    Watch,
}

/// The JSON payload of an `artifact.*` record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// [`ARTIFACT_RECORD_SCHEMA`].
    pub schema: String,
    /// Which artifact this is; the record kind says the same ([`ArtifactKind::record_kind`]).
    pub artifact_kind: ArtifactKind,
    /// SHA-256 of the artifact file's exact bytes, 64 lowercase hex: the key of the aggregator's blob store.
    pub sha256: String,
    /// Size of the file in bytes.
    pub size_bytes: u64,
    /// The file's name (no directory), as the producer wrote it.
    pub file_name: String,
    /// How the agent came to hold it.
    pub source: ArtifactSource,
    /// Signature status as `gait verify` reports it: `verified`, `missing`, `skipped` (signed, but no key
    /// to check it with) or `not_applicable` (JUnit).
    pub signature_status: String,
    /// The run ids this artifact concerns: a runpack's own run id, the run ids a regress result's graders
    /// replayed; empty for a trace and a JUnit report.
    #[serde(default)]
    pub run_ids: Vec<String>,
    /// `producer_version` of the artifact (empty for JUnit).
    #[serde(default)]
    pub producer_version: String,
    /// §7 projection of a runpack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runpack: Option<RunpackProjection>,
    /// §7 projection of a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceProjection>,
    /// §7 projection of a regress result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regress: Option<RegressProjection>,
    /// For a JUnit report: the SHA-256 of the regress result it was written beside, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regress_result_sha256: Option<String>,
    /// For a runpack: its tool calls in `intents.jsonl` order, at most [`MAX_RUNPACK_CALLS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<RunpackCall>,
    /// Calls of the runpack not listed (past [`MAX_RUNPACK_CALLS`] or [`MAX_RUNPACK_CALL_BYTES`], or with an id
    /// or tool name over [`MAX_CALL_TEXT_BYTES`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub calls_omitted: u64,
    /// For a runpack: when the run was recorded (its manifest's `created_at`), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_created_unix_ms: Option<i64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in ArtifactKind::ALL {
            assert_eq!(ArtifactKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                ArtifactKind::from_record_kind(kind.record_kind()),
                Some(kind)
            );
            assert!(kind.record_kind().starts_with(ARTIFACT_KIND_PREFIX));
            assert!(kind.record_kind().len() <= 64);
        }
        assert_eq!(ArtifactKind::parse("zip"), None);
    }
}
