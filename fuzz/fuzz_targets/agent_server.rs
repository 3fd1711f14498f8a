//! The agent's side of the protocol (host -> agent): the framing (4-byte length, bound,
//! truncation), the hello and every request frame as the agent's connection loop reads them
//! from a byte stream. A decoded request must encode and decode to itself.
#![no_main]

use std::io::Cursor;

use agent::protocol::framing::read_frame;
use agent::protocol::RequestFrame;
use agent::server::connection::{decode, read_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = Cursor::new(data);
    if read_hello(&mut stream).is_err() {
        return;
    }
    for _ in 0..64 {
        let bytes = match read_frame(&mut stream) {
            Ok(Some(bytes)) => bytes,
            _ => return,
        };
        if let Ok(frame) = decode(&bytes) {
            let again = serde_json::to_vec(&frame).expect("a decoded request encodes");
            let back: RequestFrame = decode(&again).expect("an encoded request decodes");
            assert_eq!(back, frame);
        }
    }
});
