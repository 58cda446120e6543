//! The test kit's own tests, one binary (each file a module: one link, and its tests run in parallel).
//! Run one file's tests with `cargo test -p gait-testkit --test integration <file>::`.

mod agent_and_aggregator;
mod https;
mod readiness;
