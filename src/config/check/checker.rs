//! The problem collector and the checks of single values (names, keys,
//! addresses, durations, files) that every section uses.

use super::*;

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
    /// Keys whose value had the wrong type: already reported, and taken
    /// out, so "missing" and the like are not said of them again.
    pub(super) typed: Vec<String>,
}

impl Checker {
    pub(super) fn push(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        let path = path.into();
        let reported = self.typed.iter().any(|t| {
            path.strip_prefix(t.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        if reported {
            return;
        }
        self.problems.push(Problem {
            path,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    pub(super) fn required<T>(&mut self, path: &str, value: Option<T>, hint: &str) -> Option<T> {
        if value.is_none() {
            self.push(path, "missing", Some(hint));
        }
        value
    }

    pub(super) fn name(&mut self, path: &str, value: Option<&String>) -> Option<Name> {
        let value = self.required(path, value, "add a short name, e.g. name = \"annex-1\"")?;
        Name::new(value)
            .map_err(|e| self.push(path, format!("{value:?} {e}"), None))
            .ok()
    }

    pub(super) fn interface(
        &mut self,
        path: &str,
        value: Option<&String>,
    ) -> Option<InterfaceName> {
        let value = self.required(path, value, "the Linux interface name, e.g. \"eth1\"")?;
        InterfaceName::new(value)
            .map_err(|e| self.push(path, format!("{value:?} {e}"), None))
            .ok()
    }

    pub(super) fn ip(&mut self, path: &str, value: &str) -> Option<IpAddr> {
        value
            .parse::<IpAddr>()
            .map_err(|_| {
                self.push(
                    path,
                    format!("{value:?} is not an IP address"),
                    Some("write a plain address such as 10.99.0.1, without prefix length"),
                )
            })
            .ok()
    }

    /// A prefix such as `192.168.1.0/24`, with no host bits set.
    pub(super) fn prefix(&mut self, path: &str, value: &str) -> Option<IpNet> {
        let net = match value.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => {
                self.push(
                    path,
                    format!("{value:?} is not a CIDR prefix"),
                    Some("write address/length, e.g. 192.168.1.0/24"),
                );
                return None;
            }
        };
        if net.trunc() != net {
            self.push(
                path,
                format!("{value} has host bits set"),
                Some(&format!("did you mean {}?", net.trunc())),
            );
            return None;
        }
        Some(net)
    }

    /// A list of prefixes, none overlapping another nor the tunnel network.
    pub(super) fn prefixes(
        &mut self,
        path: &str,
        values: Option<&Vec<String>>,
        tunnel: Option<IpNet>,
    ) -> Vec<IpNet> {
        let tunnel = tunnel.map(|t| t.trunc());
        let refuse = |n: &IpNet| {
            tunnel
                .filter(|t| overlaps(n, t))
                .map(|t| (format!("{n} overlaps the tunnel network {t}"), None))
        };
        self.checked_prefixes(path, values, refuse)
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    /// A list of prefixes, each valid one with its index in the list: a
    /// prefix `refuse` says something about (problem, hint) is reported and
    /// left out; the others may not overlap one another.
    pub(super) fn checked_prefixes(
        &mut self,
        path: &str,
        values: Option<&Vec<String>>,
        refuse: impl Fn(&IpNet) -> Option<(String, Option<&'static str>)>,
    ) -> Vec<(usize, IpNet)> {
        let mut nets: Vec<(usize, IpNet)> = Vec::new();
        for (i, v) in values.into_iter().flatten().enumerate() {
            let Some(n) = self.prefix(&format!("{path}[{i}]"), v) else {
                continue;
            };
            match refuse(&n) {
                Some((problem, hint)) => self.push(format!("{path}[{i}]"), problem, hint),
                None => nets.push((i, n)),
            }
        }
        for (a, (i, x)) in nets.iter().enumerate() {
            for (j, y) in nets.iter().skip(a + 1) {
                if overlaps(x, y) {
                    self.push(
                        format!("{path}[{j}]"),
                        format!("{y} overlaps {x} ({path}[{i}])"),
                        Some("list each prefix once, without overlaps"),
                    );
                }
            }
        }
        nets
    }

    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: i64,
        min: i64,
        max: i64,
    ) -> Option<T> {
        if value < min || value > max {
            self.push(path, format!("{value} is out of range {min}..={max}"), None);
            return None;
        }
        T::try_from(value).ok()
    }

    pub(super) fn public_key(&mut self, path: &str, value: Option<&String>) -> Option<PublicKey> {
        let value = self.required(
            path,
            value,
            "the peer's public key, as printed by `townlink pubkey` or `wg pubkey`",
        )?;
        value
            .parse::<PublicKey>()
            .map_err(|e| {
                self.push(
                    path,
                    format!("key {e}"),
                    Some("copy the 44-character key again, with its trailing '='"),
                )
            })
            .ok()
    }

    /// A file holding a secret: it must exist and be readable by its owner only.
    /// `create`: how to make it, the hint when it is missing.
    pub(super) fn secret_file(&mut self, path: &str, file: &Path, create: &str) -> bool {
        let shown = file.display();
        let meta = match std::fs::metadata(file) {
            Ok(m) => m,
            Err(e) => {
                self.push(path, format!("cannot read {shown}: {e}"), Some(create));
                return false;
            }
        };
        if meta.permissions().mode() & 0o077 != 0 {
            self.push(
                path,
                format!(
                    "{shown} is readable by others (mode {:04o})",
                    meta.permissions().mode() & 0o7777
                ),
                Some(&format!("chmod 600 {shown}")),
            );
            return false;
        }
        true
    }

    pub(super) fn private_key(
        &mut self,
        path: &str,
        value: Option<&String>,
        base: &Path,
    ) -> Option<PrivateKey> {
        let value = self.required(
            path,
            value,
            "point to a file made by `townlink genkey > FILE` (mode 0600)",
        )?;
        let file = base.join(value);
        let create = format!("create it: umask 077; townlink genkey > {}", file.display());
        if !self.secret_file(path, &file, &create) {
            return None;
        }
        let shown = file.display();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                self.push(path, format!("cannot read {shown}: {e}"), None);
                return None;
            }
        };
        match text.parse::<PrivateKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                // Never echo the file's content: it is meant to be a secret.
                self.push(
                    path,
                    format!("{shown} does not hold a WireGuard private key: the content {e}"),
                    Some("generate one with: umask 077; townlink genkey > FILE"),
                );
                None
            }
        }
    }

    /// A duration such as "100ms", "20s", "5m", within bounds.
    pub(super) fn duration(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let Some(text) = value else {
            return Some(default);
        };
        let d = match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(_) => {
                self.push(
                    path,
                    format!("{text:?} is not a duration"),
                    Some("write a number with a unit, e.g. \"300ms\", \"20s\", \"5m\""),
                );
                return None;
            }
        };
        if d < min || d > max {
            self.push(
                path,
                format!(
                    "{text} is out of range {}..={}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
                None,
            );
            return None;
        }
        Some(d)
    }

    pub(super) fn fingerprint(&mut self, path: &str, value: &str) -> Option<Fingerprint> {
        value
            .parse::<Fingerprint>()
            .map_err(|e| self.push(path, e, None))
            .ok()
    }
}
