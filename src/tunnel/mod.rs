//! The WireGuard data plane: a boringtun device, driven only through the
//! UAPI text protocol over a socketpair that this module owns.
//!
//! This is the one place that knows how the data plane works; the rest of
//! townlink sees [`Tunnel`]: create, configure, add/remove peers, status,
//! close. Replacing boringtun's device (e.g. by a loop over
//! `boringtun::noise::Tunn`) changes this module only.

#[cfg(test)]
pub(crate) mod fake;
mod sockbuf;
pub mod uapi;

use std::os::fd::IntoRawFd;
use std::time::{Duration, SystemTime};

use boringtun::device::{DeviceConfig, DeviceHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::keys::{PrivateKey, PublicKey};
pub use uapi::{DeviceStatus, PeerConfig, PeerStatus};

/// The UDP port of the datagram pushed into the tunnel (discard).
const PUSH_PORT: u16 = 9;

/// Sends one datagram to `to` (an address routed into the tunnel), so that
/// boringtun starts a handshake, or so that the peer sees our new source
/// address after a route change (WireGuard roaming). boringtun sends
/// nothing on its own in either case (trap 7).
pub fn push_traffic(to: std::net::IpAddr) {
    let bind: std::net::SocketAddr = match to {
        std::net::IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        std::net::IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let sent =
        std::net::UdpSocket::bind(bind).and_then(|s| s.send_to(b"townlink", (to, PUSH_PORT)));
    if let Err(e) = sent {
        tracing::warn!(to = %to, error = %e, "could not push traffic into the tunnel");
    }
}

/// How long one UAPI request may take before the device is declared hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer read from the device (a `get` of a hub with thousands of
/// peers stays far below).
const MAX_ANSWER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot create tunnel interface {name}: {source} (is /dev/net/tun present, and do we have CAP_NET_ADMIN? is the name already taken?)")]
    Create {
        name: String,
        source: boringtun::device::Error,
    },
    #[error("tunnel {name}: control channel: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error("tunnel {name}: the device did not answer within {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("tunnel {name}: the device's control channel is broken ({reason}); townlink must be restarted")]
    Broken { name: String, reason: String },
    #[error("tunnel {name}: {source}")]
    Uapi {
        name: String,
        source: uapi::UapiError,
    },
}

impl TunnelError {
    /// The tunnel cannot be used any more (the device hung or went away):
    /// only a restart helps.
    pub fn is_broken(&self) -> bool {
        matches!(self, TunnelError::Broken { .. })
    }
}

/// Data-plane tuning, chosen from `scripts/bench-throughput`.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub threads: usize,
    /// `false` on annexes (trap 6: a connected socket can keep the old
    /// uplink's source address after a route change).
    pub connected_socket: bool,
    /// Receive and send buffer of the device's UDP sockets, bytes; 0 keeps
    /// the kernel default.
    pub socket_buffer: usize,
}

/// Where the exchange on the control channel stands. It is updated after
/// every step, so that a caller that gives up (timeout, dropped future)
/// leaves a state the next request can finish: the channel never gets out
/// of step (one request, then exactly its answer).
#[derive(Debug)]
enum Phase {
    Idle,
    /// A request is going out: the bytes still to write.
    Writing(Vec<u8>),
    /// The request went out: the answer read so far.
    Reading(Vec<u8>),
    /// Out of step for good (the device hung, or the channel failed).
    Broken(String),
}

struct Channel {
    /// `None` once the tunnel is closed.
    stream: Option<UnixStream>,
    phase: Phase,
}

fn complete(answer: &[u8]) -> bool {
    answer.ends_with(b"\n\n") || answer == b"\n"
}

impl Channel {
    /// Drives the exchange in progress to its end; returns the answer.
    /// Cancel-safe: each step is recorded in `phase` before the next await.
    async fn finish(&mut self) -> Result<Vec<u8>, String> {
        let result = self.drive().await;
        if let Err(reason) = &result {
            self.phase = Phase::Broken(reason.clone());
        }
        result
    }

    async fn drive(&mut self) -> Result<Vec<u8>, String> {
        let Some(stream) = self.stream.as_mut() else {
            return Err("closed".into());
        };
        let mut buf = [0u8; 4096];
        loop {
            match &mut self.phase {
                Phase::Idle => return Ok(Vec::new()),
                Phase::Broken(reason) => return Err(reason.clone()),
                Phase::Writing(rest) => {
                    let n = stream.write(rest).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the device closed the channel".into());
                    }
                    rest.drain(..n);
                    if rest.is_empty() {
                        self.phase = Phase::Reading(Vec::with_capacity(256));
                    }
                }
                Phase::Reading(answer) => {
                    if complete(answer) {
                        let answer = std::mem::take(answer);
                        self.phase = Phase::Idle;
                        return Ok(answer);
                    }
                    let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the device closed the channel".into());
                    }
                    if answer.len() + n > MAX_ANSWER {
                        return Err(format!("answer longer than {MAX_ANSWER} bytes"));
                    }
                    answer.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// A running tunnel interface.
pub struct Tunnel {
    name: String,
    tuning: Tuning,
    /// How long a request (and the resynchronisation before it) may take.
    timeout: Duration,
    control: Mutex<Channel>,
    device: std::sync::Mutex<Option<DeviceHandle>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Creates the TUN interface `name` and the device threads.
    /// Must be called inside a tokio runtime.
    pub fn create(name: &str, tuning: Tuning) -> Result<Tunnel, TunnelError> {
        let io = |source| TunnelError::Io {
            name: name.to_string(),
            source,
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        let config = DeviceConfig {
            n_threads: tuning.threads.max(1),
            use_connected_socket: tuning.connected_socket,
            use_multi_queue: tuning.threads > 1,
            // The device takes ownership of this end; closing ours stops it.
            uapi_fd: theirs.into_raw_fd(),
        };
        let device = DeviceHandle::new(name, config).map_err(|source| TunnelError::Create {
            name: name.to_string(),
            source,
        })?;
        ours.set_nonblocking(true).map_err(io)?;
        let control = UnixStream::from_std(ours).map_err(io)?;
        Ok(Tunnel {
            name: name.to_string(),
            tuning,
            timeout: REQUEST_TIMEOUT,
            control: Mutex::new(Channel {
                stream: Some(control),
                phase: Phase::Idle,
            }),
            device: std::sync::Mutex::new(Some(device)),
        })
    }

    /// A tunnel whose control channel is `stream`, without a device: tests
    /// play the device on the other end.
    #[cfg(test)]
    pub(crate) fn over_stream(
        name: &str,
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> Tunnel {
        stream.set_nonblocking(true).expect("non-blocking");
        Tunnel {
            name: name.to_string(),
            tuning: Tuning {
                threads: 1,
                connected_socket: false,
                socket_buffer: 0,
            },
            timeout,
            control: Mutex::new(Channel {
                stream: Some(UnixStream::from_std(stream).expect("tokio stream")),
                phase: Phase::Idle,
            }),
            device: std::sync::Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request and returns the `key=value` lines of the answer.
    ///
    /// One request at a time (boringtun reads each request with a fresh
    /// buffered reader, so pipelined requests could be lost). A request
    /// that a caller abandoned (its timeout, or a dropped future) is
    /// finished first and its answer discarded; if that fails within the
    /// timeout, the channel is broken for good.
    async fn request(&self, req: &str) -> Result<String, TunnelError> {
        let mut channel = self.control.lock().await;
        if matches!(channel.phase, Phase::Writing(_) | Phase::Reading(_)) {
            match tokio::time::timeout(self.timeout, channel.finish()).await {
                Ok(Ok(_)) => {
                    tracing::debug!(interface = %self.name, "discarded the answer to an abandoned request")
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    channel.phase = Phase::Broken(format!(
                        "an abandoned request got no complete answer within {:?}",
                        self.timeout
                    ))
                }
            }
        }
        if let Phase::Broken(reason) = &channel.phase {
            return Err(TunnelError::Broken {
                name: self.name.clone(),
                reason: reason.clone(),
            });
        }
        channel.phase = Phase::Writing(req.as_bytes().to_vec());
        match tokio::time::timeout(self.timeout, channel.finish()).await {
            Ok(Ok(answer)) => Ok(String::from_utf8_lossy(&answer).into_owned()),
            Ok(Err(reason)) => Err(TunnelError::Broken {
                name: self.name.clone(),
                reason,
            }),
            // The exchange stays in progress: the next request finishes it.
            Err(_) => Err(TunnelError::Timeout {
                name: self.name.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn set(&self, req: &str) -> Result<(), TunnelError> {
        let answer = self.request(req).await?;
        uapi::parse_answer(&answer).map_err(|source| TunnelError::Uapi {
            name: self.name.clone(),
            source,
        })?;
        Ok(())
    }

    /// Interface settings; call once, before adding peers (trap 4).
    pub async fn configure(
        &self,
        private_key: &PrivateKey,
        listen_port: Option<u16>,
        fwmark: Option<u32>,
    ) -> Result<(), TunnelError> {
        self.set(&uapi::set_device(private_key, listen_port, fwmark))
            .await?;
        if self.tuning.socket_buffer > 0 {
            // The sockets exist now, and are never reopened: the port is set once.
            let port = match listen_port {
                Some(p) => p,
                None => self.status().await?.listen_port.unwrap_or_default(),
            };
            match sockbuf::enlarge(port, self.tuning.socket_buffer) {
                Ok(n) => {
                    tracing::debug!(interface = %self.name, port, sockets = n, bytes = self.tuning.socket_buffer, "tunnel socket buffers enlarged")
                }
                Err(e) => {
                    tracing::warn!(interface = %self.name, port, error = %e, "could not enlarge the tunnel socket buffers")
                }
            }
        }
        Ok(())
    }

    /// Adds a peer that is not present yet.
    pub async fn add_peer(&self, peer: &PeerConfig) -> Result<(), TunnelError> {
        self.set(&uapi::add_peer(peer)).await
    }

    pub async fn remove_peer(&self, key: &PublicKey) -> Result<(), TunnelError> {
        self.set(&uapi::remove_peer(key)).await
    }

    /// Changes a peer: remove, then add again (trap 1: in-place changes hang the device).
    pub async fn replace_peer(&self, peer: &PeerConfig) -> Result<(), TunnelError> {
        self.remove_peer(&peer.public_key).await?;
        self.add_peer(peer).await
    }

    pub async fn status(&self) -> Result<DeviceStatus, TunnelError> {
        let answer = self.request(uapi::GET).await?;
        let uapi_err = |source| TunnelError::Uapi {
            name: self.name.clone(),
            source,
        };
        let pairs = uapi::parse_answer(&answer).map_err(uapi_err)?;
        uapi::parse_status(&pairs, SystemTime::now()).map_err(uapi_err)
    }

    /// Stops the device threads and removes the interface. Later requests
    /// fail (the channel is closed), whoever still holds the tunnel.
    pub async fn close(&self) {
        let name = self.name.clone();
        {
            let mut channel = self.control.lock().await;
            // Closing our end of the control channel makes the device exit.
            channel.stream = None;
            channel.phase = Phase::Broken("closed".into());
        }
        let device = self.device.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut device) = device {
            let join = tokio::task::spawn_blocking(move || {
                device.wait();
                drop(device);
            });
            match tokio::time::timeout(Duration::from_secs(5), join).await {
                Ok(Ok(())) => tracing::debug!(interface = %name, "tunnel device stopped"),
                Ok(Err(e)) => {
                    tracing::warn!(interface = %name, error = %e, "tunnel device thread failed while stopping")
                }
                Err(_) => {
                    tracing::warn!(interface = %name, "tunnel device did not stop within 5 s")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// A slow device on the other end of a socketpair: answers each request
    /// with `n=<its number>`, the first one only after `first_delay`.
    fn slow_device(first_delay: Duration) -> std::os::unix::net::UnixStream {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            let mut out = theirs;
            for n in 0.. {
                // A request ends with an empty line.
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\n" {
                        break;
                    }
                }
                if n == 0 {
                    std::thread::sleep(first_delay);
                }
                if out
                    .write_all(format!("n={n}\nerrno=0\n\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
        });
        ours
    }

    #[tokio::test]
    async fn a_late_answer_never_reaches_the_next_request() {
        let tunnel = Tunnel::over_stream(
            "fake0",
            slow_device(Duration::from_millis(1500)),
            Duration::from_secs(1),
        );
        // The first request times out; its answer comes 0.5 s later, well
        // within the next request's timeout even on a loaded machine.
        assert!(matches!(
            tunnel.request(uapi::GET).await,
            Err(TunnelError::Timeout { .. })
        ));
        for n in 1..4 {
            let answer = tunnel.request(uapi::GET).await.unwrap();
            assert_eq!(answer, format!("n={n}\nerrno=0\n\n"), "request {n}");
        }
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_the_channel_in_step() {
        let tunnel = Tunnel::over_stream(
            "fake0",
            slow_device(Duration::from_millis(100)),
            Duration::from_secs(2),
        );
        // The caller gives up (drops the request) while the device works.
        let first = tunnel.request(uapi::GET);
        assert!(tokio::time::timeout(Duration::from_millis(20), first)
            .await
            .is_err());
        assert_eq!(tunnel.request(uapi::GET).await.unwrap(), "n=1\nerrno=0\n\n");
    }

    #[tokio::test]
    async fn a_device_that_never_answers_breaks_the_channel_for_good() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let tunnel = Tunnel::over_stream("fake0", ours, Duration::from_millis(100));
        assert!(matches!(
            tunnel.request(uapi::GET).await,
            Err(TunnelError::Timeout { .. })
        ));
        // The abandoned request cannot be finished: broken, and it stays so.
        let e = tunnel.request(uapi::GET).await.unwrap_err();
        assert!(e.is_broken(), "{e}");
        let started = std::time::Instant::now();
        assert!(tunnel.status().await.unwrap_err().is_broken());
        assert!(started.elapsed() < Duration::from_millis(50), "fails fast");
        drop(theirs);
    }

    #[tokio::test]
    async fn a_closed_tunnel_refuses_requests() {
        let tunnel =
            Tunnel::over_stream("fake0", slow_device(Duration::ZERO), Duration::from_secs(1));
        assert!(tunnel.request(uapi::GET).await.is_ok());
        tunnel.close().await;
        assert!(tunnel.request(uapi::GET).await.unwrap_err().is_broken());
    }
}
