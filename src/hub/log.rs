//! The log writer: a thread of its own that puts the room's events in the log, off
//! the hub's task, and hands them back once they are there.
//!
//! The hub hands over each turn's events; the writer appends everything that queued
//! up meanwhile in one transaction, so under load one commit carries many turns, and
//! the hub never waits for the disk: it goes on taking commands while a commit runs,
//! and publishes each batch when it comes back. Events come back in the order they
//! went in, and only once committed: what a viewer receives is in the log.
//!
//! When an append fails (a full disk, a read-only remount), the writer logs why and
//! tries the same events again, with backoff, until they are in; the room meanwhile
//! takes no more than [`MAX_UNCOMMITTED_EVENTS`](crate::config::MAX_UNCOMMITTED_EVENTS)
//! events, then waits. Nothing is dropped while the server runs; if the server stops
//! while the log still fails, the events that never reached it (and so never reached
//! anyone) are counted in the log's last words.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use prometheus_client::metrics::histogram::Histogram;

use super::member::Shared;
use crate::room::Event;
use crate::store::{Store, StreamMark};

/// First wait before trying a failed append again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a failing log is retried once the hub has stopped, before the writer
/// gives up on what it still holds.
const GIVE_UP_AFTER_STOP: Duration = Duration::from_secs(1);

/// Most events in one transaction.
const EVENTS_PER_COMMIT: usize = 8 * 1024;

/// The hub's handle on the writer thread.
#[derive(Debug)]
pub(super) struct Writer {
    jobs: std_mpsc::Sender<(Vec<Event>, Option<StreamMark>)>,
    committed: mpsc::UnboundedReceiver<Vec<Event>>,
    /// Set when the hub has stopped: a failing log is then retried only so long.
    stopped: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer thread on `store`.
    pub(super) fn start(
        store: Arc<dyn Store>,
        commit_seconds: Histogram,
        shared: Arc<Shared>,
    ) -> Self {
        let (jobs, queue) = std_mpsc::channel();
        let (done, committed) = mpsc::unbounded_channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let hub_stopped = stopped.clone();
        let spawned = std::thread::Builder::new()
            .name("tcpchat-log".to_owned())
            .spawn(move || {
                let report = Report {
                    commit_seconds,
                    shared,
                };
                write_loop(&*store, &queue, &done, &hub_stopped, &report);
            });
        if let Err(error) = spawned {
            // Then every append fails at once (the queue is gone) and the room
            // waits, as for a failing disk; the reason is here.
            error!(%error, "cannot start the log writer thread");
        }
        Self {
            jobs,
            committed,
            stopped,
        }
    }

    /// Queues `events` for the log, with where they leave a cluster node's copy of
    /// the stream. Never blocks.
    pub(super) fn append(&self, events: Vec<Event>, mark: Option<StreamMark>) {
        if self.jobs.send((events, mark)).is_err() {
            error!("the log writer is gone; events wait for it in vain");
        }
    }

    /// Events the log has committed, if any are back.
    pub(super) fn try_committed(&mut self) -> Option<Vec<Event>> {
        self.committed.try_recv().ok()
    }

    /// No more events will come: returns the receiver of what is still on its way.
    pub(super) fn finish(self) -> mpsc::UnboundedReceiver<Vec<Event>> {
        self.stopped.store(true, Ordering::Release);
        self.committed
    }
}

/// The next events back from the log, or never if there is no log.
pub(super) async fn committed(log: &mut Option<Writer>) -> Option<Vec<Event>> {
    match log {
        Some(log) => log.committed.recv().await,
        None => std::future::pending().await,
    }
}

/// Where the writer reports how it is doing.
struct Report {
    commit_seconds: Histogram,
    /// Its `log_failing` flag, for readiness.
    shared: Arc<Shared>,
}

fn write_loop(
    store: &dyn Store,
    queue: &std_mpsc::Receiver<(Vec<Event>, Option<StreamMark>)>,
    done: &mpsc::UnboundedSender<Vec<Event>>,
    hub_stopped: &AtomicBool,
    report: &Report,
) {
    while let Ok((mut events, mut mark)) = queue.recv() {
        // Everything that queued up meanwhile goes into the same transaction.
        while events.len() < EVENTS_PER_COMMIT {
            match queue.try_recv() {
                Ok((more, later)) => {
                    events.extend(more);
                    mark = later.or(mark);
                }
                Err(_) => break,
            }
        }
        if !append_until_done(store, &events, mark, hub_stopped, report) {
            let lost = events.len() + queue.try_iter().map(|(e, _)| e.len()).sum::<usize>();
            error!(
                lost,
                first_seq = events.first().map(|e| e.seq),
                "the server stopped while the log could not be written: these events \
                 were never shown to anyone, and are lost"
            );
            return;
        }
        if done.send(events).is_err() {
            return;
        }
    }
}

/// Appends `events`, retrying while it fails. Returns `false` if it gave up (the hub
/// has stopped and the log still fails).
fn append_until_done(
    store: &dyn Store,
    events: &[Event],
    mark: Option<StreamMark>,
    hub_stopped: &AtomicBool,
    report: &Report,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    let mut hub_gone_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let appended = store.append(events, mark);
        report
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        report
            .shared
            .log_failing
            .store(appended.is_err(), Ordering::Relaxed);
        match appended {
            Ok(()) => {
                if let Some(since) = failing_since {
                    info!(
                        after = ?since.elapsed(),
                        "the log can be written again; the room goes on"
                    );
                }
                return true;
            }
            Err(error) => {
                if failing_since.is_none() {
                    error!(
                        %error,
                        events = events.len(),
                        "cannot write the room's log; the room waits for it (nothing is \
                         lost; trying again)"
                    );
                    failing_since = Some(Instant::now());
                } else {
                    warn!(%error, "the room's log still cannot be written");
                }
                if hub_stopped.load(Ordering::Acquire) {
                    let since = *hub_gone_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER_STOP {
                        return false;
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
