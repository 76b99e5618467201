//! The WireGuard data plane: a boringtun device, driven only through the
//! UAPI text protocol over a socketpair that this module owns.
//!
//! This is the one place that knows how the data plane works; the rest of
//! townlink sees [`Tunnel`]: create, configure, add/remove peers, status,
//! close. Replacing boringtun's device (e.g. by a loop over
//! `boringtun::noise::Tunn`) changes this module only.

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
    #[error("tunnel {name}: {source}")]
    Uapi {
        name: String,
        source: uapi::UapiError,
    },
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

/// A running tunnel interface.
pub struct Tunnel {
    name: String,
    tuning: Tuning,
    control: Mutex<UnixStream>,
    device: Option<DeviceHandle>,
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
            control: Mutex::new(control),
            device: Some(device),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request and returns the `key=value` lines of the answer.
    async fn request(&self, req: &str) -> Result<String, TunnelError> {
        let io = |source| TunnelError::Io {
            name: self.name.clone(),
            source,
        };
        // One request at a time: boringtun reads each request with a fresh
        // buffered reader, so pipelined requests could be lost.
        let mut control = self.control.lock().await;
        let exchange = async {
            control.write_all(req.as_bytes()).await.map_err(io)?;
            let mut answer = Vec::with_capacity(256);
            let mut buf = [0u8; 4096];
            while !(answer.ends_with(b"\n\n") || answer == b"\n") {
                let n = control.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                answer.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| TunnelError::Timeout {
                name: self.name.clone(),
                timeout: REQUEST_TIMEOUT,
            })?
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

    /// Stops the device threads and removes the interface.
    pub async fn close(mut self) {
        let name = self.name.clone();
        let device = self.device.take();
        // Closing our end of the control channel makes the device exit.
        drop(self);
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
