//! `gait-aggregator join-token create|list|revoke`: join tokens of one org/project/environment, through the
//! API. `create` prints the token once (it is never stored, only its hash); hand it to `gait-agent enroll`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};

use super::table::{Align, Table};
use super::{ApiArgs, call};

#[derive(Subcommand, Debug)]
pub enum JoinTokenCommand {
    /// Mint a join token: an agent enrolls with it (`gait-agent enroll --token …`) into this org/project/env.
    /// The token is printed once.
    Create(CreateArgs),
    /// List the environment's join tokens with their state (active, expired, used_up, revoked); never secrets.
    List(ListArgs),
    /// Revoke a join token by its id: it enrolls nothing more. Certificates it already paid for stay valid.
    Revoke(RevokeArgs),
}

/// The environment a command acts on.
#[derive(Args, Debug)]
pub struct Scope {
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

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: Scope,
    /// How long the token works, e.g. `1h`, `30m`, `7d` (at most enroll.max_token_ttl_seconds, 7 days by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How many agents may enroll with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Print the server's JSON answer (it holds the token).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: Scope,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: Scope,
    /// The token's id (16 hex digits, as `list` shows; also the part after `gjt1_` of the token).
    pub token_id: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: JoinTokenCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        JoinTokenCommand::Create(args) => create(args, config).await,
        JoinTokenCommand::List(args) => list(args, config).await,
        JoinTokenCommand::Revoke(args) => revoke(args, config).await,
    }
}

fn base(server: &str, scope: &Scope) -> String {
    format!(
        "{server}/v1/orgs/{}/projects/{}/envs/{}/join-tokens",
        scope.org, scope.project, scope.env
    )
}

fn utc(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| {
        t.format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .ok()
    })
    .unwrap_or_else(|| "-".to_owned())
}

async fn create(args: CreateArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let body = serde_json::json!({ "ttl_seconds": args.ttl.as_secs(), "uses": args.uses });
    let (status, answer) = call(
        &api,
        http::Method::POST,
        &base(&api.server, &args.scope),
        Some(body),
    )
    .await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let token = answer["token"]
        .as_str()
        .context("the aggregator's answer carries no token")?;
    gait_runtime::outln!("{token}");
    gait_runtime::errln!(
        "join token {} for {}/{}/{}: {} use(s), expires {} UTC. It is shown only now; enroll an agent with\n  \
         gait-agent enroll --token <token> --aggregator {} --ca-file <deployment ca.pem> --config agent.yaml",
        answer["token_id"].as_str().unwrap_or(""),
        args.scope.org,
        args.scope.project,
        args.scope.env,
        answer["uses_allowed"],
        utc(answer["expires_unix_ms"].as_i64()),
        api.server,
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let (status, answer) = call(
        &api,
        http::Method::GET,
        &base(&api.server, &args.scope),
        None,
    )
    .await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("USES LEFT", Align::Right),
        ("CREATED (UTC)", Align::Left),
        ("EXPIRES (UTC)", Align::Left),
        ("CREATED BY", Align::Left),
    ]);
    for t in answer["join_tokens"].as_array().into_iter().flatten() {
        table.row([
            t["token_id"].as_str().unwrap_or("").to_owned(),
            t["state"].as_str().unwrap_or("").to_owned(),
            format!("{}/{}", t["uses_left"], t["uses_allowed"]),
            utc(t["created_unix_ms"].as_i64()),
            utc(t["expires_unix_ms"].as_i64()),
            t["created_by"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let id = args.token_id.trim();
    // Accept the whole token too: its id is the part after the prefix.
    let id = id
        .strip_prefix(gait_aggregator::enroll::token::TOKEN_PREFIX)
        .and_then(|rest| rest.split('_').next())
        .unwrap_or(id);
    let url = format!("{}/{id}", base(&api.server, &args.scope));
    let (status, answer) = call(&api, http::Method::DELETE, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        gait_runtime::outln!(
            "join token {id} revoked ({} of {} uses left)",
            answer["uses_left"],
            answer["uses_allowed"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
