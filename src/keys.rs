//! WireGuard keys: parsing, validation, generation.
//!
//! Keys are exchanged with people and files in the `wg` encoding (standard
//! base64 of 32 bytes) and with the tunnel device in hex only (boringtun
//! trap 3: a malformed base64 key of the right length is taken as zeros).
//! A private key never appears in `Debug` or `Display` output.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::x25519;
use zeroize::Zeroize;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not valid base64 (expected 44 characters as printed by `wg genkey`/`wg pubkey`)")]
    Encoding,
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    Length(usize),
    #[error(
        "is a low-order Curve25519 point (e.g. all zeros): it would give an all-zero shared secret"
    )]
    LowOrder,
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bytes = STANDARD.decode(text).map_err(|_| KeyError::Encoding)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Length(len))
}

/// A WireGuard public key, checked to be a usable Curve25519 point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        // A point of small order gives the same (all-zero) shared secret
        // whatever our scalar: detect it with one Diffie-Hellman.
        let probe = x25519::StaticSecret::from([0x5a; 32]);
        let shared = probe.diffie_hellman(&x25519::PublicKey::from(bytes));
        if !shared.was_contributory() {
            return Err(KeyError::LowOrder);
        }
        Ok(PublicKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, the only key encoding sent to the tunnel device.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_bytes(decode32(s)?)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private key. Zeroed on drop, never printed.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the OS random generator (ring's, as for every
    /// random number of townlink), clamped like `wg genkey`.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's random generator works");
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = x25519::StaticSecret::from(self.0);
        PublicKey(*x25519::PublicKey::from(&secret).as_bytes())
    }

    /// Hex encoding for the tunnel device. The caller must not log it.
    pub fn to_hex_secret(&self) -> String {
        hex::encode(self.0)
    }

    /// The `wg` encoding, for writing a key file. The caller must not log it.
    pub fn to_base64_secret(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(PrivateKey(decode32(s)?))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pair produced by `wg genkey | tee k | wg pubkey` (wireguard-tools).
    const WG_PRIVATE: &str = "ULh948zvGUz4O0SHrUjP3M7xiCPhlWy45lN+M5ByhUY=";
    const WG_PUBLIC: &str = "CiAd3rdxw3Z2WeGmhsWrphHNlWI15WLcBDyl+BQdVAs=";

    #[test]
    fn public_key_matches_wireguard_tools() {
        let private: PrivateKey = WG_PRIVATE.parse().unwrap();
        assert_eq!(private.public_key().to_base64(), WG_PUBLIC);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a.to_hex_secret(), b.to_hex_secret());
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
        // Round trip through the file encoding.
        let again: PrivateKey = a.to_base64_secret().parse().unwrap();
        assert_eq!(again.public_key(), a.public_key());
    }

    #[test]
    fn refuses_bad_encodings_and_lengths() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::Encoding));
        assert_eq!(
            STANDARD.encode([1u8; 16]).parse::<PublicKey>(),
            Err(KeyError::Length(16))
        );
        // Right length, one character mangled into something not base64.
        let mangled = format!("{}*", &WG_PUBLIC[..43]);
        assert_eq!(mangled.parse::<PublicKey>(), Err(KeyError::Encoding));
    }

    #[test]
    fn refuses_low_order_points() {
        let zero = STANDARD.encode([0u8; 32]);
        assert_eq!(zero.parse::<PublicKey>(), Err(KeyError::LowOrder));
        let one = {
            let mut b = [0u8; 32];
            b[0] = 1;
            STANDARD.encode(b)
        };
        assert_eq!(one.parse::<PublicKey>(), Err(KeyError::LowOrder));
        // p - 1 (the point of order 2 in Montgomery form).
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert_eq!(PublicKey::from_bytes(p_minus_1), Err(KeyError::LowOrder));
        assert!(WG_PUBLIC.parse::<PublicKey>().is_ok());
    }

    #[test]
    fn private_key_is_never_printed() {
        let k: PrivateKey = WG_PRIVATE.parse().unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains(&WG_PRIVATE[..10]));
        assert!(!shown.contains(&k.to_hex_secret()[..10]));
    }

    #[test]
    fn hex_is_lowercase_64_chars() {
        let k: PublicKey = WG_PUBLIC.parse().unwrap();
        let h = k.to_hex();
        assert_eq!(h.len(), 64);
        assert!(h
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
