//! The deployment CA: `pki init` creates the CA and the aggregator's server certificate in a PKI directory,
//! and later commands read the trust domain back from the CA certificate.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::*;

/// Options of [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// SPIFFE trust domain recorded in the CA and in every agent URI.
    pub trust_domain: String,
    /// DNS names and IP addresses the aggregator is reached at (server certificate SANs).
    pub server_names: Vec<String>,
    /// CA lifetime in days.
    pub ca_validity_days: u32,
    /// Server certificate lifetime in days.
    pub server_validity_days: u32,
    /// Replace an existing CA (every certificate issued by the old one stops being accepted).
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ca_validity_days: 3650,
            server_validity_days: 825,
            force: false,
        }
    }
}

/// What [`init`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Trust domain recorded in the CA.
    pub trust_domain: String,
    /// `dir/ca.pem`.
    pub ca_cert_path: PathBuf,
    /// `dir/ca.key`.
    pub ca_key_path: PathBuf,
    /// `dir/server.pem`.
    pub server_cert_path: PathBuf,
    /// `dir/server.key`.
    pub server_key_path: PathBuf,
    /// CA expiry.
    pub ca_not_after: OffsetDateTime,
    /// Server certificate expiry.
    pub server_not_after: OffsetDateTime,
    /// Server certificate serial (canonical hex).
    pub server_serial_hex: String,
}

/// Creates the CA and the server certificate in `dir` (created if missing).
pub fn init(dir: &Path, opts: &InitOptions) -> Result<InitReport, PkiError> {
    identity::validate_trust_domain(&opts.trust_domain)?;
    let sans = server_sans(&opts.server_names)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    if !opts.force {
        for path in [&ca_cert_path, &ca_key_path] {
            if path.try_exists().map_err(|source| io_error(path, source))? {
                return Err(PkiError::AlreadyInitialized { path: path.clone() });
            }
        }
    }
    create_private_dir(dir)?;

    let ca_validity = Validity::days(opts.ca_validity_days);
    ca_validity.check()?;
    let ca_key = generate_key("CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gait fleet");
        dn.push(
            DnType::CommonName,
            format!("Gait fleet CA {}", opts.trust_domain),
        );
        dn
    };
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{}", opts.trust_domain)
            .try_into()
            .map_err(|source| PkiError::Generate {
                what: "CA trust domain URI",
                source,
            })?,
    )];
    ca_params.serial_number = Some(random_serial()?);
    ca_params.not_before = ca_validity.not_before;
    ca_params.not_after = ca_validity.not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Generate {
            what: "CA certificate",
            source,
        })?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_validity = Validity::days(opts.server_validity_days);
    let (server_cert, server_key, server_serial_hex) =
        server_certificate(&issuer, sans, server_validity)?;

    let server_cert_path = dir.join(SERVER_CERT_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    // Keys first, certificates last: a crash leaves no certificate without its key.
    write_atomic(&ca_key_path, issuer.key().serialize_pem().as_bytes(), true)?;
    write_atomic(
        &server_key_path,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_atomic(&server_cert_path, server_cert.pem().as_bytes(), false)?;
    write_atomic(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;

    Ok(InitReport {
        trust_domain: opts.trust_domain.clone(),
        ca_cert_path,
        ca_key_path,
        server_cert_path,
        server_key_path,
        ca_not_after: ca_validity.not_after,
        server_not_after: server_validity.not_after,
        server_serial_hex,
    })
}

/// The trust domain of the CA in PKI directory `dir`.
pub fn trust_domain(dir: &Path) -> Result<String, PkiError> {
    let ca_cert_path = existing(dir, CA_CERT_FILE)?;
    let ca_der = first_cert(&ca_cert_path)?;
    identity::ca_trust_domain(&ca_der).ok_or(PkiError::NoTrustDomain { path: ca_cert_path })
}

/// A server certificate written by [`reissue_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReissuedServer {
    /// `dir/server.pem`.
    pub cert_path: PathBuf,
    /// The names it covers.
    pub server_names: Vec<String>,
    /// Its serial (canonical hex).
    pub serial_hex: String,
    /// Its expiry.
    pub not_after: OffsetDateTime,
}

/// Issues a new server certificate (and key) for `server_names` under the existing CA in `dir`, replacing
/// `server.pem`/`server.key` atomically. The CA is untouched, so every agent keeps trusting the aggregator;
/// a running aggregator serves the new certificate from its next start.
pub fn reissue_server(
    dir: &Path,
    server_names: &[String],
    validity_days: u32,
) -> Result<ReissuedServer, PkiError> {
    let sans = server_sans(server_names)?;
    let ca = load_signing_ca(dir)?;
    let validity = Validity::days(validity_days);
    let (cert, server_key, serial_hex) = server_certificate(&ca.issuer, sans, validity)?;
    let cert_path = dir.join(SERVER_CERT_FILE);
    // The key first: a crash between the two writes leaves the old certificate with a key that does not match
    // it, which the server refuses at start with a message naming both files (never a silent mix-up).
    write_atomic(
        &dir.join(SERVER_KEY_FILE),
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    // Once a CA rotation started, the certificate comes from the new CA: the server also presents the new CA as
    // the retired one signed it, so agents that hold only the retired CA still verify it (see `rotation`).
    let mut chain = cert.pem();
    if super::rotation::rotation_phase(dir) != super::rotation::RotationPhase::None {
        let cross = dir.join(super::rotation::CROSS_CERT_FILE);
        chain.push_str(&fs::read_to_string(&cross).map_err(|source| io_error(&cross, source))?);
    }
    write_atomic(&cert_path, chain.as_bytes(), false)?;
    Ok(ReissuedServer {
        cert_path,
        server_names: server_names.to_vec(),
        serial_hex,
        not_after: validity.not_after,
    })
}

/// A server certificate (EKU ServerAuth, `sans`) and its new key, signed by `issuer`, with its serial.
fn server_certificate(
    issuer: &Issuer<'_, KeyPair>,
    sans: Vec<SanType>,
    validity: Validity,
) -> Result<(rcgen::Certificate, KeyPair, String), PkiError> {
    validity.check()?;
    let key = generate_key("server key")?;
    let mut params = leaf_params("gait-aggregator", validity)?;
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serial_hex = serial_hex_of(&params);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: "server certificate",
            source,
        })?;
    Ok((cert, key, serial_hex))
}

/// The DNS names and IP addresses the server certificate in `dir` covers, as text.
pub fn server_cert_names(dir: &Path) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer as _;
    let path = existing(dir, SERVER_CERT_FILE)?;
    let der = first_cert(&path)?;
    let bad = |detail: String| PkiError::BadCertificate {
        path: path.clone(),
        detail,
    };
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    Ok(san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The configured names a server certificate does not cover (DNS names compared case-insensitively, IPs by
/// value).
pub fn uncovered_server_names(covered: &[String], wanted: &[String]) -> Vec<String> {
    let same = |a: &str, b: &str| match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    };
    wanted
        .iter()
        .filter(|w| !covered.iter().any(|c| same(c, w)))
        .cloned()
        .collect()
}

fn server_sans(names: &[String]) -> Result<Vec<SanType>, PkiError> {
    if names.is_empty() {
        return Err(PkiError::NoServerNames);
    }
    names
        .iter()
        .map(|name| {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(SanType::IpAddress(ip));
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            let bad = || PkiError::ServerName { name: name.clone() };
            if !valid {
                return Err(bad());
            }
            Ok(SanType::DnsName(
                name.to_ascii_lowercase().try_into().map_err(|_| bad())?,
            ))
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| io_error(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reissuing_the_server_certificate_keeps_the_ca_and_covers_the_new_names()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("pki");
        let report = init(&dir, &InitOptions::default())?;
        let ca_before = fs::read(&report.ca_cert_path)?;
        let ca_key_before = fs::read(&report.ca_key_path)?;
        assert_eq!(server_cert_names(&dir)?, ["localhost", "127.0.0.1"]);
        let names = vec!["agg.example.internal".to_owned(), "10.0.0.7".to_owned()];
        let reissued = reissue_server(&dir, &names, 30)?;
        assert_eq!(server_cert_names(&dir)?, names);
        assert_ne!(reissued.serial_hex, report.server_serial_hex);
        assert_eq!(fs::read(&report.ca_cert_path)?, ca_before, "the CA changed");
        assert_eq!(
            fs::read(&report.ca_key_path)?,
            ca_key_before,
            "the CA key changed"
        );
        // The new certificate is signed by the same CA (its issuer is the CA's subject).
        let ca_der = first_cert(&report.ca_cert_path)?;
        let server_der = first_cert(&reissued.cert_path)?;
        let (_, ca) = X509Certificate::from_der(&ca_der)?;
        let (_, server) = X509Certificate::from_der(&server_der)?;
        assert_eq!(server.issuer(), ca.subject());
        assert!(server.verify_signature(Some(ca.public_key())).is_ok());
        assert!(matches!(
            reissue_server(&dir, &["bad name".to_owned()], 30),
            Err(PkiError::ServerName { .. })
        ));
        assert_eq!(
            uncovered_server_names(&names, &["AGG.example.internal".into(), "10.0.0.8".into()]),
            ["10.0.0.8"]
        );
        Ok(())
    }

    #[test]
    fn server_names_become_ip_and_dns_sans() {
        let sans = server_sans(&["localhost".to_owned(), "::1".to_owned()]);
        assert!(matches!(
            sans.as_deref(),
            Ok([SanType::DnsName(_), SanType::IpAddress(_)])
        ));
        assert!(matches!(
            server_sans(&["bad name".to_owned()]),
            Err(PkiError::ServerName { .. })
        ));
        assert!(matches!(server_sans(&[]), Err(PkiError::NoServerNames)));
    }
}
