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
use crate::enroll::{JoinRequest, JoinResponse};
use crate::sites::Name;
use crate::telemetry::Telemetry;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;

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

/// QUIC close codes of the responder. An annex tells a refusal (1, 2),
/// after which it backs off to minutes, from a hub stopping (0).
pub const CLOSE_STOPPING: u64 = 0;
pub const CLOSE_UNKNOWN: u64 = 1;
pub const CLOSE_REVOKED: u64 = 2;
pub const CLOSE_NO_ENROLLMENT: u64 = 3;

/// Longest enrollment exchange.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle timeout of a probe connection; longer than the slowest probe interval.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("90 s is a valid idle timeout"),
    ));
    // One stream, for an enrollment exchange; small windows: nothing
    // else travels on streams.
    t.max_concurrent_bidi_streams(1u8.into());
    t.stream_receive_window((crate::enroll::MAX_MESSAGE as u32).into());
    t.receive_window((4 * crate::enroll::MAX_MESSAGE as u32).into());
    t.max_concurrent_uni_streams(0u8.into());
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t
}

/// Binds the responder's endpoint.
pub fn endpoint(bind: SocketAddr, identity: &Identity) -> anyhow::Result<quinn::Endpoint> {
    let crypto = tls::server_config(identity)?;
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

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Handles one enrollment request: (request, the client's certificate, its address).
pub type Enroller = Arc<
    dyn Fn(JoinRequest, Fingerprint, SocketAddr) -> BoxFuture<'static, JoinResponse> + Send + Sync,
>;

/// The live probe connections of every site, so that revoking a site
/// closes them at once.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<Name, Vec<quinn::Connection>>>);

impl Sessions {
    fn track(&self, site: &Name, conn: &quinn::Connection) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(site.clone()).or_default();
        list.retain(|c| c.close_reason().is_none());
        list.push(conn.clone());
    }

    /// Closes every probe connection of `site`; returns how many were open.
    pub fn close_site(&self, site: &Name) -> usize {
        let list = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(site)
            .unwrap_or_default();
        let open = list.iter().filter(|c| c.close_reason().is_none()).count();
        for c in list {
            c.close(code(CLOSE_REVOKED), b"site revoked");
        }
        open
    }
}

/// What the responder serves with.
#[derive(Clone)]
pub struct Context {
    pub allowed: Arc<AllowedSites>,
    pub sessions: Arc<Sessions>,
    pub counters: Arc<ResponderCounters>,
    pub telemetry: Arc<Telemetry>,
    /// Enrollment, when the hub offers it.
    pub enroll: Option<Enroller>,
    /// Drawn at each start; told to annexes that ask (hello), so that they
    /// know the hub restarted and start a new WireGuard handshake.
    pub instance: u64,
}

/// A random instance number for a responder that starts.
pub fn new_instance() -> u64 {
    let mut b = [0u8; 8];
    // A failed draw leaves zeros: the time makes it differ across starts.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64;
    }
    u64::from_be_bytes(b)
}

fn code(c: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(c).expect("close codes are small")
}

/// Serves until `stop`; then closes every connection.
pub async fn serve(endpoint: quinn::Endpoint, cx: Context, stop: CancellationToken) {
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
        let (cx, stop) = (cx.clone(), stop.clone());
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.accept() {
                Ok(connecting) => connecting.await,
                Err(e) => Err(e),
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    cx.counters.refused.inc();
                    tracing::info!(%remote, error = %e, "probe connection refused");
                    return;
                }
            };
            let Some(fingerprint) = peer_fingerprint(&conn) else {
                cx.counters.refused.inc();
                conn.close(code(CLOSE_UNKNOWN), b"no certificate");
                return;
            };
            if alpn(&conn).as_deref() == Some(crate::enroll::ALPN) {
                enroll(&conn, fingerprint, remote, &cx).await;
                return;
            }
            let Some(site) = cx.allowed.site(&fingerprint) else {
                cx.counters.refused.inc();
                tracing::info!(%remote, certificate = %fingerprint, "probe connection refused: unknown certificate");
                conn.close(code(CLOSE_UNKNOWN), b"unknown site");
                return;
            };
            cx.counters.authenticated.inc();
            cx.sessions.track(&site, &conn);
            tracing::info!(site = %site, %remote, "probe connection up");
            echo(&conn, &site, &cx, &stop).await;
            tracing::info!(site = %site, %remote, reason = ?conn.close_reason(), "probe connection closed");
        });
    }
    endpoint.close(code(CLOSE_STOPPING), b"hub stopping");
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    let counters = &cx.counters;
    tracing::info!(
        authenticated = counters.authenticated.get(),
        refused = counters.refused.get(),
        garbage = counters.garbage.get(),
        echoed = counters.echoed.get(),
        "probe responder stopped"
    );
}

/// One enrollment exchange: a request on one bidirectional stream, the
/// answer on the same stream.
async fn enroll(
    conn: &quinn::Connection,
    fingerprint: Fingerprint,
    remote: SocketAddr,
    cx: &Context,
) {
    let Some(enroller) = &cx.enroll else {
        conn.close(code(CLOSE_NO_ENROLLMENT), b"no enrollment here");
        return;
    };
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let bytes = recv
            .read_to_end(crate::enroll::MAX_MESSAGE)
            .await
            .map_err(|e| e.to_string())?;
        let response = match serde_json::from_slice::<JoinRequest>(&bytes) {
            Ok(request) => enroller(request, fingerprint, remote).await,
            Err(e) => JoinResponse::Refused {
                reason: format!("the request is not understood: {e}"),
            },
        };
        let out = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
        send.write_all(&out).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Let the client read the answer before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(ENROLL_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(%remote, error = %e, "enrollment exchange failed"),
        Err(_) => tracing::info!(%remote, "enrollment exchange took too long: dropped"),
    }
    conn.close(0u8.into(), b"done");
}

async fn echo(
    conn: &quinn::Connection,
    site: &crate::sites::Name,
    cx: &Context,
    stop: &CancellationToken,
) {
    let counters = &cx.counters;
    loop {
        let datagram = tokio::select! {
            _ = stop.cancelled() => return,
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        if let Some(reply) = wire::echo_for(&datagram) {
            if conn
                .send_datagram(bytes::Bytes::copy_from_slice(&reply))
                .is_ok()
            {
                counters.echoed.inc();
            }
        } else if let Some(reply) = wire::instance_for(&datagram, cx.instance) {
            let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(&reply));
        } else if let Some(report) = Report::parse(&datagram) {
            cx.telemetry.site_report(site, report);
        } else {
            counters.garbage.inc();
        }
    }
}
