//! `gait-aggregator trace-keys`: the trace keys an environment's agents announced, through the API, as a
//! table, JSON, or (`--out DIR`) one Gait public key file per key (`DIR/<key_id>.key`, base64 of the raw
//! Ed25519 key and a newline), so that `gait trace verify --public-key DIR/<key_id>.key` verifies any trace the
//! fleet signed (a trace names its key in `signature.key_id`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gait_aggregator::config::Config;
use gait_identity::{AgentId, Env, Org, Project};

use super::table::{Align, Table};
use super::{ApiArgs, call};

#[derive(Args, Debug)]
pub struct TraceKeysArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation of the environment.
    #[arg(long)]
    pub org: Org,
    /// Project of the environment.
    #[arg(long)]
    pub project: Project,
    /// Environment whose agents' trace keys to list.
    #[arg(long)]
    pub env: Env,
    /// Only this agent's keys.
    #[arg(long)]
    pub agent: Option<AgentId>,
    /// Write each key as a Gait public key file `DIR/<key_id>.key` (the directory is created; existing files
    /// of the same key are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn trace_keys(args: TraceKeysArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let env = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}",
        api.server, args.org, args.project, args.env
    );
    let url = match &args.agent {
        Some(agent) => format!("{env}/agents/{agent}/trace-keys"),
        None => format!("{env}/trace-keys"),
    };
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused(status, &answer));
    }
    let keys = answer["trace_keys"].as_array().cloned().unwrap_or_default();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out {}: cannot create the directory", dir.display()))?;
        for key in &keys {
            write_key_file(dir, key)?;
        }
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("AGENT", Align::Left),
        ("KEY ID", Align::Left),
        ("REPLACES", Align::Left),
        ("CERT SERIAL", Align::Left),
        ("SEQ", Align::Right),
    ]);
    for k in &keys {
        let text = |v: &serde_json::Value| {
            v.as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("-")
                .to_owned()
        };
        table.row([
            text(&k["agent"]["agent_id"]),
            text(&k["key_id"]),
            text(&k["replaces"]),
            text(&k["cert_serial"]),
            k["record_seq"].to_string(),
        ]);
    }
    gait_runtime::outln!("{}", table.render().trim_end());
    if let Some(dir) = &args.out {
        gait_runtime::outln!("wrote {} key file(s) to {}", keys.len(), dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes one listed key as `dir/<key_id>.key`, after checking that the key id is the key's (the file name
/// comes from the server's answer, so it must be a key id and nothing else).
fn write_key_file(dir: &std::path::Path, key: &serde_json::Value) -> anyhow::Result<()> {
    let key_id = key["key_id"].as_str().unwrap_or_default();
    let public = key["public_key"].as_str().unwrap_or_default();
    let parsed = gait_canon::sign::PublicKey::from_gait_public_key(public).with_context(|| {
        format!("the server listed key {key_id:?} with an unreadable public key")
    })?;
    if parsed.key_id() != key_id {
        bail!(
            "the server listed key id {key_id:?} for a public key whose key id is {}; not written",
            parsed.key_id()
        );
    }
    let path = dir.join(format!("{key_id}.key"));
    super::bundle::write_atomically(
        &path,
        format!("{}\n", parsed.to_gait_public_key()).as_bytes(),
    )
}
