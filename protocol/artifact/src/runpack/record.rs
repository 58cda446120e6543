//! The five runpack files as typed records (contract §4.2, §4.3): manifest, run, intents, results, refs.

use gait_canon::sign::Signature;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::GoTime;
use crate::check::{self, Checker, DecodeError, EVIDENCE_MODES, InvalidArtifact, is_zero_i64};
use crate::relationship::RelationshipEnvelope;

/// `schema_id` of `manifest.json`.
pub const MANIFEST_SCHEMA_ID: &str = "gait.runpack.manifest";
/// `schema_id` of `run.json`.
pub const RUN_SCHEMA_ID: &str = "gait.runpack.run";
/// `schema_id` of each `intents.jsonl` line.
pub const INTENT_SCHEMA_ID: &str = "gait.runpack.intent";
/// `schema_id` of each `results.jsonl` line.
pub const RESULT_SCHEMA_ID: &str = "gait.runpack.result";
/// `schema_id` of `refs.json`.
pub const REFS_SCHEMA_ID: &str = "gait.runpack.refs";

/// `manifest.json`: the digests that seal a runpack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `gait.runpack.manifest`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// The run's `created_at`.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Run id (`run_…`).
    #[serde(default)]
    pub run_id: String,
    /// `reference` or `raw`.
    #[serde(default)]
    pub capture_mode: String,
    /// One entry per sealed file, sorted by path.
    #[serde(default)]
    pub files: Vec<ManifestFile>,
    /// [`Manifest::compute_digest`].
    #[serde(default)]
    pub manifest_digest: String,
    /// Signatures over the raw manifest minus `signatures`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<Signature>,
}

/// A sealed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Entry name in the zip.
    #[serde(default)]
    pub path: String,
    /// Hex SHA-256 of the entry's bytes.
    #[serde(default)]
    pub sha256: String,
}

impl Manifest {
    /// `manifest_digest` = DigestJCS(manifest with `manifest_digest` = "" and no signatures).
    pub fn compute_digest(&self) -> String {
        /// The manifest's serialized form with `manifest_digest` blanked and no signatures, borrowed rather
        /// than cloned (JCS sorts the keys, so only the member set matters).
        #[derive(Serialize)]
        struct Unsealed<'a> {
            schema_id: &'a str,
            schema_version: &'a str,
            created_at: &'a GoTime,
            producer_version: &'a str,
            run_id: &'a str,
            capture_mode: &'a str,
            files: &'a [ManifestFile],
            manifest_digest: &'static str,
        }
        gait_canon::digest_jcs(&crate::signed::to_value(&Unsealed {
            schema_id: &self.schema_id,
            schema_version: &self.schema_version,
            created_at: &self.created_at,
            producer_version: &self.producer_version,
            run_id: &self.run_id,
            capture_mode: &self.capture_mode,
            files: &self.files,
            manifest_digest: "",
        }))
    }

    /// Rules of `runpack/manifest.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(MANIFEST_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        check_run_id(&mut c, &self.run_id);
        c.one_of(
            "capture_mode",
            &self.capture_mode,
            &["reference", "raw"],
            true,
        );
        for (i, file) in self.files.iter().enumerate() {
            c.non_empty(&format!("files[{i}].path"), &file.path);
            c.hex64(&format!("files[{i}].sha256"), &file.sha256, true);
        }
        c.hex64("manifest_digest", &self.manifest_digest, true);
        for (i, sig) in self.signatures.iter().enumerate() {
            c.hex64(
                &format!("signatures[{i}].signed_digest"),
                &sig.signed_digest,
                false,
            );
        }
        c.finish()
    }
}

/// `run.json`: the run and its timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `gait.runpack.run`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Run start.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Where it ran.
    #[serde(default)]
    pub env: RunEnv,
    /// What happened, in order.
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
}

/// Runtime environment of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnv {
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU architecture.
    #[serde(default)]
    pub arch: String,
    /// Agent runtime.
    #[serde(default)]
    pub runtime: String,
}

/// One timeline event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Event name.
    #[serde(default)]
    pub event: String,
    /// When.
    #[serde(default)]
    pub ts: GoTime,
    /// Related record.
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub reference: String,
    /// Links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<RelationshipEnvelope>,
}

impl RunRecord {
    /// Rules of `runpack/run.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(RUN_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        check_run_id(&mut c, &self.run_id);
        for (i, event) in self.timeline.iter().enumerate() {
            c.non_empty(&format!("timeline[{i}].event"), &event.event);
            c.time_set(&format!("timeline[{i}].ts"), &event.ts);
            if let Some(r) = &event.relationship {
                r.check(&mut c, &format!("timeline[{i}].relationship"));
            }
        }
        c.finish()
    }
}

/// One line of `intents.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntentRecord {
    /// `gait.runpack.intent`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Capture time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Intent id within the run.
    #[serde(default)]
    pub intent_id: String,
    /// Tool called.
    #[serde(default)]
    pub tool_name: String,
    /// DigestJCS of `args`.
    #[serde(default)]
    pub args_digest: String,
    /// Captured arguments (absent in reference mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
}

/// One line of `results.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// `gait.runpack.result`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Capture time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Intent this result answers.
    #[serde(default)]
    pub intent_id: String,
    /// Outcome (e.g. `ok`).
    #[serde(default)]
    pub status: String,
    /// DigestJCS of `result`.
    #[serde(default)]
    pub result_digest: String,
    /// Captured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Map<String, Value>>,
}

/// `refs.json`: receipts of the context the run retrieved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Refs {
    /// `gait.runpack.refs`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Digest of the context set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_set_digest: String,
    /// `best_effort` or `required`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_evidence_mode: String,
    /// Number of context references.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub context_ref_count: i64,
    /// Retrieval receipts.
    #[serde(default)]
    pub receipts: Vec<Receipt>,
}

/// One retrieval receipt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Reference id.
    #[serde(default)]
    pub ref_id: String,
    /// Source type.
    #[serde(default)]
    pub source_type: String,
    /// Source locator.
    #[serde(default)]
    pub source_locator: String,
    /// Digest of the query.
    #[serde(default)]
    pub query_digest: String,
    /// Digest of the retrieved content.
    #[serde(default)]
    pub content_digest: String,
    /// Retrieval time.
    #[serde(default)]
    pub retrieved_at: GoTime,
    /// Redaction mode.
    #[serde(default)]
    pub redaction_mode: String,
    /// `unknown`, `mutable` or `immutable`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub immutability: String,
    /// Freshness SLA.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub freshness_sla_seconds: i64,
    /// Sensitivity label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sensitivity_label: String,
    /// Retrieval parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval_params: Option<Map<String, Value>>,
}

impl Refs {
    /// Rules of `runpack/refs.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(REFS_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        check_run_id(&mut c, &self.run_id);
        c.hex64("context_set_digest", &self.context_set_digest, false);
        c.one_of(
            "context_evidence_mode",
            &self.context_evidence_mode,
            EVIDENCE_MODES,
            false,
        );
        c.non_negative("context_ref_count", self.context_ref_count);
        for (i, r) in self.receipts.iter().enumerate() {
            let at = |f: &str| format!("receipts[{i}].{f}");
            c.non_empty(&at("ref_id"), &r.ref_id);
            c.non_empty(&at("source_type"), &r.source_type);
            c.non_empty(&at("source_locator"), &r.source_locator);
            c.hex64(&at("query_digest"), &r.query_digest, true);
            c.hex64(&at("content_digest"), &r.content_digest, true);
            c.time_set(&at("retrieved_at"), &r.retrieved_at);
            c.non_empty(&at("redaction_mode"), &r.redaction_mode);
            c.one_of(
                &at("immutability"),
                &r.immutability,
                &["unknown", "mutable", "immutable"],
                false,
            );
            c.non_negative(&at("freshness_sla_seconds"), r.freshness_sla_seconds);
        }
        c.finish()
    }
}

/// Schema pattern `^run_[A-Za-z0-9_-]+$`.
fn check_run_id(c: &mut Checker, run_id: &str) {
    let valid = run_id.strip_prefix("run_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if !valid {
        c.fail(
            "run_id",
            format!("must match run_[A-Za-z0-9_-]+, got {run_id:?}"),
        );
    }
}

/// Parse and validate `manifest.json`.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, DecodeError> {
    let manifest = check::decode_typed::<Manifest>(MANIFEST_SCHEMA_ID, bytes)?;
    manifest.validate()?;
    Ok(manifest)
}

/// Parse and validate `run.json`.
pub fn parse_run(bytes: &[u8]) -> Result<RunRecord, DecodeError> {
    let run = check::decode_typed::<RunRecord>(RUN_SCHEMA_ID, bytes)?;
    run.validate()?;
    Ok(run)
}

/// Parse and validate `refs.json`.
pub fn parse_refs(bytes: &[u8]) -> Result<Refs, DecodeError> {
    let refs = check::decode_typed::<Refs>(REFS_SCHEMA_ID, bytes)?;
    refs.validate()?;
    Ok(refs)
}

/// A JSONL line could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct JsonlError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub source: DecodeError,
}

/// Parse `intents.jsonl` (one JSON object per non-empty line).
pub fn parse_intents_jsonl(bytes: &[u8]) -> Result<Vec<IntentRecord>, JsonlError> {
    parse_jsonl(INTENT_SCHEMA_ID, bytes)
}

/// Parse `results.jsonl` (one JSON object per non-empty line).
pub fn parse_results_jsonl(bytes: &[u8]) -> Result<Vec<ResultRecord>, JsonlError> {
    parse_jsonl(RESULT_SCHEMA_ID, bytes)
}

fn parse_jsonl<T: serde::de::DeserializeOwned>(
    schema_id: &'static str,
    bytes: &[u8],
) -> Result<Vec<T>, JsonlError> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            check::decode_typed::<T>(schema_id, line).map_err(|source| JsonlError {
                line: i + 1,
                source,
            })
        })
        .collect()
}
