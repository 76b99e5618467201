//! Kernel settings townlink changes while it runs, each restored at stop.
//!
//! Paths under `/proc/sys` show the settings of the caller's network
//! namespace.

use std::path::PathBuf;

/// A setting changed by us, with the value to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Sets `key` to `value`; returns what to restore if it was different.
pub fn set(key: &str, value: &str) -> std::io::Result<Option<Changed>> {
    let previous = read(key)?;
    if previous == value {
        return Ok(None);
    }
    std::fs::write(path(key), value)?;
    Ok(Some(Changed {
        path: path(key),
        previous,
    }))
}

/// Loosens reverse-path filtering on an uplink: with strict filtering
/// (1), replies arriving on an uplink that is not the main table's default
/// (e.g. 4G while the main default is fiber) are dropped. Loose mode (2)
/// keeps the anti-spoofing check against any route.
pub fn loosen_rp_filter(interface: &str) -> std::io::Result<Option<Changed>> {
    let all: u8 = read("net/ipv4/conf/all/rp_filter")?.parse().unwrap_or(0);
    let key = format!("net/ipv4/conf/{interface}/rp_filter");
    let own: u8 = read(&key)?.parse().unwrap_or(0);
    if all.max(own) == 1 {
        set(&key, "2")
    } else {
        Ok(None)
    }
}

/// Puts a setting back; a failure is reported, not fatal.
pub fn restore(changed: &Changed) {
    if let Err(e) = std::fs::write(&changed.path, &changed.previous) {
        tracing::warn!(path = %changed.path.display(), error = %e, "could not restore kernel setting");
    }
}
