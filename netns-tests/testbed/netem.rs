//! Delay, jitter and loss for packets crossing a namespace, without the
//! kernel's netem (absent here): iptables sends the packets to an NFQUEUE,
//! and a thread inside the namespace issues each verdict late.
//!
//! `--queue-bypass` on the rule: if the thread is gone, packets pass
//! unharmed instead of being dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Netns;

/// What to do to each packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    pub delay: Duration,
    /// Uniform in `[-jitter, +jitter]` around `delay` (packets may reorder, as with netem).
    pub jitter: Duration,
    /// Probability of dropping a packet.
    pub loss: f64,
}

/// Counters, to check that the tool really saw the traffic.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running delay line; stopped (and its iptables rule removed) on drop.
pub struct Netem {
    ns: String,
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<Stats>,
}

struct Held {
    due: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A small xorshift generator: loss and jitter need no cryptography.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Netem {
    /// Impairs the packets that `matches` (iptables match arguments of the
    /// FORWARD chain, e.g. `["-o", "a1"]`) in namespace `ns`, using queue `queue`.
    pub fn start(ns: &Netns, matches: &[&str], queue: u16, params: Params) -> Netem {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{}", ns.name);
        let (stop_t, stats_t) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).expect("netns file");
            // SAFETY: setns on a valid namespace fd; it only affects this thread.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            let mut q = nfq::Queue::open().expect("open NFQUEUE (is nfnetlink_queue available?)");
            q.bind(queue).expect("bind NFQUEUE");
            q.set_queue_max_len(queue, 8192).expect("queue length");
            q.set_fail_open(queue, false).expect("fail open");
            q.set_nonblocking(true);
            ready_tx.send(()).expect("ready");
            let mut held = BinaryHeap::new();
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut seq = 0u64;
            while !stop_t.load(Ordering::Relaxed) {
                let mut idle = true;
                while let Ok(mut msg) = q.recv() {
                    idle = false;
                    stats_t.queued.fetch_add(1, Ordering::Relaxed);
                    if rng.unit() < params.loss {
                        stats_t.dropped.fetch_add(1, Ordering::Relaxed);
                        msg.set_verdict(nfq::Verdict::Drop);
                        let _ = q.verdict(msg);
                        continue;
                    }
                    let offset = (rng.unit() * 2.0 - 1.0) * params.jitter.as_secs_f64();
                    let delay = (params.delay.as_secs_f64() + offset).max(0.0);
                    seq += 1;
                    held.push(Reverse(Held {
                        due: Instant::now() + Duration::from_secs_f64(delay),
                        seq,
                        msg,
                    }));
                }
                let now = Instant::now();
                while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
                    let Reverse(mut h) = held.pop().expect("peeked");
                    h.msg.set_verdict(nfq::Verdict::Accept);
                    let _ = q.verdict(h.msg);
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            // Let whatever is held go, then leave.
            for Reverse(mut h) in held.into_vec() {
                h.msg.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(h.msg);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("netem thread ready");
        let mut rule: Vec<String> = vec!["FORWARD".into()];
        rule.extend(matches.iter().map(|s| s.to_string()));
        rule.extend(
            [
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue.to_string(),
                "--queue-bypass",
            ]
            .map(String::from),
        );
        let mut args = vec!["iptables", "-I"];
        args.extend(rule.iter().map(String::as_str));
        ns.exec(&args);
        Netem {
            ns: ns.name.clone(),
            rule,
            stop,
            thread: Some(thread),
            stats,
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let mut args = vec!["netns", "exec", &self.ns, "iptables", "-D"];
        args.extend(self.rule.iter().map(String::as_str));
        let _ = Command::new("ip").args(&args).status();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
