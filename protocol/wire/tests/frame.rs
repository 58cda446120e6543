//! Framing and decoding behaviour on valid, truncated, oversized and hostile input.

use gait_wire::{
    AgentMsg, AgentMsgV1, DecodeError, EncodeError, ErrorCode, FrameDecoder, HelloV1,
    MAX_FRAME_LEN, PollBundle, RecordBatch, ServerMsg, ServerMsgV1, decode_agent_msg, decode_msg,
    decode_server_msg, encode_frame, encode_frame_with_limit,
};

fn poll() -> AgentMsg {
    AgentMsg::V1(AgentMsgV1::PollBundle(PollBundle {
        have_epoch: 5,
        wait_ms: 30_000,
    }))
}

fn hello() -> AgentMsg {
    AgentMsg::V1(AgentMsgV1::Hello(HelloV1 {
        agent_version: "0.1.0".into(),
        protocol_version: 1,
        active: None,
        received: None,
        outbox_depth: 0,
        shed_total: 0,
        last_seq: 0,
    }))
}

#[test]
fn frame_is_a_big_endian_length_followed_by_the_postcard_body() {
    let frame = encode_frame(&poll()).unwrap();
    // V1 tag 0, PollBundle tag 1, varint 5, varint 30000 = 0xb0 0xea 0x01.
    assert_eq!(frame, [0, 0, 0, 6, 0, 1, 5, 0xb0, 0xea, 0x01]);
    assert_eq!(decode_msg::<AgentMsg>(&frame[4..]).unwrap(), poll());
}

#[test]
fn encoding_refuses_a_body_over_the_limit_and_reports_both_sizes() {
    let msg = AgentMsg::V1(AgentMsgV1::RecordBatch(RecordBatch {
        batch_id: 1,
        records: vec![],
    }));
    let size = encode_frame(&msg).unwrap().len() - 4;
    assert!(encode_frame_with_limit(&msg, size as u32).is_ok());
    match encode_frame_with_limit(&msg, size as u32 - 1) {
        Err(EncodeError::TooLarge { size: s, limit }) => {
            assert_eq!(s, size);
            assert_eq!(limit, size as u32 - 1);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn encoding_refuses_a_body_over_the_hard_ceiling_even_with_a_larger_limit() {
    let msg = ServerMsg::V1(ServerMsgV1::Bundle(gait_wire::BundleOffer {
        epoch: 1,
        digest: [0; 32],
        signed_bundle: vec![0u8; MAX_FRAME_LEN as usize],
    }));
    match encode_frame_with_limit(&msg, u32::MAX) {
        Err(EncodeError::TooLarge { size, limit }) => {
            assert!(size > MAX_FRAME_LEN as usize);
            assert_eq!(limit, MAX_FRAME_LEN);
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|f| f.len())),
    }
}

#[test]
fn decoder_reassembles_frames_split_at_every_byte_boundary() {
    let mut stream = encode_frame(&hello()).unwrap();
    stream.extend(encode_frame(&poll()).unwrap());
    for split in 0..=stream.len() {
        let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
        let mut frames = Vec::new();
        for part in [&stream[..split], &stream[split..]] {
            dec.push(part);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(decode_agent_msg(&f).unwrap());
            }
        }
        assert_eq!(frames, vec![hello(), poll()], "split at {split}");
        dec.finish().unwrap();
        assert_eq!(dec.buffered_len(), 0);
    }
}

#[test]
fn decoder_refuses_an_oversized_frame_from_its_header_alone_and_stays_failed() {
    let mut dec = FrameDecoder::new(16);
    dec.push(&17u32.to_be_bytes());
    let expected = DecodeError::FrameTooLarge { len: 17, limit: 16 };
    assert_eq!(dec.next_frame(), Err(expected.clone()));
    dec.push(&[0u8; 64]);
    assert_eq!(dec.buffered_len(), 0, "a failed decoder must not buffer");
    assert_eq!(dec.next_frame(), Err(expected.clone()));
    assert_eq!(dec.finish(), Err(expected.clone()));
    assert_eq!(expected.error_code(), ErrorCode::TooLarge);
}

#[test]
fn decoder_limit_is_clamped_to_the_hard_ceiling() {
    let mut dec = FrameDecoder::new(u32::MAX);
    assert_eq!(dec.max_len(), MAX_FRAME_LEN);
    dec.push(&(MAX_FRAME_LEN + 1).to_be_bytes());
    assert!(matches!(
        dec.next_frame(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn decoder_accepts_a_frame_of_exactly_the_limit() {
    let mut dec = FrameDecoder::new(3);
    dec.push(&[0, 0, 0, 3, 7, 8, 9]);
    assert_eq!(dec.next_frame().unwrap(), Some(vec![7, 8, 9]));
    assert_eq!(dec.next_frame().unwrap(), None);
}

#[test]
fn finish_reports_a_stream_cut_inside_a_header_or_a_body() {
    let mut dec = FrameDecoder::new(100);
    dec.push(&[0, 0]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(
        dec.finish(),
        Err(DecodeError::TruncatedFrame {
            buffered: 2,
            needed: 4
        })
    );
    dec.push(&[0, 10, 1, 2, 3]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(
        dec.finish(),
        Err(DecodeError::TruncatedFrame {
            buffered: 7,
            needed: 14
        })
    );
}

#[test]
fn empty_frame_is_a_frame_but_not_a_message() {
    let mut dec = FrameDecoder::new(100);
    dec.push(&[0, 0, 0, 0]);
    let body = dec.next_frame().unwrap().unwrap();
    assert!(body.is_empty());
    assert_eq!(decode_agent_msg(&body), Err(DecodeError::Truncated));
    assert_eq!(decode_msg::<AgentMsg>(&body), Err(DecodeError::Truncated));
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    let mut body = encode_frame(&poll()).unwrap()[4..].to_vec();
    body.push(0);
    assert_eq!(
        decode_msg::<AgentMsg>(&body),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn envelope_of_a_newer_protocol_version_is_reported_as_unknown_version() {
    let body = [2u8, 0, 0];
    assert_eq!(
        decode_agent_msg(&body),
        Err(DecodeError::UnknownVersion {
            version: 3,
            supported: 2
        })
    );
    assert_eq!(
        decode_server_msg(&body),
        Err(DecodeError::UnknownVersion {
            version: 3,
            supported: 2
        })
    );
    // Generic decoding still refuses it, with the less specific error.
    assert_eq!(
        decode_msg::<AgentMsg>(&body),
        Err(DecodeError::UnknownVariant)
    );
    assert_eq!(
        DecodeError::UnknownVariant.error_code(),
        ErrorCode::Unsupported
    );
}

#[test]
fn unknown_v1_variant_is_reported_as_unknown_variant() {
    assert_eq!(decode_agent_msg(&[0, 4]), Err(DecodeError::UnknownVariant));
    assert_eq!(
        decode_server_msg(&[0, 6, 0]),
        Err(DecodeError::UnknownVariant)
    );
    // ErrorCode tag 7 does not exist.
    assert_eq!(
        decode_server_msg(&[0, 4, 7, 0]),
        Err(DecodeError::UnknownVariant)
    );
}

#[test]
fn overlong_envelope_tag_varint_is_malformed() {
    assert!(matches!(
        decode_agent_msg(&[0xff; 6]),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        decode_agent_msg(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
        Err(DecodeError::Malformed { .. })
    ));
    assert_eq!(decode_agent_msg(&[0x80]), Err(DecodeError::Truncated));
}

#[test]
fn huge_length_prefixes_inside_a_body_fail_fast_as_truncated() {
    // Hello whose agent_version claims u32::MAX bytes.
    let body = [0u8, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'];
    assert_eq!(decode_agent_msg(&body), Err(DecodeError::Truncated));
    // RecordBatch claiming 2^63 records.
    let mut body = vec![0u8, 2, 1];
    body.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert_eq!(decode_agent_msg(&body), Err(DecodeError::Truncated));
    // BundleOffer whose signed_bundle claims 2^40 bytes.
    let mut body = vec![0u8, 1, 1];
    body.extend([0u8; 32]);
    body.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
    assert_eq!(decode_server_msg(&body), Err(DecodeError::Truncated));
}

#[test]
fn invalid_utf8_and_bad_option_tags_are_malformed() {
    let bad_utf8 = [0u8, 0, 1, 0xff];
    assert!(matches!(
        decode_agent_msg(&bad_utf8),
        Err(DecodeError::Malformed { .. })
    ));
    // Hello { agent_version: "", protocol_version: 1, active: tag 2 }
    let bad_option = [0u8, 0, 0, 1, 2];
    assert!(matches!(
        decode_agent_msg(&bad_option),
        Err(DecodeError::Malformed { .. })
    ));
    assert_eq!(
        DecodeError::Malformed { reason: "x" }.error_code(),
        ErrorCode::BadRequest
    );
}
