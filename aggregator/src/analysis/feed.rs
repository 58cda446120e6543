//! The upkeep's in-process feed: the evidence rows this replica just committed, pre-aggregated while their
//! index entries are still in memory, so the job can fold a range without reading its rows back.
//!
//! Reading a range back costs the upkeep half of its time: one sort of ~100,000 wide rows, in the database, to
//! pre-aggregate them (`docs/benchmarks.md`, "Fleet analytics"). Ingest already holds every field that pass
//! reads, so after each committed batch [`crate::fleet::intake::Intake`] hands the batch here: one
//! [`Segment`] per batch, with the batch's evidence ids (as the store returned them, [`BatchOutcome::indexed`])
//! and its rows aggregated at the range's grain ([`AgentRange::add`]).
//!
//! **Exactly the range, or nothing.** A pass asks the feed for a prefix of its range `(cursor, last]`
//! ([`Feed::take`]). The feed answers only with whole segments that lie inside it and end where no other held
//! segment has an id (the ids of concurrent batches interleave on PostgreSQL). The store then counts the ids it
//! holds in `(cursor, end]`, inside the fold's transaction and after the cursor's compare-and-set
//! ([`gait_store::Store::apply_analysis_ranges`]), so a row that committed late is counted. The segments' ids
//! are real, committed and disjoint, so a count equal to theirs means they hold every row of the range and
//! nothing else. Anything else — a row another replica or `ingest-file` indexed, a batch committed before this
//! process started or led, a segment dropped because the feed was full, a segment cut by an earlier pass —
//! makes the job read the range back as before. The result is the same either way (a test holds the two paths
//! equal on both backends); the feed only saves the read. The folds and the settle rule for gaps are unchanged.
//!
//! **Bounded.** The feed holds at most [`CAPACITY`] evidence ids; a batch past that is not held (its range is
//! read back later). A replica that does not lead the upkeep holds nothing ([`Feed::set_leading`]).
//!
//! **The call merge's keys.** A fold from the feed also hands back the gated-call keys of its decisions
//! ([`Feed::folded`]): the store counted that range's rows inside the fold's transaction, so these are all of
//! them. While the folded ranges join up, the feed holds their keys, and a call merge of a range inside them
//! takes its keys from here ([`Feed::take_calls`]) instead of reading a million rows back. A range read back by
//! the fold, a lost race or a full feed ([`CALL_CAPACITY`]) breaks the chain, and the merges read back until a
//! new one starts.
//!
//! **Evidence rows are never deleted.** The count check relies on it: a deleted fed row and a foreign row could
//! otherwise cancel out. A retention job that deletes index rows has to clear the feed and fold past them first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use gait_store::{
    AgentKey, AgentRange, BatchOutcome, GatedKey, NewIndexEntry, NewRecord, RangeKeys, Tenant,
};

/// Most evidence ids the feed holds (twice a full upkeep range).
pub const CAPACITY: u64 = 2 * super::upkeep::BATCH as u64;
/// Most gated-call keys the feed holds for the call merge (two full merges).
pub const CALL_CAPACITY: usize = 2 * super::upkeep::MERGE_ROWS as usize;
/// Most (agent, family) pairs the feed remembers as recorded.
pub const KNOWN_PAIRS: usize = 200_000;

/// A batch's records (or index entries) found by seq, the first of a seq winning: a binary search when they
/// ascend by seq, as a batch does, else a map.
enum BySeq<'a, T> {
    Sorted(&'a [T], fn(&T) -> u64),
    Map(HashMap<u64, &'a T>),
}

impl<'a, T> BySeq<'a, T> {
    fn new(items: &'a [T], seq: fn(&T) -> u64) -> Self {
        if items.is_sorted_by_key(seq) {
            Self::Sorted(items, seq)
        } else {
            Self::Map(items.iter().rev().map(|i| (seq(i), i)).collect())
        }
    }

    fn get(&self, at: u64) -> Option<&'a T> {
        match self {
            Self::Sorted(items, seq) => {
                let items: &'a [T] = items;
                items
                    .get(items.partition_point(|i| seq(i) < at))
                    .filter(|i| seq(i) == at)
            }
            Self::Map(map) => map.get(&at).copied(),
        }
    }
}

/// One committed batch (held under its smallest evidence id): its evidence ids and its rows at the range's
/// grain.
#[derive(Debug)]
struct Segment {
    /// Largest evidence id of the batch.
    max: u64,
    /// Evidence ids of the batch (rows the store's count of a range sees), counted or not by the folds.
    ids: u64,
    range: AgentRange,
}

#[derive(Debug)]
struct State {
    /// Whether this replica leads the upkeep; a feed that does not hold nothing.
    leading: bool,
    /// By smallest id.
    segments: BTreeMap<u64, Segment>,
    /// Ids held, over all segments.
    held: u64,
    /// (agent, family) pairs a fold from this feed committed: recorded in `incident_family_agents` for good,
    /// so a later fold need not check them (at most [`KNOWN_PAIRS`]; forgotten all at once past that).
    known: HashMap<AgentKey, HashSet<String>>,
    /// Pairs in `known`.
    known_pairs: usize,
    /// The gated-call keys of the folded ranges that join up into `(lo, hi]`.
    calls: FoldedCalls,
}

/// Gated-call keys of folded decisions, with their evidence ids, covering every decision of `(lo, hi]`.
#[derive(Debug, Default)]
struct FoldedCalls {
    lo: u64,
    hi: u64,
    by_scope: HashMap<Tenant, Vec<(u64, GatedKey)>>,
    /// The (evidence id, agent, seq) of the runpacks of `(lo, hi]` that listed calls.
    runpacks: Vec<(u64, AgentKey, u64)>,
    len: usize,
}

impl FoldedCalls {
    fn restart_at(&mut self, at: u64) {
        self.lo = at;
        self.hi = at;
        self.by_scope.clear();
        self.runpacks.clear();
        self.len = 0;
    }
}

/// What [`Feed::take`] found for a range.
#[derive(Debug)]
pub struct Taken {
    /// The range ends here (at most the `last` asked for).
    pub end: u64,
    /// Evidence ids the segments hold in `(cursor, end]`.
    pub ids: u64,
    /// Their rows, by agent.
    pub ranges: Vec<AgentRange>,
}

/// See the module docs. Shared by the ingest edge (which pushes) and the upkeep job (which takes).
#[derive(Debug)]
pub struct Feed {
    state: Mutex<State>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    /// An empty feed that holds what is pushed (the upkeep task turns that off until its replica leads,
    /// [`Feed::set_leading`]).
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                leading: true,
                segments: BTreeMap::new(),
                held: 0,
                known: HashMap::new(),
                known_pairs: 0,
                calls: FoldedCalls::default(),
            }),
        }
    }

    /// Whether this replica leads the upkeep: a replica that does not never folds, so its feed holds nothing
    /// (and drops what it held when it stops leading).
    pub fn set_leading(&self, leading: bool) {
        let mut state = self.lock();
        state.leading = leading;
        if !leading {
            state.segments.clear();
            state.held = 0;
            state.calls.restart_at(0);
        }
    }

    /// Holds the batch `key` just committed: `records` with their `index` entries (as given to the store) and
    /// the `outcome` the commit returned, indexed at `received_ms`. Called only after the commit succeeded.
    pub fn push(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        index: &[NewIndexEntry],
        outcome: &BatchOutcome,
        received_ms: i64,
    ) {
        let (Some(first), Some(last)) = (
            outcome.indexed.iter().map(|(_, id)| *id).min(),
            outcome.indexed.iter().map(|(_, id)| *id).max(),
        ) else {
            return;
        };
        let ids = outcome.indexed.len() as u64;
        {
            let state = self.lock();
            if !state.leading || state.held + ids > CAPACITY {
                return;
            }
        }
        let records = BySeq::new(records, |r| r.seq);
        let entries = BySeq::new(index, |e| e.seq);
        let mut range = AgentRange::new(key.clone());
        for (seq, id) in &outcome.indexed {
            // The store indexed exactly these seqs from these entries; a seq missing here would be a bug in
            // the caller, and the count check then sends the range to the read-back path.
            if let (Some(entry), Some(record)) = (entries.get(*seq), records.get(*seq)) {
                range.add(*id, record.created_unix_ms, received_ms, entry);
            } else {
                return;
            }
        }
        let mut state = self.lock();
        if !state.leading || state.held + ids > CAPACITY {
            return;
        }
        state.held += ids;
        state.segments.insert(
            first,
            Segment {
                max: last,
                ids,
                range,
            },
        );
    }

    /// Takes the whole segments that make the longest prefix `(cursor, end]` of `(cursor, last]` with no other
    /// held segment inside it, and drops every segment at or below `cursor` (already folded, or cut by a pass
    /// that read its range back). `None` when no such prefix holds a segment. Whether the prefix holds every
    /// row the index has there is for the store to check ([`Taken::ids`]).
    pub fn take(&self, cursor: u64, last: u64) -> Option<Taken> {
        let mut state = self.lock();
        // Segments touching ids at or below the cursor cannot be folded any more.
        let stale: Vec<u64> = state
            .segments
            .iter()
            .take_while(|(min, _)| **min <= cursor)
            .map(|(min, _)| *min)
            .collect();
        for min in stale {
            if let Some(s) = state.segments.remove(&min) {
                state.held -= s.ids;
            }
        }
        // Walk by smallest id; a prefix may end after a segment when the next one starts past every id so far.
        let mut end = None;
        let (mut run_max, mut ids, mut count) = (cursor, 0u64, 0usize);
        let mut it = state.segments.iter().peekable();
        while let Some((_, seg)) = it.next() {
            if seg.max > last {
                break;
            }
            run_max = run_max.max(seg.max);
            ids += seg.ids;
            count += 1;
            if it.peek().is_none_or(|(next, _)| **next > run_max) {
                end = Some((run_max, ids, count));
            }
        }
        let (end, ids, count) = end?;
        let firsts: Vec<u64> = state.segments.keys().take(count).copied().collect();
        let mut taken = Vec::with_capacity(count);
        for min in firsts {
            if let Some(seg) = state.segments.remove(&min) {
                state.held -= seg.ids;
                taken.push(seg);
            }
        }
        // Merge without the lock: ingest pushes meanwhile.
        drop(state);
        let mut by_agent: HashMap<AgentKey, AgentRange> = HashMap::new();
        for seg in taken {
            match by_agent.get_mut(seg.range.key()) {
                Some(r) => r.merge(seg.range),
                None => {
                    by_agent.insert(seg.range.key().clone(), seg.range);
                }
            }
        }
        Some(Taken {
            end,
            ids,
            ranges: by_agent.into_values().collect(),
        })
    }

    /// Whether a fold from this feed recorded `agent` in `family` (so it is recorded for good).
    pub fn knows(&self, agent: &AgentKey, family: &str) -> bool {
        self.lock()
            .known
            .get(agent)
            .is_some_and(|families| families.contains(family))
    }

    /// Notes the (agent, family) pairs of `ranges`, which a fold just committed.
    pub fn remember(&self, ranges: &[AgentRange]) {
        let mut state = self.lock();
        let state = &mut *state;
        for r in ranges {
            for family in r.families() {
                if state
                    .known
                    .get(r.key())
                    .is_some_and(|families| families.contains(family))
                {
                    continue;
                }
                if state.known_pairs >= KNOWN_PAIRS {
                    state.known.clear();
                    state.known_pairs = 0;
                }
                state
                    .known
                    .entry(r.key().clone())
                    .or_default()
                    .insert(family.to_owned());
                state.known_pairs += 1;
            }
        }
    }

    /// Takes the gated-call keys of `ranges`, which a fold of `(from, to]` from this feed just committed (so they
    /// are every decision's of that range). They extend the held keys when the range starts where those end;
    /// otherwise the held keys are dropped and a new chain starts at `from`.
    pub fn folded(&self, from: u64, to: u64, ranges: &mut [AgentRange]) {
        let mut state = self.lock();
        if !state.leading {
            return;
        }
        let calls = &mut state.calls;
        if calls.hi != from {
            calls.restart_at(from);
        }
        for r in ranges.iter_mut() {
            for (id, seq) in r.take_runpacks() {
                calls.runpacks.push((id, r.key().clone(), seq));
            }
            let keys = r.take_calls();
            calls.len += keys.len();
            calls
                .by_scope
                .entry(r.key().tenant.clone())
                .or_default()
                .extend(keys);
        }
        calls.hi = to;
        if calls.len > CALL_CAPACITY {
            calls.restart_at(to);
        }
    }

    /// The keys of `(from, to]`'s decisions when the held keys cover the range, for the call merge; the keys of
    /// ids at or below `to` are dropped either way (that merge takes them, or reads them back).
    pub fn take_calls(&self, from: u64, to: u64) -> Option<RangeKeys> {
        let mut state = self.lock();
        let calls = &mut state.calls;
        let covered = calls.lo <= from && to <= calls.hi;
        let mut runpacks = Vec::new();
        calls.runpacks.retain(|(id, agent, seq)| {
            if *id > to {
                return true;
            }
            if *id > from {
                runpacks.push((agent.clone(), *seq));
            }
            false
        });
        let mut out = Vec::new();
        let mut len = 0;
        for (scope, keys) in &mut calls.by_scope {
            let mut mine = Vec::new();
            keys.retain(|(id, k)| {
                if *id > to {
                    return true;
                }
                if *id > from {
                    mine.push(*k);
                }
                false
            });
            len += keys.len();
            if covered && !mine.is_empty() {
                out.push((scope.clone(), mine));
            }
        }
        calls.by_scope.retain(|_, k| !k.is_empty());
        calls.len = len;
        if to >= calls.hi {
            // Nothing is held past the range: the chain goes on from its end.
            calls.restart_at(to);
        } else {
            calls.lo = calls.lo.max(to);
        }
        covered.then(|| RangeKeys::with_runpacks(out, runpacks))
    }

    /// Evidence ids held now.
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole segments behind; the count check catches any loss.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(agent: &str) -> AgentKey {
        AgentKey::new(
            gait_store::Tenant::from_parts("acme", "web", "prod").expect("tenant"),
            agent.parse().expect("agent"),
        )
    }

    fn batch(feed: &Feed, agent: &str, ids: &[u64]) {
        let records: Vec<NewRecord> = ids
            .iter()
            .enumerate()
            .map(|(i, _)| NewRecord {
                seq: i as u64 + 1,
                prev_hash: [0; 32],
                hash: [1; 32],
                class: "decision".into(),
                kind: "gate.decision".into(),
                created_unix_ms: 1_000,
                bundle_epoch: None,
                bundle_digest: None,
                bundle_since_ms: None,
                payload: Vec::new(),
            })
            .collect();
        let index: Vec<NewIndexEntry> = records
            .iter()
            .map(|r| NewIndexEntry {
                seq: r.seq,
                class: gait_store::EvidenceClass::Decision,
                fields: gait_store::IndexFields {
                    verdict: Some("allow".into()),
                    ..Default::default()
                },
            })
            .collect();
        let outcome = BatchOutcome {
            indexed: records
                .iter()
                .zip(ids)
                .map(|(r, id)| (r.seq, *id))
                .collect(),
            ..Default::default()
        };
        feed.push(&key(agent), &records, &index, &outcome, 2_000);
    }

    #[test]
    fn a_batch_is_found_by_seq_sorted_or_not_the_first_of_a_seq_winning() {
        // (seq, tag)
        let sorted = [(1, 'a'), (2, 'b'), (2, 'c'), (5, 'd')];
        let shuffled = [(5, 'd'), (2, 'b'), (1, 'a'), (2, 'c')];
        for items in [&sorted[..], &shuffled[..]] {
            let by = BySeq::new(items, |i| i.0);
            let found: Vec<Option<char>> = (0..7).map(|s| by.get(s).map(|i| i.1)).collect();
            assert_eq!(
                found,
                [None, Some('a'), Some('b'), None, None, Some('d'), None],
                "{items:?}"
            );
        }
        assert!(matches!(
            BySeq::new(&sorted[..], |i| i.0),
            BySeq::Sorted(..)
        ));
        assert!(matches!(BySeq::new(&shuffled[..], |i| i.0), BySeq::Map(..)));
    }

    #[test]
    fn a_prefix_ends_only_where_no_held_batch_interleaves() {
        let feed = Feed::new();
        // Two concurrent batches interleave (PostgreSQL), a third follows.
        batch(&feed, "a1", &[1, 3, 5]);
        batch(&feed, "a2", &[2, 4, 6]);
        batch(&feed, "a1", &[7, 8]);
        // Up to 6 only both interleaved batches together; 7..8 fits too.
        let t = feed.take(0, 8).expect("a prefix");
        assert_eq!((t.end, t.ids, t.ranges.len()), (8, 8, 2));
        assert_eq!(feed.held(), 0);

        batch(&feed, "a1", &[11, 13]);
        batch(&feed, "a2", &[12, 20]);
        // 20 lies past `last`: the second batch cannot go, and 13 < 20 means the first cannot end alone either
        // (12 sits inside it).
        assert!(feed.take(10, 15).is_none());
        // Both fit when the range reaches 20.
        let t = feed.take(10, 20).expect("a prefix");
        assert_eq!((t.end, t.ids), (20, 4));
    }

    #[test]
    fn a_replica_that_does_not_lead_holds_nothing() {
        let feed = Feed::new();
        batch(&feed, "a1", &[1, 2]);
        feed.set_leading(false);
        assert_eq!(feed.held(), 0);
        batch(&feed, "a1", &[3, 4]);
        assert_eq!(feed.held(), 0);
        feed.set_leading(true);
        batch(&feed, "a1", &[5, 6]);
        let t = feed.take(4, 6).expect("a prefix");
        assert_eq!((t.end, t.ids), (6, 2));
    }

    #[test]
    fn segments_at_or_below_the_cursor_are_dropped_and_the_feed_is_bounded() {
        let feed = Feed::new();
        batch(&feed, "a1", &[1, 2, 3]);
        batch(&feed, "a1", &[4, 5]);
        // A pass read (0, 2] back: the batch cut by it is dropped, the next one starts the prefix.
        let t = feed.take(2, 10).expect("a prefix");
        assert_eq!((t.end, t.ids), (5, 2));
        assert_eq!(feed.held(), 0);

        let big: Vec<u64> = (100..100 + CAPACITY).collect();
        batch(&feed, "a1", &big);
        assert_eq!(feed.held(), CAPACITY);
        // Full: the next batch is not held.
        batch(&feed, "a1", &[100 + CAPACITY]);
        assert_eq!(feed.held(), CAPACITY);
        assert!(feed.take(99, 100 + CAPACITY).is_some());
        assert_eq!(feed.held(), 0);
    }
}
