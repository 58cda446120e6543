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

/// Exit code: the command failed at runtime.
const EXIT_FAILURE: u8 = 1;
/// Exit code: the configuration (file, certificates, keys) is unusable (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit code: the local agent could not be reached (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

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
    /// Records the aggregator refused for good, kept in the outbox quarantine (reads the database; stop
    /// the agent first).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
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
struct StatusArgs {
    /// Print the raw JSON status.
    #[arg(long)]
    json: bool,
    /// Address of the agent's local API.
    #[arg(long, default_value = gait_agent::config::DEFAULT_LOCAL_API)]
    api: SocketAddr,
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
    // Gait-compatible commands run before logging and the async runtime are set up (process latency).
    if let Some(code) = gait_agent::gaitcli::run_from_env() {
        return code;
    }
    let cli = Cli::parse();
    if let Err(e) = init_tracing(cli.log_format, &cli.log_level) {
        eprintln!("gait-agent: invalid --log-level {:?}: {e}", cli.log_level);
        return ExitCode::from(EXIT_CONFIG);
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
            Command::Quarantine(command) => cmd_quarantine(command),
            Command::Gait(command) => gait_agent::gaitcli::run(command),
        }
    })
}

fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| e.to_string())
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
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let options = RunOptions {
        grace: args.grace_period,
    };
    let result = daemon::run_with(config, options, shutdown).await;
    signals.abort();
    match result {
        Ok(_) => ExitCode::SUCCESS,
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

/// Cancels `token` on SIGINT or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
    token.cancel();
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
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gait-agent: cannot render the quarantine: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    println!(
        "{} records held ({} bytes); {} quarantined since the database was created, {} dropped",
        stats.held, stats.bytes, stats.total, stats.dropped
    );
    for r in &records {
        println!(
            "seq {}  {}  {:?}  {}: {}",
            r.record.seq, r.record.class, r.record.kind, r.code, r.message
        );
    }
    ExitCode::SUCCESS
}

async fn cmd_status(args: StatusArgs) -> ExitCode {
    match local_api::fetch_status(args.api, Duration::from_secs(5)).await {
        Ok(report) if args.json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gait-agent: cannot render status: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Ok(report) => {
            print!("{}", report.render_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gait-agent: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
