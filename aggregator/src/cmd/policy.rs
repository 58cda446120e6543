//! `gait-aggregator policy …`: the policy registry through the HTTP API. `push` a Gait policy as an immutable
//! version (validated; the version id is its Gait policy digest), `list`, `show`, `diff`; `pin` an environment
//! to a version (a new signed epoch), `rollback` it to the last known-good version, `pins` (its history).
//! A refused policy prints the key and line to fix and exits 65 (data error).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use gait_runtime::exit;
use serde_json::{Value, json};

use super::table::{Align, Table};
use super::{Api, ApiArgs, call, refused};

/// `policy` subcommands.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Push a Gait policy file as a version of the org's registry; prints the version and its digest.
    /// Pushing the same policy again (even re-commented) answers the existing version.
    Push(PushArgs),
    /// List the org's versions, oldest first.
    List(ListArgs),
    /// Show one version (metadata and warnings, or --yaml for the stored YAML).
    Show(ShowArgs),
    /// Semantic diff from version A to version B: rules added, removed, changed, each with its verdict effect.
    Diff(DiffArgs),
    /// Pin an environment to a version: published as the next signed bundle epoch. Settings flags as
    /// `publish`; the previous pin's settings apply, each flag given replacing only its own field.
    Pin(PinArgs),
    /// Roll an environment back to its last known-good version (or --to DIGEST), as a new signed epoch carrying
    /// a rollback marker; agents keep refusing older epochs.
    Rollback(RollbackArgs),
    /// The environment's pin history, newest first.
    Pins(PinsArgs),
    /// The org's required baseline: set, show or clear it.
    #[command(subcommand)]
    Baseline(super::conformance::BaselineCommand),
    /// Which environments and agents conform to the org's baseline, why not and what to run; exit 0 when all
    /// selected conform, 1 when one does not, 65 on bad input.
    Conformance(super::conformance::ConformanceArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Gait policy YAML file.
    pub file: PathBuf,
    /// Organisation whose registry receives it.
    #[arg(long)]
    pub org: Org,
    /// Version name: the policy's file name in bundles (default: FILE's name).
    #[arg(long)]
    pub name: Option<String>,
    /// What changed and why.
    #[arg(long, default_value = "")]
    pub message: String,
    /// Digest of the version this one derives from.
    #[arg(long)]
    pub parent: Option<String>,
    /// Validate and show the version, store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Versions per page, newest first (1-1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only versions older than this digest: the `next_before` a previous page printed.
    #[arg(long)]
    pub before: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The version's digest.
    pub digest: String,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Print JSON.
    #[arg(long, conflicts_with = "yaml")]
    pub json: bool,
    /// Print the stored YAML only.
    #[arg(long)]
    pub yaml: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// From this version's digest.
    pub from: String,
    /// To this version's digest.
    pub to: String,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The environment a pin command acts on.
#[derive(Args, Debug, Clone)]
pub struct EnvArgs {
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

impl EnvArgs {
    fn url(&self, api: &Api, leaf: &str) -> String {
        format!(
            "{}/v1/orgs/{}/projects/{}/envs/{}/{leaf}",
            api.server, self.org, self.project, self.env
        )
    }
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The version's digest.
    pub digest: String,
    #[command(flatten)]
    pub scope: EnvArgs,
    /// Seconds an agent may enforce without contact before it is stale.
    #[arg(long)]
    pub max_offline_seconds: Option<u64>,
    /// What a stale agent does: keep or fail_closed.
    #[arg(long, value_parser = ["keep", "fail_closed"])]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing.
    #[arg(long)]
    pub validity_seconds: Option<u64>,
    /// Let callers of the agents' local API ask for simulate.
    #[arg(long)]
    pub allow_caller_simulate: bool,
    /// Have the agents upload artifact bytes.
    #[arg(long)]
    pub upload_artifacts: bool,
    /// reference (digests only) or raw (normalized intents too).
    #[arg(long, value_parser = ["reference", "raw"])]
    pub capture_mode: Option<String>,
    /// Public key file agents verify delegation tokens with.
    #[arg(long)]
    pub delegation_key: Option<PathBuf>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: EnvArgs,
    /// Restore this version (its newest pin) instead of the last known-good one.
    #[arg(long)]
    pub to: Option<String>,
    /// Why (signed into the bundle; at most 256 bytes).
    #[arg(long)]
    pub reason: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PinsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub scope: EnvArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `policy` subcommand.
pub async fn run(command: PolicyCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Push(args) => push(args, config).await,
        PolicyCommand::List(args) => list(args, config).await,
        PolicyCommand::Show(args) => show(args, config).await,
        PolicyCommand::Diff(args) => diff(args, config).await,
        PolicyCommand::Pin(args) => pin(args, config).await,
        PolicyCommand::Rollback(args) => rollback(args, config).await,
        PolicyCommand::Pins(args) => pins(args, config).await,
        PolicyCommand::Baseline(c) => super::conformance::baseline(c, config).await,
        PolicyCommand::Conformance(a) => super::conformance::conformance(a, config).await,
    }
}

fn print_warnings(answer: &Value) {
    for w in answer["warnings"].as_array().into_iter().flatten() {
        gait_runtime::errln!(
            "warning: {} ({}): {}",
            w["code"].as_str().unwrap_or("?"),
            w["field"].as_str().unwrap_or("?"),
            w["message"].as_str().unwrap_or("")
        );
    }
}

async fn push(args: PushArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading policy {}", args.file.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name; pass --name", args.file.display()))?
            .to_owned(),
    };
    let mut body = json!({ "name": name, "policy": text, "message": args.message });
    if let Some(p) = &args.parent {
        body["parent"] = p.clone().into();
    }
    let url = format!(
        "{}/v1/orgs/{}/policies{}",
        api.server,
        args.org,
        if args.dry_run { "?dry_run=true" } else { "" }
    );
    let (status, answer) = call(&api, reqwest::Method::POST, &url, Some(body)).await?;
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        let e = &answer["error"];
        gait_runtime::errln!(
            "error: {}: {}",
            args.file.display(),
            e["message"].as_str().unwrap_or("policy refused")
        );
        if let (Some(line), Some(field)) =
            (e["line"].as_u64().filter(|l| *l > 0), e["field"].as_str())
        {
            gait_runtime::errln!(
                "  --> {}:{line}:{} (key {field})",
                args.file.display(),
                e["column"].as_u64().unwrap_or(0)
            );
        }
        return Ok(ExitCode::from(exit::DATAERR));
    }
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let verb = match (answer["dry_run"].as_bool(), answer["created"].as_bool()) {
            (Some(true), _) => "valid (dry run, nothing stored)",
            (_, Some(true)) => "pushed",
            _ => "already in the registry",
        };
        gait_runtime::outln!(
            "{verb}: {} {} ({} rules, default {})\ndigest {}",
            args.org,
            answer["name"].as_str().unwrap_or("?"),
            answer["rule_count"],
            answer["default_verdict"].as_str().unwrap_or("?"),
            answer["digest"].as_str().unwrap_or("?")
        );
    }
    print_warnings(&answer);
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut url = format!(
        "{}/v1/orgs/{}/policies?limit={}",
        api.server, args.org, args.limit
    );
    if let Some(before) = &args.before {
        if before.len() != 64 || !before.bytes().all(|b| b.is_ascii_hexdigit()) {
            gait_runtime::errln!(
                "error: --before {before:?} is not a version digest (64 hex characters)"
            );
            return Ok(ExitCode::from(gait_runtime::exit::USAGE));
        }
        url.push_str(&format!("&before={before}"));
    }
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("DIGEST", Align::Left),
        ("NAME", Align::Left),
        ("RULES", Align::Right),
        ("DEFAULT", Align::Left),
        ("AUTHOR", Align::Left),
        ("MESSAGE", Align::Left),
    ]);
    for v in answer["versions"].as_array().into_iter().flatten() {
        table.row([
            v["digest"].as_str().unwrap_or("").to_owned(),
            v["name"].as_str().unwrap_or("").to_owned(),
            v["rule_count"].to_string(),
            v["default_verdict"].as_str().unwrap_or("").to_owned(),
            v["author"].as_str().unwrap_or("").to_owned(),
            v["message"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    if let Some(next) = answer["next_before"].as_str() {
        gait_runtime::errln!("more versions: --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/policies/{}",
        api.server, args.org, args.digest
    );
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.yaml {
        let yaml = answer["yaml"].as_str().unwrap_or("");
        gait_runtime::outln!("{}", yaml.strip_suffix('\n').unwrap_or(yaml));
    } else if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        let v = &answer["version"];
        gait_runtime::outln!(
            "digest   {}\nname     {}\nrules    {}\ndefault  {}\nauthor   {}\nmessage  {}\nparent   {}",
            v["digest"].as_str().unwrap_or(""),
            v["name"].as_str().unwrap_or(""),
            v["rule_count"],
            v["default_verdict"].as_str().unwrap_or(""),
            v["author"].as_str().unwrap_or(""),
            v["message"].as_str().unwrap_or(""),
            v["parent"].as_str().unwrap_or("-"),
        );
        print_warnings(v);
    }
    Ok(ExitCode::SUCCESS)
}

async fn diff(args: DiffArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/policies/{}/diff/{}",
        api.server, args.org, args.from, args.to
    );
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let d = &answer["diff"];
    for r in d["rules"].as_array().into_iter().flatten() {
        let fields = r["fields"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        gait_runtime::outln!(
            "{:8} rule {} {}{} [{}]",
            r["change"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?"),
            r["from_effect"]
                .as_str()
                .map(|v| format!("{v} -> "))
                .unwrap_or_default(),
            r["to_effect"].as_str().unwrap_or("(removed)"),
            if fields.is_empty() {
                r["verdict_effect"].as_str().unwrap_or("?").to_owned()
            } else {
                format!("{}; {fields}", r["verdict_effect"].as_str().unwrap_or("?"))
            }
        );
    }
    for s in d["settings"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "changed  {} {} -> {} [{}]",
            s["field"].as_str().unwrap_or("?"),
            s["from"],
            s["to"],
            s["verdict_effect"].as_str().unwrap_or("?")
        );
    }
    let sum = &d["summary"];
    gait_runtime::outln!(
        "{} added, {} removed, {} changed; {} stricter, {} looser",
        sum["added"],
        sum["removed"],
        sum["changed"],
        sum["stricter"],
        sum["looser"]
    );
    print_warnings(d);
    Ok(ExitCode::SUCCESS)
}

fn print_pinned(verb: &str, scope: &EnvArgs, answer: &Value) {
    gait_runtime::outln!(
        "{verb} {}/{}/{} to {} as epoch {} (bundle {})",
        scope.org,
        scope.project,
        scope.env,
        answer["pin"]["digest"].as_str().unwrap_or("?"),
        answer["bundle"]["epoch"],
        answer["bundle"]["digest"].as_str().unwrap_or("?")
    );
}

async fn pin(args: PinArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut body = json!({ "digest": args.digest });
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
    if let Some(v) = &args.capture_mode {
        body["capture_mode"] = v.clone().into();
    }
    if let Some(path) = &args.delegation_key {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("reading delegation key {}", path.display()))?;
        body["delegation_key"] = key.trim().to_owned().into();
    }
    let url = args.scope.url(&api, "pin");
    let (status, answer) = call(&api, reqwest::Method::PUT, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_pinned("pinned", &args.scope, &answer);
    }
    print_warnings(&answer);
    Ok(ExitCode::SUCCESS)
}

async fn rollback(args: RollbackArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut body = json!({ "reason": args.reason });
    if let Some(to) = &args.to {
        body["to"] = to.clone().into();
    }
    let url = args.scope.url(&api, "rollback");
    let (status, answer) = call(&api, reqwest::Method::POST, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_pinned("rolled back", &args.scope, &answer);
    }
    Ok(ExitCode::SUCCESS)
}

async fn pins(args: PinsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = args.scope.url(&api, "pins");
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
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
        ("DIGEST", Align::Left),
        ("EPOCH", Align::Right),
        ("GOOD", Align::Left),
        ("ACTOR", Align::Left),
        ("REASON", Align::Left),
    ]);
    for p in answer["pins"].as_array().into_iter().flatten() {
        table.row([
            p["id"].to_string(),
            p["kind"].as_str().unwrap_or("").to_owned(),
            p["digest"].as_str().unwrap_or("").to_owned(),
            p["bundle_epoch"].to_string(),
            if p["known_good"].as_bool() == Some(true) {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
            p["actor"].as_str().unwrap_or("").to_owned(),
            p["reason"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
