//! Shifts in a tool's verdict mix, attributed.
//!
//! A family's fingerprint holds its verdict ([`crate::family`]), so a family never changes verdict: a shift in
//! the verdict mix shows as the mix of the families of one tool in one environment moving, for example from
//! mostly `allow` to mostly `block`. This module finds such shifts in daily counts and names their cause from
//! what else changed at the shift's start, with the same kinds and precedence as run drift ([`crate::drift`]):
//!
//! 1. **policy change**: a policy digest decided the tool's calls on the shift's first day that decided none
//!    of them in the baseline;
//! 2. **tool change**: the share of the tool's calls at high or critical risk, or destructive, moved by the
//!    threshold or more (the calls' shape changed under the agent);
//! 3. **runtime change** (of the enforcement configuration): an enforcement stage decided calls on the first day
//!    that decided none in the baseline (a rollout moved from `observe` to `enforce`, say).
//!
//! A new digest or stage counts only when it decided at least [`ShiftRule::threshold_per_mille`] of the day's
//! calls: a canary on a few calls cannot explain a move that large.
//!
//! Nothing in decision records tells a reference set apart, so that kind never appears here. A shift with
//! none of these is unattributed: the mix moved and the evidence does not say why.
//!
//! # The rule
//!
//! Days are UTC days, each with the counts of one tool in one environment. A day *shifts* when
//! - it and its baseline each hold at least [`ShiftRule::min_decisions`] decisions, and
//! - some verdict's share of the day differs from its share of the baseline by at least
//!   [`ShiftRule::threshold_per_mille`].
//!
//! The baseline is every earlier day within [`ShiftRule::baseline_days`] of it, back to the last shift at most:
//! after a shift the new mix is the norm, so a lasting change is reported once, on its first day. Shares are
//! integer per-mille (floor), so the answer is the same on every machine and for any order of ingest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drift::{Attribution, Cause, CauseKind};

/// What the rule counts as a shift (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftRule {
    /// How far a verdict's share must move, in per-mille of the decisions.
    pub threshold_per_mille: u32,
    /// The fewest decisions a day, and its baseline, must hold to be compared.
    pub min_decisions: u64,
    /// How many days before a day its baseline reaches back.
    pub baseline_days: u32,
}

impl Default for ShiftRule {
    fn default() -> Self {
        Self {
            threshold_per_mille: 200,
            min_decisions: 20,
            baseline_days: 7,
        }
    }
}

/// One tool's decisions in one environment on one day (or summed over a baseline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDay {
    /// UTC day (days since the Unix epoch).
    pub day: i64,
    /// Decisions by verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Decisions by enforcement stage (`enforce`, `observe`, `dry_run`, `none`).
    pub stages: BTreeMap<String, u64>,
    /// Decisions by the digest of the policy that decided them (decisions that named none are not here: an
    /// unknown digest is never a cause).
    pub policies: BTreeMap<String, u64>,
    /// Of the decisions, how many were at high or critical risk.
    pub high_risk: u64,
    /// Of the decisions, how many were destructive.
    pub destructive: u64,
}

impl ToolDay {
    /// All decisions of the day.
    pub fn decisions(&self) -> u64 {
        self.verdicts.values().sum()
    }

    fn add(&mut self, o: &ToolDay) {
        for (into, from) in [
            (&mut self.verdicts, &o.verdicts),
            (&mut self.stages, &o.stages),
            (&mut self.policies, &o.policies),
        ] {
            for (k, n) in from {
                *into.entry(k.clone()).or_default() += n;
            }
        }
        self.high_risk += o.high_risk;
        self.destructive += o.destructive;
    }
}

/// A verdict's share of the decisions, in per-mille (floor).
fn share(n: u64, total: u64) -> u32 {
    if total == 0 {
        return 0;
    }
    // n <= total, so the quotient is at most 1000.
    u32::try_from(u128::from(n) * 1000 / u128::from(total)).unwrap_or(1000)
}

/// A verdict mix: decisions and each verdict's share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// All decisions.
    pub decisions: u64,
    /// Decisions by verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Each verdict's share, per-mille (floor).
    pub per_mille: BTreeMap<String, u32>,
}

impl Mix {
    fn of(d: &ToolDay) -> Self {
        let decisions = d.decisions();
        Self {
            decisions,
            verdicts: d.verdicts.clone(),
            per_mille: d
                .verdicts
                .iter()
                .map(|(v, n)| (v.clone(), share(*n, decisions)))
                .collect(),
        }
    }
}

/// One shift of a tool's verdict mix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shift {
    /// The shift's first day.
    pub day: i64,
    /// The first and last day of the baseline it was compared with.
    pub baseline_from_day: i64,
    pub baseline_to_day: i64,
    /// The verdict whose share moved most (ties: the smallest name), and by how much (per-mille).
    pub verdict: String,
    pub moved_per_mille: u32,
    /// The mix of the baseline and of the day.
    pub before: Mix,
    pub after: Mix,
    /// Why (module docs): the causes found, the primary first, or none (unattributed).
    pub attribution: Attribution,
}

/// The verdict whose share moved most between `before` and `after`, and by how much.
fn moved(before: &Mix, after: &Mix) -> (String, u32) {
    let mut best = (String::new(), 0);
    for v in before.per_mille.keys().chain(after.per_mille.keys()) {
        let b = before.per_mille.get(v).copied().unwrap_or(0);
        let a = after.per_mille.get(v).copied().unwrap_or(0);
        let d = a.abs_diff(b);
        if d > best.1 || (d == best.1 && (best.0.is_empty() || *v < best.0)) {
            best = (v.clone(), d);
        }
    }
    best
}

/// The key of `counts` that `keep` keeps with the most decisions (ties: the smallest key).
fn most(counts: &BTreeMap<String, u64>, keep: impl Fn(&str) -> bool) -> Option<&String> {
    counts
        .iter()
        .filter(|(k, n)| **n > 0 && keep(k))
        .max_by(|(ka, na), (kb, nb)| na.cmp(nb).then_with(|| kb.cmp(ka)))
        .map(|(k, _)| k)
}

/// The new key of `after` (decided nothing in `before`, and at least `min_per_mille` of the day's `total`
/// decisions) with the most decisions, beside `before`'s main key.
fn appeared(
    kind: CauseKind,
    field: &str,
    before: &BTreeMap<String, u64>,
    (after, total): (&BTreeMap<String, u64>, u64),
    min_per_mille: u32,
) -> Option<Cause> {
    let seen = |k: &str| before.get(k).copied().unwrap_or(0) > 0;
    let new = most(after, |k| !seen(k))?;
    let n = after.get(new).copied().unwrap_or(0);
    if share(n.min(total), total) < min_per_mille {
        return None;
    }
    Some(Cause {
        kind,
        field: field.to_owned(),
        before: most(before, |_| true).cloned(),
        after: Some(new.clone()),
    })
}

/// Why the mix moved between `before` (the baseline) and `after` (the shift's first day) (module docs).
pub fn attribute(before: &ToolDay, after: &ToolDay, rule: &ShiftRule) -> Attribution {
    let mut causes = Vec::new();
    let (nb, na) = (before.decisions(), after.decisions());
    causes.extend(appeared(
        CauseKind::PolicyChange,
        "policy_digest",
        &before.policies,
        (&after.policies, na),
        rule.threshold_per_mille,
    ));
    for (field, b, a) in [
        ("high_risk_per_mille", before.high_risk, after.high_risk),
        (
            "destructive_per_mille",
            before.destructive,
            after.destructive,
        ),
    ] {
        let (b, a) = (share(b.min(nb), nb), share(a.min(na), na));
        if a.abs_diff(b) >= rule.threshold_per_mille {
            causes.push(Cause {
                kind: CauseKind::ToolChange,
                field: field.to_owned(),
                before: Some(b.to_string()),
                after: Some(a.to_string()),
            });
        }
    }
    causes.extend(appeared(
        CauseKind::RuntimeChange,
        "stage",
        &before.stages,
        (&after.stages, na),
        rule.threshold_per_mille,
    ));
    causes.sort();
    Attribution {
        primary: causes.first().cloned(),
        causes,
    }
}

/// The shifts in `days` (one tool in one environment; any order, one entry per day) under `rule`, oldest first.
pub fn shifts(days: &[ToolDay], rule: &ShiftRule) -> Vec<Shift> {
    let mut days: Vec<&ToolDay> = days.iter().collect();
    days.sort_by_key(|d| d.day);
    let mut out = Vec::new();
    // Days before this one are not in any baseline (the last shift's first day).
    let mut since = i64::MIN;
    for (i, day) in days.iter().enumerate() {
        if day.decisions() < rule.min_decisions {
            continue;
        }
        let first = day
            .day
            .saturating_sub(i64::from(rule.baseline_days))
            .max(since);
        let mut base = ToolDay::default();
        let mut span: Option<(i64, i64)> = None;
        for b in days[..i].iter().filter(|b| b.day >= first) {
            base.add(b);
            span = Some(span.map_or((b.day, b.day), |(lo, _)| (lo, b.day)));
        }
        let Some((from, to)) = span else { continue };
        if base.decisions() < rule.min_decisions {
            continue;
        }
        let (before, after) = (Mix::of(&base), Mix::of(day));
        let (verdict, by) = moved(&before, &after);
        if by < rule.threshold_per_mille {
            continue;
        }
        out.push(Shift {
            day: day.day,
            baseline_from_day: from,
            baseline_to_day: to,
            verdict,
            moved_per_mille: by,
            attribution: attribute(&base, day, rule),
            before,
            after,
        });
        since = day.day;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: i64, verdicts: &[(&str, u64)], policy: &str, stage: &str) -> ToolDay {
        let n: u64 = verdicts.iter().map(|(_, n)| n).sum();
        ToolDay {
            day,
            verdicts: verdicts
                .iter()
                .map(|(v, n)| ((*v).to_owned(), *n))
                .collect(),
            stages: [(stage.to_owned(), n)].into(),
            policies: [(policy.to_owned(), n)].into(),
            high_risk: 0,
            destructive: 0,
        }
    }

    fn steady(days: std::ops::Range<i64>) -> Vec<ToolDay> {
        days.map(|d| day(d, &[("allow", 90), ("block", 10)], "p1", "enforce"))
            .collect()
    }

    #[test]
    fn a_steady_mix_has_no_shift() {
        assert!(shifts(&steady(0..30), &ShiftRule::default()).is_empty());
    }

    #[test]
    fn a_new_policy_that_blocks_is_the_cause_and_the_shift_is_reported_once() {
        let mut days = steady(0..10);
        days.extend((10..20).map(|d| day(d, &[("allow", 30), ("block", 70)], "p2", "enforce")));
        let found = shifts(&days, &ShiftRule::default());
        assert_eq!(found.len(), 1, "{found:#?}");
        let s = &found[0];
        assert_eq!((s.day, s.baseline_from_day, s.baseline_to_day), (10, 3, 9));
        assert_eq!((s.verdict.as_str(), s.moved_per_mille), ("allow", 600));
        let primary = s.attribution.primary.as_ref().expect("attributed");
        assert_eq!(primary.kind, CauseKind::PolicyChange);
        assert_eq!(
            (primary.before.as_deref(), primary.after.as_deref()),
            (Some("p1"), Some("p2"))
        );
    }

    #[test]
    fn calls_turning_destructive_are_a_tool_change() {
        let mut days = steady(0..5);
        let mut d = day(5, &[("allow", 20), ("block", 80)], "p1", "enforce");
        d.destructive = 80;
        days.push(d);
        let s = &shifts(&days, &ShiftRule::default())[0];
        let primary = s.attribution.primary.as_ref().expect("attributed");
        assert_eq!(primary.kind, CauseKind::ToolChange);
        assert_eq!(primary.field, "destructive_per_mille");
        assert_eq!(
            (primary.before.as_deref(), primary.after.as_deref()),
            (Some("0"), Some("800"))
        );
    }

    #[test]
    fn a_stage_moving_to_enforce_is_a_config_change_below_a_policy_change() {
        let mut days: Vec<ToolDay> = (0..5)
            .map(|d| day(d, &[("allow", 100)], "p1", "observe"))
            .collect();
        days.push(day(5, &[("allow", 40), ("block", 60)], "p1", "enforce"));
        let s = &shifts(&days, &ShiftRule::default())[0];
        assert_eq!(s.attribution.causes.len(), 1);
        assert_eq!(
            s.attribution
                .primary
                .as_ref()
                .map(|c| (c.kind, c.field.as_str())),
            Some((CauseKind::RuntimeChange, "stage"))
        );
        // With a new digest too, the policy comes first.
        days[5] = day(5, &[("allow", 40), ("block", 60)], "p2", "enforce");
        let s = &shifts(&days, &ShiftRule::default())[0];
        assert_eq!(s.attribution.causes.len(), 2);
        assert_eq!(
            s.attribution.primary.as_ref().map(|c| c.kind),
            Some(CauseKind::PolicyChange)
        );
    }

    #[test]
    fn a_canary_digest_on_a_few_calls_is_not_the_cause() {
        let mut days = steady(0..5);
        let mut d = day(5, &[("allow", 50), ("block", 50)], "p1", "enforce");
        // 19 of 100 calls under a new digest: under the 200 per-mille a cause must hold.
        d.policies = [("p1".to_owned(), 81), ("p2".to_owned(), 19)].into();
        days.push(d.clone());
        let s = &shifts(&days, &ShiftRule::default())[0];
        assert!(s.attribution.unattributed(), "{s:#?}");
        d.policies = [("p1".to_owned(), 80), ("p2".to_owned(), 20)].into();
        days[5] = d;
        let s = &shifts(&days, &ShiftRule::default())[0];
        assert_eq!(
            s.attribution.primary.as_ref().map(|c| c.kind),
            Some(CauseKind::PolicyChange)
        );
    }

    #[test]
    fn a_shift_with_nothing_else_changed_is_unattributed() {
        let mut days = steady(0..5);
        days.push(day(5, &[("allow", 50), ("block", 50)], "p1", "enforce"));
        let s = &shifts(&days, &ShiftRule::default())[0];
        assert!(s.attribution.unattributed());
        assert!(s.attribution.causes.is_empty());
    }

    #[test]
    fn thin_days_and_a_move_under_the_threshold_are_not_shifts() {
        let mut days = steady(0..5);
        // 19 decisions: too few to compare.
        days.push(day(5, &[("block", 19)], "p2", "enforce"));
        // 100 decisions, block 10% -> 29%: 190 per-mille, under 200 (the thin day is in this baseline).
        days.push(day(6, &[("allow", 71), ("block", 29)], "p1", "enforce"));
        assert!(shifts(&days, &ShiftRule::default()).is_empty());
        // Nothing before the first day: no baseline.
        assert!(
            shifts(
                &[day(0, &[("block", 100)], "p", "enforce")],
                &ShiftRule::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_days_come_in() {
        let mut days = steady(0..10);
        days.extend((10..14).map(|d| day(d, &[("block", 100)], "p2", "enforce")));
        days.extend((14..20).map(|d| day(d, &[("allow", 100)], "p3", "dry_run")));
        let expected = shifts(&days, &ShiftRule::default());
        assert_eq!(expected.len(), 2, "{expected:#?}");
        assert_eq!((expected[0].day, expected[1].day), (10, 14));
        // The second baseline starts at the first shift.
        assert_eq!(expected[1].baseline_from_day, 10);
        days.reverse();
        assert_eq!(shifts(&days, &ShiftRule::default()), expected);
        days.swap(3, 17);
        assert_eq!(shifts(&days, &ShiftRule::default()), expected);
    }
}
