//! Admission control at the QUIC edge: how many handshakes this aggregator works on at once, and what it does
//! with the connection attempts beyond that.
//!
//! A fleet that loses its aggregator comes back at once. Without a bound, every `Initial` starts a handshake;
//! on a saturated machine the handshakes finish too slowly for the agents' deadline, datagrams pile up in the
//! socket's receive buffer and are dropped, the agents redial, and the extra load makes it worse: congestion
//! collapse (issue 16 measured it at 50,000 agents). Admission keeps the work bounded and answers the excess
//! cheaply, before any cryptography beyond the `Initial` keys:
//!
//! - below half the limit every attempt is accepted;
//! - from half the limit, an attempt from an address not yet validated gets a QUIC **Retry** (stateless: one
//!   packet, no state kept), so a flood of spoofed source addresses cannot occupy handshake slots;
//! - at the limit, an attempt from a validated address **waits** in a bounded queue (at most
//!   [`WAITING_PER_SLOT`] × the limit attempts, each at most [`MAX_WAIT`]) and is started, oldest first, as
//!   soon as a slot frees. quinn keeps reading the socket meanwhile (a held attempt buffers its own
//!   retransmissions), so datagrams do not rot in the kernel's receive buffer, and the random bunching of a
//!   fleet redialling at a rate the machine can take on average is absorbed instead of refused;
//! - with the queue full, or once an attempt waited [`MAX_WAIT`], it is **refused** (`CONNECTION_REFUSED`, one
//!   packet). With the queue full an unvalidated address is refused at once rather than asked to validate
//!   first: it would come back only to find the queue full, and a fleet past the machine's capacity would pay a
//!   Retry round trip (and its token, both ends) for every refusal. The agent backs off (`gait_agent::daemon`)
//!   instead of waiting out its handshake deadline and retransmitting into a full buffer.
//!
//! A refused attempt is **remembered** for [`REFUSED_MEMORY`] ([`RecentlyRefused`]): the client retransmits its
//! `Initial` about one and three seconds after sending it (its probe timeout, doubling), and a copy that
//! crosses the refusal reaches quinn as a new attempt (quinn forgets a refused one). Queued like any other
//! it would, once given a slot, be a handshake with a client that is gone, holding the slot until
//! [`HANDSHAKE_DEADLINE`]: under overload those ghosts took every slot while the CPU idled, and a fleet that had
//! lost a few seconds (a 3 s stall at 50,000 agents) never came back at speed (issue 16, docs/benchmarks.md). A
//! copy of a refused attempt is refused again at once, without a queue place or a slot.
//!
//! The refusal itself carries no reason phrase (quinn sends it with an empty one), so the retry-after hint
//! reaches agents ahead of time: the window a shutting-down aggregator announces
//! ([`gait_wire::shutdown`]) is sized from the handshake rate this process **measured** while under pressure
//! ([`Admission::capacity`]), not only from the configured `quic.reconnect_rate`.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Default [`Admission`] limit (`quic.max_handshakes_in_flight`): at about 1,000 handshakes a second on two
/// cores, 128 in flight queue for ~0.13 s, far inside the agent's 5 s handshake deadline.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: usize = 128;

/// Attempts that may wait for a slot, per slot of the limit: at the default limit, 2,048 attempts, about
/// [`MAX_WAIT`] of work at the handshake rate two cores sustain (~1,000 a second), so the queue fills about when
/// its oldest attempt would wait out its time anyway.
pub const WAITING_PER_SLOT: usize = 16;

/// Longest an attempt waits for a slot before it is refused: well inside the agent's handshake deadline (5 s), so
/// a started handshake still has the time it needs. Every refusal costs its agent a redial drawn from what is left
/// of the redial window (seconds, at the end of a window), so the queue is long enough to absorb the bunching of a
/// returning fleet and a few seconds of a machine slower than the rate it measured: with a one-second wait, a
/// 50,000 restart on a noisy machine refused thousands of attempts and some agents dialled seven times
/// (docs/benchmarks.md, stop 31).
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Longest a started handshake may hold its slot. An agent gives up on a handshake after 5 s
/// (`gait_agent::daemon::CONNECT_TIMEOUT`), and the connection would otherwise linger until its idle timeout
/// (60 s) when the agent's close was lost, or when a client simply stops answering: under a returning fleet,
/// slots held by handshakes nobody waits for any more are slots the live ones cannot have. Twice the agent's
/// deadline leaves room for a slow path.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a refused attempt is remembered ([`RecentlyRefused`]): a copy of its `Initial` is one the client sent
/// before the refusal reached it, and the agent gives up on a handshake 5 s after it began
/// (`gait_agent::daemon::CONNECT_TIMEOUT`), so later copies do not come.
pub const REFUSED_MEMORY: Duration = Duration::from_secs(5);

/// Most refused attempts remembered at once (the oldest is forgotten first): ~100 bytes each, so a refusal storm
/// costs at most a few MiB.
pub const REFUSED_MEMORY_MAX: usize = 65_536;

/// A measurement window shorter than this is not used (too few handshakes to say anything).
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Completed handshakes a window needs before its rate counts.
const MIN_WINDOW_HANDSHAKES: u32 = 32;

/// Share of the measured capacity the announced window asks for: the capacity was measured while the fleet first
/// connected, and the restarted process must also serve the keep-alives and long-polls of the agents already back,
/// so asking for all of it leaves no room (a run at 100 % overshot: docs/benchmarks.md).
pub const HEADROOM: f64 = 0.9;

/// What to do with one connection attempt.
#[derive(Debug)]
pub enum Decision {
    /// Start the handshake; the permit is held until it ends ([`Permit::completed`]).
    Accept(Permit),
    /// Answer with a stateless Retry: the address is validated before a slot is spent on it.
    Retry,
    /// No slot now: the attempt may wait for one ([`Waiting`]); refuse it when it cannot.
    Full,
}

/// The handshake bound and the rate measurement; one per endpoint.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    in_flight: AtomicUsize,
    window: Mutex<Window>,
    /// Woken when a slot frees, for the attempts waiting in [`Waiting`].
    freed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    completed: u32,
    /// Whether this window saw the limit half used or an attempt refused: only then does its rate say what the
    /// machine can do (an idle aggregator completes few handshakes because few are asked of it).
    pressured: bool,
    /// Handshakes completed in, and the length of, every pressured window so far: their ratio is the
    /// capacity (a mean over all of them, so a fleet's first connect counts as a whole, including its later
    /// windows when the connections already open cost their share).
    measured_handshakes: u64,
    measured_secs: f64,
}

impl Admission {
    /// At most `limit` handshakes in flight (at least 1).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            in_flight: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            window: Mutex::new(Window {
                started: Instant::now(),
                completed: 0,
                pressured: false,
                measured_handshakes: 0,
                measured_secs: 0.0,
            }),
        })
    }

    /// The configured bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Handshakes being worked on now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Decides for one attempt; `address_validated` is whether quinn already knows the peer owns its source
    /// address (it answered a Retry, or came with a valid token). An unvalidated address never waits: from
    /// half the limit on it is asked to validate first, so only addresses that proved themselves hold the
    /// queue.
    pub fn decide(self: &Arc<Self>, address_validated: bool) -> Decision {
        let half = self.limit.div_ceil(2);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= half && !address_validated {
                self.mark_pressure();
                return Decision::Retry;
            }
            if current >= self.limit {
                self.mark_pressure();
                return Decision::Full;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current + 1 >= half {
            self.mark_pressure();
        }
        Decision::Accept(Permit {
            admission: self.clone(),
        })
    }

    /// A slot if one is free now, for an attempt that already waited (its address is validated).
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        match self.decide(true) {
            Decision::Accept(p) => Some(p),
            _ => None,
        }
    }

    /// Resolves when a slot was freed since the last call (at once if one was and nobody waited).
    pub async fn slot_freed(&self) {
        self.freed.notified().await;
    }

    /// Handshakes per second this process completed while under pressure (the mean over every pressured
    /// window); `None` until such a window was seen.
    pub fn capacity(&self) -> Option<u32> {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capacity_per_second()
    }

    /// The rate a fleet dropped at shutdown is asked to come back at: [`HEADROOM`] of the measured capacity when
    /// there is one, else `configured`.
    pub fn reconnect_rate(&self, configured: u32) -> u32 {
        self.capacity()
            .map_or(configured, |c| (f64::from(c) * HEADROOM) as u32)
            .max(1)
    }

    fn mark_pressure(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.pressured = true;
    }

    /// Counts a finished handshake; returns the capacity as it stands after it.
    fn handshake_completed(&self, now: Instant) -> Option<u32> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.completed += 1;
        w.roll(now);
        w.capacity_per_second()
    }
}

impl Window {
    fn capacity(&self) -> Option<f64> {
        (self.measured_secs > 0.0).then(|| self.measured_handshakes as f64 / self.measured_secs)
    }

    fn capacity_per_second(&self) -> Option<u32> {
        self.capacity()
            .map(|c| c.round().clamp(1.0, f64::from(u32::MAX)) as u32)
    }

    /// Closes the window once it is long enough, folding it into the measurement when it was pressured.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < MIN_WINDOW {
            return;
        }
        // A long quiet gap is not a window of work: measure only windows that ended soon after they began.
        if self.pressured && self.completed >= MIN_WINDOW_HANDSHAKES && elapsed <= MIN_WINDOW * 2 {
            self.measured_handshakes += u64::from(self.completed);
            self.measured_secs += elapsed.as_secs_f64();
        }
        self.started = now;
        self.completed = 0;
        self.pressured = false;
    }
}

/// One handshake slot; released when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Permit {
    /// The handshake finished (successfully or not, it was work done): counts towards the measured rate and
    /// frees the slot. Returns the measured capacity ([`Admission::capacity`]) as it stands after it.
    pub fn completed(self) -> Option<u32> {
        self.admission.handshake_completed(Instant::now())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.admission.freed.notify_one();
    }
}

/// Attempts waiting for a handshake slot, oldest first; owned by the accept loop. Bounded: at most
/// [`WAITING_PER_SLOT`] × the limit, each for at most [`MAX_WAIT`].
#[derive(Debug)]
pub struct Waiting<T> {
    queue: VecDeque<(Instant, T)>,
    bound: usize,
    max_wait: Duration,
}

impl<T> Waiting<T> {
    /// The queue in front of `admission`, each attempt waiting at most `max_wait` ([`MAX_WAIT`]).
    pub fn new(admission: &Admission, max_wait: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            bound: admission.limit.saturating_mul(WAITING_PER_SLOT),
            max_wait,
        }
    }

    /// Attempts waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the queue holds all it may: a new attempt is refused at once.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.bound
    }

    /// Queues `attempt` (arrived `now`), or gives it back when the queue is full.
    pub fn push(&mut self, attempt: T, now: Instant) -> Result<(), T> {
        if self.is_full() {
            return Err(attempt);
        }
        self.queue.push_back((now, attempt));
        Ok(())
    }

    /// Hands the oldest attempts a free slot each (`start`) while slots are free, and gives up on the ones that
    /// waited longer than [`MAX_WAIT`] (`expire`); stops at the first attempt that finds no slot.
    pub fn admit(
        &mut self,
        admission: &Arc<Admission>,
        now: Instant,
        mut start: impl FnMut(Permit, T),
        mut expire: impl FnMut(T),
    ) {
        while let Some((since, _)) = self.queue.front() {
            if now.saturating_duration_since(*since) > self.max_wait {
                if let Some((_, attempt)) = self.queue.pop_front() {
                    expire(attempt);
                }
                continue;
            }
            let Some(permit) = admission.try_acquire() else {
                return;
            };
            if let Some((_, attempt)) = self.queue.pop_front() {
                start(permit, attempt);
            }
        }
    }

    /// When the oldest waiting attempt will have waited [`MAX_WAIT`] (`None`: nothing waits).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.queue.front().map(|(since, _)| *since + self.max_wait)
    }

    /// Every attempt still waiting (at shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.queue.drain(..).map(|(_, attempt)| attempt)
    }
}

/// Attempts refused lately, by a key that a retransmission of the same attempt repeats (the client's original
/// destination connection ID and its address); owned by the accept loop. Bounded in time ([`REFUSED_MEMORY`])
/// and size ([`REFUSED_MEMORY_MAX`]).
#[derive(Debug)]
pub struct RecentlyRefused<K> {
    keys: HashSet<K>,
    order: VecDeque<(Instant, K)>,
    memory: Duration,
    max: usize,
}

impl<K: Hash + Eq + Clone> RecentlyRefused<K> {
    /// Remembers each refusal for `memory`, at most `max` at once.
    pub fn new(memory: Duration, max: usize) -> Self {
        Self {
            keys: HashSet::new(),
            order: VecDeque::new(),
            memory,
            max: max.max(1),
        }
    }

    /// Remembers that the attempt `key` was refused at `now`.
    pub fn insert(&mut self, key: K, now: Instant) {
        self.forget_old(now);
        if self.keys.contains(&key) {
            return;
        }
        if self.order.len() >= self.max
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.keys.insert(key.clone());
        self.order.push_back((now, key));
    }

    /// Whether the attempt `key` was refused within the memory.
    pub fn contains(&mut self, key: &K, now: Instant) -> bool {
        self.forget_old(now);
        self.keys.contains(key)
    }

    /// Refusals remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.memory {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(a: &Arc<Admission>, validated: bool) -> Permit {
        match a.decide(validated) {
            Decision::Accept(p) => p,
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn the_bound_holds_retry_from_half_and_full_at_the_limit() {
        let a = Admission::new(4);
        let p1 = accept(&a, false);
        let p2 = accept(&a, false);
        // Half used: an unvalidated address is asked to prove it; a validated one still gets in.
        assert!(matches!(a.decide(false), Decision::Retry));
        let p3 = accept(&a, true);
        let p4 = accept(&a, true);
        assert_eq!(a.in_flight(), 4);
        // At the limit: a validated address may wait, an unvalidated one must validate first.
        assert!(matches!(a.decide(true), Decision::Full));
        assert!(matches!(a.decide(false), Decision::Retry));
        drop(p1);
        p2.completed();
        assert_eq!(a.in_flight(), 2);
        let _p5 = accept(&a, true);
        drop((p3, p4));
        assert_eq!(a.in_flight(), 1);
    }

    #[test]
    fn a_limit_of_zero_still_admits_one() {
        let a = Admission::new(0);
        assert_eq!(a.limit(), 1);
        let _p = accept(&a, true);
        assert!(matches!(a.decide(true), Decision::Full));
    }

    #[test]
    fn waiting_attempts_get_freed_slots_oldest_first_and_expire_after_max_wait() {
        let a = Admission::new(2);
        let mut waiting = Waiting::new(&a, MAX_WAIT);
        assert_eq!(waiting.bound, 2 * WAITING_PER_SLOT);
        let t0 = Instant::now();
        let p1 = accept(&a, true);
        let p2 = accept(&a, true);
        for i in 0..waiting.bound {
            waiting.push(i, t0).unwrap();
        }
        // The queue is bounded: the next attempt is given back to be refused.
        assert!(waiting.is_full());
        assert_eq!(waiting.push(99, t0), Err(99));
        // Runs one admission pass at `now`, keeping the permits handed out; returns who started and who expired.
        let mut permits = Vec::new();
        let mut pass = |waiting: &mut Waiting<usize>, now| {
            let (mut started, mut expired) = (Vec::new(), Vec::new());
            waiting.admit(
                &a,
                now,
                |p, i| {
                    permits.push(p);
                    started.push(i)
                },
                |i| expired.push(i),
            );
            (started, expired)
        };
        // No slot free: nobody starts.
        assert_eq!(pass(&mut waiting, t0), (vec![], vec![]));
        // One slot frees: the oldest starts, the next keeps waiting.
        drop(p1);
        assert_eq!(pass(&mut waiting, t0), (vec![0], vec![]));
        assert_eq!(waiting.len(), waiting.bound - 1);
        // Past MAX_WAIT, every waiting attempt is given up on even with a slot free.
        drop(p2);
        let late = t0 + MAX_WAIT + Duration::from_millis(1);
        let (started, expired) = pass(&mut waiting, late);
        assert!(started.is_empty());
        assert_eq!(expired.len(), waiting.bound - 1);
        assert!(waiting.is_empty());
        assert_eq!(a.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_the_waiter() {
        use std::future::Future as _;
        let a = Admission::new(1);
        let p = accept(&a, true);
        let waiting = a.slot_freed();
        tokio::pin!(waiting);
        // Nothing freed yet: the waiter is pending (and now registered).
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(waiting.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(pending);
        drop(p);
        waiting.await;
        assert!(a.try_acquire().is_some());
    }

    #[test]
    fn capacity_is_measured_only_under_pressure() {
        let t0 = Instant::now();
        let mut w = Window {
            started: t0,
            completed: 500,
            pressured: false,
            measured_handshakes: 0,
            measured_secs: 0.0,
        };
        // A quiet window says nothing about what the machine can do.
        w.roll(t0 + Duration::from_secs(1));
        assert_eq!(w.capacity(), None);
        // A pressured one does.
        w.completed = 800;
        w.pressured = true;
        w.roll(t0 + Duration::from_secs(2));
        assert_eq!(w.capacity(), Some(800.0));
        // The capacity is the mean over every pressured window.
        w.completed = 1_000;
        w.pressured = true;
        w.roll(t0 + Duration::from_secs(3));
        assert_eq!(w.capacity(), Some(900.0));
        // Too few handshakes, or a window stretched by a quiet gap, do not count.
        w.completed = 5;
        w.pressured = true;
        w.roll(t0 + Duration::from_secs(4));
        w.completed = 900;
        w.pressured = true;
        w.roll(t0 + Duration::from_secs(60));
        assert_eq!(w.capacity(), Some(900.0));
    }

    #[test]
    fn reconnect_rate_prefers_the_measurement() {
        let a = Admission::new(8);
        assert_eq!(a.reconnect_rate(1000), 1000);
        {
            let mut w = a.window.lock().unwrap();
            w.measured_handshakes = 7_404;
            w.measured_secs = 10.0;
        }
        assert_eq!(a.capacity(), Some(740));
        assert_eq!(a.reconnect_rate(1000), 666);
    }

    #[test]
    fn refusals_are_remembered_for_their_time_and_within_their_bound() {
        let mut recent = RecentlyRefused::new(REFUSED_MEMORY, 3);
        let t0 = Instant::now();
        recent.insert("a", t0);
        recent.insert("a", t0);
        assert_eq!(recent.len(), 1, "one attempt is remembered once");
        assert!(recent.contains(&"a", t0 + REFUSED_MEMORY - Duration::from_millis(1)));
        assert!(!recent.contains(&"b", t0));
        // Forgotten once its time is up.
        assert!(!recent.contains(&"a", t0 + REFUSED_MEMORY));
        assert!(recent.is_empty());
        // At the bound the oldest goes first.
        for (i, key) in ["w", "x", "y", "z"].into_iter().enumerate() {
            recent.insert(key, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains(&"w", t0));
        assert!(["x", "y", "z"].iter().all(|k| recent.contains(k, t0)));
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_limit() {
        let a = Admission::new(16);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let a = a.clone();
                let peak = peak.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Decision::Accept(p) = a.decide(true) {
                            peak.fetch_max(a.in_flight(), Ordering::Relaxed);
                            p.completed();
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 16);
        assert_eq!(a.in_flight(), 0);
    }
}
