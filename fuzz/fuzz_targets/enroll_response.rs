//! The hub's answer to an enrollment as `townlink join` reads it (JSON of
//! `JoinResponse`, at most `enroll::MAX_MESSAGE` bytes); a `Joined` answer
//! is checked (`join::hubs`: every hub of the answer, or the token's one
//! hub for an older hub's answer) and becomes the annex's config
//! (`join::config_text`), which `join` then checks with `config::parse`,
//! as this target does.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use townlink::enroll::join::{config_text, hubs, JoinOptions, UplinkSpec};
use townlink::enroll::token::{Token, TokenHub};
use townlink::enroll::{JoinResponse, MAX_MESSAGE};

/// The token's hub key (`fuzz/corpus/enroll_response/joined-two-hubs`).
const HUB_KEY: &str = "HzSROooil3DBjUdp1e2Cb2CYWW5SgzBi3DKsb2P4sX4=";

/// A token and options as `townlink join` would have them.
fn context() -> &'static (Token, JoinOptions) {
    static CONTEXT: OnceLock<(Token, JoinOptions)> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let token = Token {
            hubs: vec![TokenHub {
                endpoints: vec!["hub.example.net:51820".into()],
                probe_port: 51821,
                // Fixed, so that the corpus can name the token's hub first.
                public_key: HUB_KEY.parse().expect("key"),
                fingerprint: townlink::fingerprint::Fingerprint::from_bytes([7; 32]),
            }],
            site: townlink::sites::Name::new("annex-1").expect("name"),
            secret: townlink::enroll::token::Secret::generate(),
            expires: 4_000_000_000,
        };
        let opts = JoinOptions {
            dir: townlink_fuzz::fixture_dir().to_path_buf(),
            interface: townlink::config::InterfaceName::new("tl0").expect("interface"),
            uplinks: vec![
                "fiber=eth1,gateway=198.51.100.1"
                    .parse::<UplinkSpec>()
                    .expect("uplink"),
                "lte=wwan0,metered".parse::<UplinkSpec>().expect("uplink"),
            ],
            force: false,
        };
        (token, opts)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let Ok(JoinResponse::Joined(settings)) = serde_json::from_slice::<JoinResponse>(data) else {
        return;
    };
    let (token, opts) = context();
    let Ok(hubs) = hubs(token, &settings, &opts.interface) else {
        return;
    };
    let text = config_text(&hubs, &settings, opts);
    if townlink_fuzz::may_name_outside_files(&text) {
        return;
    }
    let _ = townlink::config::parse(&text, &opts.dir);
});
