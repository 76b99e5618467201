//! The hub's site registry: the sites enrolled from the CLI, in a JSON file
//! the hub owns, replaced atomically on every change (temporary file,
//! fsync, rename, fsync of the directory), so that a crash at any point
//! leaves the old or the new registry, never a mix. Secrets are stored
//! hashed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::fsutil;
use crate::keys::PublicKey;
use crate::sites::{Name, SiteState};

const FORMAT: u32 = 1;

/// Where a site is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EntryState {
    /// A token was issued; nobody joined with it yet.
    Pending {
        /// SHA-256 of the token's secret (hex).
        secret_hash: String,
        /// Unix time after which the token is refused.
        expires: u64,
    },
    /// The annex joined: its keys are registered.
    Joined {
        #[serde(with = "key_text")]
        public_key: PublicKey,
        #[serde(with = "fingerprint_text")]
        certificate: Fingerprint,
        joined_at: u64,
        /// The token's secret hash, kept so that the same annex (same
        /// token, same keys) can join again when it lost the hub's answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_hash: Option<String>,
    },
    /// Removed by an administrator: no tunnel, no probes, token void.
    Revoked {
        revoked_at: u64,
        /// The token's secret hash, kept so that the holder of the token
        /// (and only they) is told the site was revoked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_hash: Option<String>,
    },
}

impl EntryState {
    /// The hash of the secret of the token this entry was issued with,
    /// when the registry still has it.
    pub fn secret_hash(&self) -> Option<&str> {
        match self {
            EntryState::Pending { secret_hash, .. } => Some(secret_hash),
            EntryState::Joined { secret_hash, .. } | EntryState::Revoked { secret_hash, .. } => {
                secret_hash.as_deref()
            }
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.site_state().as_str()
    }

    /// What `site list` shows of this entry before the tunnel is looked at.
    pub fn site_state(&self) -> SiteState {
        match self {
            EntryState::Pending { .. } => SiteState::Pending,
            EntryState::Joined { .. } => SiteState::Joined,
            EntryState::Revoked { .. } => SiteState::Revoked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Name,
    pub address: IpAddr,
    #[serde(default)]
    pub lan: Vec<IpNet>,
    pub created_at: u64,
    #[serde(flatten)]
    pub state: EntryState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    format: u32,
    pub sites: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the site registry {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the site registry {path} is not valid ({reason}); it is only ever replaced whole, so \
         this file was edited or damaged by hand: restore it from a backup"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write the site registry {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Registry {
    /// Reads the registry; a missing file is an empty registry.
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Registry {
                    format: FORMAT,
                    sites: Vec::new(),
                })
            }
            Err(source) => {
                return Err(RegistryError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let invalid = |reason: String| RegistryError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let registry: Registry = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if registry.format != FORMAT {
            return Err(invalid(format!(
                "format {} where this townlink reads {FORMAT}",
                registry.format
            )));
        }
        let mut names = std::collections::HashSet::new();
        for e in &registry.sites {
            if !names.insert(&e.name) {
                return Err(invalid(format!("site {} appears twice", e.name)));
            }
        }
        Ok(registry)
    }

    /// Replaces the file atomically (mode 0600: it holds secret hashes).
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let mut out = Registry {
            format: FORMAT,
            sites: self.sites.clone(),
        };
        out.sites.sort_by(|a, b| a.name.cmp(&b.name));
        let text = serde_json::to_string_pretty(&out).expect("the registry serializes");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RegistryError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| RegistryError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn get(&self, name: &Name) -> Option<&Entry> {
        self.sites.iter().find(|e| &e.name == name)
    }

    pub fn get_mut(&mut self, name: &Name) -> Option<&mut Entry> {
        self.sites.iter_mut().find(|e| &e.name == name)
    }

    /// Adds or replaces (a revoked site may be enrolled again) an entry.
    pub fn put(&mut self, entry: Entry) {
        match self.get_mut(&entry.name) {
            Some(e) => *e = entry,
            None => self.sites.push(entry),
        }
    }
}

/// The lowest host address of `pool` that is not `taken` (network and
/// broadcast addresses of an IPv4 pool excluded).
pub fn allocate(pool: IpNet, taken: &[IpAddr]) -> Option<IpAddr> {
    pool.hosts().find(|a| !taken.contains(a))
}

pub(crate) mod key_text {
    use super::PublicKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("public key {e}")))
    }
}

pub(crate) mod fingerprint_text {
    use super::Fingerprint;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&f.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn entry(name: &str, address: &str, state: EntryState) -> Entry {
        Entry {
            name: Name::new(name).unwrap(),
            address: address.parse().unwrap(),
            lan: vec!["192.168.7.0/24".parse().unwrap()],
            created_at: 1_790_000_000,
            state,
        }
    }

    #[test]
    fn saves_and_loads_every_state_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/sites.json");
        assert_eq!(Registry::load(&path).unwrap().sites, vec![]);
        let mut r = Registry::default();
        r.put(entry(
            "b",
            "10.99.0.3",
            EntryState::Joined {
                public_key: PrivateKey::generate().public_key(),
                certificate: Fingerprint::from_bytes([1; 32]),
                joined_at: 1_790_000_100,
                secret_hash: Some("cd".repeat(32)),
            },
        ));
        r.put(entry(
            "a",
            "10.99.0.2",
            EntryState::Pending {
                secret_hash: "ab".repeat(32),
                expires: 1_790_086_400,
            },
        ));
        r.put(entry(
            "c",
            "10.99.0.4",
            EntryState::Revoked {
                revoked_at: 5,
                secret_hash: Some("cd".repeat(32)),
            },
        ));
        r.save(&path).unwrap();
        let back = Registry::load(&path).unwrap();
        let names: Vec<&str> = back.sites.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(
            back.get(&Name::new("b").unwrap()),
            r.get(&Name::new("b").unwrap())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left next to it.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("sites.json")]);
    }

    #[test]
    fn a_joined_entry_without_secret_hash_still_loads() {
        // Registries written before the hash was kept for repeated joins.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.json");
        let key = PrivateKey::generate().public_key();
        std::fs::write(
            &path,
            format!(
                "{{\"format\":1,\"sites\":[{{\"name\":\"a\",\"address\":\"10.99.0.2\",\
                 \"created_at\":1,\"state\":\"joined\",\"public_key\":\"{key}\",\
                 \"certificate\":\"{}\",\"joined_at\":2}}]}}",
                Fingerprint::from_bytes([1; 32])
            ),
        )
        .unwrap();
        let r = Registry::load(&path).unwrap();
        assert!(matches!(
            r.sites[0].state,
            EntryState::Joined {
                secret_hash: None,
                ..
            }
        ));
    }

    #[test]
    fn a_damaged_registry_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.json");
        std::fs::write(&path, "{\"format\":1,\"sites\":[{\"name\":").unwrap();
        let e = Registry::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("restore it from a backup"), "{e}");
        std::fs::write(&path, "{\"format\":7,\"sites\":[]}").unwrap();
        assert!(Registry::load(&path)
            .unwrap_err()
            .to_string()
            .contains("format 7"));
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_registry() {
        // write_atomic writes a temporary file first: a crash before the
        // rename leaves it next to the registry, which loads unchanged.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.json");
        let mut r = Registry::default();
        r.put(entry(
            "a",
            "10.99.0.2",
            EntryState::Revoked {
                revoked_at: 1,
                secret_hash: None,
            },
        ));
        r.save(&path).unwrap();
        std::fs::write(
            dir.path().join(".sites.json.tmp-crash"),
            "{\"format\":1,\"si",
        )
        .unwrap();
        assert_eq!(Registry::load(&path).unwrap().sites, r.sites);
    }

    #[test]
    fn allocation_takes_the_lowest_free_host() {
        let pool: IpNet = "10.99.0.0/29".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(allocate(pool, &[ip("10.99.0.1")]), Some(ip("10.99.0.2")));
        assert_eq!(
            allocate(pool, &[ip("10.99.0.1"), ip("10.99.0.2"), ip("10.99.0.4")]),
            Some(ip("10.99.0.3"))
        );
        let all: Vec<IpAddr> = (1..=6).map(|i| ip(&format!("10.99.0.{i}"))).collect();
        assert_eq!(
            allocate(pool, &all),
            None,
            "network and broadcast are never handed out"
        );
    }
}
