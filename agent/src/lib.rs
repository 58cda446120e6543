//! Gait edge agent library.
//!
//! Dependency direction (nothing points back up): `main -> {daemon, gaitcli}`; `daemon -> local_api ->
//! {gate, state}`; `state -> {gate, outbox, bundle_cache, db}`; `gaitcli -> gate -> protocol/*`. Nothing
//! imports `daemon`, and the daemon never imports `gaitcli`: the Gait gate step order lives once, in
//! [`gate::pipeline`].
pub mod backoff;
pub mod bundle_cache;
pub mod bundle_import;
pub mod capture;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod db;
pub mod enroll;
pub mod gaitcli;
pub mod gate;
pub mod identity;
pub mod local_api;
pub mod outbox;
pub mod outbox_export;
pub mod state;
pub mod tls;
pub mod upload;
