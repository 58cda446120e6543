//! Replay before rollout (issue 13, Build item 4): evaluate a candidate policy beside the baseline on the org's
//! captured decisions (and optional Gait fixtures) and answer the signed, byte-for-byte reproducible report of
//! what would change (`gait_replay`); export the same corpus as JSON Lines for offline CI runs.
//!
//! - **Scope**: the org of the caller's `Authorized<Org>` (`replay.run`), optionally narrowed to a project and
//!   environment; another org's decisions are never selected.
//! - **Pin**: `until_id` (an evidence index id) bounds the corpus; absent, it is the scope's newest captured
//!   decision at the start, and the report echoes it, so a rerun with it gives the same bytes.
//! - **Policies**: the candidate and the baseline are Gait policy YAML today. [`PolicySource`] is the seam where
//!   the policy registry (issue 13 WP-A) adds registry digests and the baseline `pinned` (the environment's
//!   pinned version); until then a digest is refused with a message saying so.
//! - **Key**: reports are signed with `<data_dir>/keys/replay.key` (created 0600 at first start, its public key
//!   `replay.pub` beside it and at `GET /v1/orgs/{org}/replay/key`); offline runs sign with a key of their own.
//! - **Audit**: every run appends `replay.run` (target: the org scope; details: the report digest, the pin and
//!   the counts) in its own transaction before the report is answered.
//! - **Bounds** (review M1): a corpus is refused above [`corpus::MAX_CORPUS_INTENTS`] distinct intents or
//!   [`corpus::MAX_CORPUS_BYTES`] of intents (400 naming `until_id`, `project`, `env`); at most
//!   [`MAX_CONCURRENT_REPLAYS`] runs and exports at once (then 503 with `Retry-After`). Neither a run nor an
//!   export holds the corpus: a run evaluates it in chunks as the store walk yields them
//!   ([`corpus::replay_streamed`]) and an export streams it.
//! - **Pin check** (review M3): an `until_id` above the scope's newest captured decision is refused, since the
//!   report would change as data arrives. On PostgreSQL an index id is assigned at insert, not at commit, so a
//!   batch still in flight can later commit ids at or below a pin: a report is reproducible once the batches
//!   in flight when it ran have settled (seconds).

pub mod corpus;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gait_canon::sign::{self, PublicKey, SigningKey};
use gait_identity::{Env, Org, Project};
use gait_policy::{Policy, parse_policy_yaml};
use gait_replay::{CorpusHeader, CorpusLine, Fixture};
use gait_store::{CorpusScope, Shard, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Digest as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{Authorized, Target};
use crate::evidence::index::is_digest;
use crate::replay::corpus::{Budget, CorpusError, CorpusLimits, PER_INTENT, intent_of};
use crate::secrets::{self, Access};

/// File name of the replay signing key in the key directory.
pub const REPLAY_KEY_FILE: &str = "replay.key";
/// File name of its public half.
pub const REPLAY_PUB_FILE: &str = "replay.pub";
/// Most fixtures one request may carry.
pub const MAX_FIXTURES: usize = 1000;
/// Default most entries of the report's `changed` list (its counts always cover every change).
pub const DEFAULT_MAX_CHANGED: usize = 10_000;
/// The most a request may ask the `changed` list to hold: the replay keeps that many entries in memory.
pub const MAX_CHANGED: usize = 100_000;
/// Most replays and corpus exports one aggregator runs at once (each keeps cores busy); one more is answered
/// 503 with `Retry-After`.
pub const MAX_CONCURRENT_REPLAYS: usize = 2;
/// The `Retry-After` (seconds) of a replay refused because [`MAX_CONCURRENT_REPLAYS`] are running.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 10;
/// Rows the streamed export buffers between the store walk and the response body.
const EXPORT_ROW_BUFFER: usize = 64;
/// Bytes of JSON Lines the streamed export gathers into one body chunk.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// Why a replay was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A request field is missing or malformed; the message says what to pass.
    #[error("{field}: {message}")]
    Invalid {
        /// The request field (`candidate`, `baseline`, `fixtures[3]`, `project`, …).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit entry could not be appended (the report is not answered).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The signing key could not be read or created.
    #[error("replay key {}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The evaluation task died.
    #[error("replay evaluation failed: {0}")]
    Internal(String),
    /// The corpus could not be read or is over its bounds.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// [`MAX_CONCURRENT_REPLAYS`] replays or exports are running; retry after [`BUSY_RETRY_AFTER_SECONDS`].
    #[error(
        "{MAX_CONCURRENT_REPLAYS} replays or corpus exports are running on this aggregator: retry in \
         {BUSY_RETRY_AFTER_SECONDS} seconds"
    )]
    Busy,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ReplayError {
    ReplayError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where a policy of a replay comes from. Today only YAML; the policy registry adds `Digest` and `Pinned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Gait policy YAML, as given.
    Yaml(String),
}

impl PolicySource {
    /// Reads a request field: a 64-hex registry digest or `pinned` is refused until the registry resolves them.
    pub fn parse(field: &str, text: &str) -> Result<PolicySource, ReplayError> {
        let trimmed = text.trim();
        if is_digest(trimmed) || trimmed == "pinned" {
            return Err(invalid(
                field,
                format!(
                    "`{trimmed}` names a registry version, which this aggregator cannot resolve yet: pass the \
                     policy YAML itself"
                ),
            ));
        }
        Ok(PolicySource::Yaml(text.to_owned()))
    }

    /// The policy.
    pub fn resolve(&self, field: &str) -> Result<Policy, ReplayError> {
        match self {
            PolicySource::Yaml(yaml) => parse_policy_yaml(yaml.as_bytes())
                .map_err(|e| invalid(field, format!("not a Gait policy: {e}"))),
        }
    }
}

/// One fixture of a request: its name and the intent request JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureBody {
    /// The fixture's path or name, reported as is.
    pub path: String,
    /// The Gait intent request.
    pub intent: Box<RawValue>,
}

/// `POST /v1/orgs/{org}/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The candidate policy (YAML).
    pub candidate: String,
    /// The baseline policy (YAML): the one in force.
    pub baseline: Option<String>,
    /// Only this project's decisions.
    pub project: Option<String>,
    /// Only this environment's decisions (with `project`).
    pub env: Option<String>,
    /// The corpus pin (an evidence index id); absent: the newest captured decision now.
    pub until_id: Option<u64>,
    /// Gait intent fixtures, evaluated beside the corpus.
    #[serde(default)]
    pub fixtures: Vec<FixtureBody>,
    /// Most entries of the `changed` list (default [`DEFAULT_MAX_CHANGED`]).
    pub max_changed: Option<usize>,
}

/// `GET /v1/orgs/{org}/replay/corpus` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusQuery {
    /// Only this project's decisions.
    pub project: Option<String>,
    /// Only this environment's decisions.
    pub env: Option<String>,
    /// The pin; absent: the newest captured decision now.
    pub until_id: Option<u64>,
}

/// Replays candidates over the fleet corpus and signs the reports.
pub struct Replay {
    store: Store,
    key: SigningKey,
    threads: usize,
    limits: CorpusLimits,
    running: Arc<Semaphore>,
}

/// A corpus export ready to stream (its bounds checked and its audit entry appended).
pub struct CorpusExport {
    /// The response body, streamed from the store walk.
    pub body: axum::body::Body,
}

impl Replay {
    /// The service over `store`, signing with `key`, evaluating on every available core, with the default
    /// corpus bounds and [`MAX_CONCURRENT_REPLAYS`].
    pub fn new(store: Store, key: SigningKey) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            store,
            key,
            threads,
            limits: CorpusLimits::default(),
            running: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLAYS)),
        }
    }

    /// The same service with other corpus bounds and concurrency (embedding and tests).
    pub fn with_limits(mut self, limits: CorpusLimits, concurrent: usize) -> Self {
        self.limits = limits;
        self.running = Arc::new(Semaphore::new(concurrent.max(1)));
        self
    }

    /// A slot among the [`MAX_CONCURRENT_REPLAYS`], or [`ReplayError::Busy`].
    fn slot(&self) -> Result<OwnedSemaphorePermit, ReplayError> {
        Arc::clone(&self.running)
            .try_acquire_owned()
            .map_err(|_| ReplayError::Busy)
    }

    /// The pin of a request: the one given, refused above the scope's head (the report would change as data
    /// arrives), or the head. The corpus bounds are checked by the walk itself, which stops at the first
    /// intent over them.
    async fn pin(&self, scope: &CorpusScope, asked: Option<u64>) -> Result<u64, ReplayError> {
        let head = self.store.replay_corpus_head(scope).await?;
        match asked {
            Some(id) if id > head => Err(invalid(
                "until_id",
                format!(
                    "{id} is above the newest captured decision of this scope ({head}), so the report \
                     would change as decisions arrive: pass at most {head}, or leave it out"
                ),
            )),
            Some(id) => Ok(id),
            None => Ok(head),
        }
    }

    /// The public key reports verify with.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Loads the replay signing key from `dir`, or creates it with its public key beside it.
    ///
    /// Creation is atomic and first-wins between replicas sharing `dir`: the key is written (0600) to a temp
    /// file and hard-linked to its name, which fails if another process got there first, whose key is then
    /// read instead. `dir` is made 0700; a private key file that group or others may read is refused. The
    /// public file is rewritten from the private key whenever it does not match it.
    pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, ReplayError> {
        let private = dir.join(REPLAY_KEY_FILE);
        let public = dir.join(REPLAY_PUB_FILE);
        let key_err = |path: &Path, message: String| ReplayError::Key {
            path: path.to_path_buf(),
            message,
        };
        secrets::create_private_dir(dir).map_err(|e| key_err(dir, e.to_string()))?;
        let key = match load_private(&private)? {
            Some(key) => key,
            None => {
                let fresh =
                    SigningKey::try_generate().map_err(|e| key_err(&private, e.to_string()))?;
                if create_new_private(&private, &fresh)
                    .map_err(|e| key_err(&private, e.to_string()))?
                {
                    tracing::info!(key_id = %fresh.public_key().key_id(), path = %private.display(),
                        "replay signing key created");
                    fresh
                } else {
                    // Another replica created it between our read and our link: use theirs.
                    load_private(&private)?.ok_or_else(|| {
                        key_err(
                            &private,
                            "vanished right after another process created it".into(),
                        )
                    })?
                }
            }
        };
        let public_text = format!("{}\n", key.public_key().to_gait_public_key());
        if std::fs::read(&public).ok().as_deref() != Some(public_text.as_bytes()) {
            secrets::write_atomic(&public, public_text.as_bytes(), Access::Public)
                .map_err(|e| key_err(&public, e.to_string()))?;
        }
        Ok(key)
    }

    /// Runs one replay for `caller` and answers the signed report's canonical bytes.
    pub async fn run(
        &self,
        caller: &Authorized<Org>,
        req: ReplayRequest,
    ) -> Result<Vec<u8>, ReplayError> {
        let candidate = PolicySource::parse("candidate", &req.candidate)?.resolve("candidate")?;
        let baseline = match &req.baseline {
            Some(text) => PolicySource::parse("baseline", text)?.resolve("baseline")?,
            None => {
                return Err(invalid(
                    "baseline",
                    "required: pass the policy in force as YAML",
                ));
            }
        };
        if req.fixtures.len() > MAX_FIXTURES {
            return Err(invalid(
                "fixtures",
                format!("at most {MAX_FIXTURES} fixtures per request"),
            ));
        }
        let fixtures: Vec<Fixture> = req
            .fixtures
            .iter()
            .map(|f| Fixture {
                path: f.path.clone(),
                intent: f.intent.get().as_bytes().to_vec(),
            })
            .collect();
        if req.max_changed.is_some_and(|m| m > MAX_CHANGED) {
            return Err(invalid(
                "max_changed",
                format!("at most {MAX_CHANGED} (the counts always cover every change)"),
            ));
        }
        let scope = scope(caller, req.project.as_deref(), req.env.as_deref())?;
        let _slot = self.slot()?;
        let until_id = self.pin(&scope, req.until_id).await?;
        let job = corpus::Job {
            baseline,
            candidate,
            fixtures,
            threads: self.threads,
            max_changed: req.max_changed.unwrap_or(DEFAULT_MAX_CHANGED),
            key: self.key.clone(),
        };
        let (bytes, report) =
            match corpus::replay_streamed(&self.store, &scope, until_id, &self.limits, job).await {
                Ok(done) => done,
                Err(corpus::StreamError::Corpus(e)) => return Err(e.into()),
                Err(corpus::StreamError::Replay(gait_replay::ReplayError::Fixture {
                    path,
                    message,
                })) => return Err(invalid("fixtures", format!("{path}: {message}"))),
                Err(other) => return Err(ReplayError::Internal(other.to_string())),
            };
        let digest = gait_canon::sha256_hex(&bytes);
        let actor = caller.actor();
        let target = crate::audit::scope_target(&caller.target().scope(), "replay", &digest);
        let mut details = serde_json::Map::new();
        for (k, v) in [
            ("report_sha256", serde_json::Value::from(digest.clone())),
            ("until_id", until_id.into()),
            ("baseline_digest", report.baseline_digest.clone().into()),
            ("candidate_digest", report.candidate_digest.clone().into()),
            ("samples", report.corpus.samples.into()),
            ("changed_total", report.changed_total.into()),
            ("flips_total", report.flips_total.into()),
        ] {
            details.insert(k.to_owned(), v);
        }
        self.store
            .transaction(async |tx| {
                let draft = gait_audit::EntryDraft {
                    actor: actor.clone(),
                    action: "replay.run".into(),
                    target: target.clone(),
                    before: None,
                    after: None,
                    details: Some(details.clone()),
                };
                crate::audit::append_draft(tx, draft).await?;
                Ok::<_, crate::audit::AuditError>(())
            })
            .await?;
        tracing::info!(org = %caller.target(), until_id, samples = report.corpus.samples,
            changed = report.changed_total, flips = report.flips_total, report_sha256 = %digest, "replay run");
        Ok(bytes)
    }

    /// The corpus of `caller`'s org under `query` as JSON Lines (header line, then one line per distinct
    /// intent), for `gait-aggregator replay --offline`, streamed.
    ///
    /// Two walks, neither holding the corpus: the first checks the bounds and computes the body's SHA-256 for
    /// the audit entry, which is appended before any byte leaves; the second streams the same lines (a
    /// mismatch, possible only on PostgreSQL with batches in flight below the pin, is logged).
    pub async fn corpus_export(
        &self,
        caller: &Authorized<Org>,
        query: &CorpusQuery,
    ) -> Result<CorpusExport, ReplayError> {
        let scope = scope(caller, query.project.as_deref(), query.env.as_deref())?;
        let slot = self.slot()?;
        let until_id = self.pin(&scope, query.until_id).await?;
        let samples = self.store.replay_corpus_samples(&scope, until_id).await?;
        let (org, project, env) = scope_names(&scope);
        let header = CorpusHeader::new(org, project, env, until_id, samples).to_line();

        // Walk 1: bounds and digest.
        let mut hasher = sha2::Sha256::new();
        hasher.update(&header);
        let mut budget = Budget::default();
        let mut refused: Option<CorpusError> = None;
        let mut line = Vec::new();
        let limits = self.limits;
        let walked = self
            .store
            .replay_corpus_groups(&scope, until_id, PER_INTENT, &mut |group| {
                let intent = intent_of(group);
                if let Err(e) = budget.add(&intent, &limits, until_id) {
                    refused = Some(e);
                    return Err("corpus over its limit".into());
                }
                line.clear();
                CorpusLine::write(&intent, &mut line);
                hasher.update(&line);
                Ok(())
            })
            .await;
        if let Some(e) = refused {
            return Err(e.into());
        }
        walked?;
        let digest = hex::encode(hasher.finalize());

        // A bulk read of captured intents (raw tool-call content) is audited like the run that reads them.
        let actor = caller.actor();
        let target = crate::audit::scope_target(&caller.target().scope(), "replay", &digest);
        let mut details = serde_json::Map::new();
        for (k, v) in [
            ("corpus_sha256", serde_json::Value::from(digest.clone())),
            ("until_id", until_id.into()),
            ("samples", samples.into()),
            ("distinct_intents", budget.intents.into()),
        ] {
            details.insert(k.to_owned(), v);
        }
        self.store
            .transaction(async |tx| {
                let draft = gait_audit::EntryDraft {
                    actor: actor.clone(),
                    action: "replay.corpus_export".into(),
                    target: target.clone(),
                    before: None,
                    after: None,
                    details: Some(details.clone()),
                };
                crate::audit::append_draft(tx, draft).await?;
                Ok::<_, crate::audit::AuditError>(())
            })
            .await?;
        tracing::info!(org = %caller.target(), until_id, samples, distinct = budget.intents,
            corpus_sha256 = %digest, "replay corpus export started");

        // Walk 2: the body.
        let body = export_stream(self.store.clone(), scope, until_id, header, digest, slot);
        Ok(CorpusExport {
            body: axum::body::Body::from_stream(body),
        })
    }
}

/// The store walk feeding a streamed export.
type Walk = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// State of the streamed export body.
struct ExportState {
    rows: tokio::sync::mpsc::Receiver<gait_store::OwnedCorpusGroup>,
    walk: Option<Walk>,
    pending: Vec<u8>,
    hasher: sha2::Sha256,
    expected: String,
    done: bool,
    _slot: OwnedSemaphorePermit,
}

/// The export body: the store walk runs inside the body's own polling (no task to own; a client that goes
/// away drops it), feeding rows through a bounded channel, so at most [`EXPORT_ROW_BUFFER`] rows and one
/// chunk of lines are in memory. A store failure ends the body with an error, which aborts the response.
fn export_stream(
    store: Store,
    scope: CorpusScope,
    until_id: u64,
    header: Vec<u8>,
    expected: String,
    slot: OwnedSemaphorePermit,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let (tx, rows) = tokio::sync::mpsc::channel(EXPORT_ROW_BUFFER);
    let walk = async move {
        let result = store
            .replay_corpus_groups_to(&scope, until_id, PER_INTENT, true, Shard::WHOLE, &tx)
            .await;
        drop(tx);
        result
    };
    let mut hasher = sha2::Sha256::new();
    hasher.update(&header);
    let state = ExportState {
        rows,
        walk: Some(Box::pin(walk)),
        pending: header,
        hasher,
        expected,
        done: false,
        _slot: slot,
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.pending.len() >= EXPORT_CHUNK_BYTES {
                let chunk = bytes::Bytes::from(std::mem::take(&mut st.pending));
                return Some((Ok(chunk), st));
            }
            let row = match st.walk.as_mut() {
                Some(walk) => tokio::select! {
                    biased;
                    row = st.rows.recv() => row,
                    result = walk => {
                        st.walk = None;
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "replay corpus export failed mid-stream");
                            st.done = true;
                            return Some((Err(std::io::Error::other(e.to_string())), st));
                        }
                        continue;
                    }
                },
                None => st.rows.recv().await,
            };
            match row {
                Some(group) => st.write(&intent_of(group.as_group())),
                None => {
                    st.done = true;
                    let streamed = hex::encode(std::mem::take(&mut st.hasher).finalize());
                    if streamed != st.expected {
                        tracing::warn!(audited = %st.expected, %streamed, until_id,
                            "replay corpus export changed between the audit and the stream (batches committed \
                             below the pin meanwhile)");
                    }
                    let chunk = bytes::Bytes::from(std::mem::take(&mut st.pending));
                    return Some((Ok(chunk), st));
                }
            }
        }
    })
}

impl ExportState {
    fn write(&mut self, intent: &gait_replay::CorpusIntent) {
        let start = self.pending.len();
        CorpusLine::write(intent, &mut self.pending);
        self.hasher.update(&self.pending[start..]);
    }
}

/// The corpus scope of `caller`'s org narrowed by the request (an environment only with its project).
fn scope(
    caller: &Authorized<Org>,
    project: Option<&str>,
    env: Option<&str>,
) -> Result<CorpusScope, ReplayError> {
    let project = project
        .map(|p| {
            Project::try_from(p.to_owned()).map_err(|e| invalid("project", format!("{p:?}: {e}")))
        })
        .transpose()?;
    let env = env
        .map(|e| Env::try_from(e.to_owned()).map_err(|err| invalid("env", format!("{e:?}: {err}"))))
        .transpose()?;
    if env.is_some() && project.is_none() {
        return Err(invalid("env", "name the project of the environment too"));
    }
    Ok(CorpusScope {
        org: caller.target().clone(),
        project,
        env,
    })
}

fn scope_names(scope: &CorpusScope) -> (String, Option<String>, Option<String>) {
    (
        scope.org.to_string(),
        scope.project.as_ref().map(|p| p.to_string()),
        scope.env.as_ref().map(|e| e.to_string()),
    )
}

/// The private key at `path`, or `None` when there is none; a file that group or others may read is refused.
fn load_private(path: &Path) -> Result<Option<SigningKey>, ReplayError> {
    let key_err = |message: String| ReplayError::Key {
        path: path.to_path_buf(),
        message,
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_err(e.to_string())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_err(format!(
                "mode {mode:04o} lets others read the private key: `chmod 600` it (and consider replacing the \
                 key if others could read it)"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    sign::load_private_key_file(path)
        .map(Some)
        .map_err(|e| key_err(e.to_string()))
}

/// Writes `key` to `path` only if nothing is there yet, atomically: a complete 0600 temp file hard-linked to
/// the name (`link` fails rather than replaces). `false` when another process created `path` first.
fn create_new_private(path: &Path, key: &SigningKey) -> std::io::Result<bool> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let staged = dir.join(format!(".{REPLAY_KEY_FILE}.{}.new", hex::encode(suffix)));
    secrets::write_atomic(
        &staged,
        format!("{}\n", key.to_gait_private_key()).as_bytes(),
        Access::Private,
    )?;
    let linked = std::fs::hard_link(&staged, path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_an_open_key_file_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("keys");
        let first = Replay::load_or_create_key(&dir).expect("create");
        let again = Replay::load_or_create_key(&dir).expect("load");
        assert_eq!(first.public_key(), again.public_key());
        let public = sign::load_public_key_file(&dir.join(REPLAY_PUB_FILE)).expect("pub");
        assert_eq!(public, first.public_key());
        // A second creator loses the race instead of replacing the key.
        let other = SigningKey::generate();
        assert!(!create_new_private(&dir.join(REPLAY_KEY_FILE), &other).expect("link"));
        let kept = Replay::load_or_create_key(&dir).expect("load");
        assert_eq!(kept.public_key(), first.public_key());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(REPLAY_KEY_FILE)), 0o600);
            std::fs::set_permissions(
                dir.join(REPLAY_KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
            let err = Replay::load_or_create_key(&dir).expect_err("0644 key");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}
