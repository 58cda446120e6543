//! `gait-analysis`: the fleet analytics of issue 12 as pure functions over indexed evidence. No I/O, no async, no
//! clock (a caller passes `now` where time matters), so the compiler keeps it pure and every result is a
//! function of its inputs alone — the same evidence gives the same families and scores on every replica, in any
//! ingest order.
//!
//! - [`family`]: the versioned incident fingerprint over non-volatile decision and regress-failure features,
//!   and the fold of occurrences into families (first/last seen, counts, affected scope, representatives),
//!   independent of order and duplicates.
//! - [`drift`]: why a run that passed now fails: the differences from the last good run by precedence (policy,
//!   tool, reference set, runtime), or "unattributed" when the evidence holds none.
//! - [`fix`]: next-best-fix suggestions (rollback candidate, regress fixture, approval rule, policy fixture),
//!   each from fixed rules over the family and linked to its evidence.
//! - [`gate`]: regress posture per project with its trend against the window before (drift hotspots first),
//!   and the change-management gate for an environment: pass, or fail with every reason.
//! - [`posture`]: gated tool coverage and high-risk ungated paths, agent posture at `now`, approval-path
//!   health, in integer per-mille.
//! - [`priority`]: an explainable score from blast radius, privilege and recurrence, with recurrence capped so
//!   volume cannot outrank severity.
//! - [`shift`]: shifts in a tool's verdict mix in an environment, day against baseline, each attributed to the
//!   policy, tool or stage change at its start, or unattributed.

pub mod drift;
pub mod family;
pub mod fix;
pub mod gate;
pub mod posture;
pub mod priority;
pub mod shift;
