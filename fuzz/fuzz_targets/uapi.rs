//! The tunnel device's UAPI answers (`src/tunnel/uapi.rs`): `parse_answer`
//! splits an answer and reads its errno, `parse_status` reads the body of a
//! `get`. The device is boringtun in our process, but its text is still
//! input we do not control (and the module is where another data plane
//! would plug in).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use townlink::tunnel::uapi;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pairs) = uapi::parse_answer(text) {
        // Handshake ages are turned into points in time: try a clock at
        // the epoch too, where any age is older than the clock.
        let _ = uapi::parse_status(&pairs, SystemTime::now());
        let _ = uapi::parse_status(&pairs, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    }
});
