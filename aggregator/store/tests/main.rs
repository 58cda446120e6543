//! The store's integration tests, one binary (each file a module: one link, and its tests run in parallel).
//! Run one file's tests with `cargo test -p gait-store --test integration <file>::`.

mod approvals;
mod audit;
mod enrollment;
mod evidence;
mod group_commit;
mod policy_versions;
mod replay;
mod signing_keys;
mod store;
mod trace_keys;
mod uploads;
