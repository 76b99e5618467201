//! The enrollment token, as `townlink join` reads it from the command line
//! or stdin (`Token::decode`). First byte 0: the rest is the text as typed;
//! otherwise the rest is a payload that gets a valid check, so that the
//! fuzzer reaches the fields behind it (format 2, with its list of hubs,
//! or format 1). A token that decodes must encode back to the same token
//! (a format-1 token as format 2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use townlink::enroll::token::Token;

fuzz_target!(|data: &[u8]| {
    let text = match data.split_first() {
        None => return,
        Some((0, rest)) => match std::str::from_utf8(rest) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        },
        Some((_, payload)) => townlink_fuzz::token_text(payload),
    };
    if let Ok(token) = Token::decode(&text) {
        let again = token.encode_secret();
        assert_eq!(Token::decode(&again).as_ref(), Ok(&token), "round trip");
    }
});
