//! CA rotation with overlap: two CAs trusted while agents move, and a way back for an agent that slept through
//! the whole rotation.
//!
//! Files in the PKI directory during and after a rotation:
//! - `ca.pem` / `ca.key`: the CA that issues (the new one from `rotate-ca` on).
//! - `ca-previous.pem`: the retired CA. It stays a trust anchor for agent client certificates until every
//!   agent it certified has renewed (agents renew at a third of their validity left, and receive the new
//!   bundle with the renewal) or been revoked; `ca-previous.key` exists only between `rotate-ca` and
//!   `rotate-ca --finish` (the old CA signs the cross certificate, then never anything again).
//! - `ca-cross.pem`: the new CA's certificate signed by the retired CA (same subject and key as `ca.pem`).
//! - `ca-bundle.pem`: new + retired CA, what the aggregator trusts client certificates with and what agents
//!   receive (enrollment, renewal, `issue-agent`) to verify the aggregator.
//!
//! Phases: `rotate-ca` makes the new CA and the cross certificate; the server certificate stays the old CA's,
//! so agents holding only the old CA and agents holding the bundle both verify it; enrollment and renewal
//! issue from the new CA. `rotate-ca --finish` re-issues the server certificate from the new CA and makes
//! the server present `[server, cross]`: an agent that holds only the old CA (offline through the rotation,
//! or hand-minted before it) builds server -> cross -> old CA and connects; one with the bundle stops at the
//! new CA. The old CA key is deleted. Restart the aggregator after each phase (it reads the PKI at start).
//! `retire-ca` ([`super::retire`]) ends the overlap once no agent depends on the retired CA: it deletes
//! `ca-previous.pem`, `ca-cross.pem` and `ca-bundle.pem` and cuts the cross certificate from `server.pem`.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType};

use super::*;

/// The retired CA's certificate.
pub const PREVIOUS_CA_CERT_FILE: &str = "ca-previous.pem";
/// The retired CA's key, kept only while a rotation is in progress.
pub const PREVIOUS_CA_KEY_FILE: &str = "ca-previous.key";
/// The new CA cross-signed by the retired one.
pub const CROSS_CERT_FILE: &str = "ca-cross.pem";
/// The CAs trusted for agent certificates and handed to agents.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// One CA, no rotation ever (or the retired CA was dropped).
    None,
    /// `rotate-ca` ran: two CAs trusted, the server certificate is still the old CA's.
    Started,
    /// `rotate-ca --finish` ran: the server certificate is the new CA's, presented with the cross certificate.
    Finished,
}

/// What a rotation step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The phase reached.
    pub phase: RotationPhase,
    /// Subject (CN) of the CA that issues now.
    pub issuing_ca: String,
    /// Subject (CN) of the retired CA.
    pub retired_ca: String,
}

/// The phase of the PKI in `dir`.
pub fn rotation_phase(dir: &Path) -> RotationPhase {
    if dir.join(PREVIOUS_CA_KEY_FILE).exists() {
        RotationPhase::Started
    } else if dir.join(PREVIOUS_CA_CERT_FILE).exists() {
        RotationPhase::Finished
    } else {
        RotationPhase::None
    }
}

/// The file of CA certificates to trust agents with and to hand to agents: `ca-bundle.pem` once a rotation
/// started, else `ca.pem`.
pub fn trust_bundle_path(dir: &Path) -> PathBuf {
    let bundle = dir.join(BUNDLE_FILE);
    if bundle.exists() {
        bundle
    } else {
        dir.join(CA_CERT_FILE)
    }
}

fn common_name(der: &[u8], path: &Path) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// Parameters of a CA certificate for `trust_domain` named `name`, valid `validity`.
fn ca_params(
    trust_domain: &str,
    name: &str,
    validity: Validity,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gait fleet");
        dn.push(DnType::CommonName, name);
        dn
    };
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(|source| PkiError::Generate {
                what: "CA trust domain URI",
                source,
            })?,
    )];
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// `rotate-ca`: a new CA issues from now on; the old one stays trusted and cross-signs the new one. Refused
/// while a rotation is in progress (finish it first), and after a finished one until its retired CA is dropped
/// (`retire-ca`, which checks which agents still hold it).
pub fn rotate_ca_start(dir: &Path, ca_validity_days: u32) -> Result<RotationReport, PkiError> {
    match rotation_phase(dir) {
        RotationPhase::Started => {
            return Err(PkiError::RotationInProgress {
                path: dir.join(PREVIOUS_CA_KEY_FILE),
            });
        }
        RotationPhase::Finished => {
            return Err(PkiError::PreviousNotRetired {
                path: dir.join(PREVIOUS_CA_CERT_FILE),
            });
        }
        RotationPhase::None => {}
    }
    let old = load_signing_ca(dir)?;
    let trust_domain =
        identity::ca_trust_domain(&old.der).ok_or_else(|| PkiError::NoTrustDomain {
            path: old.cert_path.clone(),
        })?;
    let old_pem = fs::read(&old.cert_path).map_err(|source| io_error(&old.cert_path, source))?;
    let old_key_pem = fs::read(dir.join(CA_KEY_FILE))
        .map_err(|source| io_error(&dir.join(CA_KEY_FILE), source))?;
    let retired_ca = common_name(&old.der, &old.cert_path)?;

    let stamp = now_seconds();
    let name = format!(
        "Gait fleet CA {trust_domain} {:04}{:02}{:02}T{:02}{:02}{:02}Z",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second()
    );
    let validity = Validity::days(ca_validity_days);
    validity.check()?;
    let key = generate_key("new CA key")?;
    let params = ca_params(&trust_domain, &name, validity)?;
    let new_cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "new CA certificate",
            source,
        })?;
    // The same subject and key, vouched for by the old CA: the path an old-CA-only agent builds to the new CA.
    let cross = params
        .signed_by(&key, &old.issuer)
        .map_err(|source| PkiError::Generate {
            what: "cross-signed CA certificate",
            source,
        })?;

    // Keys first; the old CA's files are copied before `ca.*` is replaced, so a crash never loses the old CA.
    write_atomic(&dir.join(PREVIOUS_CA_KEY_FILE), &old_key_pem, true)?;
    write_atomic(&dir.join(PREVIOUS_CA_CERT_FILE), &old_pem, false)?;
    write_atomic(&dir.join(CROSS_CERT_FILE), cross.pem().as_bytes(), false)?;
    let mut bundle = new_cert.pem().into_bytes();
    bundle.extend_from_slice(&old_pem);
    write_atomic(&dir.join(BUNDLE_FILE), &bundle, false)?;
    write_atomic(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), true)?;
    write_atomic(&dir.join(CA_CERT_FILE), new_cert.pem().as_bytes(), false)?;
    Ok(RotationReport {
        phase: RotationPhase::Started,
        issuing_ca: name,
        retired_ca,
    })
}

/// `rotate-ca --finish`: the server certificate is re-issued by the new CA (same names) and presented with the
/// cross certificate; the old CA key is deleted, so the old CA issues nothing any more.
pub fn rotate_ca_finish(dir: &Path, server_validity_days: u32) -> Result<RotationReport, PkiError> {
    if rotation_phase(dir) != RotationPhase::Started {
        return Err(PkiError::NoRotation {
            dir: dir.to_owned(),
        });
    }
    let names = server_cert_names(dir)?;
    let ca = load_signing_ca(dir)?;
    let issuing_ca = common_name(&ca.der, &ca.cert_path)?;
    let previous = dir.join(PREVIOUS_CA_CERT_FILE);
    let retired_ca = common_name(&first_cert(&previous)?, &previous)?;
    // `reissue_server` appends the cross certificate once a rotation started: the chain a verifier holding only
    // the old CA needs.
    reissue_server(dir, &names, server_validity_days)?;
    let old_key = dir.join(PREVIOUS_CA_KEY_FILE);
    fs::remove_file(&old_key).map_err(|source| io_error(&old_key, source))?;
    Ok(RotationReport {
        phase: RotationPhase::Finished,
        issuing_ca,
        retired_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_cross_signs_the_new_ca_and_retires_the_old_key()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        init(dir, &InitOptions::default())?;
        let old_ca = first_cert(&dir.join(CA_CERT_FILE))?;
        assert_eq!(rotation_phase(dir), RotationPhase::None);
        assert_eq!(trust_bundle_path(dir), dir.join(CA_CERT_FILE));
        assert!(matches!(
            rotate_ca_finish(dir, 30),
            Err(PkiError::NoRotation { .. })
        ));

        let started = rotate_ca_start(dir, 365)?;
        assert_eq!(rotation_phase(dir), RotationPhase::Started);
        assert_ne!(started.issuing_ca, started.retired_ca);
        assert!(matches!(
            rotate_ca_start(dir, 365),
            Err(PkiError::RotationInProgress { .. })
        ));
        let new_ca = first_cert(&dir.join(CA_CERT_FILE))?;
        assert_ne!(new_ca, old_ca);
        assert_eq!(trust_domain(dir)?, DEFAULT_TRUST_DOMAIN);
        let bundle = pem::load_certs(&trust_bundle_path(dir))?;
        assert_eq!(bundle.len(), 2);
        // The cross certificate carries the new CA's subject and key, signed by the old CA.
        let cross = first_cert(&dir.join(CROSS_CERT_FILE))?;
        let (_, cross) = X509Certificate::from_der(&cross)?;
        let (_, new) = X509Certificate::from_der(&new_ca)?;
        let (_, old) = X509Certificate::from_der(&old_ca)?;
        assert_eq!(cross.subject(), new.subject());
        assert_eq!(cross.public_key().raw, new.public_key().raw);
        assert_eq!(cross.issuer(), old.subject());
        assert!(cross.verify_signature(Some(old.public_key())).is_ok());
        // The server certificate stays the old CA's until --finish; re-issued meanwhile, it comes from the new
        // CA and brings the cross certificate, so old-CA-only agents still verify it.
        assert_eq!(pem::load_certs(&dir.join(SERVER_CERT_FILE))?.len(), 1);
        reissue_server(dir, &["localhost".to_owned()], 30)?;
        assert_eq!(pem::load_certs(&dir.join(SERVER_CERT_FILE))?.len(), 2);

        let finished = rotate_ca_finish(dir, 30)?;
        assert_eq!(finished.phase, RotationPhase::Finished);
        assert_eq!(rotation_phase(dir), RotationPhase::Finished);
        // A second rotation waits until the first one's retired CA is dropped (retire-ca checks its holders).
        assert!(matches!(
            rotate_ca_start(dir, 365),
            Err(PkiError::PreviousNotRetired { .. })
        ));
        assert!(dir.join(PREVIOUS_CA_CERT_FILE).exists());
        assert!(
            !dir.join(PREVIOUS_CA_KEY_FILE).exists(),
            "the old CA key survived"
        );
        let chain = pem::load_certs(&dir.join(SERVER_CERT_FILE))?;
        assert_eq!(chain.len(), 2, "server certificate and cross certificate");
        let (_, server) = X509Certificate::from_der(&chain[0])?;
        assert_eq!(server.issuer(), new.subject());
        assert!(server.verify_signature(Some(new.public_key())).is_ok());
        // A second rotation may start once the first one's retired CA is dropped (what retire-ca does after its
        // holder check).
        crate::pki::retire::drop_previous_ca(dir)?;
        assert_eq!(rotation_phase(dir), RotationPhase::None);
        rotate_ca_start(dir, 365)?;
        Ok(())
    }
}
