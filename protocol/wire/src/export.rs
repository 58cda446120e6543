//! The outbox export file: the records an agent could not send, carried out of a site with no network path
//! on a file and committed by the aggregator (`gait-aggregator ingest-file`) exactly as if they had arrived
//! over the wire. The agent, the aggregator and an auditor's offline verifier read it with this module.
//!
//! The format, the signed input and what a reader must verify, in order, are described once in the crate
//! documentation, section "Outbox export files" (rendered as `docs/protocol.md`); this module implements them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{BundleRef, Digest, Record, RecordClass, RecordError};

/// Schema id of an outbox export file.
pub const SCHEMA_ID: &str = "gait.fleet.outbox_export";
/// Schema version this module writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Largest export file, in bytes; checked before a file is read or parsed.
pub const MAX_EXPORT_BYTES: u64 = 256 * 1024 * 1024;
/// Most records one export file holds (an agent with more exports them in several files).
pub const MAX_EXPORT_RECORDS: usize = 500_000;
/// Most certificates in `certificate_chain` (the agent's and its intermediates).
pub const MAX_CHAIN_CERTS: usize = 8;
/// Largest certificate in `certificate_chain`, in DER bytes.
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Largest signature value, in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// Largest `agent_uri`, in bytes.
pub const MAX_AGENT_URI_BYTES: usize = 2048;

const SIGNING_DOMAIN: &[u8] = b"gait.wire.outbox_export.v1";
const RECORDS_DOMAIN: &[u8] = b"gait.wire.outbox_export.records.v1";

/// Why an export file is refused. Each variant names what failed; [`ExportError::what`] gives it as one word
/// (`size`, `format`, `record`, `chain`, `digest`, `signature`, `certificate`) for scripts.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file is over [`MAX_EXPORT_BYTES`].
    #[error("the export file is {size} bytes, over the limit of {max} bytes", max = MAX_EXPORT_BYTES)]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// The file is not an outbox export of this schema version, or breaks a cap.
    #[error("not a valid outbox export file: {0}")]
    Format(String),
    /// A record breaks the record rule or its hash does not match its content.
    #[error("record {seq}: {reason}")]
    Record {
        /// The record.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The records do not form one hash chain of consecutive seqs.
    #[error("hash chain broken at record {seq}: {reason}")]
    Chain {
        /// The first record that does not link.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header does not describe the records (count, first/last seq or hash, records digest).
    #[error("the header does not match the records: {0}")]
    Digest(String),
    /// The signature does not verify with the first certificate's key.
    #[error("signature invalid: {0}")]
    Signature(String),
    /// The certificate chain does not verify against the trusted CAs.
    #[error("certificate refused: {0}")]
    Certificate(String),
}

impl ExportError {
    /// One word for what failed: `size`, `format`, `record`, `chain`, `digest`, `signature`, `certificate`.
    pub fn what(&self) -> &'static str {
        match self {
            ExportError::TooLarge { .. } => "size",
            ExportError::Format(_) => "format",
            ExportError::Record { .. } => "record",
            ExportError::Chain { .. } => "chain",
            ExportError::Digest(_) => "digest",
            ExportError::Signature(_) => "signature",
            ExportError::Certificate(_) => "certificate",
        }
    }
}

/// The signature algorithm of an export: the agent's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ECDSA on P-256 with SHA-256, ASN.1 DER signature.
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384, ASN.1 DER signature.
    EcdsaP384Sha384,
    /// Ed25519.
    Ed25519,
}

impl SignatureAlgorithm {
    /// Every algorithm, in the order a signer should prefer them.
    pub const ALL: [SignatureAlgorithm; 3] = [
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::EcdsaP384Sha384,
        SignatureAlgorithm::Ed25519,
    ];

    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa_p256_sha256",
            SignatureAlgorithm::EcdsaP384Sha384 => "ecdsa_p384_sha384",
            SignatureAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// Inverse of [`SignatureAlgorithm::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn verifier(self) -> &'static dyn SignatureVerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
            SignatureAlgorithm::EcdsaP384Sha384 => webpki::ring::ECDSA_P384_SHA384,
            SignatureAlgorithm::Ed25519 => webpki::ring::ED25519,
        }
    }
}

/// The signed header: who exported which records when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportHeader {
    /// The agent's SPIFFE URI as its certificate says (informative: readers take the identity from the
    /// verified certificate and refuse a file whose header names another).
    pub agent_uri: String,
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record.
    pub last_seq: u64,
    /// Number of records (`last_seq - first_seq + 1`).
    pub count: u64,
    /// `prev_hash` of the first record (the hash of the record before it, which the aggregator may hold).
    pub first_prev_hash: Digest,
    /// `hash` of the last record.
    pub last_hash: Digest,
    /// When the export was made, on the agent's clock, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// [`records_digest`] of the records.
    pub records_digest: Digest,
}

impl ExportHeader {
    /// The header describing `records` (which [`check_records`] accepts), made at `created_unix_ms`.
    pub fn describe(
        agent_uri: impl Into<String>,
        records: &[Record],
        created_unix_ms: i64,
    ) -> Result<Self, ExportError> {
        check_records(records)?;
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => {
                return Err(ExportError::Format(
                    "an export holds at least one record".into(),
                ));
            }
        };
        Ok(ExportHeader {
            agent_uri: agent_uri.into(),
            first_seq: first.seq,
            last_seq: last.seq,
            count: records.len() as u64,
            first_prev_hash: first.prev_hash,
            last_hash: last.hash,
            created_unix_ms,
            records_digest: records_digest(records),
        })
    }
}

/// A decoded (or to be encoded) outbox export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxExport {
    /// The signed header.
    pub header: ExportHeader,
    /// The algorithm of `signature`.
    pub algorithm: SignatureAlgorithm,
    /// The signature over [`OutboxExport::signing_input`].
    pub signature: Vec<u8>,
    /// The agent's certificate (DER) first, then any intermediates.
    pub certificate_chain: Vec<Vec<u8>>,
    /// The records, unchanged.
    pub records: Vec<Record>,
}

/// The BLAKE3 digest over the records' seqs and hashes (module docs).
pub fn records_digest(records: &[Record]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(RECORDS_DOMAIN.len() as u64).to_be_bytes());
    h.update(RECORDS_DOMAIN);
    h.update(&(records.len() as u64).to_be_bytes());
    for r in records {
        h.update(&r.seq.to_be_bytes());
        h.update(&r.hash);
    }
    h.finalize().into()
}

/// Checks that `records` may form an export: 1..=[`MAX_EXPORT_RECORDS`] records, each passing the record rule
/// and its hash, with consecutive seqs each linking to the previous record's hash.
pub fn check_records(records: &[Record]) -> Result<(), ExportError> {
    if records.is_empty() {
        return Err(ExportError::Format(
            "an export holds at least one record".into(),
        ));
    }
    if records.len() > MAX_EXPORT_RECORDS {
        return Err(ExportError::Format(format!(
            "{} records, over the limit of {MAX_EXPORT_RECORDS} per file",
            records.len()
        )));
    }
    let mut previous: Option<&Record> = None;
    for r in records {
        r.validate().map_err(|e: RecordError| ExportError::Record {
            seq: r.seq,
            reason: e.to_string(),
        })?;
        if !r.verify_hash() {
            return Err(ExportError::Record {
                seq: r.seq,
                reason: "its hash does not match its content".into(),
            });
        }
        if let Some(p) = previous {
            if p.seq.checked_add(1) != Some(r.seq) {
                return Err(ExportError::Chain {
                    seq: r.seq,
                    reason: format!("it follows record {}: seqs must be consecutive", p.seq),
                });
            }
            if r.prev_hash != p.hash {
                return Err(ExportError::Chain {
                    seq: r.seq,
                    reason: format!("its prev_hash is not the hash of record {}", p.seq),
                });
            }
        }
        previous = Some(r);
    }
    Ok(())
}

impl OutboxExport {
    /// The bytes the signature covers (module docs) for `header` and `certificate_chain`.
    pub fn signing_input(header: &ExportHeader, certificate_chain: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + header.agent_uri.len());
        put_bytes(&mut out, SIGNING_DOMAIN);
        put_bytes(&mut out, SCHEMA_ID.as_bytes());
        out.extend_from_slice(&u64::from(SCHEMA_VERSION).to_be_bytes());
        put_bytes(&mut out, header.agent_uri.as_bytes());
        out.extend_from_slice(&header.first_seq.to_be_bytes());
        out.extend_from_slice(&header.last_seq.to_be_bytes());
        out.extend_from_slice(&header.count.to_be_bytes());
        out.extend_from_slice(&header.first_prev_hash);
        out.extend_from_slice(&header.last_hash);
        out.extend_from_slice(&header.created_unix_ms.to_be_bytes());
        out.extend_from_slice(&header.records_digest);
        let mut chain = Sha256::new();
        chain.update((certificate_chain.len() as u64).to_be_bytes());
        for der in certificate_chain {
            chain.update((der.len() as u64).to_be_bytes());
            chain.update(der);
        }
        out.extend_from_slice(&chain.finalize());
        out
    }

    /// Seals `records` into an export: describes them, then signs the signing input with `sign`, which must
    /// sign with the private key of the first certificate of `certificate_chain` under `algorithm`.
    pub fn seal<E: std::fmt::Display>(
        agent_uri: impl Into<String>,
        records: Vec<Record>,
        created_unix_ms: i64,
        certificate_chain: Vec<Vec<u8>>,
        algorithm: SignatureAlgorithm,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Self, ExportError> {
        check_chain_shape(&certificate_chain)?;
        let header = ExportHeader::describe(agent_uri, &records, created_unix_ms)?;
        if header.agent_uri.len() > MAX_AGENT_URI_BYTES {
            return Err(ExportError::Format(format!(
                "agent_uri is over {MAX_AGENT_URI_BYTES} bytes"
            )));
        }
        let signature = sign(&Self::signing_input(&header, &certificate_chain))
            .map_err(|e| ExportError::Signature(format!("signing failed: {e}")))?;
        Ok(OutboxExport {
            header,
            algorithm,
            signature,
            certificate_chain,
            records,
        })
    }

    /// The canonical file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let file = FileV1 {
            schema_id: SCHEMA_ID.to_owned(),
            schema_version: SCHEMA_VERSION,
            header: HeaderV1 {
                agent_uri: self.header.agent_uri.clone(),
                first_seq: self.header.first_seq,
                last_seq: self.header.last_seq,
                count: self.header.count,
                first_prev_hash: hex::encode(self.header.first_prev_hash),
                last_hash: hex::encode(self.header.last_hash),
                created_unix_ms: self.header.created_unix_ms,
                records_digest: hex::encode(self.header.records_digest),
            },
            signature: SignatureV1 {
                algorithm: self.algorithm.as_str().to_owned(),
                value: B64.encode(&self.signature),
            },
            certificate_chain: self
                .certificate_chain
                .iter()
                .map(|der| B64.encode(der))
                .collect(),
            records: self.records.iter().map(RecordV1::from).collect(),
        };
        // Serializing plain structs of strings and integers cannot fail.
        let mut out = serde_json::to_vec(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Decodes and checks a file (steps 1 and 2 of the module docs): everything but the signature and the
    /// certificate chain, which [`OutboxExport::verify_signature`] and
    /// [`OutboxExport::verify_certificate_chain`] check.
    pub fn decode(bytes: &[u8]) -> Result<Self, ExportError> {
        if bytes.len() as u64 > MAX_EXPORT_BYTES {
            return Err(ExportError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let file: FileV1 = serde_json::from_slice(bytes)
            .map_err(|e| ExportError::Format(format!("not an outbox export document: {e}")))?;
        if file.schema_id != SCHEMA_ID {
            return Err(ExportError::Format(format!(
                "schema_id is {:?}, expected {SCHEMA_ID:?}",
                file.schema_id
            )));
        }
        if file.schema_version != SCHEMA_VERSION {
            return Err(ExportError::Format(format!(
                "schema_version {} is not supported: this build reads version {SCHEMA_VERSION}",
                file.schema_version
            )));
        }
        if file.header.agent_uri.len() > MAX_AGENT_URI_BYTES {
            return Err(ExportError::Format(format!(
                "header.agent_uri is over {MAX_AGENT_URI_BYTES} bytes"
            )));
        }
        let algorithm = SignatureAlgorithm::parse(&file.signature.algorithm).ok_or_else(|| {
            ExportError::Format(format!(
                "signature.algorithm {:?} is not one of ecdsa_p256_sha256, ecdsa_p384_sha384, ed25519",
                file.signature.algorithm
            ))
        })?;
        let signature = decode_b64("signature.value", &file.signature.value)?;
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(ExportError::Format(format!(
                "signature.value is over {MAX_SIGNATURE_BYTES} bytes"
            )));
        }
        if file.certificate_chain.len() > MAX_CHAIN_CERTS {
            return Err(ExportError::Format(format!(
                "{} certificates in certificate_chain, over the limit of {MAX_CHAIN_CERTS}",
                file.certificate_chain.len()
            )));
        }
        let certificate_chain = file
            .certificate_chain
            .iter()
            .map(|c| decode_b64("certificate_chain", c))
            .collect::<Result<Vec<_>, _>>()?;
        check_chain_shape(&certificate_chain)?;
        if file.records.len() > MAX_EXPORT_RECORDS {
            return Err(ExportError::Format(format!(
                "{} records, over the limit of {MAX_EXPORT_RECORDS} per file",
                file.records.len()
            )));
        }
        let records = file
            .records
            .iter()
            .map(RecordV1::to_record)
            .collect::<Result<Vec<_>, _>>()?;
        check_records(&records)?;
        let header = ExportHeader {
            agent_uri: file.header.agent_uri.clone(),
            first_seq: file.header.first_seq,
            last_seq: file.header.last_seq,
            count: file.header.count,
            first_prev_hash: decode_hex("header.first_prev_hash", &file.header.first_prev_hash)?,
            last_hash: decode_hex("header.last_hash", &file.header.last_hash)?,
            created_unix_ms: file.header.created_unix_ms,
            records_digest: decode_hex("header.records_digest", &file.header.records_digest)?,
        };
        let described =
            ExportHeader::describe(header.agent_uri.clone(), &records, header.created_unix_ms)?;
        for (field, ok) in [
            ("count", described.count == header.count),
            ("first_seq", described.first_seq == header.first_seq),
            ("last_seq", described.last_seq == header.last_seq),
            (
                "first_prev_hash",
                described.first_prev_hash == header.first_prev_hash,
            ),
            ("last_hash", described.last_hash == header.last_hash),
            (
                "records_digest",
                described.records_digest == header.records_digest,
            ),
        ] {
            if !ok {
                return Err(ExportError::Digest(format!(
                    "header.{field} does not match the records"
                )));
            }
        }
        let export = OutboxExport {
            header,
            algorithm,
            signature,
            certificate_chain,
            records,
        };
        // One spelling per content: anything else (whitespace, escapes, key order, hex case) is refused, so
        // a file verifies byte for byte.
        if export.encode() != bytes {
            return Err(ExportError::Format(
                "the document is not in canonical form (it was edited after it was written)".into(),
            ));
        }
        Ok(export)
    }

    /// Verifies the signature with the public key of the first certificate of the chain (step 3).
    pub fn verify_signature(&self) -> Result<(), ExportError> {
        let der = self.leaf_der()?;
        let leaf = parse_leaf(&der)?;
        let input = Self::signing_input(&self.header, &self.certificate_chain);
        leaf.verify_signature(self.algorithm.verifier(), &input, &self.signature)
            .map_err(|e| {
                ExportError::Signature(format!(
                    "{} signature does not verify with the key of the embedded certificate: {e:?}",
                    self.algorithm.as_str()
                ))
            })
    }

    /// Verifies that the chain leads from the first certificate to one of `trust_anchors` (DER CA
    /// certificates) for TLS client authentication, as the aggregator's handshake does, at `at_unix_secs`
    /// (step 4; the caller chooses the time, e.g. the header's creation time). Revocation and the identity
    /// rules are the caller's.
    pub fn verify_certificate_chain(
        &self,
        trust_anchors: &[Vec<u8>],
        at_unix_secs: u64,
    ) -> Result<(), ExportError> {
        let der = self.leaf_der()?;
        let leaf = parse_leaf(&der)?;
        let anchor_ders: Vec<CertificateDer<'_>> = trust_anchors
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let anchors = anchor_ders
            .iter()
            .map(|d| {
                webpki::anchor_from_trusted_cert(d)
                    .map_err(|e| ExportError::Certificate(format!("unusable trusted CA: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let intermediates: Vec<CertificateDer<'_>> = self.certificate_chain[1..]
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(at_unix_secs)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(drop)
        .map_err(|e| {
            ExportError::Certificate(format!(
                "the agent certificate does not chain to a trusted CA at the export time: {e:?}"
            ))
        })
    }

    fn leaf_der(&self) -> Result<CertificateDer<'_>, ExportError> {
        self.certificate_chain
            .first()
            .map(|d| CertificateDer::from(d.as_slice()))
            .ok_or_else(|| ExportError::Format("certificate_chain is empty".into()))
    }
}

fn parse_leaf<'a>(der: &'a CertificateDer<'a>) -> Result<webpki::EndEntityCert<'a>, ExportError> {
    webpki::EndEntityCert::try_from(der).map_err(|e| {
        ExportError::Certificate(format!("the embedded certificate is not X.509: {e:?}"))
    })
}

fn check_chain_shape(chain: &[Vec<u8>]) -> Result<(), ExportError> {
    if chain.is_empty() {
        return Err(ExportError::Format(
            "certificate_chain is empty: it must start with the agent's certificate".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_CERTS {
        return Err(ExportError::Format(format!(
            "{} certificates in certificate_chain, over the limit of {MAX_CHAIN_CERTS}",
            chain.len()
        )));
    }
    if let Some(big) = chain.iter().find(|c| c.len() > MAX_CERT_BYTES) {
        return Err(ExportError::Format(format!(
            "a certificate of {} bytes in certificate_chain, over the limit of {MAX_CERT_BYTES}",
            big.len()
        )));
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, ExportError> {
    B64.decode(s)
        .map_err(|e| ExportError::Format(format!("{field} is not base64: {e}")))
}

fn decode_hex(field: &str, s: &str) -> Result<Digest, ExportError> {
    let bad = || ExportError::Format(format!("{field} is not 64 lowercase hex digits"));
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
    Ok(out)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    schema_id: String,
    schema_version: u32,
    header: HeaderV1,
    signature: SignatureV1,
    certificate_chain: Vec<String>,
    records: Vec<RecordV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderV1 {
    agent_uri: String,
    first_seq: u64,
    last_seq: u64,
    count: u64,
    first_prev_hash: String,
    last_hash: String,
    created_unix_ms: i64,
    records_digest: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureV1 {
    algorithm: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordV1 {
    seq: u64,
    prev_hash: String,
    hash: String,
    class: String,
    kind: String,
    created_unix_ms: i64,
    bundle: Option<BundleV1>,
    payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleV1 {
    epoch: u64,
    digest: String,
    since_unix_ms: i64,
}

impl From<&Record> for RecordV1 {
    fn from(r: &Record) -> Self {
        RecordV1 {
            seq: r.seq,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
            class: r.class.as_str().to_owned(),
            kind: r.kind.clone(),
            created_unix_ms: r.created_unix_ms,
            bundle: r.bundle.as_ref().map(|b| BundleV1 {
                epoch: b.epoch,
                digest: hex::encode(b.digest),
                since_unix_ms: b.since_unix_ms,
            }),
            payload: B64.encode(&r.payload),
        }
    }
}

impl RecordV1 {
    fn to_record(&self) -> Result<Record, ExportError> {
        let at = |field: &str| format!("records[seq {}].{field}", self.seq);
        let class = RecordClass::parse(&self.class).ok_or_else(|| ExportError::Record {
            seq: self.seq,
            reason: format!("unknown class {:?}", self.class),
        })?;
        let bundle = match &self.bundle {
            None => None,
            Some(b) => Some(BundleRef {
                epoch: b.epoch,
                digest: decode_hex(&at("bundle.digest"), &b.digest)?,
                since_unix_ms: b.since_unix_ms,
            }),
        };
        Ok(Record {
            seq: self.seq,
            prev_hash: decode_hex(&at("prev_hash"), &self.prev_hash)?,
            hash: decode_hex(&at("hash"), &self.hash)?,
            class,
            kind: self.kind.clone(),
            created_unix_ms: self.created_unix_ms,
            bundle,
            payload: decode_b64(&at("payload"), &self.payload)?,
        })
    }
}

#[cfg(test)]
mod tests;
