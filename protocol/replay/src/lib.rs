//! Replay before rollout (issue 13, Build item 4): a baseline and a candidate Gait policy evaluated side by side
//! on the fleet's captured intents and on Gait fixtures, with exactly `gait policy simulate`'s change rule, into
//! a deterministic report signed like bundles and traces are (Ed25519 over DigestJCS), which anyone holding the
//! public key can verify offline.
//!
//! - [`evaluate`]: one intent through both policies ([`evaluate_pair`]) and a corpus of distinct intents on
//!   several threads ([`evaluate_corpus`]), merged back in a fixed order.
//! - [`report`]: the report document (`gait.fleet.replay_report`), its canonical bytes, signing and verifying.
//! - [`corpus`]: the JSONL corpus export an offline CI run replays (`gait.fleet.replay_corpus`).
//!
//! Determinism is the contract: the same policies, corpus (pinned by `until_id`) and fixtures give the same
//! bytes, on any machine and any thread count. The report holds no timestamp and no `created_at` of Gait's
//! result documents, every list is sorted, maps are `BTreeMap`s, and the encoding is RFC 8785 (JCS); Ed25519
//! signatures are deterministic, so the signed bytes repeat too.
//!
//! The crate is pure (no I/O): callers read files and databases and hand in bytes.

pub mod corpus;
pub mod evaluate;
pub mod report;

pub use corpus::{CORPUS_SCHEMA_ID, CorpusHeader, CorpusLine, parse_corpus};
pub use evaluate::{PairOutcome, Side, evaluate_corpus, evaluate_normalized, evaluate_pair};
pub use report::{
    ChangedSample, CorpusSummary, MAX_SAMPLE_IDS, REPORT_SCHEMA_ID, REPORT_SCHEMA_VERSION,
    ReplayInput, Report, ReportBuilder, ReportScope, ToolCounts, build_report, encode_report,
    sign_report, verify_report,
};

/// One distinct intent of the fleet corpus: the captured `normalized_intent` of the decisions that share its
/// intent digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusIntent {
    /// The intent digest the decisions were indexed under (the grouping key).
    pub intent_digest: String,
    /// Up to [`MAX_SAMPLE_IDS`] sample ids (`<agent>:<seq>`), the first ones in corpus order.
    pub samples: Vec<String>,
    /// How many decisions carried this intent.
    pub count: u64,
    /// The captured normalized intent, as JSON bytes.
    pub normalized_intent: Vec<u8>,
}

/// One Gait intent fixture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// The path as the caller named it (reported as is).
    pub path: String,
    /// The intent request JSON.
    pub intent: Vec<u8>,
}

/// Why a replay could not be made or a report not read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A fixture is not an intent Gait can evaluate (Gait's `policy simulate` stops on it too).
    #[error("fixture {path}: {message}")]
    Fixture {
        /// The fixture path.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A corpus line does not read.
    #[error("corpus line {line}: {message}")]
    Corpus {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A report document does not read.
    #[error("replay report: {0}")]
    Malformed(String),
    /// A report's signature is missing or does not verify with the key given.
    #[error("replay report signature: {0}")]
    Signature(String),
}

impl ReplayError {
    /// Whether the error is about the caller's input (a fixture or corpus file), as opposed to a report that
    /// fails verification.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            ReplayError::Fixture { .. } | ReplayError::Corpus { .. }
        )
    }
}
