//! `gait-agent trace verify <trace.json> --public-key F [--json]`: Gait's `gait trace verify` (contract §2.3).
//! The record is decoded as Gait's Go struct (unknown fields dropped), its signature checked with Ed25519 over
//! DigestJCS of the record without `signature`. Exit 0 verified, 2 failed, 6 no key or unreadable input.

use std::path::PathBuf;

use clap::Args;
use gait_artifact::signed::SignatureFailure;
use gait_artifact::trace::verify_trace;
use gait_canon::sign::VerifyError;
use serde_json::{Map, Value};

use super::envelope::{CliError, EXIT_INVALID_INPUT, EXIT_OK, EXIT_VERIFY_FAILED};
use super::keys::{KeySources, load_verify_key};
use super::{CommandOutput, Invocation, files};

/// Largest trace file read.
const MAX_TRACE_BYTES: usize = 16 * 1024 * 1024;

const LONG_ABOUT: &str = "\
Verify the Ed25519 signature of a signed gate trace record (gait.gate.trace) offline, as
`gait trace verify` does. The verify key comes from --public-key/--public-key-env or is derived from
--private-key/--private-key-env.

Exit codes: 0 signature verified, 2 signature failed (tampered record, wrong key), 6 no key configured or
unreadable record.

Examples:
  gait-agent trace verify trace_1ebcafc90e5778ca4e9d442e.json --public-key gait_public.key
  gait-agent trace verify --path trace.json --public-key-env GAIT_PUBLIC_KEY --json";

/// Arguments of `trace verify`.
#[derive(Debug, Args)]
#[command(about = "Verify the Ed25519 signature of a signed gate trace record", long_about = LONG_ABOUT)]
pub struct TraceVerifyArgs {
    /// Trace record JSON.
    #[arg(value_name = "TRACE_JSON")]
    pub trace: Option<PathBuf>,
    /// Trace record JSON (alternative to the positional argument).
    #[arg(long, value_name = "TRACE_JSON")]
    pub path: Option<PathBuf>,
    /// Unexpected extra arguments (rejected like Gait: exactly one trace).
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<PathBuf>,
    /// Base64 Ed25519 public key file (`gait keys init` format).
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// Env var holding a base64 public key.
    #[arg(long, value_name = "VAR")]
    pub public_key_env: Option<String>,
    /// Base64 private key file; its public half verifies.
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Env var holding a base64 private key; its public half verifies.
    #[arg(long, value_name = "VAR")]
    pub private_key_env: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Gait's wording for a signature that does not hold; `None` when Gait reports a plain failure without an
/// error (the Ed25519 equation itself failed).
fn failure_message(failure: &SignatureFailure) -> Option<String> {
    match failure {
        SignatureFailure::Missing => Some("trace signature missing".into()),
        SignatureFailure::Invalid(err) => match err {
            VerifyError::BadSignature => None,
            VerifyError::SignedDigestMismatch { .. } => Some("signed_digest mismatch".into()),
            VerifyError::SignedDigestMissing => Some("missing signed_digest".into()),
            VerifyError::UnsupportedAlg(alg) => Some(format!("unsupported alg: {alg}")),
            VerifyError::KeyIdMismatch { .. } => Some("key id mismatch".into()),
            VerifyError::BadEncoding(detail) => Some(detail.clone()),
        },
    }
}

fn string(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Run `trace verify`.
pub fn run(args: &TraceVerifyArgs, _invocation: &Invocation) -> CommandOutput {
    match verify(args) {
        Ok(output) => output,
        Err(err) => CommandOutput::error("trace verify", &err),
    }
}

fn verify(args: &TraceVerifyArgs) -> Result<CommandOutput, CliError> {
    let path = match (&args.path, &args.trace, args.extra.is_empty()) {
        (Some(p), None, true) | (None, Some(p), true) => p,
        _ => return Err(CliError::invalid("expected trace path")),
    };
    let bytes = files::read_bounded(path, MAX_TRACE_BYTES)
        .map_err(|e| CliError::classified(format!("read trace record: {e}"), EXIT_INVALID_INPUT))?;
    if bytes.len() > MAX_TRACE_BYTES {
        return Err(CliError::invalid(format!(
            "parse trace record: file exceeds {MAX_TRACE_BYTES} bytes"
        )));
    }
    let parse_error =
        |e: &dyn std::fmt::Display| CliError::classified(format!("parse trace record: {e}"), 6);
    // Go's decoder accepts repeated keys (later wins), so only the syntax and the object shape are checked here.
    match gait_canon::gojson::parse_node(&bytes) {
        Ok(gait_canon::gojson::Node::Object(_)) => {}
        Ok(_) => return Err(parse_error(&"trace record must be a JSON object")),
        Err(e) => return Err(parse_error(&e)),
    }
    let key = load_verify_key(&KeySources {
        public_path: args.public_key.clone(),
        public_env: args.public_key_env.clone(),
        private_path: args.private_key.clone(),
        private_env: args.private_key_env.clone(),
    })?;
    let outcome = verify_trace(&bytes, &key).map_err(|e| parse_error(&e))?;
    let record = &outcome.record;
    let path_text = path.display().to_string();
    let mut json = Map::new();
    json.insert("path".into(), string(&path_text));
    if !record.trace_id.is_empty() {
        json.insert("trace_id".into(), string(&record.trace_id));
    }
    if !record.verdict.is_empty() {
        json.insert("verdict".into(), string(&record.verdict));
    }
    json.insert(
        "signature_status".into(),
        string(outcome.signature_status()),
    );
    let error = outcome.failure.as_ref().and_then(failure_message);
    match &error {
        Some(message) => {
            json.insert("error".into(), string(message));
        }
        None => {
            let key_id = record
                .signature
                .as_ref()
                .map(|s| s.key_id.as_str())
                .unwrap_or_default();
            if !key_id.is_empty() {
                json.insert("key_id".into(), string(key_id));
            }
        }
    }
    let ok = outcome.ok();
    json.insert("ok".into(), Value::Bool(ok));
    let (exit, text) = if ok {
        (EXIT_OK, vec![format!("trace verify ok: {path_text}")])
    } else if let Some(message) = &error {
        (
            EXIT_VERIFY_FAILED,
            vec![format!("trace verify error: {message}")],
        )
    } else {
        (
            EXIT_VERIFY_FAILED,
            vec![
                format!("trace verify failed: {path_text}"),
                format!("signature status: {}", outcome.signature_status()),
            ],
        )
    };
    Ok(CommandOutput { json, text, exit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_mismatch_uses_gaits_message_and_bad_equation_has_none() {
        let mismatch = SignatureFailure::Invalid(VerifyError::SignedDigestMismatch {
            signed: "a".into(),
            computed: "b".into(),
        });
        assert_eq!(
            failure_message(&mismatch).as_deref(),
            Some("signed_digest mismatch")
        );
        assert_eq!(
            failure_message(&SignatureFailure::Invalid(VerifyError::BadSignature)),
            None
        );
        assert_eq!(
            failure_message(&SignatureFailure::Missing).as_deref(),
            Some("trace signature missing")
        );
    }
}
