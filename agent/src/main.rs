//! `gait-agent` binary: parse the command line, set up logging, hand over to the library, map the outcome
//! to an exit code. Each subcommand is one enum variant with its own args struct and one `cmd_*` function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gait_agent::config::Config;
use gait_agent::daemon::{self, RunOptions};
use gait_agent::local_api;
use tokio_util::sync::CancellationToken;

use gait_runtime::exit::{
    CONFIG as EXIT_CONFIG, FAILURE as EXIT_FAILURE, TEMPFAIL as EXIT_NOT_READY,
    UNAVAILABLE as EXIT_UNAVAILABLE,
};
use gait_runtime::outln;

/// mimalloc instead of glibc malloc: allocation and free were about a fifth of the CPU of a decision (and of
/// ingest) with glibc's arenas; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "gait-agent", version, about = "Gait edge agent")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `gait_agent=debug,info`.
    #[arg(long, global = true, default_value = "info", env = "GAIT_AGENT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent daemon: pull policy bundles, ship records, serve the local API.
    Run(RunArgs),
    /// Show the status of the locally running agent.
    Status(StatusArgs),
    /// Join the fleet with a join token: make this agent's key here (it never leaves the host), have the
    /// aggregator certify it, and write key, certificate and CA bundle where the configuration expects them.
    /// Exit code 0 when enrolled, 65 when the token or request was refused, 69 when the aggregator is
    /// unreachable, 78 for bad options.
    Enroll(EnrollArgs),
    /// Records the aggregator refused for good, kept in the outbox quarantine (reads the database; stop
    /// the agent first).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Policy bundles carried in on a file (sites with no network path to the aggregator).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Verify Gait artifacts (runpacks, traces, regress results, JUnit reports; directories walked) and send
    /// the valid ones to the aggregator as evidence records, once each by SHA-256; through the running agent
    /// when one holds the database, else directly. Waits until the aggregator committed them (unless
    /// --no-wait). Exit code 0 when every artifact is committed (or queued with --no-wait), 65 when any file
    /// was invalid (reported, never sent; the valid ones are still handled), 66 when a path does not exist,
    /// 69 when the running agent or the aggregator does not answer, 74 on storage failure, 75 when not
    /// committed within --timeout (the records stay queued), 78 for bad options.
    Push(PushArgs),
    /// The outbox carried out on a file (sites with no network path to the aggregator).
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The local API's bearer token (producers send it as `Authorization: Bearer <token>`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Gait-compatible offline commands: `policy test`, `gate eval`, `trace verify`, `verify`.
    #[command(flatten)]
    Gait(gait_agent::gaitcli::GaitCommand),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
    /// Time allowed for tasks to finish after SIGTERM/SIGINT, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
}

#[derive(Debug, Args)]
/// Exit code 0 when the agent can decide from a verified policy and is not stale; 75 when it is stale or not
/// ready (the reasons are printed: no bundle, stale under fail_closed, storage failing); 69 when no agent
/// answers. Where it asks: --socket, else --api, else the socket (or, with the socket off, the TCP address) of
/// --config, else 127.0.0.1:7071.
struct StatusArgs {
    /// Print the raw JSON status.
    #[arg(long)]
    json: bool,
    /// TCP address of the agent's local API (default 127.0.0.1:7071).
    #[arg(long, conflicts_with_all = ["socket", "config"])]
    api: Option<SocketAddr>,
    /// Unix socket of the agent's local API.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Agent configuration file: ask where that agent serves its API (its `local_api.socket_path` unless the
    /// socket is off).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl StatusArgs {
    /// The endpoint to ask, or the configuration error.
    fn endpoint(&self) -> Result<local_api::Endpoint, gait_agent::config::ConfigError> {
        if let Some(path) = &self.socket {
            return Ok(local_api::Endpoint::Unix(path.clone()));
        }
        if let Some(addr) = self.api {
            return Ok(local_api::Endpoint::Tcp(addr));
        }
        match &self.config {
            Some(path) => local_api::Endpoint::of(&Config::load(path)?),
            None => Ok(local_api::Endpoint::Tcp(
                gait_agent::config::DEFAULT_LOCAL_API
                    .parse()
                    .unwrap_or_else(|_| ([127, 0, 0, 1], 7071).into()),
            )),
        }
    }
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The join token from `gait-aggregator join-token create` (read from GAIT_JOIN_TOKEN when not given, which
    /// keeps it out of the process list).
    #[arg(long, env = "GAIT_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The aggregator's HTTP API, e.g. https://aggregator.example:7080.
    #[arg(long)]
    aggregator: String,
    /// CA certificate the HTTPS API is verified with (the deployment CA, <data-dir>/pki/ca.pem on the
    /// aggregator host). Default: the configuration's tls.ca when that file exists.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The agent id to enroll as (default: agent-<12 random hex digits>).
    #[arg(long)]
    agent_id: Option<gait_identity::AgentId>,
    /// The organisation this agent means to join: a token for another scope is refused without using it
    /// (give --org, --project and --env together).
    #[arg(long, requires_all = ["project", "env"])]
    org: Option<gait_identity::Org>,
    /// The project this agent means to join.
    #[arg(long, requires_all = ["org", "env"])]
    project: Option<gait_identity::Project>,
    /// The environment this agent means to join.
    #[arg(long, requires_all = ["org", "project"])]
    env: Option<gait_identity::Env>,
    /// Agent configuration file: key, certificate and CA bundle go to its tls.key, tls.cert and tls.ca.
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Without a configuration file: write <data-dir>/tls/agent.key, agent.pem and ca.pem.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Seal every record still waiting for the aggregator into one file signed with this agent's key, for
    /// `gait-aggregator ingest-file`; through the running agent when one holds the database. Nothing leaves
    /// the outbox: records are deleted when the aggregator acknowledges them at the next connection. Exit
    /// code 0 when written, 66 when nothing is waiting, 65 when a record cannot be exported, 69 when the
    /// running agent does not answer, 74 when storage or writing fails, 78 for bad options or keys.
    Export(OutboxExportArgs),
}

#[derive(Debug, Args)]
struct OutboxExportArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
    /// The file to write (atomically, mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// Only records after this seq (to continue an export that did not fit into one file).
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Verify a signed bundle file (as `gait-aggregator publish` writes it) exactly as one from the aggregator
    /// — a trusted registry key, this agent's org/project/env, not expired, an epoch newer than the active one
    /// — and activate it; through the running agent when one holds the database. Exit code 0 when active, 65
    /// when the bundle is refused, 66 when the file cannot be read, 69 when the running agent does not answer,
    /// 74 when storage fails, 78 for bad options.
    Import(BundleImportArgs),
}

#[derive(Debug, Args)]
struct BundleImportArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
    /// The signed bundle file.
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
    /// Artifact files and directories (walked recursively; only .zip, .json and .xml files are offered).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Enqueue and return: the agent daemon sends the records when it runs.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the aggregator to commit everything, e.g. `120s`.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print one JSON object with every file's result (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Write a new random token to the token file (`local_api.token_file`, default
    /// `<data_dir>/local-api.token`); a running agent accepts it from the next request on and refuses the old.
    Rotate(TokenArgs),
    /// Print where the token file is.
    Path(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// One line per quarantined record: seq, class, kind, refusal code and message.
    List(QuarantineArgs),
    /// Every quarantined record as a JSON document (counters and records, payloads included).
    Export(QuarantineArgs),
}

#[derive(Debug, Args)]
struct QuarantineArgs {
    /// Agent configuration file (YAML); the database is `<data_dir>/agent.redb`.
    #[arg(long, short, env = "GAIT_AGENT_CONFIG", default_value = "agent.yaml")]
    config: PathBuf,
    /// Print JSON (always on for `export`).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Before the heaps grow (crates/runtime/src/memory.rs).
    let thp = gait_runtime::memory::disable_transparent_huge_pages();
    // Gait-compatible commands run before logging and the async runtime are set up (process latency).
    if let Some(code) = gait_agent::gaitcli::run_from_env() {
        return code;
    }
    // Every reqwest client needs a default rustls provider (see gait_runtime::http::tls::install_ring_default).
    gait_runtime::http::tls::install_ring_default();
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => gait_runtime::LogFormat::Text,
        LogFormat::Json => gait_runtime::LogFormat::Json,
    };
    // Held until main returns: dropping it flushes the log lines still buffered.
    // `push` runs the agent's uplink in process when no daemon does; its INFO lines would bury the command's
    // own report, so the default level of that command is WARN.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Push(_), "info") => "warn",
        (_, level) => level,
    };
    let _log = match gait_runtime::init_tracing("gait-agent", format, level) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = thp {
        tracing::warn!(%error, "transparent huge pages stay on: expect latency spikes while heaps grow");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gait-agent: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cmd_run(args).await,
            Command::Status(args) => cmd_status(args).await,
            Command::Enroll(args) => cmd_enroll(args).await,
            Command::Quarantine(command) => cmd_quarantine(command),
            Command::Token(command) => cmd_token(command),
            Command::Bundle(BundleCommand::Import(args)) => cmd_bundle_import(args).await,
            Command::Push(args) => cmd_push(args).await,
            Command::Outbox(OutboxCommand::Export(args)) => cmd_outbox_export(args).await,
            Command::Gait(command) => gait_agent::gaitcli::run(command),
        }
    })
}

async fn cmd_run(args: RunArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration refused");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let shutdown = CancellationToken::new();
    let signals = gait_runtime::Tasks::new(shutdown.clone());
    signals.spawn("signals", gait_runtime::cancel_on_signal(shutdown.clone()));
    let options = RunOptions {
        grace: args.grace_period,
    };
    let result = daemon::run_with(config, options, shutdown.clone()).await;
    // Stops the signal watcher too when the daemon could not start.
    shutdown.cancel();
    let _ = signals.drain(Duration::from_secs(1)).await;
    match result {
        Ok(stopped) => ExitCode::from(stopped.exit_code()),
        Err(e) if e.is_config() => {
            tracing::error!(error = %e, "gait-agent cannot start");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "gait-agent failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn cmd_enroll(args: EnrollArgs) -> ExitCode {
    use gait_agent::enroll::{EnrollOptions, TlsPaths};
    let (paths, config_ca) = match (&args.config, &args.data_dir) {
        (Some(path), _) => {
            // The files enrollment writes do not exist yet, so the file is read without validation.
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("gait-agent: cannot read {}: {e}", path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let base = path.parent().unwrap_or_else(|| std::path::Path::new(""));
            let config = match Config::from_yaml(&text, base) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("gait-agent: {}: {e}", path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let ca = config.tls.ca.clone();
            let paths = TlsPaths {
                ca: config.tls.ca,
                cert: config.tls.cert,
                key: config.tls.key,
            };
            (paths, Some(ca).filter(|ca| ca.is_file()))
        }
        (None, Some(dir)) => (
            TlsPaths {
                ca: dir.join("tls").join("ca.pem"),
                cert: dir.join("tls").join("agent.pem"),
                key: dir.join("tls").join("agent.key"),
            },
            None,
        ),
        (None, None) => {
            eprintln!(
                "gait-agent: enroll needs --config <agent.yaml> (files go to its tls.*) or --data-dir <dir>"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let agent_id = match args.agent_id {
        Some(id) => id,
        None => match gait_agent::enroll::random_agent_id() {
            Ok(id) => id,
            Err(e) => {
                eprintln!("gait-agent: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    };
    let expect = match (args.org, args.project, args.env) {
        (Some(org), Some(project), Some(env)) => {
            Some(gait_identity::Tenant::new(org, project, env))
        }
        _ => None,
    };
    let options = EnrollOptions {
        token: args.token,
        aggregator: args.aggregator,
        ca_file: args.ca_file.or(config_ca),
        agent_id,
        expect,
        paths,
    };
    match gait_agent::enroll::enroll(options).await {
        Ok(enrolled) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "agent": enrolled.identity.uri,
                        "serial": enrolled.serial,
                        "not_after_unix": enrolled.not_after_unix,
                        "ca": enrolled.paths.ca,
                        "cert": enrolled.paths.cert,
                        "key": enrolled.paths.key,
                    })
                );
            } else {
                outln!(
                    "enrolled as {} (certificate {}, expires at unix {}); key {} (0600, made here), \
                     certificate {}, CA bundle {}",
                    enrolled.identity.uri,
                    enrolled.serial,
                    enrolled.not_after_unix,
                    enrolled.paths.key.display(),
                    enrolled.paths.cert.display(),
                    enrolled.paths.ca.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gait-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn cmd_bundle_import(args: BundleImportArgs) -> ExitCode {
    use gait_agent::bundle_import;
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match bundle_import::read_file(&args.file) {
        Ok(bytes) => bundle_import::import(&config, &args.file, bytes).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((imported, via)) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "file": args.file,
                        "epoch": imported.epoch,
                        "digest": imported.digest,
                        "previous_epoch": imported.previous_epoch,
                        "since_unix_ms": imported.since_unix_ms,
                        "via": via,
                    })
                );
            } else {
                let previous = imported
                    .previous_epoch
                    .map_or("no bundle".to_owned(), |e| format!("epoch {e}"));
                let by = match via {
                    bundle_import::Via::Daemon => "by the running agent",
                    bundle_import::Via::Database => "in the agent database (no agent was running)",
                };
                outln!(
                    "{}: bundle epoch {} (digest {}) is active {by}, replacing {previous}",
                    args.file.display(),
                    imported.epoch,
                    imported.digest
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"file": args.file, "error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            eprintln!("gait-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A progress bar on stderr when it is a terminal (indicatif hides it otherwise).
struct Bar(indicatif::ProgressBar);

impl gait_agent::capture::push::Progress for Bar {
    fn files(&mut self, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        self.0.set_message("verified and enqueued");
    }

    fn waiting(&mut self, start: u64, acked: u64, target: u64) {
        self.0.set_length(target.saturating_sub(start));
        self.0.set_position(
            acked
                .saturating_sub(start)
                .min(target.saturating_sub(start)),
        );
        self.0.set_message("committed by the aggregator");
    }
}

async fn cmd_push(args: PushArgs) -> ExitCode {
    use gait_agent::capture::push::{self, NoProgress, PushError, PushOptions, PushReport};
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let options = PushOptions {
        wait: !args.no_wait,
        timeout: args.timeout,
    };
    let bar = (!args.json).then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Bar(bar)
    });
    let mut quiet = NoProgress;
    let mut bar = bar;
    let progress: &mut dyn push::Progress = match bar.as_mut() {
        Some(bar) => bar,
        None => &mut quiet,
    };
    let result = push::push(&config, &args.paths, options, progress).await;
    if let Some(bar) = &bar {
        bar.0.finish_and_clear();
    }
    let print = |report: &PushReport, error: Option<&PushError>| {
        if args.json {
            let mut value = serde_json::to_value(report).unwrap_or_default();
            if let (Some(e), Some(obj)) = (error, value.as_object_mut()) {
                obj.insert("error".into(), e.to_string().into());
                obj.insert("exit_code".into(), e.exit_code().into());
            }
            outln!("{value}");
            return;
        }
        for file in &report.files {
            match (&file.status[..], &file.reason) {
                ("invalid", Some(reason)) => {
                    eprintln!("gait-agent: {}: invalid: {reason}", file.file)
                }
                (status, Some(reason)) => {
                    outln!("{}: {status}: {reason}", file.file);
                }
                (status, None) => {
                    let signature = match file.signature_status.as_deref() {
                        Some("verified") => ", signature verified",
                        Some("skipped") => ", signed by a key this agent does not know",
                        Some("missing") => ", unsigned",
                        _ => "",
                    };
                    outln!(
                        "{}: {status} {} seq {}{signature}",
                        file.file,
                        file.kind.map_or("", |k| k.as_str()),
                        file.seq.unwrap_or(0),
                    );
                }
            }
        }
        outln!(
            "{} enqueued, {} already sent before, {} invalid, {} skipped; {}",
            report.count("enqueued"),
            report.count("duplicate"),
            report.count("invalid"),
            report.count("skipped") + report.count("not_artifact"),
            if report.committed {
                "the aggregator committed every record"
            } else if error.is_some() {
                "not committed"
            } else {
                "queued for the agent to send"
            }
        );
    };
    match result {
        Ok(report) => {
            print(&report, None);
            if report.any_invalid() {
                ExitCode::from(gait_runtime::exit::DATAERR)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            if let PushError::NotCommitted { report, .. } | PushError::NotUploaded { report, .. } =
                &e
            {
                print(report, Some(&e));
            } else if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            eprintln!("gait-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn cmd_outbox_export(args: OutboxExportArgs) -> ExitCode {
    use gait_agent::outbox_export;
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match outbox_export::export(&config, &args.out, args.after_seq).await {
        Ok((exported, via)) => {
            if args.json {
                let mut value = serde_json::to_value(&exported).unwrap_or_default();
                value["file"] = serde_json::json!(args.out);
                value["via"] = serde_json::json!(via);
                outln!("{value}");
            } else {
                let by = match via {
                    outbox_export::Via::Daemon => "by the running agent",
                    outbox_export::Via::Database => {
                        "from the agent database (no agent was running)"
                    }
                };
                outln!(
                    "{}: records {}..={} ({} records, {} bytes, sha256 {}) exported {by}; they stay in the \
                     outbox until the aggregator acknowledges them",
                    args.out.display(),
                    exported.first_seq,
                    exported.last_seq,
                    exported.count,
                    exported.bytes,
                    exported.sha256
                );
                if exported.remaining > 0 {
                    outln!(
                        "{} more records did not fit: export them with --after-seq {}",
                        exported.remaining,
                        exported.last_seq
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"file": args.out, "error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            eprintln!("gait-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn cmd_token(command: TokenCommand) -> ExitCode {
    let (args, rotate) = match command {
        TokenCommand::Rotate(args) => (args, true),
        TokenCommand::Path(args) => (args, false),
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let path = config.api_token_path();
    if !rotate {
        outln!("{}", path.display());
        return ExitCode::SUCCESS;
    }
    match local_api::token::rotate(&path) {
        Ok(token) => {
            // The token itself is a secret: it is in the file (0600), never on the terminal; its id is what
            // records name in `appended_by.token_id`.
            outln!(
                "new local API token (id {}) written to {}; producers must read it again (the old one is refused)",
                local_api::token::token_id(&token),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gait-agent: cannot write {}: {e}", path.display());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn cmd_quarantine(command: QuarantineCommand) -> ExitCode {
    let (args, export) = match command {
        QuarantineCommand::List(args) => (args, false),
        QuarantineCommand::Export(args) => (args, true),
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let read = gait_agent::db::AgentDb::open(config.db_path())
        .map_err(gait_agent::outbox::OutboxError::from)
        .and_then(|db| gait_agent::outbox::quarantine::read(&db));
    let (stats, records) = match read {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if export || args.json {
        let doc = serde_json::json!({
            "held": stats.held,
            "bytes": stats.bytes,
            "total": stats.total,
            "dropped": stats.dropped,
            "records": records.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        });
        return match serde_json::to_string_pretty(&doc) {
            Ok(text) => {
                outln!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gait-agent: cannot render the quarantine: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    outln!(
        "{} records held ({} bytes); {} quarantined since the database was created, {} dropped",
        stats.held,
        stats.bytes,
        stats.total,
        stats.dropped
    );
    for r in &records {
        if !outln!(
            "seq {}  {}  {:?}  {}: {}",
            r.record.seq,
            r.record.class,
            r.record.kind,
            r.code,
            r.message
        ) {
            break;
        }
    }
    ExitCode::SUCCESS
}

async fn cmd_status(args: StatusArgs) -> ExitCode {
    let endpoint = match args.endpoint() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("gait-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match local_api::fetch_status(endpoint, Duration::from_secs(5)).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => outln!("{text}"),
                    Err(e) => {
                        eprintln!("gait-agent: cannot render status: {e}");
                        return ExitCode::from(EXIT_FAILURE);
                    }
                };
            } else {
                outln!("{}", report.render_text().trim_end());
            }
            // A script or probe can rely on the exit code: 0 only when the agent can decide from a policy and
            // is not stale.
            if report.ready && !report.stale {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NOT_READY)
            }
        }
        Err(e) => {
            eprintln!("gait-agent: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
