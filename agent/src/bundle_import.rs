//! `gait-agent bundle import FILE`: activate a signed bundle carried in on a file, for sites with no network
//! path to the aggregator.
//!
//! The file holds exactly the bytes `gait-aggregator publish` produces and the aggregator sends in a bundle
//! offer. It is verified as an offer is (`gait_bundle::verify`: a registry key of the trust root, this
//! agent's org/project/env, not expired, an epoch newer than the active one) and activated the same way.
//!
//! Two paths, chosen by who holds the agent database (redb takes an exclusive lock on it):
//! - **No daemon running**: the command opens the database itself, verifies, stores and activates the bundle
//!   in one commit each, and appends the `bundle.applied` status record the daemon would have appended; the
//!   daemon re-verifies the active bundle when it starts, as after any restart.
//! - **The daemon holds the database**: the bytes go to its local API (`POST /v1/bundle/import`, the socket
//!   or loopback TCP with the bearer token), which runs the same activation as an offer; the next decision
//!   uses the imported bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gait_wire::RecordClass;
use serde_json::json;

use crate::bundle_cache::{BundleCache, BundleCacheError};
use crate::config::Config;
use crate::daemon::{ImportRefused, Imported};
use crate::db::{AgentDb, DbError};
use crate::local_api::Endpoint;
use crate::outbox::{NewRecord, Outbox};

/// How long the command waits for a running daemon's answer.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the import was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The command opened the agent database itself (no daemon was running).
    Database,
    /// The running daemon activated it (its local API).
    Daemon,
}

/// Why `gait-agent bundle import` did not activate the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("cannot read the bundle file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any bundle may be.
    #[error(
        "{path} is {size} bytes, over the bundle limit of {max} bytes: it is not a bundle the aggregator \
         publishes"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// The bundle was refused (signature, scope, expiry, epoch, or a conflicting cached bundle).
    #[error("{path}: bundle refused ({}): {}; the active bundle stays in force", .refused.code, .refused.message)]
    Refused {
        /// The file.
        path: PathBuf,
        /// Code and message.
        refused: ImportRefused,
    },
    /// The agent's configuration (certificate, trust keys) cannot be used.
    #[error("{0}")]
    Config(String),
    /// The agent database failed.
    #[error("{path}: the agent database failed: {detail}; the active bundle stays in force")]
    Storage {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The daemon holds the database but its local API does not answer.
    #[error(
        "a running gait-agent holds the database, but its local api at {endpoint} does not answer \
         ({detail}); {path} was not imported: check `gait-agent status --config …` and retry"
    )]
    Unreachable {
        /// The file.
        path: PathBuf,
        /// The API endpoint tried.
        endpoint: Endpoint,
        /// The client error.
        detail: String,
    },
}

impl ImportError {
    /// The exit code (sysexits): 65 refused, 66 unreadable file, 69 daemon unreachable, 74 storage, 78
    /// configuration.
    pub fn exit_code(&self) -> u8 {
        use gait_runtime::exit;
        match self {
            ImportError::Read { .. } => exit::NOINPUT,
            ImportError::TooLarge { .. } => exit::DATAERR,
            ImportError::Refused { refused, .. } if refused.is_bundle_refused() => exit::DATAERR,
            ImportError::Refused { .. } | ImportError::Storage { .. } => exit::IOERR,
            ImportError::Config(_) => exit::CONFIG,
            ImportError::Unreachable { .. } => exit::UNAVAILABLE,
        }
    }
}

/// Reads the bundle file (size-capped before reading it all).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ImportError> {
    let read = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > gait_bundle::MAX_BUNDLE_LEN as u64 {
        return Err(ImportError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: gait_bundle::MAX_BUNDLE_LEN,
        });
    }
    std::fs::read(path).map_err(read)
}

/// Imports `bytes` (read from `path`) into the agent of `config`: directly when no daemon holds the
/// database, else through the daemon's local API.
pub async fn import(
    config: &Config,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(Imported, Via), ImportError> {
    let (cfg, file, offline_bytes) = (config.clone(), path.to_path_buf(), bytes.clone());
    let offline = tokio::task::spawn_blocking(move || import_offline(&cfg, &file, &offline_bytes))
        .await
        .map_err(|e| ImportError::Storage {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    match offline {
        Ok(imported) => Ok((imported, Via::Database)),
        Err(Offline::Locked) => import_via_daemon(config, path, bytes)
            .await
            .map(|i| (i, Via::Daemon)),
        Err(Offline::Failed(e)) => Err(e),
    }
}

enum Offline {
    /// A daemon holds the database.
    Locked,
    Failed(ImportError),
}

impl From<ImportError> for Offline {
    fn from(e: ImportError) -> Self {
        Offline::Failed(e)
    }
}

fn import_offline(config: &Config, path: &Path, bytes: &[u8]) -> Result<Imported, Offline> {
    let storage = |detail: String| ImportError::Storage {
        path: path.to_path_buf(),
        detail,
    };
    let db = match AgentDb::open(config.db_path()) {
        Ok(db) => db,
        Err(DbError::Locked { .. }) => return Err(Offline::Locked),
        Err(e) => return Err(storage(e.to_string()).into()),
    };
    let identity = crate::identity::AgentIdentity::from_cert_file(&config.tls.cert)
        .map_err(|e| ImportError::Config(e.to_string()))?;
    let scope = gait_bundle::Scope {
        org: identity.org.clone(),
        project: identity.project.clone(),
        env: identity.env.clone(),
    };
    let cache = BundleCache::open(&db).map_err(|e| storage(e.to_string()))?;
    let trust = crate::daemon::activation::load_trust(&config.trust.registry_public_keys, &cache)
        .map_err(ImportError::Config)?;
    let current_epoch = cache
        .active()
        .map_err(|e| storage(e.to_string()))?
        .map(|a| a.epoch);
    let now_ms = crate::state::now_unix_ms();
    let bundle = gait_bundle::verify_with(
        bytes,
        &trust.options(&scope, current_epoch, now_ms.div_euclid(1000)),
    )
    .map_err(|e| ImportError::Refused {
        path: path.to_path_buf(),
        refused: crate::daemon::activation::refusal_of(&e),
    })?;
    let epoch = bundle.manifest.epoch;
    let digest_hex = bundle.digest_hex.clone();
    let change = crate::bundle_cache::TrustChange::of(&bundle);
    let activated = cache
        .store_received(&bundle, now_ms)
        .and_then(|_| cache.activate_trusting(epoch, now_ms, &change))
        .map_err(|e| match e {
            BundleCacheError::EpochConflict { .. } => ImportError::Refused {
                path: path.to_path_buf(),
                refused: ImportRefused {
                    code: "bundle_epoch_conflict",
                    message: e.to_string(),
                },
            },
            e => storage(e.to_string()),
        })?;
    let since = activated.activated_at_unix_ms.unwrap_or(now_ms);
    // The record the daemon appends on every activation, so the aggregator learns of it at the next contact.
    let outbox = Outbox::open(&db, config.outbox.limits()).map_err(|e| storage(e.to_string()))?;
    let payload = json!({
        "epoch": epoch,
        "digest": digest_hex,
        "code": null,
        "message": null,
        "since_unix_ms": since,
        "previous_epoch": current_epoch,
        "source": "file",
        "trust_added": change.added.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        "trust_revoked": change.revoked,
    });
    outbox
        .append(NewRecord {
            class: RecordClass::Status,
            kind: "bundle.applied".to_owned(),
            created_unix_ms: now_ms,
            bundle: Some(activated.bundle_ref()),
            payload: payload.to_string().into_bytes(),
        })
        .map_err(|e| {
            storage(format!(
                "the bundle is active but its status record was not kept: {e}"
            ))
        })?;
    Ok(Imported {
        epoch,
        digest: digest_hex,
        previous_epoch: current_epoch,
        since_unix_ms: since,
    })
}

async fn import_via_daemon(
    config: &Config,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<Imported, ImportError> {
    let endpoint = Endpoint::of(config).map_err(|e| ImportError::Config(e.to_string()))?;
    let token = match &endpoint {
        Endpoint::Unix(_) => None,
        Endpoint::Tcp(_) => {
            let token_path = config.api_token_path();
            let token = std::fs::read_to_string(&token_path).map_err(|e| {
                ImportError::Config(format!(
                    "cannot read the local api token {}: {e}",
                    token_path.display()
                ))
            })?;
            Some(token.trim().to_owned())
        }
    };
    let unreachable = |detail: String| ImportError::Unreachable {
        path: path.to_path_buf(),
        endpoint: endpoint.clone(),
        detail,
    };
    let answer =
        crate::local_api::post_bundle_import(&endpoint, token.as_deref(), bytes, DAEMON_TIMEOUT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    answer.map_err(|refused| match refused.code {
        "agent_storage_error" => ImportError::Storage {
            path: path.to_path_buf(),
            detail: refused.message,
        },
        "unauthorized" => ImportError::Config(format!(
            "the agent at {endpoint} refused the local api token of {}: {}",
            config.api_token_path().display(),
            refused.message
        )),
        _ => ImportError::Refused {
            path: path.to_path_buf(),
            refused,
        },
    })
}
