//! Link monitoring by QUIC probing (see `docs/failover.md`).
//!
//! The hub runs a [`responder`]; each annex keeps one QUIC connection per
//! uplink ([`prober`]), marked and bound to that uplink, and sends small
//! datagrams (RFC 9221) that the hub echoes ([`wire`]). Both ends are
//! authenticated by pinned certificate fingerprints ([`tls`]).

pub mod budget;
pub mod guard;
pub mod prober;
pub mod responder;
pub mod tls;
pub mod wire;
