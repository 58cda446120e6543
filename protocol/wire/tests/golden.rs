//! Golden byte vectors: one canonical instance of every message variant, encoded as a frame and compared with
//! `schemas/wire/v1/<name>.hex`, so the wire format cannot drift silently. After an intended format change
//! (which needs a new envelope version, see the crate docs), regenerate with
//! `GAIT_UPDATE_GOLDEN=1 cargo test -p gait-wire --test golden` and review the diff.

use gait_wire::{
    AgentMsg, AgentMsgV1, BatchAck, BundleOffer, BundleRef, BundleReport, ErrorCode, GENESIS_HASH,
    Hello, PollBundle, Record, RecordBatch, RecordClass, RecordRefusal, Refusal, RefusalCode,
    SeqRange, ServerMsg, ServerMsgV1, Welcome, WireError, decode_agent_msg, decode_server_msg,
    encode_frame,
};
use std::collections::BTreeSet;
use std::path::PathBuf;

const AGENT_VARIANTS: usize = 4;
const SERVER_VARIANTS: usize = 6;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/wire/v1")
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

/// Exhaustive over variants: adding one fails to compile here until it gets an index and a golden case.
fn agent_variant_index(msg: &AgentMsg) -> usize {
    match msg {
        AgentMsg::V1(AgentMsgV1::Hello(_)) => 0,
        AgentMsg::V1(AgentMsgV1::PollBundle(_)) => 1,
        AgentMsg::V1(AgentMsgV1::RecordBatch(_)) => 2,
        AgentMsg::V1(AgentMsgV1::BundleReport(_)) => 3,
    }
}

fn server_variant_index(msg: &ServerMsg) -> usize {
    match msg {
        ServerMsg::V1(ServerMsgV1::Welcome(_)) => 0,
        ServerMsg::V1(ServerMsgV1::Bundle(_)) => 1,
        ServerMsg::V1(ServerMsgV1::NoNewBundle { .. }) => 2,
        ServerMsg::V1(ServerMsgV1::BatchAck(_)) => 3,
        ServerMsg::V1(ServerMsgV1::Error(_)) => 4,
        ServerMsg::V1(ServerMsgV1::RecordRefused(_)) => 5,
    }
}

fn agent_cases() -> Vec<(&'static str, AgentMsg)> {
    vec![
        (
            "agent_hello",
            AgentMsg::V1(AgentMsgV1::Hello(Hello {
                agent_version: "0.1.0".into(),
                protocol_version: 2,
                active: Some(bundle_ref(6, 0xa6)),
                received: Some(bundle_ref(7, 0xb7)),
                outbox_depth: 1234,
                shed_total: 5,
                last_seq: 99_999,
            })),
        ),
        (
            "agent_poll_bundle",
            AgentMsg::V1(AgentMsgV1::PollBundle(PollBundle {
                have_epoch: 7,
                wait_ms: 25_000,
            })),
        ),
        (
            "agent_record_batch",
            AgentMsg::V1(AgentMsgV1::RecordBatch(RecordBatch {
                batch_id: 42,
                records: records(),
            })),
        ),
        (
            "agent_bundle_report",
            AgentMsg::V1(AgentMsgV1::BundleReport(BundleReport {
                received: Some(bundle_ref(8, 0xc8)),
                applied: None,
                refusal: Some(Refusal {
                    epoch: 8,
                    digest: [0xc8; 32],
                    code: "bundle_signature_invalid".into(),
                    message: "signature does not verify with key 3f2a".into(),
                }),
            })),
        ),
    ]
}

fn server_cases() -> Vec<(&'static str, ServerMsg)> {
    vec![
        (
            "server_welcome",
            ServerMsg::V1(ServerMsgV1::Welcome(Welcome {
                server_version: "0.1.0".into(),
                protocol_version: 2,
                org: "acme".into(),
                project: "payments".into(),
                env: "prod".into(),
                agent_id: "ci-runner-7".into(),
                committed_seq: 99_000,
                committed_hash: [0xee; 32],
            })),
        ),
        (
            "server_bundle",
            ServerMsg::V1(ServerMsgV1::Bundle(BundleOffer {
                epoch: 8,
                digest: [0xc8; 32],
                signed_bundle: br#"{"schema_id":"gait.fleet.policy_bundle"}"#.to_vec(),
            })),
        ),
        (
            "server_no_new_bundle",
            ServerMsg::V1(ServerMsgV1::NoNewBundle { have_epoch: 7 }),
        ),
        (
            "server_batch_ack",
            ServerMsg::V1(ServerMsgV1::BatchAck(BatchAck {
                batch_id: 42,
                committed_through: 2,
                inserted: 1,
                duplicates: 1,
                gaps: vec![
                    SeqRange { first: 3, last: 9 },
                    SeqRange {
                        first: 300,
                        last: 300,
                    },
                ],
            })),
        ),
        (
            "server_error",
            ServerMsg::V1(ServerMsgV1::Error(WireError::new(
                ErrorCode::Unavailable,
                "store is down, retry",
            ))),
        ),
        (
            "server_record_refused",
            ServerMsg::V1(ServerMsgV1::RecordRefused(RecordRefusal::new(
                42,
                301,
                RefusalCode::RecordKindInvalid,
                "record 301 kind is 65 bytes, over the 64-byte limit",
            ))),
        ),
    ]
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

fn check_golden(name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = golden_dir().join(format!("{name}.hex"));
    let expected = to_hex_lines(bytes);
    if std::env::var_os("GAIT_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
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

#[test]
fn every_message_variant_encodes_to_its_golden_vector() {
    let mut failures = Vec::new();
    let mut names = BTreeSet::new();

    let agent = agent_cases();
    let covered: BTreeSet<usize> = agent.iter().map(|(_, m)| agent_variant_index(m)).collect();
    assert_eq!(
        covered,
        (0..AGENT_VARIANTS).collect(),
        "every AgentMsg variant needs a golden case"
    );
    for (name, msg) in &agent {
        let frame = encode_frame(msg).unwrap();
        assert_eq!(
            &decode_agent_msg(&frame[4..]).unwrap(),
            msg,
            "{name} round trip"
        );
        failures.extend(check_golden(name, &frame).err());
        names.insert(format!("{name}.hex"));
    }

    let server = server_cases();
    let covered: BTreeSet<usize> = server
        .iter()
        .map(|(_, m)| server_variant_index(m))
        .collect();
    assert_eq!(
        covered,
        (0..SERVER_VARIANTS).collect(),
        "every ServerMsg variant needs a golden case"
    );
    for (name, msg) in &server {
        let frame = encode_frame(msg).unwrap();
        assert_eq!(
            &decode_server_msg(&frame[4..]).unwrap(),
            msg,
            "{name} round trip"
        );
        failures.extend(check_golden(name, &frame).err());
        names.insert(format!("{name}.hex"));
    }

    // The record hash is part of the format too (module docs of gait_wire::record).
    let recs = records();
    let mut hashes = Vec::new();
    for r in &recs {
        hashes.extend_from_slice(&r.hash);
    }
    failures.extend(check_golden("record_hash", &hashes).err());
    names.insert("record_hash.hex".into());

    let on_disk: BTreeSet<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    let stale: Vec<_> = on_disk.difference(&names).collect();
    assert!(
        stale.is_empty(),
        "golden files without a test case: {stale:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
