//! The commands that talk to a running daemon over its control socket
//! (`status`, `site`), and `join`, which talks to the hub.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::SiteCommand;
use crate::config::{self, InterfaceName};
use crate::control::{client, Request, Response};
use crate::enroll::join::{self, JoinOptions, UplinkSpec};
use crate::sites::{SiteInfo, SiteState};
use crate::telemetry::status::when;

/// Exit code when no daemon answers on the control socket.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Sends one request; `Err` carries the exit code to return (after the
/// message is printed).
fn ask(socket: &Path, request: &Request) -> anyhow::Result<Result<Response, ExitCode>> {
    match client::request(socket, request) {
        Ok(Response::Error { message }) => anyhow::bail!("{message}"),
        Ok(r) => Ok(Ok(r)),
        Err(e @ client::ClientError::NotRunning { .. }) => {
            eprintln!("{e}");
            Ok(Err(ExitCode::from(EXIT_NOT_RUNNING)))
        }
        Err(e) => Err(e.into()),
    }
}

fn unexpected(r: Response) -> anyhow::Error {
    anyhow::anyhow!("the daemon answered something unexpected: {r:?}")
}

pub(super) fn status(
    config: &Path,
    socket: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let socket = socket.unwrap_or_else(|| config::control_socket(config));
    match ask(&socket, &Request::Status)? {
        Ok(Response::Status(status)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render(crate::telemetry::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => Err(unexpected(other)),
        Err(code) => Ok(code),
    }
}

fn describe(s: &SiteInfo, now: f64) -> String {
    let lan: Vec<String> = s.lan.iter().map(|l| l.to_string()).collect();
    let lan = if lan.is_empty() {
        "-".into()
    } else {
        lan.join(",")
    };
    let detail = match s.state {
        SiteState::Pending => s
            .expires
            .map(|t| {
                let stamp = crate::telemetry::stamp(t);
                if (t as f64) < now {
                    format!("token expired at {stamp}")
                } else {
                    format!("token valid until {stamp}")
                }
            })
            .unwrap_or_default(),
        SiteState::Revoked => s
            .revoked_at
            .map(|t| format!("revoked {}", when(t as f64, now)))
            .unwrap_or_default(),
        SiteState::Configured => s
            .last_handshake
            .map(|t| format!("handshake {}", when(t as f64, now)))
            .unwrap_or_else(|| "no handshake since the hub started".into()),
        _ => s
            .last_handshake
            .map(|t| format!("handshake {}", when(t as f64, now)))
            .unwrap_or_else(|| "no handshake yet".into()),
    };
    // An annex with several hubs: the hub (and uplink) it uses.
    let detail = match &s.tunnel_on {
        Some(path) => format!("{detail}; tunnel on {path}"),
        None => detail,
    };
    // A running hub: whether the site is attached to it.
    let detail = match &s.attachment {
        Some(a) => format!("{detail}; {}", a.words()),
        None => detail,
    };
    format!(
        "{:<16} {:<10} {:<9} {:<15} {:<20} {detail}",
        s.name,
        s.state,
        s.source,
        s.address.to_string(),
        lan
    )
}

/// `site show`: one site, a field per line.
fn show(s: &SiteInfo, now: f64) -> String {
    let stamp = |t: Option<u64>| t.map(|t| when(t as f64, now));
    let lan: Vec<String> = s.lan.iter().map(|l| l.to_string()).collect();
    let mut fields: Vec<(&str, Option<String>)> = vec![
        ("state", Some(s.state.to_string())),
        ("source", Some(s.source.to_string())),
        ("address", Some(s.address.to_string())),
        (
            "lan",
            Some(if lan.is_empty() {
                "-".into()
            } else {
                lan.join(", ")
            }),
        ),
        ("public key", s.public_key.clone()),
        ("certificate", s.certificate.clone()),
        ("handshake", stamp(s.last_handshake)),
        ("token valid until", s.expires.map(crate::telemetry::stamp)),
        ("joined", stamp(s.joined_at)),
        ("revoked", stamp(s.revoked_at)),
        ("tunnel on", s.tunnel_on.clone()),
        ("attachment", s.attachment.as_ref().map(|a| a.words())),
    ];
    if s.certificate.is_none() && !matches!(s.state, SiteState::Pending | SiteState::Revoked) {
        fields[5].1 = Some("none: its probes are refused".into());
    }
    let mut o = format!("site {}\n", s.name);
    for (k, v) in fields {
        if let Some(v) = v {
            o.push_str(&format!("  {k:<18} {v}\n"));
        }
    }
    o
}

/// What `site add` tells the administrator to run on the annex. The
/// interface names are examples: `site add` cannot know the annex's.
pub(crate) fn join_hint(token: &str) -> String {
    format!(
        "on the new annex, run (fiber=eth1 and lte=wwan0 are examples: name that router's \
         uplinks and their interfaces, `ip -br link` lists them):\n  townlink join '{token}' \
         --uplink fiber=eth1 --uplink lte=wwan0,metered"
    )
}

pub(super) fn site(
    config: &Path,
    socket: Option<PathBuf>,
    command: SiteCommand,
) -> anyhow::Result<ExitCode> {
    let socket = socket.unwrap_or_else(|| config::control_socket(config));
    let now = crate::telemetry::now();
    match command {
        SiteCommand::Add {
            name,
            lan,
            expires,
            json,
        } => {
            let request = Request::SiteAdd {
                name,
                lan,
                expires: expires.map(|d| d.as_secs().max(1)),
            };
            match ask(&socket, &request)? {
                Ok(Response::SiteAdded { token, site }) => {
                    if json {
                        let out = serde_json::json!({ "token": token, "site": site });
                        println!("{}", serde_json::to_string_pretty(&out)?);
                    } else {
                        let lan: Vec<String> = site.lan.iter().map(|l| l.to_string()).collect();
                        println!(
                            "site {} added: tunnel address {}, LAN {}",
                            site.name,
                            site.address,
                            if lan.is_empty() {
                                "none".into()
                            } else {
                                lan.join(", ")
                            }
                        );
                        if let Some(t) = site.expires {
                            println!(
                                "one-time token, valid until {}:",
                                crate::telemetry::stamp(t)
                            );
                        }
                        println!("\n{token}\n");
                        println!("{}", join_hint(&token));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Ok(other) => Err(unexpected(other)),
                Err(code) => Ok(code),
            }
        }
        SiteCommand::List { json } => match ask(&socket, &Request::SiteList)? {
            Ok(Response::Sites { sites }) => {
                // A backup hub: where its sites come from, first.
                let follow = match json {
                    true => None,
                    false => match ask(&socket, &Request::Status) {
                        Ok(Ok(Response::Status(status))) => status.follow,
                        _ => None,
                    },
                };
                if let Some(f) = &follow {
                    println!(
                        "sites from {} at {} ({}): add and remove sites there",
                        f.main,
                        f.endpoint,
                        if f.connected {
                            "connected"
                        } else {
                            "NOT CONNECTED, its last registry in force"
                        }
                    );
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&sites)?);
                } else if sites.is_empty() && follow.is_none() {
                    println!("no sites (add one with `townlink site add NAME`)");
                } else if sites.is_empty() {
                    println!("no sites");
                } else {
                    println!(
                        "{:<16} {:<10} {:<9} {:<15} {:<20} DETAIL",
                        "NAME", "STATE", "SOURCE", "ADDRESS", "LAN"
                    );
                    for s in &sites {
                        println!("{}", describe(s, now));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(other) => Err(unexpected(other)),
            Err(code) => Ok(code),
        },
        SiteCommand::Show { name, json } => match ask(&socket, &Request::SiteList)? {
            Ok(Response::Sites { sites }) => {
                let Some(s) = sites.iter().find(|s| s.name == name) else {
                    anyhow::bail!("there is no site {name} (see `townlink site list`)");
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(s)?);
                } else {
                    print!("{}", show(s, now));
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(other) => Err(unexpected(other)),
            Err(code) => Ok(code),
        },
        SiteCommand::Remove { name, json } => match ask(&socket, &Request::SiteRemove { name })? {
            Ok(Response::SiteRemoved { site }) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&site)?);
                } else {
                    println!(
                        "site {} revoked: its tunnel peer, routes and probe connections are gone; \
                             its token and keys are void",
                        site.name
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(other) => Err(unexpected(other)),
            Err(code) => Ok(code),
        },
    }
}

pub(super) fn join(
    token: &str,
    uplinks: &[String],
    dir: &Path,
    interface: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    // `-`: read it from standard input (keeps it out of `ps` and the shell history).
    let mut text = token.to_string();
    if token == "-" {
        text.clear();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    }
    let token = join::read_token(&text)?;
    let uplinks = uplinks
        .iter()
        .map(|u| u.parse::<UplinkSpec>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--uplink {e}"))?;
    let interface =
        InterfaceName::new(interface).map_err(|e| anyhow::anyhow!("--interface {e}"))?;
    for warning in join::missing_interface_warnings(&uplinks) {
        eprintln!("{warning}");
    }
    let opts = JoinOptions {
        dir: dir.to_path_buf(),
        interface,
        uplinks,
        force,
    };
    let now = crate::telemetry::now() as u64;
    if now > token.expires {
        // The hub decides (this router's clock may be unset); just say it.
        eprintln!("note: by this router's clock the token has expired; asking the hub anyway");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let joined = runtime.block_on(join::join(&token, &opts))?;
    let s = &joined.settings;
    let hubs: Vec<String> = joined
        .hubs
        .iter()
        .map(|h| format!("{} at {}", h.name, h.endpoint))
        .collect();
    println!(
        "joined as site {} (tunnel address {}), {} {}",
        s.site,
        s.address,
        if hubs.len() == 1 { "hub" } else { "hubs" },
        hubs.join(" and ")
    );
    println!(
        "wrote {} (keys and certificate next to it)",
        joined.config.display()
    );
    if joined.complete {
        println!(
            "next: townlink check -c {0} && townlink run -c {0}   (or systemctl start townlink)",
            joined.config.display()
        );
    } else {
        println!(
            "next: name this router's uplinks in [[uplink]] sections of {} (see the comment there), \
             then townlink check",
            joined.config.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_with_several_hubs_is_listed_with_the_path_it_uses() {
        let mut s = SiteInfo {
            name: "annex-1".into(),
            state: SiteState::Connected,
            source: crate::sites::SiteSource::Enrolled,
            address: "10.99.0.2".parse().unwrap(),
            lan: Vec::new(),
            expires: None,
            joined_at: Some(1_000),
            revoked_at: None,
            last_handshake: Some(1_990),
            public_key: None,
            certificate: Some("sha256:ab".into()),
            tunnel_on: None,
            attachment: None,
        };
        let line = describe(&s, 2_000.0);
        assert!(line.ends_with("(10s ago)"), "{line}");
        assert!(!show(&s, 2_000.0).contains("tunnel on"));
        s.tunnel_on = Some("backup/fiber".into());
        let line = describe(&s, 2_000.0);
        assert!(
            line.ends_with("(10s ago); tunnel on backup/fiber"),
            "{line}"
        );
        assert!(show(&s, 2_000.0).contains("  tunnel on          backup/fiber\n"));
        // The JSON has it only when known.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["tunnel_on"], "backup/fiber");
        s.tunnel_on = None;
        assert!(serde_json::to_value(&s).unwrap().get("tunnel_on").is_none());
        // A running hub says whether the site is attached to it.
        assert!(serde_json::to_value(&s)
            .unwrap()
            .get("attachment")
            .is_none());
        s.attachment = Some(crate::sites::attachment::AttachmentView {
            state: "elsewhere".into(),
            hub: Some("backup".into()),
            route_metric: Some(1000),
        });
        let line = describe(&s, 2_000.0);
        assert!(
            line.ends_with("(10s ago); on hub backup (route metric 1000)"),
            "{line}"
        );
        assert!(
            show(&s, 2_000.0).contains("  attachment         on hub backup (route metric 1000)\n")
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["attachment"]["state"], "elsewhere");
        assert_eq!(json["attachment"]["hub"], "backup");
        assert_eq!(json["attachment"]["route_metric"], 1000);
    }
}
