//! The agent's integration tests, one binary (each file a module: one link, and its tests run in parallel).
//! Run one file's tests with `cargo test -p gait-agent --test integration <file>::`.

mod against_aggregator;
mod bundle_import;
mod daemon;
mod edge;
mod gait_cli;
mod outbox_crash;
mod outbox_export;
mod renewal;
mod trace_keys;
