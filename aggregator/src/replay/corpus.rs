//! The fleet corpus of a replay: the org's decisions captured in `raw` mode, read from the evidence index joined
//! with the records, deduplicated by intent digest **before** any payload is read, and pinned by `until_id`.
//!
//! One walk over the store, in index order, deduplicated by the database: per intent digest its first
//! [`MAX_SAMPLE_IDS`] decisions with the digest's total count, and the payload of the first decision only, from
//! which only the `normalized_intent` field is read, borrowed (no JSON tree is built for the rest of the
//! record). Distinct intents come out in the order of their first decision, so the corpus — and the report
//! built from it — depends on nothing but the pin.

use std::collections::HashMap;

use gait_replay::{CorpusIntent, MAX_SAMPLE_IDS};
use gait_store::{CorpusScope, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Reads the corpus of `scope` up to and including index id `until_id`.
///
/// Sample ids are `<agent>:<seq>` within one environment (`scope.env` set) and `<project>/<env>/<agent>:<seq>`
/// otherwise, since agent ids are unique only within their environment.
pub async fn load(store: &Store, scope: &CorpusScope, until_id: u64) -> Result<Corpus, StoreError> {
    let mut intents: Vec<CorpusIntent> = Vec::new();
    let mut by_digest: HashMap<String, usize> = HashMap::new();
    let mut samples = 0u64;
    let one_env = scope.env.is_some();
    let per_intent = u32::try_from(MAX_SAMPLE_IDS).unwrap_or(u32::MAX);
    store
        .replay_corpus_rows(scope, until_id, per_intent, &mut |row| {
            let s = row.sample;
            let sample = if one_env {
                format!("{}:{}", s.agent_id, s.seq)
            } else {
                format!("{}/{}/{}:{}", s.project, s.env, s.agent_id, s.seq)
            };
            let i = match by_digest.get(s.intent_digest) {
                Some(&i) => i,
                None => {
                    by_digest.insert(s.intent_digest.to_owned(), intents.len());
                    samples += row.count;
                    intents.push(CorpusIntent {
                        intent_digest: s.intent_digest.to_owned(),
                        samples: Vec::new(),
                        count: row.count,
                        normalized_intent: Vec::new(),
                    });
                    intents.len() - 1
                }
            };
            let intent = &mut intents[i];
            if intent.samples.len() < MAX_SAMPLE_IDS {
                intent.samples.push(sample);
            }
            if let Some(payload) = row.payload {
                match serde_json::from_slice::<Captured<'_>>(payload) {
                    Ok(captured) => {
                        intent.normalized_intent = captured.normalized_intent.get().as_bytes().to_vec()
                    }
                    // Left empty: the evaluation counts it in `corpus.skipped`.
                    Err(error) => tracing::warn!(index_id = s.id, %error,
                        "captured decision has no readable normalized_intent; replay skips its intent"),
                }
            }
            Ok(())
        })
        .await?;
    Ok(Corpus { samples, intents })
}
