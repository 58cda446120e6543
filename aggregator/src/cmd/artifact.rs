//! `gait-aggregator artifact get`: the bytes of an artifact an agent uploaded, through the HTTP API
//! (`GET …/artifacts/{sha256}/content`), checked against the digest again on this side and written to a file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use sha2::{Digest as _, Sha256};

use super::bundle::write_atomically;
use super::{ApiArgs, call_raw, refused};

/// Artifact bytes agents uploaded (environments published with `--upload-artifacts`).
#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Write the bytes of one artifact to a file, checked against its SHA-256. Needs `evidence.read` on the
    /// environment; an artifact no agent of that environment uploaded is not found.
    ///
    /// Example: gait-aggregator artifact get --org acme --project web --env prod --digest <sha256> --out runpack.zip
    Get(GetArgs),
}

/// Flags of `artifact get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation of the environment.
    #[arg(long)]
    pub org: Org,
    /// Project of the environment.
    #[arg(long)]
    pub project: Project,
    /// The environment whose agent uploaded it.
    #[arg(long)]
    pub env: Env,
    /// SHA-256 of the artifact: 64 lowercase hex characters (optionally `sha256:`-prefixed).
    #[arg(long)]
    pub digest: String,
    /// File to write (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs an `artifact` subcommand.
pub async fn run(command: ArtifactCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        ArtifactCommand::Get(args) => get(args, config).await,
    }
}

async fn get(args: GetArgs, config: Config) -> anyhow::Result<ExitCode> {
    let digest = args
        .digest
        .strip_prefix("sha256:")
        .unwrap_or(&args.digest)
        .to_owned();
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        bail!(
            "--digest `{}` is not a SHA-256: expected 64 lowercase hex characters",
            args.digest
        );
    }
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}/artifacts/{digest}/content",
        api.server, args.org, args.project, args.env
    );
    let (status, bytes) = call_raw(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        let answer = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": { "message": String::from_utf8_lossy(&bytes) } }),
        );
        return Ok(refused(status, &answer));
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != digest {
        bail!(
            "the server's answer hashes to {actual}, not {digest}: nothing written (a proxy altered it, or the \
             server is not the aggregator)"
        );
    }
    write_atomically(&args.out, &bytes)?;
    gait_runtime::outln!(
        "wrote artifact sha256:{digest} of {}/{}/{} to {} ({} bytes, digest checked)",
        args.org,
        args.project,
        args.env,
        args.out.display(),
        bytes.len()
    );
    Ok(ExitCode::SUCCESS)
}
