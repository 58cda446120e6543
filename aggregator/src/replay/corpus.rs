//! The fleet corpus of a replay: the org's decisions captured in `raw` mode, read from the evidence index joined
//! with the records, deduplicated by intent digest **before** any payload is read, and pinned by `until_id`.
//!
//! One walk over the store, deduplicated and grouped by the database: one row per intent digest with the
//! digest's total count, its first [`MAX_SAMPLE_IDS`] sample ids, and the payload of its first decision only,
//! from which only the `normalized_intent` field is read, borrowed (no JSON tree is built for the rest of the
//! record) ([`intent_of`]). Intents come in the order of their first decision, so the corpus — and the report
//! built from it — depends on nothing but the pin, and an export writes each intent's line as it arrives.
//!
//! **Streamed** ([`replay_streamed`]): a replay evaluates the intents in chunks as the walk yields them and an
//! export writes each line as it arrives, so memory does not grow with the corpus.
//!
//! **Bounds** (review M1): a corpus holds at most [`MAX_CORPUS_INTENTS`] distinct intents and
//! [`MAX_CORPUS_BYTES`] of normalized intent bytes. These bound the work of one request, not memory: a larger
//! corpus is refused ([`CorpusError::TooLarge`], a 400 naming `until_id`, `project` and `env` to narrow it) as
//! soon as the walk passes the bound.

use gait_canon::sign::SigningKey;
use gait_policy::Policy;
use gait_replay::{
    CorpusIntent, Fixture, MAX_SAMPLE_IDS, Report, ReportBuilder, ReportScope, sign_report,
};
use gait_store::{CorpusGroup, CorpusScope, Shard, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most distinct intents one replay or export reads: twice the 100 %-distinct benchmark corpus of 1,000,000
/// decisions (about 20 s of a 2-core machine, docs/benchmarks.md).
pub const MAX_CORPUS_INTENTS: u64 = 2_000_000;
/// Most bytes of captured normalized intents one replay or export reads (about 2,000,000 intents of 640 bytes).
pub const MAX_CORPUS_BYTES: u64 = 1280 * 1024 * 1024;

/// The bounds of one corpus read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusLimits {
    /// Most distinct intents.
    pub max_intents: u64,
    /// Most normalized intent bytes, summed over the distinct intents.
    pub max_bytes: u64,
}

impl Default for CorpusLimits {
    fn default() -> Self {
        CorpusLimits {
            max_intents: MAX_CORPUS_INTENTS,
            max_bytes: MAX_CORPUS_BYTES,
        }
    }
}

/// Why a corpus could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The corpus is over a bound; the caller narrows it.
    #[error(
        "the corpus up to until_id {until_id} is too large to replay at once ({what} over the limit of \
         {limit}): narrow it with a smaller `until_id`, or with `project` and `env`"
    )]
    TooLarge {
        /// The pin that was asked for.
        until_id: u64,
        /// Which bound (`distinct intents`, `normalized intent bytes`).
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The only field of a decision record the corpus reads.
#[derive(Deserialize)]
struct Captured<'a> {
    #[serde(borrow)]
    normalized_intent: &'a RawValue,
}

/// The corpus intent of one group of the store walk: its sample ids, count, and the `normalized_intent` field
/// of its first decision's payload (left empty when the payload has none readable: the evaluation counts the
/// intent in `corpus.skipped`).
pub(crate) fn intent_of(group: CorpusGroup<'_>) -> CorpusIntent {
    let mut normalized_intent = Vec::new();
    match group.payload.map(serde_json::from_slice::<Captured<'_>>) {
        Some(Ok(captured)) => {
            normalized_intent = captured.normalized_intent.get().as_bytes().to_vec()
        }
        Some(Err(error)) => tracing::warn!(index_id = group.first_id, %error,
            "captured decision has no readable normalized_intent; replay skips its intent"),
        None => tracing::warn!(
            index_id = group.first_id,
            "captured decision's record is gone; replay skips its intent"
        ),
    }
    CorpusIntent {
        intent_digest: group.intent_digest.to_owned(),
        samples: group
            .samples
            .split(' ')
            .filter(|s| !s.is_empty())
            .take(MAX_SAMPLE_IDS)
            .map(str::to_owned)
            .collect(),
        count: group.count,
        normalized_intent,
    }
}

/// Sample ids one corpus intent keeps, as the store walk is asked for them.
pub(crate) const PER_INTENT: u32 = MAX_SAMPLE_IDS as u32;

/// Counts a corpus against its limits as intents complete.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pub(crate) intents: u64,
    pub(crate) bytes: u64,
    pub(crate) samples: u64,
}

impl Budget {
    /// Counts `intent`; the error names the bound it broke.
    pub(crate) fn add(
        &mut self,
        intent: &CorpusIntent,
        limits: &CorpusLimits,
        until_id: u64,
    ) -> Result<(), CorpusError> {
        self.intents += 1;
        self.samples += intent.count;
        self.bytes += intent.normalized_intent.len() as u64;
        if self.intents > limits.max_intents {
            return Err(CorpusError::TooLarge {
                until_id,
                what: "distinct intents",
                limit: limits.max_intents,
            });
        }
        if self.bytes > limits.max_bytes {
            return Err(CorpusError::TooLarge {
                until_id,
                what: "normalized intent bytes",
                limit: limits.max_bytes,
            });
        }
        Ok(())
    }
}

/// Distinct intents one evaluation chunk holds: the reader fills the next chunk while the evaluator works.
const CHUNK_INTENTS: usize = 4096;
/// Chunks queued between the reader and the evaluator.
const CHUNKS_QUEUED: usize = 2;
/// Groups queued between the store walks and the reader.
const GROUPS_QUEUED: usize = 256;
/// Most connections one replay walks the corpus on at once.
const MAX_SHARDS: usize = 2;

/// What one streamed replay evaluates, owned (it moves to a blocking thread).
pub struct Job {
    /// The policy in force.
    pub baseline: Policy,
    /// The policy that would replace it.
    pub candidate: Policy,
    /// Gait intent fixtures, evaluated after the corpus.
    pub fixtures: Vec<Fixture>,
    /// Threads to evaluate on.
    pub threads: usize,
    /// Most entries of the report's `changed` list.
    pub max_changed: usize,
    /// The key the report is signed with.
    pub key: SigningKey,
}

/// Why a streamed replay failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The corpus is over a bound, or the store failed.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// A fixture does not read or evaluate.
    #[error(transparent)]
    Replay(gait_replay::ReplayError),
    /// The evaluation thread died.
    #[error("replay evaluation failed: {0}")]
    Internal(String),
}

/// Replays the corpus of `scope` up to and including `until_id` and signs the report, never holding the
/// corpus: the store walk's intents go to a [`ReportBuilder`] on a blocking thread in chunks of
/// [`CHUNK_INTENTS`], so the database read, the payload parsing and the evaluation overlap, and memory holds a
/// few chunks, the counts and the kept `changed` entries. The corpus is refused as soon as it breaks `limits`
/// (the walk stops). Answers the signed report's bytes and the report.
pub async fn replay_streamed(
    store: &Store,
    scope: &CorpusScope,
    until_id: u64,
    limits: &CorpusLimits,
    job: Job,
) -> Result<(Vec<u8>, Report), StreamError> {
    let report_scope = ReportScope {
        org: scope.org.to_string(),
        project: scope.project.as_ref().map(|p| p.to_string()),
        env: scope.env.as_ref().map(|e| e.to_string()),
        until_id,
    };
    let of = u8::try_from(job.threads.clamp(1, MAX_SHARDS)).unwrap_or(1);
    let (chunks, mut next) = tokio::sync::mpsc::channel::<Vec<CorpusIntent>>(CHUNKS_QUEUED);
    let evaluator = tokio::task::spawn_blocking(move || {
        let mut builder = ReportBuilder::new(
            &job.baseline,
            &job.candidate,
            job.threads,
            Some(job.max_changed),
        );
        while let Some(chunk) = next.blocking_recv() {
            builder.add_corpus(&chunk);
        }
        let mut report = builder
            .finish(report_scope, None, &job.fixtures)
            .map_err(StreamError::Replay)?;
        let bytes = sign_report(&mut report, &job.key);
        Ok::<_, StreamError>((bytes, report))
    });

    let (groups, mut arriving) = tokio::sync::mpsc::channel(GROUPS_QUEUED);
    // The database work is split by intent digest over up to MAX_SHARDS connections walking at once; the
    // report does not depend on the corpus order (ReportBuilder), so neither shards nor rows need a final sort.
    let walks: Vec<_> = (0..of)
        .map(|index| {
            let groups = groups.clone();
            async move {
                store
                    .replay_corpus_groups_to(
                        scope,
                        until_id,
                        PER_INTENT,
                        false,
                        Shard { index, of },
                        &groups,
                    )
                    .await
            }
        })
        .collect();
    drop(groups);
    let walk = futures_util::future::try_join_all(walks);
    let feed = async move {
        let mut budget = Budget::default();
        let mut chunk = Vec::with_capacity(CHUNK_INTENTS);
        // Returning drops `arriving`, which stops the walk at its next send.
        while let Some(group) = arriving.recv().await {
            let intent = intent_of(group.as_group());
            budget.add(&intent, limits, until_id)?;
            chunk.push(intent);
            if chunk.len() == CHUNK_INTENTS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_INTENTS));
                if chunks.send(full).await.is_err() {
                    break; // the evaluator ended; its result says why
                }
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.send(chunk).await;
        }
        Ok::<_, CorpusError>(())
    };
    let (walked, fed) = tokio::join!(walk, feed);
    // A refusal stops the walk early; report it rather than the walk's end. The evaluator then ends with the
    // chunks it has and its result is dropped.
    fed?;
    walked.map_err(CorpusError::from)?;
    evaluator
        .await
        .map_err(|e| StreamError::Internal(e.to_string()))?
}
