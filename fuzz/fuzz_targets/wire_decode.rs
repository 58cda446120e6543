#![no_main]
//! Fuzz target wire_decode: hostile bytes through the frame decoder (in input-chosen chunks) and both message
//! decoders; nothing may panic, frames never exceed the limit, and whatever decodes re-encodes to an equal value.
use gait_wire::{FrameDecoder, decode_agent_msg, decode_msg, decode_server_msg, encode_frame};
use libfuzzer_sys::fuzz_target;

const LIMIT: u32 = 64 * 1024;

fn check_body(body: &[u8]) {
    if let Ok(msg) = decode_agent_msg(body) {
        let frame = encode_frame(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode_agent_msg(&frame[4..]).ok(), Some(msg));
    }
    if let Ok(msg) = decode_server_msg(body) {
        let frame = encode_frame(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode_server_msg(&frame[4..]).ok(), Some(msg));
    }
    let _ = decode_msg::<gait_wire::AgentMsg>(body);
    let _ = decode_msg::<gait_wire::Record>(body);
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one body.
    check_body(data);

    // The input as a stream; the first byte picks the chunk size.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = FrameDecoder::new(LIMIT);
    let mut fed = 0;
    for chunk in stream.chunks(step) {
        dec.push(chunk);
        fed += chunk.len();
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= LIMIT as usize);
                    check_body(&body);
                }
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(dec.buffered_len(), 0);
                    return;
                }
            }
        }
        assert!(dec.buffered_len() <= fed);
    }
    let _ = dec.finish();
});
