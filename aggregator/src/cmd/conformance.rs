//! `gait-aggregator policy baseline set|show|clear` (the org's required baseline) and `policy conformance`
//! (which environments and agents conform, why not, and what to run), through the HTTP API. `conformance`
//! exits 0 when everything selected conforms and 1 when something does not, so a pipeline can gate on it;
//! 65 when the server refuses the request (bad input, no baseline).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{AgentId, Env, Org, Project};
use serde_json::{Value, json};

use super::table::{Align, Table};
use super::{ApiArgs, call, refused_by_status};

/// `policy baseline` subcommands.
#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    /// Set (replace) the org's required baseline: a minimum version (it and the versions descending from it
    /// conform) and/or rule names every policy in force must carry. An unknown digest is refused (exit 65).
    Set(SetArgs),
    /// Show the org's baseline (exit 65 when none is set).
    Show(OrgArgs),
    /// Remove the org's baseline (exit 65 when none is set).
    Clear(OrgArgs),
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Digest of the minimum registry version.
    #[arg(long = "min")]
    pub min: Option<String>,
    /// A rule name every policy in force must carry (repeat for several).
    #[arg(long = "require-rule")]
    pub require_rule: Vec<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct OrgArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `policy conformance`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when every selected environment and agent conforms, 1 when one does not \
                  (or the server failed), 65 when the request is refused (bad input, no baseline set, a selection \
                  that matches nothing)."
)]
pub struct ConformanceArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Only this project.
    #[arg(long)]
    pub project: Option<Project>,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<Env>,
    /// Only this agent (its environment's own answer is left out).
    #[arg(long)]
    pub agent: Option<AgentId>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

fn print_baseline(verb: &str, b: &Value) {
    let rules = b["required_rules"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    gait_runtime::outln!(
        "{verb} baseline of {}\nminimum  {}\nrules    {}\nset by   {}",
        b["org"].as_str().unwrap_or("?"),
        b["min_digest"].as_str().unwrap_or("-"),
        if rules.is_empty() { "-" } else { &rules },
        b["set_by"].as_str().unwrap_or("?"),
    );
}

/// Runs a `policy baseline` subcommand.
pub async fn baseline(command: BaselineCommand, config: Config) -> anyhow::Result<ExitCode> {
    let (api, org, json, method, body, key, verb) = match command {
        BaselineCommand::Set(a) => {
            let mut body = json!({ "required_rules": a.require_rule });
            if let Some(min) = &a.min {
                body["min_digest"] = min.clone().into();
            }
            (
                a.api,
                a.org,
                a.json,
                reqwest::Method::PUT,
                Some(body),
                "baseline",
                "set",
            )
        }
        BaselineCommand::Show(a) => (
            a.api,
            a.org,
            a.json,
            reqwest::Method::GET,
            None,
            "baseline",
            "the",
        ),
        BaselineCommand::Clear(a) => (
            a.api,
            a.org,
            a.json,
            reqwest::Method::DELETE,
            None,
            "cleared",
            "cleared",
        ),
    };
    let api = api.resolve(config)?;
    let url = format!("{}/v1/orgs/{org}/conformance/baseline", api.server);
    let (status, answer) = call(&api, method, &url, body).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &answer));
    }
    if json {
        gait_runtime::outln!("{answer}");
    } else {
        print_baseline(verb, &answer[key]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `policy conformance`.
pub async fn conformance(args: ConformanceArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut query = Vec::new();
    if let Some(p) = &args.project {
        query.push(format!("project={p}"));
    }
    if let Some(e) = &args.env {
        query.push(format!("env={e}"));
    }
    if let Some(a) = &args.agent {
        query.push(format!("agent={a}"));
    }
    let url = format!(
        "{}/v1/orgs/{}/conformance{}{}",
        api.server,
        args.org,
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_report(&answer);
    }
    Ok(if answer["conformant"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(gait_runtime::exit::FAILURE)
    })
}

fn print_report(answer: &Value) {
    let mut table = Table::new(&[
        ("PROJECT", Align::Left),
        ("ENV", Align::Left),
        ("AGENT", Align::Left),
        ("CONFORMS", Align::Left),
        ("EPOCH", Align::Right),
        ("REASONS", Align::Left),
    ]);
    let mut remedies = Vec::new();
    for r in answer["results"].as_array().into_iter().flatten() {
        let scope = &r["scope"];
        let reasons = r["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        table.row([
            scope["project"].as_str().unwrap_or("").to_owned(),
            scope["env"].as_str().unwrap_or("").to_owned(),
            scope["agent"].as_str().unwrap_or("-").to_owned(),
            if r["conformant"].as_bool() == Some(true) {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
            r["bundle_epoch"]
                .as_u64()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".to_owned()),
            reasons,
        ]);
        if let Some(remedy) = r["remedy"].as_str()
            && !remedies.iter().any(|m: &String| m == remedy)
        {
            remedies.push(remedy.to_owned());
        }
    }
    table.print();
    for p in answer["projects"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "project {}: {} ({} of {} environments, {} of {} agents do not conform)",
            p["project"].as_str().unwrap_or("?"),
            if p["conformant"].as_bool() == Some(true) {
                "conforms"
            } else {
                "does not conform"
            },
            p["nonconformant_envs"],
            p["envs"],
            p["nonconformant_agents"],
            p["agents"]
        );
    }
    for remedy in remedies {
        gait_runtime::outln!("to conform: {remedy}");
    }
    if answer["truncated"].as_bool() == Some(true) {
        gait_runtime::errln!(
            "warning: more agents matched than one answer holds; narrow with --project/--env"
        );
    }
}
