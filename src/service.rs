//! The systemd service protocol (`Type=notify`): READY once the tunnel and
//! its routes are up, STATUS lines a technician sees in `systemctl
//! status`, WATCHDOG pings, RELOADING and STOPPING. Every call is a no-op
//! when the daemon does not run under systemd (no `NOTIFY_SOCKET`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Start-up is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A reload begins (systemd ≥ 253 wants the monotonic time with it).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// A reload ended (applied or refused): READY again, with a status.
pub fn reloaded(status: &str) {
    ready(status);
}

/// STATUS lines, sent only when the text changes.
#[derive(Debug, Default)]
pub struct Status(Mutex<String>);

impl Status {
    pub fn set(&self, text: &str) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *last != text {
            text.clone_into(&mut last);
            send(&[NotifyState::Status(text)]);
        }
    }
}

/// WATCHDOG=1 pings at half the interval systemd asked for (`WatchdogSec=`).
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    pub fn from_env() -> Watchdog {
        Watchdog {
            every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last: None,
        }
    }

    /// Call when the daemon has proven alive (e.g. read the tunnel's state).
    pub fn alive(&mut self) {
        let Some(every) = self.every else { return };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            self.last = Some(Instant::now());
            send(&[NotifyState::Watchdog]);
        }
    }
}
