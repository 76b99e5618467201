//! An annex's prober for one uplink: one QUIC connection to the hub over
//! that uplink (socket marked for the uplink's routing table and bound to
//! its interface), probe datagrams at the rate the failover task asks for,
//! and one [`Sample`] per probe: echoed (with its RTT), lost (no echo within
//! the timeout) or late (echoed after being counted lost).
//!
//! While there is no connection, every due probe counts as lost, so a dead
//! uplink is detected at the same pace whether its connection is up or not.
//! Every byte the prober's socket sends or receives (handshakes included)
//! is counted, with IP and UDP headers: that is what a carrier bills; on a
//! metered uplink those bytes are also taken from its probe [`Budget`].
//!
//! The prober also tells the failover task how its connection fares
//! ([`Connection`]: up, responder unreachable, refused by the hub), and
//! learns the hub's instance (a number the hub draws at each start) on
//! every new connection, so that the annex knows when the hub restarted.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, ATTEMPT_COST, PROBE_COST};
use super::responder::{CLOSE_REVOKED, CLOSE_UNKNOWN};
use super::tls::SERVER_NAME;
use super::wire::{self, FromHub, Probe};
use crate::decision::{Outcome, PathId, Sample};

/// Bytes sent and received by one uplink's prober, IP and UDP headers
/// included: the metrics' counters themselves.
#[derive(Debug, Default, Clone)]
pub struct ProbeCounters {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
}

/// The annex's latest report for the hub, and the uplink whose prober
/// sends it (the active one: standby uplinks, metered ones above all,
/// carry probes only).
#[derive(Debug, Clone, Default)]
pub struct ReportForHub {
    pub uplink: usize,
    pub datagram: Option<bytes::Bytes>,
}

/// What a prober needs to know.
#[derive(Clone)]
pub struct ProberSpec {
    pub uplink: usize,
    /// The hub probed (its index in the config): the path is (hub, uplink).
    pub hub_index: usize,
    pub name: String,
    pub interface: String,
    pub fwmark: u32,
    pub hub: SocketAddr,
    pub client: quinn::ClientConfig,
    /// A probe not echoed within this time is lost.
    pub timeout: Duration,
    /// Billed by volume: reconnections back off further.
    pub metered: bool,
}

impl fmt::Debug for ProberSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProberSpec")
            .field("uplink", &self.name)
            .field("interface", &self.interface)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// A socket that counts what goes through it (and takes it from the budget).
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<ProbeCounters>,
    budget: Option<Arc<Budget>>,
    header: u64,
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let len = transmit.contents.len();
        let segments = transmit.segment_size.map_or(1, |s| len.div_ceil(s.max(1)));
        let bytes = len as u64 + segments as u64 * self.header;
        self.counters.sent_bytes.inc_by(bytes);
        if let Some(b) = &self.budget {
            b.spend(bytes);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            let bytes: u64 = meta[..*n]
                .iter()
                .map(|m| m.len as u64 + m.len.div_ceil(m.stride.max(1)) as u64 * self.header)
                .sum();
            self.counters.received_bytes.inc_by(bytes);
            if let Some(b) = &self.budget {
                b.spend(bytes);
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The prober's endpoint: a UDP socket marked for the uplink's table and
/// bound to its interface, wrapped for counting.
fn endpoint(
    spec: &ProberSpec,
    counters: Arc<ProbeCounters>,
    budget: Option<Arc<Budget>>,
) -> io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if spec.hub.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_mark(spec.fwmark)?;
    socket.bind_device(Some(spec.interface.as_bytes()))?;
    let any: SocketAddr = if spec.hub.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    socket.bind(&any.into())?;
    socket.set_nonblocking(true)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = quinn::Runtime::wrap_udp_socket(&*runtime, socket.into())?;
    let counting = Arc::new(CountingSocket {
        inner,
        counters,
        budget,
        header: if spec.hub.is_ipv4() { 28 } else { 48 },
    });
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        counting,
        runtime,
    )?;
    endpoint.set_default_client_config(spec.client.clone());
    Ok(endpoint)
}

/// How the prober's connection to the hub's responder fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// No attempt has ended yet.
    Connecting,
    Up,
    /// The last `failures` attempts got no answer (or the socket could not
    /// be opened): the responder is unreachable over this uplink.
    Unreachable {
        failures: u32,
    },
    /// The hub answered and closed the connection because of who we are.
    Refused(Refusal),
}

impl Connection {
    /// For status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Up => "connected",
            Connection::Unreachable { .. } => "unreachable",
            Connection::Refused(_) => "refused",
        }
    }
}

/// Why the hub refused the annex (from the close code, never the hub's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hub knows no site with this annex's probe certificate (not
    /// registered yet, or a wrong certificate).
    UnknownCertificate,
    /// The site was removed at the hub (`townlink site remove`).
    Revoked,
}

impl Refusal {
    pub fn from_code(code: u64) -> Option<Refusal> {
        match code {
            CLOSE_UNKNOWN => Some(Refusal::UnknownCertificate),
            CLOSE_REVOKED => Some(Refusal::Revoked),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownCertificate => "unknown certificate",
            Refusal::Revoked => "site revoked",
        }
    }
}

/// First wait after a refusal; it doubles up to [`REFUSED_MAX`]. A refusal
/// is an administrative state (not registered yet, revoked), not a fault
/// that a quick retry could fix.
pub const REFUSED_FIRST: Duration = Duration::from_secs(60);
pub const REFUSED_MAX: Duration = Duration::from_secs(600);
/// The longest wait between two attempts of a metered uplink: an attempt
/// without answer costs ~4.9 kB, so 20 minutes is ~4 B/s (11 MB a month).
/// The tunnel needing it (faster interval) ends the wait at once.
pub const METERED_MAX: Duration = Duration::from_secs(1200);
/// On a fast-probed uplink that is not metered (the active fiber), the
/// first attempts after a loss follow each other closely, each given
/// [`FAST_LIMIT`], so that a restarted hub is found within about a second.
const FAST_TRIES: u32 = 10;
const FAST_PAUSE: Duration = Duration::from_millis(200);
const FAST_LIMIT: Duration = Duration::from_secs(1);
/// How long an attempt of a metered uplink may take: its first packet
/// (a padded 1.2 kB Initial) is repeated once, twice, after ~1 s; the
/// next repetition would come at ~3 s. So an attempt without answer costs
/// four 1,228-byte packets (with the one that closes it), not six.
const METERED_LIMIT: Duration = Duration::from_millis(2500);
/// Failed attempts of a metered uplink before its retries slow down to its
/// interval: a loaded router or a hub starting at the same time may fail
/// an attempt or two.
const METERED_QUICK_TRIES: u32 = 2;
/// Hellos sent on a new connection until the hub's instance is known.
const HELLO_TRIES: u32 = 5;
/// A connection of an uplink that is not metered that brought no echo for
/// this long while probes were lost is replaced (a hub that crashed and
/// came back does not know it, and the idle timeout is 90 s).
const STALE_AFTER: Duration = Duration::from_secs(10);
/// Probes counted lost that are remembered, so that a late echo still
/// gives its RTT.
const EXPIRED_KEPT: usize = 64;

/// The wait before the next connection attempt after `failures` failed
/// attempts in a row (0: the connection was just lost).
///
/// - not metered, probed faster than every second (the active uplink):
///   [`FAST_PAUSE`] for the first [`FAST_TRIES`], then 0.5 s doubling up
///   to 5 s;
/// - not metered, standby: 0.5 s doubling, at most three intervals
///   (5 s to 60 s);
/// - metered: 0.5 s doubling when probed fast (the tunnel needs it) and
///   for the first [`METERED_QUICK_TRIES`], else from the interval,
///   doubling; at most forty intervals (5 s to 20 min).
pub fn retry_wait(failures: u32, interval: Duration, metered: bool) -> Duration {
    let doubling = |base: Duration, cap: Duration| {
        (base * 2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(cap)
    };
    let fast = interval < Duration::from_secs(1);
    if metered {
        let cap = (interval * 40).clamp(Duration::from_secs(5), METERED_MAX);
        if fast || failures <= METERED_QUICK_TRIES {
            return doubling(Duration::from_millis(500), cap);
        }
        let slow =
            (interval * 2u32.saturating_pow((failures - METERED_QUICK_TRIES - 1).min(16))).min(cap);
        return slow;
    }
    if fast && failures <= FAST_TRIES {
        return FAST_PAUSE;
    }
    let cap = (interval * 3).clamp(Duration::from_secs(5), Duration::from_secs(60));
    doubling(Duration::from_millis(500), cap)
}

/// How long one attempt may take.
fn attempt_limit(failures: u32, interval: Duration, metered: bool, timeout: Duration) -> Duration {
    if metered {
        METERED_LIMIT
    } else if interval < Duration::from_secs(1) && failures < FAST_TRIES {
        FAST_LIMIT
    } else {
        // A few probe timeouts, at least 2 s: a loaded router, a slow 4G.
        (timeout * 10).max(Duration::from_secs(2))
    }
}

/// The wait after the `n`-th refusal in a row.
pub fn refused_wait(n: u32) -> Duration {
    (REFUSED_FIRST * 2u32.saturating_pow(n.saturating_sub(1).min(16))).min(REFUSED_MAX)
}

/// Probes sent and not resolved yet (by sequence number, with the local
/// send time: the RTT never comes from the echoed stamp), and the last
/// ones counted lost, for late echoes.
#[derive(Debug, Default)]
struct Pending {
    waiting: BTreeMap<u64, Instant>,
    expired: VecDeque<(u64, Instant)>,
}

impl Pending {
    fn sent(&mut self, seq: u64, at: Instant) {
        self.waiting.insert(seq, at);
    }

    /// When the oldest waiting probe is lost.
    fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.waiting.values().next().map(|sent| *sent + timeout)
    }

    /// Removes the probes lost by `now`; returns their send times, oldest first.
    fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Instant> {
        let mut lost = Vec::new();
        while let Some((&seq, &sent)) = self.waiting.iter().next() {
            if sent + timeout > now {
                break;
            }
            self.waiting.remove(&seq);
            self.expired.push_back((seq, sent));
            if self.expired.len() > EXPIRED_KEPT {
                self.expired.pop_front();
            }
            lost.push(sent);
        }
        lost
    }

    /// The outcome of an echo of `seq` at `now`, with the probe's send
    /// time; `None` for a sequence number we do not know (or no longer).
    fn echo(&mut self, seq: u64, now: Instant) -> Option<(Instant, Outcome)> {
        if let Some(sent) = self.waiting.remove(&seq) {
            let rtt = now.saturating_duration_since(sent);
            return Some((sent, Outcome::Echo { rtt }));
        }
        let i = self.expired.iter().position(|(s, _)| *s == seq)?;
        let (_, sent) = self.expired.remove(i)?;
        let rtt = now.saturating_duration_since(sent);
        Some((sent, Outcome::Late { rtt }))
    }
}

/// How an attempt or a connection ended.
enum Failure {
    Refused(Refusal),
    Other(String),
}

fn failure(e: &quinn::ConnectionError) -> Failure {
    if let quinn::ConnectionError::ApplicationClosed(close) = e {
        if let Some(r) = Refusal::from_code(close.error_code.into_inner()) {
            return Failure::Refused(r);
        }
    }
    Failure::Other(e.to_string())
}

type Connecting =
    Pin<Box<dyn std::future::Future<Output = Result<quinn::Connection, Failure>> + Send>>;

/// Sends the annex's report if this prober's uplink is the one to carry it.
fn send_report(uplink: usize, conn: Option<&quinn::Connection>, out: &ReportForHub) {
    if out.uplink != uplink {
        return;
    }
    if let (Some(c), Some(d)) = (conn, &out.datagram) {
        if let Err(e) = c.send_datagram(d.clone()) {
            tracing::debug!(error = %e, "cannot send the report to the hub");
        }
    }
}

/// The channels of a prober.
pub struct ProberIo {
    /// The probe interval the failover task asks for; the prober ends when
    /// its sender is gone.
    pub interval: watch::Receiver<Duration>,
    pub reports: watch::Receiver<ReportForHub>,
    pub samples: mpsc::Sender<Sample>,
    /// How the connection fares.
    pub connection: watch::Sender<Connection>,
    /// The hub's instance, shared by every prober of that hub.
    pub hub_instance: watch::Sender<Option<u64>>,
    pub counters: Arc<ProbeCounters>,
    /// The uplink's probe budget, if it has one.
    pub budget: Option<Arc<Budget>>,
}

/// Runs the prober until `stop`, or until the failover task is gone (its
/// interval or sample channel closed).
pub async fn run(spec: ProberSpec, io: ProberIo, clock: Instant, stop: CancellationToken) {
    let ProberIo {
        mut interval,
        mut reports,
        samples,
        connection,
        hub_instance,
        counters,
        budget,
    } = io;
    let since = |t: Instant| t.saturating_duration_since(clock);
    let set_connection = |c: Connection| {
        connection.send_if_modified(|current| {
            let changed = *current != c;
            *current = c;
            changed
        });
    };
    // The hub answered on the connection: it accepts us.
    let accepted = |refusals: &mut u32| {
        if *refusals > 0 {
            tracing::info!(uplink = %spec.name, "the hub accepts this annex's probes again");
            *refusals = 0;
        }
        set_connection(Connection::Up);
    };
    // The hub refused us: said once, then retried less and less often.
    let refused = |r: Refusal, refusals: &mut u32| {
        *refusals += 1;
        let wait = refused_wait(*refusals);
        if *refusals == 1 {
            tracing::warn!(uplink = %spec.name, hub = %spec.hub, reason = r.as_str(), retry_in = ?wait, "refused by the hub: its probe responder does not accept this annex's certificate; retrying after 1, 2, 4, 8, then every 10 min: register the site at the hub (townlink site add and join, or its [[site]] certificate)");
        } else {
            tracing::debug!(uplink = %spec.name, reason = r.as_str(), retry_in = ?wait, "refused by the hub again");
        }
        set_connection(Connection::Refused(r));
        wait
    };
    let mut endpoint: Option<quinn::Endpoint> = None;
    let mut conn: Option<quinn::Connection> = None;
    let mut connecting: Option<Connecting> = None;
    let mut failures = 0u32;
    let mut refusals = 0u32;
    let mut reconnect_at = Instant::now();
    let mut seq = 0u64;
    let mut pending = Pending::default();
    let mut next_probe = Instant::now();
    let mut reporting = true;
    // Hellos still to send on this connection (0 once the instance is known).
    let mut hellos = 0u32;
    // The last sign of life of the connection: up, or an echo.
    let mut last_answer = Instant::now();

    loop {
        let every = *interval.borrow();
        let next_timeout = pending.next_deadline(spec.timeout);
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = stop.cancelled() => break,
            r = reports.changed(), if reporting => match r {
                Ok(()) => send_report(spec.uplink, conn.as_ref(), &reports.borrow_and_update()),
                Err(_) => reporting = false,
            },
            r = interval.changed() => {
                if r.is_err() {
                    // The failover task is gone: nobody reads our samples.
                    tracing::debug!(uplink = %spec.name, "interval channel closed: prober ends");
                    break;
                }
                // A faster rate (this uplink became active, or the tunnel
                // needs every uplink) applies at once, to probes and to a
                // waiting reconnection alike.
                let new = *interval.borrow_and_update();
                let now = Instant::now();
                next_probe = next_probe.min(now + new);
                if new < every && conn.is_none() && connecting.is_none() && refusals == 0 {
                    failures = 0;
                    reconnect_at = reconnect_at.min(now + retry_wait(0, new, spec.metered));
                }
            }
            _ = tokio::time::sleep_until(next_probe.into()) => {
                let now = Instant::now();
                // Only bytes on the wire cost: without a connection the
                // probe is counted lost without being sent.
                let wait = match (&conn, &budget) {
                    (Some(_), Some(b)) => b.ask(PROBE_COST),
                    _ => Duration::ZERO,
                };
                if !wait.is_zero() {
                    tracing::debug!(uplink = %spec.name, wait = ?wait, "probe delayed by the probe budget");
                    next_probe = now + wait.max(every);
                    continue;
                }
                seq += 1;
                let probe = wire::probe(Probe { seq, stamp_us: since(now).as_micros() as u64 });
                if let Some(c) = &conn {
                    // A probe that cannot be sent is resolved as lost at its
                    // timeout, like any other.
                    let _ = c.send_datagram(bytes::Bytes::copy_from_slice(&probe));
                    if hellos > 0 {
                        hellos -= 1;
                        let _ = c.send_datagram(bytes::Bytes::copy_from_slice(&wire::hello()));
                    }
                }
                pending.sent(seq, now);
                next_probe = now + every;
            }
            _ = tokio::time::sleep_until(next_timeout.unwrap_or(far).into()), if next_timeout.is_some() => {
                let now = Instant::now();
                for sent in pending.expire(now, spec.timeout) {
                    let sample = Sample { path: PathId::new(spec.hub_index, spec.uplink), sent: since(sent), outcome: Outcome::Lost };
                    if samples.send(sample).await.is_err() {
                        return;
                    }
                }
                // Not on a metered uplink: a reconnection costs kilobytes
                // there, and the idle timeout ends the connection anyway.
                if let Some(c) = conn.as_ref().filter(|_| !spec.metered) {
                    let silent = now.saturating_duration_since(last_answer);
                    if silent >= STALE_AFTER.max(every * 4) {
                        tracing::info!(uplink = %spec.name, silent = ?silent, "no echo on the probe connection: reconnecting");
                        c.close(0u8.into(), b"no echoes");
                        conn = None;
                        set_connection(Connection::Unreachable { failures: 0 });
                        reconnect_at = now + retry_wait(0, every, spec.metered);
                    }
                }
            }
            d = async { conn.as_ref().expect("guarded").read_datagram().await }, if conn.is_some() => {
                match d {
                    Ok(bytes) => {
                        let now = Instant::now();
                        match wire::parse_from_hub(&bytes) {
                            Some(FromHub::Echo(echo)) => {
                                last_answer = now;
                                accepted(&mut refusals);
                                let Some((sent, outcome)) = pending.echo(echo.seq, now) else {
                                    tracing::debug!(uplink = %spec.name, seq = echo.seq, "ignored an echo of an unknown probe");
                                    continue;
                                };
                                let sample = Sample { path: PathId::new(spec.hub_index, spec.uplink), sent: since(sent), outcome };
                                if samples.send(sample).await.is_err() {
                                    return;
                                }
                            }
                            Some(FromHub::Instance(id)) => {
                                hellos = 0;
                                accepted(&mut refusals);
                                hub_instance.send_if_modified(|current| {
                                    let changed = *current != Some(id);
                                    if changed {
                                        tracing::debug!(uplink = %spec.name, instance = format!("{id:016x}"), "hub instance");
                                    }
                                    *current = Some(id);
                                    changed
                                });
                            }
                            None => {
                                tracing::debug!(uplink = %spec.name, "ignored a datagram that is neither an echo nor the hub's instance");
                            }
                        }
                    }
                    Err(e) => {
                        conn = None;
                        let now = Instant::now();
                        match failure(&e) {
                            Failure::Refused(r) => reconnect_at = now + refused(r, &mut refusals),
                            Failure::Other(e) => {
                                tracing::info!(uplink = %spec.name, error = %e, "probe connection lost");
                                set_connection(Connection::Connecting);
                                reconnect_at = now + retry_wait(0, every, spec.metered);
                            }
                        }
                    }
                }
            }
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let now = Instant::now();
                match r {
                    Ok(c) => {
                        tracing::info!(uplink = %spec.name, hub = %spec.hub, local = ?endpoint.as_ref().and_then(|e| e.local_addr().ok()), "probe connection up");
                        failures = 0;
                        hellos = HELLO_TRIES - 1;
                        let _ = c.send_datagram(bytes::Bytes::copy_from_slice(&wire::hello()));
                        send_report(spec.uplink, Some(&c), &reports.borrow());
                        conn = Some(c);
                        last_answer = now;
                        // Measure at once: on a slowly probed standby, the
                        // next probe may be 30 s away, and probes sent before
                        // the connection were all lost (a 4G whose first
                        // packet was lost while the hub started would stay
                        // "down" for that long).
                        next_probe = now;
                        // Up once the hub answers: a hub that refuses us
                        // completes the handshake, then closes.
                    }
                    Err(Failure::Refused(r)) => reconnect_at = now + refused(r, &mut refusals),
                    Err(Failure::Other(e)) => {
                        failures += 1;
                        let wait = retry_wait(failures, every, spec.metered);
                        tracing::debug!(uplink = %spec.name, error = %e, retry_in = ?wait, "probe connection failed");
                        if failures == 1 || failures % 10 == 0 {
                            tracing::warn!(uplink = %spec.name, hub = %spec.hub, error = %e, failures, retry_in = ?wait, "cannot reach the hub's probe responder");
                        }
                        if refusals == 0 {
                            set_connection(Connection::Unreachable { failures });
                        }
                        reconnect_at = now + wait;
                    }
                }
            }
            _ = tokio::time::sleep_until(reconnect_at.into()), if conn.is_none() && connecting.is_none() => {
                let now = Instant::now();
                if let Some(b) = &budget {
                    let wait = b.ask(ATTEMPT_COST);
                    if !wait.is_zero() {
                        tracing::debug!(uplink = %spec.name, wait = ?wait, "connection attempt delayed by the probe budget");
                        reconnect_at = now + wait;
                        continue;
                    }
                }
                if endpoint.is_none() {
                    match self::endpoint(&spec, counters.clone(), budget.clone()) {
                        Ok(e) => endpoint = Some(e),
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(uplink = %spec.name, interface = %spec.interface, error = %e, "cannot open the probe socket");
                            set_connection(Connection::Unreachable { failures });
                            reconnect_at = now + retry_wait(failures, every, spec.metered);
                            continue;
                        }
                    }
                }
                let ep = endpoint.as_ref().expect("just set");
                let attempt = ep.connect(spec.hub, SERVER_NAME);
                let limit = attempt_limit(failures, every, spec.metered, spec.timeout);
                connecting = Some(Box::pin(async move {
                    let connecting = attempt.map_err(|e| Failure::Other(e.to_string()))?;
                    match tokio::time::timeout(limit, connecting).await {
                        Ok(r) => r.map_err(|e| failure(&e)),
                        Err(_) => Err(Failure::Other(format!("no handshake within {limit:?}"))),
                    }
                }));
            }
        }
    }
    if let Some(c) = conn {
        c.close(0u8.into(), b"annex stopping");
    }
    if let Some(e) = endpoint {
        let _ = tokio::time::timeout(Duration::from_millis(500), e.wait_idle()).await;
    }
    tracing::info!(
        uplink = %spec.name,
        sent_bytes = counters.sent_bytes.get(),
        received_bytes = counters.received_bytes.get(),
        "prober stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_and_are_capped_by_the_rate() {
        let fast = Duration::from_millis(100);
        // The active fiber: quick attempts first (a restarted hub is found
        // within about a second), then 0.5 s doubling up to 5 s.
        assert_eq!(retry_wait(0, fast, false), FAST_PAUSE);
        assert_eq!(retry_wait(FAST_TRIES, fast, false), FAST_PAUSE);
        assert_eq!(retry_wait(20, fast, false), Duration::from_secs(5));
        // A standby fiber.
        assert_eq!(
            retry_wait(1, Duration::from_secs(1), false),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_wait(2, Duration::from_secs(1), false),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_wait(20, Duration::from_secs(20), false),
            Duration::from_secs(60)
        );
        // A metered standby: two quick retries (a loaded router, a hub
        // starting), then from its interval up to 10 minutes.
        let standby = Duration::from_secs(30);
        assert_eq!(retry_wait(1, standby, true), Duration::from_millis(500));
        assert_eq!(retry_wait(2, standby, true), Duration::from_secs(1));
        assert_eq!(retry_wait(3, standby, true), standby);
        assert_eq!(retry_wait(4, standby, true), 2 * standby);
        assert_eq!(retry_wait(30, standby, true), METERED_MAX);
        // A metered uplink the tunnel needs now: from 0.5 s up to 5 s.
        assert_eq!(retry_wait(1, fast, true), Duration::from_millis(500));
        assert_eq!(retry_wait(30, fast, true), Duration::from_secs(5));
    }

    #[test]
    fn refusals_back_off_to_minutes() {
        assert_eq!(refused_wait(1), Duration::from_secs(60));
        assert_eq!(refused_wait(2), Duration::from_secs(120));
        assert_eq!(refused_wait(5), REFUSED_MAX);
        assert_eq!(refused_wait(u32::MAX), REFUSED_MAX);
        assert_eq!(
            Refusal::from_code(CLOSE_UNKNOWN),
            Some(Refusal::UnknownCertificate)
        );
        assert_eq!(Refusal::from_code(CLOSE_REVOKED), Some(Refusal::Revoked));
        assert_eq!(Refusal::from_code(0), None, "a hub stopping is no refusal");
    }

    #[test]
    fn the_rtt_comes_from_the_local_send_time_whatever_the_stamp() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(300);
        let mut p = Pending::default();
        p.sent(1, t0);
        p.sent(2, t0 + Duration::from_millis(100));
        // The echo's stamp is never read: a hub (or a bug) echoing
        // u64::MAX, which once overflowed `clock + stamp`, changes nothing.
        let echo = wire::parse_from_hub(
            &wire::echo_for(&wire::probe(Probe {
                seq: 1,
                stamp_us: u64::MAX,
            }))
            .unwrap(),
        );
        let Some(FromHub::Echo(echo)) = echo else {
            panic!("an echo: {echo:?}")
        };
        let (sent, outcome) = p.echo(echo.seq, t0 + Duration::from_millis(42)).unwrap();
        assert_eq!(sent, t0);
        assert_eq!(
            outcome,
            Outcome::Echo {
                rtt: Duration::from_millis(42)
            }
        );
        // Echoed twice, or never sent: ignored.
        assert_eq!(p.echo(1, t0 + Duration::from_millis(50)), None);
        assert_eq!(p.echo(99, t0 + Duration::from_millis(50)), None);
        // Probe 2 is lost at 400 ms; its echo at 450 ms is late, with its RTT.
        assert_eq!(
            p.next_deadline(timeout),
            Some(t0 + Duration::from_millis(400))
        );
        assert!(p
            .expire(t0 + Duration::from_millis(399), timeout)
            .is_empty());
        assert_eq!(
            p.expire(t0 + Duration::from_millis(400), timeout),
            vec![t0 + Duration::from_millis(100)]
        );
        assert_eq!(
            p.echo(2, t0 + Duration::from_millis(450)),
            Some((
                t0 + Duration::from_millis(100),
                Outcome::Late {
                    rtt: Duration::from_millis(350)
                }
            ))
        );
        // Only the last EXPIRED_KEPT lost probes are remembered.
        for s in 10..(10 + EXPIRED_KEPT as u64 + 5) {
            p.sent(s, t0);
        }
        p.expire(t0 + timeout, timeout);
        assert_eq!(p.echo(10, t0 + timeout), None);
        assert!(p.echo(10 + EXPIRED_KEPT as u64 + 4, t0 + timeout).is_some());
    }

    /// A prober whose failover task is gone (interval sender dropped)
    /// ends, instead of spinning on the closed channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_interval_channel_ends_the_prober() {
        let hub_id = super::super::tls::Identity::generate("hub").unwrap();
        let annex_id = super::super::tls::Identity::generate("annex").unwrap();
        let crypto = super::super::tls::client_config(&annex_id, hub_id.fingerprint()).unwrap();
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
        ));
        let spec = ProberSpec {
            uplink: 0,
            hub_index: 0,
            name: "fiber".into(),
            interface: "lo".into(),
            fwmark: 0,
            // Nobody listens there: the prober stays unconnected.
            hub: "127.0.0.1:9".parse().unwrap(),
            client,
            timeout: Duration::from_millis(300),
            metered: false,
        };
        let (interval_tx, interval) = watch::channel(Duration::from_millis(100));
        let (_reports_tx, reports) = watch::channel(ReportForHub::default());
        let (samples, mut samples_rx) = mpsc::channel(1024);
        let (connection, _connection_rx) = watch::channel(Connection::Connecting);
        let (hub_instance, _instance_rx) = watch::channel(None);
        let io = ProberIo {
            interval,
            reports,
            samples,
            connection,
            hub_instance,
            counters: Arc::new(ProbeCounters::default()),
            budget: None,
        };
        let stop = CancellationToken::new();
        let prober = tokio::spawn(run(spec, io, Instant::now(), stop.clone()));
        // It runs: lost probes come in.
        let first = tokio::time::timeout(Duration::from_secs(5), samples_rx.recv()).await;
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        drop(interval_tx);
        let ended = tokio::time::timeout(Duration::from_secs(2), prober).await;
        stop.cancel();
        assert!(
            ended.is_ok(),
            "the prober did not end with its interval channel closed"
        );
    }
}
