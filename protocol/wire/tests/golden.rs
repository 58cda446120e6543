//! Golden byte vectors: one canonical instance of every message variant of every envelope, encoded as a frame
//! and compared with `schemas/wire/<envelope>/<name>.hex`, so the wire format cannot drift silently. The `v1`
//! vectors are frozen (protocol versions 1 and 2); `v2` holds protocol version 3. After an intended format change
//! (which needs a new envelope version, see the crate docs), regenerate with
//! `GAIT_UPDATE_GOLDEN=1 cargo test -p gait-wire --test golden` and review the diff.

use gait_wire::{
    AgentMsg, AgentMsgV1, AgentMsgV2, BatchAck, BatchAckV1, BundleOffer, BundleRef, BundleReport,
    ErrorCode, GENESIS_HASH, Hello, HelloV1, InstanceId, IssuedCertificate, PollBundle, Record,
    RecordBatch, RecordClass, RecordRefusal, Refusal, RefusalCode, RenewCertificate, SeqRange,
    ServerMsg, ServerMsgV1, ServerMsgV2, Welcome, WireError, decode_agent_msg, decode_server_msg,
    encode_frame,
};
use gait_wire::{ApprovalDelivery, DeliveredApproval, FetchApprovals, TokenDocument};
use gait_wire::{BlobChunk, BlobOffer, BlobStatus, BlobStored};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Variants per envelope: (agent, server). `V1` is frozen; `V2` grows at its end (renewal, then approvals).
fn variant_counts(envelope: &str) -> (usize, usize) {
    if envelope == "v1" { (4, 6) } else { (8, 10) }
}

fn golden_dir(envelope: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/wire")
        .join(envelope)
}

fn bundle_ref(epoch: u64, fill: u8) -> BundleRef {
    BundleRef {
        epoch,
        digest: [fill; 32],
        since_unix_ms: 1_767_225_600_000 + epoch as i64,
    }
}

fn records() -> Vec<Record> {
    let first = Record::sealed(
        1,
        GENESIS_HASH,
        RecordClass::Block,
        "gate.decision",
        1_767_225_601_000,
        Some(bundle_ref(7, 0xb7)),
        br#"{"tool":"shell.exec","verdict":"block"}"#.to_vec(),
    );
    let second = Record::sealed(
        2,
        first.hash,
        RecordClass::Status,
        "agent.status",
        -1,
        None,
        br#"{"ok":true}"#.to_vec(),
    );
    vec![first, second]
}

/// Exhaustive over envelopes and variants: adding one fails to compile here until it gets an index and a
/// golden case. Returns (envelope directory, variant index).
fn agent_variant_index(msg: &AgentMsg) -> (&'static str, usize) {
    match msg {
        AgentMsg::V1(AgentMsgV1::Hello(_)) => ("v1", 0),
        AgentMsg::V1(AgentMsgV1::PollBundle(_)) => ("v1", 1),
        AgentMsg::V1(AgentMsgV1::RecordBatch(_)) => ("v1", 2),
        AgentMsg::V1(AgentMsgV1::BundleReport(_)) => ("v1", 3),
        AgentMsg::V2(AgentMsgV2::Hello(_)) => ("v2", 0),
        AgentMsg::V2(AgentMsgV2::PollBundle(_)) => ("v2", 1),
        AgentMsg::V2(AgentMsgV2::RecordBatch(_)) => ("v2", 2),
        AgentMsg::V2(AgentMsgV2::BundleReport(_)) => ("v2", 3),
        AgentMsg::V2(AgentMsgV2::RenewCertificate(_)) => ("v2", 4),
        AgentMsg::V2(AgentMsgV2::FetchApprovals(_)) => ("v2", 5),
        AgentMsg::V2(AgentMsgV2::BlobOffer(_)) => ("v2", 6),
        AgentMsg::V2(AgentMsgV2::BlobChunk(_)) => ("v2", 7),
    }
}

fn server_variant_index(msg: &ServerMsg) -> (&'static str, usize) {
    match msg {
        ServerMsg::V1(ServerMsgV1::Welcome(_)) => ("v1", 0),
        ServerMsg::V1(ServerMsgV1::Bundle(_)) => ("v1", 1),
        ServerMsg::V1(ServerMsgV1::NoNewBundle { .. }) => ("v1", 2),
        ServerMsg::V1(ServerMsgV1::BatchAck(_)) => ("v1", 3),
        ServerMsg::V1(ServerMsgV1::Error(_)) => ("v1", 4),
        ServerMsg::V1(ServerMsgV1::RecordRefused(_)) => ("v1", 5),
        ServerMsg::V2(ServerMsgV2::Welcome(_)) => ("v2", 0),
        ServerMsg::V2(ServerMsgV2::Bundle(_)) => ("v2", 1),
        ServerMsg::V2(ServerMsgV2::NoNewBundle { .. }) => ("v2", 2),
        ServerMsg::V2(ServerMsgV2::BatchAck(_)) => ("v2", 3),
        ServerMsg::V2(ServerMsgV2::Error(_)) => ("v2", 4),
        ServerMsg::V2(ServerMsgV2::RecordRefused(_)) => ("v2", 5),
        ServerMsg::V2(ServerMsgV2::Certificate(_)) => ("v2", 6),
        ServerMsg::V2(ServerMsgV2::Approvals(_)) => ("v2", 7),
        ServerMsg::V2(ServerMsgV2::BlobStatus(_)) => ("v2", 8),
        ServerMsg::V2(ServerMsgV2::BlobStored(_)) => ("v2", 9),
    }
}

fn instance_id() -> InstanceId {
    InstanceId([
        0x5e, 0x1f, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
        0xff,
    ])
}

/// The `V1` cases, frozen: their files under `schemas/wire/v1/` must never change.
fn agent_cases_v1() -> Vec<(&'static str, AgentMsg)> {
    let mut cases = vec![(
        "agent_hello",
        AgentMsg::V1(AgentMsgV1::Hello(HelloV1 {
            agent_version: "0.1.0".into(),
            protocol_version: 2,
            active: Some(bundle_ref(6, 0xa6)),
            received: Some(bundle_ref(7, 0xb7)),
            outbox_depth: 1234,
            shed_total: 5,
            last_seq: 99_999,
        })),
    )];
    cases.extend(agent_cases_shared().into_iter().map(|(n, m)| {
        let m = match m {
            AgentMsgV2::PollBundle(p) => AgentMsgV1::PollBundle(p),
            AgentMsgV2::RecordBatch(b) => AgentMsgV1::RecordBatch(b),
            AgentMsgV2::BundleReport(r) => AgentMsgV1::BundleReport(r),
            AgentMsgV2::Hello(_)
            | AgentMsgV2::RenewCertificate(_)
            | AgentMsgV2::FetchApprovals(_)
            | AgentMsgV2::BlobOffer(_)
            | AgentMsgV2::BlobChunk(_) => {
                unreachable!("not shared with V1")
            }
        };
        (n, AgentMsg::V1(m))
    }));
    cases
}

fn agent_cases_v2() -> Vec<(&'static str, AgentMsg)> {
    let mut cases = vec![(
        "agent_hello",
        AgentMsg::V2(AgentMsgV2::Hello(Hello {
            agent_version: "0.1.0".into(),
            protocol_version: 3,
            active: Some(bundle_ref(6, 0xa6)),
            received: Some(bundle_ref(7, 0xb7)),
            outbox_depth: 1234,
            shed_total: 5,
            last_seq: 99_999,
            instance_id: instance_id(),
        })),
    )];
    cases.extend(
        agent_cases_shared()
            .into_iter()
            .map(|(n, m)| (n, AgentMsg::V2(m))),
    );
    cases.push((
        "agent_renew_certificate",
        AgentMsg::V2(AgentMsgV2::RenewCertificate(RenewCertificate {
            csr_der: vec![0x30, 0x82, 0x01, 0x0a, 0xde, 0xad],
        })),
    ));
    cases.push((
        "agent_fetch_approvals",
        AgentMsg::V2(AgentMsgV2::FetchApprovals(FetchApprovals {
            after_request_id: 41,
        })),
    ));
    cases.push((
        "agent_blob_offer",
        AgentMsg::V2(AgentMsgV2::BlobOffer(BlobOffer {
            sha256: [0xd1; 32],
            size: 5_000_000,
        })),
    ));
    cases.push((
        "agent_blob_chunk",
        AgentMsg::V2(AgentMsgV2::BlobChunk(BlobChunk {
            sha256: [0xd1; 32],
            offset: 1_048_576,
            bytes: b"PK\x03\x04runpack".to_vec(),
        })),
    ));
    cases
}

/// Messages whose shape both envelopes share.
fn agent_cases_shared() -> Vec<(&'static str, AgentMsgV2)> {
    vec![
        (
            "agent_poll_bundle",
            AgentMsgV2::PollBundle(PollBundle {
                have_epoch: 7,
                wait_ms: 25_000,
            }),
        ),
        (
            "agent_record_batch",
            AgentMsgV2::RecordBatch(RecordBatch {
                batch_id: 42,
                records: records(),
            }),
        ),
        (
            "agent_bundle_report",
            AgentMsgV2::BundleReport(BundleReport {
                received: Some(bundle_ref(8, 0xc8)),
                applied: None,
                refusal: Some(Refusal {
                    epoch: 8,
                    digest: [0xc8; 32],
                    code: "bundle_signature_invalid".into(),
                    message: "signature does not verify with key 3f2a".into(),
                }),
            }),
        ),
    ]
}

fn welcome(protocol_version: u16) -> Welcome {
    Welcome {
        server_version: "0.1.0".into(),
        protocol_version,
        org: "acme".into(),
        project: "payments".into(),
        env: "prod".into(),
        agent_id: "ci-runner-7".into(),
        committed_seq: 99_000,
        committed_hash: [0xee; 32],
    }
}

fn gaps() -> Vec<SeqRange> {
    vec![
        SeqRange { first: 3, last: 9 },
        SeqRange {
            first: 300,
            last: 300,
        },
    ]
}

/// The `V1` cases, frozen.
fn server_cases_v1() -> Vec<(&'static str, ServerMsg)> {
    vec![
        (
            "server_welcome",
            ServerMsg::V1(ServerMsgV1::Welcome(welcome(2))),
        ),
        (
            "server_bundle",
            ServerMsg::V1(ServerMsgV1::Bundle(bundle_offer())),
        ),
        (
            "server_no_new_bundle",
            ServerMsg::V1(ServerMsgV1::NoNewBundle { have_epoch: 7 }),
        ),
        (
            "server_batch_ack",
            ServerMsg::V1(ServerMsgV1::BatchAck(BatchAckV1 {
                batch_id: 42,
                committed_through: 2,
                inserted: 1,
                duplicates: 1,
                gaps: gaps(),
            })),
        ),
        (
            "server_error",
            ServerMsg::V1(ServerMsgV1::Error(server_error())),
        ),
        (
            "server_record_refused",
            ServerMsg::V1(ServerMsgV1::RecordRefused(record_refused())),
        ),
    ]
}

fn server_cases_v2() -> Vec<(&'static str, ServerMsg)> {
    vec![
        (
            "server_welcome",
            ServerMsg::V2(ServerMsgV2::Welcome(welcome(3))),
        ),
        (
            "server_bundle",
            ServerMsg::V2(ServerMsgV2::Bundle(bundle_offer())),
        ),
        (
            "server_no_new_bundle",
            ServerMsg::V2(ServerMsgV2::NoNewBundle { have_epoch: 7 }),
        ),
        (
            "server_batch_ack",
            ServerMsg::V2(ServerMsgV2::BatchAck(BatchAck {
                batch_id: 42,
                committed_through: 12,
                inserted: 1,
                duplicates: 1,
                gaps: gaps(),
                conflicts: vec![SeqRange {
                    first: 10,
                    last: 12,
                }],
            })),
        ),
        (
            "server_error",
            ServerMsg::V2(ServerMsgV2::Error(server_error())),
        ),
        (
            "server_record_refused",
            ServerMsg::V2(ServerMsgV2::RecordRefused(record_refused())),
        ),
        (
            "server_certificate",
            ServerMsg::V2(ServerMsgV2::Certificate(IssuedCertificate {
                chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
                    .into(),
                not_after_unix: 1_800_000_000,
            })),
        ),
        (
            "server_approvals",
            ServerMsg::V2(ServerMsgV2::Approvals(ApprovalDelivery {
                approvals: vec![DeliveredApproval {
                    request_id: 42,
                    intent_digest: "a".repeat(64),
                    policy_digest: "b".repeat(64),
                    tokens: vec![TokenDocument(
                        br#"{"schema_id":"gait.gate.approval_token"}"#.to_vec(),
                    )],
                }],
            })),
        ),
        (
            "server_blob_status",
            ServerMsg::V2(ServerMsgV2::BlobStatus(BlobStatus {
                sha256: [0xd1; 32],
                have: 2_097_152,
            })),
        ),
        (
            "server_blob_stored",
            ServerMsg::V2(ServerMsgV2::BlobStored(BlobStored {
                sha256: [0xd1; 32],
                size: 5_000_000,
            })),
        ),
    ]
}

fn bundle_offer() -> BundleOffer {
    BundleOffer {
        epoch: 8,
        digest: [0xc8; 32],
        signed_bundle: br#"{"schema_id":"gait.fleet.policy_bundle"}"#.to_vec(),
    }
}

fn server_error() -> WireError {
    WireError::new(ErrorCode::Unavailable, "store is down, retry")
}

fn record_refused() -> RecordRefusal {
    RecordRefusal::new(
        42,
        301,
        RefusalCode::RecordKindInvalid,
        "record 301 kind is 65 bytes, over the 64-byte limit",
    )
}

fn to_hex_lines(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    let mut out = String::new();
    for chunk in hex.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out
}

/// Compares `bytes` with `schemas/wire/<envelope>/<name>.hex`. `GAIT_UPDATE_GOLDEN=1` rewrites the file,
/// except under the frozen `v1` directory, which is only ever compared.
fn check_golden(envelope: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
    let dir = golden_dir(envelope);
    let path = dir.join(format!("{name}.hex"));
    let expected = to_hex_lines(bytes);
    if envelope != "v1" && std::env::var_os("GAIT_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, &expected).unwrap();
        return Ok(());
    }
    let found = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e}; generate it with GAIT_UPDATE_GOLDEN=1 cargo test -p gait-wire --test golden",
            path.display()
        )
    })?;
    if found != expected {
        return Err(format!(
            "{} drifted from the encoder output:\n--- file\n{found}--- now\n{expected}",
            path.display()
        ));
    }
    Ok(())
}

fn check_envelope(
    envelope: &'static str,
    agent: Vec<(&'static str, AgentMsg)>,
    server: Vec<(&'static str, ServerMsg)>,
    failures: &mut Vec<String>,
) {
    let mut names = BTreeSet::new();
    let covered: BTreeSet<usize> = agent
        .iter()
        .map(|(_, m)| agent_variant_index(m))
        .inspect(|(e, _)| assert_eq!(*e, envelope, "agent case in the wrong envelope"))
        .map(|(_, i)| i)
        .collect();
    assert_eq!(
        covered,
        (0..variant_counts(envelope).0).collect(),
        "every AgentMsg variant of {envelope} needs a golden case"
    );
    for (name, msg) in &agent {
        let frame = encode_frame(msg).unwrap();
        assert_eq!(
            &decode_agent_msg(&frame[4..]).unwrap(),
            msg,
            "{envelope}/{name} round trip"
        );
        failures.extend(check_golden(envelope, name, &frame).err());
        names.insert(format!("{name}.hex"));
    }

    let covered: BTreeSet<usize> = server
        .iter()
        .map(|(_, m)| server_variant_index(m))
        .inspect(|(e, _)| assert_eq!(*e, envelope, "server case in the wrong envelope"))
        .map(|(_, i)| i)
        .collect();
    assert_eq!(
        covered,
        (0..variant_counts(envelope).1).collect(),
        "every ServerMsg variant of {envelope} needs a golden case"
    );
    for (name, msg) in &server {
        let frame = encode_frame(msg).unwrap();
        assert_eq!(
            &decode_server_msg(&frame[4..]).unwrap(),
            msg,
            "{envelope}/{name} round trip"
        );
        failures.extend(check_golden(envelope, name, &frame).err());
        names.insert(format!("{name}.hex"));
    }

    // The record hash is part of the format too (module docs of gait_wire::record); unchanged since v2.
    let recs = records();
    let mut hashes = Vec::new();
    for r in &recs {
        hashes.extend_from_slice(&r.hash);
    }
    failures.extend(check_golden(envelope, "record_hash", &hashes).err());
    names.insert("record_hash.hex".into());

    let on_disk: BTreeSet<String> = std::fs::read_dir(golden_dir(envelope))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    let stale: Vec<_> = on_disk.difference(&names).collect();
    assert!(
        stale.is_empty(),
        "golden files under {envelope} without a test case: {stale:?}"
    );
}

#[test]
fn every_message_variant_encodes_to_its_golden_vector() {
    let mut failures = Vec::new();
    check_envelope("v1", agent_cases_v1(), server_cases_v1(), &mut failures);
    check_envelope("v2", agent_cases_v2(), server_cases_v2(), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_v2_envelope_differs_from_v1_only_in_its_tag_for_shared_messages() {
    // A shared message's V2 frame is its V1 frame with the envelope tag 0 turned into 1: the body after the
    // tag is the same bytes, so the shared structs did not drift between envelopes.
    for ((n1, m1), (n2, m2)) in agent_cases_v1().iter().zip(agent_cases_v2().iter()).skip(1) {
        assert_eq!(n1, n2);
        let (f1, f2) = (encode_frame(m1).unwrap(), encode_frame(m2).unwrap());
        assert_eq!((f1[4], f2[4]), (0, 1), "{n1} envelope tags");
        assert_eq!(f1[5..], f2[5..], "{n1} body after the tag");
    }
}
