//! Load on a line: a token-bucket shaper (`tc tbf`) with a deep queue, as
//! a saturated DSL or fiber box has, and a paced TCP upload to fill it.
//! Both are undone on drop (the qdisc removed, the threads stopped).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A TCP upload from one namespace to a sink in another, at most
/// `bits_per_second` (paced by the sender, so that an unshaped path is not
/// flooded: the test machine has two cores).
pub struct TcpUpload {
    /// Bytes the sink received.
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpUpload {
    pub fn start(
        from: &Netns,
        sink_ns: &Netns,
        sink: SocketAddr,
        bits_per_second: u64,
    ) -> TcpUpload {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = sink_ns
            .run(move || TcpListener::bind(sink))
            .expect("bind the upload sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let (count, stop_sink) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut conns: Vec<TcpStream> = Vec::new();
            while !stop_sink.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                    let _ = c.set_nonblocking(false);
                    conns.push(c);
                }
                let mut idle = true;
                for c in &mut conns {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            count.fetch_add(n as u64, Ordering::Relaxed);
                            idle = false;
                        }
                        _ => {}
                    }
                }
                if idle && conns.is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let stream = from
            .run(move || TcpStream::connect_timeout(&sink, Duration::from_secs(10)))
            .expect("connect the upload");
        stream
            .set_write_timeout(Some(Duration::from_millis(100)))
            .expect("write timeout");
        let stop_sender = stop.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let chunk = vec![0x5au8; 8 * 1024];
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop_sender.load(Ordering::Relaxed) {
                // Pace: never ahead of the rate.
                let due = Duration::from_secs_f64(sent as f64 * 8.0 / bits_per_second as f64);
                let now = start.elapsed();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(50)));
                    continue;
                }
                match stream.write(&chunk) {
                    Ok(n) => sent += n as u64,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        TcpUpload { received, stop }
    }
}

impl Drop for TcpUpload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
