//! Gait aggregator library.
