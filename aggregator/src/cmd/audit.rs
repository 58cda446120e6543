//! `gait-aggregator audit`: export the tamper-evident audit log, verify an export offline, check that one
//! checkpoint extends another. `export` reads the data directory and the database; `verify` and `prove` read
//! only the files they are given, so an auditor runs them anywhere.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::audit::AuditLog;
use gait_aggregator::audit::export::{CHECKPOINT_FILE, ENTRIES_FILE, consistency_file};
use gait_aggregator::config::Config;
use gait_audit::merkle::MemoryTree;
use gait_audit::{Checkpoint, ConsistencyProof, NoteVerifier, VerifyError};
use gait_runtime::exit;
use serde_json::json;

use super::DataArgs;

/// `gait-aggregator audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Write the log for offline verification: DIR/checkpoint (a checkpoint signed now), DIR/entries.jsonl (one
    /// entry per line; a line without its newline is its RFC 6962 leaf data) and, with --since, the
    /// consistency proof DIR/consistency-from-<old size>.
    ///
    /// Example: gait-aggregator --config /etc/gait/aggregator.yaml audit export --out ./audit-2026-12 --since
    /// ./audit-2026-11/checkpoint
    Export(ExportArgs),
    /// Check an export offline with the log's verifier key (<data-dir>/keys/audit.vkey): the checkpoint's
    /// signature, every entry, the hash chain and the root. Names the first bad entry (line and seq) and exits
    /// 65 when the log was tampered with; with --since, also checks that the export extends an older
    /// checkpoint the auditor kept.
    ///
    /// Example: gait-aggregator audit verify ./audit-2026-12 --public-key audit.vkey --since
    /// ./audit-2026-11/checkpoint
    Verify(VerifyArgs),
    /// Check a consistency proof between two checkpoints of the log (without the entries): the newer checkpoint
    /// extends the older one, so no entry the older one covers was changed, removed or reordered since.
    ///
    /// Example: gait-aggregator audit prove --public-key audit.vkey --from-checkpoint old/checkpoint
    /// --to-checkpoint new/checkpoint --proof new/consistency-from-120
    Prove(ProveArgs),
}

/// Flags of `audit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Directory to write (created if missing; its export files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// An older checkpoint of this log (e.g. the previous export's DIR/checkpoint): adds the proof that the new
    /// checkpoint extends it.
    #[arg(long)]
    pub since: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Flags of `audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The export directory (holding checkpoint and entries.jsonl).
    pub dir: PathBuf,
    /// The log's verifier key file (`<origin>+<key id>+<base64 key>`, as in <data-dir>/keys/audit.vkey).
    #[arg(long)]
    pub public_key: PathBuf,
    /// An older checkpoint the auditor kept: the export must extend it (checked against the export's
    /// consistency-from-<size> proof when present, and against its entries).
    #[arg(long)]
    pub since: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `audit prove`.
#[derive(Args, Debug)]
pub struct ProveArgs {
    /// The log's verifier key file.
    #[arg(long)]
    pub public_key: PathBuf,
    /// The older checkpoint.
    #[arg(long)]
    pub from_checkpoint: PathBuf,
    /// The newer checkpoint.
    #[arg(long)]
    pub to_checkpoint: PathBuf,
    /// The consistency proof file (default: consistency-from-<old size> beside the newer checkpoint).
    #[arg(long)]
    pub proof: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs one `audit` subcommand.
pub async fn run(command: AuditCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export(args) => export(args, config).await,
        AuditCommand::Verify(args) => Ok(verify(&args)),
        AuditCommand::Prove(args) => Ok(prove(&args)),
    }
}

async fn export(args: ExportArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    if config.database.url.is_none() && !config.sqlite_path().exists() {
        anyhow::bail!(
            "no aggregator database at {}: give the server's configuration (--config or GAIT_CONFIG), or its \
             --data-dir / --database-url",
            config.sqlite_path().display()
        );
    }
    let store = gait_store::Store::connect(&config.effective_database_url()).await?;
    let log = AuditLog::open(
        store.clone(),
        &config.data_dir.join("keys"),
        &config.audit_origin(),
    )?;
    let result = log.export(&args.out, args.since.as_deref()).await;
    store.close().await;
    let summary = result.with_context(|| format!("exporting to {}", args.out.display()))?;
    if args.json {
        gait_runtime::outln!("{}", serde_json::to_string(&summary)?);
    } else {
        gait_runtime::outln!(
            "exported {} entries of log {} to {}",
            summary.entries,
            summary.origin,
            args.out.display()
        );
        gait_runtime::outln!("  checkpoint  size {}  root {}", summary.size, summary.root);
        if let Some(proof) = &summary.consistency {
            gait_runtime::outln!("  consistency proof {}", proof.display());
        }
        gait_runtime::outln!(
            "verify offline with: gait-aggregator audit verify {} --public-key {}",
            args.out.display(),
            config.data_dir.join("keys/audit.vkey").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a verification could not be completed or failed, with its exit code.
enum Failure {
    /// A file could not be read (exit 66).
    Input(String),
    /// The log or a proof did not verify (exit 65).
    Tampered(VerifyError),
    /// The key file is unusable (exit 65).
    Key(String),
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))
}

fn read_verifier(path: &Path) -> Result<NoteVerifier, Failure> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| Failure::Key(format!("{}: not UTF-8 text", path.display())))?;
    NoteVerifier::parse(&text).map_err(|e| Failure::Key(format!("{}: {e}", path.display())))
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let outcome = (|| {
        let verifier = read_verifier(&args.public_key)?;
        let checkpoint = read(&args.dir.join(CHECKPOINT_FILE))?;
        let entries = read(&args.dir.join(ENTRIES_FILE))?;
        let verified = gait_audit::verify_export(&verifier, &checkpoint, &entries)
            .map_err(Failure::Tampered)?;
        let since = match &args.since {
            Some(path) => Some(check_since(
                &verifier,
                path,
                &args.dir,
                &checkpoint,
                &entries,
            )?),
            None => None,
        };
        Ok((verified, since))
    })();
    match outcome {
        Ok((v, since)) => {
            if args.json {
                gait_runtime::outln!(
                    "{}",
                    json!({"ok": true, "origin": v.origin, "size": v.size, "root": hex::encode(v.root),
                        "extends": since.as_ref().map(|(old, proof)| json!({"size": old.size, "proof_checked": proof}))})
                );
            } else {
                gait_runtime::outln!(
                    "ok: {} entries of log {} verify; root {}",
                    v.size,
                    v.origin,
                    hex::encode(v.root)
                );
                if let Some((old, proof)) = since {
                    gait_runtime::outln!(
                        "ok: it extends the older checkpoint of size {} ({})",
                        old.size,
                        if proof {
                            "consistency proof and entries checked"
                        } else {
                            "entries checked; no consistency proof in the export"
                        }
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(failure) => report_failure(failure, args.json),
    }
}

/// Checks that the export extends the older checkpoint at `path`: by the export's consistency proof when it
/// has one, and by recomputing the root of the export's first `old size` entries. Returns the older checkpoint
/// and whether a proof was checked.
fn check_since(
    verifier: &NoteVerifier,
    path: &Path,
    dir: &Path,
    checkpoint: &[u8],
    entries: &[u8],
) -> Result<(Checkpoint, bool), Failure> {
    let old_note = read(path)?;
    let old =
        gait_audit::verify::open_checkpoint(verifier, &old_note).map_err(Failure::Tampered)?;
    let new =
        gait_audit::verify::open_checkpoint(verifier, checkpoint).map_err(Failure::Tampered)?;
    let not_extension = || {
        Failure::Tampered(VerifyError::NotAnExtension {
            old: old.size,
            new: new.size,
        })
    };
    if old.size > new.size {
        return Err(not_extension());
    }
    let proof_file = dir.join(consistency_file(old.size));
    let proof_checked = proof_file.exists();
    if proof_checked {
        let text = String::from_utf8(read(&proof_file)?).map_err(|_| {
            Failure::Tampered(VerifyError::ProofFormat(format!(
                "{} is not UTF-8",
                proof_file.display()
            )))
        })?;
        let proof = ConsistencyProof::parse(&text).map_err(Failure::Tampered)?;
        gait_audit::verify_extension(verifier, &old_note, checkpoint, &proof)
            .map_err(Failure::Tampered)?;
    }
    let mut prefix = MemoryTree::new();
    for line in entries.split(|&b| b == b'\n').take(old.size as usize) {
        prefix.push(gait_audit::leaf_hash(line));
    }
    if prefix.size() != old.size || prefix.root() != old.root {
        return Err(not_extension());
    }
    Ok((old, proof_checked))
}

fn prove(args: &ProveArgs) -> ExitCode {
    let outcome = (|| {
        let verifier = read_verifier(&args.public_key)?;
        let old = read(&args.from_checkpoint)?;
        let new = read(&args.to_checkpoint)?;
        let new_cp =
            gait_audit::verify::open_checkpoint(&verifier, &new).map_err(Failure::Tampered)?;
        let old_cp =
            gait_audit::verify::open_checkpoint(&verifier, &old).map_err(Failure::Tampered)?;
        let proof_path = args.proof.clone().unwrap_or_else(|| {
            args.to_checkpoint
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(consistency_file(old_cp.size))
        });
        let text = String::from_utf8(read(&proof_path)?).map_err(|_| {
            Failure::Tampered(VerifyError::ProofFormat(format!(
                "{} is not UTF-8",
                proof_path.display()
            )))
        })?;
        let proof = ConsistencyProof::parse(&text).map_err(Failure::Tampered)?;
        gait_audit::verify_extension(&verifier, &old, &new, &proof).map_err(Failure::Tampered)?;
        Ok((old_cp, new_cp))
    })();
    match outcome {
        Ok((old, new)) => {
            if args.json {
                gait_runtime::outln!(
                    "{}",
                    json!({"ok": true, "origin": new.origin, "old_size": old.size, "new_size": new.size,
                        "old_root": hex::encode(old.root), "new_root": hex::encode(new.root)})
                );
            } else {
                gait_runtime::outln!(
                    "ok: the checkpoint of size {} extends the one of size {} (log {})",
                    new.size,
                    old.size,
                    new.origin
                );
            }
            ExitCode::SUCCESS
        }
        Err(failure) => report_failure(failure, args.json),
    }
}

fn report_failure(failure: Failure, json: bool) -> ExitCode {
    let (code, message, first_bad) = match &failure {
        Failure::Input(m) => (exit::NOINPUT, m.clone(), None),
        Failure::Key(m) => (exit::DATAERR, m.clone(), None),
        Failure::Tampered(e) => (exit::DATAERR, e.to_string(), e.first_bad_entry()),
    };
    if json {
        gait_runtime::outln!(
            "{}",
            json!({"ok": false, "error": message,
                "first_bad_entry": first_bad.map(|(line, seq)| json!({"line": line, "seq": seq}))})
        );
    } else {
        gait_runtime::errln!("FAILED: {message}");
    }
    ExitCode::from(code)
}
