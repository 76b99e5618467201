//! The hub's QUIC responder: echoes the probes of authenticated annexes.
//!
//! Not a reflector nor an amplifier: every datagram goes through the
//! [`guard`](super::guard) first (what a client never sends is dropped and
//! counted, Initials are rate-limited per source and in total); a client
//! must then prove its address (QUIC Retry, so the hub sends at most one
//! small packet per unvalidated Initial), then present a registered
//! certificate; only then are its datagrams read, and only well-formed
//! probes are answered, with a datagram of the same size.
//!
//! Limits: [`MAX_HANDSHAKES`] handshakes in progress and [`MAX_CONNECTIONS`]
//! connections at once (beyond: refused, counted as `limited`); a
//! handshake gets [`HANDSHAKE_TIMEOUT`]; an enrollment connection gets
//! [`ENROLL_REQUEST_TIMEOUT`] to send its request and [`ENROLL_TIMEOUT`]
//! in all, and at most [`MAX_ENROLLMENTS`] run at once. A backup hub's
//! sync connection (ALPN `townlink-sync/1`) is served only to a
//! certificate the [`SyncSource`] names, at most [`MAX_FOLLOWERS`] at
//! once; it gets the registry's snapshot frames. Refusals are
//! logged, at most [`LOG_BURST`] lines per [`LOG_WINDOW`]; the others are
//! counted in the next line. A panic while serving one connection closes
//! it and is logged and counted (`townlink_connection_panics_total`).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::{GuardCounters, GuardedSocket};
use super::tls::{self, AllowedSites, Identity};
use super::wire::{self, Report};
use crate::fingerprint::Fingerprint;
use crate::sites::Name;
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
    /// Connection attempts refused because a limit was reached.
    pub limited: Counter,
    /// Handshakes (or enrollment exchanges) that took too long.
    pub timed_out: Counter,
    /// Datagrams on authenticated connections that were neither probes nor reports.
    pub garbage: Counter,
    pub echoed: Counter,
    /// Handshakes in progress.
    pub handshakes: Gauge,
    /// Connections open (handshakes included).
    pub open: Gauge,
    /// What the socket's guard dropped, and the Retry packets sent.
    pub guard: Arc<GuardCounters>,
}

/// Handshakes in progress at once.
pub const MAX_HANDSHAKES: i64 = 64;
/// Connections at once, handshakes included (two per site: one per uplink).
pub const MAX_CONNECTIONS: i64 = 1024;
/// A handshake not finished within this time is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Enrollment connections at once.
pub const MAX_ENROLLMENTS: i64 = 8;
/// Largest enrollment request or answer read from the other side.
pub const MAX_ENROLL_MESSAGE: usize = 16 * 1024;
/// Time an enrollment client gets to send its request, after the handshake.
pub const ENROLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusal lines logged per window at most.
pub const LOG_BURST: u32 = 10;
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Longest enrollment exchange, after the handshake.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC close codes of the responder. An annex tells a refusal (1, 2),
/// after which it backs off to minutes, from a hub stopping (0).
pub const CLOSE_STOPPING: u64 = 0;
pub const CLOSE_UNKNOWN: u64 = 1;
pub const CLOSE_REVOKED: u64 = 2;
pub const CLOSE_NO_ENROLLMENT: u64 = 3;
/// Too many enrollments at once: the client may try again.
pub const CLOSE_BUSY: u64 = 4;
/// Followers' sync connections at once (one per `[[follower]]`, and one
/// more each while a reconnection replaces a dead one).
pub const MAX_FOLLOWERS: i64 = 16;

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
    t.stream_receive_window((MAX_ENROLL_MESSAGE as u32).into());
    t.receive_window((4 * MAX_ENROLL_MESSAGE as u32).into());
    t.max_concurrent_uni_streams(0u8.into());
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t
}

/// Binds the responder's endpoint, on a guarded socket (see
/// [`super::guard`]) counting into `counters`.
pub fn endpoint(
    bind: SocketAddr,
    identity: &Identity,
    counters: &ResponderCounters,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = tls::server_config(identity)?;
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(Arc::new(transport()));
    // Connection attempts quinn keeps before the accept loop sees them,
    // and what they may buffer: far below quinn's defaults (65536, 10 MiB
    // each, 100 MiB in all), which are meant for big servers.
    config
        .max_incoming(4 * MAX_HANDSHAKES as usize)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(4 << 20);
    let mut endpoint_config = quinn::EndpointConfig::default();
    // QUIC v1 only (the guard drops the rest, so no Version Negotiation
    // is ever sent), and the fixed bit always set.
    endpoint_config
        .supported_versions(vec![super::guard::QUIC_V1])
        .grease_quic_bit(false);
    let socket = std::net::UdpSocket::bind(bind)?;
    super::guard::enlarge_receive_buffer(&socket);
    let runtime = Arc::new(quinn::TokioRuntime);
    let guarded = Arc::new(GuardedSocket::new(
        socket,
        &*runtime,
        counters.guard.clone(),
    )?);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), guarded, runtime)?;
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

/// Answers one enrollment request: (the request as received, at most
/// [`MAX_ENROLL_MESSAGE`] bytes; the client's certificate; its address) →
/// the answer to send, or why there is none (logged as a refusal). The
/// responder carries the bytes; what they mean is enrollment's business
/// (`enroll::JoinRequest`, `enroll::JoinResponse`).
pub type Enroller = Arc<
    dyn Fn(Vec<u8>, Fingerprint, SocketAddr) -> BoxFuture<'static, Result<Vec<u8>, String>>
        + Send
        + Sync,
>;

/// The live probe connections of every site, so that revoking a site
/// closes them at once; and what the responder last heard of each site
/// ([`Heard`]), for the hub's view of which sites are attached to it.
#[derive(Debug, Default)]
pub struct Sessions {
    connections: Mutex<HashMap<Name, Vec<quinn::Connection>>>,
    heard: Mutex<HashMap<Name, Heard>>,
    /// Woken at every report.
    reports: tokio::sync::Notify,
}

/// What the responder last heard of a site, on any of its probe
/// connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heard {
    /// The last datagram (probe, hello or report).
    pub datagram: Option<Instant>,
    /// The last report: whether it names this hub as the active one
    /// ([`Report::names_receiver`]), and the active hub it names (the
    /// annex's name for it).
    pub report: Option<(bool, Option<String>)>,
    /// The active path's probe interval the last report states
    /// ([`Report::every`]).
    pub every: Option<Duration>,
    /// The longest silence between two datagrams since the last report
    /// arrived (zero at the report): a report from before a gap in the
    /// site's datagrams may be stale (`sites::attachment`).
    pub gap_since_report: Duration,
}

impl Sessions {
    fn track(&self, site: &Name, conn: &quinn::Connection) {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(site.clone()).or_default();
        list.retain(|c| c.close_reason().is_none());
        list.push(conn.clone());
    }

    /// A datagram from `site` at `at`.
    fn datagram(&self, site: &Name, at: Instant) {
        let mut map = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let h = map.entry(site.clone()).or_default();
        // Datagrams of several connections are handled by several tasks:
        // `at` may be a little older than the last one recorded.
        if let Some(last) = h.datagram {
            h.gap_since_report = h.gap_since_report.max(at.saturating_duration_since(last));
        }
        h.datagram = Some(h.datagram.map_or(at, |last| last.max(at)));
    }

    /// A report from `site` (after its datagram): kept, and told.
    fn report(&self, site: &Name, report: &Report) {
        let said = (report.names_receiver(), report.hub.clone());
        {
            let mut map = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            let h = map.entry(site.clone()).or_default();
            h.report = Some(said);
            h.every = report.every();
            h.gap_since_report = Duration::ZERO;
        }
        self.reports.notify_one();
    }

    /// What was heard of every site since the responder started.
    pub fn heard(&self) -> HashMap<Name, Heard> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Returns at the next report of any site (or at once if one came
    /// since the last call).
    pub async fn report_arrived(&self) {
        self.reports.notified().await
    }

    /// Closes every probe connection of `site` and forgets what was heard
    /// of it; returns how many connections were open.
    pub fn close_site(&self, site: &Name) -> usize {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(site);
        let list = self
            .connections
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

/// The main hub's registry for a follower: given a client's certificate,
/// its follower's name and the latest snapshot frame (a watch: a new frame
/// at every change of the registry), or `None` for any other certificate.
/// The responder carries the bytes; what they mean is enrollment's
/// business (`enroll::sync`).
pub type SyncSource = Arc<
    dyn Fn(&Fingerprint) -> Option<(Name, tokio::sync::watch::Receiver<Arc<Vec<u8>>>)>
        + Send
        + Sync,
>;

/// What the responder tells the rest of the hub (the daemon passes its
/// telemetry, which implements this: the probe layer does not know it).
pub trait Events: Send + Sync {
    /// A report from the annex of `site` (authenticated by its certificate).
    fn site_report(&self, site: &Name, report: Report);
    /// A panic while serving the connection from `remote`: to be logged
    /// and counted; the responder goes on.
    fn connection_panicked(&self, remote: SocketAddr, panic: &(dyn std::any::Any + Send));
}

/// What the responder serves with.
#[derive(Clone)]
pub struct Context {
    pub allowed: Arc<AllowedSites>,
    pub sessions: Arc<Sessions>,
    pub counters: Arc<ResponderCounters>,
    pub events: Arc<dyn Events>,
    /// Enrollment, when the hub offers it.
    pub enroll: Option<Enroller>,
    /// The registry for the hub's followers (ALPN `townlink-sync/1`).
    pub sync: Option<SyncSource>,
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

/// Refusal logs: at most [`LOG_BURST`] lines per [`LOG_WINDOW`].
#[derive(Debug)]
struct LogLimit {
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogLimit {
    fn new() -> LogLimit {
        LogLimit {
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now (`n`: lines not logged
    /// before it); `None` if this one is not logged (it is counted).
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= LOG_WINDOW {
            self.window = now;
            self.lines = 0;
        }
        if self.lines < LOG_BURST {
            self.lines += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// What every connection task of one responder shares.
struct Shared {
    context: Context,
    refusals: Mutex<LogLimit>,
    enrolling: AtomicI64,
    following: AtomicI64,
}

impl Shared {
    /// Logs a refusal, unless too many were logged lately.
    fn refusal(&self, remote: SocketAddr, what: &str, detail: &str) {
        let allowed = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(Instant::now());
        match allowed {
            Some(0) => tracing::info!(%remote, detail, "probe connection refused: {what}"),
            Some(suppressed) => tracing::info!(
                %remote,
                detail,
                suppressed,
                "probe connection refused: {what} (and {suppressed} refusals not logged since the \
                 last line)"
            ),
            None => {}
        }
    }
}

/// Decrements a gauge when dropped (also when a task panics).
struct Held(Gauge);

impl Held {
    fn new(g: &Gauge) -> Held {
        g.inc();
        Held(g.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves until `stop`; then closes every connection.
pub async fn serve(endpoint: quinn::Endpoint, context: Context, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared {
        context,
        refusals: Mutex::new(LogLimit::new()),
        enrolling: AtomicI64::new(0),
        following: AtomicI64::new(0),
    });
    let counters = shared.context.counters.clone();
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
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let remote = incoming.remote_address();
        if counters.handshakes.get() >= MAX_HANDSHAKES || counters.open.get() >= MAX_CONNECTIONS {
            // The address is proven: a refusal goes to the real sender.
            counters.limited.inc();
            incoming.refuse();
            shared.refusal(
                remote,
                "too many connections",
                &format!(
                    "{} handshakes (at most {MAX_HANDSHAKES}), {} connections (at most {MAX_CONNECTIONS})",
                    counters.handshakes.get(),
                    counters.open.get()
                ),
            );
            continue;
        }
        let open = Held::new(&counters.open);
        let handshake = Held::new(&counters.handshakes);
        let (shared, stop) = (shared.clone(), stop.clone());
        tasks.spawn(async move {
            let events = shared.context.events.clone();
            let connection = connection(incoming, remote, handshake, &shared, &stop);
            if let Err(panic) = AssertUnwindSafe(connection).catch_unwind().await {
                events.connection_panicked(remote, &*panic);
            }
            drop(open);
        });
    }
    endpoint.close(code(CLOSE_STOPPING), b"hub stopping");
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    let guard = &counters.guard;
    tracing::info!(
        authenticated = counters.authenticated.get(),
        refused = counters.refused.get(),
        limited = counters.limited.get(),
        timed_out = counters.timed_out.get(),
        garbage = counters.garbage.get(),
        echoed = counters.echoed.get(),
        dropped_malformed = guard.malformed.get(),
        dropped_unsupported_version = guard.unsupported_version.get(),
        dropped_short_initial = guard.short_initial.get(),
        dropped_rate_limited = guard.rate_limited.get(),
        retries = guard.retries.get(),
        "probe responder stopped"
    );
}

/// One connection, from its validated Initial to its end.
async fn connection(
    incoming: quinn::Incoming,
    remote: SocketAddr,
    handshake: Held,
    shared: &Shared,
    stop: &CancellationToken,
) {
    let context = &shared.context;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            context.counters.refused.inc();
            shared.refusal(remote, "handshake failed", &e.to_string());
            return;
        }
    };
    // Dropping `connecting` at the deadline closes the connection.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            context.counters.refused.inc();
            shared.refusal(remote, "handshake failed", &e.to_string());
            return;
        }
        Err(_) => {
            context.counters.timed_out.inc();
            shared.refusal(
                remote,
                "handshake not finished in time",
                &format!("{HANDSHAKE_TIMEOUT:?}"),
            );
            return;
        }
    };
    drop(handshake);
    let Some(fingerprint) = peer_fingerprint(&conn) else {
        context.counters.refused.inc();
        conn.close(code(CLOSE_UNKNOWN), b"no certificate");
        shared.refusal(remote, "no certificate", "");
        return;
    };
    if alpn(&conn).as_deref() == Some(tls::ENROLL_ALPN) {
        if shared.enrolling.fetch_add(1, Ordering::SeqCst) >= MAX_ENROLLMENTS {
            shared.enrolling.fetch_sub(1, Ordering::SeqCst);
            context.counters.limited.inc();
            conn.close(code(CLOSE_BUSY), b"too many enrollments: try again");
            shared.refusal(
                remote,
                "too many enrollments at once",
                &format!("at most {MAX_ENROLLMENTS}"),
            );
            return;
        }
        enroll(&conn, fingerprint, remote, shared).await;
        shared.enrolling.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    if alpn(&conn).as_deref() == Some(tls::SYNC_ALPN) {
        // Only a [[follower]]'s certificate; any other is refused as an
        // unknown probe certificate is.
        let Some((follower, frames)) = context.sync.as_ref().and_then(|s| s(&fingerprint)) else {
            context.counters.refused.inc();
            conn.close(code(CLOSE_UNKNOWN), b"unknown follower");
            shared.refusal(
                remote,
                "unknown certificate (sync)",
                &fingerprint.to_string(),
            );
            return;
        };
        if shared.following.fetch_add(1, Ordering::SeqCst) >= MAX_FOLLOWERS {
            shared.following.fetch_sub(1, Ordering::SeqCst);
            context.counters.limited.inc();
            conn.close(code(CLOSE_BUSY), b"too many followers");
            shared.refusal(
                remote,
                "too many followers at once",
                &format!("at most {MAX_FOLLOWERS}"),
            );
            return;
        }
        context.counters.authenticated.inc();
        tracing::info!(follower = %follower, %remote, "follower connected");
        let result = send_registry(&conn, frames, stop).await;
        shared.following.fetch_sub(1, Ordering::SeqCst);
        tracing::info!(follower = %follower, %remote, ended = %result.err().unwrap_or_else(|| "hub stopping".into()), "follower disconnected");
        return;
    }
    let Some(site) = context.allowed.site(&fingerprint) else {
        context.counters.refused.inc();
        conn.close(code(CLOSE_UNKNOWN), b"unknown site");
        shared.refusal(remote, "unknown certificate", &fingerprint.to_string());
        return;
    };
    context.counters.authenticated.inc();
    context.sessions.track(&site, &conn);
    tracing::info!(site = %site, %remote, "probe connection up");
    echo(&conn, &site, context, stop).await;
    tracing::info!(site = %site, %remote, reason = ?conn.close_reason(), "probe connection closed");
}

/// One enrollment exchange: a request on one bidirectional stream, the
/// answer on the same stream.
async fn enroll(
    conn: &quinn::Connection,
    fingerprint: Fingerprint,
    remote: SocketAddr,
    shared: &Shared,
) {
    let context = &shared.context;
    let Some(enroller) = &context.enroll else {
        conn.close(code(CLOSE_NO_ENROLLMENT), b"no enrollment here");
        return;
    };
    let exchange = async {
        let request = async {
            let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let bytes = recv
                .read_to_end(MAX_ENROLL_MESSAGE)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, bytes))
        };
        let (mut send, bytes) = tokio::time::timeout(ENROLL_REQUEST_TIMEOUT, request)
            .await
            .map_err(|_| {
                context.counters.timed_out.inc();
                format!("no request within {ENROLL_REQUEST_TIMEOUT:?}")
            })??;
        let out = enroller(bytes, fingerprint, remote).await?;
        send.write_all(&out).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Let the client read the answer before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(ENROLL_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.refusal(remote, "enrollment exchange failed", &e),
        Err(_) => {
            context.counters.timed_out.inc();
            shared.refusal(
                remote,
                "enrollment exchange took too long",
                &format!("{ENROLL_TIMEOUT:?}"),
            );
        }
    }
    conn.close(0u8.into(), b"done");
}

/// A follower's connection: the latest frame at once, then each new one,
/// on one unidirectional stream, until the connection or the hub ends.
async fn send_registry(
    conn: &quinn::Connection,
    mut frames: tokio::sync::watch::Receiver<Arc<Vec<u8>>>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    loop {
        let frame = frames.borrow_and_update().clone();
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = send.write_all(&frame) => r.map_err(|e| e.to_string())?,
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            e = conn.closed() => return Err(e.to_string()),
            r = frames.changed() => if r.is_err() {
                return Err("the registry is gone".into());
            },
        }
    }
}

async fn echo(
    conn: &quinn::Connection,
    site: &crate::sites::Name,
    context: &Context,
    stop: &CancellationToken,
) {
    let counters = &context.counters;
    loop {
        let datagram = tokio::select! {
            _ = stop.cancelled() => return,
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        let at = Instant::now();
        if let Some(reply) = wire::echo_for(&datagram) {
            context.sessions.datagram(site, at);
            if conn
                .send_datagram(bytes::Bytes::copy_from_slice(&reply))
                .is_ok()
            {
                counters.echoed.inc();
            }
        } else if let Some(reply) = wire::instance_for(&datagram, context.instance) {
            context.sessions.datagram(site, at);
            let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(&reply));
        } else if let Some(report) = Report::parse(&datagram) {
            context.sessions.datagram(site, at);
            context.sessions.report(site, &report);
            context.events.site_report(site, report);
        } else {
            counters.garbage.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The responder's events, dropped: these tests read the counters.
    struct NoEvents;

    impl Events for NoEvents {
        fn site_report(&self, _: &Name, _: Report) {}
        fn connection_panicked(&self, _: SocketAddr, _: &(dyn std::any::Any + Send)) {}
    }

    #[test]
    fn refusal_logs_are_limited_per_window_and_say_how_many_were_not_logged() {
        let mut l = LogLimit::new();
        let t0 = l.window;
        for _ in 0..LOG_BURST {
            assert_eq!(l.allow(t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow(t0 + LOG_WINDOW), Some(25));
        assert_eq!(l.allow(t0 + LOG_WINDOW), Some(0));
    }

    #[test]
    fn the_longest_silence_since_the_last_report_is_kept() {
        let sessions = Sessions::default();
        let site = Name::new("annex-1").unwrap();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let report = Report {
            active: "fiber".into(),
            uplinks: vec![wire::Uplink {
                name: "fiber".into(),
                state: "up".into(),
                ..wire::Uplink::default()
            }],
            ..Report::default()
        };
        sessions.datagram(&site, t0);
        sessions.report(&site, &report);
        sessions.datagram(&site, t0 + ms(100));
        // Another connection's task, a little late: no gap, and the last
        // datagram stays the newest.
        sessions.datagram(&site, t0 + ms(90));
        sessions.datagram(&site, t0 + ms(300));
        let h = sessions.heard()[&site].clone();
        assert_eq!(h.gap_since_report, ms(200));
        assert_eq!(h.datagram, Some(t0 + ms(300)));
        // A cut of 10 s: kept until the next report, whatever comes after.
        sessions.datagram(&site, t0 + ms(10_300));
        sessions.datagram(&site, t0 + ms(10_400));
        assert_eq!(sessions.heard()[&site].gap_since_report, ms(10_000));
        sessions.datagram(&site, t0 + ms(12_000));
        sessions.report(&site, &report);
        assert_eq!(sessions.heard()[&site].gap_since_report, Duration::ZERO);
        sessions.datagram(&site, t0 + ms(12_100));
        assert_eq!(sessions.heard()[&site].gap_since_report, ms(100));
    }

    /// A hub's responder on a loopback port, enrollment answering at once.
    async fn responder() -> (
        SocketAddr,
        Fingerprint,
        Arc<ResponderCounters>,
        CancellationToken,
    ) {
        let identity = Identity::generate("hub").unwrap();
        let counters = Arc::new(ResponderCounters::default());
        let endpoint = endpoint("127.0.0.1:0".parse().unwrap(), &identity, &counters).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let context = Context {
            allowed: Arc::default(),
            sessions: Arc::default(),
            counters: counters.clone(),
            events: Arc::new(NoEvents),
            enroll: Some(Arc::new(|_, _, _| {
                Box::pin(async { Ok(b"refused: test".to_vec()) })
            })),
            sync: None,
            instance: 7,
        };
        let stop = CancellationToken::new();
        tokio::spawn(serve(endpoint, context, stop.clone()));
        (addr, identity.fingerprint(), counters, stop)
    }

    #[tokio::test]
    async fn enrollment_clients_that_send_nothing_are_dropped_and_capped() {
        let (addr, hub, counters, stop) = responder().await;
        let id = Identity::generate("annex").unwrap();
        let rustls = tls::enroll_client_config(&id, hub).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap(),
        ));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_ENROLLMENTS {
            let conn = client
                .connect_with(config.clone(), addr, tls::SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            idle.push(conn);
        }
        let start = Instant::now();
        // One more than the cap: closed at once, with a reason.
        let extra = client
            .connect_with(config.clone(), addr, tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(2), extra.closed())
            .await
            .expect("the connection over the cap is closed at once");
        assert!(
            format!("{reason}").contains("too many enrollments"),
            "{reason}"
        );
        assert_eq!(counters.limited.get(), 1);
        // The others never send a request: closed after the request
        // deadline (not the 10 s of a whole exchange, nor the idle timeout).
        for conn in &idle {
            tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("an idle enrollment connection is closed");
        }
        let took = start.elapsed();
        assert!(
            took >= ENROLL_REQUEST_TIMEOUT - Duration::from_millis(500)
                && took < ENROLL_REQUEST_TIMEOUT + Duration::from_secs(2),
            "closed after {took:?}"
        );
        assert_eq!(counters.timed_out.get(), MAX_ENROLLMENTS as u64);
        assert_eq!(counters.open.get(), 0);
        assert_eq!(counters.handshakes.get(), 0);
        // The slots are free again: a real request is answered.
        let conn = client
            .connect_with(config, addr, tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"{}").await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(4096).await.unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("refused"));
        stop.cancel();
    }

    /// The registry goes to a follower's certificate only: at connect,
    /// then at each change; any other certificate is refused.
    #[tokio::test]
    async fn only_a_followers_certificate_gets_the_registry() {
        let hub = Identity::generate("hub").unwrap();
        let follower = Identity::generate("backup").unwrap();
        let counters = Arc::new(ResponderCounters::default());
        let endpoint = endpoint("127.0.0.1:0".parse().unwrap(), &hub, &counters).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (frames, _) = tokio::sync::watch::channel(Arc::new(b"first".to_vec()));
        let allowed = follower.fingerprint();
        let source = frames.clone();
        let context = Context {
            allowed: Arc::default(),
            sessions: Arc::default(),
            counters: counters.clone(),
            events: Arc::new(NoEvents),
            enroll: None,
            sync: Some(Arc::new(move |fp: &Fingerprint| {
                (*fp == allowed).then(|| (Name::new("backup").unwrap(), source.subscribe()))
            })),
            instance: 7,
        };
        let stop = CancellationToken::new();
        tokio::spawn(serve(endpoint, context, stop.clone()));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connect = |id: &Identity| {
            let rustls = tls::sync_client_config(id, hub.fingerprint()).unwrap();
            let config = quinn::ClientConfig::new(Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap(),
            ));
            client.connect_with(config, addr, tls::SERVER_NAME).unwrap()
        };
        let conn = connect(&follower).await.unwrap();
        let mut recv = conn.accept_uni().await.unwrap();
        let mut buf = [0u8; 5];
        recv.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first");
        frames.send_replace(Arc::new(b"again".to_vec()));
        tokio::time::timeout(Duration::from_secs(2), recv.read_exact(&mut buf))
            .await
            .expect("the next frame comes at once")
            .unwrap();
        assert_eq!(&buf, b"again");
        assert_eq!(counters.authenticated.get(), 1);
        // A certificate that is no follower's (an annex's, say).
        let stranger = Identity::generate("annex").unwrap();
        let conn = connect(&stranger).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("refused at once");
        assert!(format!("{reason}").contains("unknown follower"), "{reason}");
        assert_eq!(counters.refused.get(), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn the_responder_records_when_it_last_heard_a_site_and_what_it_reported() {
        let hub = Identity::generate("hub").unwrap();
        let annex = Identity::generate("annex-1").unwrap();
        let site = Name::new("annex-1").unwrap();
        let counters = Arc::new(ResponderCounters::default());
        let endpoint = endpoint("127.0.0.1:0".parse().unwrap(), &hub, &counters).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let allowed = Arc::new(AllowedSites::default());
        allowed.set([(annex.fingerprint(), site.clone())]);
        let sessions = Arc::new(Sessions::default());
        let context = Context {
            allowed,
            sessions: sessions.clone(),
            counters: counters.clone(),
            events: Arc::new(NoEvents),
            enroll: None,
            sync: None,
            instance: 7,
        };
        let stop = CancellationToken::new();
        tokio::spawn(serve(endpoint, context, stop.clone()));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let rustls = tls::client_config(&annex, hub.fingerprint()).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap(),
        ));
        let conn = client
            .connect_with(config, addr, tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(sessions.heard().get(&site), None, "nothing heard yet");
        // A probe: heard (once echoed, the responder has recorded it).
        let before = Instant::now();
        let p = wire::Probe {
            seq: 1,
            stamp_us: 0,
        };
        conn.send_datagram(bytes::Bytes::copy_from_slice(&wire::probe(p)))
            .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(2), conn.read_datagram())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(wire::parse_echo(&echo), Some(p));
        let heard = sessions.heard()[&site].clone();
        assert!(heard.datagram.is_some_and(|t| t >= before), "{heard:?}");
        assert_eq!(heard.report, None);
        // A report naming another hub: kept, and told at once.
        let report = Report {
            active: "fiber".into(),
            hub: Some("backup".into()),
            uplinks: vec![wire::Uplink {
                name: "fiber".into(),
                state: "up".into(),
                ..wire::Uplink::default()
            }],
            here: Some(false),
            ..Report::default()
        };
        conn.send_datagram(report.encode().unwrap().into()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), sessions.report_arrived())
            .await
            .expect("told of the report");
        let heard = sessions.heard()[&site].clone();
        assert_eq!(heard.report, Some((false, Some("backup".to_string()))));
        // Garbage is not a sign of life.
        let last = heard.datagram;
        conn.send_datagram(bytes::Bytes::from_static(b"garbage"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while counters.garbage.get() == 0 {
            assert!(Instant::now() < deadline, "garbage not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sessions.heard()[&site].datagram, last);
        // A revoked site is forgotten.
        assert_eq!(sessions.close_site(&site), 1);
        assert_eq!(sessions.heard().get(&site), None);
        stop.cancel();
    }
}
