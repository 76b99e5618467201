//! `townlink join`: the annex's side of enrollment.
//!
//! Order, so that nothing is left half-done: check that nothing would be
//! overwritten; generate the WireGuard key and the probe certificate
//! locally and write them (mode 0600 for the keys); ask the hub; on a
//! refusal remove the new files again; on success write the config last
//! (atomically), so that a config never points at missing keys.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::token::Token;
use super::{JoinRequest, JoinResponse, Settings, MAX_MESSAGE};
use crate::config::{Endpoint, InterfaceName};
use crate::fsutil;
use crate::keys::PrivateKey;
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
    /// The config is complete (uplinks given) and passed the check.
    pub complete: bool,
}

/// Runs the whole join.
pub async fn join(token: &Token, opts: &JoinOptions) -> Result<Joined, JoinError> {
    let dir = &opts.dir;
    let files = [CONFIG_FILE, KEY_FILE, CERT_FILE, CERT_KEY_FILE].map(|f| dir.join(f));
    let existing: Vec<String> = files
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() && !opts.force {
        return Err(JoinError::Usage(format!(
            "{} already exist: this router seems enrolled; use --force to replace them (the \
             old site's keys are lost), or --dir for another directory",
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
    std::fs::create_dir_all(dir).map_err(|source| JoinError::File {
        what: "cannot create",
        path: dir.clone(),
        source,
    })?;

    // Local keys: the private key never leaves this router.
    let key = PrivateKey::generate();
    let identity = tls::Identity::generate(token.site.as_str()).map_err(JoinError::Usage)?;
    let write = |name: &str, content: &[u8], mode: u32| {
        let path = dir.join(name);
        fsutil::write_atomic(&path, content, mode).map_err(|source| JoinError::File {
            what: "cannot write",
            path,
            source,
        })
    };
    let remove_new = || {
        for f in [KEY_FILE, CERT_FILE, CERT_KEY_FILE] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    };
    let written = (|| {
        write(
            KEY_FILE,
            format!("{}\n", key.to_base64_secret()).as_bytes(),
            0o600,
        )?;
        write(CERT_KEY_FILE, identity.key_pem_secret().as_bytes(), 0o600)?;
        write(CERT_FILE, identity.cert_pem().as_bytes(), 0o644)
    })();
    if let Err(e) = written {
        remove_new();
        return Err(e);
    }

    let request = JoinRequest {
        site: token.site.to_string(),
        secret: hex::encode(token.secret.expose()),
        public_key: key.public_key().to_string(),
    };
    let answer = ask_hub(token, &identity, &request).await;
    let settings = match answer {
        Ok(JoinResponse::Joined(settings)) => settings,
        Ok(JoinResponse::Refused { reason }) => {
            remove_new();
            return Err(JoinError::Refused(reason));
        }
        Err(e) => {
            remove_new();
            return Err(e);
        }
    };
    let text = config_text(token, &settings, opts);
    let config = dir.join(CONFIG_FILE);
    let complete = !opts.uplinks.is_empty();
    if complete {
        if let Err(problems) = crate::config::parse(&text, dir) {
            // Our own text: a failure here is a bug, but say what it is.
            let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            tracing::error!(problems = %shown.join("; "), "the written config does not pass the check");
        }
    }
    fsutil::write_atomic(&config, text.as_bytes(), 0o644).map_err(|source| JoinError::File {
        what: "joined, but cannot write the config",
        path: config.clone(),
        source,
    })?;
    Ok(Joined {
        config,
        settings,
        complete,
    })
}

/// One exchange with the hub, trying each endpoint of the token in turn.
async fn ask_hub(
    token: &Token,
    identity: &tls::Identity,
    request: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    let crypto = tls::enroll_client_config(identity, token.hub_fingerprint)
        .map_err(|e| JoinError::Usage(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| JoinError::Usage(e.to_string()))?,
    ));
    client.transport_config(Arc::new(responder::transport()));
    let mut errors = Vec::new();
    for text in &token.endpoints {
        let hub = match Endpoint::parse(text) {
            Ok(e) => Endpoint {
                host: e.host,
                port: token.probe_port,
            },
            Err(e) => {
                errors.push(format!("{text}: {e}"));
                continue;
            }
        };
        let addr = match hub.resolve().await {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("{hub}: {e}"));
                continue;
            }
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(addr, client.clone(), request)).await
        {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {EXCHANGE_TIMEOUT:?}")),
        }
    }
    Err(JoinError::Unreachable(format!(
        "{} (check the uplink and that UDP port {} of the hub is open)",
        errors.join("; "),
        token.probe_port
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

/// The annex's config, from the token and the hub's settings.
pub fn config_text(token: &Token, s: &Settings, opts: &JoinOptions) -> String {
    let mut t = String::new();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(
        t,
        "# Written by `townlink join` at {now} for site {}.\n\
         # Check it with: townlink check -c {}\n\
         # Every key is described in docs/configuration.md.\n",
        s.site,
        opts.dir.join(CONFIG_FILE).display()
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
    let _ = writeln!(
        t,
        "[[hub]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}\"\naddress = \"{}\"\nroutes = {}\nkeepalive = {}\nfingerprint = \"{}\"\nprobe_port = {}\n",
        s.hub_name,
        token.hub_public_key,
        token.endpoints.first().map(String::as_str).unwrap_or_default(),
        s.hub_address,
        quoted_list(&s.routes),
        s.keepalive,
        token.hub_fingerprint,
        token.probe_port
    );
    if opts.uplinks.is_empty() {
        let _ = writeln!(
            t,
            "# Name this router's uplinks, preferred first, then run `townlink check`:\n\
             # [[uplink]]\n# name = \"fiber\"\n# interface = \"eth1\"\n\
             # [[uplink]]\n# name = \"lte\"\n# interface = \"wwan0\"\n# metered = true\n"
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
    use super::*;
    use crate::probe::tls::Fingerprint;

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
            endpoints: vec!["hub.example.net:51820".into()],
            probe_port: 51821,
            hub_public_key: PrivateKey::generate().public_key(),
            hub_fingerprint: Fingerprint::from_bytes([3; 32]),
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
        let text = config_text(&token, &settings, &opts);
        let config =
            crate::config::parse(&text, dir.path()).unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        let crate::config::Role::Annex(a) = &config.role else {
            panic!("annex expected")
        };
        assert_eq!(a.name.as_str(), "annex-9");
        assert_eq!(a.hubs[0].fingerprint, token.hub_fingerprint);
        assert!(a.uplinks[1].metered);
        assert_eq!(config.tunnel.address, settings.address);
        // Without uplinks the config says what is left to do.
        let bare = JoinOptions {
            uplinks: vec![],
            ..opts
        };
        assert!(config_text(&token, &settings, &bare).contains("# Name this router's uplinks"));
    }
}
