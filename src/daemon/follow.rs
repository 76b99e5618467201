//! A backup hub's service that follows the main hub's registry (issue 18):
//! connects to the main hub's responder (ALPN `townlink-sync/1`, the main
//! hub's certificate pinned, this hub's probe certificate presented),
//! reads each snapshot frame and hands it to [`HubSites::follow`], which
//! persists and applies it. A lost or refused connection is tried again
//! after 1, 2, 4 … 30 s; the backoff starts over once a snapshot came.
//! Until the main hub answers, the persisted copy (applied at start) is
//! in force.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sites::HubSites;
use crate::config::FollowConfig;
use crate::enroll::sync::{frame_len, Snapshot, FRAME_HEADER};
use crate::probe::tls;
use crate::telemetry::Telemetry;

/// First wait before a new attempt; doubled up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A handshake, or the first snapshot after it, that takes longer failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A main hub silent this long (no keep-alive answered) is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// The next wait after `now` failed.
pub fn next_backoff(now: Duration) -> Duration {
    (now * 2).min(MAX_BACKOFF)
}

/// The QUIC client config of the sync channel.
pub fn client(
    identity: &tls::Identity,
    follow: &FollowConfig,
) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = tls::sync_client_config(identity, follow.fingerprint)?;
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?,
    ));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("15 s is valid")))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(0u8.into())
        .max_concurrent_uni_streams(1u8.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Runs until `stop`: connect, follow, and again after a backoff.
pub async fn run(
    sites: Arc<HubSites>,
    follow: FollowConfig,
    client: quinn::ClientConfig,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut applied = 0u64;
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&sites, &follow, &client, &telemetry, &mut applied) => r,
        };
        telemetry.sync_connected(false);
        if applied > 0 {
            backoff = FIRST_BACKOFF;
        }
        tracing::warn!(
            main = %follow.main,
            endpoint = %follow.endpoint,
            error = %ended,
            retry_in = ?backoff,
            "no registry channel to the main hub: its last snapshot stays in force"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = next_backoff(backoff);
    }
}

/// One connection: every snapshot it brings, until it ends (the reason).
async fn session(
    sites: &Arc<HubSites>,
    follow: &FollowConfig,
    client: &quinn::ClientConfig,
    telemetry: &Telemetry,
    applied: &mut u64,
) -> String {
    let addr = match follow.endpoint.resolve().await {
        Ok(a) => a,
        Err(e) => return format!("cannot resolve {}: {e}", follow.endpoint),
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => return format!("cannot open a UDP socket: {e}"),
    };
    let result = async {
        let connecting = endpoint
            .connect_with(client.clone(), addr, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no QUIC handshake within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let mut recv = tokio::time::timeout(CONNECT_TIMEOUT, conn.accept_uni())
            .await
            .map_err(|_| format!("no registry within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let mut last_version = None;
        loop {
            let mut header = [0u8; FRAME_HEADER];
            recv.read_exact(&mut header)
                .await
                .map_err(|e| e.to_string())?;
            let len = frame_len(header).map_err(|e| e.to_string())?;
            let mut body = vec![0u8; len];
            recv.read_exact(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            let snapshot = Snapshot::decode(&body).map_err(|e| e.to_string())?;
            if last_version.is_some_and(|v| snapshot.version <= v) {
                continue;
            }
            last_version = Some(snapshot.version);
            let (version, joined) = (snapshot.version, snapshot.joined());
            let plan = sites
                .follow(snapshot)
                .await
                .map_err(|e| format!("cannot apply the registry: {e}"))?;
            *applied += 1;
            telemetry.sync_connected(true);
            tracing::info!(
                version,
                joined,
                changes = plan.changes(),
                installed = plan.active.len(),
                "main hub's registry applied"
            );
        }
    }
    .await;
    endpoint.close(0u8.into(), b"done");
    match result {
        Ok(()) => "ended".to_string(),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_30_s() {
        let mut b = FIRST_BACKOFF;
        let mut seen = vec![b.as_secs()];
        for _ in 0..7 {
            b = next_backoff(b);
            seen.push(b.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
