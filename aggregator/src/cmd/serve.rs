//! `gait-aggregator serve`: run the aggregator until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::app::{self, ServeConfig};
use gait_aggregator::config::Config;
use gait_runtime::Tasks;
use tokio_util::sync::CancellationToken;

use super::DataArgs;

/// Flags of `serve`; each overrides one key of the configuration (named in brackets).
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// UDP address agents connect to (QUIC + mutual TLS) [key: quic.listen, env: GAIT_QUIC_LISTEN, default:
    /// 127.0.0.1:7443].
    #[arg(long)]
    pub quic_listen: Option<SocketAddr>,
    /// TCP address of the HTTP API (/healthz, /readyz, /metrics, /v1/...) [key: http.listen, env:
    /// GAIT_HTTP_LISTEN, default: 127.0.0.1:7080].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Serve the HTTP API over HTTPS (the deployment PKI's server certificate unless http.tls.cert_file is
    /// set); false is allowed only on a loopback --http-listen [key: http.tls.enabled, env: GAIT_HTTP_TLS,
    /// default: true off loopback, false on loopback].
    #[arg(long, action = clap::ArgAction::Set)]
    pub http_tls: Option<bool>,
    /// DNS names / IPs for the server certificate when the CA is created on first start (repeatable); on a
    /// later start a name the certificate lacks is reported at WARN (`pki reissue-server` adds it under the same
    /// CA) [key: pki.server_names, default: localhost, 127.0.0.1].
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Kernel receive/send buffer for the QUIC UDP socket, in bytes. A large buffer keeps handshakes from being
    /// dropped when a whole fleet reconnects after a restart; Linux caps it at net.core.rmem_max (the granted
    /// size is logged at start). 0 keeps the system default [key: quic.udp_buffer_bytes, env:
    /// GAIT_UDP_BUFFER_BYTES, default: 8388608].
    #[arg(long)]
    pub udp_buffer_bytes: Option<usize>,
    /// Handshakes per second the fleet should come back at after this aggregator stops. At shutdown every agent
    /// is told to spread its first redial over (connected agents / rate) seconds, so a restart meets a steady
    /// stream instead of a herd. Size it to what the host sustains (about 1,000 per core; see
    /// docs/benchmarks.md) [key: quic.reconnect_rate, env: GAIT_RECONNECT_RATE, default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub reconnect_rate: Option<u32>,
    /// Hand agents TLS 1.3 session tickets so their reconnects (also after a restart) resume without a
    /// certificate handshake, about a quarter less CPU on both ends than a full one. The ticket secret is
    /// `keys/tls-ticket.key`; `false` makes every connection a full mutual-TLS handshake [key:
    /// quic.session_tickets, env: GAIT_SESSION_TICKETS, default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    pub session_tickets: Option<bool>,
    /// Seconds to wait for in-flight work after SIGTERM/SIGINT [key: shutdown.grace_seconds, default: 10].
    #[arg(long)]
    pub grace_seconds: Option<u64>,
}

impl ServeArgs {
    /// `config` with these flags applied, validated again.
    pub fn apply(&self, config: Config) -> anyhow::Result<Config> {
        let mut config = self.data.apply(config)?;
        if let Some(addr) = self.quic_listen {
            config.quic.listen = addr;
        }
        if let Some(addr) = self.http_listen {
            config.http.listen = addr;
        }
        if let Some(enabled) = self.http_tls {
            config.http.tls.enabled = Some(enabled);
        }
        if !self.server_names.is_empty() {
            config.pki.server_names = self.server_names.clone();
        }
        if let Some(n) = self.udp_buffer_bytes {
            config.quic.udp_buffer_bytes = n;
        }
        if let Some(n) = self.reconnect_rate {
            config.quic.reconnect_rate = n;
        }
        if let Some(b) = self.session_tickets {
            config.quic.session_tickets = b;
        }
        if let Some(s) = self.grace_seconds {
            config.shutdown.grace_seconds = s;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Starts the aggregator, stops it at SIGTERM/SIGINT (or when an essential task fails) and maps the drain to the
/// exit code: 0 after a clean stop, 1 when a task failed or in-flight work did not finish in the grace time.
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let tasks = Tasks::new(shutdown);
    tasks.spawn(
        "signals",
        gait_runtime::cancel_on_signal(tasks.token().clone()),
    );
    let running = match app::start(ServeConfig::from_config(config), tasks.clone()).await {
        Ok(running) => running,
        Err(e) => {
            tasks.token().cancel();
            return Err(e).context("aggregator failed to start");
        }
    };
    gait_runtime::outln!(
        "gait-aggregator serving: quic={} http={}://{}",
        running.quic_addr,
        if running.http_tls { "https" } else { "http" },
        running.http_addr
    );
    let grace = Duration::from_secs(config.shutdown.grace_seconds);
    Ok(ExitCode::from(running.wait(grace).await.exit_code()))
}
