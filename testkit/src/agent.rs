//! The real agent daemon (`gait_agent::daemon`) started in process: its certificate issued by the
//! aggregator's CA, its trust root the aggregator's registry key, its local API on `127.0.0.1:0`. Helpers drive
//! it through the local API the way a producer or `gait-agent status` does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gait_agent::config::{
    AggregatorConfig, Config, GateConfig, LocalApiConfig, OutboxConfig, PollConfig, TlsConfig,
    TrustConfig,
};
use gait_agent::daemon::{AgentState, Daemon, RunOptions, Shutdown, StatusReport};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{AgentCerts, PATIENCE, POLL_INTERVAL, RunningAggregator, Tenant, TestkitError};

/// How an agent is started by [`spawn_agent`].
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Bundle long-poll the agent asks for, in milliseconds.
    pub poll_wait_ms: u32,
    /// Outbox quota.
    pub outbox: OutboxConfig,
    /// Grace period of the drain on stop.
    pub grace: Duration,
    /// Local API section (connection cap, timeouts); `None` keeps the defaults on an ephemeral loopback port.
    pub local_api: Option<LocalApiConfig>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            poll_wait_ms: 1_000,
            outbox: OutboxConfig::default(),
            grace: Duration::from_secs(30),
            local_api: None,
        }
    }
}

/// A running agent daemon. Stop it with [`RunningAgent::stop`]; dropping it cancels its tasks without
/// waiting for them.
pub struct RunningAgent {
    daemon: Option<Daemon>,
    shutdown: CancellationToken,
    config: Config,
    grace: Duration,
    home: Option<Arc<tempfile::TempDir>>,
    http: reqwest::Client,
}

/// A stopped agent: its configuration and the directory holding its certificates and database, ready to
/// start again (the same identity, outbox and bundle cache).
#[derive(Debug, Clone)]
pub struct StoppedAgent {
    /// How it stopped.
    pub shutdown: Shutdown,
    /// Its configuration; change it before [`StoppedAgent::start`] to restart differently.
    pub config: Config,
    /// Grace period of the next stop.
    pub grace: Duration,
    home: Option<Arc<tempfile::TempDir>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("daemon", &self.daemon)
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Issues a certificate for `agent_id` in `tenant` from the aggregator's CA, trusts the aggregator's registry
/// key, and starts the real daemon dialling the aggregator. Returns once the local API listens (the agent
/// connects in the background; wait with [`RunningAgent::wait_status`]).
pub async fn spawn_agent(
    aggregator: &RunningAggregator,
    tenant: &Tenant,
    agent_id: &str,
    options: AgentOptions,
) -> Result<RunningAgent, TestkitError> {
    let home = tempfile::tempdir().map_err(|e| TestkitError::io("a temporary directory", e))?;
    let certs = aggregator
        .pki()
        .issue_agent(&home.path().join("tls"), tenant, agent_id)?;
    // A copy: the agent must keep its trust root when the aggregator's directory goes away.
    let registry_pub = home.path().join("registry.pub");
    let source = aggregator.registry_public_key();
    std::fs::copy(&source, &registry_pub).map_err(|e| TestkitError::io(source, e))?;
    let mut config = agent_config(aggregator.quic_addr(), &certs, &registry_pub, home.path());
    config.poll.wait_ms = options.poll_wait_ms;
    config.outbox = options.outbox;
    if let Some(local_api) = options.local_api {
        config.local_api = local_api;
    }
    RunningAgent::start_in(config, options.grace, Some(Arc::new(home))).await
}

/// A configuration for an agent dialling `aggregator` with `certs`, trusting `registry_public_key`, keeping
/// its data in `home/data`, its local API on an ephemeral loopback port and a 1 s long-poll.
pub fn agent_config(
    aggregator: SocketAddr,
    certs: &AgentCerts,
    registry_public_key: &Path,
    home: &Path,
) -> Config {
    Config {
        aggregator: AggregatorConfig {
            address: aggregator.to_string(),
            replicas: Vec::new(),
            server_name: "localhost".into(),
        },
        tls: TlsConfig {
            ca: certs.ca.clone(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        },
        trust: TrustConfig {
            registry_public_keys: vec![registry_public_key.to_owned()],
        },
        data_dir: home.join("data"),
        outbox: OutboxConfig::default(),
        local_api: LocalApiConfig {
            listen: "127.0.0.1:0".into(),
            ..LocalApiConfig::default()
        },
        poll: PollConfig { wait_ms: 1_000 },
        gate: GateConfig::default(),
        capture: Default::default(),
    }
}

impl StoppedAgent {
    /// Starts the agent again with [`StoppedAgent::config`].
    pub async fn start(self) -> Result<RunningAgent, TestkitError> {
        RunningAgent::start_in(self.config, self.grace, self.home).await
    }
}

impl RunningAgent {
    /// Starts the real daemon with `config` (which the caller built, e.g. pointing at a stand-in server).
    pub async fn start(config: Config, grace: Duration) -> Result<RunningAgent, TestkitError> {
        RunningAgent::start_in(config, grace, None).await
    }

    async fn start_in(
        config: Config,
        grace: Duration,
        home: Option<Arc<tempfile::TempDir>>,
    ) -> Result<RunningAgent, TestkitError> {
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(config.clone(), RunOptions { grace }, shutdown.clone()).await?;
        // Producers present the agent's local API token; the helpers' client always does.
        let token_path = config.api_token_path();
        let token = std::fs::read_to_string(&token_path)
            .map_err(|source| TestkitError::io(&token_path, source))?;
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|e| TestkitError::Identity(format!("local API token: {e}")))?;
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        gait_runtime::http::tls::install_ring_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()
            .map_err(|e| TestkitError::http("building the HTTP client", e))?;
        Ok(RunningAgent {
            daemon: Some(daemon),
            shutdown,
            config,
            grace,
            home,
            http,
        })
    }

    fn daemon(&self) -> &Daemon {
        // Only `stop` takes it, and it consumes `self`.
        self.daemon
            .as_ref()
            .unwrap_or_else(|| unreachable!("a RunningAgent always holds its daemon until stopped"))
    }

    /// The local API address.
    pub fn local_api(&self) -> SocketAddr {
        self.daemon().local_api_addr()
    }

    /// The agent's shared state (outbox, active bundle, status).
    pub fn state(&self) -> &Arc<AgentState> {
        self.daemon().state()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A directory that lives as long as this agent (and its restarts), for the test's own files; the data
    /// directory's parent when the harness created it.
    pub fn scratch_dir(&self) -> PathBuf {
        self.config
            .data_dir
            .parent()
            .map_or_else(|| self.config.data_dir.clone(), Path::to_owned)
    }

    /// The HTTP client the helpers use (no proxy).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Cancels the daemon and drains it.
    pub async fn stop(mut self) -> Result<StoppedAgent, TestkitError> {
        let daemon = self.daemon.take().ok_or(TestkitError::Stop {
            what: "agent",
            detail: "already stopped".into(),
        })?;
        self.shutdown.cancel();
        let shutdown = daemon.wait().await;
        Ok(StoppedAgent {
            shutdown,
            config: self.config.clone(),
            grace: self.grace,
            home: self.home.take(),
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReport, TestkitError> {
        let what = "GET /v1/status";
        let response = self
            .http
            .get(format!("http://{}/v1/status", self.local_api()))
            .send()
            .await
            .map_err(|e| TestkitError::http(what, e))?;
        let response = checked(what, response).await?;
        response
            .json()
            .await
            .map_err(|e| TestkitError::http(what, e))
    }

    /// Polls the status until `check` holds (at most [`crate::PATIENCE`]); the error shows the last status.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&StatusReport) -> bool,
    ) -> Result<StatusReport, TestkitError> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = self.status().await?;
            if check(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::Timeout {
                    what: what.to_owned(),
                    patience: PATIENCE,
                    last: format!("; last status: {status:#?}"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `POST /v1/records` with `body`; the status code and the JSON answer.
    pub async fn post_record(&self, body: &Value) -> Result<(u16, Value), TestkitError> {
        self.post_json("/v1/records", body).await
    }

    /// `POST /v1/gate/evaluate{query}` with `intent`; the status code and the JSON answer.
    pub async fn evaluate(
        &self,
        query: &str,
        intent: &Value,
    ) -> Result<(u16, Value), TestkitError> {
        self.post_json(&format!("/v1/gate/evaluate{query}"), intent)
            .await
    }

    /// `GET path` as text (e.g. `/metrics`, `/healthz`); a non-success status is an error.
    pub async fn get_text(&self, path: &str) -> Result<String, TestkitError> {
        let what = format!("GET {path}");
        let response = self
            .http
            .get(format!("http://{}{path}", self.local_api()))
            .send()
            .await
            .map_err(|e| TestkitError::http(what.clone(), e))?;
        let response = checked(&what, response).await?;
        response
            .text()
            .await
            .map_err(|e| TestkitError::http(what, e))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value), TestkitError> {
        let what = format!("POST {path}");
        let response = self
            .http
            .post(format!("http://{}{path}", self.local_api()))
            .json(body)
            .send()
            .await
            .map_err(|e| TestkitError::http(what.clone(), e))?;
        let status = response.status().as_u16();
        let answer = response
            .json()
            .await
            .map_err(|e| TestkitError::http(what, e))?;
        Ok((status, answer))
    }
}

async fn checked(
    what: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, TestkitError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(TestkitError::Status {
        what: what.to_owned(),
        status,
        body,
    })
}
