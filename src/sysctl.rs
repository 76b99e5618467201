//! Kernel settings townlink changes while it runs, each restored at stop,
//! and after a crash at the next start.
//!
//! Paths under `/proc/sys` show the settings of the caller's network
//! namespace. Every change is first written to a [`Record`] in the state
//! directory (atomically), then made; a clean stop puts the previous values
//! back and removes the record. A record found at start is what a crashed
//! run left: its values are put back before anything else, so the next
//! start does not take townlink's own values for the originals. A record of
//! an earlier boot or of another network namespace describes settings that
//! are gone (the kernel starts from its defaults): it is discarded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A setting changed by us, with the value to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub path: PathBuf,
    pub previous: String,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

/// Reads a setting given in path form, e.g. `net/ipv4/ip_forward` (path form
/// because interface names may contain dots).
pub fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

/// Loose reverse-path filtering (2) on an interface townlink itself made
/// (an annex's tunnel device per hub): with strict filtering, a reply
/// arriving on a hub's device while the route back to its source points
/// at another hub's (in flight during a switch of hub, or while the data
/// centre still routes through the old hub) would be dropped. Not
/// recorded: the setting goes with the interface. The effective value is
/// the larger of `all` and the interface's, so 2 is loose either way.
pub fn loosen_own_interface(interface: &str) -> std::io::Result<()> {
    std::fs::write(path(&format!("net/ipv4/conf/{interface}/rp_filter")), "2")
}

/// Puts a setting back; a failure is reported, not fatal.
pub fn restore(changed: &Changed) {
    if let Err(e) = std::fs::write(&changed.path, &changed.previous) {
        tracing::warn!(path = %changed.path.display(), error = %e, "could not restore kernel setting");
    }
}

/// Which kernel the settings belong to: this boot, this network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    boot_id: String,
    netns: String,
}

impl Owner {
    fn current() -> std::io::Result<Owner> {
        Ok(Owner {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
                .trim()
                .to_string(),
            netns: std::fs::read_link("/proc/thread-self/ns/net")?
                .to_string_lossy()
                .into_owned(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    owner: Owner,
    /// In the order they were changed.
    changed: Vec<Changed>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "cannot record the kernel settings townlink changes in {path} (state_directory): {source}"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {key}: {source}")]
    Read { key: String, source: std::io::Error },
    #[error("cannot set {key} to {value}: {source}")]
    Set {
        key: String,
        value: String,
        source: std::io::Error,
    },
}

/// The settings this run changed, recorded in a file before each change.
#[derive(Debug)]
pub struct Record {
    file: PathBuf,
    owner: Owner,
    changed: Vec<Changed>,
}

impl Record {
    /// Opens the record `file` (e.g. `/var/lib/townlink/sysctl-tl0.json`);
    /// first puts back what a crashed run left changed. Returns the record
    /// and what was put back.
    pub fn open(file: &Path) -> Result<(Record, Vec<Changed>), RecordError> {
        let write_err = |source| RecordError::Write {
            path: file.to_path_buf(),
            source,
        };
        let owner = Owner::current().map_err(write_err)?;
        let mut restored = Vec::new();
        match std::fs::read_to_string(file) {
            Ok(text) => match serde_json::from_str::<File>(&text) {
                Ok(left) if left.owner == owner => {
                    for c in left.changed.iter().rev() {
                        restore(c);
                    }
                    restored = left.changed;
                }
                Ok(left) if left.owner.boot_id != owner.boot_id => tracing::info!(
                    file = %file.display(),
                    "kernel settings recorded before a reboot: the kernel has its own values since"
                ),
                Ok(_) => tracing::info!(
                    file = %file.display(),
                    "kernel settings recorded in another network namespace: not ours, replaced"
                ),
                Err(e) => tracing::warn!(
                    file = %file.display(),
                    error = %e,
                    "unreadable record of kernel settings: ignored (it is only ever replaced whole)"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let record = Record {
            file: file.to_path_buf(),
            owner,
            changed: Vec::new(),
        };
        if !restored.is_empty() {
            // Put back: nothing is changed any more.
            record.save().map_err(write_err)?;
        }
        Ok((record, restored))
    }

    fn save(&self) -> std::io::Result<()> {
        if self.changed.is_empty() {
            return match std::fs::remove_file(&self.file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let text = serde_json::to_string_pretty(&File {
            owner: self.owner.clone(),
            changed: self.changed.clone(),
        })
        .expect("the record serializes");
        crate::fsutil::write_atomic(&self.file, text.as_bytes(), 0o600)
    }

    /// Sets `key` to `value`, recording the previous value first.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), RecordError> {
        let previous = read(key).map_err(|source| RecordError::Read {
            key: key.to_string(),
            source,
        })?;
        if previous == value {
            return Ok(());
        }
        self.changed.push(Changed {
            path: path(key),
            previous,
        });
        if let Err(source) = self.save() {
            self.changed.pop();
            return Err(RecordError::Write {
                path: self.file.clone(),
                source,
            });
        }
        std::fs::write(path(key), value).map_err(|source| RecordError::Set {
            key: key.to_string(),
            value: value.to_string(),
            source,
        })
    }

    /// Loosens reverse-path filtering on an uplink: with strict filtering
    /// (1), replies arriving on an uplink that is not the main table's
    /// default (e.g. 4G while the main default is fiber) are dropped. Loose
    /// mode (2) keeps the anti-spoofing check against any route.
    pub fn loosen_rp_filter(&mut self, interface: &str) -> Result<(), RecordError> {
        let read = |key: &str| {
            read(key).map_err(|source| RecordError::Read {
                key: key.to_string(),
                source,
            })
        };
        let all: u8 = read("net/ipv4/conf/all/rp_filter")?.parse().unwrap_or(0);
        let key = format!("net/ipv4/conf/{interface}/rp_filter");
        let own: u8 = read(&key)?.parse().unwrap_or(0);
        if all.max(own) == 1 {
            self.set(&key, "2")
        } else {
            Ok(())
        }
    }

    /// Puts every setting back, last changed first, and removes the record.
    pub fn restore_all(&mut self) {
        for c in self.changed.iter().rev() {
            restore(c);
        }
        self.changed.clear();
        if let Err(e) = self.save() {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot remove the record of kernel settings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of the test's own: its `/proc/sys/net`.
    fn in_netns(body: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            body()
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn only_a_record_of_this_boot_and_namespace_is_put_back() {
        in_netns(|| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("state/sysctl-tl0.json");
            assert_eq!(read("net/ipv4/ip_forward").unwrap(), "0");
            let (mut record, restored) = Record::open(&file).unwrap();
            assert!(restored.is_empty());
            record.set("net/ipv4/ip_forward", "1").unwrap();
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.contains("\"previous\": \"0\""), "{text}");
            drop(record); // a crash: nothing restored

            // Another boot's record is not applied (the kernel has its own values).
            let other = text.replace("\"boot_id\": \"", "\"boot_id\": \"x");
            std::fs::write(&file, &other).unwrap();
            let (record, restored) = Record::open(&file).unwrap();
            assert!(restored.is_empty());
            assert_eq!(read("net/ipv4/ip_forward").unwrap(), "1");
            drop(record);

            // This boot's and namespace's: put back, and the record is gone.
            std::fs::write(&file, &text).unwrap();
            let (mut record, restored) = Record::open(&file).unwrap();
            assert_eq!(restored.len(), 1);
            assert_eq!(read("net/ipv4/ip_forward").unwrap(), "0");
            assert!(!file.exists());
            record.set("net/ipv4/ip_forward", "1").unwrap();
            record.restore_all();
            assert_eq!(read("net/ipv4/ip_forward").unwrap(), "0");
            assert!(!file.exists());
        });
    }
}
