//! `gait-agent verify <run_id|path> [--json] [--require-signature] [--profile standard|strict] [--public-key F]`:
//! Gait's `gait verify` for runpacks (contract §4.5). A run id is looked up as `runpack_<run_id>.zip` in
//! `./gait-out/`, then `~/.gait/runpacks/`; an argument containing a path separator or ending in `.zip` is a
//! path. Exit 0 verified, 2 integrity or signature failure, 6 bad input (e.g. runpack not found).

use std::path::{MAIN_SEPARATOR, Path, PathBuf};

use clap::Args;
use gait_artifact::runpack::{Profile, RunpackSource, VerifyOptions, verify_runpack};
use serde_json::{Map, Value};

use super::envelope::{CliError, EXIT_INVALID_INPUT, EXIT_OK, EXIT_VERIFY_FAILED};
use super::keys::{KeySources, load_optional_verify_key};
use super::{CommandOutput, Invocation, files};

const LONG_ABOUT: &str = "\
Verify a runpack offline, as `gait verify` does: every file listed in manifest.json is hashed and compared,
the manifest digest is recomputed, and manifest signatures are checked when a key is given.

A bare run id is looked up as runpack_<run_id>.zip in ./gait-out/ and then ~/.gait/runpacks/; an argument
containing a path separator or ending in .zip is used as a path.

Signature status: missing (unsigned), skipped (signed, no key), verified, failed. Unsigned runpacks pass by
default; --require-signature (or --profile strict, which also demands a key) requires a verified signature.

Exit codes: 0 verified, 2 missing files, hash mismatch or failed signature, 6 bad input (runpack not found,
unreadable zip, bad key).

Examples:
  gait-agent verify run_demo
  gait-agent verify ./gait-out/runpack_run_demo.zip --json
  gait-agent verify run_demo --profile strict --public-key gait_public.key";

/// Arguments of `verify`.
#[derive(Debug, Args)]
#[command(about = "Verify a Gait runpack offline: file hashes, manifest digest, signatures", long_about = LONG_ABOUT)]
pub struct VerifyArgs {
    /// Run id (looked up in ./gait-out and ~/.gait/runpacks) or path to a runpack zip.
    #[arg(value_name = "RUN_ID_OR_PATH")]
    pub target: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Verify profile: standard, or strict (requires a signature and a verify key).
    #[arg(long, default_value = "standard", value_name = "PROFILE")]
    pub profile: String,
    /// Require at least one valid manifest signature.
    #[arg(long)]
    pub require_signature: bool,
    /// Base64 Ed25519 public key file.
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
}

/// Gait's `looksLikePath`: contains a path separator or ends in `.zip`.
fn looks_like_path(input: &str) -> bool {
    input.contains(MAIN_SEPARATOR) || input.to_lowercase().ends_with(".zip")
}

/// Gait's `resolveRunpackPath`.
pub fn resolve_runpack_path(input: &str, home: Option<&Path>) -> Result<PathBuf, CliError> {
    if input.is_empty() {
        return Err(CliError::invalid("missing run_id or path"));
    }
    if looks_like_path(input) {
        let path = PathBuf::from(input);
        return if files::is_file(&path) {
            Ok(path)
        } else {
            Err(CliError::classified(
                format!("runpack not found: {input}"),
                EXIT_INVALID_INPUT,
            ))
        };
    }
    let name = format!("runpack_{input}.zip");
    let mut candidates = vec![Path::new("gait-out").join(&name)];
    if let Some(home) = home {
        candidates.push(home.join(".gait").join("runpacks").join(&name));
    }
    candidates
        .into_iter()
        .find(|c| files::is_file(c))
        .ok_or_else(|| {
            CliError::classified(
                format!("runpack not found for run_id: {input}"),
                EXIT_INVALID_INPUT,
            )
        })
}

/// Run `verify`.
pub fn run(args: &VerifyArgs, _invocation: &Invocation) -> CommandOutput {
    match verify(args) {
        Ok(output) => output,
        Err(err) => CommandOutput::error("verify", &err),
    }
}

fn verify(args: &VerifyArgs) -> Result<CommandOutput, CliError> {
    let [target] = args.target.as_slice() else {
        return Err(CliError::invalid("expected run_id or path"));
    };
    let profile = match args.profile.trim().to_lowercase().as_str() {
        "" | "standard" => Profile::Standard,
        "strict" => Profile::Strict,
        _ => {
            return Err(CliError::invalid(format!(
                "unsupported --profile value {:?} (expected standard or strict)",
                args.profile
            )));
        }
    };
    let sources = KeySources {
        public_path: args.public_key.clone(),
        public_env: args.public_key_env.clone(),
        private_path: args.private_key.clone(),
        private_env: args.private_key_env.clone(),
    };
    if profile == Profile::Strict && !sources.has_any() {
        return Err(CliError::invalid(
            "strict verify profile requires --public-key/--public-key-env or private key source",
        ));
    }
    let key = load_optional_verify_key(&sources)?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = resolve_runpack_path(target, home.as_deref())?;
    let report = verify_runpack(
        RunpackSource::Path(&path),
        VerifyOptions {
            require_signature: args.require_signature,
            public_key: key.as_ref(),
            profile,
        },
    )
    .map_err(|e| CliError::classified(e.to_string(), EXIT_INVALID_INPUT))?;
    let json = match serde_json::to_value(&report) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut text = Vec::new();
    let exit = if report.ok {
        text.push(format!("verify ok: {}", report.path));
        EXIT_OK
    } else {
        text.push(format!("verify failed: {}", report.path));
        if !report.missing_files.is_empty() {
            text.push(format!(
                "missing files: {}",
                report.missing_files.join(", ")
            ));
        }
        if !report.hash_mismatches.is_empty() {
            text.push(format!("hash mismatches: {}", report.hash_mismatches.len()));
        }
        EXIT_VERIFY_FAILED
    };
    let status = serde_json::to_value(report.signature_status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    text.push(format!("signature status: {status}"));
    if !report.signature_note.is_empty() {
        text.push(format!("signature note: {}", report.signature_note));
    }
    if !report.ok && !report.signature_errors.is_empty() {
        text.push(format!(
            "signature errors: {}",
            report.signature_errors.join("; ")
        ));
    }
    if !report.next_commands.is_empty() {
        text.push(format!("next: {}", report.next_commands.join(" | ")));
    }
    Ok(CommandOutput { json, text, exit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_and_paths_are_told_apart_like_gait() {
        assert!(looks_like_path("gait-out/runpack_x.zip"));
        assert!(looks_like_path("RUNPACK.ZIP"));
        assert!(!looks_like_path("run_demo"));
        let err = resolve_runpack_path("nope/none.zip", None).expect_err("missing path");
        assert_eq!(err.message, "runpack not found: nope/none.zip");
        let err = resolve_runpack_path("no_such_run_id_x", None).expect_err("missing id");
        assert_eq!(
            err.message,
            "runpack not found for run_id: no_such_run_id_x"
        );
        assert_eq!(err.exit, 6);
    }

    #[test]
    fn run_id_falls_back_to_the_home_runpack_directory() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".gait").join("runpacks");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("runpack_home_only_run.zip"), b"zip").unwrap();
        let found = resolve_runpack_path("home_only_run", Some(home.path())).unwrap();
        assert_eq!(found, dir.join("runpack_home_only_run.zip"));
    }
}
