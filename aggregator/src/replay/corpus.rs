//! The fleet corpus of a replay: the org's decisions captured in `raw` mode, read from the evidence index joined
//! with the records, deduplicated by intent digest **before** any payload is read, and pinned by `until_id`.
//!
//! Two walks over the store, both in index order: the first reads only (id, agent, seq, intent digest) of every
//! captured decision up to the pin, counting samples per digest and keeping the first [`MAX_SAMPLE_IDS`] ids;
//! the second reads the payload of the first decision of each digest only, and from it only the
//! `normalized_intent` field, borrowed (no JSON tree is built for the rest of the record). Distinct intents come
//! out in the order of their first decision, so the corpus — and the report built from it — depends on nothing
//! but the pin.

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
    let mut first_ids: HashMap<u64, usize> = HashMap::new();
    let one_env = scope.env.is_some();
    let samples = store
        .replay_corpus_samples(scope, until_id, &mut |s| {
            let sample = if one_env {
                format!("{}:{}", s.agent_id, s.seq)
            } else {
                format!("{}/{}/{}:{}", s.project, s.env, s.agent_id, s.seq)
            };
            match by_digest.get(s.intent_digest) {
                Some(&i) => {
                    let intent = &mut intents[i];
                    intent.count += 1;
                    if intent.samples.len() < MAX_SAMPLE_IDS {
                        intent.samples.push(sample);
                    }
                }
                None => {
                    by_digest.insert(s.intent_digest.to_owned(), intents.len());
                    first_ids.insert(s.id, intents.len());
                    intents.push(CorpusIntent {
                        intent_digest: s.intent_digest.to_owned(),
                        samples: vec![sample],
                        count: 1,
                        normalized_intent: Vec::new(),
                    });
                }
            }
        })
        .await?;
    drop(by_digest);
    store
        .replay_corpus_payloads(scope, until_id, &mut |id, payload| {
            // A decision indexed after the samples walk cannot be at or below the pin, so every id is known;
            // should one not be, it is not part of this corpus.
            let Some(&i) = first_ids.get(&id) else {
                return Ok(());
            };
            match serde_json::from_slice::<Captured<'_>>(payload) {
                Ok(captured) => {
                    intents[i].normalized_intent =
                        captured.normalized_intent.get().as_bytes().to_vec()
                }
                // Left empty: the evaluation counts it in `corpus.skipped`.
                Err(error) => tracing::warn!(index_id = id, %error,
                    "captured decision has no readable normalized_intent; replay skips its intent"),
            }
            Ok(())
        })
        .await?;
    // An intent whose payload was not read (it cannot happen under the pin) stays empty and is reported as
    // skipped by the evaluation, never silently dropped.
    Ok(Corpus { samples, intents })
}
