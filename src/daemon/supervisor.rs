//! Every task of the daemon runs under a [`Supervisor`]: each has a name,
//! and its end is watched. A *service* (control socket, responder, prober,
//! collector, ...) runs until its token is cancelled: ending earlier, with
//! an error or a panic, is a failure. A *job* (a site change) runs to its
//! end: only an error or a panic is a failure. A failure is logged with
//! the task's name and reported on [`Failures`]; the daemon then stops with
//! an error (systemd restarts it), and stops feeding the watchdog at once.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task that ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub task: String,
    /// "panicked: ...", "failed: ...", "ended unexpectedly".
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task \"{}\" {}", self.task, self.what)
    }
}

/// What a task returns: nothing, or a result whose error is a failure.
pub trait Outcome: Send + 'static {
    fn failure(self) -> Option<String>;
}

impl Outcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display + Send + 'static> Outcome for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| format!("failed: {e}"))
    }
}

/// The failures, in the order they happened.
#[derive(Debug)]
pub struct Failures(mpsc::UnboundedReceiver<Failure>);

impl Failures {
    /// The next failure (pending for ever while there is none).
    pub async fn next(&mut self) -> Failure {
        match self.0.recv().await {
            Some(f) => f,
            // Unreachable while the supervisor lives; never resolve.
            None => std::future::pending().await,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    failures: mpsc::UnboundedSender<Failure>,
    failed: Arc<AtomicUsize>,
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

impl Supervisor {
    pub fn new() -> (Supervisor, Failures) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                tracker: TaskTracker::new(),
                failures: tx,
                failed: Arc::default(),
            },
            Failures(rx),
        )
    }

    /// No task has failed so far.
    pub fn all_alive(&self) -> bool {
        self.failed.load(Ordering::SeqCst) == 0
    }

    fn report(&self, task: String, what: String) {
        tracing::error!(task = %task, "task {what}");
        self.failed.fetch_add(1, Ordering::SeqCst);
        let _ = self.failures.send(Failure { task, what });
    }

    /// A task that runs until `until` is cancelled.
    pub fn service<F>(&self, name: impl Into<String>, until: &CancellationToken, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let (name, until, this) = (name.into(), until.clone(), self.clone());
        self.tracker.spawn(async move {
            let what = match AssertUnwindSafe(task).catch_unwind().await {
                Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
                Ok(out) => match out.failure() {
                    Some(e) => Some(e),
                    None if !until.is_cancelled() => Some("ended unexpectedly".to_string()),
                    None => None,
                },
            };
            if let Some(what) = what {
                this.report(name, what);
            }
        });
    }

    /// A task that runs to its end and returns a value; `None` if it
    /// panicked (reported as a failure). Dropping the handle does not stop
    /// the job: a caller's timeout only stops the waiting.
    pub fn job<F>(
        &self,
        name: impl Into<String>,
        task: F,
    ) -> tokio::task::JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (name, this) = (name.into(), self.clone());
        self.tracker.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(out) => Some(out),
                Err(panic) => {
                    this.report(name, format!("panicked: {}", panic_message(&*panic)));
                    None
                }
            }
        })
    }

    /// Waits until every task ended (after their tokens were cancelled);
    /// false if some did not within `within`.
    pub async fn wait(&self, within: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Whether the tunnel answered a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// No answer this time (e.g. slow): the watchdog is not fed.
    Unsure(String),
    /// Broken for good: the daemon must stop.
    Dead(String),
}

/// What the steady state hands back to the daemon.
#[derive(Debug)]
pub enum Event {
    /// The shutdown token was cancelled.
    Stop,
    /// SIGHUP: reload the config.
    Reload,
    /// A task failed, or the tunnel is dead: stop with this error.
    Failed(String),
}

/// The daemon's heartbeat: every `period`, asks `liveness` whether the
/// tunnel answers, and feeds the watchdog only when it does and every
/// supervised task is alive.
pub struct Heart<W> {
    period: tokio::time::Interval,
    feed: W,
    /// The tunnel did not answer the last beat (logged once).
    unsure: bool,
}

impl<W: FnMut()> Heart<W> {
    pub fn new(period: Duration, feed: W) -> Heart<W> {
        let mut period = tokio::time::interval(period);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Heart {
            period,
            feed,
            unsure: false,
        }
    }

    /// Beats until something needs the daemon: a stop, a reload, a failure.
    pub async fn run<L, Fut>(
        &mut self,
        supervisor: &Supervisor,
        failures: &mut Failures,
        shutdown: &CancellationToken,
        reload: &mut mpsc::Receiver<()>,
        mut liveness: L,
    ) -> Event
    where
        L: FnMut() -> Fut,
        Fut: Future<Output = Liveness>,
    {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Event::Stop,
                f = failures.next() => return Event::Failed(f.to_string()),
                Some(()) = reload.recv() => return Event::Reload,
                _ = self.period.tick() => {}
            }
            let beat = tokio::select! {
                _ = shutdown.cancelled() => return Event::Stop,
                f = failures.next() => return Event::Failed(f.to_string()),
                l = liveness() => l,
            };
            match beat {
                Liveness::Alive => {
                    if std::mem::take(&mut self.unsure) {
                        tracing::info!("the tunnel answers again");
                    }
                    if supervisor.all_alive() {
                        (self.feed)();
                    }
                }
                Liveness::Unsure(why) => {
                    if !std::mem::replace(&mut self.unsure, true) {
                        tracing::warn!(reason = %why, "the tunnel does not answer: the watchdog is not fed");
                    }
                }
                Liveness::Dead(why) => return Event::Failed(why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    struct Fixture {
        supervisor: Supervisor,
        failures: Failures,
        shutdown: CancellationToken,
        reload: mpsc::Receiver<()>,
        _reload_tx: mpsc::Sender<()>,
        fed: Arc<Mutex<Vec<Instant>>>,
    }

    fn fixture() -> Fixture {
        let (supervisor, failures) = Supervisor::new();
        let (tx, rx) = mpsc::channel(1);
        Fixture {
            supervisor,
            failures,
            shutdown: CancellationToken::new(),
            reload: rx,
            _reload_tx: tx,
            fed: Arc::default(),
        }
    }

    impl Fixture {
        async fn run(&mut self, liveness: Liveness) -> (Event, Instant) {
            let fed = self.fed.clone();
            let mut heart = Heart::new(Duration::from_millis(10), move || {
                fed.lock().unwrap().push(Instant::now())
            });
            let event = heart
                .run(
                    &self.supervisor,
                    &mut self.failures,
                    &self.shutdown,
                    &mut self.reload,
                    || {
                        let l = liveness.clone();
                        async move { l }
                    },
                )
                .await;
            (event, Instant::now())
        }
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_daemon_with_its_name_and_starves_the_watchdog() {
        let mut f = fixture();
        let stop = f.shutdown.clone();
        f.supervisor
            .service("healthy", &stop, stop.clone().cancelled_owned());
        let died = Arc::new(Mutex::new(None));
        let at = died.clone();
        f.supervisor.service("prober fiber", &stop, async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            *at.lock().unwrap() = Some(Instant::now());
            if true {
                panic!("boom");
            }
        });
        let (event, _) = f.run(Liveness::Alive).await;
        let Event::Failed(message) = event else {
            panic!("expected a failure, got {event:?}")
        };
        assert!(message.contains("prober fiber"), "{message}");
        assert!(message.contains("panicked: boom"), "{message}");
        let died = died.lock().unwrap().unwrap();
        let fed = f.fed.lock().unwrap().clone();
        assert!(fed.len() >= 3, "fed while alive: {}", fed.len());
        assert!(
            fed.iter().all(|t| *t < died),
            "watchdog fed after the task died"
        );
        assert!(!f.supervisor.all_alive());
        stop.cancel();
        assert!(f.supervisor.wait(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_service_that_returns_early_is_a_failure_but_not_at_stop() {
        let mut f = fixture();
        let stop = f.shutdown.clone();
        f.supervisor.service("collector", &stop, async {});
        let (event, _) = f.run(Liveness::Alive).await;
        assert!(
            matches!(&event, Event::Failed(m) if m.contains("\"collector\" ended unexpectedly")),
            "{event:?}"
        );

        // The same end after the stop was asked for is normal.
        let mut f = fixture();
        let stop = f.shutdown.clone();
        f.supervisor.service("collector", &stop, {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        f.supervisor
            .service("control", &stop, async { Err::<(), _>("bind lost") });
        let (event, _) = f.run(Liveness::Alive).await;
        assert!(
            matches!(&event, Event::Failed(m) if m.contains("\"control\" failed: bind lost")),
            "{event:?}"
        );
        let mut f = fixture();
        let stop = f.shutdown.clone();
        f.supervisor.service("collector", &stop, {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        stop.cancel();
        let (event, _) = f.run(Liveness::Alive).await;
        assert!(matches!(event, Event::Stop), "{event:?}");
        assert!(f.supervisor.wait(Duration::from_secs(1)).await);
        assert!(f.supervisor.all_alive());
    }

    #[tokio::test]
    async fn a_job_may_end_but_not_panic() {
        let mut f = fixture();
        let done = f.supervisor.job("site add a", async { 7 });
        assert_eq!(done.await.unwrap(), Some(7));
        assert!(f.supervisor.all_alive());
        let died = f.supervisor.job("site join b", async {
            if true {
                panic!("half-way");
            }
        });
        assert_eq!(died.await.unwrap(), None);
        let (event, _) = f.run(Liveness::Alive).await;
        assert!(
            matches!(&event, Event::Failed(m) if m.contains("\"site join b\" panicked: half-way")),
            "{event:?}"
        );
    }

    #[tokio::test]
    async fn the_watchdog_is_fed_only_while_the_tunnel_answers() {
        let mut f = fixture();
        let stop = f.shutdown.clone();
        let later = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            later.cancel();
        });
        let (event, _) = f.run(Liveness::Unsure("slow".into())).await;
        assert!(matches!(event, Event::Stop), "{event:?}");
        assert!(f.fed.lock().unwrap().is_empty());

        let mut f = fixture();
        let (event, _) = f.run(Liveness::Dead("tunnel tl0 broken".into())).await;
        assert!(
            matches!(&event, Event::Failed(m) if m.contains("tunnel tl0 broken")),
            "{event:?}"
        );
        assert!(f.fed.lock().unwrap().is_empty());
    }
}
