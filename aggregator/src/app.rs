//! `gait-aggregator serve`: wires the store, registry, QUIC ingest and HTTP API together and runs them until
//! shutdown.
//!
//! Embedded defaults need no configuration: everything lives under the data directory (`./gait-data`): the
//! SQLite database `aggregator.db`, the PKI (`pki/`, created on first start when absent), the registry signing
//! key (`keys/registry.key`), the replay report key (`keys/replay.key`), the QUIC stateless-reset and TLS session-ticket secrets (`keys/quic-reset.key`,
//! `keys/tls-ticket.key`) and the admin token (`admin.token`). PostgreSQL is selected with `--database-url
//! postgres://...`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gait_runtime::{Drain, Tasks};
use gait_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{AppState, router};
use crate::auth::Authorizer;
use crate::config::Config;
use crate::ingest::tickets::SessionTickets;
use crate::ingest::tls::{RevocationSet, TransportTuning, server_config};
use crate::ingest::{IngestLimits, IngestState};
use crate::metrics::Metrics;
use crate::pki;
use crate::registry::{BundleDefaults, Registry};
use crate::secrets::{self, Access};

/// Name of the admin token file inside the data directory.
pub use crate::config::ADMIN_TOKEN_FILE;
/// Name of the SQLite database file inside the data directory.
pub use crate::config::SQLITE_FILE;

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Directory holding the embedded database, PKI, keys and admin token.
    pub data_dir: PathBuf,
    /// `postgres://...` to use PostgreSQL; `None` = SQLite file in the data directory.
    pub database_url: Option<String>,
    /// UDP address of the agent-facing QUIC endpoint.
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTP API.
    pub http_listen: SocketAddr,
    /// Connection cap and timeouts of the HTTP API (`http.*`).
    pub http_limits: gait_runtime::http::Limits,
    /// Certificate and key of the HTTPS API (`http.tls.*`); `None` serves plain HTTP (loopback only, which
    /// the configuration enforces).
    pub http_tls: Option<crate::config::TlsFiles>,
    /// Server names put in the server certificate when the PKI is created on first start.
    pub server_names: Vec<String>,
    /// SPIFFE trust domain of the CA when the PKI is created on first start.
    pub trust_domain: String,
    /// Defaults for published bundles.
    pub bundle_defaults: BundleDefaults,
    /// QUIC transport tuning.
    pub transport: TransportTuning,
    /// How often the revocation list is reloaded from the store.
    pub revocation_refresh: Duration,
    /// Receive and send buffer asked of the kernel for the QUIC UDP socket, in bytes. Large enough to hold the
    /// burst of handshakes when a whole fleet reconnects; Linux caps it at `net.core.rmem_max`/`wmem_max`.
    pub udp_buffer_bytes: usize,
    /// Handshakes per second the fleet is asked to reconnect at after a shutdown (the close reason announces a
    /// redial window of connections / rate).
    pub reconnect_rate: u32,
    /// Handshakes worked on at once before attempts are refused (`quic.max_handshakes_in_flight`).
    pub max_handshakes_in_flight: usize,
    /// Longest a handshake may hold its slot ([`crate::ingest::admission::HANDSHAKE_DEADLINE`]; tests lengthen
    /// it to hold a slot on purpose).
    pub handshake_deadline: Duration,
    /// Longest an attempt waits for a handshake slot ([`crate::ingest::admission::MAX_WAIT`]; tests lengthen it).
    pub handshake_queue_wait: Duration,
    /// Issue TLS session tickets (secret in `keys/tls-ticket.key`) so agents resume after a restart.
    pub session_tickets: bool,
    /// Largest record payload stored (`ingest.max_record_payload_bytes`); larger records are refused.
    pub max_record_payload_bytes: usize,
    /// Who may call the HTTP API (`auth.*`): the admin token's powers and the config file's role bindings.
    pub auth: crate::config::AuthConfig,
    /// The audit log's origin (`audit.origin`); `None` = `gait-aggregator/<trust_domain>`.
    pub audit_origin: Option<String>,
    /// How often a checkpoint of the audit log is signed while it grows (`audit.checkpoint_interval_seconds`).
    pub audit_checkpoint_interval: Duration,
    /// Join tokens, enrollment and renewal (`enroll.*`).
    pub enroll: crate::enroll::EnrollSettings,
    /// The config file's approval policies (`approvals.policies`), kept in force at start.
    pub approval_policies: Vec<crate::config::ApprovalPolicyConfig>,
    /// Where artifact bytes are kept and how agents upload them (`evidence.*`).
    pub evidence: crate::evidence::blob::EvidenceConfig,
    /// Environment names fleet analytics count as production (`analysis.production_envs`).
    pub production_envs: Vec<String>,
    /// Longest wait of folded decisions for the call merge (`analysis.call_merge_lag_seconds`).
    pub call_merge_lag: Duration,
}

/// Default [`ServeConfig::udp_buffer_bytes`]: 8 MiB.
pub use crate::config::DEFAULT_UDP_BUFFER_BYTES;

impl ServeConfig {
    /// Embedded defaults rooted at `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            http_limits: crate::config::HttpConfig::default().limits(),
            http_tls: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            trust_domain: pki::DEFAULT_TRUST_DOMAIN.to_owned(),
            bundle_defaults: BundleDefaults::default(),
            transport: TransportTuning::default(),
            revocation_refresh: Duration::from_secs(1),
            udp_buffer_bytes: DEFAULT_UDP_BUFFER_BYTES,
            reconnect_rate: crate::ingest::DEFAULT_RECONNECT_RATE,
            max_handshakes_in_flight: crate::ingest::admission::DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            handshake_deadline: crate::ingest::admission::HANDSHAKE_DEADLINE,
            handshake_queue_wait: crate::ingest::admission::MAX_WAIT,
            session_tickets: true,
            max_record_payload_bytes: gait_wire::limits::MAX_PAYLOAD_BYTES,
            auth: crate::config::AuthConfig::default(),
            audit_origin: None,
            audit_checkpoint_interval: crate::audit::DEFAULT_CHECKPOINT_INTERVAL,
            enroll: crate::enroll::EnrollSettings::default(),
            approval_policies: Vec::new(),
            evidence: Default::default(),
            production_envs: crate::config::AnalysisConfig::default().production_envs,
            call_merge_lag: crate::analysis::upkeep::MERGE_LAG,
        }
    }

    /// What `serve` runs with under `config` (the file, the environment and the flags already merged).
    pub fn from_config(config: &Config) -> Self {
        Self {
            database_url: config.database.url.clone(),
            quic_listen: config.quic.listen,
            http_listen: config.http.listen,
            http_limits: config.http.limits(),
            http_tls: config.http_tls_files(),
            server_names: config.pki.server_names.clone(),
            trust_domain: config.pki.trust_domain.clone(),
            udp_buffer_bytes: config.quic.udp_buffer_bytes,
            reconnect_rate: config.quic.reconnect_rate,
            max_handshakes_in_flight: config.quic.max_handshakes_in_flight,
            handshake_deadline: crate::ingest::admission::HANDSHAKE_DEADLINE,
            handshake_queue_wait: crate::ingest::admission::MAX_WAIT,
            session_tickets: config.quic.session_tickets,
            max_record_payload_bytes: config.ingest.max_record_payload_bytes,
            auth: config.auth.clone(),
            audit_origin: Some(config.audit_origin()),
            audit_checkpoint_interval: Duration::from_secs(
                config.audit.checkpoint_interval_seconds,
            ),
            enroll: config.enroll.settings(),
            approval_policies: config.approvals.policies.clone(),
            evidence: config.evidence.clone(),
            production_envs: config.analysis.production_envs.clone(),
            call_merge_lag: config.analysis.call_merge_lag(),
            ..Self::embedded(config.data_dir.clone())
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    pub fn key_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// The database URL in force: the configured one or the SQLite file under the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(SQLITE_FILE).display()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] gait_store::StoreError),
    #[error("pki: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("tls: {0}")]
    Tls(#[from] crate::ingest::tls::TlsError),
    #[error("tls: {0}")]
    Pem(#[from] crate::pki::pem::PemError),
    #[error(
        "http.tls: {source}; by default the HTTPS API presents the deployment PKI's server certificate \
         (<data_dir>/pki/server.pem, made by `gait-aggregator pki init`); set http.tls.cert_file and \
         http.tls.key_file to use another"
    )]
    HttpTls {
        #[source]
        source: gait_runtime::http::tls::TlsConfigError,
    },
    #[error(
        "http.listen: {addr} is not a loopback address and the HTTP API has no TLS: plain HTTP is served only \
         on 127.0.0.1 or ::1; enable http.tls (the default off loopback) or listen on a loopback address"
    )]
    PlainHttpOffLoopback { addr: SocketAddr },
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Oidc(#[from] crate::auth::oidc::OidcSetupError),
    /// The JWKS file (`auth.oidc.jwks_file`) is unreadable or invalid at start.
    #[error("auth.oidc.jwks_file: {detail}")]
    OidcKeys { detail: String },
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("approvals: {0}")]
    ApprovalKey(#[from] crate::approval::issue::KeyError),
    #[error("replay: {0}")]
    Replay(#[from] crate::replay::ReplayError),
    /// The config file's approval policies could not be applied (nothing was changed).
    #[error("cannot apply the config file's approval policies: {0}")]
    ApprovalPolicies(#[from] crate::approval::ApprovalError),
    /// The blob store (`evidence.blobs.*`) cannot be opened.
    #[error("evidence: {0}")]
    Evidence(#[from] crate::evidence::BlobError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// A running aggregator: bound addresses and the handles to stop it.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Whether the HTTP API is served over HTTPS.
    pub http_tls: bool,
    pub admin_token: String,
    pub ingest: Arc<IngestState>,
    tasks: Tasks,
    store: Store,
}

impl Running {
    /// The owner of every task of this aggregator; cancelling its token stops them.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The store this aggregator writes to (tests and embedders read what ingest committed through it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wait until shutdown is requested (a signal, or an essential task failed), drain every task (at most
    /// `grace`), then close the store. The [`Drain`] says whether the stop was clean and names the first
    /// essential task that failed; its [`Drain::exit_code`] is the process's.
    pub async fn wait(self, grace: Duration) -> Drain {
        let Running {
            ingest,
            tasks,
            store,
            ..
        } = self;
        // The presence writer ends once the last handle to the ingest state is gone.
        drop(ingest);
        let drain = tasks.wait(grace).await;
        store.close().await;
        match (&drain.failure, drain.clean) {
            (Some(failure), _) => {
                warn!(%failure, clean = drain.clean, "aggregator stopped after a failure")
            }
            (None, true) => info!("aggregator stopped cleanly"),
            (None, false) => warn!(grace_s = grace.as_secs(), "aggregator drain timed out"),
        }
        drain
    }
}

/// Read the admin token from the data directory, creating a random one (0600) on first start.
pub fn load_or_create_admin_token(data_dir: &Path) -> Result<String, ServeError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let err = |source| ServeError::DataDir {
        path: path.clone(),
        source,
    };
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .map_err(err)?
            .trim()
            .to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let token = hex::encode(bytes);
    secrets::write_atomic(&path, format!("{token}\n").as_bytes(), Access::Private).map_err(err)?;
    Ok(token)
}

/// File (in the key directory) holding the secret behind QUIC stateless resets.
pub const RESET_KEY_FILE: &str = "quic-reset.key";

/// File (in the key directory) holding the secret that seals QUIC Retry tokens.
pub const TOKEN_KEY_FILE: &str = "quic-token.key";

/// File (in the key directory) holding the secret behind TLS session tickets ([`crate::ingest::tickets`]).
pub const TICKET_KEY_FILE: &str = "tls-ticket.key";

/// The QUIC stateless-reset key, persisted so that an aggregator restarted after a crash can tell agents
/// still holding connections of the previous process that those connections are gone: they reconnect at once
/// instead of waiting for their idle timeout. Replicas behind one load balancer should share this file.
fn load_or_create_reset_key(dir: &Path) -> Result<Arc<ring::hmac::Key>, ServeError> {
    let secret = load_or_create_secret(dir, RESET_KEY_FILE)?;
    Ok(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &secret,
    )))
}

/// The key that seals QUIC Retry tokens, persisted like the reset key: an agent asked to prove its address by a
/// process that then stops carries that process's token to the one started in its place (a stopping aggregator
/// answers no new attempt, `ingest::endpoint::stop_answering`), which must be able to read it, or the agent's
/// handshake fails. Replicas behind one load balancer should share this file.
fn load_or_create_token_key(dir: &Path) -> Result<Arc<ring::hkdf::Prk>, ServeError> {
    let secret = load_or_create_secret(dir, TOKEN_KEY_FILE)?;
    Ok(Arc::new(
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"gait quic retry token").extract(&secret),
    ))
}

/// A 32-byte secret in `dir/file`, created (mode 0600) on first use.
fn load_or_create_secret(dir: &Path, file: &str) -> Result<[u8; 32], ServeError> {
    let path = dir.join(file);
    secrets::load_or_create_32(&path).map_err(|source| ServeError::DataDir { path, source })
}

/// Start every subsystem as a task of `tasks` (servers, endpoint, writers and periodic jobs are essential: one
/// that fails stops them all); returns once the endpoints are bound.
pub async fn start(config: ServeConfig, tasks: Tasks) -> Result<Running, ServeError> {
    // The configuration refuses this already; an embedder building a ServeConfig by hand is held to it too.
    if config.http_tls.is_none() && !config.http_listen.ip().is_loopback() {
        return Err(ServeError::PlainHttpOffLoopback {
            addr: config.http_listen,
        });
    }
    let narrowed =
        secrets::create_private_dir(&config.data_dir).map_err(|source| ServeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    if narrowed {
        warn!(dir = %config.data_dir.display(), "data directory was open to group or others; now mode 0700");
    }
    let pki_dir = config.pki_dir();
    if !pki_dir.join("ca.pem").exists() {
        let opts = pki::InitOptions {
            server_names: config.server_names.clone(),
            trust_domain: config.trust_domain.clone(),
            ..Default::default()
        };
        pki::init(&pki_dir, &opts)?;
        info!(dir = %pki_dir.display(), "PKI created (first start)");
    } else {
        // The server certificate was made earlier: names configured since are not in it, and agents dialling
        // them would fail to verify it. Said loudly, with the remedy that keeps the CA (and every agent).
        let covered = pki::server_cert_names(&pki_dir)?;
        let missing = pki::uncovered_server_names(&covered, &config.server_names);
        if !missing.is_empty() {
            warn!(
                missing = %missing.join(", "),
                covered = %covered.join(", "),
                "the server certificate does not cover every configured server name; agents dialling those \
                 names will refuse it. Re-issue it under the same CA: gait-aggregator pki reissue-server \
                 --server-name <name>... (then restart)"
            );
        }
    }
    let store = Store::connect(&config.effective_database_url()).await?;
    let metrics = Arc::new(Metrics::new());
    let key = Registry::load_or_create_key(&config.key_dir())?;
    let approvals = Arc::new(
        crate::approval::Approvals::new(
            store.clone(),
            crate::approval::issue::load_or_create_key(&config.key_dir())?,
        )
        .with_metrics(metrics.clone()),
    );
    let registry = Arc::new(
        Registry::new(
            store.clone(),
            key,
            config.bundle_defaults.clone(),
            metrics.clone(),
        )
        .with_approval_key(approvals.public_key())
        .with_key_dir(&config.key_dir()),
    );
    let admin_token = load_or_create_admin_token(&config.data_dir)?;
    let oidc_configured = config.auth.oidc.enabled();
    let admin_mode = config.auth.admin_token.resolve(oidc_configured);
    let authorizer = Arc::new(Authorizer::new(admin_mode));
    crate::auth::bindings::apply_config(
        &store,
        &authorizer,
        &config.auth.bindings,
        crate::clock::unix_ms(),
    )
    .await?;
    info!(
        admin_token = admin_mode.as_str(),
        bindings = config.auth.bindings.len(),
        "access control ready"
    );
    crate::approval::config::apply_config(
        &store,
        &config.approval_policies,
        crate::clock::unix_ms(),
    )
    .await?;
    let audit_origin = config
        .audit_origin
        .clone()
        .unwrap_or_else(|| crate::audit::default_origin(&config.trust_domain));
    let audit = Arc::new(crate::audit::AuditLog::open(
        store.clone(),
        &config.key_dir(),
        &audit_origin,
    )?);

    let revoked = RevocationSet::new();
    revoked.replace_all(store.revoked_serials().await?);
    // The CAs agent certificates may chain to: both during and after a CA rotation.
    let ca_pem = pki::trust_bundle_path(&pki_dir);
    // Every trusted CA salts the session-ticket key: a change of trust voids the tickets.
    let ca_der = crate::ingest::tickets::trust_key_input(&crate::pki::pem::load_certs(&ca_pem)?);
    let tickets = if config.session_tickets {
        Some(SessionTickets::new(
            &load_or_create_secret(&config.key_dir(), TICKET_KEY_FILE)?,
            &ca_der,
            &metrics,
        ))
    } else {
        None
    };
    let mut quic = server_config(
        &ca_pem,
        &pki_dir.join("server.pem"),
        &pki_dir.join("server.key"),
        revoked.clone(),
        &config.transport,
        tickets,
    )?;
    quic.token_key(load_or_create_token_key(&config.key_dir())?);
    // quinn counts the attempts waiting for a handshake slot (`ingest::admission`) against `max_incoming`: room for
    // the whole queue, or a larger `quic.max_handshakes_in_flight` would see attempts dropped before it is full.
    quic.max_incoming(
        config.transport.max_incoming.max(
            config.max_handshakes_in_flight * (crate::ingest::admission::WAITING_PER_SLOT + 1),
        ),
    );
    let reset_key = load_or_create_reset_key(&config.key_dir())?;
    let socket = bind_udp(config.quic_listen, config.udp_buffer_bytes).map_err(|source| {
        ServeError::Bind {
            addr: config.quic_listen,
            what: "QUIC/UDP",
            source,
        }
    })?;
    let runtime = quinn::default_runtime().ok_or_else(|| ServeError::Bind {
        addr: config.quic_listen,
        what: "QUIC/UDP",
        source: std::io::Error::other("no async runtime for QUIC"),
    })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::new(reset_key),
        Some(quic),
        socket,
        runtime,
    )
    .map_err(|source| ServeError::Bind {
        addr: config.quic_listen,
        what: "QUIC/UDP",
        source,
    })?;
    let quic_addr = endpoint.local_addr().map_err(|source| ServeError::Bind {
        addr: config.quic_listen,
        what: "QUIC/UDP",
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.http_listen,
            what: "HTTP/TCP",
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.http_listen,
        what: "HTTP/TCP",
        source,
    })?;
    let http_tls = match &config.http_tls {
        None => None,
        Some(files) => {
            if files.from_pki {
                warn_uncovered_listen(&pki_dir, config.http_listen)?;
            }
            Some(
                gait_runtime::http::tls::server_config(&files.cert, &files.key)
                    .map_err(|source| ServeError::HttpTls { source })?,
            )
        }
    };

    let oidc = match config.auth.oidc.enabled().then_some(&config.auth.oidc) {
        None => None,
        Some(oidc) => {
            let verifier = crate::auth::oidc::OidcVerifier::from_config(
                oidc,
                metrics.jwks.clone(),
                metrics.oidc_token_cache.clone(),
            )?;
            // A local key file must be readable at start (the operator is at hand); a provider may come later.
            if oidc.jwks_file.is_some() {
                verifier
                    .jwks()
                    .refresh()
                    .await
                    .map_err(|e| ServeError::OidcKeys {
                        detail: e.to_string(),
                    })?;
            }
            verifier.spawn_refresh(&tasks, tasks.token().child_token());
            info!(issuer = verifier.issuer(), keys = %verifier.jwks().source().describe(), "OIDC operator tokens accepted");
            Some(verifier)
        }
    };
    let uploads = Arc::new(crate::evidence::Uploads::new(
        &config.data_dir,
        config.evidence.uploads.clone(),
        crate::evidence::BlobStore::open(&config.evidence.blobs, &config.data_dir)?,
        store.clone(),
        registry.clone(),
        metrics.clone(),
    ));
    let enrollment = Arc::new(crate::enroll::Enrollment::new(
        store.clone(),
        pki_dir.clone(),
        config.enroll,
    ));
    // Batches this replica commits, pre-aggregated for the analytics upkeep (`crate::analysis::feed`).
    let feed = Arc::new(crate::analysis::feed::Feed::new());
    let ingest = Arc::new(
        IngestState::new(
            crate::fleet::intake::Intake::with_feed(store.clone(), feed.clone()),
            registry.clone(),
            metrics.clone(),
            revoked,
            IngestLimits {
                reconnect_rate: config.reconnect_rate,
                max_handshakes_in_flight: config.max_handshakes_in_flight,
                handshake_deadline: config.handshake_deadline,
                handshake_queue_wait: config.handshake_queue_wait,
                max_record_payload_bytes: config.max_record_payload_bytes,
                ..IngestLimits::default()
            },
            &tasks,
        )
        .with_enrollment(enrollment.clone())
        .with_approvals(approvals.clone())
        .with_uploads(uploads.clone()),
    );
    let rollouts = Arc::new(crate::rollout::Rollouts::new(
        store.clone(),
        registry.clone(),
    ));
    let shutdown = tasks.token().clone();
    spawn_ingest(&tasks, endpoint, ingest.clone(), shutdown.child_token());
    spawn_http(
        &tasks,
        listener,
        AppState {
            registry: registry.clone(),
            rollouts: rollouts.clone(),
            fleet: Arc::new(crate::fleet::Fleet::new(store.clone())),
            bindings: Arc::new(crate::auth::bindings::Bindings::new(
                store.clone(),
                authorizer.clone(),
            )),
            metrics: metrics.clone(),
            admin_token: Arc::new(admin_token.clone()),
            authorizer: authorizer.clone(),
            oidc,
            audit: audit.clone(),
            enrollment,
            approvals,
            uploads: Some(uploads.clone()),
            evidence: Arc::new(crate::evidence::query::EvidenceIndex::new(store.clone())),
            analytics: Arc::new(
                crate::analysis::Analytics::new(store.clone(), registry.clone())
                    .with_production_envs(&config.production_envs),
            ),
            replay: Arc::new(crate::replay::Replay::new(
                store.clone(),
                crate::replay::Replay::load_or_create_key(&config.key_dir())?,
            )),
        },
        config.http_limits,
        http_tls.clone(),
        shutdown.child_token(),
    );
    let replica = {
        let mut id = [0u8; 4];
        // A name for the timeline only: a zero id if the system has no randomness is still a valid one.
        let _ = getrandom::fill(&mut id);
        hex::encode(id)
    };
    crate::rollout::controller::spawn(
        &tasks,
        rollouts,
        store.clone(),
        metrics.clone(),
        replica,
        shutdown.child_token(),
    );
    crate::analysis::upkeep::spawn(
        &tasks,
        store.clone(),
        Some(feed),
        metrics.clone(),
        crate::analysis::upkeep::SETTLE,
        config.call_merge_lag,
        shutdown.child_token(),
    );
    // PostgreSQL: other replicas' publishes and revocations arrive as notifications (gait_store::notify); the
    // housekeeping poll is then only a slow fallback. SQLite: one process per database, polling as before.
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(listener) = store.listen_for_changes().await? {
        listening.store(true, std::sync::atomic::Ordering::Relaxed);
        spawn_change_listener(
            &tasks,
            listener,
            ingest.clone(),
            registry.clone(),
            listening.clone(),
            shutdown.child_token(),
        );
    }
    spawn_housekeeping(
        &tasks,
        ingest.clone(),
        registry,
        config.revocation_refresh,
        listening,
        shutdown.child_token(),
    );
    crate::evidence::upload::spawn_sweeper(&tasks, uploads, shutdown.child_token());
    spawn_binding_reload(&tasks, store.clone(), authorizer, shutdown.child_token());
    crate::audit::spawn_checkpointer(
        &tasks,
        audit,
        config.audit_checkpoint_interval,
        shutdown.child_token(),
    );
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    info!(%quic_addr, %http_addr, http_scheme, store = store.backend(), data_dir = %config.data_dir.display(), "aggregator serving");
    Ok(Running {
        quic_addr,
        http_addr,
        http_tls: http_tls.is_some(),
        admin_token,
        ingest,
        tasks,
        store,
    })
}

/// Start and run until `shutdown`, then drain (10 s grace) and close the store.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<Drain, ServeError> {
    let running = start(config, Tasks::new(shutdown)).await?;
    Ok(running.wait(Duration::from_secs(10)).await)
}

/// The QUIC endpoint: essential, it ends only at shutdown.
fn spawn_ingest(
    tasks: &Tasks,
    endpoint: quinn::Endpoint,
    state: Arc<IngestState>,
    token: CancellationToken,
) {
    let owner = tasks.clone();
    tasks.spawn_essential("quic-ingest", async move {
        crate::ingest::serve(endpoint, state, token, owner).await;
        Ok::<(), std::convert::Infallible>(())
    });
}

/// The HTTP API: essential, a server that fails after start stops the process.
fn spawn_http(
    tasks: &Tasks,
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: gait_runtime::http::Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: CancellationToken,
) {
    let stats = Arc::new(gait_runtime::http::Stats::default());
    state.metrics.attach_http_stats(stats.clone());
    let owner = tasks.clone();
    tasks.spawn_essential("http-server", async move {
        let service = router(state);
        match tls {
            None => gait_runtime::http::serve(listener, service, limits, stats, owner, token).await,
            Some(tls) => {
                gait_runtime::http::serve_tls(listener, tls, service, limits, stats, owner, token)
                    .await
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

/// Warns when the PKI's server certificate, presented by the HTTPS API, does not name the address the API
/// listens on (a specific address only: a wildcard listen is reached by names the operator knows).
fn warn_uncovered_listen(pki_dir: &Path, listen: SocketAddr) -> Result<(), ServeError> {
    if listen.ip().is_unspecified() {
        return Ok(());
    }
    let covered = pki::server_cert_names(pki_dir)?;
    let wanted = [listen.ip().to_string()];
    if !pki::uncovered_server_names(&covered, &wanted).is_empty() {
        warn!(
            listen = %listen,
            covered = %covered.join(", "),
            "the HTTPS API presents the PKI's server certificate, which does not name its listen address; \
             clients dialling it will refuse the certificate. Add it: gait-aggregator pki reissue-server \
             --server-name <name>... (then restart)"
        );
    }
    Ok(())
}

/// Every this many housekeeping ticks, a replica that receives notifications still re-reads revocations and
/// long-polled scopes: a fallback for a notification lost in a way the listener could not see.
const FALLBACK_EVERY_TICKS: u64 = 30;

/// Periodic jobs: reload revocations (closing revoked agents' connections) and refresh long-polled scopes, at
/// every tick on SQLite, every [`FALLBACK_EVERY_TICKS`] while `listening` (PostgreSQL notifications do it at
/// once); promote due signing keys at every tick. Essential: without it revoked agents would stay connected.
fn spawn_housekeeping(
    tasks: &Tasks,
    ingest: Arc<IngestState>,
    registry: Arc<Registry>,
    every: Duration,
    listening: Arc<std::sync::atomic::AtomicBool>,
    token: CancellationToken,
) {
    tasks.spawn_essential("housekeeping", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    let poll = !listening.load(std::sync::atomic::Ordering::Relaxed)
                        || ticks.is_multiple_of(FALLBACK_EVERY_TICKS);
                    if poll {
                        if let Err(e) = ingest.refresh_revocations().await {
                            warn!(error = %e, "revocation refresh failed");
                        }
                        if let Err(e) = registry.refresh_waited_scopes().await {
                            warn!(error = %e, "bundle refresh failed");
                        }
                    }
                    if let Err(e) = registry.signer().promote_due(crate::clock::unix_ms()).await {
                        warn!(error = %e, "signing key promotion failed");
                    }
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

/// Applies the changes other replicas commit (PostgreSQL notifications, [`gait_store::ChangeListener`]): a
/// publish reloads that scope and wakes its long-polls, a revocation reloads the list and closes the revoked
/// agents' connections, a resync (the listener reconnected and may have missed some) re-reads both. While the
/// listener fails, `listening` is cleared so housekeeping polls at every tick again.
fn spawn_change_listener(
    tasks: &Tasks,
    mut listener: gait_store::ChangeListener,
    ingest: Arc<IngestState>,
    registry: Arc<Registry>,
    listening: Arc<std::sync::atomic::AtomicBool>,
    token: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    tasks.spawn("change-listener", async move {
        loop {
            let change = tokio::select! {
                _ = token.cancelled() => break,
                c = listener.next() => c,
            };
            // Notifications flow while the listener answers; housekeeping polls at every tick while it fails.
            listening.store(change.is_ok(), Ordering::Relaxed);
            let result = match change {
                Ok(gait_store::Change::Bundle(tenant)) => {
                    registry.scope_changed(&tenant).await.map_err(|e| e.to_string())
                }
                Ok(gait_store::Change::Revocation) => {
                    ingest.refresh_revocations().await.map(|_| ()).map_err(|e| e.to_string())
                }
                Ok(gait_store::Change::Resync) => {
                    info!("change notifications resumed; re-reading revocations and long-polled scopes");
                    let revoked = ingest.refresh_revocations().await.map(|_| ()).map_err(|e| e.to_string());
                    let scopes = registry.refresh_waited_scopes().await.map_err(|e| e.to_string());
                    revoked.and(scopes)
                }
                Err(e) => {
                    warn!(error = %e, "change notifications interrupted; polling until they resume");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    Ok(())
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "applying a change from another replica failed; the fallback poll retries");
            }
        }
    });
}

/// How often role bindings are reloaded from the store, so a grant through another replica on the same
/// database takes effect here too (this replica reloads at once after its own changes).
const BINDING_RELOAD: Duration = Duration::from_secs(10);

fn spawn_binding_reload(
    tasks: &Tasks,
    store: Store,
    authorizer: Arc<Authorizer>,
    token: CancellationToken,
) {
    tasks.spawn_essential("binding-reload", async move {
        let mut tick = tokio::time::interval(BINDING_RELOAD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = crate::auth::bindings::reload(&store, &authorizer).await {
                        warn!(error = %e, "role binding reload failed; the bindings loaded before stay in force");
                    }
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

/// Bind the QUIC socket with kernel buffers of `buffer` bytes.
///
/// The default receive buffer (about 208 KiB on Linux) overflows when thousands of agents reconnect at once
/// after a restart: every dropped Initial costs that agent a retransmission timeout of a second or more. The
/// kernel silently caps the request at `net.core.rmem_max`, so the size actually granted is logged, with the
/// sysctl to raise when it falls short.
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        if let Err(e) = socket.set_recv_buffer_size(buffer) {
            warn!(error = %e, requested = buffer, "cannot set the QUIC socket receive buffer");
        }
        if let Err(e) = socket.set_send_buffer_size(buffer) {
            warn!(error = %e, requested = buffer, "cannot set the QUIC socket send buffer");
        }
        let granted = socket.recv_buffer_size().unwrap_or(0);
        // Linux reports twice the usable size it granted (the doubling covers its own bookkeeping).
        let usable = if cfg!(target_os = "linux") {
            granted / 2
        } else {
            granted
        };
        if usable < buffer {
            warn!(
                requested = buffer,
                granted = usable,
                "the kernel capped the QUIC receive buffer; a fleet reconnecting at once may see dropped \
                 handshakes. Raise it with `sysctl -w net.core.rmem_max=<bytes>` (see deploy/sysctl.d)"
            );
        } else {
            info!(bytes = usable, "QUIC socket receive buffer");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
