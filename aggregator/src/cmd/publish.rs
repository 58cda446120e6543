//! `gait-aggregator publish`: sign and publish policy files as the next bundle of a scope, through the API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use gait_runtime::exit;

use super::{ApiArgs, call};

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation of the scope to publish to.
    #[arg(long)]
    pub org: Org,
    /// Project of the scope.
    #[arg(long)]
    pub project: Project,
    /// Environment of the scope (e.g. prod); agents of exactly this org/project/env receive the bundle.
    #[arg(long)]
    pub env: Env,
    /// Gait policy YAML file(s) to put in the bundle (repeatable); stored under their file names.
    #[arg(long = "policy", required = true)]
    pub policies: Vec<PathBuf>,
    /// Seconds an agent may enforce without contact before it is stale.
    #[arg(long)]
    pub max_offline_seconds: Option<u64>,
    /// What a stale agent does: keep (enforce the cached bundle) or fail_closed (block everything).
    #[arg(long)]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing.
    #[arg(long)]
    pub validity_seconds: Option<u64>,
    /// Let callers of the agents' local API ask for `?simulate=true` (decide, record the policy's verdict,
    /// enforce allow). Signed into the bundle; without it such requests are refused.
    #[arg(long)]
    pub allow_caller_simulate: bool,
    /// Have the agents upload the bytes of the artifacts they record (runpacks, traces, regress results) to
    /// the aggregator's blob store. Signed into the bundle; without it only digests travel.
    #[arg(long)]
    pub upload_artifacts: bool,
    /// Candidate policy to stage beside a policy (repeatable): `FILE` when the bundle has one policy, else
    /// `POLICY=FILE` (POLICY: the file name of a --policy). Stored under FILE's name; needs --stage.
    #[arg(long = "candidate", requires = "stage")]
    pub candidates: Vec<String>,
    /// Stage of the candidates: observe (the policy decides, the candidate runs in shadow, both verdicts are
    /// recorded) or dry_run (the candidate is the policy of record; a block it adds is reported, not
    /// enforced). To enforce a candidate, publish it as the --policy.
    #[arg(long, requires = "candidates", value_parser = ["observe", "dry_run"])]
    pub stage: Option<String>,
    /// Public key file (Gait's key text) agents verify Gait delegation tokens with; signed into the bundle.
    /// Without it agents accept no delegation token.
    #[arg(long)]
    pub delegation_key: Option<PathBuf>,
    /// What the agents' decision records carry of each intent: reference (digests only, the default) or raw
    /// (Gait's normalized intent too, to replay candidate policies against real traffic). Signed into the bundle.
    #[arg(long, value_parser = ["reference", "raw"])]
    pub capture_mode: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub async fn publish(args: PublishArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut policies = BTreeMap::new();
    for path in &args.policies {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_owned();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy {}", path.display()))?;
        if policies.insert(name.clone(), text).is_some() {
            bail!("two policies are named {name}; file names must be unique in a bundle");
        }
    }
    let mut candidates = serde_json::Map::new();
    for spec in &args.candidates {
        let (policy, path) = match spec.split_once('=') {
            Some((policy, path)) => (policy.to_owned(), PathBuf::from(path)),
            None if policies.len() == 1 => (
                policies.keys().next().cloned().unwrap_or_default(),
                PathBuf::from(spec),
            ),
            None => bail!(
                "--candidate {spec}: the bundle has {} policies; name the one it stands beside: --candidate POLICY=FILE",
                policies.len()
            ),
        };
        if !policies.contains_key(&policy) {
            bail!(
                "--candidate {spec}: {policy} is not a --policy of this bundle ({})",
                policies.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_owned();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading candidate {}", path.display()))?;
        let stage = args.stage.clone().unwrap_or_default();
        if candidates
            .insert(
                policy.clone(),
                serde_json::json!({ "stage": stage, "name": name, "policy": text }),
            )
            .is_some()
        {
            bail!("two candidates are staged beside {policy}; give one");
        }
    }
    let mut body = serde_json::json!({ "policies": policies });
    if !candidates.is_empty() {
        body["candidates"] = candidates.into();
    }
    if let Some(path) = &args.delegation_key {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("reading delegation key {}", path.display()))?;
        body["delegation_key"] = key.trim().to_owned().into();
    }
    if let Some(v) = args.max_offline_seconds {
        body["max_offline_seconds"] = v.into();
    }
    if let Some(v) = &args.on_stale {
        body["on_stale"] = v.clone().into();
    }
    if let Some(v) = args.validity_seconds {
        body["validity_seconds"] = v.into();
    }
    if args.allow_caller_simulate {
        body["allow_caller_simulate"] = true.into();
    }
    if args.upload_artifacts {
        body["upload_artifacts"] = true.into();
    }
    if let Some(mode) = &args.capture_mode {
        body["capture_mode"] = mode.clone().into();
    }
    let url = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}/bundles",
        api.server, args.org, args.project, args.env
    );
    let (status, answer) = call(&api, reqwest::Method::POST, &url, Some(body)).await?;
    if args.json {
        gait_runtime::outln!("{answer}");
    } else if status.is_success() {
        gait_runtime::outln!(
            "published epoch {} for {}/{}/{}: digest {}",
            answer["epoch"],
            args.org,
            args.project,
            args.env,
            answer["digest"].as_str().unwrap_or("?")
        );
    }
    if !status.is_success() {
        gait_runtime::errln!(
            "error: publish refused ({status}): {}",
            answer["error"]["message"].as_str().unwrap_or("no message")
        );
        return Ok(ExitCode::from(exit::FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}
