//! `gait-aggregator`: the buyer-hosted control plane. Thin entry point: parse the command line, set up logging,
//! call the library, map errors to exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gait_aggregator::app as serve;

mod cmd;
use cmd::pki as cli;
use tokio_util::sync::CancellationToken;

/// Gait fleet aggregator: mutual-TLS QUIC ingest for gait-agents, signed policy bundles, fleet inventory.
///
/// Quick start on embedded defaults (SQLite and a private CA under ./gait-data):
///
///   gait-aggregator serve
///
///   gait-aggregator pki issue-agent --org acme --project web --env prod --agent-id a1 --out ./agent-a1
///
///   gait-aggregator publish --org acme --project web --env prod --policy policy.yaml
#[derive(Parser, Debug)]
#[command(
    name = "gait-aggregator",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GAIT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `gait_aggregator=debug`.
    #[arg(long, global = true, default_value = "info", env = "GAIT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the aggregator: QUIC ingest for agents and the HTTP API. Creates the data directory, a private CA,
    /// the registry signing key and an admin token on first start.
    Serve(ServeArgs),
    /// Manage the deployment's private CA: create it, issue agent certificates, revoke them.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Sign and publish policy files as the next bundle of an org/project/environment (through the HTTP API).
    Publish(cli::PublishArgs),
    /// List agents of an org with last-seen time, address, version and bundle versions (through the HTTP API).
    Agents(cli::AgentsArgs),
    /// Create or upgrade the database schema and exit.
    Migrate(DataArgs),
}

#[derive(Args, Debug, Clone)]
struct DataArgs {
    /// Data directory (SQLite database, PKI, keys, admin token).
    #[arg(long, default_value = "./gait-data", env = "GAIT_DATA_DIR")]
    data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user@host/db`); the default is SQLite in the data directory.
    #[arg(long, env = "GAIT_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// UDP address agents connect to (QUIC + mutual TLS).
    #[arg(long, default_value = "127.0.0.1:7443", env = "GAIT_QUIC_LISTEN")]
    quic_listen: SocketAddr,
    /// TCP address of the HTTP API (/healthz, /readyz, /metrics, /v1/...).
    #[arg(long, default_value = "127.0.0.1:7080", env = "GAIT_HTTP_LISTEN")]
    http_listen: SocketAddr,
    /// DNS names / IPs for the server certificate when the CA is created on first start (repeatable).
    #[arg(long = "server-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    server_names: Vec<String>,
    /// Kernel receive/send buffer for the QUIC UDP socket, in bytes. A large buffer keeps handshakes from being
    /// dropped when a whole fleet reconnects after a restart; Linux caps it at net.core.rmem_max (the granted
    /// size is logged at start). 0 keeps the system default.
    #[arg(long, default_value_t = serve::DEFAULT_UDP_BUFFER_BYTES, env = "GAIT_UDP_BUFFER_BYTES")]
    udp_buffer_bytes: usize,
    /// Handshakes per second the fleet should come back at after this aggregator stops. At shutdown every agent
    /// is told to spread its first redial over (connected agents / rate) seconds, so a restart meets a steady
    /// stream instead of a herd. Size it to what the host sustains (about 1,000 per core; see
    /// docs/benchmarks.md).
    #[arg(long, default_value_t = gait_aggregator::ingest::DEFAULT_RECONNECT_RATE, env = "GAIT_RECONNECT_RATE",
        value_parser = clap::value_parser!(u32).range(1..))]
    reconnect_rate: u32,
    /// Hand agents TLS 1.3 session tickets so their reconnects (also after a restart) resume without a
    /// certificate handshake, about a quarter less CPU on both ends than a full one. The ticket secret is `keys/tls-ticket.key`;
    /// `false` makes every connection a full mutual-TLS handshake.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "GAIT_SESSION_TICKETS")]
    session_tickets: bool,
    /// Seconds to wait for in-flight work after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    grace_seconds: u64,
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create the CA and the server certificate under <data-dir>/pki.
    Init(cli::PkiInitArgs),
    /// Issue an agent client certificate carrying its org/project/env/agent id, plus a ready agent.yaml.
    IssueAgent(cli::IssueAgentArgs),
    /// Revoke an agent certificate: refused at its next handshake, live connections closed within seconds.
    Revoke(cli::RevokeArgs),
}

fn init_tracing(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    // Colour only on a terminal: a log file or journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(cli.log_format, &cli.log_level) {
        eprintln!(
            "error: invalid --log-level / GAIT_LOG {:?}: {e} (a tracing filter such as `info` or `info,gait_aggregator=debug`)",
            cli.log_level
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let mut config = serve::ServeConfig::embedded(args.data.data_dir);
            config.database_url = args.data.database_url;
            config.quic_listen = args.quic_listen;
            config.http_listen = args.http_listen;
            config.server_names = args.server_names;
            config.udp_buffer_bytes = args.udp_buffer_bytes;
            config.reconnect_rate = args.reconnect_rate;
            config.session_tickets = args.session_tickets;
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            let running = serve::start(config, shutdown)
                .await
                .context("aggregator failed to start")?;
            println!(
                "gait-aggregator serving: quic={} http=http://{}",
                running.quic_addr, running.http_addr
            );
            let clean = running.wait(Duration::from_secs(args.grace_seconds)).await;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Pki(PkiCommand::Init(args)) => cli::pki_init(args),
        Command::Pki(PkiCommand::IssueAgent(args)) => cli::issue_agent(args),
        Command::Pki(PkiCommand::Revoke(args)) => cli::revoke(args).await,
        Command::Publish(args) => cli::publish(args).await,
        Command::Agents(args) => cli::agents(args).await,
        Command::Migrate(args) => {
            let config = serve::ServeConfig {
                database_url: args.database_url,
                ..serve::ServeConfig::embedded(args.data_dir)
            };
            std::fs::create_dir_all(&config.data_dir)?;
            let store = gait_store::Store::connect(&config.effective_database_url()).await?;
            println!("schema up to date ({})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancel `token` on SIGINT or SIGTERM.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
