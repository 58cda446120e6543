//! One live session per agent identity: the table of which instance ([`gait_wire::InstanceId`], one per agent
//! data directory) holds each identity's session, and the rule that decides a second `Hello`.
//!
//! Rule: a `Hello` from the instance that holds the identity (a redial after a network blip, its old
//! connection not yet noticed dead) takes the identity over, and the old connection is closed; a `Hello` from
//! a different instance while the identity is held is refused. The newer session wins for the same instance
//! because the old one is most likely dead and its agent already redialled; refusing it would keep a live
//! agent out until the dead connection timed out. A different instance never wins, because two processes
//! writing one identity's sequence numbers is exactly what loses acknowledged records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use gait_store::AgentKey;
use gait_wire::InstanceId;

/// The session holding one identity.
#[derive(Clone, Debug)]
struct Holder {
    instance: InstanceId,
    /// `quinn::Connection::stable_id` of the holding connection.
    conn_id: usize,
    remote: SocketAddr,
    conn: Option<quinn::Connection>,
}

/// What [`Identities::claim`] decided.
#[derive(Debug)]
pub(super) enum Claim {
    /// The identity is now held by the caller; `replaced` is an older connection of the same instance, to close.
    Granted { replaced: Option<quinn::Connection> },
    /// Another instance holds the identity.
    Refused {
        /// The holding instance.
        holder: InstanceId,
        /// The holding connection's peer address.
        holder_remote: SocketAddr,
    },
}

/// Live sessions by identity.
#[derive(Default)]
pub(super) struct Identities {
    held: Mutex<HashMap<AgentKey, Holder>>,
}

impl Identities {
    /// Claims `key` for `instance` on connection `conn_id` (see the module rule).
    pub(super) fn claim(
        &self,
        key: &AgentKey,
        instance: InstanceId,
        conn_id: usize,
        remote: SocketAddr,
        conn: Option<quinn::Connection>,
    ) -> Claim {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(key) {
            Some(h) if h.instance != instance => Claim::Refused {
                holder: h.instance,
                holder_remote: h.remote,
            },
            existing => {
                let replaced = existing
                    .filter(|h| h.conn_id != conn_id)
                    .and_then(|h| h.conn.clone());
                held.insert(
                    key.clone(),
                    Holder {
                        instance,
                        conn_id,
                        remote,
                        conn,
                    },
                );
                Claim::Granted { replaced }
            }
        }
    }

    /// Releases `key` if connection `conn_id` still holds it (a replaced connection releases nothing).
    pub(super) fn release(&self, key: &AgentKey, conn_id: usize) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(key).is_some_and(|h| h.conn_id == conn_id) {
            held.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(agent: &str) -> AgentKey {
        AgentKey::new(
            gait_store::Tenant::from_parts("acme", "p", "prod").unwrap(),
            agent.parse().unwrap(),
        )
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_second_instance_is_refused_while_the_first_holds_the_identity() {
        let ids = Identities::default();
        let (a, b) = (InstanceId([1; 16]), InstanceId([2; 16]));
        assert!(matches!(
            ids.claim(&key("a1"), a, 1, addr(1), None),
            Claim::Granted { replaced: None }
        ));
        match ids.claim(&key("a1"), b, 2, addr(2), None) {
            Claim::Refused {
                holder,
                holder_remote,
            } => {
                assert_eq!(holder, a);
                assert_eq!(holder_remote, addr(1));
            }
            other => panic!("second instance was not refused: {other:?}"),
        }
        // Another identity is independent.
        assert!(matches!(
            ids.claim(&key("a2"), b, 2, addr(2), None),
            Claim::Granted { .. }
        ));
        // Once the first session ends, the other instance may take over.
        ids.release(&key("a1"), 1);
        assert!(matches!(
            ids.claim(&key("a1"), b, 3, addr(3), None),
            Claim::Granted { .. }
        ));
    }

    #[test]
    fn the_same_instance_redialling_replaces_its_old_session() {
        let ids = Identities::default();
        let a = InstanceId([1; 16]);
        assert!(matches!(
            ids.claim(&key("a1"), a, 1, addr(1), None),
            Claim::Granted { .. }
        ));
        assert!(matches!(
            ids.claim(&key("a1"), a, 2, addr(2), None),
            Claim::Granted { .. }
        ));
        // The replaced connection ending releases nothing: connection 2 still holds the identity.
        ids.release(&key("a1"), 1);
        assert!(matches!(
            ids.claim(&key("a1"), InstanceId([9; 16]), 3, addr(3), None),
            Claim::Refused { .. }
        ));
        ids.release(&key("a1"), 2);
        assert!(matches!(
            ids.claim(&key("a1"), InstanceId([9; 16]), 3, addr(3), None),
            Claim::Granted { .. }
        ));
    }
}
