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

pub mod corpus;

use std::path::{Path, PathBuf};

use gait_canon::sign::{self, PublicKey, SigningKey};
use gait_identity::{Env, Org, Project};
use gait_policy::{Policy, parse_policy_yaml};
use gait_replay::{CorpusHeader, CorpusLine, Fixture, ReplayInput, build_report, sign_report};
use gait_store::{CorpusScope, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Authorized, Target};
use crate::evidence::index::is_digest;

/// File name of the replay signing key in the key directory.
pub const REPLAY_KEY_FILE: &str = "replay.key";
/// File name of its public half.
pub const REPLAY_PUB_FILE: &str = "replay.pub";
/// Most fixtures one request may carry.
pub const MAX_FIXTURES: usize = 1000;
/// Default most entries of the report's `changed` list (its counts always cover every change).
pub const DEFAULT_MAX_CHANGED: usize = 10_000;

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
}

impl Replay {
    /// The service over `store`, signing with `key`, evaluating on every available core.
    pub fn new(store: Store, key: SigningKey) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            store,
            key,
            threads,
        }
    }

    /// The public key reports verify with.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Loads the replay signing key from `dir`, or creates it (0600) with its public key beside it.
    pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, ReplayError> {
        let private = dir.join(REPLAY_KEY_FILE);
        let public = dir.join(REPLAY_PUB_FILE);
        let key_err = |path: &Path, message: String| ReplayError::Key {
            path: path.to_path_buf(),
            message,
        };
        if private.exists() {
            return sign::load_private_key_file(&private)
                .map_err(|e| key_err(&private, e.to_string()));
        }
        std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e.to_string()))?;
        let key = SigningKey::try_generate().map_err(|e| key_err(&private, e.to_string()))?;
        sign::write_key_pair(&private, &public, &key)
            .map_err(|e| key_err(&private, e.to_string()))?;
        tracing::info!(key_id = %key.public_key().key_id(), path = %private.display(), "replay signing key created");
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
        let scope = scope(caller, req.project.as_deref(), req.env.as_deref())?;
        let until_id = match req.until_id {
            Some(id) => id,
            None => self.store.replay_corpus_head(&scope).await?,
        };
        let corpus = corpus::load(&self.store, &scope, until_id).await?;
        let key = self.key.clone();
        let threads = self.threads;
        let max_changed = req.max_changed.unwrap_or(DEFAULT_MAX_CHANGED);
        let (org, project, env) = scope_names(&scope);
        // Evaluation is CPU-bound: off the async workers.
        let (bytes, report) = tokio::task::spawn_blocking(move || {
            let input = ReplayInput {
                org,
                project,
                env,
                until_id,
                samples_total: corpus.samples,
                baseline: &baseline,
                candidate: &candidate,
                corpus: &corpus.intents,
                fixtures: &fixtures,
                threads,
                max_changed: Some(max_changed),
            };
            let mut report = build_report(&input)?;
            let bytes = sign_report(&mut report, &key);
            Ok::<_, gait_replay::ReplayError>((bytes, report))
        })
        .await
        .map_err(|e| ReplayError::Internal(e.to_string()))?
        .map_err(|e| match e {
            gait_replay::ReplayError::Fixture { path, message } => {
                invalid("fixtures", format!("{path}: {message}"))
            }
            other => ReplayError::Internal(other.to_string()),
        })?;
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
    /// intent), for `gait-aggregator replay --offline`.
    pub async fn corpus_export(
        &self,
        caller: &Authorized<Org>,
        query: &CorpusQuery,
    ) -> Result<Vec<u8>, ReplayError> {
        let scope = scope(caller, query.project.as_deref(), query.env.as_deref())?;
        let until_id = match query.until_id {
            Some(id) => id,
            None => self.store.replay_corpus_head(&scope).await?,
        };
        let corpus = corpus::load(&self.store, &scope, until_id).await?;
        let (org, project, env) = scope_names(&scope);
        let mut out = CorpusHeader::new(org, project, env, until_id, corpus.samples).to_line();
        for intent in &corpus.intents {
            CorpusLine::write(intent, &mut out);
        }
        // A bulk read of captured intents (raw tool-call content) is audited like the run that reads them.
        let digest = gait_canon::sha256_hex(&out);
        let actor = caller.actor();
        let target = crate::audit::scope_target(&caller.target().scope(), "replay", &digest);
        let mut details = serde_json::Map::new();
        for (k, v) in [
            ("corpus_sha256", serde_json::Value::from(digest.clone())),
            ("until_id", until_id.into()),
            ("samples", corpus.samples.into()),
            ("distinct_intents", corpus.intents.len().into()),
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
        tracing::info!(org = %caller.target(), until_id, samples = corpus.samples,
            distinct = corpus.intents.len(), corpus_sha256 = %digest, "replay corpus exported");
        Ok(out)
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
