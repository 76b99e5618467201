//! A stand-in for the boringtun device in unit tests: it speaks the UAPI
//! subset townlink uses (`get`, adding and removing one peer per `set`)
//! on the other end of the control socketpair, and keeps the peers, so
//! that tests can look at what the tunnel holds. Like boringtun, it
//! refuses to touch a peer that exists (trap 1 would hang the device; a
//! test should see an error instead). Each answer can be delayed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Tunnel;

/// What the fake device holds: peer (hex key) → allowed IPs.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    peers: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    delay: Arc<Mutex<Duration>>,
}

impl FakeDevice {
    /// Every peer's public key (hex).
    pub fn peers(&self) -> Vec<String> {
        self.peers.lock().unwrap().keys().cloned().collect()
    }

    /// Delays every later answer by `d`.
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    fn answer(&self, request: &[String]) -> String {
        let mut peers = self.peers.lock().unwrap();
        if request.first().map(String::as_str) == Some("get=1") {
            let mut out = String::new();
            for (key, ips) in peers.iter() {
                out.push_str(&format!("public_key={key}\n"));
                for ip in ips {
                    out.push_str(&format!("allowed_ip={ip}\n"));
                }
                out.push_str("rx_bytes=0\ntx_bytes=0\n");
            }
            return out + "errno=0\n\n";
        }
        let mut key: Option<String> = None;
        let mut remove = false;
        let mut ips = Vec::new();
        for line in request.iter().skip(1) {
            match line.split_once('=') {
                Some(("public_key", k)) => key = Some(k.to_string()),
                Some(("remove", "true")) => remove = true,
                Some(("allowed_ip", ip)) => ips.push(ip.to_string()),
                _ => {}
            }
        }
        match key {
            Some(k) if remove => {
                peers.remove(&k);
            }
            Some(k) if peers.contains_key(&k) => return format!("errno={}\n\n", libc::EEXIST),
            Some(k) => {
                peers.insert(k, ips);
            }
            None => {}
        }
        "errno=0\n\n".into()
    }
}

/// A tunnel named `name` whose device is a [`FakeDevice`] on a thread.
pub fn tunnel(name: &str, timeout: Duration) -> (Tunnel, FakeDevice) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let device = FakeDevice::default();
    let served = device.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(theirs.try_clone().expect("clone"));
        let mut out = theirs;
        loop {
            let mut request = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\n" {
                    break;
                }
                request.push(line.trim_end().to_string());
            }
            let delay = *served.delay.lock().unwrap();
            std::thread::sleep(delay);
            let answer = served.answer(&request);
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    (Tunnel::over_stream(name, ours, timeout), device)
}
