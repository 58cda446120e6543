//! Go `time.Time` as it appears in Gait artifacts: the one `GoTime` of `gait-canon` (strict RFC 3339 in, Go's
//! RFC3339Nano out, the zero time where Go would emit it), re-exported where artifact code has always found it.

pub use gait_canon::gotime::{GoTime, TimeError, ZERO_TIME, format_rfc3339_nano};
