//! The hub's QUIC responder: echoes the probes of authenticated annexes.
//!
//! Not a reflector nor an amplifier: a client must first prove its address
//! (QUIC Retry, so the hub sends at most one small packet per unvalidated
//! Initial), then present a registered certificate; only then are its
//! datagrams read, and only well-formed probes are answered, with a
//! datagram of the same size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::{self, AllowedSites, Fingerprint, Identity};
use super::wire::{self, Report};
use crate::telemetry::Telemetry;

/// Counters of the responder: the metrics' counters themselves.
#[derive(Debug, Default, Clone)]
pub struct ResponderCounters {
    /// Connections that completed the handshake with a registered certificate.
    pub authenticated: Counter,
    /// Connection attempts that failed (unknown certificate, bad handshake).
    pub refused: Counter,
    /// Datagrams on authenticated connections that were neither probes nor reports.
    pub garbage: Counter,
    pub echoed: Counter,
}

/// Idle timeout of a probe connection; longer than the slowest probe interval.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("90 s is a valid idle timeout"),
    ));
    t.max_concurrent_bidi_streams(0u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t
}

/// Binds the responder's endpoint.
pub fn endpoint(
    bind: SocketAddr,
    identity: &Identity,
    allowed: Arc<AllowedSites>,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = tls::server_config(identity, allowed)?;
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(Arc::new(transport()));
    let endpoint = quinn::Endpoint::server(config, bind)?;
    Ok(endpoint)
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(Fingerprint::of)
}

/// Serves until `stop`; then closes every connection.
pub async fn serve(
    endpoint: quinn::Endpoint,
    allowed: Arc<AllowedSites>,
    counters: Arc<ResponderCounters>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        if !incoming.remote_address_validated() {
            // Stateless Retry: costs the client one round trip, and makes
            // the hub useless as an amplifier toward a spoofed address.
            let _ = incoming.retry();
            continue;
        }
        let (allowed, counters, stop) = (allowed.clone(), counters.clone(), stop.clone());
        let telemetry = telemetry.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.accept() {
                Ok(connecting) => connecting.await,
                Err(e) => Err(e),
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    counters.refused.inc();
                    tracing::info!(%remote, error = %e, "probe connection refused");
                    return;
                }
            };
            let Some(site) = peer_fingerprint(&conn).and_then(|fp| allowed.site(&fp)) else {
                counters.refused.inc();
                conn.close(1u8.into(), b"unknown site");
                return;
            };
            counters.authenticated.inc();
            tracing::info!(site = %site, %remote, "probe connection up");
            echo(&conn, &site, &counters, &telemetry, &stop).await;
            tracing::info!(site = %site, %remote, reason = ?conn.close_reason(), "probe connection closed");
        });
    }
    endpoint.close(0u8.into(), b"hub stopping");
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    tracing::info!(
        authenticated = counters.authenticated.get(),
        refused = counters.refused.get(),
        garbage = counters.garbage.get(),
        echoed = counters.echoed.get(),
        "probe responder stopped"
    );
}

async fn echo(
    conn: &quinn::Connection,
    site: &crate::sites::Name,
    counters: &ResponderCounters,
    telemetry: &Telemetry,
    stop: &CancellationToken,
) {
    loop {
        let datagram = tokio::select! {
            _ = stop.cancelled() => return,
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        match wire::echo_for(&datagram) {
            Some(reply) => {
                if conn
                    .send_datagram(bytes::Bytes::copy_from_slice(&reply))
                    .is_ok()
                {
                    counters.echoed.inc();
                }
            }
            None => match Report::parse(&datagram) {
                Some(report) => telemetry.site_report(site, report),
                None => {
                    counters.garbage.inc();
                }
            },
        }
    }
}
