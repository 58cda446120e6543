//! `gait-aggregator bundle export`: the signed bundle in force for one environment, written to a file an operator
//! carries to a site with no network path (`gait-agent bundle import FILE` verifies and activates it there).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use sha2::{Digest as _, Sha256};

use super::{ApiArgs, call_raw, refused};

/// Signed policy bundles as files.
#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write the newest bundle published for one environment to a file, byte for byte as agents receive it
    /// (signed; agents verify it themselves). Needs `bundle.read` on that environment.
    ///
    /// Example: gait-aggregator bundle export --org acme --project payments --env prod --out bundle.json
    /// then at the site: gait-agent bundle import --config agent.yaml bundle.json
    Export(ExportArgs),
}

/// Flags of `bundle export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation of the environment.
    #[arg(long)]
    pub org: Org,
    /// Project of the environment.
    #[arg(long)]
    pub project: Project,
    /// The environment whose bundle agents enforce.
    #[arg(long)]
    pub env: Env,
    /// File to write (replaced atomically: a reader never sees half a bundle).
    #[arg(long)]
    pub out: PathBuf,
    /// Print what was written as JSON (file, epoch, sha256, bytes).
    #[arg(long)]
    pub json: bool,
}

/// Runs a `bundle` subcommand.
pub async fn run(command: BundleCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        BundleCommand::Export(args) => export(args, config).await,
    }
}

async fn export(args: ExportArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}/bundles/latest/raw",
        api.server, args.org, args.project, args.env
    );
    let (status, bytes) = call_raw(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        let answer = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": { "message": String::from_utf8_lossy(&bytes) } }),
        );
        return Ok(refused(status, &answer));
    }
    // The epoch is read for the report only; the agent verifies the whole document at import.
    let epoch = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|doc| doc["manifest"]["epoch"].as_u64())
        .context("the server's answer is not a bundle document (no manifest.epoch)")?;
    write_atomically(&args.out, &bytes)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "file": args.out.display().to_string(),
                "epoch": epoch,
                "sha256": sha256,
                "bytes": bytes.len(),
            })
        );
    } else {
        gait_runtime::outln!(
            "wrote bundle epoch {epoch} of {}/{}/{} to {} ({} bytes, sha256 {sha256})",
            args.org,
            args.project,
            args.env,
            args.out.display(),
            bytes.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
pub(super) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--out {} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
