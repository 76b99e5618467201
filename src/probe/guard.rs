//! The responder's UDP socket, guarded: every datagram is looked at
//! before quinn sees it, and what a hub never needs from an
//! unauthenticated source is dropped and counted by cause.
//!
//! - Not a QUIC packet a client sends (too short, fixed bit clear, a
//!   Retry or Version Negotiation packet): `malformed`.
//! - A long header of any version but QUIC v1 (annexes speak v1 only):
//!   `unsupported_version`. quinn would answer each with a Version
//!   Negotiation packet; the hub answers nothing.
//! - An Initial in a datagram shorter than 1200 bytes (RFC 9000 §14.1):
//!   `short_initial`.
//! - Datagrams the kernel dropped because the socket's receive buffer
//!   was full (read from the socket, `SO_MEMINFO`): `socket_buffer`. The
//!   buffer is [`RECEIVE_BUFFER`], so that a burst does not push out probes.
//! - Initials beyond the rates: `rate_limited`. Every source address (an
//!   IPv4 address, an IPv6 /64) may send [`PER_SOURCE`] Initials; all
//!   sources together [`FRESH`] Initials without a token (each draws one
//!   Retry) and, apart from those, [`VALIDATED`] Initials carrying a
//!   token (address proven, or a forged token that draws one refusal).
//!
//! Since every reply to an unauthenticated source (Retry, refusal) is
//! drawn by an Initial, these rates also bound what the hub sends to
//! addresses it does not know: at most [`PER_SOURCE`] replies per second
//! toward one address, each smaller than the Initial that drew it.
//! Version Negotiation is never sent; stateless resets (drawn by
//! short-header packets of unknown connections) are spaced by quinn
//! (`EndpointConfig::min_reset_interval`) and always smaller than the
//! packet that drew them.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// QUIC version 1 (RFC 9000), the only one the responder speaks.
pub const QUIC_V1: u32 = 1;
/// Smallest datagram that may carry a client's Initial (RFC 9000 §14.1).
pub const MIN_INITIAL: usize = 1200;

/// A token bucket's shape: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: u32,
}

/// Initials one source address may send.
pub const PER_SOURCE: Rate = Rate {
    burst: 64,
    per_second: 32,
};
/// Initials without a token, from all sources together.
pub const FRESH: Rate = Rate {
    burst: 512,
    per_second: 256,
};
/// Initials with a token, from all sources together.
pub const VALIDATED: Rate = Rate {
    burst: 512,
    per_second: 256,
};
/// Receive buffer of the responder's socket.
pub const RECEIVE_BUFFER: usize = 2 << 20;
/// How often the kernel's drop count of the socket is read.
const KERNEL_DROPS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Per-source buckets: sources are hashed (with a random key) onto this
/// many buckets, so a flood from spoofed addresses takes no memory.
const SOURCE_BUCKETS: usize = 4096;

/// What one datagram is, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Malformed,
    UnsupportedVersion,
    ShortInitial,
    /// A client's Initial; `token`: it carries an address validation token.
    Initial {
        token: bool,
    },
    /// Handshake, 0-RTT or short header: for quinn to route.
    Other,
}

/// Reads a QUIC variable-length integer at `at`; (value, next offset).
fn varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(at..at + len)?;
    let mut v = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        v = (v << 8) | u64::from(*byte);
    }
    Some((v, at + len))
}

/// Classifies one datagram sent to the responder (a server).
pub fn classify(d: &[u8]) -> Kind {
    let Some(&first) = d.first() else {
        return Kind::Malformed;
    };
    if first & 0x80 == 0 {
        // Short header. The responder does not offer to grease the fixed
        // bit, so it is always set.
        return if first & 0x40 == 0 {
            Kind::Malformed
        } else {
            Kind::Other
        };
    }
    let Some(version) = d.get(1..5) else {
        return Kind::Malformed;
    };
    let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
    if version != QUIC_V1 {
        // 0 is Version Negotiation, which only servers send.
        return Kind::UnsupportedVersion;
    }
    if first & 0x40 == 0 {
        return Kind::Malformed;
    }
    match (first >> 4) & 0x3 {
        0 => {}
        1 | 2 => return Kind::Other,
        // Retry: only servers send it.
        _ => return Kind::Malformed,
    }
    if d.len() < MIN_INITIAL {
        return Kind::ShortInitial;
    }
    let cid = |at: usize| -> Option<usize> {
        let len = usize::from(*d.get(at)?);
        (len <= 20 && d.len() > at + len).then_some(at + 1 + len)
    };
    let token = cid(5)
        .and_then(cid)
        .and_then(|at| varint(d, at))
        .map(|(len, _)| len > 0);
    match token {
        Some(token) => Kind::Initial { token },
        None => Kind::Malformed,
    }
}

/// A token bucket; tokens in thousandths, so that slow rates refill
/// smoothly.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            milli: u64::from(rate.burst) * 1000,
            last: now,
        }
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let refill = elapsed.as_micros() as u64 * u64::from(rate.per_second) / 1000;
        if refill > 0 {
            self.milli = (self.milli + refill).min(u64::from(rate.burst) * 1000);
            self.last = now;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The rates of Initials.
#[derive(Debug)]
pub struct Limiter {
    sources: Vec<Bucket>,
    hasher: RandomState,
    fresh: Bucket,
    validated: Bucket,
}

/// The key of a source: an IPv4 address (also when mapped into IPv6), or
/// the /64 of an IPv6 address (what one subscriber gets).
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) << 64 | 1,
        },
    }
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            sources: vec![Bucket::full(PER_SOURCE, now); SOURCE_BUCKETS],
            hasher: RandomState::new(),
            fresh: Bucket::full(FRESH, now),
            validated: Bucket::full(VALIDATED, now),
        }
    }

    /// Whether an Initial from `ip` may go on to quinn.
    pub fn admit(&mut self, ip: IpAddr, token: bool, now: Instant) -> bool {
        let slot = self.hasher.hash_one(source_key(ip)) as usize % SOURCE_BUCKETS;
        if !self.sources[slot].take(PER_SOURCE, now) {
            return false;
        }
        if token {
            self.validated.take(VALIDATED, now)
        } else {
            self.fresh.take(FRESH, now)
        }
    }
}

/// Counters of what the guard dropped, by cause, and of the Retry
/// packets sent: the metrics' counters themselves.
#[derive(Debug, Default, Clone)]
pub struct GuardCounters {
    pub malformed: Counter,
    pub unsupported_version: Counter,
    pub short_initial: Counter,
    pub rate_limited: Counter,
    /// The kernel's count (set, not incremented).
    pub socket_buffer: Counter,
    pub retries: Counter,
}

/// Every cause of a drop: the values of the `cause` label.
pub const CAUSES: [&str; 5] = [
    "malformed",
    "unsupported_version",
    "short_initial",
    "rate_limited",
    "socket_buffer",
];

impl GuardCounters {
    fn count(&self, kind: Kind) {
        match kind {
            Kind::Malformed => self.malformed.inc(),
            Kind::UnsupportedVersion => self.unsupported_version.inc(),
            Kind::ShortInitial => self.short_initial.inc(),
            Kind::Initial { .. } => self.rate_limited.inc(),
            Kind::Other => 0,
        };
    }
}

/// Keeps, in place, the datagrams of a received buffer (`len` bytes,
/// datagrams of `stride` bytes, the last one possibly shorter) for which
/// `keep` is true, in their order; returns the new length. Only the last
/// datagram can be short, and it stays last: the layout stays valid.
pub fn retain_datagrams(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    mut keep: impl FnMut(&[u8]) -> bool,
) -> usize {
    let stride = stride.max(1);
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let end = (read + stride).min(len);
        if keep(&buf[read..end]) {
            if write != read {
                buf.copy_within(read..end, write);
            }
            write += end - read;
        }
        read = end;
    }
    write
}

/// Raises the receive buffer of `socket` to [`RECEIVE_BUFFER`]: above
/// `net.core.rmem_max` with `SO_RCVBUFFORCE` (CAP_NET_ADMIN), else as
/// far as that maximum allows.
pub fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER as libc::c_int;
    // SAFETY: size points to a c_int of the announced length; the
    // descriptor is the live socket borrowed here.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = socket2::SockRef::from(socket).set_recv_buffer_size(RECEIVE_BUFFER);
    }
}

/// Datagrams the kernel dropped at socket `fd` (`SK_MEMINFO_DROPS`).
fn kernel_drops(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len describe a writable buffer of that size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize > libc::SK_MEMINFO_DROPS as usize * 4)
        .then(|| u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

/// The responder's socket: the inner socket, guarded.
#[derive(Debug)]
pub struct GuardedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// The inner socket's descriptor (it lives as long as `inner`).
    fd: std::os::fd::RawFd,
    limiter: Mutex<Limiter>,
    /// When the kernel's drop count was last read.
    drops_read: Mutex<Instant>,
    counters: Arc<GuardCounters>,
}

impl GuardedSocket {
    /// Wraps `socket` for quinn's `runtime` and guards it.
    pub fn new(
        socket: std::net::UdpSocket,
        runtime: &dyn quinn::Runtime,
        counters: Arc<GuardCounters>,
    ) -> io::Result<GuardedSocket> {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let inner = runtime.wrap_udp_socket(socket)?;
        Ok(GuardedSocket {
            inner,
            fd,
            limiter: Mutex::new(Limiter::new(Instant::now())),
            drops_read: Mutex::new(Instant::now()),
            counters,
        })
    }

    /// Copies the kernel's drop count into the counter, at most every
    /// [`KERNEL_DROPS_EVERY`].
    fn read_kernel_drops(&self, now: Instant) {
        let mut last = self.drops_read.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(*last) < KERNEL_DROPS_EVERY {
            return;
        }
        *last = now;
        if let Some(drops) = kernel_drops(self.fd) {
            self.counters
                .socket_buffer
                .inner()
                .store(drops, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Filters the `n` received buffers in place; returns how many remain.
    fn filter(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let now = Instant::now();
        self.read_kernel_drops(now);
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = 0;
        for i in 0..n {
            let m = meta[i];
            let ip = m.addr.ip();
            let len = retain_datagrams(&mut bufs[i], m.len, m.stride, |d| {
                let kind = classify(d);
                let pass = match kind {
                    Kind::Other => true,
                    Kind::Initial { token } => limiter.admit(ip, token, now),
                    _ => false,
                };
                if !pass {
                    self.counters.count(kind);
                }
                pass
            });
            if len == 0 {
                continue;
            }
            if kept != i {
                bufs.swap(kept, i);
            }
            meta[kept] = RecvMeta { len, ..m };
            kept += 1;
        }
        kept
    }
}

/// Whether an outgoing packet is a Retry (long header, v1, type 3).
fn is_retry(d: &[u8]) -> bool {
    d.len() >= 5 && d[0] & 0xb0 == 0xb0 && d[1..5] == QUIC_V1.to_be_bytes()
}

impl AsyncUdpSocket for GuardedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        if transmit.segment_size.is_none() && is_retry(transmit.contents) {
            self.counters.retries.inc();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => {
                let kept = self.filter(bufs, meta, n);
                if kept == 0 && n > 0 {
                    // Everything was dropped. Returning no datagram would
                    // let quinn's receive loop spin on a flood without
                    // ever yielding: yield, and be polled again at once.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(kept))
            }
            other => other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client Initial of `len` bytes: v1, 8-byte DCID, 0-byte SCID, a
    /// token of `token` bytes.
    fn initial(len: usize, token: usize) -> Vec<u8> {
        let mut d = vec![0xc3];
        d.extend_from_slice(&QUIC_V1.to_be_bytes());
        d.push(8);
        d.extend_from_slice(&[7; 8]);
        d.push(0);
        assert!(token < 64);
        d.push(token as u8);
        d.extend(std::iter::repeat_n(0xaa, token));
        d.resize(len, 0);
        d
    }

    #[test]
    fn datagrams_are_classified_by_their_header() {
        assert_eq!(classify(&[]), Kind::Malformed);
        assert_eq!(classify(&initial(1200, 0)), Kind::Initial { token: false });
        assert_eq!(classify(&initial(1350, 40)), Kind::Initial { token: true });
        assert_eq!(classify(&initial(1199, 0)), Kind::ShortInitial);
        // Another version (here a draft, and 0: Version Negotiation).
        let mut draft = initial(1200, 0);
        draft[1..5].copy_from_slice(&0xff00_001du32.to_be_bytes());
        assert_eq!(classify(&draft), Kind::UnsupportedVersion);
        let mut vn = initial(1200, 0);
        vn[1..5].copy_from_slice(&[0; 4]);
        assert_eq!(classify(&vn), Kind::UnsupportedVersion);
        // Fixed bit clear, long and short.
        let mut clear = initial(1200, 0);
        clear[0] &= !0x40;
        assert_eq!(classify(&clear), Kind::Malformed);
        assert_eq!(classify(&[0x00; 40]), Kind::Malformed);
        // Retry from a "client".
        let mut retry = initial(1200, 0);
        retry[0] = 0xf0;
        assert_eq!(classify(&retry), Kind::Malformed);
        // Handshake and short header: quinn's.
        let mut handshake = initial(60, 0);
        handshake[0] = 0xe0;
        assert_eq!(classify(&handshake), Kind::Other);
        assert_eq!(classify(&[0x40; 40]), Kind::Other);
        // A connection ID longer than 20 bytes, a truncated header.
        let mut long_cid = initial(1200, 0);
        long_cid[5] = 21;
        assert_eq!(classify(&long_cid), Kind::Malformed);
        assert_eq!(classify(&[0xc3, 0, 0]), Kind::Malformed);
    }

    #[test]
    fn one_source_gets_its_rate_and_others_theirs() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let flooder: IpAddr = "198.18.9.9".parse().unwrap();
        let admitted = (0..10_000).filter(|_| l.admit(flooder, false, t0)).count();
        assert_eq!(admitted, PER_SOURCE.burst as usize);
        // Another source is not affected (unless it shares the flooder's
        // bucket, 1 in 4096: pick one that does not).
        let annex: IpAddr = (1..=255u8)
            .map(|i| IpAddr::from([198, 18, 11, i]))
            .find(|ip| {
                let h = |ip: IpAddr| l.hasher.hash_one(source_key(ip)) as usize % SOURCE_BUCKETS;
                h(*ip) != h(flooder)
            })
            .unwrap();
        assert!(l.admit(annex, false, t0));
        // One second later: the rate's worth again.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..10_000).filter(|_| l.admit(flooder, true, t1)).count();
        assert_eq!(admitted, PER_SOURCE.per_second as usize);
        // An IPv6 /64 is one source; IPv4-mapped is the IPv4 address.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let mapped: IpAddr = "::ffff:198.18.9.9".parse().unwrap();
        assert_eq!(source_key(mapped), source_key(flooder));
    }

    #[test]
    fn many_sources_share_the_global_rate_of_fresh_initials() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let fresh = (0..20_000u32)
            .filter(|i| l.admit(IpAddr::from(i.to_be_bytes()), false, t0))
            .count();
        assert!(
            fresh <= FRESH.burst as usize && fresh > FRESH.burst as usize / 2,
            "{fresh}"
        );
        // Initials with a token have their own budget.
        let validated = (0..20_000u32)
            .filter(|i| l.admit(IpAddr::from((i + 1_000_000).to_be_bytes()), true, t0))
            .count();
        assert!(validated > VALIDATED.burst as usize / 2, "{validated}");
    }

    #[test]
    fn dropped_datagrams_leave_a_valid_batch() {
        // Three datagrams of stride 10, the last one 4 bytes.
        let mut buf = [1u8; 10]
            .iter()
            .chain(&[2u8; 10])
            .chain(&[3u8; 4])
            .copied()
            .collect::<Vec<u8>>();
        let len = retain_datagrams(&mut buf, 24, 10, |d| d[0] != 2);
        assert_eq!(len, 14);
        assert_eq!(&buf[..10], &[1u8; 10]);
        assert_eq!(&buf[10..14], &[3u8; 4]);
        let len = retain_datagrams(&mut buf, 14, 10, |_| false);
        assert_eq!(len, 0);
        // No GRO: stride = len.
        let mut one = vec![9u8; 7];
        assert_eq!(retain_datagrams(&mut one, 7, 7, |_| true), 7);
    }

    #[test]
    fn a_retry_is_recognised_on_the_way_out() {
        let mut retry = vec![0xf5];
        retry.extend_from_slice(&QUIC_V1.to_be_bytes());
        retry.extend_from_slice(&[0; 30]);
        assert!(is_retry(&retry));
        let mut initial = retry.clone();
        initial[0] = 0xc0;
        assert!(!is_retry(&initial));
        assert!(!is_retry(&[0x40; 30]));
    }
}
