//! Exit codes of the daemons and operator commands: 0 on success, 1 for a runtime failure (including a failed
//! essential task), and BSD `sysexits.h` codes where the cause is one an operator fixes differently.
//! Gait-compatible commands (`policy test`, `gate eval`, …) keep Gait's own codes instead.

/// Success.
pub const OK: u8 = 0;
/// A runtime failure: an essential task failed, the drain did not finish, an unexpected error.
pub const FAILURE: u8 = 1;
/// The command line was wrong (`EX_USAGE`); clap uses 2 for its own parse errors.
pub const USAGE: u8 = 64;
/// Input data was malformed (`EX_DATAERR`).
pub const DATAERR: u8 = 65;
/// An input file does not exist or cannot be read (`EX_NOINPUT`).
pub const NOINPUT: u8 = 66;
/// A service the command needs is unreachable (`EX_UNAVAILABLE`), e.g. the local agent or the aggregator API.
pub const UNAVAILABLE: u8 = 69;
/// An internal error: a bug (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// An I/O error on a file or the database (`EX_IOERR`).
pub const IOERR: u8 = 74;
/// A temporary failure; retrying may succeed (`EX_TEMPFAIL`).
pub const TEMPFAIL: u8 = 75;
/// The configuration (file, environment, certificates, keys) is unusable (`EX_CONFIG`).
pub const CONFIG: u8 = 78;
/// `gait-aggregator replay`: a candidate flips at least one verdict (Gait's deterministic regression failure).
pub const REPLAY_FLIPS: u8 = 5;
/// `gait-aggregator replay`: fewer inputs were evaluated than `--require-samples` asks (an empty or skipped
/// corpus must not pass a CI gate silently).
pub const REPLAY_TOO_FEW_SAMPLES: u8 = 6;
