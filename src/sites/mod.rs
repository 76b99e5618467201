//! The hub's set of sites (annexes).
//!
//! One type for every source of sites: the `[[site]]` tables of the hub's
//! config today, the enrollment registry later. Every insertion is checked
//! against the sites already present, so that no source can create two sites
//! with the same name, key or tunnel address, or overlapping LAN prefixes.
//! [`info`]: what the hub tells of a site (`site list`, status words);
//! [`attachment`]: whether a site is attached to this hub (table 116).

pub mod attachment;
pub mod info;

pub use info::{SiteInfo, SiteSource, SiteState};

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;

/// A site or uplink name: used in logs, status and metric labels, so it is
/// short and plain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Deserializing validates, like [`Name::new`].
impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Name::new(&text).map_err(|e| serde::de::Error::custom(format!("name {text:?} {e}")))
    }
}

impl Name {
    pub const MAX_LEN: usize = 32;

    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        let ok = text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok || !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(
                "may contain only a-z, 0-9, '-' and '_', and must start with a letter or digit"
                    .into(),
            );
        }
        Ok(Name(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One annex as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: Name,
    pub public_key: PublicKey,
    /// The site's address inside the tunnel network.
    pub address: IpAddr,
    /// Prefixes behind the site, routed to it through the tunnel.
    pub lan: Vec<IpNet>,
    /// Fingerprint of the site's probe certificate; without it, the site's
    /// probes are refused (it still gets its tunnel).
    pub certificate: Option<Fingerprint>,
}

impl Site {
    /// Every prefix the hub accepts from and routes to this site.
    pub fn allowed_ips(&self) -> Vec<IpNet> {
        let mut ips = vec![IpNet::from(self.address)];
        ips.extend(self.lan.iter().copied());
        ips
    }
}

/// Why a site cannot join the set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteConflict {
    #[error("a site named {0} already exists")]
    Name(Name),
    #[error("public key already used by site {0}")]
    PublicKey(Name),
    #[error("tunnel address {address} already used by site {site}")]
    Address { address: IpAddr, site: Name },
    #[error("certificate already used by site {0}")]
    Certificate(Name),
    #[error("LAN prefix {prefix} overlaps {other} of site {site}")]
    Lan {
        prefix: IpNet,
        other: IpNet,
        site: Name,
    },
}

/// The sites of a hub, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteSet {
    sites: BTreeMap<Name, Site>,
}

impl SiteSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a site after checking it against every site already present.
    pub fn insert(&mut self, site: Site) -> Result<(), SiteConflict> {
        for other in self.sites.values() {
            if other.name == site.name {
                return Err(SiteConflict::Name(site.name));
            }
            if other.public_key == site.public_key {
                return Err(SiteConflict::PublicKey(other.name.clone()));
            }
            if site.certificate.is_some() && other.certificate == site.certificate {
                return Err(SiteConflict::Certificate(other.name.clone()));
            }
            if other.address == site.address {
                return Err(SiteConflict::Address {
                    address: site.address,
                    site: other.name.clone(),
                });
            }
            for prefix in &site.lan {
                if let Some(o) = other.lan.iter().find(|o| overlaps(prefix, o)) {
                    return Err(SiteConflict::Lan {
                        prefix: *prefix,
                        other: *o,
                        site: other.name.clone(),
                    });
                }
            }
        }
        self.sites.insert(site.name.clone(), site);
        Ok(())
    }

    pub fn remove(&mut self, name: &Name) -> Option<Site> {
        self.sites.remove(name)
    }

    pub fn get(&self, name: &Name) -> Option<&Site> {
        self.sites.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

/// Whether two prefixes share at least one address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The shortest IPv4 LAN prefix a site may have: a wider one would send a
/// large part of the Internet into one annex's tunnel.
pub const MIN_LAN_V4: u8 = 8;
/// The shortest IPv6 LAN prefix (an ISP's allocation; a site gets a /48 or less).
pub const MIN_LAN_V6: u8 = 32;

/// Ranges that are never a site's LAN, whatever the hub.
const NEVER: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Why `prefix` can never be a site's LAN (too wide, or a special range),
/// whatever the hub; `None` if it can be one.
pub fn lan_shape_problem(prefix: &IpNet) -> Option<String> {
    let min = match prefix {
        IpNet::V4(_) => MIN_LAN_V4,
        IpNet::V6(_) => MIN_LAN_V6,
    };
    if prefix.prefix_len() < min {
        return Some(format!(
            "{prefix} is wider than /{min}: a site's LAN that large would take the hub's \
             routes to a large part of the Internet"
        ));
    }
    NEVER.iter().find_map(|(range, what)| {
        let range: IpNet = range.parse().expect("literal");
        overlaps(prefix, &range).then(|| format!("{prefix} overlaps {range} ({what})"))
    })
}

/// A network of the hub that no site's LAN may take: its tunnel network,
/// what annexes reach through it (`enrollment.routes`), its own addresses
/// and the routes it did not make (to the records server, the Internet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub prefix: IpNet,
    /// In words, with the prefix: "enrollment.routes[0] 10.50.0.0/24".
    pub what: String,
    /// A LAN strictly inside it is fine: `enrollment.routes` may be a
    /// supernet of the annexes' LANs (192.168.0.0/16); a LAN equal to a
    /// route or wider than it takes it.
    pub inside_ok: bool,
}

/// Why `prefix` cannot be a site's LAN on this hub: its shape, or a
/// reserved network it overlaps; `None` if it can be one.
pub fn lan_problem(prefix: &IpNet, reserved: &[Reserved]) -> Option<String> {
    if let Some(problem) = lan_shape_problem(prefix) {
        return Some(problem);
    }
    reserved.iter().find_map(|r| {
        let inside = r.prefix.contains(prefix) && r.prefix.prefix_len() < prefix.prefix_len();
        (overlaps(prefix, &r.prefix) && !(r.inside_ok && inside))
            .then(|| format!("{prefix} overlaps {}", r.what))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        // Public keys of distinct generated private keys are valid points.
        let mut seed = [n; 32];
        seed[0] &= 248;
        let private: crate::keys::PrivateKey =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, seed)
                .parse()
                .unwrap();
        private.public_key()
    }

    fn site(name: &str, k: u8, addr: &str, lan: &[&str]) -> Site {
        Site {
            name: Name::new(name).unwrap(),
            public_key: key(k),
            address: addr.parse().unwrap(),
            lan: lan.iter().map(|p| p.parse().unwrap()).collect(),
            certificate: None,
        }
    }

    #[test]
    fn refuses_every_kind_of_conflict() {
        let mut set = SiteSet::new();
        set.insert(site("a", 1, "10.99.0.2", &["192.168.1.0/24"]))
            .unwrap();
        assert!(matches!(
            set.insert(site("a", 2, "10.99.0.3", &[])),
            Err(SiteConflict::Name(_))
        ));
        assert!(matches!(
            set.insert(site("b", 1, "10.99.0.3", &[])),
            Err(SiteConflict::PublicKey(_))
        ));
        assert!(matches!(
            set.insert(site("b", 2, "10.99.0.2", &[])),
            Err(SiteConflict::Address { .. })
        ));
        assert!(matches!(
            set.insert(site("b", 2, "10.99.0.3", &["192.168.0.0/16"])),
            Err(SiteConflict::Lan { .. })
        ));
        set.insert(site("b", 2, "10.99.0.3", &["192.168.2.0/24"]))
            .unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.remove(&Name::new("a").unwrap()).is_some());
        set.insert(site("c", 1, "10.99.0.2", &["192.168.1.0/24"]))
            .unwrap();
    }

    #[test]
    fn a_lan_cannot_take_the_hubs_routes() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let reserved = vec![
            Reserved {
                prefix: net("10.99.0.0/24"),
                what: "the tunnel network 10.99.0.0/24".into(),
                inside_ok: false,
            },
            Reserved {
                prefix: net("10.50.0.0/24"),
                what: "enrollment.routes[0] 10.50.0.0/24".into(),
                inside_ok: true,
            },
            Reserved {
                prefix: net("192.168.0.0/16"),
                what: "enrollment.routes[1] 192.168.0.0/16".into(),
                inside_ok: true,
            },
        ];
        let problem = |s: &str| lan_problem(&net(s), &reserved);
        // Half the Internet, the whole of it, or a /7: too wide.
        for wide in ["128.0.0.0/1", "0.0.0.0/0", "10.0.0.0/7", "2000::/3", "::/0"] {
            assert!(
                problem(wide).is_some_and(|p| p.contains("is wider than")),
                "{wide}: {:?}",
                problem(wide)
            );
        }
        assert_eq!(
            problem("10.50.0.0/24").as_deref(),
            Some("10.50.0.0/24 overlaps enrollment.routes[0] 10.50.0.0/24"),
            "the records network"
        );
        assert!(problem("10.48.0.0/12").is_some(), "wider than a route");
        assert_eq!(
            problem("10.0.0.0/8").as_deref(),
            Some("10.0.0.0/8 overlaps the tunnel network 10.99.0.0/24")
        );
        assert!(problem("10.99.0.128/25").is_some(), "inside the tunnel");
        for special in [
            "127.0.0.0/8",
            "169.254.1.0/24",
            "224.0.0.0/24",
            "fe80::/64",
            "ff02::/16",
        ] {
            assert!(problem(special).is_some(), "{special}");
        }
        // Inside a supernet of the annexes' LANs, or elsewhere: fine.
        assert_eq!(problem("192.168.1.0/24"), None);
        assert_eq!(problem("11.0.0.0/8"), None, "a /8 is not too wide");
        assert_eq!(problem("172.16.5.0/24"), None);
        assert_eq!(problem("2001:db8:1::/48"), None);
    }

    #[test]
    fn names_are_plain() {
        assert!(Name::new("annex-1").is_ok());
        assert!(Name::new("Annex").is_err());
        assert!(Name::new("-x").is_err());
        assert!(Name::new("").is_err());
        assert!(Name::new(&"a".repeat(33)).is_err());
        assert!(Name::new("a b").is_err());
    }
}
