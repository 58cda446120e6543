//! The fleet corpus of a replay: the org's decisions captured in `raw` mode, read from the evidence index joined
//! with the records, deduplicated by intent digest **before** any payload is read, and pinned by `until_id`.
//!
//! One walk over the store, deduplicated by the database: per intent digest its first [`MAX_SAMPLE_IDS`]
//! decisions with the digest's total count, and the payload of the first decision only, from which only the
//! `normalized_intent` field is read, borrowed (no JSON tree is built for the rest of the record). Rows come
//! grouped by digest, the groups in the order of their first decision ([`Grouper`]), so the corpus — and the
//! report built from it — depends on nothing but the pin, and an export can write each intent's line as soon
//! as the next intent starts.
//!
//! **Bounds** (review M1): a corpus holds at most [`MAX_CORPUS_INTENTS`] distinct intents and
//! [`MAX_CORPUS_BYTES`] of normalized intent bytes. A larger one is refused ([`CorpusError::TooLarge`], a 400
//! naming `until_id`, `project` and `env` to narrow it) rather than held in memory.

use gait_replay::{CorpusIntent, MAX_SAMPLE_IDS};
use gait_store::{CorpusScope, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most distinct intents one replay or export reads (the 1 %-distinct benchmark corpus of 1,000,000 decisions
/// holds 10,000).
pub const MAX_CORPUS_INTENTS: u64 = 200_000;
/// Most bytes of captured normalized intents one replay or export reads (about 200,000 intents of 640 bytes).
pub const MAX_CORPUS_BYTES: u64 = 128 * 1024 * 1024;

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

/// A corpus read from the store.
#[derive(Debug, Default)]
pub struct Corpus {
    /// Captured decisions read (before deduplication).
    pub samples: u64,
    /// The distinct intents, in the order of their first decision.
    pub intents: Vec<CorpusIntent>,
}

/// The only field of a decision record the corpus reads.
#[derive(Deserialize)]
struct Captured<'a> {
    #[serde(borrow)]
    normalized_intent: &'a RawValue,
}

/// One row of the grouped walk, borrowed or owned.
pub(crate) struct RowRef<'a> {
    pub(crate) id: u64,
    pub(crate) project: &'a str,
    pub(crate) env: &'a str,
    pub(crate) agent_id: &'a str,
    pub(crate) seq: u64,
    pub(crate) intent_digest: &'a str,
    pub(crate) count: u64,
    pub(crate) payload: Option<&'a [u8]>,
}

/// Folds the grouped rows of the store walk into distinct intents, one at a time.
///
/// Sample ids are `<agent>:<seq>` within one environment (`scope.env` set) and `<project>/<env>/<agent>:<seq>`
/// otherwise, since agent ids are unique only within their environment.
pub(crate) struct Grouper {
    one_env: bool,
    current: Option<CorpusIntent>,
}

impl Grouper {
    pub(crate) fn new(scope: &CorpusScope) -> Self {
        Grouper {
            one_env: scope.env.is_some(),
            current: None,
        }
    }

    /// Takes one row; answers the previous intent once a row of another digest starts.
    pub(crate) fn push(&mut self, row: RowRef<'_>) -> Option<CorpusIntent> {
        let sample = if self.one_env {
            format!("{}:{}", row.agent_id, row.seq)
        } else {
            format!("{}/{}/{}:{}", row.project, row.env, row.agent_id, row.seq)
        };
        let done = match &self.current {
            Some(c) if c.intent_digest == row.intent_digest => None,
            _ => self.current.replace(CorpusIntent {
                intent_digest: row.intent_digest.to_owned(),
                samples: Vec::new(),
                count: row.count,
                normalized_intent: Vec::new(),
            }),
        };
        if let Some(intent) = self.current.as_mut() {
            if intent.samples.len() < MAX_SAMPLE_IDS {
                intent.samples.push(sample);
            }
            if let Some(payload) = row.payload {
                match serde_json::from_slice::<Captured<'_>>(payload) {
                    Ok(captured) => {
                        intent.normalized_intent =
                            captured.normalized_intent.get().as_bytes().to_vec()
                    }
                    // Left empty: the evaluation counts it in `corpus.skipped`.
                    Err(error) => tracing::warn!(index_id = row.id, %error,
                        "captured decision has no readable normalized_intent; replay skips its intent"),
                }
            }
        }
        done
    }

    /// The last intent, once the walk ended.
    pub(crate) fn finish(&mut self) -> Option<CorpusIntent> {
        self.current.take()
    }
}

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

/// Reads the corpus of `scope` up to and including index id `until_id` within the default [`CorpusLimits`].
pub async fn load(
    store: &Store,
    scope: &CorpusScope,
    until_id: u64,
) -> Result<Corpus, CorpusError> {
    load_limited(store, scope, until_id, &CorpusLimits::default()).await
}

/// Reads the corpus of `scope` up to and including `until_id`, refusing it as soon as it breaks `limits`.
pub async fn load_limited(
    store: &Store,
    scope: &CorpusScope,
    until_id: u64,
    limits: &CorpusLimits,
) -> Result<Corpus, CorpusError> {
    let mut intents: Vec<CorpusIntent> = Vec::new();
    let mut grouper = Grouper::new(scope);
    let mut budget = Budget::default();
    let mut refused: Option<CorpusError> = None;
    let per_intent = u32::try_from(MAX_SAMPLE_IDS).unwrap_or(u32::MAX);
    let walked = store
        .replay_corpus_rows(scope, until_id, per_intent, &mut |row| {
            let s = row.sample;
            let done = grouper.push(RowRef {
                id: s.id,
                project: s.project,
                env: s.env,
                agent_id: s.agent_id,
                seq: s.seq,
                intent_digest: s.intent_digest,
                count: row.count,
                payload: row.payload,
            });
            if let Some(intent) = done {
                if let Err(e) = budget.add(&intent, limits, until_id) {
                    refused = Some(e);
                    return Err("corpus over its limit".into());
                }
                intents.push(intent);
            }
            Ok(())
        })
        .await;
    if let Some(e) = refused {
        return Err(e);
    }
    walked?;
    if let Some(intent) = grouper.finish() {
        budget.add(&intent, limits, until_id)?;
        intents.push(intent);
    }
    Ok(Corpus {
        samples: budget.samples,
        intents,
    })
}
