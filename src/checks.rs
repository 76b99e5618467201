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
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
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
