//! The corpus export (`gait.fleet.replay_corpus`, JSON Lines) an offline CI run replays without a server.
//!
//! Line 1 is a [`CorpusHeader`] (org, filters, `until_id`, total samples); every further line one distinct
//! intent ([`CorpusLine`]): its digest, how many decisions carried it, up to five sample ids in corpus order,
//! and the captured normalized intent embedded as the JSON it is. Replaying the file gives the report the
//! server gives for the same `until_id`, byte for byte when signed with the same key.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CorpusIntent, MAX_SAMPLE_IDS, ReplayError};

/// Schema id of the corpus header line.
pub const CORPUS_SCHEMA_ID: &str = "gait.fleet.replay_corpus";

/// The first line of a corpus export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusHeader {
    /// [`CORPUS_SCHEMA_ID`].
    pub schema_id: String,
    /// `1.0.0`.
    pub schema_version: String,
    /// The org the corpus belongs to.
    pub org: String,
    /// Project filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Environment filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The largest evidence index id read.
    pub until_id: u64,
    /// Captured decisions read (before deduplication).
    pub samples: u64,
}

impl CorpusHeader {
    /// A header for the given scope and pin.
    pub fn new(
        org: String,
        project: Option<String>,
        env: Option<String>,
        until_id: u64,
        samples: u64,
    ) -> Self {
        CorpusHeader {
            schema_id: CORPUS_SCHEMA_ID.to_owned(),
            schema_version: "1.0.0".to_owned(),
            org,
            project,
            env,
            until_id,
            samples,
        }
    }

    /// The header line, newline-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line =
            gait_canon::canonical_bytes(&serde_json::to_value(self).unwrap_or(Value::Null));
        line.push(b'\n');
        line
    }
}

/// One distinct intent line, written without re-encoding the captured intent.
pub struct CorpusLine;

impl CorpusLine {
    /// Appends the line of `intent` (newline-terminated) to `out`. `intent.normalized_intent` must be one JSON
    /// value (as captured records hold it) or empty (written as `null`).
    pub fn write(intent: &CorpusIntent, out: &mut Vec<u8>) {
        let samples: Vec<&String> = intent.samples.iter().take(MAX_SAMPLE_IDS).collect();
        out.extend_from_slice(b"{\"count\":");
        out.extend_from_slice(intent.count.to_string().as_bytes());
        out.extend_from_slice(b",\"intent_digest\":");
        out.extend_from_slice(
            serde_json::to_string(&intent.intent_digest)
                .unwrap_or_default()
                .as_bytes(),
        );
        out.extend_from_slice(b",\"normalized_intent\":");
        // An intent whose record could not be read is kept as `null`, so an offline replay counts it as
        // skipped exactly as the server does.
        if intent.normalized_intent.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.extend_from_slice(&intent.normalized_intent);
        }
        out.extend_from_slice(b",\"samples\":");
        out.extend_from_slice(
            serde_json::to_string(&samples)
                .unwrap_or_default()
                .as_bytes(),
        );
        out.extend_from_slice(b"}\n");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    count: u64,
    intent_digest: String,
    normalized_intent: Value,
    #[serde(default)]
    samples: Vec<String>,
}

/// Reads a corpus export: its header and its distinct intents (in file order).
pub fn parse_corpus(text: &str) -> Result<(CorpusHeader, Vec<CorpusIntent>), ReplayError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or_else(|| ReplayError::Corpus {
        line: 1,
        message: "empty file: the first line must be the corpus header".into(),
    })?;
    let header: CorpusHeader = serde_json::from_str(first).map_err(|e| ReplayError::Corpus {
        line: 1,
        message: format!("header: {e}"),
    })?;
    if header.schema_id != CORPUS_SCHEMA_ID {
        return Err(ReplayError::Corpus {
            line: 1,
            message: format!(
                "schema_id is `{}`, expected `{CORPUS_SCHEMA_ID}`",
                header.schema_id
            ),
        });
    }
    let mut intents = Vec::new();
    for (n, text) in lines {
        let bad = |message: String| ReplayError::Corpus {
            line: n + 1,
            message,
        };
        let line: Line = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if line.samples.len() > MAX_SAMPLE_IDS {
            return Err(bad(format!("more than {MAX_SAMPLE_IDS} samples")));
        }
        intents.push(CorpusIntent {
            intent_digest: line.intent_digest,
            samples: line.samples,
            count: line.count,
            normalized_intent: serde_json::to_vec(&line.normalized_intent)
                .map_err(|e| bad(e.to_string()))?,
        });
    }
    Ok((header, intents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_corpus_reads_back() {
        let header = CorpusHeader::new("acme".into(), Some("p".into()), None, 9, 3);
        let intent = CorpusIntent {
            intent_digest: "ab".repeat(32),
            samples: vec!["a:1".into(), "b:2".into()],
            count: 3,
            normalized_intent: br#"{"tool_name":"tool.read"}"#.to_vec(),
        };
        let mut file = header.to_line();
        CorpusLine::write(&intent, &mut file);
        let (h, intents) = parse_corpus(std::str::from_utf8(&file).unwrap()).unwrap();
        assert_eq!(h, header);
        assert_eq!(intents, [intent]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let mut file = CorpusHeader::new("acme".into(), None, None, 1, 1).to_line();
        file.extend_from_slice(b"{\"count\":1}\n");
        let err = parse_corpus(std::str::from_utf8(&file).unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("corpus line 2:"), "{err}");
        assert!(parse_corpus("").unwrap_err().to_string().contains("header"));
    }
}
