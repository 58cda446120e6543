//! `gait-agent push FILE|DIR…`: verify Gait artifacts, enqueue the valid ones once, and wait until the
//! aggregator committed them.
//!
//! Two paths, chosen by who holds the agent database (redb locks it), like `gait-agent bundle import`:
//! - **The daemon runs**: the files go to its local API (`POST /v1/artifacts`, base64 in JSON, in batches of
//!   at most [`BATCH_BYTES`]); the daemon verifies and enqueues them ([`super::import`], the one code path)
//!   and its uplink ships them; the command polls `GET /v1/outbox` until `acked_through` reaches the highest
//!   seq it was given.
//! - **No daemon**: the command opens the database, enqueues the same way, closes it and (unless `--no-wait`)
//!   runs the daemon in process — its uplink, with the local API on an ephemeral loopback port and no socket
//!   or watcher — just until the aggregator acknowledged those seqs.
//!
//! Directories are walked recursively; only files named like artifacts (`.zip`, `.json`, `.xml`) are
//! offered, the others are listed as `skipped`. A file found in a directory that is not a Gait artifact at
//! all is `not_artifact` (skipped, not an error); a file named on the command line must be one. Invalid
//! artifacts are reported with the reason and never enqueued; the exit code is then 65, after the valid ones
//! were handled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gait_artifact::evidence::ArtifactSource;
use serde::Serialize;

use super::import::{FileResult, Offered};
use crate::config::Config;
use crate::db::{AgentDb, DbError};
use crate::local_api::Endpoint;
use crate::local_api::artifacts::{self as api, OutboxProgress};
use crate::outbox::Outbox;

/// Most bytes of file content offered in one import (one commit, one `POST /v1/artifacts`).
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Most files offered in one import.
pub const BATCH_FILES: usize = 500;
/// Default `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the command looks at the acknowledged seq while it waits.
const POLL: Duration = Duration::from_millis(50);

/// File extensions (lowercase) of the files a directory walk offers.
pub const ARTIFACT_EXTENSIONS: [&str; 3] = ["zip", "json", "xml"];

/// Whether a file name looks like a Gait artifact (runpack zip, trace or regress JSON, JUnit XML).
pub fn is_artifact_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ARTIFACT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Adds every artifact-looking file under `dir` (recursively, sorted, symlinked directories not followed) to
/// `files` and every other file to `skipped`.
pub fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, files, skipped);
        } else if is_artifact_name(&path) && path.is_file() {
            files.push(path);
        } else {
            skipped.push(path);
        }
    }
}

/// Options of `gait-agent push`.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Wait until the aggregator committed every record (`--no-wait` clears it).
    pub wait: bool,
    /// How long to wait.
    pub timeout: Duration,
}

/// Where the records were enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The command opened the agent database (no daemon was running).
    Database,
    /// The running daemon (its local API).
    Daemon,
}

/// What `gait-agent push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// Every file, in the order found.
    pub files: Vec<FileResult>,
    /// Where the records were enqueued (absent when no file was offered).
    pub via: Option<Via>,
    /// The highest seq waited for (0: nothing to wait for).
    pub wait_for_seq: u64,
    /// The aggregator committed every record (false with `--no-wait`).
    pub committed: bool,
}

impl PushReport {
    /// Count of files with this status.
    pub fn count(&self, status: &str) -> usize {
        self.files.iter().filter(|f| f.status == status).count()
    }

    /// Some file was an invalid artifact.
    pub fn any_invalid(&self) -> bool {
        self.count("invalid") > 0
    }
}

/// Why `gait-agent push` failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A path on the command line does not exist.
    #[error("{path}: {source}")]
    NoInput {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration or its key files cannot be used.
    #[error("{0}")]
    Config(String),
    /// The agent database failed; the files of the failed batch were not enqueued.
    #[error("the agent database failed: {0}; the files not reported as enqueued were not enqueued")]
    Storage(String),
    /// The daemon holds the database but its local API does not answer.
    #[error(
        "a running gait-agent holds the database, but its local api at {endpoint} does not answer ({detail}); \
         check `gait-agent status --config …` and retry"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: Endpoint,
        /// The client error.
        detail: String,
    },
    /// The daemon refused the request.
    #[error("the running gait-agent refused the artifacts ({code}): {message}")]
    Refused {
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The aggregator did not commit every record in time.
    #[error(
        "the aggregator {how} within {timeout:?}: {pending} of the pushed records are not committed yet \
         (acknowledged through seq {acked}, waiting for {target}); they stay queued in the agent's outbox and \
         the agent daemon sends them when it runs"
    )]
    NotCommitted {
        /// `did not answer` or `did not commit everything`.
        how: &'static str,
        /// The wait.
        timeout: Duration,
        /// Records not yet acknowledged.
        pending: u64,
        /// `acked_through` at the end.
        acked: u64,
        /// The seq waited for.
        target: u64,
        /// The aggregator was never reached.
        unreachable: bool,
        /// The report so far (every file's result).
        report: Box<PushReport>,
    },
    /// Every record was committed, but artifact bytes the environment asks for did not all reach the
    /// aggregator's blob store.
    #[error(
        "the records are committed, but the bytes of {count} artifact(s) were not uploaded: {detail}"
    )]
    NotUploaded {
        /// How many.
        count: usize,
        /// Which, and why (refused by the aggregator, or still waiting when the time was up).
        detail: String,
        /// Still waiting (retried later by the agent), not refused for good.
        pending: bool,
        /// The report (every file's result).
        report: Box<PushReport>,
    },
}

impl PushError {
    /// Exit code (sysexits): 66 missing input, 78 configuration, 74 storage (also the daemon's
    /// `storage_failing`), 69 daemon or aggregator unreachable, 75 not committed in time or the daemon's outbox
    /// full, 65 any other refusal by the daemon.
    pub fn exit_code(&self) -> u8 {
        use gait_runtime::exit;
        match self {
            PushError::NoInput { .. } => exit::NOINPUT,
            PushError::Config(_) => exit::CONFIG,
            PushError::Storage(_) => exit::IOERR,
            PushError::Unreachable { .. } => exit::UNAVAILABLE,
            PushError::Refused { code, .. } if code == "outbox_full" => exit::TEMPFAIL,
            PushError::Refused { code, .. } if code == "storage_failing" => exit::IOERR,
            PushError::Refused { .. } => exit::DATAERR,
            PushError::NotCommitted {
                unreachable: true, ..
            } => exit::UNAVAILABLE,
            PushError::NotCommitted { .. } => exit::TEMPFAIL,
            PushError::NotUploaded { pending: true, .. } => exit::TEMPFAIL,
            PushError::NotUploaded { .. } => exit::DATAERR,
        }
    }
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress: Send {
    /// `n` more files handled of `total`.
    fn files(&mut self, done: usize, total: usize);
    /// Waiting: `acked` of `target` (counting from `start`).
    fn waiting(&mut self, start: u64, acked: u64, target: u64);
}

/// No progress output.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn files(&mut self, _: usize, _: usize) {}
    fn waiting(&mut self, _: u64, _: u64, _: u64) {}
}

/// The files to offer, each with whether it was named on the command line (not found in a directory), and
/// the files a directory walk skipped.
pub type Expanded = (Vec<(PathBuf, bool)>, Vec<PathBuf>);

/// Expands the command line's paths: files as given, directories walked. Fails on a path that does not exist.
pub fn expand(paths: &[PathBuf]) -> Result<Expanded, PushError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| PushError::NoInput {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found, &mut skipped);
            files.extend(found.into_iter().map(|p| (p, false)));
        } else {
            files.push((path.clone(), true));
        }
    }
    Ok((files, skipped))
}

/// One batch of read files (or the read error per file).
struct Batch {
    offered: Vec<Offered>,
    /// Index into the file list of each offered file.
    index: Vec<usize>,
}

/// Reads `files` in batches of at most [`BATCH_BYTES`] / [`BATCH_FILES`]; unreadable files become `invalid`
/// results right away.
fn batches(files: &[(PathBuf, bool)], results: &mut [Option<FileResult>]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current = Batch {
        offered: Vec::new(),
        index: Vec::new(),
    };
    let mut bytes = 0u64;
    for (i, (path, _)) in files.iter().enumerate() {
        let name = path.display().to_string();
        let invalid = |reason: String| FileResult {
            file: name.clone(),
            status: "invalid".to_owned(),
            seq: None,
            kind: None,
            sha256: None,
            signature_status: None,
            reason: Some(reason),
        };
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => {
                results[i] = Some(invalid(format!("cannot read: {e}")));
                continue;
            }
        };
        if size > super::MAX_ARTIFACT_BYTES {
            results[i] = Some(invalid(format!(
                "{size} bytes, over the artifact limit of {} bytes",
                super::MAX_ARTIFACT_BYTES
            )));
            continue;
        }
        if !current.offered.is_empty()
            && (bytes + size > BATCH_BYTES || current.offered.len() >= BATCH_FILES)
        {
            out.push(std::mem::replace(
                &mut current,
                Batch {
                    offered: Vec::new(),
                    index: Vec::new(),
                },
            ));
            bytes = 0;
        }
        match std::fs::read(path) {
            Ok(content) => {
                bytes += content.len() as u64;
                current.offered.push(Offered {
                    name,
                    bytes: content,
                });
                current.index.push(i);
            }
            Err(e) => results[i] = Some(invalid(format!("cannot read: {e}"))),
        }
    }
    if !current.offered.is_empty() {
        out.push(current);
    }
    out
}

/// A file found in a directory that is not a Gait artifact is skipped, not an error.
fn finish(mut result: FileResult, named: bool) -> FileResult {
    if result.status == "not_artifact" && named {
        result.status = "invalid".to_owned();
    }
    result
}

/// Runs `gait-agent push` for `paths` with `config`.
pub async fn push(
    config: &Config,
    paths: &[PathBuf],
    options: PushOptions,
    progress: &mut dyn Progress,
) -> Result<PushReport, PushError> {
    let (files, skipped) = expand(paths)?;
    let mut results: Vec<Option<FileResult>> = vec![None; files.len()];
    let keys = super::load_trace_keys(config).map_err(|e| PushError::Config(e.to_string()))?;

    // SHA-256 of the artifacts this run queued for upload (no daemon: the in-process uplink sends them).
    let mut uploads: Vec<String> = Vec::new();
    let (via, target, start_acked) = if files.is_empty() {
        (None, 0, 0)
    } else {
        let db = match AgentDb::open(config.db_path()) {
            Ok(db) => Some(db),
            Err(DbError::Locked { .. }) => None,
            Err(e) => return Err(PushError::Storage(e.to_string())),
        };
        match db {
            Some(db) => {
                let outbox = Outbox::open(&db, config.outbox.limits())
                    .map_err(|e| PushError::Storage(e.to_string()))?;
                let start_acked = outbox.stats().acked_through;
                let upload = super::uploads_enabled_offline(config, &db);
                let total = files.len();
                let mut target = 0;
                let mut done = 0;
                for batch in batches(&files, &mut results) {
                    let now = crate::state::now_unix_ms();
                    let (outbox, keys, db) = (outbox.clone(), keys.clone(), db.clone());
                    let Batch { offered, index } = batch;
                    let (offered, outcomes, spooled) = tokio::task::spawn_blocking(move || {
                        let outcomes = super::import::import(
                            &outbox,
                            &offered,
                            ArtifactSource::Push,
                            &keys,
                            None,
                            now,
                        );
                        let spooled = match (&outcomes, upload) {
                            (Ok(outcomes), true) => super::spool_uploads(&db, &offered, outcomes),
                            _ => Vec::new(),
                        };
                        (offered, outcomes, spooled)
                    })
                    .await
                    .map_err(|e| PushError::Storage(format!("import task failed: {e}")))?;
                    let outcomes = outcomes.map_err(|e| PushError::Storage(e.to_string()))?;
                    uploads.extend(spooled);
                    for ((offered, i), outcome) in offered.iter().zip(&index).zip(outcomes) {
                        target = target.max(outcome.seq().unwrap_or(0));
                        results[*i] = Some(finish(outcome.to_result(&offered.name), files[*i].1));
                    }
                    done += offered.len();
                    progress.files(done, total);
                }
                (Some(Via::Database), target, start_acked)
            }
            None => {
                let endpoint =
                    Endpoint::of(config).map_err(|e| PushError::Config(e.to_string()))?;
                let token = api_token(config, &endpoint)?;
                let unreachable = |detail: String| PushError::Unreachable {
                    endpoint: endpoint.clone(),
                    detail,
                };
                let start = api::fetch_outbox(&endpoint, api::CLIENT_TIMEOUT)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let total = files.len();
                let mut target = 0;
                let mut done = 0;
                for batch in batches(&files, &mut results) {
                    let answer = api::post_artifacts_to(
                        &endpoint,
                        token.as_deref(),
                        &batch.offered,
                        api::CLIENT_TIMEOUT,
                    )
                    .await
                    .map_err(|e| unreachable(e.to_string()))?
                    .map_err(|(code, message)| PushError::Refused { code, message })?;
                    for (result, i) in answer.into_iter().zip(&batch.index) {
                        target = target.max(result.seq.unwrap_or(0));
                        results[*i] = Some(finish(result, files[*i].1));
                    }
                    done += batch.offered.len();
                    progress.files(done, total);
                }
                (Some(Via::Daemon), target, start.acked_through)
            }
        }
    };

    let mut report = PushReport {
        files: results.into_iter().flatten().collect(),
        via,
        wait_for_seq: target,
        committed: false,
    };
    report
        .files
        .extend(skipped.into_iter().map(|path| FileResult {
            file: path.display().to_string(),
            status: "skipped".to_owned(),
            seq: None,
            kind: None,
            sha256: None,
            signature_status: None,
            reason: Some(format!(
                "not named like an artifact (.{})",
                ARTIFACT_EXTENSIONS.join(", .")
            )),
        }));
    if !options.wait {
        return Ok(report);
    }
    if target == 0 {
        report.committed = true;
        return Ok(report);
    }
    let waited = match via {
        Some(Via::Daemon) => wait_via_daemon(config, target, start_acked, options, progress).await,
        _ => wait_in_process(config, target, start_acked, &uploads, options, progress).await,
    };
    match waited {
        Ok(()) => {
            report.committed = true;
            Ok(report)
        }
        Err(Waited::Uploads(outcome)) => {
            report.committed = true;
            let (pending, list) = match outcome {
                crate::upload::WaitOutcome::Uploaded => return Ok(report),
                crate::upload::WaitOutcome::TimedOut(waiting) => (
                    true,
                    waiting
                        .into_iter()
                        .map(|d| format!("{d} (still queued; the agent uploads it later)"))
                        .collect::<Vec<_>>(),
                ),
                crate::upload::WaitOutcome::Refused(refused) => (
                    false,
                    refused
                        .into_iter()
                        .map(|(d, why)| format!("{d} (refused: {why})"))
                        .collect(),
                ),
            };
            Err(PushError::NotUploaded {
                count: list.len(),
                detail: list.join(", "),
                pending,
                report: Box::new(report),
            })
        }
        Err(Waited::Failed(e)) => Err(e),
        Err(Waited::Timeout { acked, unreachable }) => Err(PushError::NotCommitted {
            how: if unreachable {
                "did not answer"
            } else {
                "did not commit everything"
            },
            timeout: options.timeout,
            pending: target.saturating_sub(acked),
            acked,
            target,
            unreachable,
            report: Box::new(report),
        }),
    }
}

fn api_token(config: &Config, endpoint: &Endpoint) -> Result<Option<String>, PushError> {
    match endpoint {
        Endpoint::Unix(_) => Ok(None),
        Endpoint::Tcp(_) => {
            let path = config.api_token_path();
            std::fs::read_to_string(&path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| {
                    PushError::Config(format!(
                        "cannot read the local api token {}: {e}",
                        path.display()
                    ))
                })
        }
    }
}

enum Waited {
    Failed(PushError),
    Timeout {
        acked: u64,
        unreachable: bool,
    },
    /// Every record committed; the uploads ended otherwise than all uploaded.
    Uploads(crate::upload::WaitOutcome),
}

async fn wait_via_daemon(
    config: &Config,
    target: u64,
    start: u64,
    options: PushOptions,
    progress: &mut dyn Progress,
) -> Result<(), Waited> {
    let endpoint =
        Endpoint::of(config).map_err(|e| Waited::Failed(PushError::Config(e.to_string())))?;
    let deadline = Instant::now() + options.timeout;
    let mut connected = false;
    loop {
        let (acked, uploads_pending) = match api::fetch_outbox(&endpoint, api::CLIENT_TIMEOUT).await
        {
            Ok(OutboxProgress {
                acked_through,
                connected: now,
                uploads_pending,
                ..
            }) => {
                connected |= now;
                (acked_through, uploads_pending)
            }
            Err(e) => {
                return Err(Waited::Failed(PushError::Unreachable {
                    endpoint,
                    detail: e.to_string(),
                }));
            }
        };
        progress.waiting(start, acked, target);
        // The daemon queued the bytes of what it enqueued when the environment asks for uploads: wait for
        // its spool to drain too, so a CI job's workspace can go once this returns.
        if acked >= target && uploads_pending == 0 {
            return Ok(());
        }
        if acked >= target && Instant::now() >= deadline {
            return Err(Waited::Uploads(crate::upload::WaitOutcome::TimedOut(vec![
                format!("{uploads_pending} artifact file(s) in the running agent's upload spool"),
            ])));
        }
        if Instant::now() >= deadline {
            return Err(Waited::Timeout {
                acked,
                unreachable: !connected,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_in_process(
    config: &Config,
    target: u64,
    start: u64,
    uploads: &[String],
    options: PushOptions,
    progress: &mut dyn Progress,
) -> Result<(), Waited> {
    // The daemon's uplink, without anything a second agent process would clash with: no socket, an ephemeral
    // loopback port, no watcher.
    let mut uplink = config.clone();
    uplink.local_api.socket_enabled = false;
    uplink.local_api.listen = "127.0.0.1:0".to_owned();
    uplink.capture.watch.clear();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let daemon = crate::daemon::Daemon::start(
        uplink,
        crate::daemon::RunOptions::default(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| match e {
        crate::daemon::DaemonError::Db(DbError::Locked { .. }) => {
            Waited::Failed(PushError::Storage(format!(
                "{e}; the records are enqueued and the agent that took the database will send them"
            )))
        }
        e if e.is_config() => Waited::Failed(PushError::Config(e.to_string())),
        e => Waited::Failed(PushError::Storage(e.to_string())),
    })?;
    let deadline = Instant::now() + options.timeout;
    let mut connected = false;
    let result = loop {
        let acked = daemon.state().outbox().stats().acked_through;
        connected |= daemon.state().is_connected();
        progress.waiting(start, acked, target);
        if acked >= target {
            if uploads.is_empty() {
                break Ok(());
            }
            // The records are committed; the bytes go on the same connection (the daemon's upload task).
            let within = deadline.saturating_duration_since(Instant::now());
            break match crate::upload::wait_uploaded(daemon.state().db(), uploads, within).await {
                Ok(crate::upload::WaitOutcome::Uploaded) => Ok(()),
                Ok(other) => Err(Waited::Uploads(other)),
                Err(e) => Err(Waited::Failed(PushError::Storage(e.to_string()))),
            };
        }
        if Instant::now() >= deadline {
            break Err(Waited::Timeout {
                acked,
                unreachable: !connected,
            });
        }
        if shutdown.is_cancelled() {
            break Err(Waited::Failed(PushError::Storage(
                daemon
                    .state()
                    .storage_error()
                    .unwrap_or_else(|| "the in-process uplink stopped".to_owned()),
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    shutdown.cancel();
    let stopped = daemon.wait().await;
    if let Some(failure) = stopped.failure {
        tracing::warn!(%failure, "the in-process uplink stopped with a failure");
    }
    result
}
