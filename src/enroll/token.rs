//! The one-time enrollment token: everything an annex needs to find and
//! trust the hub it joins with, and the secret that proves the
//! administrator issued it.
//!
//! ```text
//! tl1.<base64url, no padding, of:>
//!   version u8 (2) | expires u64 BE (Unix s) | secret [16]
//!   | site name: len u8 + bytes
//!   | hubs: count u8 (1 to 8), each:
//!       public key [32] | certificate fingerprint [32] | probe_port u16 BE
//!       | endpoints: count u8 (at least 1), each len u8 + bytes
//!   | check [4] = first 4 bytes of SHA-256 of everything before
//! ```
//! Version 1 (still read) had one hub: `version u8 (1) | expires |
//! probe_port | public key | fingerprint | secret | site | endpoints |
//! check`. The prefix stays `tl1.` (the family, not the format), so that
//! an older townlink given a newer token says "update townlink" rather
//! than "not a token".
//!
//! The hubs are the ones `join` may ask, in order: a hub issues tokens
//! naming itself only, since only the hub that issued a token keeps its
//! secret's hash; the backup hubs come in the join's answer
//! (`docs/decisions.md`). About 150 characters for one endpoint: one line,
//! copy-pastable. The check catches a truncated or mistyped token before
//! anything is sent; the secret is checked by the hub (which stores only
//! its hash).

use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;
use crate::sites::Name;

pub const PREFIX: &str = "tl1.";
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
/// Most hubs a token names.
pub const MAX_HUBS: usize = 8;
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

/// A hub `join` may ask, as the token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHub {
    /// The hub's WireGuard endpoints (`host:port`), tried in order; its
    /// probe responder is on the same hosts, at `probe_port`.
    pub endpoints: Vec<String>,
    /// UDP port of the hub's QUIC responder (probes and enrollment).
    pub probe_port: u16,
    pub public_key: PublicKey,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The hubs to ask, in order; at least one (the issuing hub).
    pub hubs: Vec<TokenHub>,
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
        fn short(b: &[u8]) -> &[u8] {
            &b[..b.len().min(255)]
        }
        let mut b = vec![VERSION];
        b.extend_from_slice(&self.expires.to_be_bytes());
        b.extend_from_slice(self.secret.expose());
        let name = self.site.as_str().as_bytes();
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        let hubs = &self.hubs[..self.hubs.len().min(MAX_HUBS)];
        b.push(hubs.len() as u8);
        for hub in hubs {
            b.extend_from_slice(hub.public_key.as_bytes());
            b.extend_from_slice(hub.fingerprint.as_bytes());
            b.extend_from_slice(&hub.probe_port.to_be_bytes());
            let endpoints: Vec<&[u8]> = hub
                .endpoints
                .iter()
                .map(|e| short(e.as_bytes()))
                .take(255)
                .collect();
            b.push(endpoints.len() as u8);
            for e in endpoints {
                b.push(e.len() as u8);
                b.extend_from_slice(e);
            }
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

    /// The hub asked first: the one that issued the token.
    pub fn issuer(&self) -> &TokenHub {
        &self.hubs[0]
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
        let token = match r.u8()? {
            VERSION => decode_v2(&mut r)?,
            VERSION_1 => decode_v1(&mut r)?,
            version => return Err(TokenError::Version(version)),
        };
        if !r.0.is_empty() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        Ok(token)
    }
}

fn site(r: &mut Reader) -> Result<Name, TokenError> {
    Name::new(&r.string()?).map_err(|_| TokenError::Malformed("bad site name"))
}

fn public_key(r: &mut Reader) -> Result<PublicKey, TokenError> {
    PublicKey::from_bytes(r.array()?)
        .map_err(|_| TokenError::Malformed("the hub's public key is not usable"))
}

fn endpoints(r: &mut Reader) -> Result<Vec<String>, TokenError> {
    let count = r.u8()?;
    let endpoints = (0..count)
        .map(|_| r.string())
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(TokenError::Malformed("no hub endpoint"));
    }
    Ok(endpoints)
}

fn decode_v2(r: &mut Reader) -> Result<Token, TokenError> {
    let expires = u64::from_be_bytes(r.array()?);
    let secret = Secret::from_bytes(r.array()?);
    let site = site(r)?;
    let count = r.u8()? as usize;
    if count == 0 || count > MAX_HUBS {
        return Err(TokenError::Malformed("the number of hubs is not 1 to 8"));
    }
    let mut hubs = Vec::with_capacity(count);
    for _ in 0..count {
        let public_key = public_key(r)?;
        let fingerprint = Fingerprint::from_bytes(r.array()?);
        let probe_port = u16::from_be_bytes(r.array()?);
        hubs.push(TokenHub {
            endpoints: endpoints(r)?,
            probe_port,
            public_key,
            fingerprint,
        });
    }
    Ok(Token {
        hubs,
        site,
        secret,
        expires,
    })
}

fn decode_v1(r: &mut Reader) -> Result<Token, TokenError> {
    let expires = u64::from_be_bytes(r.array()?);
    let probe_port = u16::from_be_bytes(r.array()?);
    let public_key = public_key(r)?;
    let fingerprint = Fingerprint::from_bytes(r.array()?);
    let secret = Secret::from_bytes(r.array()?);
    let site = site(r)?;
    let endpoints = endpoints(r)?;
    Ok(Token {
        hubs: vec![TokenHub {
            endpoints,
            probe_port,
            public_key,
            fingerprint,
        }],
        site,
        secret,
        expires,
    })
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

    fn hub(endpoints: &[&str], fingerprint: u8) -> TokenHub {
        TokenHub {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            probe_port: 51821,
            public_key: PrivateKey::generate().public_key(),
            fingerprint: Fingerprint::from_bytes([fingerprint; 32]),
        }
    }

    fn token() -> Token {
        Token {
            hubs: vec![hub(&["hub.example.net:51820", "198.51.100.7:51820"], 7)],
            site: Name::new("annex-12").unwrap(),
            secret: Secret::generate(),
            expires: 1_800_000_000,
        }
    }

    /// A version-1 token as townlink before issue 18 wrote it.
    fn v1_text(t: &Token) -> String {
        let h = t.issuer();
        let mut b = vec![1u8];
        b.extend_from_slice(&t.expires.to_be_bytes());
        b.extend_from_slice(&h.probe_port.to_be_bytes());
        b.extend_from_slice(h.public_key.as_bytes());
        b.extend_from_slice(h.fingerprint.as_bytes());
        b.extend_from_slice(t.secret.expose());
        b.push(t.site.as_str().len() as u8);
        b.extend_from_slice(t.site.as_str().as_bytes());
        b.push(h.endpoints.len() as u8);
        for e in &h.endpoints {
            b.push(e.len() as u8);
            b.extend_from_slice(e.as_bytes());
        }
        let c = check(&b);
        b.extend_from_slice(&c);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
        )
    }

    #[test]
    fn a_version_1_token_stays_readable() {
        let t = token();
        let text = v1_text(&t);
        assert_eq!(Token::decode(&text).unwrap(), t);
        // Read, then written again as version 2: the same token.
        let again = Token::decode(&text).unwrap().encode_secret();
        assert_ne!(again, text);
        assert_eq!(Token::decode(&again).unwrap(), t);
        // Its damage is caught as before.
        assert_eq!(
            Token::decode(&text[..text.len() - 1]),
            Err(TokenError::Damaged)
        );
    }

    #[test]
    fn a_token_may_name_several_hubs_each_with_its_port() {
        let mut t = token();
        let mut backup = hub(&["hub-backup.example.net:51820"], 8);
        backup.probe_port = 51900;
        t.hubs.push(backup);
        let text = t.encode_secret();
        assert_eq!(Token::decode(&text).unwrap(), t);
        // No hub, or more than MAX_HUBS: refused (a payload with a valid check).
        for count in [0, MAX_HUBS + 1] {
            let mut b = vec![VERSION];
            b.extend_from_slice(&t.expires.to_be_bytes());
            b.extend_from_slice(t.secret.expose());
            b.push(8);
            b.extend_from_slice(b"annex-12");
            b.push(count as u8);
            let c = check(&b);
            b.extend_from_slice(&c);
            let text = format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
            );
            assert_eq!(
                Token::decode(&text),
                Err(TokenError::Malformed("the number of hubs is not 1 to 8")),
                "{count} hubs"
            );
        }
    }

    /// Format 2 is fixed: this text (also a seed of the token fuzz target,
    /// `fuzz/corpus/token/text-v2-two-hubs`) is these fields, both ways.
    #[test]
    fn format_2_is_stable() {
        const TEXT: &str = "tl1.AgAAAADuaygAAAECAwQFBgcICQoLDA0ODwdhbm5leC0xAh80kTqKIpdwwY1HadXtgm9gmFluUoMwYtwyrG9j-LF-BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwfKbQEVaHViLmV4YW1wbGUubmV0OjUxODIwmUh16G0CQpm9WbQ7aWPZ9l4ikYs4bLIl_ITEvFOkjL8ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICMq8AhxodWItYmFja3VwLmV4YW1wbGUubmV0OjUxODIwEjE5OC41MS4xMDAuOTo1MTgyMHY_Uv8";
        let mut secret = [0u8; SECRET_LEN];
        secret
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let t = Token {
            hubs: vec![
                TokenHub {
                    endpoints: vec!["hub.example.net:51820".into()],
                    probe_port: 51821,
                    public_key: "HzSROooil3DBjUdp1e2Cb2CYWW5SgzBi3DKsb2P4sX4="
                        .parse()
                        .unwrap(),
                    fingerprint: Fingerprint::from_bytes([7; 32]),
                },
                TokenHub {
                    endpoints: vec![
                        "hub-backup.example.net:51820".into(),
                        "198.51.100.9:51820".into(),
                    ],
                    probe_port: 51900,
                    public_key: "mUh16G0CQpm9WbQ7aWPZ9l4ikYs4bLIl/ITEvFOkjL8="
                        .parse()
                        .unwrap(),
                    fingerprint: Fingerprint::from_bytes([8; 32]),
                },
            ],
            site: Name::new("annex-1").unwrap(),
            secret: Secret::from_bytes(secret),
            expires: 4_000_000_000,
        };
        assert_eq!(Token::decode(TEXT).unwrap(), t);
        assert_eq!(t.encode_secret(), TEXT);
    }

    #[test]
    fn round_trip_short_and_versioned() {
        let t = token();
        let text = t.encode_secret();
        assert!(text.starts_with("tl1.Ag"), "version 2 first: {text}");
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
        assert!(shown.contains("Secret(<redacted>)"), "{shown}");
    }
}
