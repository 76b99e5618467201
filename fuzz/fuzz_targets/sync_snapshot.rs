//! A snapshot of the main hub's registry, as a following hub reads it from
//! the sync channel (a frame: 4-byte length, then JSON) or from its
//! persisted copy (`enroll::sync::{frame_len, Snapshot::decode}`). A
//! snapshot that decodes must encode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use townlink::enroll::sync::{frame_len, Snapshot, FRAME_HEADER};

fuzz_target!(|data: &[u8]| {
    if data.len() >= FRAME_HEADER {
        let header: [u8; FRAME_HEADER] = data[..FRAME_HEADER].try_into().expect("4 bytes");
        if let Ok(len) = frame_len(header) {
            if let Some(body) = data[FRAME_HEADER..].get(..len) {
                check(body);
            }
        }
    }
    check(data);
});

fn check(bytes: &[u8]) {
    if let Ok(snapshot) = Snapshot::decode(bytes) {
        let again = snapshot.encode().expect("what was read fits");
        assert_eq!(
            Snapshot::decode(&again).as_ref(),
            Ok(&snapshot),
            "round trip"
        );
    }
}
