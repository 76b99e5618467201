//! townlink: a hub-and-spoke WireGuard WAN for town-hall annexes.
//!
//! Read the modules in data-flow order (see `docs/architecture.md`):
//! - [`config`]: the TOML file, validated into typed settings;
//! - [`keys`]: WireGuard keys (`genkey`, `pubkey`, validation);
//! - [`sites`]: the hub's set of annexes;
//! - [`fingerprint`]: SHA-256 fingerprints of certificates (pinning, registration);
//! - [`tunnel`]: the boringtun device, driven through in-process UAPI;
//! - [`netlink`]: links, addresses, routes and rules of the kernel;
//! - [`probe`]: QUIC probing: hub responder, one prober per uplink;
//! - [`decision`]: the failover state machine (pure, fake clock in tests);
//! - [`failover`]: applies decisions: route switch, traffic push;
//! - [`routing`]: what routes and rules a config needs (pure);
//! - [`sysctl`]: forwarding and reverse-path settings, restored at stop;
//! - [`telemetry`]: metrics (`/metrics`) and the status view;
//! - [`checks`]: end-to-end checks through the tunnel;
//! - [`control`]: the local control socket (`townlink status`);
//! - [`service`]: systemd notifications (READY, STATUS, WATCHDOG);
//! - [`daemon`]: `townlink run`: start-up, steady state, ordered shutdown;
//! - [`fsutil`]: atomic file writes;
//! - [`size`]: byte sizes as written in the config ("30 MB");
//! - [`cli`]: the command line.

pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decision;
pub mod enroll;
pub mod failover;
pub mod fingerprint;
pub mod fsutil;
pub mod keys;
#[cfg(test)]
mod layers;
pub mod netlink;
pub mod probe;
pub mod routing;
pub mod service;
pub mod sites;
pub mod size;
pub mod sysctl;
pub mod telemetry;
pub mod tunnel;
