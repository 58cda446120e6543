//! `gait-aggregator ingest-file FILE`: commit an agent's outbox export (`gait-agent outbox export`) carried
//! out of a site with no network path, exactly once, as if its records had arrived over QUIC.
//!
//! It runs against the store and the PKI directory directly, like `pki revoke`, not through the HTTP API: the
//! CA certificates it verifies against and the revocation list are the server's own files and tables, a file
//! may be far larger than any API body limit, and an operator who holds the data directory needs no new API
//! permission to do what the agent could have done over the wire. The operator is named in the audit entry
//! (`local:<user>`). The rules are in `gait_aggregator::fleet::offline`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gait_aggregator::clock::unix_ms;
use gait_aggregator::config::Config;
use gait_aggregator::fleet::offline::{self, IngestFileError, IngestReport};
use gait_aggregator::pki;

use super::DataArgs;

/// Flags of `ingest-file`.
#[derive(Args, Debug)]
pub struct IngestFileArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The outbox export file (`gait-agent outbox export --out FILE`).
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Verifies and commits the file; exit code 0 when committed (also when nothing was new), else the
/// [`IngestFileError::exit_code`].
pub async fn ingest_file(args: IngestFileArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let actor = format!("local:{}", super::pki::operator()?);
    match run(&args, &config, &actor).await {
        Ok(report) => {
            print_report(&args, &report);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                gait_runtime::outln!(
                    "{}",
                    serde_json::json!({
                        "file": args.file, "refused": e.what(), "error": e.to_string(),
                        "exit_code": e.exit_code(),
                    })
                );
            }
            gait_runtime::errln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

async fn run(
    args: &IngestFileArgs,
    config: &Config,
    actor: &str,
) -> Result<IngestReport, IngestFileError> {
    let trust_path = pki::rotation::trust_bundle_path(&config.pki_dir());
    let anchors: Vec<Vec<u8>> = pki::pem::load_certs(&trust_path)
        .map_err(|e| IngestFileError::Trust(e.to_string()))?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let store = super::pki::open_existing_store(config)
        .await
        .map_err(|e| IngestFileError::Database(format!("{e:#}")))?;
    let path = args.file.clone();
    let max_payload = config.ingest.max_record_payload_bytes;
    let now = unix_ms();
    let verified = tokio::task::spawn_blocking(move || {
        let bytes = offline::read_file(&path)?;
        offline::verify(&path, &bytes, &anchors, max_payload, now)
    })
    .await
    .map_err(|e| IngestFileError::Database(format!("the verification task failed: {e}")))?;
    let result = match verified {
        Ok(file) => match offline::check_not_revoked(&store, &args.file, &file).await {
            Ok(()) => offline::commit(&store, &file, actor, unix_ms()).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    store.close().await;
    result
}

fn print_report(args: &IngestFileArgs, r: &IngestReport) {
    if args.json {
        let mut value = serde_json::to_value(r).unwrap_or_default();
        value["file"] = serde_json::json!(args.file);
        gait_runtime::outln!("{value}");
        return;
    }
    gait_runtime::outln!(
        "{}: agent {}/{}/{}/{} records {}..={}: {} committed, {} already held; committed head now {}",
        args.file.display(),
        r.org,
        r.project,
        r.env,
        r.agent_id,
        r.first_seq,
        r.last_seq,
        r.committed,
        r.duplicates,
        r.committed_seq
    );
    if !r.gaps.is_empty() {
        gait_runtime::errln!(
            "warning: seqs missing before the file's records (recorded as gaps): {:?}",
            r.gaps
        );
    }
    if !r.conflicts.is_empty() || !r.chain_breaks.is_empty() {
        gait_runtime::errln!(
            "warning: records at seqs already held with other content were NOT stored (conflicts {:?}); chain \
             breaks at {:?}: another instance of this identity wrote them; the agent quarantines its own at its \
             next connection",
            r.conflicts,
            r.chain_breaks
        );
    }
}
