//! Load on a line: a token-bucket shaper (`tc tbf`) with a deep queue, as
//! a saturated DSL or fiber box has, and a paced upload to fill it.
//! Both are undone on drop (the qdisc removed, the threads stopped).

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Netns;

/// A `tbf` qdisc on what leaves an interface of a namespace.
pub struct Tbf {
    ns: String,
    dev: String,
}

impl Tbf {
    /// Shapes what leaves `dev` in `ns` to `rate` (tc units, e.g. "2mbit"),
    /// queueing a packet up to `latency` (e.g. "500ms") before dropping.
    pub fn start(ns: &Netns, dev: &str, rate: &str, latency: &str) -> Tbf {
        ns.exec(&[
            "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "16kb",
            "latency", latency,
        ]);
        Tbf {
            ns: ns.name.clone(),
            dev: dev.to_string(),
        }
    }

    /// `tc -s qdisc show` of the interface: bytes sent, drops, backlog.
    pub fn stats(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "tc", "-s", "qdisc", "show", "dev",
            ])
            .arg(&self.dev)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Tbf {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "tc", "qdisc", "del", "dev"])
            .arg(&self.dev)
            .arg("root")
            .status();
    }
}

/// An upload of UDP datagrams from one namespace to a sink in another,
/// at `bits_per_second` of payload, paced by the sender. UDP, not TCP: a
/// TCP upload that ran on an unshaped path comes back to the shaped one
/// with the small window of an application-limited flow and fills the
/// queue only after tens of seconds, or not at all (seen here); a paced
/// UDP upload above the line's rate fills it within a few seconds, every
/// time, as a saturating LAN does.
pub struct UdpUpload {
    /// Payload bytes the sink received.
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl UdpUpload {
    pub fn start(
        from: &Netns,
        sink_ns: &Netns,
        sink: SocketAddr,
        bits_per_second: u64,
    ) -> UdpUpload {
        const PAYLOAD: usize = 1000;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = sink_ns
            .run(move || UdpSocket::bind(sink))
            .expect("bind the upload sink");
        listener
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let (count, stop_sink) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop_sink.load(Ordering::Relaxed) {
                if let Ok(n) = listener.recv(&mut buf) {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        let socket = from
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .expect("bind the upload socket");
        let stop_sender = stop.clone();
        std::thread::spawn(move || {
            let datagram = vec![0x5au8; PAYLOAD];
            let period = Duration::from_secs_f64(PAYLOAD as f64 * 8.0 / bits_per_second as f64);
            let mut next = Instant::now();
            while !stop_sender.load(Ordering::Relaxed) {
                let _ = socket.send_to(&datagram, sink);
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        UdpUpload { received, stop }
    }
}

impl Drop for UdpUpload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
