//! `gait-aggregator keys list|rotate|revoke`: the registry's bundle signing keys, through the API
//! (`/v1/signing-keys`). `rotate` starts a rotation with an overlap, `revoke` revokes a next or retired key;
//! both re-publish every environment at once so agents learn of the change.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gait_aggregator::config::Config;

use super::table::{Align, Table};
use super::{ApiArgs, call};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List the bundle signing keys with their states (next, active, retired, revoked).
    List(ListArgs),
    /// Start a rotation: a new key endorsed by the active one, signing from the first publish after the
    /// overlap. Every environment is re-published at once with the endorsement (signed by the old key).
    Rotate(RotateArgs),
    /// Revoke a next or retired key: agents refuse bundles signed by it from the next bundle they activate on.
    /// The active key cannot be revoked: rotate first.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Seconds before the new key signs (0: from the next publish on).
    #[arg(long, default_value_t = 0)]
    pub overlap_seconds: u64,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The key's id (64 hex digits, as `keys list` shows).
    pub key_id: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: KeysCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::List(args) => list(args, config).await,
        KeysCommand::Rotate(args) => rotate(args, config).await,
        KeysCommand::Revoke(args) => revoke(args, config).await,
    }
}

async fn list(args: ListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/signing-keys", api.server);
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("KEY ID", Align::Left),
        ("STATE", Align::Left),
        ("ENDORSED BY", Align::Left),
        ("ACTOR", Align::Left),
    ]);
    for k in answer["signing_keys"].as_array().into_iter().flatten() {
        table.row([
            k["key_id"].as_str().unwrap_or("").to_owned(),
            k["state"].as_str().unwrap_or("").to_owned(),
            k["endorsed_by"].as_str().unwrap_or("-").to_owned(),
            k["actor"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn print_change(what: &str, answer: &serde_json::Value) {
    gait_runtime::outln!(
        "{what} key {} (state {}); re-published {} environment(s)",
        answer["key"]["key_id"].as_str().unwrap_or(""),
        answer["key"]["state"].as_str().unwrap_or(""),
        answer["republished"].as_object().map_or(0, |m| m.len()),
    );
    if let Some(n) = answer["agents_at_risk"].as_u64().filter(|n| *n > 0) {
        gait_runtime::errln!(
            "warning: {n} agent(s) have not activated a bundle since this key's successor was introduced; they \
             may refuse every newer bundle and need the current registry key (see `gait-aggregator agents`)"
        );
    }
    for (env, err) in answer["republish_errors"].as_object().into_iter().flatten() {
        gait_runtime::errln!(
            "  {env}: re-publish failed ({err}); its agents learn at the next publish"
        );
    }
}

async fn rotate(args: RotateArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/signing-keys/rotate", api.server);
    let body = serde_json::json!({ "overlap_seconds": args.overlap_seconds });
    let (status, answer) = call(&api, http::Method::POST, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_change("rotating to", &answer);
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/signing-keys/{}/revoke",
        api.server,
        args.key_id.trim()
    );
    let (status, answer) = call(&api, http::Method::POST, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_change("revoked", &answer);
    }
    Ok(ExitCode::SUCCESS)
}
