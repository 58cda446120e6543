//! Retiring the previous CA: the step that ends a rotation's overlap (`gait-aggregator pki retire-ca`).
//!
//! After `rotate-ca` and `rotate-ca --finish` the retired CA stays a trust anchor (`ca-previous.pem`, in
//! `ca-bundle.pem`) and the server presents the cross certificate, so agents that slept through the rotation
//! still come back. Once every agent has moved to the new CA, retiring removes the retired CA and the cross
//! certificate: `server.pem` is cut back to the server certificate alone, then `ca-bundle.pem`, `ca-cross.pem`
//! and `ca-previous.pem` are deleted (the last one marks the phase, so a step interrupted half-way is finished by
//! running the command again). The aggregator reads its trust at start: restart it, and a certificate of the
//! retired CA is refused at its next handshake. The session-ticket key is derived from every trusted CA, so
//! no session resumed from before the restart skips that handshake.
//!
//! Which agents still depend on the retired CA is decided from what the store knows ([`KnownCertificate`]):
//! the certificate each agent presented at its last connection (hand-minted ones included) and every one the
//! aggregator signed online (a renewal counts before the agent reconnects with it). An agent holds the retired
//! CA when none of its live, unrevoked certificates comes from another CA and one comes from the retired CA or
//! from an issuer not recorded yet (a row written before issuers were, or an agent not connected since the
//! upgrade that records them): retiring is refused while one does, unless forced.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use gait_store::{AgentKey, CertSerial, KnownCertificate, Store};

use super::rotation::{
    BUNDLE_FILE, CROSS_CERT_FILE, PREVIOUS_CA_CERT_FILE, RotationPhase, rotation_phase,
};
use super::{CA_CERT_FILE, PkiError, SERVER_CERT_FILE, first_cert, io_error, write_atomic};

/// The audit action of a retirement.
pub const ACTION: &str = "pki.retire_ca";

/// An agent that still depends on the CA being retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredCaHolder {
    /// The agent.
    pub agent: AgentKey,
    /// Its certificate that chains to the retired CA (or whose issuer is not recorded).
    pub cert_serial: CertSerial,
    /// That certificate's `notAfter` (unix ms), when known.
    pub not_after_unix_ms: Option<i64>,
    /// `false` when the certificate's issuer is not recorded (it may or may not be the retired CA).
    pub issuer_known: bool,
}

impl std::fmt::Display for RetiredCaHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (serial {}", self.agent, self.cert_serial)?;
        if !self.issuer_known {
            f.write_str(", issuer not recorded: not connected since the upgrade")?;
        }
        f.write_str(")")
    }
}

/// What a retirement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireReport {
    /// Subject (RFC 4514) of the CA that was retired.
    pub retired_ca: String,
    /// Subject (RFC 4514) of the CA that issues and stays trusted.
    pub issuing_ca: String,
    /// Agents that still held the retired CA and were cut off because the retirement was forced.
    pub forced_past: Vec<RetiredCaHolder>,
}

/// Why the retired CA was not (completely) retired.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// The PKI directory is not in a state to retire from, or a file could not be changed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store could not list the agents' certificates.
    #[error("cannot list the agents' certificates from the database: {0}")]
    Store(#[from] gait_store::StoreError),
    /// Agents still hold certificates of the retired CA and the retirement was not forced.
    #[error(
        "{} agent(s) still hold a live certificate of the retired CA `{retired_ca}` and would be refused: {}; \
         let them renew (they do at a third of their validity left) or re-enroll them, revoke the ones that are \
         gone (`gait-aggregator pki revoke`), or cut them off with --force",
        holders.len(),
        holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    StillHeld {
        /// The retired CA's subject.
        retired_ca: String,
        /// The agents that depend on it.
        holders: Vec<RetiredCaHolder>,
    },
    /// The files changed but the audit entry could not be written.
    #[error(
        "the retired CA was removed but its audit entry could not be written; the retirement is in the \
         aggregator's log only: {0}"
    )]
    Audit(#[from] crate::audit::AuditError),
}

impl RetireError {
    /// Whether the refusal is because agents still hold the retired CA (retrying after they renew may succeed).
    pub fn is_still_held(&self) -> bool {
        matches!(self, Self::StillHeld { .. })
    }
}

/// The agents that depend on the CA named `retired` (its subject, RFC 4514), from the live, unrevoked
/// certificates in `known`: those with no certificate from another CA and one from `retired` or of unknown
/// issuer. One entry per agent (its retired-CA certificate, else its unknown one), in agent order.
pub fn holders(retired: &str, known: &[KnownCertificate]) -> Vec<RetiredCaHolder> {
    let mut by_agent: BTreeMap<String, (bool, Option<RetiredCaHolder>)> = BTreeMap::new();
    for cert in known {
        let entry = by_agent
            .entry(cert.agent.to_string())
            .or_insert((false, None));
        match cert.issuer.as_deref() {
            Some(issuer) if issuer != retired => entry.0 = true,
            issuer => {
                let issuer_known = issuer.is_some();
                // A certificate known to be the retired CA's names the agent better than an unknown one.
                if entry
                    .1
                    .as_ref()
                    .is_none_or(|h| !h.issuer_known && issuer_known)
                {
                    entry.1 = Some(RetiredCaHolder {
                        agent: cert.agent.clone(),
                        cert_serial: cert.cert_serial.clone(),
                        not_after_unix_ms: cert.not_after_unix_ms,
                        issuer_known,
                    });
                }
            }
        }
    }
    by_agent
        .into_values()
        .filter_map(|(moved, holder)| if moved { None } else { holder })
        .collect()
}

/// `pki retire-ca [--force]`: refuses while agents still hold the retired CA (unless `force`), then removes the
/// retired CA and the cross certificate from the PKI in `dir` and appends a [`ACTION`] entry by `actor` in its
/// own transaction. Only after `rotate-ca --finish`.
pub async fn retire_ca(
    store: &Store,
    dir: &Path,
    actor: &str,
    force: bool,
    now_ms: i64,
) -> Result<RetireReport, RetireError> {
    retirable(dir)?;
    let retired_ca = subject_of(&dir.join(PREVIOUS_CA_CERT_FILE))?;
    let issuing_ca = subject_of(&dir.join(CA_CERT_FILE))?;
    let known = store.live_agent_certificates(now_ms).await?;
    let held = holders(&retired_ca, &known);
    if !held.is_empty() && !force {
        return Err(RetireError::StillHeld {
            retired_ca,
            holders: held,
        });
    }
    drop_previous_ca(dir)?;

    let mut details = serde_json::Map::new();
    details.insert("retired_ca".into(), retired_ca.as_str().into());
    details.insert("issuing_ca".into(), issuing_ca.as_str().into());
    details.insert("forced".into(), force.into());
    details.insert(
        "cut_off".into(),
        held.iter()
            .map(|h| serde_json::Value::from(h.agent.to_string()))
            .collect::<Vec<_>>()
            .into(),
    );
    tracing::info!(
        actor,
        action = ACTION,
        retired_ca,
        issuing_ca,
        forced = force,
        cut_off = held.len(),
        "retired CA removed"
    );
    let draft = gait_audit::EntryDraft {
        actor: actor.to_owned(),
        action: ACTION.to_owned(),
        target: gait_audit::Target::global("ca", "retire"),
        before: None,
        after: None,
        details: Some(details),
    };
    store
        .transaction(async |tx| crate::audit::append_draft(tx, draft).await.map(|_| ()))
        .await?;
    Ok(RetireReport {
        retired_ca,
        issuing_ca,
        forced_past: held,
    })
}

/// Whether the PKI in `dir` has a retired CA to drop: only after `rotate-ca --finish`.
fn retirable(dir: &Path) -> Result<(), PkiError> {
    match rotation_phase(dir) {
        RotationPhase::Finished => Ok(()),
        RotationPhase::Started => Err(PkiError::RotationNotFinished {
            dir: dir.to_owned(),
        }),
        RotationPhase::None => Err(PkiError::NothingToRetire {
            dir: dir.to_owned(),
        }),
    }
}

/// The subject (RFC 4514) of the first certificate in `path`.
fn subject_of(path: &Path) -> Result<String, PkiError> {
    super::identity::subject_name(&first_cert(path)?).map_err(|e| PkiError::BadCertificate {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Removes the retired CA from the PKI in `dir`: the server certificate without the cross certificate, then the
/// bundle (trust falls back to `ca.pem`), the cross certificate, and last the retired CA itself. Each step is
/// idempotent, so a retirement interrupted half-way is completed by running it again.
pub(crate) fn drop_previous_ca(dir: &Path) -> Result<(), PkiError> {
    let server = dir.join(SERVER_CERT_FILE);
    let chain = fs::read_to_string(&server).map_err(|source| io_error(&server, source))?;
    let leaf = first_pem_block(&chain).ok_or_else(|| PkiError::BadCertificate {
        path: server.clone(),
        detail: "no PEM certificate in it".to_owned(),
    })?;
    if leaf.len() != chain.len() {
        write_atomic(&server, leaf.as_bytes(), false)?;
    }
    for name in [BUNDLE_FILE, CROSS_CERT_FILE, PREVIOUS_CA_CERT_FILE] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error(&path, source)),
        }
    }
    Ok(())
}

/// The text up to and including the first `-----END CERTIFICATE-----` line of `pem`.
fn first_pem_block(pem: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    let end = if pem[end..].starts_with("\r\n") {
        end + 2
    } else if pem[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    Some(&pem[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{
        InitOptions, init, pem, rotate_ca_finish, rotate_ca_start, trust_bundle_path,
    };
    use gait_store::{CertificateSource, Tenant};

    fn known(agent: &str, serial: &str, issuer: Option<&str>) -> KnownCertificate {
        KnownCertificate {
            agent: AgentKey::new(
                Tenant::from_parts("acme", "web", "prod").expect("tenant"),
                agent.parse().expect("agent id"),
            ),
            cert_serial: serial.parse().expect("serial"),
            issuer: issuer.map(str::to_owned),
            not_after_unix_ms: Some(1),
            source: CertificateSource::Presented,
        }
    }

    #[test]
    fn an_agent_holds_the_retired_ca_until_one_of_its_certificates_comes_from_another_ca() {
        let old = "O=Gait fleet, CN=old";
        let new = "O=Gait fleet, CN=new";
        let certs = [
            // Still on the old CA only.
            known("stuck", "01", Some(old)),
            // Presented the old CA's certificate, then renewed from the new one (not reconnected yet).
            known("renewed", "02", Some(old)),
            known("renewed", "03", Some(new)),
            // Moved entirely.
            known("moved", "04", Some(new)),
            // Not connected since issuers were recorded: may hold the old CA.
            known("unknown", "05", None),
            // Unknown and old: named by the old one.
            known("mixed", "06", None),
            known("mixed", "07", Some(old)),
        ];
        let held = holders(old, &certs);
        let names: Vec<(String, &str, bool)> = held
            .iter()
            .map(|h| {
                (
                    h.agent.agent_id.to_string(),
                    h.cert_serial.as_str(),
                    h.issuer_known,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("mixed".to_owned(), "07", true),
                ("stuck".to_owned(), "01", true),
                ("unknown".to_owned(), "05", false)
            ]
        );
        assert!(holders(new, &certs[3..4]).len() == 1);
        assert!(holders(old, &[]).is_empty());
    }

    #[test]
    fn retiring_drops_the_retired_ca_and_the_cross_certificate_from_the_trust_and_the_server_chain()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        init(dir, &InitOptions::default())?;
        assert!(matches!(
            drop_previous_ca_checked(dir),
            Err(PkiError::NothingToRetire { .. })
        ));
        rotate_ca_start(dir, 365)?;
        assert!(matches!(
            drop_previous_ca_checked(dir),
            Err(PkiError::RotationNotFinished { .. })
        ));
        // An agent certificate names its CA by the subject the store compares: the new CA's, not the retired one's.
        let out = tmp.path().join("agent");
        let id = crate::pki::identity::AgentToIssue::parse("", "acme", "web", "prod", "a1")?;
        let issued = crate::pki::issue_agent(dir, &id, &out, crate::pki::Validity::days(1))?;
        let agent = crate::pki::identity::identity_from_cert_der(&first_cert(&issued.cert_path)?)?;
        assert_eq!(agent.issuer, subject_of(&dir.join(CA_CERT_FILE))?);
        assert_ne!(agent.issuer, subject_of(&dir.join(PREVIOUS_CA_CERT_FILE))?);
        rotate_ca_finish(dir, 30)?;
        let new_ca = first_cert(&dir.join(CA_CERT_FILE))?;
        assert_eq!(pem::load_certs(&trust_bundle_path(dir))?.len(), 2);
        let server_before = pem::load_certs(&dir.join(SERVER_CERT_FILE))?;
        assert_eq!(server_before.len(), 2);

        drop_previous_ca_checked(dir)?;
        assert_eq!(rotation_phase(dir), RotationPhase::None);
        for gone in [BUNDLE_FILE, CROSS_CERT_FILE, PREVIOUS_CA_CERT_FILE] {
            assert!(!dir.join(gone).exists(), "{gone} survived");
        }
        let trusted = pem::load_certs(&trust_bundle_path(dir))?;
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted[0].as_ref(), new_ca.as_slice());
        let server_after = pem::load_certs(&dir.join(SERVER_CERT_FILE))?;
        assert_eq!(server_after, server_before[..1]);
        // Run again (an interrupted retirement): nothing left to retire, nothing broken.
        drop_previous_ca(dir)?;
        assert_eq!(pem::load_certs(&dir.join(SERVER_CERT_FILE))?, server_after);
        // Re-issuing the server certificate no longer appends a cross certificate, and a new rotation may start.
        crate::pki::reissue_server(dir, &["localhost".to_owned()], 30)?;
        assert_eq!(pem::load_certs(&dir.join(SERVER_CERT_FILE))?.len(), 1);
        rotate_ca_start(dir, 365)?;
        Ok(())
    }

    fn drop_previous_ca_checked(dir: &Path) -> Result<(), PkiError> {
        retirable(dir)?;
        drop_previous_ca(dir)
    }

    #[test]
    fn the_first_pem_block_is_cut_after_its_end_line() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(first_pem_block(&format!("{a}{b}")), Some(a));
        assert_eq!(first_pem_block(a), Some(a));
        assert_eq!(first_pem_block("junk"), None);
    }
}
