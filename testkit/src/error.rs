//! The one error type of the harness: every failure names what was being done and where.

use std::path::PathBuf;
use std::time::Duration;

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A file or directory of a fixture could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The aggregator's PKI refused an operation.
    #[error("pki: {0}")]
    Pki(#[from] gait_aggregator::pki::PkiError),
    /// A certificate with arbitrary contents could not be generated.
    #[error("raw certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A tenancy identifier breaks the shared rule.
    #[error("identity: {0}")]
    Identity(String),
    /// The aggregator could not start.
    #[error("aggregator start: {0}")]
    Serve(#[from] gait_aggregator::app::ServeError),
    /// The agent daemon could not start.
    #[error("agent start: {0}")]
    Daemon(#[from] gait_agent::daemon::DaemonError),
    /// A store query failed.
    #[error("store: {0}")]
    Store(#[from] gait_store::StoreError),
    /// An HTTP request to the aggregator API or the agent's local API failed.
    #[error("{what}: {source}")]
    Http {
        /// The request.
        what: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// A request to the aggregator API failed before an answer was read (connection, TLS, timeout).
    #[error("{what}: {source}")]
    Api {
        /// The request.
        what: String,
        /// The client error.
        #[source]
        source: gait_runtime::http::client::ClientError,
    },
    /// An answer (or a request body) could not be encoded or decoded, or the client could not be set up.
    #[error("{what}: {detail}")]
    Answer {
        /// The request.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// An HTTP request was answered with an unexpected status.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        /// The request.
        what: String,
        /// The status code.
        status: u16,
        /// The response body.
        body: String,
    },
    /// A condition did not hold within the patience given.
    #[error("timed out after {patience:?} waiting for {what}{last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the harness waited.
        patience: Duration,
        /// The last observation, when the waiter kept one (starts with `; `).
        last: String,
    },
    /// A task of the aggregator or agent ended uncleanly while it was being stopped.
    #[error("{what} did not stop: {detail}")]
    Stop {
        /// Aggregator or agent.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl TestkitError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TestkitError::Io {
            path: path.into(),
            source,
        }
    }

    /// An HTTP exchange `what` (e.g. `GET /readyz`) failed; for tests that call an endpoint the helpers do not wrap.
    pub fn http(what: impl Into<String>, source: reqwest::Error) -> Self {
        TestkitError::Http {
            what: what.into(),
            source,
        }
    }
}
