//! `townlink join`: the annex's side of enrollment.
//!
//! Order, so that a working annex is never destroyed and nothing is left
//! half-done:
//! 1. check that nothing would be overwritten (unless `--force`);
//! 2. generate the WireGuard key and the probe certificate locally and
//!    write them under *new* names (`private.key.new`, `probe.key.new`,
//!    `probe.crt.new`, keys mode 0600), then a marker `join.pending` that
//!    ties them to the token (its site and secret hash);
//! 3. ask the hub;
//! 4. refused: remove the new files; the old config and keys were never
//!    touched. No answer (unreachable, or the answer was lost): keep them,
//!    so that the same command, run again, asks with the same keys (the
//!    hub answers the same token with the same keys again);
//! 5. accepted: write `townlink.toml.new`, mark the marker accepted, then
//!    rename each new file over the old one (atomic renames, key files
//!    first, the config last) and remove the marker. Interrupted there, the
//!    same command run again asks the hub again and finishes the switch.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::token::Token;
use super::{JoinRequest, JoinResponse, Settings, MAX_MESSAGE};
use crate::config::{Endpoint, InterfaceName};
use crate::fingerprint::Fingerprint;
use crate::fsutil;
use crate::keys::{PrivateKey, PublicKey};
use crate::probe::{responder, tls};
use crate::sites::Name;

/// The files `join` writes in its directory.
pub const CONFIG_FILE: &str = "townlink.toml";
pub const KEY_FILE: &str = "private.key";
pub const CERT_FILE: &str = "probe.crt";
pub const CERT_KEY_FILE: &str = "probe.key";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// `--uplink NAME=INTERFACE[,gateway=IP][,metered]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    pub name: Name,
    pub interface: InterfaceName,
    pub gateway: Option<IpAddr>,
    pub metered: bool,
}

impl FromStr for UplinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let (name, interface) = first
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=INTERFACE, e.g. fiber=eth1"))?;
        let name = Name::new(name).map_err(|e| format!("{s:?}: uplink name {e}"))?;
        let interface =
            InterfaceName::new(interface).map_err(|e| format!("{s:?}: interface {e}"))?;
        let mut spec = UplinkSpec {
            name,
            interface,
            gateway: None,
            metered: false,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("gateway", ip)) => {
                    spec.gateway = Some(
                        ip.parse()
                            .map_err(|_| format!("{s:?}: gateway {ip:?} is not an IP address"))?,
                    )
                }
                None if part == "metered" => spec.metered = true,
                _ => {
                    return Err(format!(
                        "{s:?}: unknown option {part:?} (use gateway=IP or metered)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// Whether this router has an interface of that name (in this network
/// namespace). `join` only warns: a 4G modem's interface may come later.
pub fn interface_exists(name: &InterfaceName) -> bool {
    let Ok(c) = std::ffi::CString::new(name.as_str()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The warning for each uplink whose interface this router does not have.
pub fn missing_interface_warnings(uplinks: &[UplinkSpec]) -> Vec<String> {
    uplinks
        .iter()
        .filter(|u| !interface_exists(&u.interface))
        .map(|u| {
            format!(
                "warning: --uplink {}={}: this router has no interface {} (`ip -br link` \
                 lists its interfaces); `townlink run` refuses to start until it exists: join \
                 again with the right name (--force), or correct [[uplink]] interface in the \
                 written config",
                u.name, u.interface, u.interface
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub dir: PathBuf,
    pub interface: InterfaceName,
    pub uplinks: Vec<UplinkSpec>,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Usage(String),
    #[error("the hub refused: {0}")]
    Refused(String),
    #[error("cannot reach the hub's enrollment service: {0}")]
    Unreachable(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `join` did.
#[derive(Debug, Clone)]
pub struct Joined {
    pub config: PathBuf,
    pub settings: Settings,
    /// The hubs written into the config, the main hub first.
    pub hubs: Vec<JoinedHub>,
    /// The config is complete (uplinks given) and passed the check.
    pub complete: bool,
}

/// The new files of a join in progress, and its marker.
const NEW: &str = ".new";
pub const PENDING_FILE: &str = "join.pending";

/// What `join.pending` says: the new keys belong to this token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pending {
    site: String,
    /// SHA-256 of the token's secret (as the hub stores it).
    secret_hash: String,
    /// The hub accepted the keys: the switch to them has begun.
    accepted: bool,
}

/// Runs the whole join.
pub async fn join(token: &Token, opts: &JoinOptions) -> Result<Joined, JoinError> {
    join_with(token, opts, |identity, request| async move {
        ask_hub(token, &identity, &request).await
    })
    .await
}

fn file_error(what: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> JoinError {
    move |source| JoinError::File { what, path, source }
}

/// The new keys of an earlier attempt with this token, if complete.
fn pending_keys(dir: &Path, token: &Token) -> Option<(Pending, PrivateKey, tls::Identity)> {
    let text = std::fs::read_to_string(dir.join(PENDING_FILE)).ok()?;
    let pending: Pending = serde_json::from_str(&text).ok()?;
    if pending.site != token.site.as_str() || pending.secret_hash != token.secret.hash() {
        return None;
    }
    // Once accepted, the switch may have moved some of them already.
    let file = |f: &str| {
        let new = dir.join(format!("{f}{NEW}"));
        if pending.accepted && !new.exists() {
            dir.join(f)
        } else {
            new
        }
    };
    let key: PrivateKey = std::fs::read_to_string(file(KEY_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let identity = tls::Identity::load(&file(CERT_FILE), &file(CERT_KEY_FILE)).ok()?;
    Some((pending, key, identity))
}

/// Removes the new files and the marker of an attempt.
fn remove_pending(dir: &Path) {
    for f in [KEY_FILE, CERT_FILE, CERT_KEY_FILE, CONFIG_FILE] {
        let _ = std::fs::remove_file(dir.join(format!("{f}{NEW}")));
    }
    let _ = std::fs::remove_file(dir.join(PENDING_FILE));
}

/// The whole join, with the exchange with the hub given (tests play the hub).
pub(crate) async fn join_with<F, Fut>(
    token: &Token,
    opts: &JoinOptions,
    ask: F,
) -> Result<Joined, JoinError>
where
    F: FnOnce(tls::Identity, JoinRequest) -> Fut,
    Fut: std::future::Future<Output = Result<JoinResponse, JoinError>>,
{
    let dir = &opts.dir;
    let files = [CONFIG_FILE, KEY_FILE, CERT_FILE, CERT_KEY_FILE].map(|f| dir.join(f));
    let existing: Vec<String> = files
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    // An accepted join whose switch was interrupted is finished without --force.
    let resuming = pending_keys(dir, token).is_some_and(|(p, ..)| p.accepted);
    if !existing.is_empty() && !opts.force && !resuming {
        return Err(JoinError::Usage(format!(
            "{} already exist: this router seems enrolled; use --force to replace them once the \
             hub accepts the new keys (until then the old ones stay), or --dir for another \
             directory",
            existing.join(", ")
        )));
    }
    let mut names = std::collections::HashSet::new();
    for u in &opts.uplinks {
        if !names.insert(u.name.as_str()) {
            return Err(JoinError::Usage(format!(
                "uplink {} is given twice",
                u.name
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(file_error("cannot create", dir.clone()))?;
    let write = |name: &str, content: &[u8], mode: u32| {
        let path = dir.join(name);
        fsutil::write_atomic(&path, content, mode).map_err(file_error("cannot write", path))
    };
    let new = |f: &str| format!("{f}{NEW}");

    // Local keys, under new names: the private key never leaves this
    // router, and the old keys stay until the hub accepted the new ones.
    let (key, identity) = match pending_keys(dir, token) {
        Some((_, key, identity)) => {
            tracing::info!("using the keys of an earlier attempt with this token");
            (key, identity)
        }
        None => {
            remove_pending(dir);
            let key = PrivateKey::generate();
            let identity =
                tls::Identity::generate(token.site.as_str()).map_err(JoinError::Usage)?;
            let pending = Pending {
                site: token.site.to_string(),
                secret_hash: token.secret.hash(),
                accepted: false,
            };
            let written = (|| {
                write(
                    &new(KEY_FILE),
                    format!("{}\n", key.to_base64_secret()).as_bytes(),
                    0o600,
                )?;
                write(
                    &new(CERT_KEY_FILE),
                    identity.key_pem_secret().as_bytes(),
                    0o600,
                )?;
                write(&new(CERT_FILE), identity.cert_pem().as_bytes(), 0o644)?;
                // Last: its presence says the new keys are complete.
                write(
                    PENDING_FILE,
                    &serde_json::to_vec(&pending).expect("serializes"),
                    0o600,
                )
            })();
            if let Err(e) = written {
                remove_pending(dir);
                return Err(e);
            }
            (key, identity)
        }
    };

    let request = JoinRequest {
        site: token.site.to_string(),
        secret: hex::encode(token.secret.expose()),
        public_key: key.public_key().to_string(),
    };
    let settings = match ask(identity, request).await {
        Ok(JoinResponse::Joined(settings)) => settings,
        Ok(JoinResponse::Refused { reason }) => {
            remove_pending(dir);
            return Err(JoinError::Refused(reason));
        }
        // Kept for the retry: the hub may have recorded these keys.
        Err(JoinError::Unreachable(m)) => {
            return Err(JoinError::Unreachable(format!(
                "{m}; nothing was changed in {}: run the same command again, it asks with the \
                 same new keys",
                dir.display()
            )))
        }
        Err(e) => return Err(e),
    };
    // Text from the network: checked whole before a byte is written. The
    // new keys stay for a retry (the hub has them).
    let hubs = hubs(token, &settings, &opts.interface).map_err(|e| {
        JoinError::Usage(format!(
            "the hub's answer cannot make a config: {e}; nothing was changed in {}",
            dir.display()
        ))
    })?;
    let text = config_text(&hubs, &settings, opts);
    let config = dir.join(CONFIG_FILE);
    let complete = !opts.uplinks.is_empty();
    if complete {
        if let Err(problems) = crate::config::parse(&text, dir) {
            // Our own text: a failure here is a bug, but say what it is.
            let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            tracing::error!(problems = %shown.join("; "), "the written config does not pass the check");
        }
    }
    // The switch: config written, marker "accepted", then the renames.
    let joined_but = "joined, but cannot write";
    fsutil::write_atomic(&dir.join(new(CONFIG_FILE)), text.as_bytes(), 0o644)
        .map_err(file_error(joined_but, dir.join(new(CONFIG_FILE))))?;
    let accepted = Pending {
        site: token.site.to_string(),
        secret_hash: token.secret.hash(),
        accepted: true,
    };
    write(
        PENDING_FILE,
        &serde_json::to_vec(&accepted).expect("serializes"),
        0o600,
    )?;
    for f in [KEY_FILE, CERT_KEY_FILE, CERT_FILE, CONFIG_FILE] {
        let from = dir.join(new(f));
        // Absent: moved by an interrupted switch of this same join.
        if from.exists() {
            std::fs::rename(&from, dir.join(f))
                .map_err(file_error("joined, but cannot switch to", from))?;
        }
    }
    fsutil::sync_dir(dir).map_err(file_error(joined_but, dir.clone()))?;
    let _ = std::fs::remove_file(dir.join(PENDING_FILE));
    Ok(Joined {
        config,
        settings,
        hubs,
        complete,
    })
}

/// One exchange with a hub of the token: each hub in turn (pinned to its
/// own certificate), each of its endpoints in turn.
async fn ask_hub(
    token: &Token,
    identity: &tls::Identity,
    request: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    let mut errors = Vec::new();
    for hub in &token.hubs {
        let crypto = tls::enroll_client_config(identity, hub.fingerprint)
            .map_err(|e| JoinError::Usage(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                .map_err(|e| JoinError::Usage(e.to_string()))?,
        ));
        client.transport_config(Arc::new(responder::transport()));
        for text in &hub.endpoints {
            let probe = match Endpoint::parse(text) {
                Ok(e) => Endpoint {
                    host: e.host,
                    port: hub.probe_port,
                },
                Err(e) => {
                    errors.push(format!("{text}: {e}"));
                    continue;
                }
            };
            let addr = match probe.resolve().await {
                Ok(a) => a,
                Err(e) => {
                    errors.push(format!("{probe}: {e}"));
                    continue;
                }
            };
            match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(addr, client.clone(), request))
                .await
            {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer within {EXCHANGE_TIMEOUT:?}")),
            }
        }
    }
    let ports: Vec<String> = token
        .hubs
        .iter()
        .map(|h| h.probe_port.to_string())
        .collect();
    Err(JoinError::Unreachable(format!(
        "{} (check the uplink and that UDP port {} of the hub is open)",
        errors.join("; "),
        ports.join("/")
    )))
}

async fn exchange(
    addr: SocketAddr,
    client: quinn::ClientConfig,
    request: &JoinRequest,
) -> Result<JoinResponse, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(client, addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("no QUIC handshake within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    send.write_all(&body).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = recv
        .read_to_end(MAX_MESSAGE)
        .await
        .map_err(|e| e.to_string())?;
    conn.close(0u8.into(), b"thanks");
    endpoint.wait_idle().await;
    serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

fn quoted_list<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// One hub of the annex's config (a `[[hub]]` table), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedHub {
    pub name: Name,
    /// The first of the hub's endpoints (an annex reaches a hub at one).
    pub endpoint: Endpoint,
    pub public_key: PublicKey,
    pub fingerprint: Fingerprint,
    pub address: IpAddr,
    pub probe_port: u16,
    pub priority: u32,
    /// Its tunnel device on the annex: `interface` for the first hub, then
    /// the next numbers (`tl0`, `tl1`, ...).
    pub interface: InterfaceName,
}

/// The tunnel device of the hub at `index`: `first` itself for hub 0;
/// then its trailing number counted up (`tl0` → `tl1`), or the index
/// appended to a name without one (`wan` → `wan1`).
pub fn hub_interface(first: &InterfaceName, index: usize) -> Result<InterfaceName, String> {
    if index == 0 {
        return Ok(first.clone());
    }
    let text = first.as_str();
    let stem = text.trim_end_matches(|c: char| c.is_ascii_digit());
    let number = match &text[stem.len()..] {
        "" => index as u64,
        digits => digits
            .parse::<u64>()
            .map_err(|_| format!("{text}: its number is too large"))?
            .saturating_add(index as u64),
    };
    let name = format!("{stem}{number}");
    InterfaceName::new(&name).map_err(|e| {
        format!("the tunnel device of hub {index} would be {name:?}, which {e}: choose a shorter --interface")
    })
}

/// The hubs of the annex's config, from the hub's answer: its `hubs`, or
/// for an older hub the token's one hub. Every value is checked (it is
/// text from the network, written into a config): names and keys, the
/// first hub is one the token pins (the one that answered), no two hubs
/// share a name, key,
/// address or device.
pub fn hubs(
    token: &Token,
    s: &Settings,
    interface: &InterfaceName,
) -> Result<Vec<JoinedHub>, String> {
    const MAX_HUBS: usize = 16;
    if s.hubs.is_empty() {
        let name = Name::new(&s.hub_name).map_err(|e| format!("hub name {e}"))?;
        let issuer = token.issuer();
        let text = issuer
            .endpoints
            .first()
            .ok_or_else(|| "the token names no hub endpoint".to_string())?;
        let endpoint = Endpoint::parse(text).map_err(|e| format!("hub endpoint {text:?}: {e}"))?;
        return Ok(vec![JoinedHub {
            name,
            endpoint,
            public_key: issuer.public_key,
            fingerprint: issuer.fingerprint,
            address: s.hub_address,
            probe_port: issuer.probe_port,
            priority: 0,
            interface: interface.clone(),
        }]);
    }
    if s.hubs.len() > MAX_HUBS {
        return Err(format!("{} hubs (at most {MAX_HUBS})", s.hubs.len()));
    }
    let mut out: Vec<JoinedHub> = Vec::new();
    for (i, h) in s.hubs.iter().enumerate() {
        let name = Name::new(&h.name).map_err(|e| format!("hub {i}: name {e}"))?;
        let text = h
            .endpoints
            .first()
            .ok_or_else(|| format!("hub {name}: no endpoint"))?;
        let endpoint =
            Endpoint::parse(text).map_err(|e| format!("hub {name}: endpoint {text:?}: {e}"))?;
        let public_key: PublicKey = h
            .public_key
            .parse()
            .map_err(|e| format!("hub {name}: public key {e}"))?;
        let fingerprint: Fingerprint = h
            .fingerprint
            .parse()
            .map_err(|e| format!("hub {name}: fingerprint: {e}"))?;
        if h.probe_port == 0 {
            return Err(format!("hub {name}: probe port 0"));
        }
        if h.priority > 1000 {
            return Err(format!("hub {name}: priority {} (0 to 1000)", h.priority));
        }
        let of_token =
            |t: &super::token::TokenHub| t.public_key == public_key && t.fingerprint == fingerprint;
        if i == 0 && !token.hubs.iter().any(of_token) {
            return Err(format!(
                "its first hub ({name}) is not the hub of the token (key and certificate differ)"
            ));
        }
        if h.address == s.address.addr() || !s.address.contains(&h.address) {
            return Err(format!(
                "hub {name}: tunnel address {} is not another address of {}",
                h.address,
                s.address.trunc()
            ));
        }
        if let Some(o) = out
            .iter()
            .find(|o| o.name == name || o.public_key == public_key || o.address == h.address)
        {
            return Err(format!(
                "hubs {} and {name} share a name, key or address",
                o.name
            ));
        }
        out.push(JoinedHub {
            name,
            endpoint,
            public_key,
            fingerprint,
            address: h.address,
            probe_port: h.probe_port,
            priority: h.priority,
            interface: hub_interface(interface, i)?,
        });
    }
    Ok(out)
}

/// The annex's config, from the checked hubs ([`hubs`]) and the hub's
/// settings.
pub fn config_text(hubs: &[JoinedHub], s: &Settings, opts: &JoinOptions) -> String {
    let mut t = String::new();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(
        t,
        "# Written by `townlink join` at {now} for site {}.\n\
         # Check it with: townlink check -c {}\n\
         # Every key is described in {}.\n",
        s.site,
        opts.dir.join(CONFIG_FILE).display(),
        crate::config::CONFIGURATION_DOC
    );
    let _ = writeln!(t, "role = \"annex\"\nname = \"{}\"", s.site);
    let _ = writeln!(t, "lan = {}\n", quoted_list(&s.lan));
    let _ = writeln!(
        t,
        "[tunnel]\ninterface = \"{}\"\nprivate_key_file = \"{KEY_FILE}\"\naddress = \"{}\"\n",
        opts.interface, s.address
    );
    let _ = writeln!(
        t,
        "[probe]\ncertificate_file = \"{CERT_FILE}\"\nkey_file = \"{CERT_KEY_FILE}\"\n"
    );
    if hubs.len() > 1 {
        let _ = writeln!(
            t,
            "# Every hub: the lowest priority is preferred; each has its own tunnel device."
        );
    }
    for h in hubs {
        let _ = writeln!(
            t,
            "[[hub]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}\"\naddress = \"{}\"\nroutes = {}\nkeepalive = {}\nfingerprint = \"{}\"\nprobe_port = {}\npriority = {}\ninterface = \"{}\"\n",
            h.name,
            h.public_key,
            h.endpoint,
            h.address,
            quoted_list(&s.routes),
            s.keepalive,
            h.fingerprint,
            h.probe_port,
            h.priority,
            h.interface
        );
    }
    if opts.uplinks.is_empty() {
        let _ = writeln!(
            t,
            "# Name this router's uplinks, preferred first, then run `townlink check`:\n\
             # [[uplink]]\n# name = \"fiber\"\n# interface = \"eth1\"\n\
             # [[uplink]]\n# name = \"lte\"\n# interface = \"wwan0\"\n# metered = true\n"
        );
    }
    for check in &s.checks {
        let _ = writeln!(
            t,
            "# From the hub's [enrollment] check: shown in `townlink status`.\n\
             [[check]]\nname = \"{}\"\ntcp = \"{}\"\n",
            check.name, check.tcp
        );
    }
    for (i, u) in opts.uplinks.iter().enumerate() {
        let _ = writeln!(
            t,
            "[[uplink]]\nname = \"{}\"\ninterface = \"{}\"\npriority = {i}",
            u.name, u.interface
        );
        if let Some(gw) = u.gateway {
            let _ = writeln!(t, "gateway = \"{gw}\"");
        }
        if u.metered {
            let _ = writeln!(t, "metered = true");
        }
        t.push('\n');
    }
    t
}

/// A token from the command line, with the reason when it is unusable.
pub fn read_token(text: &str) -> Result<Token, JoinError> {
    Token::decode(text).map_err(|e| JoinError::Usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::token::TokenHub;
    use super::*;

    #[test]
    fn uplink_specs() {
        let u: UplinkSpec = "lte=wwan0,gateway=100.64.1.1,metered".parse().unwrap();
        assert_eq!(u.name.as_str(), "lte");
        assert_eq!(u.interface.as_str(), "wwan0");
        assert_eq!(u.gateway, Some("100.64.1.1".parse().unwrap()));
        assert!(u.metered);
        let u: UplinkSpec = "fiber=eth1".parse().unwrap();
        assert!(!u.metered && u.gateway.is_none());
        for bad in [
            "eth1",
            "Fiber=eth1",
            "fiber=eth1,gateway=x",
            "fiber=eth1,fast",
        ] {
            assert!(bad.parse::<UplinkSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn join_warns_of_an_interface_this_router_does_not_have() {
        let specs: Vec<UplinkSpec> = ["fiber=lo", "lte=tlnosuch0,metered"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let warnings = missing_interface_warnings(&specs);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "warning: --uplink lte=tlnosuch0: this router has no interface tlnosuch0"
            ),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn the_written_config_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate();
        std::fs::write(dir.path().join(KEY_FILE), key.to_base64_secret()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let id = tls::Identity::generate("annex-9").unwrap();
        fsutil::write_atomic(&dir.path().join(CERT_FILE), id.cert_pem().as_bytes(), 0o644).unwrap();
        fsutil::write_atomic(
            &dir.path().join(CERT_KEY_FILE),
            id.key_pem_secret().as_bytes(),
            0o600,
        )
        .unwrap();
        let token = Token {
            hubs: vec![TokenHub {
                endpoints: vec!["hub.example.net:51820".into()],
                probe_port: 51821,
                public_key: PrivateKey::generate().public_key(),
                fingerprint: Fingerprint::from_bytes([3; 32]),
            }],
            site: Name::new("annex-9").unwrap(),
            secret: super::super::token::Secret::generate(),
            expires: 0,
        };
        let settings = Settings {
            site: "annex-9".into(),
            address: "10.99.0.10/24".parse().unwrap(),
            lan: vec!["192.168.9.0/24".parse().unwrap()],
            hub_name: "main".into(),
            hub_address: "10.99.0.1".parse().unwrap(),
            routes: vec!["10.50.0.0/24".parse().unwrap()],
            keepalive: 25,
            checks: vec![crate::config::EnrollmentCheck::parse("10.50.0.10:443", 0).unwrap()],
            hubs: vec![],
        };
        let opts = JoinOptions {
            dir: dir.path().to_path_buf(),
            interface: InterfaceName::new("tl0").unwrap(),
            uplinks: vec![
                "fiber=eth1".parse().unwrap(),
                "lte=wwan0,metered".parse().unwrap(),
            ],
            force: false,
        };
        let text = config_text(
            &hubs(&token, &settings, &opts.interface).unwrap(),
            &settings,
            &opts,
        );
        let config =
            crate::config::parse(&text, dir.path()).unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        let crate::config::Role::Annex(a) = &config.role else {
            panic!("annex expected")
        };
        assert_eq!(a.name.as_str(), "annex-9");
        assert_eq!(a.hubs[0].fingerprint, token.issuer().fingerprint);
        assert!(a.uplinks[1].metered);
        assert_eq!(config.tunnel.address, settings.address);
        // The hub's records check comes with the join (issue 15).
        assert_eq!(config.checks.len(), 1, "{text}");
        assert_eq!(config.checks[0].name.as_str(), "records");
        assert_eq!(config.checks[0].tcp, "10.50.0.10:443".parse().unwrap());
        // Without uplinks the config says what is left to do.
        let bare = JoinOptions {
            uplinks: vec![],
            ..opts
        };
        let one = hubs(&token, &settings, &bare.interface).unwrap();
        assert!(config_text(&one, &settings, &bare).contains("# Name this router's uplinks"));
    }

    /// An annex directory with its key and certificate, as `join` leaves it.
    fn annex_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate();
        fsutil::write_atomic(
            &dir.path().join(KEY_FILE),
            key.to_base64_secret().as_bytes(),
            0o600,
        )
        .unwrap();
        let id = tls::Identity::generate("annex-9").unwrap();
        fsutil::write_atomic(&dir.path().join(CERT_FILE), id.cert_pem().as_bytes(), 0o644).unwrap();
        fsutil::write_atomic(
            &dir.path().join(CERT_KEY_FILE),
            id.key_pem_secret().as_bytes(),
            0o600,
        )
        .unwrap();
        dir
    }

    /// The hub's answer naming the token's hub and a backup hub.
    fn two_hubs(token: &Token) -> Settings {
        Settings {
            hubs: vec![
                super::super::HubSettings {
                    name: "main".into(),
                    endpoints: vec!["hub.example.net:51820".into(), "198.51.100.7:51820".into()],
                    public_key: token.issuer().public_key.to_string(),
                    fingerprint: token.issuer().fingerprint.to_string(),
                    address: "10.99.0.1".parse().unwrap(),
                    probe_port: 51821,
                    priority: 0,
                },
                super::super::HubSettings {
                    name: "backup".into(),
                    endpoints: vec!["hub-backup.example.net:51820".into()],
                    public_key: PrivateKey::generate().public_key().to_string(),
                    fingerprint: Fingerprint::from_bytes([4; 32]).to_string(),
                    address: "10.99.0.254".parse().unwrap(),
                    probe_port: 51900,
                    priority: 1,
                },
            ],
            ..settings()
        }
    }

    #[test]
    fn the_written_config_has_every_hub_each_with_its_device() {
        let dir = annex_dir();
        let token = token();
        let settings = two_hubs(&token);
        let opts = options(dir.path(), false);
        let hubs = hubs(&token, &settings, &opts.interface).unwrap();
        let text = config_text(&hubs, &settings, &opts);
        let config =
            crate::config::parse(&text, dir.path()).unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        let crate::config::Role::Annex(a) = &config.role else {
            panic!("annex expected")
        };
        assert_eq!(a.hubs.len(), 2, "{text}");
        let (main, backup) = (&a.hubs[0], &a.hubs[1]);
        assert_eq!(main.name.as_str(), "main");
        assert_eq!(main.public_key, token.issuer().public_key);
        assert_eq!(main.fingerprint, token.issuer().fingerprint);
        assert_eq!(main.endpoint.to_string(), "hub.example.net:51820");
        assert_eq!(main.interface.as_str(), "tl0");
        assert_eq!(main.priority, 0);
        assert_eq!(backup.name.as_str(), "backup");
        assert_eq!(backup.public_key.to_string(), settings.hubs[1].public_key);
        assert_eq!(backup.fingerprint.to_string(), settings.hubs[1].fingerprint);
        assert_eq!(backup.endpoint.to_string(), "hub-backup.example.net:51820");
        assert_eq!(backup.address.to_string(), "10.99.0.254");
        assert_eq!(backup.probe_port, 51900);
        assert_eq!(backup.priority, 1);
        assert_eq!(backup.interface.as_str(), "tl1");
        assert_eq!(backup.routes, main.routes);
        assert_eq!(a.preferred_hub().1.name.as_str(), "main");
    }

    #[test]
    fn an_older_hubs_one_hub_answer_is_still_understood() {
        let token = token();
        let old = r#"{"result":"joined","site":"annex-9","address":"10.99.0.10/24","lan":[],
            "hub_name":"main","hub_address":"10.99.0.1","routes":["10.50.0.0/24"],"keepalive":25}"#;
        let JoinResponse::Joined(settings) = serde_json::from_str(old).unwrap() else {
            panic!("joined expected")
        };
        let tl0 = InterfaceName::new("tl0").unwrap();
        let hubs = hubs(&token, &settings, &tl0).unwrap();
        assert_eq!(hubs.len(), 1);
        assert_eq!(hubs[0].public_key, token.issuer().public_key);
        assert_eq!(hubs[0].fingerprint, token.issuer().fingerprint);
        assert_eq!(hubs[0].probe_port, token.issuer().probe_port);
        assert_eq!(hubs[0].address.to_string(), "10.99.0.1");
        // And an older annex reads a new hub's answer (it ignores `hubs`).
        let new = serde_json::to_value(JoinResponse::Joined(two_hubs(&token))).unwrap();
        assert_eq!(new["hub_name"], "main");
        assert_eq!(new["hub_address"], "10.99.0.1");
    }

    #[test]
    fn an_answer_that_cannot_make_a_config_is_refused_with_its_reason() {
        let token = token();
        let tl0 = InterfaceName::new("tl0").unwrap();
        let bad = |change: &dyn Fn(&mut Settings)| {
            let mut s = two_hubs(&token);
            change(&mut s);
            hubs(&token, &s, &tl0).unwrap_err()
        };
        assert!(bad(&|s| s.hubs[1].name = "x\"\ninjected = 1".into()).contains("hub 1: name"));
        assert!(bad(&|s| s.hubs[1].public_key = "AAAA".into()).contains("backup: public key"));
        assert!(
            bad(&|s| s.hubs[1].fingerprint = "sha256:12".into()).contains("backup: fingerprint")
        );
        assert!(bad(&|s| s.hubs[1].endpoints.clear()).contains("backup: no endpoint"));
        assert!(bad(&|s| s.hubs[1].endpoints[0] = "a b:1".into()).contains("backup: endpoint"));
        assert!(bad(&|s| s.hubs[1].address = "10.99.1.1".parse().unwrap())
            .contains("is not another address of 10.99.0.0/24"));
        assert!(bad(&|s| s.hubs[1].address = "10.99.0.10".parse().unwrap())
            .contains("is not another address"));
        assert!(bad(&|s| s.hubs[1].name = "main".into()).contains("share a name"));
        assert!(bad(&|s| s.hubs.swap(0, 1)).contains("is not the hub of the token"));
        // A device name that would be too long says which option to change.
        let long = InterfaceName::new("townlinktunnel9").unwrap();
        let e = hubs(&token, &two_hubs(&token), &long).unwrap_err();
        assert!(e.contains("--interface"), "{e}");
    }

    #[tokio::test]
    async fn an_unusable_answer_changes_nothing_and_keeps_the_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        enrolled(dir.path());
        let before = snapshot(dir.path());
        let token = token();
        let opts = options(dir.path(), true);
        let mut answer = two_hubs(&token);
        answer.hubs[1].name = "backup\"\n[[hub]]".into();
        let e = join_with(&token, &opts, |_, _| async move {
            Ok(JoinResponse::Joined(answer))
        })
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the hub's answer cannot make a config: hub 1: name"),
            "{e}"
        );
        // The working annex as it was; the new keys wait for a retry.
        let now = snapshot(dir.path());
        for (name, content) in &before {
            assert!(
                now.contains(&(name.clone(), content.clone())),
                "{name} changed"
            );
        }
        assert!(dir.path().join(PENDING_FILE).exists());
        assert!(!dir.path().join(format!("{CONFIG_FILE}{NEW}")).exists());
    }

    #[test]
    fn each_hub_gets_the_next_device_name() {
        let name = |s: &str, i: usize| {
            hub_interface(&InterfaceName::new(s).unwrap(), i).map(|n| n.to_string())
        };
        assert_eq!(name("tl0", 0).unwrap(), "tl0");
        assert_eq!(name("tl0", 1).unwrap(), "tl1");
        assert_eq!(name("wg9", 2).unwrap(), "wg11");
        assert_eq!(name("wan", 1).unwrap(), "wan1");
    }

    fn token() -> Token {
        Token {
            hubs: vec![TokenHub {
                endpoints: vec!["hub.example.net:51820".into()],
                probe_port: 51821,
                public_key: PrivateKey::generate().public_key(),
                fingerprint: Fingerprint::from_bytes([3; 32]),
            }],
            site: Name::new("annex-9").unwrap(),
            secret: super::super::token::Secret::generate(),
            expires: 0,
        }
    }

    fn settings() -> Settings {
        Settings {
            site: "annex-9".into(),
            address: "10.99.0.10/24".parse().unwrap(),
            lan: vec![],
            hub_name: "main".into(),
            hub_address: "10.99.0.1".parse().unwrap(),
            routes: vec!["10.50.0.0/24".parse().unwrap()],
            keepalive: 25,
            checks: vec![],
            hubs: vec![],
        }
    }

    fn options(dir: &Path, force: bool) -> JoinOptions {
        JoinOptions {
            dir: dir.to_path_buf(),
            interface: InterfaceName::new("tl0").unwrap(),
            uplinks: vec!["fiber=eth1".parse().unwrap()],
            force,
        }
    }

    /// Every file of `dir` with its content.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    /// A working annex's files (their content does not matter here).
    fn enrolled(dir: &Path) {
        for (f, text) in [
            (CONFIG_FILE, "role = \"annex\"\n# the working one\n"),
            (KEY_FILE, "old private key\n"),
            (CERT_FILE, "old certificate\n"),
            (CERT_KEY_FILE, "old certificate key\n"),
        ] {
            fsutil::write_atomic(&dir.join(f), text.as_bytes(), 0o600).unwrap();
        }
    }

    #[tokio::test]
    async fn a_refused_forced_join_leaves_the_working_annex_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        enrolled(dir.path());
        let before = snapshot(dir.path());
        let e = join_with(&token(), &options(dir.path(), true), |_, _| async {
            Ok(JoinResponse::Refused {
                reason: "this token was already used".into(),
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(e, JoinError::Refused(_)), "{e}");
        assert_eq!(snapshot(dir.path()), before, "byte for byte, nothing added");
        // Without --force, nothing is even tried.
        let e = join_with(&token(), &options(dir.path(), false), |_, _| async {
            panic!("asked the hub")
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
    }

    #[tokio::test]
    async fn a_lost_answer_is_retried_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        enrolled(dir.path());
        let before = snapshot(dir.path());
        let token = token();
        let opts = options(dir.path(), true);
        let first = std::sync::Mutex::new(None);
        // The hub registered the keys, but its answer never arrived.
        let e = join_with(&token, &opts, |identity, request| {
            *first.lock().unwrap() = Some((request.public_key.clone(), identity.fingerprint()));
            async { Err(JoinError::Unreachable("no answer within 20s".into())) }
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("run the same command again"), "{e}");
        // The working annex is untouched; the new keys wait next to it.
        let now = snapshot(dir.path());
        for (name, content) in &before {
            assert!(
                now.contains(&(name.clone(), content.clone())),
                "{name} changed"
            );
        }
        let (key, fingerprint) = first.lock().unwrap().clone().unwrap();
        let joined = join_with(&token, &opts, |identity, request| {
            assert_eq!(request.public_key, key, "the same WireGuard key");
            assert_eq!(identity.fingerprint(), fingerprint, "the same certificate");
            async { Ok(JoinResponse::Joined(settings())) }
        })
        .await
        .unwrap();
        assert_eq!(joined.settings, settings());
        // Switched: the keys the hub knows, the new config; nothing else left.
        let written: PrivateKey = std::fs::read_to_string(dir.path().join(KEY_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(written.public_key().to_string(), key);
        let id = tls::Identity::load(&dir.path().join(CERT_FILE), &dir.path().join(CERT_KEY_FILE))
            .unwrap();
        assert_eq!(id.fingerprint(), fingerprint);
        let names: Vec<String> = snapshot(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![KEY_FILE, CERT_FILE, CERT_KEY_FILE, CONFIG_FILE]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        );
        use std::os::unix::fs::PermissionsExt;
        for f in [KEY_FILE, CERT_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(std::fs::read_to_string(dir.path().join(CONFIG_FILE))
            .unwrap()
            .contains("address = \"10.99.0.10/24\""));
    }

    #[tokio::test]
    async fn an_interrupted_switch_is_finished_by_the_same_command() {
        let dir = tempfile::tempdir().unwrap();
        let token = token();
        // A fresh annex: the hub accepted, the switch stopped after the key.
        let opts = options(dir.path(), false);
        let _ = join_with(&token, &opts, |_, _| async {
            Err(JoinError::Unreachable("lost".into()))
        })
        .await;
        let marker = Pending {
            site: token.site.to_string(),
            secret_hash: token.secret.hash(),
            accepted: true,
        };
        std::fs::write(
            dir.path().join(PENDING_FILE),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        std::fs::rename(
            dir.path().join(format!("{KEY_FILE}{NEW}")),
            dir.path().join(KEY_FILE),
        )
        .unwrap();
        let key: PrivateKey = std::fs::read_to_string(dir.path().join(KEY_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // private.key exists now, yet no --force is needed to finish.
        join_with(&token, &opts, |_, request| {
            assert_eq!(request.public_key, key.public_key().to_string());
            async { Ok(JoinResponse::Joined(settings())) }
        })
        .await
        .unwrap();
        assert!(dir.path().join(CONFIG_FILE).exists());
        assert!(!dir.path().join(PENDING_FILE).exists());
        assert!(!dir.path().join(format!("{CERT_FILE}{NEW}")).exists());
    }
}
