//! Gait edge agent library.
