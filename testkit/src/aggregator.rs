//! The real aggregator app (`gait_aggregator::app`, the composition root) started in process on
//! `127.0.0.1:0`, with accessors for what tests check (addresses, admin token, store, data directory), a
//! `publish` through the real HTTP API, and a clean stop (cancel + drain). A restart keeps the data directory
//! and both ports, so agents configured with the old address find it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gait_aggregator::app::{self, Running, ServeConfig, ServeError};
use gait_aggregator::config::TlsFiles;
use gait_runtime::Tasks;
use gait_runtime::http::client::Client;
use gait_store::{AgentFilter, AgentRow, GapRow, Revocation, Store, StoredRecord};
use tokio_util::sync::CancellationToken;

use crate::{AgentKey, PATIENCE, POLL_INTERVAL, Pki, Tenant, TestkitError};

/// How the aggregator is started. `Default` is a fresh temporary data directory, ephemeral ports, trust
/// domain `gait.local`.
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// Data directory (database, PKI, keys, admin token); `None` creates a temporary one that lives as long
    /// as the aggregator and its restarts.
    pub data_dir: Option<PathBuf>,
    /// QUIC address; port 0 picks a free one.
    pub quic_listen: SocketAddr,
    /// HTTP address; port 0 picks a free one.
    pub http_listen: SocketAddr,
    /// SPIFFE trust domain of the CA created on first start.
    pub trust_domain: String,
    /// Issue TLS session tickets.
    pub session_tickets: bool,
    /// How often revocations are reloaded from the store.
    pub revocation_refresh: Duration,
    /// Grace period of the drain on stop.
    pub grace: Duration,
    /// Connection cap and timeouts of the HTTP API; `None` keeps the `http.*` defaults.
    pub http_limits: Option<gait_runtime::http::Limits>,
    /// Serve the HTTP API over HTTPS with the PKI's server certificate (`http.tls.enabled: true`); the
    /// harness's own calls then verify it against the deployment CA.
    pub https: bool,
    /// The blob store and artifact uploads (`evidence.*`); the default keeps blobs under the data directory.
    pub evidence: gait_aggregator::evidence::blob::EvidenceConfig,
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        AggregatorOptions {
            data_dir: None,
            quic_listen: loopback,
            http_listen: loopback,
            trust_domain: gait_aggregator::pki::DEFAULT_TRUST_DOMAIN.to_owned(),
            session_tickets: true,
            revocation_refresh: Duration::from_millis(200),
            grace: Duration::from_secs(30),
            http_limits: None,
            https: false,
            evidence: Default::default(),
        }
    }
}

/// What to publish for one scope: policy files and the optional staleness rule.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Publish {
    /// Policy file name -> Gait policy YAML.
    pub policies: BTreeMap<String, String>,
    /// Seconds an agent may enforce without contact before it counts as stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_offline_seconds: Option<u64>,
    /// `keep` or `fail_closed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_stale: Option<String>,
    /// Let local API callers ask for `simulate` (signed into the bundle's settings).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_caller_simulate: bool,
    /// Have the agents upload artifact bytes (signed into the bundle's settings).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub upload_artifacts: bool,
}

impl Publish {
    /// One policy file.
    pub fn policy(name: &str, yaml: &str) -> Self {
        Publish {
            policies: BTreeMap::from([(name.to_owned(), yaml.to_owned())]),
            ..Publish::default()
        }
    }

    /// With this staleness rule (`on_stale` is `keep` or `fail_closed`).
    pub fn staleness(mut self, max_offline_seconds: u64, on_stale: &str) -> Self {
        self.max_offline_seconds = Some(max_offline_seconds);
        self.on_stale = Some(on_stale.to_owned());
        self
    }

    /// Letting local API callers ask for `simulate`.
    pub fn allow_caller_simulate(mut self) -> Self {
        self.allow_caller_simulate = true;
        self
    }

    /// Having the agents upload artifact bytes.
    pub fn upload_artifacts(mut self) -> Self {
        self.upload_artifacts = true;
        self
    }
}

/// What the aggregator answered to a publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Published {
    /// The new bundle's epoch.
    pub epoch: u64,
    /// The new bundle's digest (hex).
    pub digest: String,
}

/// A running aggregator. Stop it with [`RunningAggregator::stop`]; dropping it cancels its tasks without
/// waiting for them.
pub struct RunningAggregator {
    running: Option<Running>,
    options: AggregatorOptions,
    data_dir: PathBuf,
    tmp: Option<Arc<tempfile::TempDir>>,
    api: Client,
}

impl std::fmt::Debug for RunningAggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAggregator")
            .field("quic_addr", &self.running.as_ref().map(|r| r.quic_addr))
            .field("http_addr", &self.running.as_ref().map(|r| r.http_addr))
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for RunningAggregator {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.tasks().token().cancel();
        }
    }
}

/// A stopped aggregator: its data directory (kept alive when temporary) and the ports it had.
#[derive(Debug)]
pub struct StoppedAggregator {
    options: AggregatorOptions,
    data_dir: PathBuf,
    tmp: Option<Arc<tempfile::TempDir>>,
}

impl StoppedAggregator {
    /// The data directory it ran on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts it again on the same data directory and ports (retrying while the old sockets are released).
    pub async fn start(self) -> Result<RunningAggregator, TestkitError> {
        start(self.options, self.data_dir, self.tmp).await
    }
}

/// Starts the real aggregator app with `options`; returns once both endpoints are bound.
pub async fn spawn_aggregator(
    options: AggregatorOptions,
) -> Result<RunningAggregator, TestkitError> {
    let (data_dir, tmp) = match &options.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp =
                tempfile::tempdir().map_err(|e| TestkitError::io("a temporary directory", e))?;
            (tmp.path().join("aggregator"), Some(Arc::new(tmp)))
        }
    };
    start(options, data_dir, tmp).await
}

async fn start(
    options: AggregatorOptions,
    data_dir: PathBuf,
    tmp: Option<Arc<tempfile::TempDir>>,
) -> Result<RunningAggregator, TestkitError> {
    let config = ServeConfig {
        quic_listen: options.quic_listen,
        http_listen: options.http_listen,
        trust_domain: options.trust_domain.clone(),
        session_tickets: options.session_tickets,
        revocation_refresh: options.revocation_refresh,
        // The kernel default is plenty for a handful of agents, and asking for more only logs warnings.
        udp_buffer_bytes: 0,
        http_limits: options
            .http_limits
            .unwrap_or(ServeConfig::embedded(&data_dir).http_limits),
        http_tls: options.https.then(|| TlsFiles {
            cert: data_dir
                .join("pki")
                .join(gait_aggregator::pki::SERVER_CERT_FILE),
            key: data_dir
                .join("pki")
                .join(gait_aggregator::pki::SERVER_KEY_FILE),
            from_pki: true,
        }),
        evidence: options.evidence.clone(),
        ..ServeConfig::embedded(data_dir.clone())
    };
    // A restart binds the previous ports again; the old sockets may still be on their way out.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let running = loop {
        match app::start(config.clone(), Tasks::new(CancellationToken::new())).await {
            Ok(running) => break running,
            Err(ServeError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // The CA exists now: the aggregator made it on first start.
    let tls = if options.https {
        let ca = data_dir
            .join("pki")
            .join(gait_aggregator::pki::CA_CERT_FILE);
        Some(
            gait_runtime::http::tls::client_config(&ca).map_err(|e| TestkitError::Answer {
                what: "loading the deployment CA".to_owned(),
                detail: e.to_string(),
            })?,
        )
    } else {
        None
    };
    Ok(RunningAggregator {
        running: Some(running),
        options,
        data_dir,
        tmp,
        api: Client::new(tls, PATIENCE),
    })
}

impl RunningAggregator {
    /// The QUIC endpoint agents dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.running().quic_addr
    }

    /// The HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        self.running().http_addr
    }

    /// Base URL of the HTTP API: `https://127.0.0.1:<port>` when it serves HTTPS, else `http://...`.
    pub fn api_url(&self) -> String {
        let scheme = if self.running().http_tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http_addr())
    }

    /// An HTTP(S) client that trusts the deployment CA (when the API is HTTPS), as the CLI does.
    pub fn api_client(&self) -> &Client {
        &self.api
    }

    /// Sends `method path` with the admin token (and `body` as JSON) and reads the whole answer.
    pub async fn api_request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<http::Response<bytes::Bytes>, TestkitError> {
        let what = format!("{method} {path}");
        let mut headers = http::HeaderMap::new();
        let bearer = http::HeaderValue::from_str(&format!("Bearer {}", self.admin_token()))
            .map_err(|e| TestkitError::Answer {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        headers.insert(http::header::AUTHORIZATION, bearer);
        let bytes = match body {
            Some(body) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                bytes::Bytes::from(body.to_string())
            }
            None => bytes::Bytes::new(),
        };
        let url = format!("{}{path}", self.api_url());
        self.api
            .request(method, &url, headers, bytes)
            .await
            .map_err(|source| TestkitError::Api { what, source })
    }

    /// The bearer token of the HTTP API.
    pub fn admin_token(&self) -> &str {
        &self.running().admin_token
    }

    /// The store ingest commits to.
    pub fn store(&self) -> &Store {
        self.running().store()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The deployment CA the aggregator created on first start (`<data_dir>/pki`).
    pub fn pki(&self) -> Pki {
        Pki::open(&self.data_dir.join("pki"))
    }

    /// The registry's public key file: what an agent's `trust.registry_public_keys` lists.
    pub fn registry_public_key(&self) -> PathBuf {
        self.data_dir
            .join("keys")
            .join(gait_aggregator::registry::REGISTRY_PUB_FILE)
    }

    /// Publishes a bundle for `tenant` through the HTTP API, as an operator would.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        publish: &Publish,
    ) -> Result<Published, TestkitError> {
        let what = format!("publish for {tenant}");
        let path = format!(
            "/v1/orgs/{}/projects/{}/envs/{}/bundles",
            tenant.org, tenant.project, tenant.env
        );
        let body = serde_json::to_value(publish).map_err(|e| TestkitError::Answer {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let response = self
            .api_request(http::Method::POST, &path, Some(&body))
            .await?;
        let status = response.status().as_u16();
        if status != 201 {
            let body = String::from_utf8_lossy(response.body()).into_owned();
            return Err(TestkitError::Status { what, status, body });
        }
        serde_json::from_slice(response.body()).map_err(|e| TestkitError::Answer {
            what,
            detail: e.to_string(),
        })
    }

    /// Every record the store holds for `agent`, by seq.
    pub async fn records(&self, agent: &AgentKey) -> Result<Vec<StoredRecord>, TestkitError> {
        let mut all: Vec<StoredRecord> = Vec::new();
        loop {
            let after = all.last().map_or(0, |r| r.seq);
            let page = self
                .store()
                .records(agent, after, gait_store::MAX_RECORDS_PAGE)
                .await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// The gaps the store recorded for `agent`.
    pub async fn gaps(&self, agent: &AgentKey) -> Result<Vec<GapRow>, TestkitError> {
        Ok(self.store().gaps(agent).await?)
    }

    /// What the store knows about `agent` (presence, bundle reports, committed head), if it ever connected.
    pub async fn agent(&self, agent: &AgentKey) -> Result<Option<AgentRow>, TestkitError> {
        let filter = AgentFilter {
            org: agent.tenant.org.clone(),
            project: Some(agent.tenant.project.clone()),
            env: Some(agent.tenant.env.clone()),
            after: None,
            limit: None,
        };
        let rows = self.store().list_agents(&filter).await?;
        Ok(rows.into_iter().find(|r| r.agent_id == agent.agent_id))
    }

    /// Revokes the certificate in `cert_pem` (of `agent`) in the store; the aggregator refuses it once its
    /// next revocation reload ran (every [`AggregatorOptions::revocation_refresh`]) and closes its live
    /// connection.
    pub async fn revoke(&self, agent: &AgentKey, cert_pem: &Path) -> Result<(), TestkitError> {
        let serial = gait_aggregator::pki::cert_serial_hex(cert_pem)?;
        let cert_serial = serial
            .parse()
            .map_err(|e: gait_identity::CertSerialError| TestkitError::Identity(e.to_string()))?;
        let revocation = Revocation {
            cert_serial,
            agent: agent.clone(),
            reason: "revoked by the test".into(),
            revoked_by: "gait-testkit".into(),
        };
        self.store()
            .revoke(&revocation, gait_aggregator::clock::unix_ms())
            .await?;
        Ok(())
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, TestkitError> {
        let response = self
            .api_request(http::Method::GET, "/metrics", None)
            .await?;
        let status = response.status().as_u16();
        let body = String::from_utf8_lossy(response.body()).into_owned();
        if status != 200 {
            return Err(TestkitError::Status {
                what: "GET /metrics".into(),
                status,
                body,
            });
        }
        Ok(body)
    }

    /// The value of the sample `series` (name with its labels, exactly as rendered, e.g.
    /// `gait_aggregator_connections_refused_total{stage="handshake"}`) in `GET /metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64, TestkitError> {
        Ok(crate::metric_series(&self.metrics().await?, series).unwrap_or(0.0))
    }

    /// Cancels every task, drains them (at most the configured grace) and closes the store. An unclean drain
    /// or a failed essential task is an error. The returned [`StoppedAggregator`] keeps the data directory and
    /// both ports, to start again.
    pub async fn stop(mut self) -> Result<StoppedAggregator, TestkitError> {
        let running = self.running.take().ok_or(TestkitError::Stop {
            what: "aggregator",
            detail: "already stopped".into(),
        })?;
        let mut options = self.options.clone();
        options.quic_listen = running.quic_addr;
        options.http_listen = running.http_addr;
        running.tasks().token().cancel();
        let drain = running.wait(options.grace).await;
        if !drain.clean || drain.failure.is_some() {
            return Err(TestkitError::Stop {
                what: "aggregator",
                detail: format!("{drain:?}"),
            });
        }
        Ok(StoppedAggregator {
            options,
            data_dir: self.data_dir.clone(),
            tmp: self.tmp.take(),
        })
    }

    /// Stops, then starts the aggregator again on the same data directory and the same ports.
    pub async fn restart(self) -> Result<RunningAggregator, TestkitError> {
        self.stop().await?.start().await
    }

    fn running(&self) -> &Running {
        // Only `stop` takes it, and it consumes `self`.
        self.running.as_ref().unwrap_or_else(|| {
            unreachable!("a RunningAggregator always holds its app until stopped")
        })
    }
}
