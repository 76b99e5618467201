//! The SHA-256 fingerprint of a certificate: how the hub's certificate is
//! pinned on an annex and how an annex's certificate is registered for its
//! site. A plain value, below `sites`, `config` and `probe`.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;

/// SHA-256 of a certificate's DER encoding, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    /// Accepts `sha256:` + 64 hex digits, with or without the prefix and colons.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let bad =
            || "expected sha256:<64 hex digits>, as printed by `townlink gencert`".to_string();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&hex, &mut bytes).map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_and_accept_colons() {
        let fp = Fingerprint::of(&CertificateDer::from(b"a certificate".to_vec()));
        let shown = fp.to_string();
        assert!(shown.starts_with("sha256:") && shown.len() == 7 + 64);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        let colons: String = shown.as_bytes()[7..]
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
        assert!("sha256:1234".parse::<Fingerprint>().is_err());
        // Multi-byte characters are refused, not a panic (config input).
        assert!(format!("sha256:{}é", "a".repeat(62))
            .parse::<Fingerprint>()
            .is_err());
        assert!("é".repeat(32).parse::<Fingerprint>().is_err());
        // 64 bytes whose pair boundary falls inside the 'é' (slicing by byte would panic).
        assert!(format!("{}é{}", "a".repeat(61), "a")
            .parse::<Fingerprint>()
            .is_err());
    }
}
