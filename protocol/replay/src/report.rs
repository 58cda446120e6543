//! The replay report (`gait.fleet.replay_report`): what changed between a baseline and a candidate on a pinned
//! corpus and a set of fixtures, in a form that is byte-for-byte reproducible, signed with Ed25519 over its
//! DigestJCS (Gait's SignJSON, as bundle manifests and traces are) and verifiable offline.
//!
//! Layout rules that make the bytes repeat: no timestamps; `until_id` pins the corpus and is echoed; the
//! `changed` list is sorted by `(intent_digest, fixture_path)`; sample ids inside an entry are sorted; every
//! map is ordered; the document is encoded as RFC 8785 canonical JSON with the signature inside it.

use std::collections::BTreeMap;

use gait_canon::sign::{PublicKey, Signature, SigningKey, sign_json, verify_json};
use gait_policy::{Policy, Verdict, parse_intent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evaluate::{PairOutcome, Side, evaluate_corpus, evaluate_pair};
use crate::{CorpusIntent, Fixture, ReplayError};

/// Schema id of a replay report.
pub const REPORT_SCHEMA_ID: &str = "gait.fleet.replay_report";
/// Schema version of a replay report.
pub const REPORT_SCHEMA_VERSION: &str = "1.0.0";
/// Most sample ids one changed entry names (its `count` says how many samples share the intent).
pub const MAX_SAMPLE_IDS: usize = 5;

/// Everything one replay reads.
#[derive(Debug)]
pub struct ReplayInput<'a> {
    /// The org whose corpus this is.
    pub org: String,
    /// The project the corpus was narrowed to, if any.
    pub project: Option<String>,
    /// The environment the corpus was narrowed to, if any.
    pub env: Option<String>,
    /// The corpus pin: the largest evidence index id read (0 for an empty corpus).
    pub until_id: u64,
    /// Decisions the corpus holds (before deduplication by intent digest).
    pub samples_total: u64,
    /// The policy in force.
    pub baseline: &'a Policy,
    /// The policy that would replace it.
    pub candidate: &'a Policy,
    /// The distinct captured intents.
    pub corpus: &'a [CorpusIntent],
    /// Gait intent fixtures, evaluated after the corpus.
    pub fixtures: &'a [Fixture],
    /// Threads to evaluate the corpus on.
    pub threads: usize,
    /// Most entries the `changed` list holds (the counts always cover every change); `None` = all.
    pub max_changed: Option<usize>,
}

/// The corpus a report covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusSummary {
    /// The largest evidence index id read; rerun with it to reproduce the report.
    pub until_id: u64,
    /// Captured decisions read.
    pub samples: u64,
    /// Distinct intent digests among them.
    pub distinct_intents: u64,
    /// Distinct intents that could not be read or evaluated (their samples are in no other count).
    pub skipped: u64,
}

/// Changes and flips of one tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCounts {
    /// Samples that changed.
    pub changed: u64,
    /// Samples whose verdict flipped.
    pub flips: u64,
}

/// One distinct intent (or fixture) whose decision changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedSample {
    /// The digest of the normalized intent.
    pub intent_digest: String,
    /// The fixture this came from (fixtures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixture_path: Option<String>,
    /// The intent's tool.
    pub tool: String,
    /// Up to [`MAX_SAMPLE_IDS`] decisions (`<agent>:<seq>`) that carried this intent, sorted (corpus only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
    /// How many samples carried this intent (1 for a fixture).
    pub count: u64,
    /// What the baseline decided.
    pub baseline: Side,
    /// What the candidate decided.
    pub candidate: Side,
    /// The verdicts differ.
    pub verdict_flip: bool,
}

/// The replay report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_SCHEMA_ID`].
    pub schema_id: String,
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The org whose corpus was replayed.
    pub org: String,
    /// Project filter of the corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Environment filter of the corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Gait policy digest of the baseline.
    pub baseline_digest: String,
    /// Gait policy digest of the candidate.
    pub candidate_digest: String,
    /// The corpus covered.
    pub corpus: CorpusSummary,
    /// Fixtures evaluated.
    pub fixtures_total: u64,
    /// Samples (corpus decisions and fixtures) whose decision changed (Gait's rule).
    pub changed_total: u64,
    /// Samples whose verdict flipped.
    pub flips_total: u64,
    /// Changed samples by `<baseline verdict>-><candidate verdict>`.
    pub by_verdict_pair: BTreeMap<String, u64>,
    /// Changes and flips by tool.
    pub by_tool: BTreeMap<String, ToolCounts>,
    /// Changed samples by each reason code one side gives and the other does not.
    pub by_reason: BTreeMap<String, u64>,
    /// Gait's stage recommendation: `enforce`, `require_approval` or `observe`.
    pub recommendation: String,
    /// The changed intents, sorted by `(intent_digest, fixture_path)`.
    pub changed: Vec<ChangedSample>,
    /// The `changed` list was cut at the caller's maximum (the counts still cover everything).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_truncated: bool,
    /// Ed25519 over the DigestJCS of the report without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl Report {
    /// Whether any verdict flipped (the CLI's exit 5).
    pub fn has_flips(&self) -> bool {
        self.flips_total > 0
    }
}

/// The scope and pin a report covers: everything of it that is not computed from the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportScope {
    /// The org whose corpus this is.
    pub org: String,
    /// The project the corpus was narrowed to, if any.
    pub project: Option<String>,
    /// The environment the corpus was narrowed to, if any.
    pub env: Option<String>,
    /// The corpus pin: the largest evidence index id read (0 for an empty corpus).
    pub until_id: u64,
}

/// A changed entry ordered by the report's key `(intent_digest, fixture_path)`.
#[derive(Debug)]
struct ByKey(ChangedSample);

impl ByKey {
    fn key(&self) -> (&str, Option<&str>) {
        (&self.0.intent_digest, self.0.fixture_path.as_deref())
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A report built from a corpus that arrives in chunks ([`Self::add_corpus`]), so a caller streaming the
/// corpus from a store never holds it whole: the builder keeps the counts, Gait's recommendation flags and the
/// first `max_changed` changed entries by `(intent_digest, fixture_path)` — exactly the entries the sorted,
/// truncated list of a report built at once keeps, so the bytes do not depend on the chunking.
#[derive(Debug)]
pub struct ReportBuilder<'p> {
    baseline: &'p Policy,
    candidate: &'p Policy,
    threads: usize,
    max_changed: Option<usize>,
    /// The kept entries: a max-heap, so the largest key is evicted when one more arrives over the maximum.
    kept: std::collections::BinaryHeap<ByKey>,
    /// Changed entries seen (kept or not).
    changed_entries: u64,
    samples: u64,
    distinct: u64,
    skipped: u64,
    changed_total: u64,
    flips_total: u64,
    by_verdict_pair: BTreeMap<String, u64>,
    by_tool: BTreeMap<String, ToolCounts>,
    by_reason: BTreeMap<String, u64>,
    /// Some change lets through what the baseline stopped.
    relaxes: bool,
    /// Some change blocks what the baseline did not.
    new_block: bool,
}

impl<'p> ReportBuilder<'p> {
    /// A builder comparing `candidate` with `baseline`, evaluating on up to `threads` threads, keeping at most
    /// `max_changed` entries in the `changed` list (`None` = all; the counts always cover every change).
    pub fn new(
        baseline: &'p Policy,
        candidate: &'p Policy,
        threads: usize,
        max_changed: Option<usize>,
    ) -> Self {
        ReportBuilder {
            baseline,
            candidate,
            threads,
            max_changed,
            kept: Default::default(),
            changed_entries: 0,
            samples: 0,
            distinct: 0,
            skipped: 0,
            changed_total: 0,
            flips_total: 0,
            by_verdict_pair: BTreeMap::new(),
            by_tool: BTreeMap::new(),
            by_reason: BTreeMap::new(),
            relaxes: false,
            new_block: false,
        }
    }

    /// Evaluates the next chunk of distinct corpus intents (each digest once over the whole corpus) and folds
    /// it in; an intent that does not read or evaluate is counted in `corpus.skipped`.
    pub fn add_corpus(&mut self, intents: &[CorpusIntent]) {
        let results = evaluate_corpus(self.baseline, self.candidate, intents, self.threads);
        for (captured, result) in intents.iter().zip(results) {
            self.distinct += 1;
            self.samples += captured.count;
            let Ok(outcome) = result else {
                self.skipped += 1;
                continue;
            };
            if outcome.changed() {
                let mut samples: Vec<String> = captured
                    .samples
                    .iter()
                    .take(MAX_SAMPLE_IDS)
                    .cloned()
                    .collect();
                samples.sort_unstable();
                self.fold(entry(outcome, None, samples, captured.count));
            }
        }
    }

    /// Counts one changed entry and keeps it if it is among the first `max_changed` by key.
    fn fold(&mut self, c: ChangedSample) {
        self.changed_entries += 1;
        self.changed_total += c.count;
        let tool = self.by_tool.entry(c.tool.clone()).or_default();
        tool.changed += c.count;
        if c.verdict_flip {
            self.flips_total += c.count;
            tool.flips += c.count;
        }
        *self
            .by_verdict_pair
            .entry(format!("{}->{}", c.baseline.verdict, c.candidate.verdict))
            .or_insert(0) += c.count;
        let (b, k) = (&c.baseline.reason_codes, &c.candidate.reason_codes);
        for code in b
            .iter()
            .filter(|r| !k.contains(r))
            .chain(k.iter().filter(|r| !b.contains(r)))
        {
            *self.by_reason.entry(code.clone()).or_insert(0) += c.count;
        }
        self.relaxes |= c.candidate.verdict < c.baseline.verdict;
        self.new_block |=
            c.candidate.verdict == Verdict::Block && c.baseline.verdict != Verdict::Block;
        match self.max_changed {
            Some(0) => {}
            Some(max) if self.kept.len() >= max => {
                let c = ByKey(c);
                if self.kept.peek().is_some_and(|largest| c < *largest) {
                    self.kept.pop();
                    self.kept.push(c);
                }
            }
            _ => self.kept.push(ByKey(c)),
        }
    }

    /// Evaluates the fixtures (a fixture that does not read or evaluate is an error naming it) and builds the
    /// (unsigned) report. `samples_total` is the corpus's decision count when the caller knows it from
    /// elsewhere (a corpus file's header); `None` takes the sum of the intents' counts.
    pub fn finish(
        mut self,
        scope: ReportScope,
        samples_total: Option<u64>,
        fixtures: &[Fixture],
    ) -> Result<Report, ReplayError> {
        for fixture in fixtures {
            let bad = |message: String| ReplayError::Fixture {
                path: fixture.path.clone(),
                message,
            };
            let raw = parse_intent(&fixture.intent).map_err(|e| bad(e.to_string()))?;
            let outcome = evaluate_pair(self.baseline, self.candidate, &raw)
                .map_err(|e| bad(e.to_string()))?;
            if outcome.changed() {
                self.fold(entry(outcome, Some(fixture.path.clone()), Vec::new(), 1));
            }
        }
        // Gait's `recommendSimulationStage` over the changed samples: any relaxation (the candidate lets
        // through what the baseline stopped) → `observe`; else any new block → `require_approval`; else
        // `enforce`.
        let recommendation = if self.relaxes {
            "observe"
        } else if self.new_block {
            "require_approval"
        } else {
            "enforce"
        };
        let changed_truncated = self.changed_entries > self.kept.len() as u64;
        let changed = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|k| k.0)
            .collect();
        Ok(Report {
            schema_id: REPORT_SCHEMA_ID.to_owned(),
            schema_version: REPORT_SCHEMA_VERSION.to_owned(),
            org: scope.org,
            project: scope.project,
            env: scope.env,
            baseline_digest: self.baseline.digest(),
            candidate_digest: self.candidate.digest(),
            corpus: CorpusSummary {
                until_id: scope.until_id,
                samples: samples_total.unwrap_or(self.samples),
                distinct_intents: self.distinct,
                skipped: self.skipped,
            },
            fixtures_total: fixtures.len() as u64,
            changed_total: self.changed_total,
            flips_total: self.flips_total,
            by_verdict_pair: self.by_verdict_pair,
            by_tool: self.by_tool,
            by_reason: self.by_reason,
            recommendation: recommendation.to_owned(),
            changed,
            changed_truncated,
            signature: None,
        })
    }
}

/// Evaluates the corpus and the fixtures and builds the (unsigned) report at once ([`ReportBuilder`] over the
/// whole corpus). A fixture that does not read or evaluate is an error naming it; a corpus intent that does
/// not is counted in `corpus.skipped`.
pub fn build_report(input: &ReplayInput<'_>) -> Result<Report, ReplayError> {
    let mut builder = ReportBuilder::new(
        input.baseline,
        input.candidate,
        input.threads,
        input.max_changed,
    );
    builder.add_corpus(input.corpus);
    builder.finish(
        ReportScope {
            org: input.org.clone(),
            project: input.project.clone(),
            env: input.env.clone(),
            until_id: input.until_id,
        },
        Some(input.samples_total),
        input.fixtures,
    )
}

fn entry(
    outcome: PairOutcome,
    fixture_path: Option<String>,
    samples: Vec<String>,
    count: u64,
) -> ChangedSample {
    let verdict_flip = outcome.verdict_flip();
    ChangedSample {
        intent_digest: outcome.intent_digest,
        fixture_path,
        tool: outcome.tool,
        samples,
        count,
        baseline: outcome.baseline,
        candidate: outcome.candidate,
        verdict_flip,
    }
}

fn to_value(report: &Report) -> Value {
    // A report is strings, integers, booleans, maps with string keys and lists: it always serialises.
    serde_json::to_value(report).unwrap_or(Value::Null)
}

/// The report's canonical bytes (RFC 8785), signature included when set.
pub fn encode_report(report: &Report) -> Vec<u8> {
    gait_canon::canonical_bytes(&to_value(report))
}

/// Signs the report (replacing any signature) and returns its canonical bytes.
pub fn sign_report(report: &mut Report, key: &SigningKey) -> Vec<u8> {
    report.signature = None;
    report.signature = Some(sign_json(key, &to_value(report)));
    encode_report(report)
}

/// Reads report bytes and checks their signature with `key`.
pub fn verify_report(bytes: &[u8], key: &PublicKey) -> Result<Report, ReplayError> {
    // Strict, as bundle verification reads: a duplicate key could make a verifier and a reader disagree.
    let mut value: Value =
        gait_canon::parse_json(bytes).map_err(|e| ReplayError::Malformed(e.to_string()))?;
    let signature = value
        .as_object_mut()
        .ok_or_else(|| ReplayError::Malformed("not a JSON object".into()))?
        .remove("signature")
        .ok_or_else(|| ReplayError::Signature("the report is not signed".into()))?;
    let signature: Signature = serde_json::from_value(signature)
        .map_err(|e| ReplayError::Malformed(format!("signature: {e}")))?;
    verify_json(key, &value, &signature).map_err(|e| ReplayError::Signature(e.to_string()))?;
    let mut report: Report =
        serde_json::from_value(value).map_err(|e| ReplayError::Malformed(e.to_string()))?;
    if report.schema_id != REPORT_SCHEMA_ID {
        return Err(ReplayError::Malformed(format!(
            "schema_id is `{}`, expected `{REPORT_SCHEMA_ID}`",
            report.schema_id
        )));
    }
    report.signature = Some(signature);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gait_policy::{parse_and_normalize_intent, parse_policy_yaml};

    const BASE: &str = "default_verdict: allow\n";
    const CAND: &str = "default_verdict: allow\nrules:\n  - name: no-delete\n    effect: block\n    match:\n      tool_names: [tool.delete]\n    reason_codes: [no_delete]\n";

    fn doc(tool: &str, path: &str) -> String {
        format!(
            r#"{{"schema_id":"gait.gate.intent_request","schema_version":"1.0.0","created_at":"2026-01-01T00:00:00Z","producer_version":"t","tool_name":"{tool}","args":{{"path":"{path}"}},"targets":[{{"kind":"path","value":"{path}"}}],"context":{{"identity":"u","workspace":"/w","risk_class":"low"}}}}"#
        )
    }

    fn captured(tool: &str, path: &str, samples: &[&str]) -> CorpusIntent {
        let i = parse_and_normalize_intent(doc(tool, path).as_bytes()).unwrap();
        CorpusIntent {
            intent_digest: i.intent_digest.clone(),
            samples: samples.iter().map(|s| s.to_string()).collect(),
            count: samples.len() as u64,
            normalized_intent: serde_json::to_vec(&i.digest_payload()).unwrap(),
        }
    }

    fn report(threads: usize, corpus: &[CorpusIntent], fixtures: &[Fixture]) -> Report {
        let (b, c) = (
            parse_policy_yaml(BASE.as_bytes()).unwrap(),
            parse_policy_yaml(CAND.as_bytes()).unwrap(),
        );
        build_report(&ReplayInput {
            org: "acme".into(),
            project: None,
            env: None,
            until_id: 42,
            samples_total: corpus.iter().map(|c| c.count).sum(),
            baseline: &b,
            candidate: &c,
            corpus,
            fixtures,
            threads,
            max_changed: None,
        })
        .unwrap()
    }

    fn corpus() -> Vec<CorpusIntent> {
        vec![
            captured("tool.delete", "/a", &["b:9", "a:2"]),
            captured("tool.read", "/a", &["a:1"]),
            captured("tool.delete", "/b", &["c:3"]),
            captured("tool.write", "/a", &["a:4", "a:5"]),
        ]
    }

    #[test]
    fn a_chunked_build_gives_the_bytes_of_a_build_at_once_at_every_cut_and_order() {
        let (b, c) = (
            parse_policy_yaml(BASE.as_bytes()).unwrap(),
            parse_policy_yaml(CAND.as_bytes()).unwrap(),
        );
        // 24 intents, 16 of them changed (every delete flips), in no particular digest order.
        let corpus: Vec<CorpusIntent> = (0..24)
            .map(|i| {
                let tool = if i % 3 == 0 {
                    "tool.read"
                } else {
                    "tool.delete"
                };
                captured(tool, &format!("/d/{i}"), &[&format!("a:{i}")])
            })
            .collect();
        let scope = ReportScope {
            org: "acme".into(),
            project: None,
            env: None,
            until_id: 42,
        };
        for max_changed in [None, Some(0), Some(1), Some(5), Some(16), Some(100)] {
            let mut whole = ReportBuilder::new(&b, &c, 2, max_changed);
            whole.add_corpus(&corpus);
            let whole = encode_report(&whole.finish(scope.clone(), None, &[]).unwrap());
            let expected_truncated = max_changed.is_some_and(|m| m < 16);
            for chunk in [1, 3, 7, 24] {
                let mut builder = ReportBuilder::new(&b, &c, 1, max_changed);
                for part in corpus.chunks(chunk) {
                    builder.add_corpus(part);
                }
                let r = builder.finish(scope.clone(), None, &[]).unwrap();
                assert_eq!(
                    encode_report(&r),
                    whole,
                    "max {max_changed:?} chunk {chunk}"
                );
                assert_eq!(r.changed_total, 16);
                assert_eq!(r.corpus.samples, 24);
                assert_eq!(r.changed_truncated, expected_truncated, "{max_changed:?}");
                assert_eq!(r.changed.len(), max_changed.unwrap_or(16).min(16));
            }
            // The corpus order does not matter either (a replay reads it in whatever order the plan gives).
            let mut reversed = ReportBuilder::new(&b, &c, 2, max_changed);
            for part in corpus.iter().rev().cloned().collect::<Vec<_>>().chunks(5) {
                reversed.add_corpus(part);
            }
            let reversed = reversed.finish(scope.clone(), None, &[]).unwrap();
            assert_eq!(
                encode_report(&reversed),
                whole,
                "max {max_changed:?} reversed"
            );
        }
        // The kept entries are the smallest digests of all changed ones.
        let mut all: Vec<String> = corpus
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, c)| c.intent_digest.clone())
            .collect();
        all.sort();
        let mut five = ReportBuilder::new(&b, &c, 1, Some(5));
        for part in corpus.chunks(4) {
            five.add_corpus(part);
        }
        let kept: Vec<String> = five
            .finish(scope, None, &[])
            .unwrap()
            .changed
            .into_iter()
            .map(|c| c.intent_digest)
            .collect();
        assert_eq!(kept, all[..5]);
    }

    #[test]
    fn the_report_names_exactly_the_flipped_samples_sorted() {
        let r = report(2, &corpus(), &[]);
        assert_eq!(r.flips_total, 3);
        assert_eq!(r.changed_total, 3);
        assert_eq!(r.corpus.samples, 6);
        assert_eq!(r.corpus.distinct_intents, 4);
        let samples: Vec<&str> = r
            .changed
            .iter()
            .flat_map(|c| c.samples.iter().map(String::as_str))
            .collect();
        let mut sorted = samples.clone();
        sorted.sort();
        assert_eq!(sorted, ["a:2", "b:9", "c:3"]);
        assert!(
            r.changed
                .iter()
                .all(|c| c.tool == "tool.delete" && c.verdict_flip)
        );
        assert!(
            r.changed
                .windows(2)
                .all(|w| w[0].intent_digest <= w[1].intent_digest)
        );
        assert_eq!(r.by_verdict_pair["allow->block"], 3);
        assert_eq!(r.by_reason["no_delete"], 3);
        assert_eq!(r.recommendation, "require_approval");
    }

    #[test]
    fn the_bytes_do_not_depend_on_threads_or_corpus_order_and_verify() {
        let key = SigningKey::from_seed(&[7; 32]);
        let mut one = report(1, &corpus(), &[]);
        let mut reversed = corpus();
        reversed.reverse();
        let mut four = report(4, &reversed, &[]);
        let (a, b) = (sign_report(&mut one, &key), sign_report(&mut four, &key));
        assert_eq!(a, b);
        let read = verify_report(&a, &key.public_key()).unwrap();
        assert_eq!(read, one);
        // Any change to the signed content fails verification.
        let tampered = String::from_utf8(a)
            .unwrap()
            .replace("\"flips_total\":3", "\"flips_total\":0");
        assert!(matches!(
            verify_report(tampered.as_bytes(), &key.public_key()),
            Err(ReplayError::Signature(_))
        ));
        let other = SigningKey::from_seed(&[8; 32]).public_key();
        assert!(verify_report(&b, &other).is_err());
    }

    #[test]
    fn fixtures_are_reported_by_path_and_a_bad_one_is_named() {
        let fixtures = [
            Fixture {
                path: "x/delete.json".into(),
                intent: doc("tool.delete", "/f").into_bytes(),
            },
            Fixture {
                path: "x/read.json".into(),
                intent: doc("tool.read", "/f").into_bytes(),
            },
        ];
        let r = report(1, &[], &fixtures);
        assert_eq!(r.fixtures_total, 2);
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changed[0].fixture_path.as_deref(), Some("x/delete.json"));
        let (b, c) = (
            parse_policy_yaml(BASE.as_bytes()).unwrap(),
            parse_policy_yaml(CAND.as_bytes()).unwrap(),
        );
        let bad = [Fixture {
            path: "x/bad.json".into(),
            intent: b"[1]".to_vec(),
        }];
        let err = build_report(&ReplayInput {
            org: "acme".into(),
            project: None,
            env: None,
            until_id: 0,
            samples_total: 0,
            baseline: &b,
            candidate: &c,
            corpus: &[],
            fixtures: &bad,
            threads: 1,
            max_changed: None,
        })
        .unwrap_err();
        assert!(
            err.is_input() && err.to_string().contains("x/bad.json"),
            "{err}"
        );
    }

    #[test]
    fn no_change_recommends_enforce_and_a_relaxation_observe() {
        let r = report(1, &[captured("tool.read", "/a", &["a:1"])], &[]);
        assert_eq!((r.changed_total, r.recommendation.as_str()), (0, "enforce"));
        let (b, c) = (
            parse_policy_yaml(CAND.as_bytes()).unwrap(),
            parse_policy_yaml(BASE.as_bytes()).unwrap(),
        );
        let corpus = [captured("tool.delete", "/a", &["a:1"])];
        let r = build_report(&ReplayInput {
            org: "acme".into(),
            project: None,
            env: None,
            until_id: 1,
            samples_total: 1,
            baseline: &b,
            candidate: &c,
            corpus: &corpus,
            fixtures: &[],
            threads: 1,
            max_changed: None,
        })
        .unwrap();
        assert_eq!(r.recommendation, "observe");
    }

    #[test]
    fn a_report_with_a_duplicate_key_does_not_verify() {
        let key = SigningKey::from_seed(&[3; 32]);
        let mut r = report(1, &corpus(), &[]);
        let bytes = sign_report(&mut r, &key);
        assert!(verify_report(&bytes, &key.public_key()).is_ok());
        // The same signed bytes with a second, conflicting `org` in front: a lenient reader keeps the last.
        let text = String::from_utf8(bytes).unwrap();
        let forged = text.replacen('{', "{\"org\":\"evil\",", 1);
        let err = verify_report(forged.as_bytes(), &key.public_key()).unwrap_err();
        assert!(matches!(err, ReplayError::Malformed(_)), "{err}");
    }
}
