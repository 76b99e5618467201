//! `GET /metrics`: the OpenMetrics text of the registry. Nothing else is
//! served; the listener is meant for a management network or loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Telemetry;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a metrics connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let telemetry = telemetry.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = respond(&telemetry, &req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "metrics connection ended with an error");
                },
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), connections.wait()).await;
}
