//! End-to-end checks: what users care about, e.g. "can this annex open a
//! TCP connection to the records server?". Each configured check runs on
//! its own timer; the result goes to the telemetry, and every change
//! between success and failure is logged with its reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::CheckConfig;
use crate::telemetry::Telemetry;

/// One attempt: the time to a completed TCP handshake, or why there was none.
pub async fn attempt(check: &CheckConfig) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(check.timeout, TcpStream::connect(check.tcp)).await {
        Ok(Ok(_stream)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(failure_text(&e)),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}

/// Why a connection failed, in the words status, the journal and the
/// technician's guide use: "connection refused" rather than the system's
/// "Connection refused (os error 111)".
pub fn failure_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "timed out".into(),
        _ => {
            // The system's words, without the errno suffix.
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

/// Runs `check` until `stop`; the first attempt is immediate.
pub async fn run(check: CheckConfig, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt(&check) => r,
        };
        let ok = result.is_ok();
        if last != Some(ok) {
            match &result {
                Ok(d) => tracing::info!(
                    check = %check.name,
                    target = %check.tcp,
                    latency_ms = d.as_secs_f64() * 1000.0,
                    "check up"
                ),
                Err(e) => tracing::warn!(
                    check = %check.name,
                    target = %check.tcp,
                    reason = %e,
                    "check down"
                ),
            }
            last = Some(ok);
        }
        telemetry.check(check.name.as_str(), result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_check_says_connection_refused_as_the_guide_does() {
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let check = CheckConfig {
            name: crate::sites::Name::new("records").unwrap(),
            tcp: port,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(attempt(&check).await.unwrap_err(), "connection refused");
        let guide = include_str!("../docs/technician.md");
        assert!(
            guide.contains("check `FAILED: connection refused`"),
            "docs/technician.md names another text"
        );
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(failure_text(&other), "permission denied");
    }
}
