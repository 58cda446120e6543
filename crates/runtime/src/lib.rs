//! Process runtime shared by both binaries (`gait-agent`, `gait-aggregator`), so that they log, stop and fail the
//! same way:
//!
//! - [`log`]: one tracing set-up and one JSON log schema. Logging never panics and never blocks the process: lines
//!   go through a bounded background writer, and a closed or broken stderr is ignored (counted, not fatal).
//! - [`shutdown`]: SIGINT/SIGTERM cancel one root [`CancellationToken`](tokio_util::sync::CancellationToken).
//! - [`tasks`]: every long-lived task is owned by a [`Tasks`] tracker; an *essential* task that fails or ends stops
//!   the whole process with exit code 1 instead of leaving it half alive; shutdown drains under a grace period.
//! - [`http`]: one hardened HTTP/1.1 accept loop (connection cap, header/body/idle timeouts, request cap), plain or
//!   TLS, and a small HTTP(S) client for the operator commands.
//! - [`pem`]: the one bounded loader of PEM certificates and keys (agent, aggregator PKI, HTTPS).
//! - [`exit`]: one exit-code convention (BSD sysexits for operator-facing failures).
//! - [`config`]: a validation problem named by its dotted key, and `GAIT_*` environment overrides as a typed table.
//! - [`metrics`]: a `/metrics` scrape in OpenMetrics or the classic text format, as the scraper asks.
//! - [`output`]: stdout printing that treats a closed pipe (`… | head`) as "stop printing", never as a panic.
//!
//! Gait-compatible CLI commands keep Gait's own exit codes (see the agent's `gaitcli::envelope`); [`exit`] is for
//! the daemons and the operator commands.

pub mod config;
pub mod exit;
pub mod http;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod pem;
pub mod shutdown;
pub mod tasks;

pub use log::{LogFormat, LogGuard, init_tracing};
pub use shutdown::{cancel_on_signal, shutdown_signal};
pub use tasks::{Drain, Tasks};
