//! `GET /metrics`: the OpenMetrics text of the registry. Nothing else is
//! served; the listener is meant for a management network or loopback.
//!
//! Slow and many clients cannot take it: a client gets
//! [`Limits::header_timeout`] to send a request's headers (also the longest
//! idle time between two keep-alive requests), and at most
//! [`Limits::connections`] connections are open at once. A connection
//! beyond the cap is served, and the oldest connection that never sent a
//! request (else the oldest of all) is closed to make room: idle or
//! half-open connections never stop a scrape. A panic while serving one
//! connection is logged and counted (`townlink_connection_panics_total`),
//! and the server goes on.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Telemetry;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How much the server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client gets to send the headers of a request, from the
    /// connection's start or the end of the previous answer.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            connections: 16,
        }
    }
}

/// Binds the listener (start-up fails on a bad or busy address). The
/// address may be one the router does not have yet, typically its tunnel
/// address (scraped through the WAN): the socket is bound with
/// `IP_FREEBIND` and accepts once the tunnel is up.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let fail = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot listen for /metrics on {addr} (metrics.listen): {e}; \
             choose a free local address, or set metrics.enabled = false"
        )
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true).map_err(fail)?;
    } else {
        socket.set_freebind_v6(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(64).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

fn respond(telemetry: &Telemetry, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, CONTENT_TYPE, telemetry.encode()),
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "townlink serves /metrics only\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    }
}

/// One open connection, as the cap sees it.
struct Slot {
    id: u64,
    /// The client sent at least one request's headers.
    asked: Arc<AtomicBool>,
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Slots {
    list: Mutex<Vec<Slot>>,
    next: AtomicU64,
}

impl Slots {
    /// Makes room for a new connection (closing one if the cap is
    /// reached: true then) and registers it.
    fn admit(&self, cap: usize, asked: Arc<AtomicBool>, close: CancellationToken) -> (u64, bool) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        while !list.is_empty() && list.len() >= cap.max(1) {
            let victim = list
                .iter()
                .position(|s| !s.asked.load(Ordering::Relaxed))
                .unwrap_or(0);
            list.remove(victim).close.cancel();
            evicted = true;
        }
        list.push(Slot { id, asked, close });
        (id, evicted)
    }

    fn leave(&self, id: u64) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|s| s.id != id);
    }
}

/// Removes a connection from the slots however its task ends.
struct Leave<'a>(&'a Slots, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Serves until `stop`, with the default [`Limits`].
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    serve_with(listener, telemetry, Limits::default(), stop).await
}

/// Serves until `stop`.
pub async fn serve_with(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    limits: Limits,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Slots::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let dropped = |cause: &str| {
        telemetry
            .metrics()
            .metrics_dropped_connections
            .get_or_create(&super::metrics::CauseLabels {
                cause: cause.into(),
            })
            .clone()
    };
    let (evictions, timeouts) = (dropped("evicted"), dropped("header_timeout"));
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let asked = Arc::new(AtomicBool::new(false));
        let close = stop.child_token();
        let (id, evicted) = slots.admit(limits.connections, asked.clone(), close.clone());
        if evicted {
            evictions.inc();
            tracing::debug!(%remote, cap = limits.connections, "metrics connections at their cap: closed the oldest");
        }
        let (telemetry, served) = (telemetry.clone(), telemetry.clone());
        let (slots, timeouts) = (slots.clone(), timeouts.clone());
        let builder = builder.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _leave = Leave(&slots, id);
            let serve = async {
                let service = hyper::service::service_fn(move |req| {
                    asked.store(true, Ordering::Relaxed);
                    let r = respond(&served, &req);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        if e.is_timeout() {
                            timeouts.inc();
                        }
                        tracing::debug!(%remote, error = %e, "metrics connection ended with an error");
                    },
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                    // Evicted: dropping the connection closes it.
                    _ = close.cancelled() => {}
                }
            };
            if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
                telemetry.connection_panicked("metrics", remote, &*panic);
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::config::tests::{dir_with_key, example};

    /// A server on a loopback port with `limits`: (address, telemetry, stop).
    async fn server(limits: Limits) -> (SocketAddr, Arc<Telemetry>, CancellationToken) {
        let dir = dir_with_key();
        let telemetry = Telemetry::new(&example("annex.toml", dir.path()).expect("example"));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            telemetry.clone(),
            limits,
            stop.clone(),
        ));
        (addr, telemetry, stop)
    }

    fn dropped(t: &Telemetry, cause: &str) -> u64 {
        t.metrics()
            .metrics_dropped_connections
            .get_or_create(&super::super::metrics::CauseLabels {
                cause: cause.into(),
            })
            .get()
    }

    /// Waits for the server to close `conn` (EOF or reset); how long it took.
    async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((start + within).into(), conn.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn scrape(addr: SocketAddr) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut text))
            .await
            .expect("scrape answered within 5 s")
            .unwrap();
        text
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_dropped_after_the_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_millis(600),
            connections: 16,
        };
        let (addr, telemetry, stop) = server(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        // One more header byte every 100 ms: the connection is never idle,
        // the headers never end.
        let (mut read, mut write) = slow.into_split();
        let drip = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(b"X").await.is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let mut buf = [0u8; 256];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(start.elapsed()),
                Ok(Ok(_)) => {}
            }
        };
        drip.abort();
        let closed = closed.expect("the slow client is still connected after 5 s");
        assert!(
            closed >= Duration::from_millis(500) && closed < Duration::from_secs(3),
            "closed after {closed:?}, the timeout is 600 ms"
        );
        assert_eq!(dropped(&telemetry, "header_timeout"), 1);
        // The server still answers.
        assert!(scrape(addr).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_close_the_oldest_and_a_scrape_is_served() {
        // A long header timeout: only the cap can free connections here.
        let limits = Limits {
            header_timeout: Duration::from_secs(60),
            connections: 4,
        };
        let (addr, telemetry, stop) = server(limits).await;
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The scrape is the ninth: served at once.
        let text = scrape(addr).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("townlink_build_info"), "{text}");
        // Eight idle and one scrape for four places: the five oldest idle
        // connections were closed, the three newest are still open.
        for (i, conn) in idle.iter_mut().enumerate() {
            let closed = closed_within(conn, Duration::from_millis(300)).await;
            if i < 5 {
                assert!(closed.is_some(), "idle connection {i} still open");
            } else {
                assert!(closed.is_none(), "idle connection {i} closed");
            }
        }
        assert_eq!(dropped(&telemetry, "evicted"), 5);
        stop.cancel();
    }
}
