//! `gait-aggregator access list|grant|revoke`: role bindings through the HTTP API. The config file's
//! `auth.bindings` are the GitOps path; these commands are for the first binding (with the bootstrap admin
//! token) and for changes an operator makes by hand.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use serde_json::{Value, json};

use super::table::{Align, Table};
use super::{ApiArgs, call, refused};

/// The scope flags shared by the three commands.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// Organisation; absent = the whole deployment.
    #[arg(long)]
    pub org: Option<Org>,
    /// Project of --org; absent = the whole org.
    #[arg(long, requires = "org")]
    pub project: Option<Project>,
    /// Environment of --project; absent = the whole project.
    #[arg(long, requires = "project")]
    pub env: Option<Env>,
}

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// List the role bindings inside a scope (default: every binding of the deployment).
    List(ListArgs),
    /// Grant a role to a user (an OIDC subject) or an IdP group over a scope. Roles: platform_admin,
    /// policy_author, approver, auditor, viewer. Granting an existing binding changes nothing.
    Grant(GrantArgs),
    /// Revoke a role binding by id (`access list` shows ids). Bindings from the config file's auth.bindings
    /// are removed there instead.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The operator's subject (the `sub` claim of their token).
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    pub user: Option<String>,
    /// An IdP group (from the token's groups claim).
    #[arg(long)]
    pub group: Option<String>,
    /// platform_admin, policy_author, approver, auditor or viewer.
    #[arg(long)]
    pub role: String,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The binding's id.
    pub id: u64,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub async fn access(command: AccessCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        AccessCommand::List(args) => list(args, config).await,
        AccessCommand::Grant(args) => grant(args, config).await,
        AccessCommand::Revoke(args) => revoke(args, config).await,
    }
}

fn scope_text(scope: &Value) -> String {
    let part = |k: &str| scope[k].as_str().map(str::to_owned);
    match (part("org"), part("project"), part("env")) {
        (None, _, _) => "* (deployment)".to_owned(),
        (Some(o), None, _) => o,
        (Some(o), Some(p), None) => format!("{o}/{p}"),
        (Some(o), Some(p), Some(e)) => format!("{o}/{p}/{e}"),
    }
}

async fn list(args: ListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let base = format!("{}/v1/access/bindings", api.server);
    let mut params = Vec::new();
    if let Some(o) = &args.scope.org {
        params.push(("org", o.to_string()));
    }
    if let Some(p) = &args.scope.project {
        params.push(("project", p.to_string()));
    }
    if let Some(e) = &args.scope.env {
        params.push(("env", e.to_string()));
    }
    let url = reqwest::Url::parse_with_params(&base, params)
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
        ("KIND", Align::Left),
        ("SUBJECT", Align::Left),
        ("ROLE", Align::Left),
        ("SCOPE", Align::Left),
        ("SOURCE", Align::Left),
        ("CREATED BY", Align::Left),
    ]);
    for b in answer["bindings"].as_array().into_iter().flatten() {
        table.row([
            b["id"].as_u64().unwrap_or(0).to_string(),
            b["kind"].as_str().unwrap_or("").to_owned(),
            b["subject"].as_str().unwrap_or("").to_owned(),
            b["role"].as_str().unwrap_or("").to_owned(),
            scope_text(&b["scope"]),
            b["source"].as_str().unwrap_or("").to_owned(),
            b["created_by"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn grant(args: GrantArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/access/bindings", api.server);
    let mut body = json!({ "role": args.role });
    if let Some(user) = &args.user {
        body["user"] = json!(user);
    }
    if let Some(group) = &args.group {
        body["group"] = json!(group);
    }
    if let Some(o) = &args.scope.org {
        body["org"] = json!(o.as_str());
    }
    if let Some(p) = &args.scope.project {
        body["project"] = json!(p.as_str());
    }
    if let Some(e) = &args.scope.env {
        body["env"] = json!(e.as_str());
    }
    let (status, answer) = call(&api, http::Method::POST, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let b = &answer["binding"];
        let verb = if answer["created"] == true {
            "granted"
        } else {
            "already granted"
        };
        gait_runtime::outln!(
            "{verb}: binding {} — {} {} is {} on {}",
            b["id"],
            b["kind"].as_str().unwrap_or(""),
            b["subject"].as_str().unwrap_or(""),
            b["role"].as_str().unwrap_or(""),
            scope_text(&b["scope"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/access/bindings/{}", api.server, args.id);
    let (status, answer) = call(&api, http::Method::DELETE, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let b = &answer["binding"];
        gait_runtime::outln!(
            "revoked: binding {} — {} {} was {} on {}",
            b["id"],
            b["kind"].as_str().unwrap_or(""),
            b["subject"].as_str().unwrap_or(""),
            b["role"].as_str().unwrap_or(""),
            scope_text(&b["scope"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
