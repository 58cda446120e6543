//! One intent through the baseline and the candidate, compared with `gait policy simulate`'s rule, and a corpus
//! of distinct intents evaluated on several threads.
//!
//! Each side is Gait's `policy test` evaluation (`gait_policy::gate::run_policy_test`: normalize, then evaluate
//! with no approvals, rate limits or trace); the fields Gait compares are the verdict, the reason codes, the
//! violations and the matched rule. A sample **changed** when any of the four differs and is a **verdict flip**
//! when the verdicts differ. The result document's `created_at`, producer and digests are never compared nor
//! copied: they do not depend on the policy's decision.

use gait_policy::{
    EvalError, EvalOptions, IntentRequest, NormalizedIntent, Policy, Verdict, evaluate,
    normalize_intent, parse_intent,
};
use serde::{Deserialize, Serialize};

use crate::CorpusIntent;

/// What one policy decided on one intent: the fields `gait policy simulate` compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The verdict.
    pub verdict: Verdict,
    /// Reason codes, as Gait sorts them.
    pub reason_codes: Vec<String>,
    /// Violations, as Gait sorts them.
    pub violations: Vec<String>,
    /// Deciding rule names, comma-joined; absent when no rule matched.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub matched_rule: String,
}

/// Both policies' decisions on one intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairOutcome {
    /// The digest of the normalized intent.
    pub intent_digest: String,
    /// The intent's tool.
    pub tool: String,
    /// The baseline's decision.
    pub baseline: Side,
    /// The candidate's decision.
    pub candidate: Side,
}

impl PairOutcome {
    /// Gait's change rule: verdict, reason codes, violations or matched rule differ.
    pub fn changed(&self) -> bool {
        self.baseline != self.candidate
    }

    /// The verdicts differ.
    pub fn verdict_flip(&self) -> bool {
        self.baseline.verdict != self.candidate.verdict
    }
}

/// Both policies on an already normalized intent.
pub fn evaluate_normalized(
    baseline: &Policy,
    candidate: &Policy,
    intent: &NormalizedIntent,
) -> Result<PairOutcome, EvalError> {
    let side = |policy: &Policy| -> Result<Side, EvalError> {
        let outcome = evaluate(policy, intent, &EvalOptions::default())?;
        Ok(Side {
            verdict: outcome.verdict,
            reason_codes: outcome.reason_codes,
            violations: outcome.violations,
            matched_rule: outcome.matched_rule,
        })
    };
    Ok(PairOutcome {
        intent_digest: intent.intent_digest.clone(),
        tool: intent.tool_name.clone(),
        baseline: side(baseline)?,
        candidate: side(candidate)?,
    })
}

/// Both policies on an intent request as Gait reads it from a fixture: normalized first (an intent that does
/// not normalize is an error, as in `gait policy test`).
pub fn evaluate_pair(
    baseline: &Policy,
    candidate: &Policy,
    intent: &IntentRequest,
) -> Result<PairOutcome, EvalError> {
    let normalized = normalize_intent(intent)?;
    evaluate_normalized(baseline, candidate, &normalized)
}

/// One corpus intent, from its captured bytes.
fn evaluate_captured(
    baseline: &Policy,
    candidate: &Policy,
    captured: &CorpusIntent,
) -> Result<PairOutcome, String> {
    let raw = parse_intent(&captured.normalized_intent).map_err(|e| e.to_string())?;
    evaluate_pair(baseline, candidate, &raw).map_err(|e| e.to_string())
}

/// Every corpus intent through both policies on up to `threads` threads; the results come back in the order of
/// `intents` whatever the thread count, an intent that does not read or evaluate as its error message.
pub fn evaluate_corpus(
    baseline: &Policy,
    candidate: &Policy,
    intents: &[CorpusIntent],
    threads: usize,
) -> Vec<Result<PairOutcome, String>> {
    evaluate_each(intents, threads, &|i| {
        evaluate_captured(baseline, candidate, i)
    })
}

/// What one intent evaluates to.
type Eval<'a> = dyn Fn(&CorpusIntent) -> Result<PairOutcome, String> + Sync + 'a;

/// `eval` on every intent, on up to `threads` threads, in the order of `intents`. A panic is caught per intent
/// and becomes that intent's error, so the results are the same for every thread count (review L3): never a
/// whole chunk of errors on one machine and a failed request on another.
fn evaluate_each(
    intents: &[CorpusIntent],
    threads: usize,
    eval: &Eval<'_>,
) -> Vec<Result<PairOutcome, String>> {
    let one = |i: &CorpusIntent| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eval(i)))
            .unwrap_or_else(|_| Err(format!("evaluation panicked on intent {}", i.intent_digest)))
    };
    let threads = threads.clamp(1, 64);
    if threads == 1 || intents.len() < 2 * threads {
        return intents.iter().map(one).collect();
    }
    let chunk = intents.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = intents
            .chunks(chunk)
            .map(|part| {
                (
                    part,
                    scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(intents.len());
        for (part, worker) in workers {
            match worker.join() {
                Ok(results) => out.extend(results),
                // Unreachable (every intent is caught); kept so a worker's death still yields one result each.
                Err(_) => out
                    .extend(part.iter().map(|i| {
                        Err(format!("evaluation panicked on intent {}", i.intent_digest))
                    })),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gait_policy::{parse_and_normalize_intent, parse_policy_yaml};

    const ALLOW_ALL: &str = "default_verdict: allow\n";
    const BLOCK_DELETE: &str = "default_verdict: allow\nrules:\n  - name: no-delete\n    effect: block\n    match:\n      tool_names: [tool.delete]\n";

    fn intent(tool: &str) -> NormalizedIntent {
        let doc = format!(
            r#"{{"schema_id":"gait.gate.intent_request","schema_version":"1.0.0","created_at":"2026-01-01T00:00:00Z","producer_version":"t","tool_name":"{tool}","args":{{"path":"/tmp/x"}},"targets":[{{"kind":"path","value":"/tmp/x","operation":"write"}}],"context":{{"identity":"u","workspace":"/w","risk_class":"low"}}}}"#
        );
        parse_and_normalize_intent(doc.as_bytes()).unwrap()
    }

    #[test]
    fn a_new_block_is_a_change_and_a_flip_other_tools_are_neither() {
        let base = parse_policy_yaml(ALLOW_ALL.as_bytes()).unwrap();
        let cand = parse_policy_yaml(BLOCK_DELETE.as_bytes()).unwrap();
        let delete = evaluate_normalized(&base, &cand, &intent("tool.delete")).unwrap();
        assert!(delete.changed() && delete.verdict_flip(), "{delete:?}");
        assert_eq!(delete.candidate.verdict, Verdict::Block);
        assert_eq!(delete.candidate.matched_rule, "no-delete");
        let write = evaluate_normalized(&base, &cand, &intent("tool.write")).unwrap();
        assert!(!write.changed() && !write.verdict_flip(), "{write:?}");
    }

    #[test]
    fn the_same_policy_never_changes_anything() {
        let p = parse_policy_yaml(BLOCK_DELETE.as_bytes()).unwrap();
        for tool in ["tool.delete", "tool.write"] {
            assert!(
                !evaluate_normalized(&p, &p, &intent(tool))
                    .unwrap()
                    .changed()
            );
        }
    }

    #[test]
    fn corpus_results_keep_their_order_on_any_thread_count() {
        let base = parse_policy_yaml(ALLOW_ALL.as_bytes()).unwrap();
        let cand = parse_policy_yaml(BLOCK_DELETE.as_bytes()).unwrap();
        let intents: Vec<CorpusIntent> = (0..40)
            .map(|n| {
                let i = intent(if n % 3 == 0 {
                    "tool.delete"
                } else {
                    "tool.write"
                });
                CorpusIntent {
                    intent_digest: i.intent_digest.clone(),
                    samples: vec![format!("a:{n}")],
                    count: 1,
                    normalized_intent: serde_json::to_vec(&i.digest_payload()).unwrap(),
                }
            })
            .collect();
        let one = evaluate_corpus(&base, &cand, &intents, 1);
        let four = evaluate_corpus(&base, &cand, &intents, 4);
        assert_eq!(one, four);
        let flips = one
            .iter()
            .filter(|r| r.as_ref().unwrap().verdict_flip())
            .count();
        assert_eq!(flips, 14);
        // A captured intent that does not read is reported, not fatal.
        let broken = CorpusIntent {
            normalized_intent: b"{not json".to_vec(),
            ..intents[0].clone()
        };
        assert!(evaluate_corpus(&base, &cand, &[broken], 1)[0].is_err());
    }

    #[test]
    fn a_panicking_evaluation_is_one_error_on_any_thread_count() {
        let intents: Vec<CorpusIntent> = (0..40)
            .map(|n| CorpusIntent {
                intent_digest: format!("{n:064x}"),
                samples: vec![format!("a:{n}")],
                count: 1,
                normalized_intent: Vec::new(),
            })
            .collect();
        let eval = |i: &CorpusIntent| -> Result<PairOutcome, String> {
            if i.intent_digest.ends_with("07") {
                panic!("engine bug");
            }
            Err(format!("fine {}", i.intent_digest))
        };
        let one = evaluate_each(&intents, 1, &eval);
        for threads in [2, 4, 8] {
            assert_eq!(
                evaluate_each(&intents, threads, &eval),
                one,
                "{threads} threads"
            );
        }
        let panicked: Vec<usize> = one
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_err_and(|e| e.contains("panicked")))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(panicked, [7]);
    }
}
