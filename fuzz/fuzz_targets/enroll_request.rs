//! An enrollment request as the hub's responder reads it from an annex
//! (JSON of `JoinRequest`, at most `enroll::MAX_MESSAGE` bytes), then the
//! checks the hub makes before its registry is consulted: the site name,
//! the secret (hex of `SECRET_LEN` bytes), the annex's WireGuard key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use townlink::enroll::{token::SECRET_LEN, JoinRequest, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let Ok(request) = serde_json::from_slice::<JoinRequest>(data) else {
        return;
    };
    let _ = townlink::sites::Name::new(&request.site);
    let mut secret = [0u8; SECRET_LEN];
    let _ = hex::decode_to_slice(&request.secret, &mut secret);
    let _ = request.public_key.parse::<townlink::keys::PublicKey>();
});
