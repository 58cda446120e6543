//! Gait edge agent library.
pub mod backoff;
pub mod bundle_cache;
pub mod config;
pub mod daemon;
pub mod db;
pub mod gaitcli;
pub mod gate;
pub mod identity;
pub mod local_api;
pub mod outbox;
pub mod state;
pub mod tls;
