//! Runpacks (`runpack_<run_id>.zip`, contract §4): reading them safely, verifying them exactly as
//! `gait verify` does, and the enterprise projection of their content.

pub mod archive;
pub mod record;

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use gait_canon::sign::{self, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use archive::{ArchiveError, SafeZip, ZipLimits};
pub use record::{
    IntentRecord, JsonlError, Manifest, ManifestFile, Receipt, Refs, ResultRecord, RunRecord,
};

use crate::check::{self, DecodeError};

/// The four files every manifest must list besides itself.
pub const REQUIRED_FILES: [&str; 4] = ["run.json", "intents.jsonl", "results.jsonl", "refs.json"];

/// A runpack could not be verified at all (Gait: exit 6 or an `error` string), as opposed to a verification that
/// ran and found problems (a report with `ok: false`).
#[derive(Debug, thiserror::Error)]
pub enum RunpackError {
    /// The runpack file could not be opened.
    #[error("cannot open runpack {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The zip is malformed or hostile.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// No `manifest.json` entry.
    #[error("missing manifest.json")]
    MissingManifest,
    /// A required entry (for reading) is absent.
    #[error("runpack has no {0} entry")]
    MissingEntry(&'static str),
    /// `manifest.json` (or another entry) is not valid JSON of the right shape.
    #[error("parse {entry}: {source}")]
    Parse {
        /// The entry.
        entry: &'static str,
        /// What is wrong.
        source: DecodeError,
    },
    /// A JSONL entry has a bad line.
    #[error("parse {entry}: {source}")]
    Jsonl {
        /// The entry.
        entry: &'static str,
        /// Which line and why.
        source: JsonlError,
    },
    /// The manifest header is not a v1 runpack manifest.
    #[error("manifest {0}")]
    ManifestHeader(&'static str),
    /// The strict profile was requested without a key.
    #[error("strict verify profile requires --public-key/--public-key-env or private key source")]
    StrictNeedsKey,
}

/// Where the runpack bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum RunpackSource<'a> {
    /// A file on disk (read lazily, never fully loaded).
    Path(&'a Path),
    /// Bytes in memory; `path` is what the report shows.
    Bytes {
        /// The zip bytes.
        bytes: &'a [u8],
        /// Display path for the report.
        path: &'a str,
    },
}

/// `--profile` of `gait verify`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    /// Signatures optional unless required explicitly.
    #[default]
    Standard,
    /// Signatures required and a key mandatory.
    Strict,
}

/// Options of `gait verify`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// `--require-signature`.
    pub require_signature: bool,
    /// Key to check manifest signatures with.
    pub public_key: Option<&'a PublicKey>,
    /// `--profile`.
    pub profile: Profile,
}

/// One file whose bytes do not match the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashMismatch {
    /// Entry path (`manifest.json` for a wrong `manifest_digest`).
    pub path: String,
    /// Digest the manifest declares.
    pub expected: String,
    /// Digest of the actual bytes.
    pub actual: String,
}

/// Signature status of a runpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    /// No signatures in the manifest.
    Missing,
    /// Signatures present but no key to check them.
    Skipped,
    /// At least one signature verified.
    Verified,
    /// None verified.
    Failed,
}

/// `gait verify --json` output, field for field (omitted when empty, as Gait does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunpackVerifyReport {
    /// Files intact and signature requirement met.
    pub ok: bool,
    /// The runpack path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Run id from the manifest.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// `manifest_digest` as the manifest declares it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub manifest_digest: String,
    /// Number of manifest file entries checked.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub files_checked: usize,
    /// Declared-but-absent and required-but-undeclared files, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_files: Vec<String>,
    /// Digest mismatches, sorted by path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hash_mismatches: Vec<HashMismatch>,
    /// Signature status.
    pub signature_status: SignatureStatus,
    /// Why signatures failed or were not checked, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signature_errors: Vec<String>,
    /// Signatures in the manifest.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub signatures_total: usize,
    /// Signatures that verified.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub signatures_valid: usize,
    /// Operator note for the signature status.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature_note: String,
    /// Suggested follow-up commands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next_commands: Vec<String>,
}

fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

/// Verify a runpack as `gait verify` does (contract §4.5).
pub fn verify_runpack(
    source: RunpackSource<'_>,
    options: VerifyOptions<'_>,
) -> Result<RunpackVerifyReport, RunpackError> {
    verify_runpack_with_limits(source, options, ZipLimits::default())
}

/// [`verify_runpack`] with explicit zip bounds.
pub fn verify_runpack_with_limits(
    source: RunpackSource<'_>,
    options: VerifyOptions<'_>,
    limits: ZipLimits,
) -> Result<RunpackVerifyReport, RunpackError> {
    if options.profile == Profile::Strict && options.public_key.is_none() {
        return Err(RunpackError::StrictNeedsKey);
    }
    match source {
        RunpackSource::Path(path) => {
            let file = File::open(path).map_err(|source| RunpackError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let zip = SafeZip::open(BufReader::new(file), limits)?;
            verify_zip(zip, &path.display().to_string(), options)
        }
        RunpackSource::Bytes { bytes, path } => {
            verify_zip(SafeZip::open(Cursor::new(bytes), limits)?, path, options)
        }
    }
}

fn verify_zip<R: Read + Seek>(
    mut zip: SafeZip<R>,
    path: &str,
    options: VerifyOptions<'_>,
) -> Result<RunpackVerifyReport, RunpackError> {
    let require_signature = options.require_signature || options.profile == Profile::Strict;
    let manifest_bytes = zip
        .read("manifest.json")?
        .ok_or(RunpackError::MissingManifest)?;
    let parse_error = |source| RunpackError::Parse {
        entry: "manifest.json",
        source,
    };
    let node = gait_canon::gojson::parse_node(&manifest_bytes)
        .map_err(|e| parse_error(DecodeError::Json(e)))?;
    let manifest: Manifest =
        check::decode_node(record::MANIFEST_SCHEMA_ID, &node).map_err(parse_error)?;
    if manifest.schema_id != record::MANIFEST_SCHEMA_ID {
        return Err(RunpackError::ManifestHeader(
            "schema_id must be gait.runpack.manifest",
        ));
    }
    if manifest.schema_version != crate::SCHEMA_VERSION {
        return Err(RunpackError::ManifestHeader("schema_version must be 1.0.0"));
    }
    if manifest.run_id.is_empty() {
        return Err(RunpackError::ManifestHeader("missing run_id"));
    }

    let mut missing_files = Vec::new();
    let mut hash_mismatches = Vec::new();
    let mut listed = [false; REQUIRED_FILES.len()];
    for file in &manifest.files {
        let name = file.path.replace('\\', "/");
        if let Some(i) = REQUIRED_FILES.iter().position(|r| *r == name) {
            listed[i] = true;
        }
        match zip.sha256_hex(&name)? {
            None => missing_files.push(name),
            Some(actual) if !actual.eq_ignore_ascii_case(&file.sha256) => {
                hash_mismatches.push(HashMismatch {
                    path: name,
                    expected: file.sha256.clone(),
                    actual,
                });
            }
            Some(_) => {}
        }
    }
    for (required, listed) in REQUIRED_FILES.iter().zip(listed) {
        if !listed {
            missing_files.push((*required).to_owned());
        }
    }
    let computed = manifest.compute_digest();
    if !computed.eq_ignore_ascii_case(&manifest.manifest_digest) {
        hash_mismatches.push(HashMismatch {
            path: "manifest.json".into(),
            expected: manifest.manifest_digest.clone(),
            actual: computed,
        });
    }

    let (signature_status, mut signature_errors, signatures_valid) =
        check_manifest_signatures(&node, &manifest, options.public_key, require_signature);

    missing_files.sort();
    hash_mismatches.sort_by(|a, b| a.path.cmp(&b.path));
    signature_errors.sort();
    let files_ok = missing_files.is_empty() && hash_mismatches.is_empty();
    let ok = files_ok
        && if require_signature {
            signature_status == SignatureStatus::Verified
        } else {
            signature_status != SignatureStatus::Failed
        };
    Ok(RunpackVerifyReport {
        ok,
        path: path.to_owned(),
        run_id: manifest.run_id.clone(),
        manifest_digest: manifest.manifest_digest.clone(),
        files_checked: manifest.files.len(),
        missing_files,
        hash_mismatches,
        signature_status,
        signature_errors,
        signatures_total: manifest.signatures.len(),
        signatures_valid,
        signature_note: signature_note(signature_status, require_signature).to_owned(),
        next_commands: next_commands(&manifest.run_id),
    })
}

/// Manifest signatures sign DigestJCS of the raw manifest object minus `signatures` (unknown fields included).
fn check_manifest_signatures(
    manifest_node: &gait_canon::gojson::Node,
    manifest: &Manifest,
    key: Option<&PublicKey>,
    require_signature: bool,
) -> (SignatureStatus, Vec<String>, usize) {
    if manifest.signatures.is_empty() {
        let errors = if require_signature {
            vec!["manifest has no signatures".to_owned()]
        } else {
            Vec::new()
        };
        return (SignatureStatus::Missing, errors, 0);
    }
    let Some(key) = key else {
        return (
            SignatureStatus::Skipped,
            vec!["public key not configured".to_owned()],
            0,
        );
    };
    // The raw object is only built when there is something to verify.
    let mut signable = manifest_node.to_map().unwrap_or_default();
    signable.remove("signatures");
    let digest = gait_canon::digest_jcs(&Value::Object(signable));
    let mut errors = Vec::new();
    let mut valid = 0;
    for signature in &manifest.signatures {
        match sign::verify_digest_hex(key, &digest, signature) {
            Ok(()) => valid += 1,
            Err(err) => errors.push(err.to_string()),
        }
    }
    let status = if valid > 0 {
        SignatureStatus::Verified
    } else {
        SignatureStatus::Failed
    };
    (status, errors, valid)
}

fn signature_note(status: SignatureStatus, require_signature: bool) -> &'static str {
    match (status, require_signature) {
        (SignatureStatus::Missing, true) => {
            "signatures are required in this mode; provide signing keys and re-run verify"
        }
        (SignatureStatus::Missing, false) => {
            "unsigned local/dev artifacts are expected by default; use --require-signature for strict verification"
        }
        (SignatureStatus::Skipped, true) => {
            "signature checks were expected but skipped; provide a public key or private key source"
        }
        (SignatureStatus::Skipped, false) => {
            "signature checks were skipped because no verify key was provided"
        }
        (SignatureStatus::Verified, _) => "signatures verified",
        (SignatureStatus::Failed, _) => {
            "signature verification failed; inspect signature_errors and re-run with the correct key"
        }
    }
}

fn next_commands(run_id: &str) -> Vec<String> {
    let run_id = run_id.trim();
    if run_id.is_empty() {
        return Vec::new();
    }
    vec![
        format!("gait regress bootstrap --from {run_id} --json --junit ./gait-out/junit.xml"),
        "gait demo --durable".to_owned(),
        "gait demo --policy".to_owned(),
    ]
}

/// The typed content of a runpack (not verified: call [`verify_runpack`] for integrity).
#[derive(Debug, Clone, PartialEq)]
pub struct Runpack {
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `run.json`.
    pub run: RunRecord,
    /// `intents.jsonl`.
    pub intents: Vec<IntentRecord>,
    /// `results.jsonl`.
    pub results: Vec<ResultRecord>,
    /// `refs.json`.
    pub refs: Refs,
}

/// Read and decode the five runpack files from zip bytes, with the default bounds.
pub fn read_runpack(bytes: &[u8]) -> Result<Runpack, RunpackError> {
    let mut zip = SafeZip::open(Cursor::new(bytes), ZipLimits::default())?;
    let mut entry = |name: &'static str| -> Result<Vec<u8>, RunpackError> {
        zip.read(name)?.ok_or(RunpackError::MissingEntry(name))
    };
    let parse = |entry: &'static str| move |source| RunpackError::Parse { entry, source };
    let manifest =
        check::decode_typed::<Manifest>(record::MANIFEST_SCHEMA_ID, &entry("manifest.json")?)
            .map_err(parse("manifest.json"))?;
    let run = check::decode_typed::<RunRecord>(record::RUN_SCHEMA_ID, &entry("run.json")?)
        .map_err(parse("run.json"))?;
    let refs = check::decode_typed::<Refs>(record::REFS_SCHEMA_ID, &entry("refs.json")?)
        .map_err(parse("refs.json"))?;
    let intents = record::parse_intents_jsonl(&entry("intents.jsonl")?).map_err(|source| {
        RunpackError::Jsonl {
            entry: "intents.jsonl",
            source,
        }
    })?;
    let results = record::parse_results_jsonl(&entry("results.jsonl")?).map_err(|source| {
        RunpackError::Jsonl {
            entry: "results.jsonl",
            source,
        }
    })?;
    Ok(Runpack {
        manifest,
        run,
        intents,
        results,
        refs,
    })
}

/// Runpack fields an enterprise consumer keeps (contract §7); unchanged by unknown additive fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunpackProjection {
    /// Run id.
    pub run_id: String,
    /// Declared manifest digest.
    pub runpack_manifest_digest: String,
    /// `reference` or `raw`.
    pub capture_mode: String,
    /// Lines in `intents.jsonl`.
    pub intent_count: usize,
    /// Lines in `results.jsonl`.
    pub result_count: usize,
    /// Receipts in `refs.json`.
    pub receipt_count: usize,
    /// `query_digest:content_digest` per receipt, sorted.
    pub receipt_digest_vector: Vec<String>,
}

impl Runpack {
    /// Its tool calls by digests, in `intents.jsonl` order, at most `max` and at most `max_bytes` of ids and tool
    /// names, with the number left out (calls with an id or tool name over
    /// [`crate::evidence::MAX_CALL_TEXT_BYTES`] are left out too); each with the result digest of the same intent
    /// id, when there is one.
    pub fn calls(&self, max: usize, max_bytes: usize) -> (Vec<crate::evidence::RunpackCall>, u64) {
        let results: std::collections::HashMap<&str, &str> = self
            .results
            .iter()
            .map(|r| (r.intent_id.as_str(), r.result_digest.as_str()))
            .collect();
        let mut calls = Vec::new();
        let mut bytes = 0usize;
        for i in &self.intents {
            let text = i.intent_id.len() + i.tool_name.len();
            if calls.len() == max
                || bytes + text > max_bytes
                || i.intent_id.len() > crate::evidence::MAX_CALL_TEXT_BYTES
                || i.tool_name.len() > crate::evidence::MAX_CALL_TEXT_BYTES
            {
                continue;
            }
            bytes += text;
            calls.push(crate::evidence::RunpackCall {
                intent_id: i.intent_id.clone(),
                tool_name: i.tool_name.clone(),
                args_digest: i.args_digest.clone(),
                result_digest: results
                    .get(i.intent_id.as_str())
                    .map(|d| (*d).to_owned())
                    .unwrap_or_default(),
            });
        }
        let omitted = (self.intents.len() - calls.len()) as u64;
        (calls, omitted)
    }

    /// When the run was recorded (the manifest's `created_at`), Unix ms; `None` when it carries none.
    pub fn created_unix_ms(&self) -> Option<i64> {
        let t = &self.manifest.created_at;
        (!t.is_zero()).then(|| {
            i64::try_from(t.datetime().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
        })
    }

    /// The enterprise projection.
    pub fn projection(&self) -> RunpackProjection {
        let mut receipt_digest_vector: Vec<String> = self
            .refs
            .receipts
            .iter()
            .map(|r| format!("{}:{}", r.query_digest, r.content_digest))
            .collect();
        receipt_digest_vector.sort();
        RunpackProjection {
            run_id: self.manifest.run_id.clone(),
            runpack_manifest_digest: self.manifest.manifest_digest.clone(),
            capture_mode: self.manifest.capture_mode.clone(),
            intent_count: self.intents.len(),
            result_count: self.results.len(),
            receipt_count: self.refs.receipts.len(),
            receipt_digest_vector,
        }
    }
}

#[cfg(test)]
mod tests;
