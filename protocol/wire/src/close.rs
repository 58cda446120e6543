//! Every QUIC application close code used on an agent connection, in one place. Either end closes a
//! connection with one of these; the reason bytes are human-readable text (for [`CLOSE_SHUTDOWN`], see
//! [`crate::shutdown`] for the redial hint it carries).

pub use crate::shutdown::{MAX_RECONNECT_SPREAD, announced_spread, shutdown_reason, spread_for};

/// A normal close: the agent is shutting down, or the aggregator ends an idle session.
pub const CLOSE_NORMAL: u32 = 0;
/// The peer broke the protocol (malformed or oversized frame, message out of order, read timeout).
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 1;
/// The agent's certificate was revoked.
pub const CLOSE_REVOKED: u32 = 2;
/// The agent's certificate identity is unusable or expired.
pub const CLOSE_UNAUTHORIZED: u32 = 3;
/// The aggregator is shutting down; the reason announces a redial window.
pub const CLOSE_SHUTDOWN: u32 = 4;
/// Another instance of this agent identity is connected: a second process (a different agent data
/// directory, see [`crate::InstanceId`]) presented the same certificate. The connection is refused and the
/// agent keeps deciding locally; an operator must stop the other instance or issue this host its own
/// certificate.
pub const CLOSE_IDENTITY_IN_USE: u32 = 5;

/// Every close code with its stable name, in code order.
pub const ALL: [(u32, &str); 6] = [
    (CLOSE_NORMAL, "normal"),
    (CLOSE_PROTOCOL_VIOLATION, "protocol_violation"),
    (CLOSE_REVOKED, "revoked"),
    (CLOSE_UNAUTHORIZED, "unauthorized"),
    (CLOSE_SHUTDOWN, "shutdown"),
    (CLOSE_IDENTITY_IN_USE, "identity_in_use"),
];

/// The reason text sent with [`CLOSE_IDENTITY_IN_USE`]; starts with the words an operator searches for.
pub const IDENTITY_IN_USE_REASON: &str = "another instance of this agent identity is connected";

/// Stable name of a close code for logs, or `None` for a code this version does not define.
pub fn name(code: u32) -> Option<&'static str> {
    ALL.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_named() {
        for (i, (code, n)) in ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "codes are dense from 0");
            assert_eq!(name(*code), Some(*n));
        }
        assert_eq!(name(99), None);
    }
}
