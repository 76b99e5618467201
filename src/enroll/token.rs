//! The one-time enrollment token: everything an annex needs to find and
//! trust the hub, and the secret that proves the administrator issued it.
//!
//! ```text
//! tl1.<base64url, no padding, of:>
//!   version u8 (1) | expires u64 BE (Unix s) | probe_port u16 BE
//!   | hub public key [32] | hub certificate fingerprint [32] | secret [16]
//!   | site name: len u8 + bytes | endpoints: count u8, each len u8 + bytes
//!   | check [4] = first 4 bytes of SHA-256 of everything before
//! ```
//! About 150 characters for one endpoint: one line, copy-pastable. The
//! check catches a truncated or mistyped token before anything is sent;
//! the secret is checked by the hub (which stores only its hash).

use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::sites::Name;

pub const PREFIX: &str = "tl1.";
const VERSION: u8 = 1;
pub const SECRET_LEN: usize = 16;
const CHECK_LEN: usize = 4;

/// The random secret of a token. Never printed, never logged; compared
/// in constant time.
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; SECRET_LEN]>);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.0[..].ct_eq(&other.0[..]))
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn generate() -> Secret {
        let mut b = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("the system's random generator works");
        Secret(Zeroizing::new(b))
    }

    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Secret {
        Secret(Zeroizing::new(b))
    }

    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// What the hub stores: SHA-256 of the secret, hex.
    pub fn hash(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.0[..]).as_ref())
    }

    /// Compares with a stored hash in constant time.
    pub fn matches(&self, stored_hash: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        #[cfg(test)]
        COMPARISONS.with(|c| c.set(c.get() + 1));
        let ours = self.hash();
        ours.len() == stored_hash.len() && bool::from(ours.as_bytes().ct_eq(stored_hash.as_bytes()))
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: how many times a secret was compared with a hash on this thread.
    static COMPARISONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tests: how many times [`Secret::matches`] ran on this thread.
#[cfg(test)]
pub(crate) fn comparisons() -> usize {
    COMPARISONS.with(|c| c.get())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The hub's WireGuard endpoints (`host:port`), tried in order.
    pub endpoints: Vec<String>,
    /// UDP port of the hub's QUIC responder (probes and enrollment).
    pub probe_port: u16,
    pub hub_public_key: PublicKey,
    pub hub_fingerprint: Fingerprint,
    pub site: Name,
    pub secret: Secret,
    /// Unix time after which the hub refuses it.
    pub expires: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a townlink enrollment token (it should start with \"{PREFIX}\")")]
    NotAToken,
    #[error("the token is truncated or mistyped (its check does not match): copy it again, in one piece")]
    Damaged,
    #[error("the token was made by a newer townlink (format {0}): update townlink on this router")]
    Version(u8),
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
}

fn check(payload: &[u8]) -> [u8; CHECK_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, payload);
    let mut c = [0u8; CHECK_LEN];
    c.copy_from_slice(&d.as_ref()[..CHECK_LEN]);
    c
}

impl Token {
    /// The token's text. It holds the secret: give it only to whoever
    /// enrolls the site, and never log it.
    pub fn encode_secret(&self) -> String {
        let mut b = vec![VERSION];
        b.extend_from_slice(&self.expires.to_be_bytes());
        b.extend_from_slice(&self.probe_port.to_be_bytes());
        b.extend_from_slice(self.hub_public_key.as_bytes());
        b.extend_from_slice(self.hub_fingerprint.as_bytes());
        b.extend_from_slice(self.secret.expose());
        let name = self.site.as_str().as_bytes();
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        let endpoints: Vec<&[u8]> = self
            .endpoints
            .iter()
            .map(|e| &e.as_bytes()[..e.len().min(255)])
            .take(255)
            .collect();
        b.push(endpoints.len() as u8);
        for e in endpoints {
            b.push(e.len() as u8);
            b.extend_from_slice(e);
        }
        let c = check(&b);
        b.extend_from_slice(&c);
        let text = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
        );
        b.iter_mut().for_each(|x| *x = 0);
        text
    }

    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::NotAToken)?;
        let b = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| TokenError::Damaged)?,
        );
        if b.len() < 1 + CHECK_LEN {
            return Err(TokenError::Damaged);
        }
        let (payload, c) = b.split_at(b.len() - CHECK_LEN);
        if check(payload) != c {
            return Err(TokenError::Damaged);
        }
        let mut r = Reader(payload);
        let version = r.u8()?;
        if version != VERSION {
            return Err(TokenError::Version(version));
        }
        let expires = u64::from_be_bytes(r.array()?);
        let probe_port = u16::from_be_bytes(r.array()?);
        let hub_public_key = PublicKey::from_bytes(r.array()?)
            .map_err(|_| TokenError::Malformed("the hub's public key is not usable"))?;
        let hub_fingerprint = Fingerprint::from_bytes(r.array()?);
        let secret = Secret::from_bytes(r.array()?);
        let name = r.string()?;
        let site = Name::new(&name).map_err(|_| TokenError::Malformed("bad site name"))?;
        let count = r.u8()?;
        let endpoints = (0..count)
            .map(|_| r.string())
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(TokenError::Malformed("no hub endpoint"));
        }
        if !r.0.is_empty() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        Ok(Token {
            endpoints,
            probe_port,
            hub_public_key,
            hub_fingerprint,
            site,
            secret,
            expires,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        self.take(N)?
            .try_into()
            .map_err(|_| TokenError::Malformed("too short"))
    }
    fn string(&mut self) -> Result<String, TokenError> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| TokenError::Malformed("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn token() -> Token {
        Token {
            endpoints: vec!["hub.example.net:51820".into(), "198.51.100.7:51820".into()],
            probe_port: 51821,
            hub_public_key: PrivateKey::generate().public_key(),
            hub_fingerprint: Fingerprint::from_bytes([7; 32]),
            site: Name::new("annex-12").unwrap(),
            secret: Secret::generate(),
            expires: 1_800_000_000,
        }
    }

    #[test]
    fn round_trip_short_and_versioned() {
        let t = token();
        let text = t.encode_secret();
        assert!(text.starts_with("tl1."), "{text}");
        assert!(text.len() < 220, "{} characters", text.len());
        assert!(!text.contains(['+', '/', '=', ' ', '\n']), "{text}");
        assert_eq!(Token::decode(&text).unwrap(), t);
        // Surrounding white space (a paste) is fine.
        assert_eq!(Token::decode(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn damaged_tokens_are_refused_with_a_clear_reason() {
        let text = token().encode_secret();
        // Truncated anywhere.
        for cut in [5, text.len() / 2, text.len() - 1] {
            assert_eq!(
                Token::decode(&text[..cut]),
                Err(TokenError::Damaged),
                "cut {cut}"
            );
        }
        // One character changed.
        let mut chars: Vec<char> = text.chars().collect();
        let i = text.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(Token::decode(&typo), Err(TokenError::Damaged));
        assert_eq!(Token::decode("hello"), Err(TokenError::NotAToken));
        assert_eq!(Token::decode("tl1.!!!"), Err(TokenError::Damaged));
    }

    #[test]
    fn a_newer_format_says_so() {
        let mut b = vec![9u8; 20];
        let c = check(&b);
        b.extend_from_slice(&c);
        let text = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
        );
        assert_eq!(Token::decode(&text), Err(TokenError::Version(9)));
    }

    #[test]
    fn secrets_compare_by_value() {
        let s = Secret::generate();
        assert_eq!(s, Secret::from_bytes(*s.expose()));
        let mut other = *s.expose();
        other[SECRET_LEN - 1] ^= 1;
        assert_ne!(s, Secret::from_bytes(other));
        other = *s.expose();
        other[0] ^= 0x80;
        assert_ne!(s, Secret::from_bytes(other));
    }

    #[test]
    fn secrets_match_their_hash_only_and_never_print() {
        let s = Secret::generate();
        let other = Secret::generate();
        assert!(s.matches(&s.hash()));
        assert!(!other.matches(&s.hash()));
        assert!(!s.matches(""));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let t = token();
        let shown = format!("{t:?}");
        assert!(!shown.contains(&hex::encode(t.secret.expose())), "{shown}");
    }
}
