//! The command line: parsing, dispatch, and the exit codes. The commands
//! that talk to a running daemon are in [`admin`].

mod admin;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Role;
use crate::fsutil;
use crate::keys::PrivateKey;
use crate::probe::tls::Identity;

pub const DEFAULT_CONFIG: &str = "/etc/townlink/townlink.toml";

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for check: the config is valid)
  1  failure: invalid config, an error while running, a refused join or site command
     (the message says what and where)
  2  usage error (unknown command or option)
  3  status, site: the daemon is not running (nothing answers on the control socket)";

#[derive(Debug, Parser)]
#[command(name = "townlink", version, about = "Hub-and-spoke WireGuard WAN with uplink failover", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Reserve a site (tunnel address from the pool) and print its
    /// one-time token.
    Add {
        name: String,
        /// A LAN prefix behind the site (repeat for several).
        #[arg(long = "lan", value_name = "CIDR")]
        lan: Vec<ipnet::IpNet>,
        /// How long the token is valid (default: enrollment.token_ttl, 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Every site with its state: pending, joined, configured, connected,
    /// silent, revoked (--json: with its public key and certificate).
    List {
        #[arg(long)]
        json: bool,
    },
    /// One site in full: state, addresses, its public key and the
    /// fingerprint of its probe certificate (never a secret).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a site live: its tunnel peer, routes and probes go.
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (role hub or annex, from the config file).
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its key path.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show what the running daemon sees: uplinks, active path, tunnel,
    /// checks, last switch; on the hub, every site.
    Status {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The control socket (default: control.socket of the config file,
        /// else /run/townlink/townlink.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hub: enroll, list and revoke sites (asks the running hub daemon).
    Site {
        #[command(subcommand)]
        command: SiteCommand,
        #[arg(short, long, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        /// The control socket (default: control.socket of the config file).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// Annex: join the WAN with a token from `townlink site add`: makes
    /// this router's keys, registers them at the hub, writes the config.
    Join {
        /// The token printed by `townlink site add` on the hub, or `-` to
        /// read it from standard input.
        token: String,
        /// An uplink, preferred first: NAME=INTERFACE[,gateway=IP][,metered]
        /// (e.g. --uplink fiber=eth1 --uplink lte=wwan0,metered).
        #[arg(long = "uplink", value_name = "SPEC")]
        uplinks: Vec<String>,
        /// Where the config, keys and certificate are written.
        #[arg(long, default_value = "/etc/townlink")]
        dir: PathBuf,
        /// Name of the tunnel interface in the written config.
        #[arg(long, default_value = "tl0")]
        interface: String,
        /// Replace an existing config and keys in --dir, once the hub
        /// accepted the new keys (until then, and on a refusal, the old
        /// ones stay as they are).
        #[arg(long)]
        force: bool,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    Assets { dir: PathBuf },
    /// Print a new WireGuard private key (same encoding as `wg genkey`).
    Genkey,
    /// Read a private key on standard input, print its public key (as `wg pubkey`).
    Pubkey,
    /// Make this router's probe certificate and key (PEM); print the
    /// certificate's fingerprint, which the other side pins.
    Gencert {
        /// Name written in the certificate (site name, or "hub").
        #[arg(long)]
        name: String,
        /// Where to write the certificate.
        #[arg(long, default_value = "/etc/townlink/probe.crt")]
        cert: PathBuf,
        /// Where to write the private key (mode 0600).
        #[arg(long, default_value = "/etc/townlink/probe.key")]
        key: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Status {
            config,
            socket,
            json,
        } => admin::status(&config, socket, json),
        Command::Site {
            command,
            config,
            socket,
        } => admin::site(&config, socket, command),
        Command::Join {
            token,
            uplinks,
            dir,
            interface,
            force,
        } => admin::join(&token, &uplinks, &dir, &interface, force),
        Command::Genkey => {
            println!("{}", PrivateKey::generate().to_base64_secret());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey => pubkey(),
        Command::Assets { dir } => assets(&dir),
        Command::Gencert {
            name,
            cert,
            key,
            force,
        } => gencert(&name, &cert, &key, force),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    match crate::daemon::load(path) {
        Ok((c, identity)) => {
            let summary = match &c.role {
                Role::Hub(h) => format!(
                    "hub on {} port {}, {} site(s){}",
                    c.tunnel.interface,
                    c.tunnel.listen_port.unwrap_or_default(),
                    h.sites.len(),
                    match &h.follow {
                        Some(f) => format!(", follows {} at {}", f.main, f.endpoint),
                        None if !h.followers.is_empty() => {
                            format!(", {} follower(s)", h.followers.len())
                        }
                        None => String::new(),
                    }
                ),
                Role::Annex(a) => format!(
                    "annex {} on {}, {}, uplinks {}",
                    a.name,
                    c.tunnel.interface,
                    match a.hubs.as_slice() {
                        [hub] => format!("hub {}", hub.endpoint),
                        hubs => format!(
                            "hubs {}",
                            hubs.iter()
                                .map(|h| format!("{} {} on {}", h.name, h.endpoint, h.interface))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                    a.uplinks
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            println!("{}: valid ({summary})", path.display());
            println!("probe certificate: {}", identity.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Man pages (townlink.1 and one per subcommand) and completions for
/// bash, zsh and fish, generated from the clap definitions.
fn assets(dir: &Path) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "townlink", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    println!("{} {}", man.display(), completions.display());
    Ok(ExitCode::SUCCESS)
}

fn gencert(name: &str, cert: &Path, key: &Path, force: bool) -> anyhow::Result<ExitCode> {
    for path in [cert, key] {
        if path.exists() && !force {
            anyhow::bail!(
                "{} exists: the other side may pin its fingerprint; use --force to replace it",
                path.display()
            );
        }
    }
    let identity =
        Identity::generate(name).map_err(|e| anyhow::anyhow!("generating the certificate: {e}"))?;
    fsutil::write_atomic(key, identity.key_pem_secret().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", key.display()))?;
    fsutil::write_atomic(cert, identity.cert_pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", cert.display()))?;
    println!("{}", identity.fingerprint());
    Ok(ExitCode::SUCCESS)
}

fn pubkey() -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the private key from standard input")?;
    let key: PrivateKey = text
        .parse()
        .map_err(|e| anyhow::anyhow!("standard input does not hold a private key: it {e}"))?;
    println!("{}", key.public_key());
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,boringtun=warn"));
    // Colours only on a terminal: journald and log files get plain text.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    // Validate before touching anything: an invalid file changes nothing.
    let (config, identity) = match crate::daemon::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("nothing was changed on the system");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = wait_for_stop_signal().await {
                tracing::error!(error = %e, "cannot listen for signals");
            }
            signals.cancel();
        });
        // SIGHUP (systemctl reload): re-read the config.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                if reload_tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        crate::daemon::run(config, identity, path.to_path_buf(), shutdown, reload_rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
