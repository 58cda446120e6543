//! `gait-aggregator approvals …`: approval policies (`policy set|list`) and approval requests
//! (`list|show|approve|deny`) through the HTTP API. `show --token-dir DIR` writes the issued Gait approval
//! tokens as files for `gait-agent gate eval --approval-token` (or Gait's own `gait gate eval`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::approval::policy::PolicySpec;
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use serde_json::{Value, json};

use super::table::{Align, Table};
use super::{ApiArgs, call, refused};

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Approval policies: which intents need approval and the rules (quorum, groups, separation of duties).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List an environment's approval requests, newest first.
    List(ListArgs),
    /// Show one request with its decisions; --token-dir writes its issued tokens.
    Show(ShowArgs),
    /// Approve a request as yourself (the requester cannot; one person counts once).
    Approve(DecideArgs),
    /// Deny a request; it ends.
    Deny(DecideArgs),
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Set a policy at an org, project or environment (adds its next version).
    Set(SetArgs),
    /// List the policies inside a scope or covering it.
    List(PolicyListArgs),
    /// Remove a policy (not one from the config file's approvals.policies: edit the file instead).
    Remove(PolicyRemoveArgs),
}

/// An org, optionally narrowed to a project and an environment.
#[derive(Args, Debug, Clone)]
pub struct PolicyScope {
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Project of --org; absent = the whole org.
    #[arg(long)]
    pub project: Option<Project>,
    /// Environment of --project; absent = the whole project.
    #[arg(long, requires = "project")]
    pub env: Option<Env>,
}

/// One environment.
#[derive(Args, Debug, Clone)]
pub struct EnvScope {
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Project.
    #[arg(long)]
    pub project: Project,
    /// Environment.
    #[arg(long)]
    pub env: Env,
}

impl EnvScope {
    fn path(&self, server: &str) -> String {
        format!(
            "{server}/v1/orgs/{}/projects/{}/envs/{}/approvals",
            self.org, self.project, self.env
        )
    }
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: PolicyScope,
    /// The policy's name within its scope.
    #[arg(long)]
    pub name: String,
    /// Rules from a YAML or JSON file (the fields of the flags below); flags given as well override it.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Tool name glob (repeatable); none = every tool.
    #[arg(long = "tool")]
    pub tools: Vec<String>,
    /// Phase (repeatable); none = every phase.
    #[arg(long = "phase")]
    pub phases: Vec<String>,
    /// Only intents with a destructive target.
    #[arg(long)]
    pub destructive_only: bool,
    /// Environment glob for an org or project policy (repeatable).
    #[arg(long = "env-glob")]
    pub envs: Vec<String>,
    /// Distinct approvers needed.
    #[arg(long)]
    pub quorum: Option<u32>,
    /// A group that must supply an approver of its own (repeatable; all are required).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Longest lifetime of an issued token, in seconds.
    #[arg(long)]
    pub max_token_ttl: Option<u64>,
    /// The author of this policy version may not approve under it.
    #[arg(long)]
    pub author_cannot_approve: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PolicyListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: PolicyScope,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PolicyRemoveArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: PolicyScope,
    /// The policy's name within its scope.
    #[arg(long)]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: EnvScope,
    /// pending, expired, approved or denied.
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: EnvScope,
    /// The request id (`approvals list` shows ids).
    pub id: u64,
    /// Write each issued token to DIR/approval_<request>_<n>.json.
    #[arg(long)]
    pub token_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: EnvScope,
    /// The request id.
    pub id: u64,
    /// Why (a ticket, an incident); recorded as the tokens' reason_code.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn approvals(command: ApprovalsCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::Policy(PolicyCommand::Set(args)) => set(args, config).await,
        ApprovalsCommand::Policy(PolicyCommand::List(args)) => policy_list(args, config).await,
        ApprovalsCommand::Policy(PolicyCommand::Remove(args)) => policy_remove(args, config).await,
        ApprovalsCommand::List(args) => list(args, config).await,
        ApprovalsCommand::Show(args) => show(args, config).await,
        ApprovalsCommand::Approve(args) => decide(args, "approve", config).await,
        ApprovalsCommand::Deny(args) => decide(args, "deny", config).await,
    }
}

fn rules(args: &SetArgs) -> anyhow::Result<PolicySpec> {
    let mut spec = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --file {}", path.display()))?;
            serde_saphyr::from_str::<PolicySpec>(&text).map_err(|e| {
                anyhow::anyhow!("--file {}: not approval policy rules: {e}", path.display())
            })?
        }
        None => PolicySpec::default(),
    };
    spec.tools.extend(args.tools.iter().cloned());
    spec.phases.extend(args.phases.iter().cloned());
    spec.envs.extend(args.envs.iter().cloned());
    spec.groups.extend(args.groups.iter().cloned());
    spec.destructive_only |= args.destructive_only;
    spec.author_cannot_approve |= args.author_cannot_approve;
    if let Some(q) = args.quorum {
        spec.quorum = q;
    }
    if let Some(t) = args.max_token_ttl {
        spec.max_token_ttl_seconds = t;
    }
    Ok(spec)
}

async fn set(args: SetArgs, config: Config) -> anyhow::Result<ExitCode> {
    let spec = rules(&args)?;
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/approval-policies", api.server);
    let mut body = json!({ "org": args.scope.org.as_str(), "name": args.name, "rules": spec });
    if let Some(p) = &args.scope.project {
        body["project"] = json!(p.as_str());
    }
    if let Some(e) = &args.scope.env {
        body["env"] = json!(e.as_str());
    }
    let (status, answer) = call(&api, http::Method::PUT, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let p = &answer["policy"];
        gait_runtime::outln!(
            "approval policy {} v{} set (digest {})",
            p["name"].as_str().unwrap_or(""),
            p["version"],
            p["digest"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy_remove(args: PolicyRemoveArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut params = vec![("org", args.scope.org.to_string())];
    if let Some(p) = &args.scope.project {
        params.push(("project", p.to_string()));
    }
    if let Some(e) = &args.scope.env {
        params.push(("env", e.to_string()));
    }
    params.push(("name", args.name.clone()));
    let url =
        reqwest::Url::parse_with_params(&format!("{}/v1/approval-policies", api.server), params)
            .with_context(|| format!("--server `{}` is not a URL", api.server))?
            .to_string();
    let (status, answer) = call(&api, http::Method::DELETE, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let p = &answer["policy"];
        gait_runtime::outln!(
            "approval policy {} removed (last version v{})",
            p["name"].as_str().unwrap_or(""),
            p["version"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy_list(args: PolicyListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut params = vec![("org", args.scope.org.to_string())];
    if let Some(p) = &args.scope.project {
        params.push(("project", p.to_string()));
    }
    if let Some(e) = &args.scope.env {
        params.push(("env", e.to_string()));
    }
    let url =
        reqwest::Url::parse_with_params(&format!("{}/v1/approval-policies", api.server), params)
            .with_context(|| format!("--server `{}` is not a URL", api.server))?
            .to_string();
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("VER", Align::Right),
        ("SOURCE", Align::Left),
        ("QUORUM", Align::Left),
        ("GROUPS", Align::Left),
        ("RULES", Align::Left),
    ]);
    for p in answer["policies"].as_array().into_iter().flatten() {
        let r = &p["rules"];
        table.row([
            p["name"].as_str().unwrap_or("").to_owned(),
            p["version"].to_string(),
            p["source"].as_str().unwrap_or("api").to_owned(),
            r["quorum"].to_string(),
            r["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .unwrap_or_default(),
            r.to_string(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut params = Vec::new();
    if let Some(s) = &args.status {
        params.push(("status", s.clone()));
    }
    let url = reqwest::Url::parse_with_params(&args.scope.path(&api.server), params)
        .with_context(|| format!("--server `{}` is not a URL", api.server))?
        .to_string();
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("STATUS", Align::Left),
        ("TOOL", Align::Left),
        ("AGENT", Align::Left),
        ("REQUESTED BY", Align::Left),
        ("MISSING", Align::Left),
    ]);
    for r in answer["approvals"].as_array().into_iter().flatten() {
        table.row([
            r["id"].as_u64().unwrap_or(0).to_string(),
            r["status"].as_str().unwrap_or("").to_owned(),
            r["tool"].as_str().unwrap_or("").to_owned(),
            r["agent_id"].as_str().unwrap_or("").to_owned(),
            r["requested_by"].as_str().unwrap_or("").to_owned(),
            r["missing"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/{}", args.scope.path(&api.server), args.id);
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if let Some(dir) = &args.token_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create --token-dir {}", dir.display()))?;
        for (n, token) in answer["approval"]["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = dir.join(format!("approval_{}_{n}.json", args.id));
            let mut text = serde_json::to_string_pretty(token)?;
            text.push('\n');
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            gait_runtime::errln!("wrote {}", path.display());
        }
    }
    gait_runtime::outln!("{answer}");
    Ok(ExitCode::SUCCESS)
}

async fn decide(args: DecideArgs, verb: &str, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/{}/{verb}", args.scope.path(&api.server), args.id);
    let (status, answer) = call(
        &api,
        http::Method::POST,
        &url,
        Some(json!({ "reason": args.reason })),
    )
    .await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let r = &answer["request"];
        let counted = if answer["recorded"] == true {
            "recorded"
        } else {
            "already recorded (counts once)"
        };
        gait_runtime::outln!(
            "{verb} {counted}: request {} is {}{}",
            args.id,
            r["status"].as_str().unwrap_or(""),
            r["missing"]
                .as_str()
                .map(|m| format!(" — still needs {m}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
