//! One artifact file's bytes in, a verified [`ArtifactRecord`] or the reason it is invalid out.
//!
//! The kind is detected from the content, never from the file name: a zip is a runpack, a JSON object is a
//! trace (`schema_id` `gait.gate.trace`) or a regress result (`gait.regress.result`), an XML document whose root
//! is `<testsuites` is a JUnit report. Each kind is then checked with the verifier `gait` itself runs
//! (`gait_artifact::runpack::verify_runpack`, the trace signature check, `parse_regress_result`), and its §7
//! projection comes from the same crate, so unknown additive fields (`enterprise_extension`) change nothing.
//!
//! Trace signatures are judged against the keys the agent knows ([`TraceKeys`]): a signature by a known key
//! must verify (`verified`), else the trace is invalid; a signature by a key the agent does not know cannot be
//! checked (`skipped`), but its `signed_digest` must still be the digest of the trace as written, so a trace
//! edited after signing is refused whoever signed it. A runpack's manifest signatures are judged the same way.

use std::collections::BTreeMap;

use gait_artifact::DecodeError;
use gait_artifact::evidence::{
    ARTIFACT_RECORD_SCHEMA, ArtifactKind, ArtifactRecord, ArtifactSource,
};
use gait_artifact::runpack::{
    self, HashMismatch, RunpackError, RunpackSource, SignatureStatus, VerifyOptions,
};
use gait_artifact::signed::{self, SignatureFailure};
use gait_artifact::trace::TraceRecord;
use gait_canon::sign::PublicKey;
use serde_json::Value;

/// Largest artifact file accepted, in bytes. Runpacks hold digests and small JSONL files; a larger file is
/// not a Gait artifact the agent can index.
pub const MAX_ARTIFACT_BYTES: u64 = 32 * 1024 * 1024;

/// Public keys a trace or runpack signature may be checked with, by Gait `key_id` (hex SHA-256 of the raw
/// key): the agent's own trace key and the keys listed in `capture.trace_public_keys`.
#[derive(Debug, Clone, Default)]
pub struct TraceKeys {
    by_id: BTreeMap<String, PublicKey>,
}

impl TraceKeys {
    /// Keys from a list.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        TraceKeys {
            by_id: keys.into_iter().map(|k| (k.key_id(), k)).collect(),
        }
    }

    /// The key with this Gait `key_id`, if known.
    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.by_id.get(&key_id.to_ascii_lowercase())
    }

    /// How many keys are known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No key is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Why a file is not a valid artifact. Every message says what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum InvalidArtifact {
    /// The file is larger than any artifact the agent indexes.
    #[error("{size} bytes, over the artifact limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// [`MAX_ARTIFACT_BYTES`].
        max: u64,
    },
    /// Not a runpack zip, a Gait JSON artifact or a JUnit report.
    #[error("unknown artifact kind: {0}")]
    UnknownKind(String),
    /// The file starts like JSON but is not valid JSON.
    #[error("bad json at line {line} column {column}: {message}")]
    BadJson {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The runpack could not be read (not a readable zip, no manifest, a hostile archive).
    #[error("runpack cannot be verified: {0}")]
    Runpack(#[from] RunpackError),
    /// Files of the runpack do not match its manifest.
    #[error("runpack tampered: {}", describe_runpack(.mismatches, .missing))]
    RunpackTampered {
        /// Entries (or `manifest.json` for the manifest digest) whose digest differs.
        mismatches: Vec<HashMismatch>,
        /// Entries the manifest lists that are absent, or required ones it does not list.
        missing: Vec<String>,
    },
    /// A runpack manifest signature by a known key does not verify.
    #[error("runpack manifest signature does not verify: {0}")]
    RunpackSignature(String),
    /// The trace does not decode or breaks the trace schema's rules.
    #[error("trace: {0}")]
    Trace(DecodeError),
    /// The trace's `signed_digest` is not the digest of its content: it was edited after signing.
    #[error(
        "trace signed digest does not match its content (signature.signed_digest {signed}, content digest \
         {computed}): the trace was changed after it was signed"
    )]
    TraceDigestMismatch {
        /// `signature.signed_digest`.
        signed: String,
        /// Digest of the trace as written.
        computed: String,
    },
    /// The trace is signed by a known key and the signature does not verify.
    #[error("trace signature by key {key_id} does not verify: {detail}")]
    TraceSignature {
        /// `signature.key_id`.
        key_id: String,
        /// The verifier's reason.
        detail: String,
    },
    /// The regress result does not decode or breaks its schema's rules.
    #[error("regress result: {0}")]
    Regress(DecodeError),
    /// The JUnit report is not a `<testsuites>` document.
    #[error("junit report: {0}")]
    Junit(String),
    /// The artifact verified, but its record (digests and projection) is over the wire's payload limit (e.g.
    /// a runpack with tens of thousands of receipts).
    #[error(
        "its evidence record would be {bytes} bytes, over the record payload limit of {max} bytes; it was not \
         sent"
    )]
    RecordTooLarge {
        /// Encoded payload size.
        bytes: usize,
        /// [`gait_wire::limits::MAX_PAYLOAD_BYTES`].
        max: usize,
    },
}

impl InvalidArtifact {
    /// The file is not a Gait artifact at all (as opposed to an artifact that fails verification): a directory
    /// scan skips such files instead of reporting them.
    pub fn is_unknown_kind(&self) -> bool {
        matches!(self, InvalidArtifact::UnknownKind(_))
    }
}

fn describe_runpack(mismatches: &[HashMismatch], missing: &[String]) -> String {
    let mut parts: Vec<String> = mismatches
        .iter()
        .map(|m| {
            format!(
                "{}: sha256 {} but the manifest says {}",
                m.path, m.actual, m.expected
            )
        })
        .collect();
    parts.extend(missing.iter().map(|m| format!("{m}: missing")));
    parts.join("; ")
}

/// Detects the kind of `bytes` from their content.
pub fn detect(bytes: &[u8]) -> Result<ArtifactKind, InvalidArtifact> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(ArtifactKind::Runpack);
    }
    let text = trim_start(bytes);
    if text.starts_with(b"{") {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| InvalidArtifact::BadJson {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        return match value.get("schema_id").and_then(Value::as_str) {
            Some(gait_artifact::trace::TRACE_SCHEMA_ID) => Ok(ArtifactKind::Trace),
            Some(gait_artifact::regress::REGRESS_RESULT_SCHEMA_ID) => {
                Ok(ArtifactKind::RegressResult)
            }
            Some(other) => Err(InvalidArtifact::UnknownKind(format!(
                "JSON with schema_id {other:?}; expected gait.gate.trace or gait.regress.result"
            ))),
            None => Err(InvalidArtifact::UnknownKind(
                "JSON without a schema_id; expected a Gait trace or regress result".to_owned(),
            )),
        };
    }
    if text.starts_with(b"<") {
        return if junit_root(text) {
            Ok(ArtifactKind::Junit)
        } else {
            Err(InvalidArtifact::UnknownKind(
                "XML whose root is not <testsuites>; expected a JUnit report".to_owned(),
            ))
        };
    }
    Err(InvalidArtifact::UnknownKind(
        "neither a zip (runpack), JSON (trace, regress result) nor XML (JUnit)".to_owned(),
    ))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The first element (after an XML declaration, comments and whitespace) is `<testsuites`.
fn junit_root(mut text: &[u8]) -> bool {
    loop {
        text = trim_start(text);
        let skip_to = |text: &[u8], end: &[u8]| {
            text.windows(end.len())
                .position(|w| w == end)
                .map(|i| i + end.len())
        };
        let next = if text.starts_with(b"<?") {
            skip_to(text, b"?>")
        } else if text.starts_with(b"<!--") {
            skip_to(text, b"-->")
        } else if text.starts_with(b"<!") {
            skip_to(text, b">")
        } else {
            return text.starts_with(b"<testsuites")
                && text
                    .get(b"<testsuites".len())
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/');
        };
        match next {
            Some(n) => text = &text[n..],
            None => return false,
        }
    }
}

/// Verifies `bytes` (the file `file_name`) and builds its artifact record.
pub fn verify(
    bytes: &[u8],
    file_name: &str,
    source: ArtifactSource,
    keys: &TraceKeys,
) -> Result<ArtifactRecord, InvalidArtifact> {
    let size = bytes.len() as u64;
    if size > MAX_ARTIFACT_BYTES {
        return Err(InvalidArtifact::TooLarge {
            size,
            max: MAX_ARTIFACT_BYTES,
        });
    }
    let kind = detect(bytes)?;
    let mut record = ArtifactRecord {
        schema: ARTIFACT_RECORD_SCHEMA.to_owned(),
        artifact_kind: kind,
        sha256: gait_canon::sha256_hex(bytes),
        size_bytes: size,
        file_name: file_name.to_owned(),
        source,
        signature_status: String::new(),
        run_ids: Vec::new(),
        producer_version: String::new(),
        runpack: None,
        trace: None,
        regress: None,
        regress_result_sha256: None,
        calls: Vec::new(),
        calls_omitted: 0,
        run_created_unix_ms: None,
    };
    match kind {
        ArtifactKind::Runpack => fill_runpack(&mut record, bytes, file_name, keys)?,
        ArtifactKind::Trace => fill_trace(&mut record, bytes, keys)?,
        ArtifactKind::RegressResult => {
            let result = gait_artifact::regress::parse_regress_result(bytes)
                .map_err(InvalidArtifact::Regress)?;
            let mut run_ids: Vec<String> = result
                .graders
                .iter()
                .filter_map(|g| g.details.get("run_id").and_then(Value::as_str))
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect();
            run_ids.sort();
            run_ids.dedup();
            record.run_ids = run_ids;
            record.producer_version = result.producer_version.clone();
            record.signature_status = "not_applicable".to_owned();
            record.regress = Some(result.projection());
        }
        ArtifactKind::Junit => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| InvalidArtifact::Junit(format!("not UTF-8: {e}")))?;
            if !text.contains("</testsuites>") && !text.trim_end().ends_with("/>") {
                return Err(InvalidArtifact::Junit(
                    "the <testsuites> element is not closed (truncated file?)".to_owned(),
                ));
            }
            record.signature_status = "not_applicable".to_owned();
        }
    }
    Ok(record)
}

fn fill_runpack(
    record: &mut ArtifactRecord,
    bytes: &[u8],
    file_name: &str,
    keys: &TraceKeys,
) -> Result<(), InvalidArtifact> {
    let content = runpack::read_runpack(bytes)?;
    // The key a manifest signature names, when the agent knows it; otherwise the signature cannot be checked.
    let key = content
        .manifest
        .signatures
        .iter()
        .find_map(|s| keys.get(&s.key_id));
    let report = runpack::verify_runpack(
        RunpackSource::Bytes {
            bytes,
            path: file_name,
        },
        VerifyOptions {
            require_signature: false,
            public_key: key,
            profile: runpack::Profile::Standard,
        },
    )?;
    if !report.hash_mismatches.is_empty() || !report.missing_files.is_empty() {
        return Err(InvalidArtifact::RunpackTampered {
            mismatches: report.hash_mismatches,
            missing: report.missing_files,
        });
    }
    if report.signature_status == SignatureStatus::Failed {
        return Err(InvalidArtifact::RunpackSignature(
            report.signature_errors.join("; "),
        ));
    }
    let projection = content.projection();
    record.signature_status = status_name(report.signature_status).to_owned();
    record.run_ids = vec![projection.run_id.clone()];
    record.producer_version = content.manifest.producer_version.clone();
    record.runpack = Some(projection);
    (record.calls, record.calls_omitted) = content.calls(
        gait_artifact::evidence::MAX_RUNPACK_CALLS,
        gait_artifact::evidence::MAX_RUNPACK_CALL_BYTES,
    );
    record.run_created_unix_ms = content.created_unix_ms();
    Ok(())
}

fn status_name(status: SignatureStatus) -> &'static str {
    match status {
        SignatureStatus::Missing => "missing",
        SignatureStatus::Skipped => "skipped",
        SignatureStatus::Verified => "verified",
        SignatureStatus::Failed => "failed",
    }
}

fn fill_trace(
    record: &mut ArtifactRecord,
    bytes: &[u8],
    keys: &TraceKeys,
) -> Result<(), InvalidArtifact> {
    let trace = gait_artifact::trace::parse_trace(bytes).map_err(InvalidArtifact::Trace)?;
    record.signature_status = trace_signature_status(&trace, bytes, keys)?.to_owned();
    record.producer_version = trace.producer_version.clone();
    record.trace = Some(trace.projection());
    Ok(())
}

/// `verified` (a known key verified it), `skipped` (an unknown key signed it and its digest matches the
/// content) or `missing` (unsigned); an error when the digest or a known key's signature fails.
fn trace_signature_status(
    trace: &TraceRecord,
    bytes: &[u8],
    keys: &TraceKeys,
) -> Result<&'static str, InvalidArtifact> {
    let Some(signature) = &trace.signature else {
        return Ok("missing");
    };
    if let Some(key) = keys.get(&signature.key_id) {
        let outcome =
            gait_artifact::trace::verify_trace(bytes, key).map_err(InvalidArtifact::Trace)?;
        return match outcome.failure {
            None => Ok("verified"),
            Some(failure) => Err(InvalidArtifact::TraceSignature {
                key_id: signature.key_id.clone(),
                detail: match failure {
                    SignatureFailure::Missing => "signature missing".to_owned(),
                    SignatureFailure::Invalid(e) => e.to_string(),
                },
            }),
        };
    }
    // Unknown key: the signature cannot be checked, but the digest it signs must be this content's, in
    // either form `gait trace verify` accepts (the typed projection, or the raw object minus `signature`).
    let projected = signed::projected_digest(trace);
    if signature.signed_digest.eq_ignore_ascii_case(&projected) {
        return Ok("skipped");
    }
    let raw = gait_canon::parse_json(bytes).map_err(|e| InvalidArtifact::Trace(e.into()))?;
    let raw_digest = match raw {
        Value::Object(mut map) => {
            map.remove("signature");
            gait_canon::digest_jcs(&Value::Object(map))
        }
        _ => String::new(),
    };
    if signature.signed_digest.eq_ignore_ascii_case(&raw_digest) {
        return Ok("skipped");
    }
    Err(InvalidArtifact::TraceDigestMismatch {
        signed: signature.signed_digest.clone(),
        computed: projected,
    })
}
