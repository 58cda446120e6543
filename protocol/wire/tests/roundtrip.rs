//! Property tests: encode -> decode is the identity for every message, the frame decoder yields the same frames
//! whatever the chunking, and arbitrary bytes never panic the decoders.

use gait_wire::{
    AgentMsg, AgentMsgV2, BatchAck, BundleOffer, BundleRef, BundleReport, ErrorCode, FrameDecoder,
    Hello, InstanceId, MAX_FRAME_LEN, PollBundle, Record, RecordBatch, RecordClass, RecordRefusal,
    Refusal, SeqRange, ServerMsg, ServerMsgV2, Welcome, WireError, decode_agent_msg, decode_msg,
    decode_server_msg, encode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn digest() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..200)
}

fn bundle_ref() -> impl Strategy<Value = BundleRef> {
    (any::<u64>(), digest(), any::<i64>()).prop_map(|(epoch, digest, since_unix_ms)| BundleRef {
        epoch,
        digest,
        since_unix_ms,
    })
}

fn class() -> impl Strategy<Value = RecordClass> {
    prop::sample::select(RecordClass::ALL.to_vec())
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        digest(),
        class(),
        text(),
        any::<i64>(),
        prop::option::of(bundle_ref()),
        bytes(),
        any::<bool>(),
    )
        .prop_map(
            |(seq, prev, class, kind, created, bundle, payload, corrupt)| {
                let mut r = Record::sealed(seq, prev, class, kind, created, bundle, payload);
                if corrupt {
                    // The wire must carry records with wrong hashes unchanged; verification is the receiver's job.
                    r.hash[0] ^= 0x55;
                }
                r
            },
        )
}

fn agent_msg() -> impl Strategy<Value = AgentMsg> {
    let hello = (
        text(),
        any::<u16>(),
        prop::option::of(bundle_ref()),
        prop::option::of(bundle_ref()),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |(
                agent_version,
                protocol_version,
                active,
                received,
                outbox_depth,
                shed_total,
                last_seq,
                instance_id,
            )| {
                AgentMsgV2::Hello(Hello {
                    agent_version,
                    protocol_version,
                    active,
                    received,
                    outbox_depth,
                    shed_total,
                    last_seq,
                    instance_id: InstanceId(instance_id),
                })
            },
        );
    let poll = (any::<u64>(), any::<u32>()).prop_map(|(have_epoch, wait_ms)| {
        AgentMsgV2::PollBundle(PollBundle {
            have_epoch,
            wait_ms,
        })
    });
    let batch = (any::<u64>(), vec(record(), 0..6))
        .prop_map(|(batch_id, records)| AgentMsgV2::RecordBatch(RecordBatch { batch_id, records }));
    let refusal =
        (any::<u64>(), digest(), text(), text()).prop_map(|(epoch, digest, code, message)| {
            Refusal {
                epoch,
                digest,
                code,
                message,
            }
        });
    let report = (
        prop::option::of(bundle_ref()),
        prop::option::of(bundle_ref()),
        prop::option::of(refusal),
    )
        .prop_map(|(received, applied, refusal)| {
            AgentMsgV2::BundleReport(BundleReport {
                received,
                applied,
                refusal,
            })
        });
    prop_oneof![hello, poll, batch, report].prop_map(AgentMsg::V2)
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    let welcome = (
        text(),
        any::<u16>(),
        text(),
        text(),
        text(),
        text(),
        any::<u64>(),
        digest(),
    )
        .prop_map(
            |(
                server_version,
                protocol_version,
                org,
                project,
                env,
                agent_id,
                committed_seq,
                committed_hash,
            )| {
                ServerMsgV2::Welcome(Welcome {
                    server_version,
                    protocol_version,
                    org,
                    project,
                    env,
                    agent_id,
                    committed_seq,
                    committed_hash,
                })
            },
        );
    let offer = (any::<u64>(), digest(), bytes()).prop_map(|(epoch, digest, signed_bundle)| {
        ServerMsgV2::Bundle(BundleOffer {
            epoch,
            digest,
            signed_bundle,
        })
    });
    let none = any::<u64>().prop_map(|have_epoch| ServerMsgV2::NoNewBundle { have_epoch });
    let ack = (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        vec((any::<u64>(), any::<u64>()), 0..5),
        vec((any::<u64>(), any::<u64>()), 0..5),
    )
        .prop_map(
            |(batch_id, committed_through, inserted, duplicates, gaps, conflicts)| {
                let ranges = |v: Vec<(u64, u64)>| {
                    v.into_iter()
                        .map(|(first, last)| SeqRange { first, last })
                        .collect()
                };
                ServerMsgV2::BatchAck(BatchAck {
                    batch_id,
                    committed_through,
                    inserted,
                    duplicates,
                    gaps: ranges(gaps),
                    conflicts: ranges(conflicts),
                })
            },
        );
    let codes = vec![
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::TooLarge,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];
    let error = (prop::sample::select(codes), text())
        .prop_map(|(code, message)| ServerMsgV2::Error(WireError { code, message }));
    let refused =
        (any::<u64>(), any::<u64>(), text(), text()).prop_map(|(batch_id, seq, code, message)| {
            ServerMsgV2::RecordRefused(RecordRefusal {
                batch_id,
                seq,
                code,
                message,
            })
        });
    prop_oneof![welcome, offer, none, ack, error, refused].prop_map(ServerMsg::V2)
}

/// Split `stream` into chunks whose sizes cycle through `sizes` (each 1..).
fn chunks<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn agent_messages_round_trip(msg in agent_msg()) {
        let frame = encode_frame(&msg).unwrap();
        prop_assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        prop_assert_eq!(&decode_agent_msg(&frame[4..]).unwrap(), &msg);
        prop_assert_eq!(&decode_msg::<AgentMsg>(&frame[4..]).unwrap(), &msg);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        let frame = encode_frame(&msg).unwrap();
        prop_assert_eq!(&decode_server_msg(&frame[4..]).unwrap(), &msg);
    }

    #[test]
    fn record_hash_survives_the_wire(r in record()) {
        let batch = AgentMsg::V2(AgentMsgV2::RecordBatch(RecordBatch { batch_id: 1, records: vec![r.clone()] }));
        let frame = encode_frame(&batch).unwrap();
        let AgentMsg::V2(AgentMsgV2::RecordBatch(back)) = decode_agent_msg(&frame[4..]).unwrap() else {
            panic!("decoded to another variant");
        };
        prop_assert_eq!(back.records[0].verify_hash(), r.verify_hash());
        prop_assert_eq!(back.records[0].compute_hash(), r.compute_hash());
    }

    #[test]
    fn frame_decoder_yields_the_same_frames_for_any_chunking(
        msgs in vec(agent_msg(), 1..8),
        sizes in vec(1usize..64, 1..10),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(encode_frame(m).unwrap());
        }
        let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        for chunk in chunks(&stream, &sizes) {
            dec.push(chunk);
            while let Some(body) = dec.next_frame().unwrap() {
                got.push(decode_agent_msg(&body).unwrap());
            }
        }
        prop_assert!(dec.finish().is_ok());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_whatever_decodes_re_encodes_equal(
        body in vec(any::<u8>(), 0..512),
        sizes in vec(1usize..32, 1..6),
    ) {
        if let Ok(msg) = decode_agent_msg(&body) {
            let frame = encode_frame(&msg).unwrap();
            prop_assert_eq!(decode_agent_msg(&frame[4..]).unwrap(), msg);
        }
        if let Ok(msg) = decode_server_msg(&body) {
            let frame = encode_frame(&msg).unwrap();
            prop_assert_eq!(decode_server_msg(&frame[4..]).unwrap(), msg);
        }
        let mut dec = FrameDecoder::new(256);
        for chunk in chunks(&body, &sizes) {
            dec.push(chunk);
            while let Ok(Some(frame)) = dec.next_frame() {
                prop_assert!(frame.len() <= 256);
                let _ = decode_agent_msg(&frame);
            }
        }
    }
}
