//! An annex's prober for one uplink: one QUIC connection to the hub over
//! that uplink (socket marked for the uplink's routing table and bound to
//! its interface), probe datagrams at the rate the failover task asks for,
//! and one [`Sample`] per probe: echoed (with its RTT), lost (no echo within
//! the timeout) or late (echoed after being counted lost).
//!
//! While there is no connection, every due probe counts as lost, so a dead
//! uplink is detected at the same pace whether its connection is up or not.
//! Every byte the prober's socket sends or receives (handshakes included)
//! is counted, with IP and UDP headers: that is what a carrier bills.

use std::collections::BTreeMap;
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

use super::tls::SERVER_NAME;
use super::wire::{self, Probe};
use crate::decision::{Outcome, Sample};

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
pub struct Outgoing {
    pub uplink: usize,
    pub datagram: Option<bytes::Bytes>,
}

/// What a prober needs to know.
#[derive(Clone)]
pub struct ProberSpec {
    pub uplink: usize,
    pub name: String,
    pub interface: String,
    pub fwmark: u32,
    pub hub: SocketAddr,
    pub client: quinn::ClientConfig,
    /// A probe not echoed within this time is lost.
    pub timeout: Duration,
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

/// A socket that counts what goes through it.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<ProbeCounters>,
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
        self.counters
            .sent_bytes
            .inc_by(len as u64 + segments as u64 * self.header);
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
fn endpoint(spec: &ProberSpec, counters: Arc<ProbeCounters>) -> io::Result<quinn::Endpoint> {
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

/// Reconnection backoff: 0.5 s doubling, at most `max(3 × interval, 5 s)`
/// capped at 60 s (a metered standby uplink is not hammered).
fn backoff(failures: u32, interval: Duration) -> Duration {
    let cap = (interval * 3).clamp(Duration::from_secs(5), Duration::from_secs(60));
    (Duration::from_millis(500) * 2u32.saturating_pow(failures.min(10))).min(cap)
}

type Connecting =
    Pin<Box<dyn std::future::Future<Output = Result<quinn::Connection, String>> + Send>>;

/// Sends the annex's report if this prober's uplink is the one to carry it.
fn send_report(uplink: usize, conn: Option<&quinn::Connection>, out: &Outgoing) {
    if out.uplink != uplink {
        return;
    }
    if let (Some(c), Some(d)) = (conn, &out.datagram) {
        if let Err(e) = c.send_datagram(d.clone()) {
            tracing::debug!(error = %e, "cannot send the report to the hub");
        }
    }
}

/// Runs the prober until `stop`.
pub async fn run(
    spec: ProberSpec,
    mut interval: watch::Receiver<Duration>,
    mut reports: watch::Receiver<Outgoing>,
    samples: mpsc::Sender<Sample>,
    counters: Arc<ProbeCounters>,
    clock: Instant,
    stop: CancellationToken,
) {
    let since = |t: Instant| t.saturating_duration_since(clock);
    let mut endpoint: Option<quinn::Endpoint> = None;
    let mut conn: Option<quinn::Connection> = None;
    let mut connecting: Option<Connecting> = None;
    let mut failures = 0u32;
    let mut reconnect_at = Instant::now();
    let mut seq = 0u64;
    // seq → send time, for probes not resolved yet.
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut next_probe = Instant::now();
    let mut reporting = true;

    loop {
        let every = *interval.borrow();
        let next_timeout = pending.values().next().map(|sent| *sent + spec.timeout);
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = stop.cancelled() => break,
            r = reports.changed(), if reporting => match r {
                Ok(()) => send_report(spec.uplink, conn.as_ref(), &reports.borrow_and_update()),
                Err(_) => reporting = false,
            },
            _ = interval.changed() => {
                // A faster rate (this uplink became active) applies at once.
                let new = *interval.borrow();
                next_probe = next_probe.min(Instant::now() + new);
            }
            _ = tokio::time::sleep_until(next_probe.into()) => {
                let sent = Instant::now();
                seq += 1;
                let probe = wire::probe(Probe { seq, stamp_us: since(sent).as_micros() as u64 });
                if let Some(c) = &conn {
                    // A probe that cannot be sent is resolved as lost at its
                    // timeout, like any other.
                    let _ = c.send_datagram(bytes::Bytes::copy_from_slice(&probe));
                }
                pending.insert(seq, sent);
                next_probe = sent + every;
            }
            _ = tokio::time::sleep_until(next_timeout.unwrap_or(far).into()), if next_timeout.is_some() => {
                let now = Instant::now();
                while let Some((&s, &sent)) = pending.iter().next() {
                    if sent + spec.timeout > now {
                        break;
                    }
                    pending.remove(&s);
                    let sample = Sample { uplink: spec.uplink, sent: since(sent), outcome: Outcome::Lost };
                    if samples.send(sample).await.is_err() {
                        return;
                    }
                }
            }
            d = async { conn.as_ref().expect("guarded").read_datagram().await }, if conn.is_some() => {
                match d {
                    Ok(bytes) => {
                        let now = Instant::now();
                        let Some(echo) = wire::parse_echo(&bytes) else {
                            tracing::debug!(uplink = %spec.name, "ignored a datagram that is not an echo");
                            continue;
                        };
                        let sent = clock + Duration::from_micros(echo.stamp_us);
                        let rtt = now.saturating_duration_since(sent);
                        let outcome = if pending.remove(&echo.seq).is_some() {
                            Outcome::Echo { rtt }
                        } else {
                            Outcome::Late { rtt }
                        };
                        let sample = Sample { uplink: spec.uplink, sent: since(sent), outcome };
                        if samples.send(sample).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::info!(uplink = %spec.name, error = %e, "probe connection lost");
                        conn = None;
                        reconnect_at = Instant::now() + backoff(failures, every);
                    }
                }
            }
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match r {
                    Ok(c) => {
                        tracing::info!(uplink = %spec.name, hub = %spec.hub, local = ?endpoint.as_ref().and_then(|e| e.local_addr().ok()), "probe connection up");
                        failures = 0;
                        send_report(spec.uplink, Some(&c), &reports.borrow());
                        conn = Some(c);
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = backoff(failures, every);
                        tracing::debug!(uplink = %spec.name, error = %e, retry_in = ?wait, "probe connection failed");
                        if failures == 1 || failures % 10 == 0 {
                            tracing::warn!(uplink = %spec.name, hub = %spec.hub, error = %e, failures, "cannot reach the hub's probe responder");
                        }
                        reconnect_at = Instant::now() + wait;
                    }
                }
            }
            _ = tokio::time::sleep_until(reconnect_at.into()), if conn.is_none() && connecting.is_none() => {
                if endpoint.is_none() {
                    match self::endpoint(&spec, counters.clone()) {
                        Ok(e) => endpoint = Some(e),
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(uplink = %spec.name, interface = %spec.interface, error = %e, "cannot open the probe socket");
                            reconnect_at = Instant::now() + backoff(failures, every);
                            continue;
                        }
                    }
                }
                let ep = endpoint.as_ref().expect("just set");
                let attempt = ep.connect(spec.hub, SERVER_NAME);
                // A handshake gets a few probe timeouts, at least 2 s.
                let limit = (spec.timeout * 10).max(Duration::from_secs(2));
                connecting = Some(Box::pin(async move {
                    let connecting = attempt.map_err(|e| e.to_string())?;
                    match tokio::time::timeout(limit, connecting).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no handshake within {limit:?}")),
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
    fn backoff_grows_and_is_capped_by_the_rate() {
        let fast = Duration::from_millis(100);
        assert_eq!(backoff(0, fast), Duration::from_millis(500));
        assert_eq!(backoff(1, fast), Duration::from_secs(1));
        assert_eq!(backoff(20, fast), Duration::from_secs(5));
        assert_eq!(
            backoff(20, Duration::from_secs(20)),
            Duration::from_secs(60)
        );
    }
}
