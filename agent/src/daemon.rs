//! `gait-agent run`: the long-lived daemon that dials out to the aggregator over mutual-TLS QUIC, pulls signed
//! policy bundles by long-poll, ships the durable outbox, and serves the loopback API.
//!
//! # Exchange protocol
//! The exchange (streams, messages, their order, refusals, close codes) is described once, in the `gait-wire`
//! crate documentation, rendered as `docs/protocol.md`; the aggregator's ingest links to the same page. This
//! side's choices within it:
//! - The agent always dials out; its replies wait at most the poll wait + 10 s for `PollBundle` and 30 s for any
//!   other request. One task long-polls for bundles, one ships the outbox (up to 4 batches in flight, acks taken
//!   in order, records deleted only after their ack); a bundle report travels both on a uni stream and as a
//!   durable `status` record.
//! - A lost connection is redialled with full-jitter exponential backoff ([`crate::backoff`]: base 1 s, cap
//!   30 s, reset once a connection stayed up for [`STABLE_CONNECTION`]); after an aggregator shutdown the first
//!   redial waits a random part of the window its close reason announces ([`gait_wire::shutdown`]).
//!
//! # Bundle handling
//! An offered bundle is checked with `gait_bundle::verify` against the configured trust root, the agent's
//! OWN scope (from its certificate, [`crate::identity`]), the active epoch (rollback protection) and the
//! current time. Verified: stored durably as received, then activated atomically, then reported. Refused: the
//! old bundle stays active, the refusal is recorded, reported and logged at WARN. On startup the cached active
//! bundle is verified again (signature, scope, files; no epoch check; expiry judged at its activation time)
//! before it is used; a cache that fails is not used and an ERROR is logged.
//!
//! # Tasks and shutdown
//! [`Daemon::start`] spawns two essential tasks on one [`gait_runtime::Tasks`]: the local API server and the
//! connection loop, which spawns its per-connection tasks (one poll task, one ship task, the batches in flight)
//! on the same owner. Cancelling the token stops them; an essential task that fails, panics or ends early
//! cancels the token too and is named in [`Shutdown::failure`] (the process then exits 1 instead of deciding
//! without syncing, or syncing without answering). [`Daemon::wait`] drains every task under a grace timeout
//! and reports whether the drain was clean. Records are durable before a producer is answered, so an unclean
//! drain loses nothing but in-flight network work.

pub(crate) mod activation;
mod approvals;
mod exchange;
mod renew;
mod session;
mod trace_key;
mod upload;

pub use session::{REPLY_TIMEOUT, announced_redial_window, is_refused};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gait_runtime::Tasks;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::db::{AgentDb, DbError};
use crate::identity::{AgentIdentity, IdentityError};
use crate::outbox::{Outbox, OutboxError};

pub use crate::state::{
    ActiveBundle, AgentState, BundleInfo, OutboxStatus, RefusalInfo, Staleness, StatusReport,
    now_unix_ms,
};
pub use activation::{ImportRefused, Imported};
pub use exchange::ExchangeError;

/// A connection that stayed up this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Deadline for the QUIC + TLS handshake. A handshake whose first packets were dropped (a full server socket
/// while a whole fleet reconnects) retransmits after about 1 s and 3 s; giving up at 5 s and redialling with a
/// fresh connection after the jittered backoff recovers sooner than waiting out the next, 4 s retransmission.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for tasks to finish after shutdown was requested.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// QUIC keep-alive interval; the connection is declared dead after three missed intervals (30 s). Each
/// keep-alive is a packet in and an acknowledgement out at the aggregator: at 5 s they were ~10,000 packets a
/// second each way for 50,000 idle agents, most of the aggregator's idle upkeep, which grows through a fleet's
/// reconnect and slows its end (docs/benchmarks.md, stop 31). An aggregator restarted after a crash is still
/// found out at the next keep-alive (its persisted stateless-reset key answers it); one that vanished at its
/// idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Runtime knobs that are flags rather than configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// How long to wait for tasks to finish after shutdown was requested.
    pub grace: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            grace: DEFAULT_GRACE,
        }
    }
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent's identity could not be read from its certificate.
    #[error("agent identity: {0}")]
    Identity(#[from] IdentityError),
    /// The data directory's instance id could not be read or made.
    #[error(transparent)]
    InstanceId(#[from] crate::identity::InstanceIdError),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A registry public key could not be loaded.
    #[error("trust.registry_public_keys: cannot load {path}: {detail}")]
    TrustKey {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The trace signing key could not be loaded or created.
    #[error("gate.signing_key: {path}: {detail}")]
    GateKey {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The agent database could not be opened.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The rate-limit counters could not be loaded, or the legacy state file not imported.
    #[error(transparent)]
    RateLimits(#[from] crate::gate::ratelimit_counters::CountersError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The bundle cache could not be opened or read.
    #[error("bundle cache: {0}")]
    BundleCache(#[from] crate::bundle_cache::BundleCacheError),
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The agent state could not be opened.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl DaemonError {
    /// True for errors an operator fixes in the configuration or its files (exit code "config").
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::Config(_)
                | DaemonError::Identity(_)
                | DaemonError::Tls(_)
                | DaemonError::TrustKey { .. }
                | DaemonError::GateKey { .. }
        )
    }
}

/// How the daemon stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// Every task finished within the grace period.
    pub clean: bool,
    /// The first essential task that failed (`"<task>: <reason>"`), which stopped the daemon; `None` when it
    /// stopped because shutdown was requested.
    pub failure: Option<String>,
}

impl Shutdown {
    /// The process exit code for this stop: 0 after a clean, requested stop; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        gait_runtime::Drain {
            clean: self.clean,
            failure: self.failure.clone(),
        }
        .exit_code()
    }
}

/// A started daemon: its tasks run until the token is cancelled.
pub struct Daemon {
    state: Arc<AgentState>,
    local_api: SocketAddr,
    tasks: Tasks,
    grace: Duration,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("local_api", &self.local_api)
            .field("agent", &self.state.identity().uri)
            .finish_non_exhaustive()
    }
}

/// Runs the daemon until `shutdown` is cancelled, then drains its tasks (default grace period).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Shutdown, DaemonError> {
    run_with(config, RunOptions::default(), shutdown).await
}

/// [`run`] with explicit runtime options.
pub async fn run_with(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Shutdown, DaemonError> {
    let daemon = Daemon::start(config, options, shutdown).await?;
    Ok(daemon.wait().await)
}

impl Daemon {
    /// Opens state, restores the cached bundle, binds the local API and the QUIC endpoint, and spawns the
    /// tasks. Returns once everything is listening (the aggregator need not be reachable).
    pub async fn start(
        config: Config,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> Result<Daemon, DaemonError> {
        config.validate()?;
        let identity = AgentIdentity::from_cert_file(&config.tls.cert)?;
        let client_config = Arc::new(std::sync::RwLock::new(crate::tls::client_config(
            &config.tls.ca,
            &config.tls.cert,
            &config.tls.key,
            KEEP_ALIVE,
        )?));
        let cert_validity = crate::tls::certificate_validity(&config.tls.cert)?;
        let trust = activation::load_trust_root(&config.trust.registry_public_keys)?;

        let db_path = config.db_path();
        let limits = config.outbox.limits();
        let legacy_rate_limits = config.data_dir.join(crate::gate::engine::RATE_LIMIT_STATE);
        let max_keys = config.gate.rate_limit.max_keys;
        let (db, outbox, counters) = tokio::task::spawn_blocking(move || {
            let db = AgentDb::open(&db_path)?;
            let outbox = Outbox::open(&db, limits)?;
            let counters = crate::gate::ratelimit_counters::DaemonCounters::open(
                &db,
                &legacy_rate_limits,
                max_keys,
            )?;
            Ok::<_, DaemonError>((db, outbox, counters))
        })
        .await??;

        let data_dir = config.data_dir.clone();
        let key_path = config.gate.signing_key.clone();
        let engine = tokio::task::spawn_blocking(move || {
            crate::gate::engine::GateEngine::open(&data_dir, key_path.as_deref())
                .map(|engine| engine.with_rate_limits(Arc::new(counters)))
                .map_err(|e| DaemonError::GateKey {
                    path: e.path,
                    detail: e.detail,
                })
        })
        .await??;
        let state = AgentState::open(
            identity,
            config.aggregator.address.clone(),
            db,
            outbox,
            trust,
            Arc::new(engine),
        )
        .await?;
        state.set_certificate_validity(cert_validity.0, cert_validity.1);
        let trace_keys = crate::capture::load_trace_keys(&config).map_err(|e| {
            DaemonError::Config(crate::config::ConfigError::single(&e.key, e.to_string()))
        })?;
        state.attach_trace_keys(Arc::new(trace_keys));
        state.set_tls_files(config.tls.cert.clone(), config.tls.key.clone());
        activation::restore_cached_bundle(&state).await;
        trace_key::announce_at_start(&state).await;

        let listen = config.local_api.addr()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: "the local api",
                addr: listen,
                source,
            })?;
        let local_api = listener.local_addr().map_err(|source| DaemonError::Bind {
            what: "the local api",
            addr: listen,
            source,
        })?;

        let data_dir = config.data_dir.clone();
        let instance_id = tokio::task::spawn_blocking(move || {
            crate::identity::load_or_create_instance_id(&data_dir)
        })
        .await??;

        let tasks = Tasks::new(shutdown.clone());
        let token_path = config.api_token_path();
        let token =
            crate::local_api::token::ApiToken::load_or_create(&token_path).map_err(|e| {
                DaemonError::Config(crate::config::ConfigError::single(
                    "local_api.token_file",
                    format!("{}: {e}", token_path.display()),
                ))
            })?;
        let guard = crate::local_api::guard::Guard {
            allowed_origins: config.local_api.allowed_origins.clone(),
            token: Some(Arc::new(token)),
        };
        let socket_path = config
            .local_api
            .socket_enabled
            .then(|| config.api_socket_path());
        if let Some(path) = &socket_path {
            let mode = config.local_api.socket_mode()?;
            let listener = crate::local_api::socket::bind(
                path,
                mode,
                config.local_api.socket_group.as_deref(),
            )
            .map_err(|e| {
                DaemonError::Config(crate::config::ConfigError::single(e.key(), e.to_string()))
            })?;
            let owner = tasks.clone();
            let (state, guard, limits, path, shutdown) = (
                state.clone(),
                guard.clone(),
                config.local_api.limits(),
                path.clone(),
                shutdown.child_token(),
            );
            tasks.spawn_essential("local-api-socket", async move {
                let listener = crate::local_api::ApiListener::Unix { listener, path };
                crate::local_api::serve(listener, state, guard, limits, owner, shutdown).await
            });
        }
        spawn_local_api(
            &tasks,
            listener,
            state.clone(),
            guard,
            config.local_api.limits(),
            shutdown.child_token(),
        );
        session::spawn_connection_loop(
            &tasks,
            session::Session {
                tasks: tasks.clone(),
                state: state.clone(),
                client_config: client_config.clone(),
                renewal: Some(renew::Renewal {
                    paths: crate::enroll::TlsPaths {
                        ca: config.tls.ca.clone(),
                        cert: config.tls.cert.clone(),
                        key: config.tls.key.clone(),
                    },
                    keep_alive: KEEP_ALIVE,
                    client_config,
                }),
                current: std::sync::atomic::AtomicUsize::new(session::start_index(
                    &state.identity().uri,
                    1 + config.aggregator.replicas.len(),
                )),
                addresses: std::iter::once(config.aggregator.address.clone())
                    .chain(config.aggregator.replicas.iter().cloned())
                    .collect(),
                server_name: config.aggregator.server_name.clone(),
                poll_wait_ms: config.poll.wait_ms,
                instance_id,
            },
            shutdown.child_token(),
        );
        spawn_storage_healer(&tasks, state.clone(), shutdown.child_token());
        crate::capture::watch::spawn(
            &tasks,
            state.clone(),
            config.capture.watch.clone(),
            Duration::from_millis(config.capture.poll_interval_ms),
            shutdown.child_token(),
        );
        let me = state.identity();
        tracing::info!(
            agent = %me.uri,
            org = %me.org,
            project = %me.project,
            env = %me.env,
            aggregator = %config.aggregator.address,
            local_api = %local_api,
            local_api_socket = %socket_path.as_deref().map_or("off".into(), |p| p.display().to_string()),
            "gait-agent started"
        );
        Ok(Daemon {
            state,
            local_api,
            tasks,
            grace: options.grace,
        })
    }

    /// The address the local API actually listens on (useful with port 0).
    pub fn local_api_addr(&self) -> SocketAddr {
        self.local_api
    }

    /// Shared agent state: append records, read the active bundle, build status.
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// Waits for the shutdown token (cancelled by the caller or by a failed essential task), then drains the
    /// tasks within the grace period.
    pub async fn wait(self) -> Shutdown {
        self.tasks.token().cancelled().await;
        tracing::info!(grace = ?self.grace, "shutdown requested, draining");
        let drain = self.tasks.drain(self.grace).await;
        let clean = drain.clean;
        self.state.flush_last_contact().await;
        if let Some(failure) = &drain.failure {
            tracing::error!(%failure, "gait-agent stopped because an essential task failed");
        } else if clean {
            tracing::info!("gait-agent stopped cleanly");
        } else {
            tracing::warn!(
                grace = ?self.grace,
                "gait-agent stopped with tasks still running after the grace period; \
                 durable records are safe and will be shipped after restart"
            );
        }
        Shutdown {
            clean,
            failure: drain.failure,
        }
    }
}

/// Re-opens the agent database after a storage failure (full disk) once the storage takes writes again.
fn spawn_storage_healer(tasks: &Tasks, state: Arc<AgentState>, shutdown: CancellationToken) {
    tasks.spawn("storage-healer", crate::state::healer::run(state, shutdown));
}

/// The local API: essential, a server that fails stops the agent.
fn spawn_local_api(
    tasks: &Tasks,
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    guard: crate::local_api::guard::Guard,
    limits: gait_runtime::http::Limits,
    shutdown: CancellationToken,
) {
    let owner = tasks.clone();
    tasks.spawn_essential("local-api", async move {
        crate::local_api::serve(listener, state, guard, limits, owner, shutdown).await
    });
}
