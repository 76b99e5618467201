//! Shared pieces of the fuzz targets: a directory with the files a config
//! points at, and the token framing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;

/// A directory (under `$TMPDIR`, made once per process) holding the files
/// that configs name: `private.key` (mode 0600), `probe.crt` and
/// `probe.key`, the names `townlink join` writes. Configs that name them
/// get past the file checks into the rest of the validation.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("townlink-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fixture directory");
        let key = townlink::keys::PrivateKey::generate();
        townlink::fsutil::write_atomic(
            &dir.join("private.key"),
            format!("{}\n", key.to_base64_secret()).as_bytes(),
            0o600,
        )
        .expect("private.key");
        let id = townlink::probe::tls::Identity::generate("fuzz").expect("certificate");
        townlink::fsutil::write_atomic(&dir.join("probe.crt"), id.cert_pem().as_bytes(), 0o644)
            .expect("probe.crt");
        townlink::fsutil::write_atomic(
            &dir.join("probe.key"),
            id.key_pem_secret().as_bytes(),
            0o600,
        )
        .expect("probe.key");
        dir
    })
}

/// Config text with a string value that could name a file outside the
/// fixture directory (an absolute path, or one with `..`). Reading such a
/// file is the config writer's own choice, not outside input, and a FIFO
/// or `/proc/kcore` would only hang or exhaust the fuzzer: targets skip
/// these inputs. Text that is not TOML is kept: its parse fails before
/// any file is read.
pub fn may_name_outside_files(text: &str) -> bool {
    fn outside(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => s.starts_with('/') || s.contains(".."),
            toml::Value::Array(a) => a.iter().any(outside),
            toml::Value::Table(t) => t.values().any(outside),
            _ => false,
        }
    }
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.values().any(outside))
}

/// The text of a token whose payload is `payload`: `tl1.` and the
/// base64url of the payload followed by its check (the first 4 bytes of
/// its SHA-256), as `src/enroll/token.rs` documents. Lets the fuzzer reach
/// the field parsing behind the check.
pub fn token_text(payload: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, payload);
    let mut b = payload.to_vec();
    b.extend_from_slice(&digest.as_ref()[..4]);
    format!(
        "{}{}",
        townlink::enroll::token::PREFIX,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}
