//! TLS 1.3 session tickets that survive an aggregator restart, so a reconnecting fleet resumes its sessions
//! instead of redoing every certificate handshake.
//!
//! A full mutual-TLS handshake costs the aggregator a signature, two signature verifications and a webpki path
//! build per agent; a resumed one (PSK with a fresh ECDHE share, so traffic keys stay forward-secret) skips all
//! of them and sends no certificates. After a restart that is most of the work of taking the fleet back.
//!
//! # Ticket format
//! `nonce (12 bytes) || ChaCha20-Poly1305(key, nonce, aad = "gait-ticket-v1", issued_unix_secs (8 bytes, BE) || rustls session state)`.
//! The session state rustls puts in a ticket includes the client certificate chain verified by the full
//! handshake; on resumption that chain becomes the connection's peer identity again.
//!
//! # Key
//! The key is HKDF-SHA256 of the 32-byte secret in `<data-dir>/keys/tls-ticket.key` (created on first start,
//! mode 0600), salted with the SHA-256 of every trusted CA certificate: a new CA, a rotation or a retired CA
//! invalidates every ticket. Whoever holds the secret can mint tickets for any agent identity, so it is exactly
//! as sensitive as the CA key next to it.
//! Deleting the file (and restarting) revokes every outstanding ticket; agents then do full handshakes.
//!
//! # What a resumed connection still goes through
//! The certificate verifier does not run on resumption, so [`crate::ingest`] re-checks every connection after
//! the handshake: revocation (the live [`crate::ingest::tls::RevocationSet`]) and certificate expiry. A ticket older
//! than [`TICKET_LIFETIME`] is refused by [`SessionTickets::decrypt`] and the agent falls back to a full
//! handshake.

use std::sync::Arc;
use std::time::Duration;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;

/// How long a ticket may be used to resume, from the full handshake that issued it.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Tickets issued "in the future" by up to this much (clock steps between restarts) are still accepted.
const CLOCK_SKEW: u64 = 300;

const AAD: &[u8] = b"gait-ticket-v1";
const HKDF_INFO: &[u8] = b"gait aggregator tls 1.3 session tickets v1";
const ISSUED_LEN: usize = 8;

/// Encrypts and decrypts session tickets with a key derived from a persisted secret and the CA.
pub struct SessionTickets {
    key: LessSafeKey,
    lifetime: Duration,
    issued: Counter,
    resumed: Counter,
    refused: Counter,
}

impl std::fmt::Debug for SessionTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SessionTickets")
            .field("lifetime", &self.lifetime)
            .field("issued", &self.issued.get())
            .field("resumed", &self.resumed.get())
            .field("refused", &self.refused.get())
            .finish_non_exhaustive()
    }
}

/// What salts the ticket key: the DER of every CA trusted for agent certificates, in order (DER is
/// self-delimiting, so the concatenation names the set unambiguously). Any change of trust (a new CA, a rotation
/// started, a retired CA dropped) changes it and voids every ticket, so no session resumes without the
/// certificate verifier past a CA that is no longer trusted.
pub fn trust_key_input(trusted_cas: &[rustls::pki_types::CertificateDer<'_>]) -> Vec<u8> {
    trusted_cas
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

impl SessionTickets {
    /// The ticket key for `secret` (the persisted 32 bytes) and the trusted CAs ([`trust_key_input`]);
    /// outcomes are counted in `metrics` ([`crate::metrics::TLS_SESSION_TICKETS`]).
    pub fn new(secret: &[u8; 32], ca_der: &[u8], metrics: &Metrics) -> Arc<Self> {
        Self::with_lifetime(secret, ca_der, TICKET_LIFETIME, metrics)
    }

    /// [`SessionTickets::new`] with another lifetime (tests).
    pub fn with_lifetime(
        secret: &[u8; 32],
        ca_der: &[u8],
        lifetime: Duration,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let outcome = |value| {
            metrics
                .tls_session_tickets
                .get_or_create(&[("outcome", value)])
                .clone()
        };
        let salt_bytes = ring::digest::digest(&ring::digest::SHA256, ca_der);
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, salt_bytes.as_ref());
        let info = [HKDF_INFO];
        let prk = salt.extract(secret);
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .expect("HKDF-SHA256 can expand 32 bytes");
        Arc::new(Self {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            lifetime,
            issued: outcome("issued"),
            resumed: outcome("resumed"),
            refused: outcome("refused"),
        })
    }

    /// Tickets issued (one per full handshake or resumption).
    pub fn issued(&self) -> u64 {
        self.issued.get()
    }

    /// Tickets presented and accepted: sessions resumed without a certificate handshake.
    pub fn resumed(&self) -> u64 {
        self.resumed.get()
    }

    /// Tickets presented and refused (forged, from another key or CA, or too old): a full handshake followed.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    fn seal(&self, plain: &[u8], issued_unix: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + ISSUED_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&issued_unix.to_be_bytes());
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, cipher: &[u8], now_unix: u64) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN + ISSUED_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let (nonce, sealed) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut body)
            .ok()?;
        let (issued, state) = plain.split_at(ISSUED_LEN);
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let fresh = issued <= now_unix.saturating_add(CLOCK_SKEW)
            && now_unix.saturating_sub(issued) <= self.lifetime.as_secs();
        fresh.then(|| state.to_vec())
    }
}

impl rustls::server::ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ticket = self.seal(plain, crate::clock::unix_seconds());
        if ticket.is_some() {
            self.issued.inc();
        }
        ticket
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let state = self.open(cipher, crate::clock::unix_seconds());
        let counter = if state.is_some() {
            &self.resumed
        } else {
            &self.refused
        };
        counter.inc();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::server::ProducesTickets as _;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn a_ticket_round_trips_and_counts() {
        let t = SessionTickets::new(&SECRET, b"ca", &Metrics::new());
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!((t.issued(), t.resumed(), t.refused()), (1, 1, 0));
        // Two tickets of the same state differ (fresh nonce).
        assert_ne!(t.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn tampered_foreign_and_short_tickets_are_refused() {
        let t = SessionTickets::new(&SECRET, b"ca", &Metrics::new());
        let ticket = t.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "flipped byte {i}");
        }
        // Another secret, or another CA, derives another key.
        assert_eq!(
            SessionTickets::new(&[8; 32], b"ca", &Metrics::new()).decrypt(&ticket),
            None
        );
        assert_eq!(
            SessionTickets::new(&SECRET, b"other ca", &Metrics::new()).decrypt(&ticket),
            None
        );
        assert_eq!(t.decrypt(&ticket[..NONCE_LEN + 4]), None);
        assert_eq!(t.decrypt(&[]), None);
        assert_eq!(t.resumed(), 0);
    }

    #[test]
    fn a_ticket_does_not_survive_a_change_of_trust() {
        use rustls::pki_types::CertificateDer;
        let (new, old) = (
            CertificateDer::from(b"new ca".to_vec()),
            CertificateDer::from(b"old ca".to_vec()),
        );
        let key = |cas: &[CertificateDer<'_>]| {
            SessionTickets::new(&SECRET, &trust_key_input(cas), &Metrics::new())
        };
        let ticket = key(&[new.clone(), old.clone()]).encrypt(b"state").unwrap();
        // A restart with the same trust keeps the tickets.
        assert!(key(&[new.clone(), old.clone()]).decrypt(&ticket).is_some());
        // The retired CA dropped (the new one still first): the ticket is void.
        assert_eq!(key(std::slice::from_ref(&new)).decrypt(&ticket), None);
        // A rotation started (the new CA ahead of the old one): void too.
        let before = key(std::slice::from_ref(&old)).encrypt(b"state").unwrap();
        assert_eq!(key(&[new, old]).decrypt(&before), None);
    }

    #[test]
    fn old_and_future_tickets_are_refused() {
        let t = SessionTickets::with_lifetime(
            &SECRET,
            b"ca",
            Duration::from_secs(100),
            &Metrics::new(),
        );
        let now = 1_000_000;
        let ticket = t.seal(b"state", now).unwrap();
        assert!(t.open(&ticket, now + 100).is_some());
        assert!(t.open(&ticket, now + 101).is_none());
        assert!(t.open(&ticket, now - CLOCK_SKEW).is_some());
        assert!(t.open(&ticket, now - CLOCK_SKEW - 1).is_none());
    }

    #[test]
    fn debug_output_carries_no_key_material() {
        let t = SessionTickets::new(&SECRET, b"ca", &Metrics::new());
        let text = format!("{t:?}");
        assert!(text.contains("lifetime") && !text.contains("key"), "{text}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_decrypt_or_panic(cipher in proptest::collection::vec(any::<u8>(), 0..256)) {
            let t = SessionTickets::new(&SECRET, b"ca", &Metrics::new());
            prop_assert_eq!(t.decrypt(&cipher), None);
        }
    }
}
