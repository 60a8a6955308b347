//! The server's log: where lines go, in which format, and the periodic summary.
//!
//! [`init`] installs the process's one `tracing` subscriber, writing to stderr as
//! text for people (`--log-format text`, the default) or as one JSON object per line
//! for programs (`--log-format json`: `timestamp`, `level`, `message`, `target` and
//! every field of the event at the top level). `RUST_LOG` chooses what is logged
//! (`info` by default).
//!
//! Lines are written by a thread of their own through a bounded queue that drops
//! lines rather than wait, and a failed write is not reported: a log sink that
//! blocks (a stopped pipe reader) or is gone (a closed pipe) costs log lines, never
//! the server, and never panics it.
//!
//! [`summarize`] is the task behind `--log-summary`: one `summary` line at `info`
//! per interval, from the counters in [`Metrics`]. The server starts it
//! (`Prepared::serve`) when [`summary_interval`] says there is one to log, that is
//! when [`init`] was given a non-zero `--log-summary`: the interval is a setting of
//! the log, kept beside the subscriber that [`init`] installs for the process.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::metrics::{Metrics, Totals};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    Text,
    /// One JSON object per line, every field at the top level, for programs (`jq`).
    Json,
}

/// The log's `serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// How log lines are written to stderr: `text`, or `json` (one object per line:
    /// timestamp, level, message, target and every field). `RUST_LOG` chooses what
    /// is logged (default `info`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// How often to log a summary line at `info`: members by role, and events and
    /// deliveries per second since the last summary. `off` or `0` for none.
    #[arg(long, value_name = "DURATION", value_parser = summary_every, default_value = "60s")]
    pub log_summary: Duration,
}

/// `--log-summary`: a duration as the other duration flags take it, or `off`;
/// `off` and zero both mean no summary (`Duration::ZERO`).
fn summary_every(text: &str) -> Result<Duration, String> {
    if text == "off" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

/// The summary interval [`init`] was given, if it was given one (non-zero).
static SUMMARY_INTERVAL: OnceLock<Duration> = OnceLock::new();

/// Installs the log for `tcpchat serve`, as `args` say (see the module
/// documentation), and records its summary interval for [`summary_interval`].
/// Returns the guard that flushes the queue of lines when dropped. If a subscriber
/// is already installed, that one stays.
pub fn init(args: &LogArgs) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("tcpchat-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Its own complaint about a failed write would go to stderr with `eprintln!`,
        // which panics when stderr is a closed pipe.
        .log_internal_errors(false);
    // Fails only if a subscriber is already installed; that one goes on.
    let _ = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if !args.log_summary.is_zero() {
        let _ = SUMMARY_INTERVAL.set(args.log_summary);
    }
    guard
}

/// How often the server logs its summary line: the non-zero `--log-summary` that
/// [`init`] was given, or `None` (also when the log was set up otherwise, as by a
/// test that runs the server in-process).
pub fn summary_interval() -> Option<Duration> {
    SUMMARY_INTERVAL.get().copied()
}

/// Logs a `summary` line at `info` every `every` until `stop` is cancelled: the
/// members in the room by role (`viewers`, `messengers`, `chatters`), and
/// `events_per_s` and `deliveries_per_s` since the previous line (or the start).
pub async fn summarize(metrics: Arc<Metrics>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    // After a stall, one line for the whole gap, not a burst of them.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut before = (Instant::now(), metrics.totals());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = (Instant::now(), metrics.totals());
        let elapsed = now.0.duration_since(before.0);
        let Rates {
            events_per_s,
            deliveries_per_s,
        } = Rates::between(&before.1, &now.1, elapsed);
        tracing::info!(
            viewers = now.1.viewers,
            messengers = now.1.messengers,
            chatters = now.1.chatters,
            events_per_s,
            deliveries_per_s,
            "summary"
        );
        before = now;
    }
}

/// Counter rates between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    events_per_s: f64,
    deliveries_per_s: f64,
}

impl Rates {
    /// Per second over `elapsed`, to one decimal; zero over no time at all.
    fn between(before: &Totals, after: &Totals, elapsed: Duration) -> Self {
        let per_second = |before: u64, after: u64| {
            let seconds = elapsed.as_secs_f64();
            if seconds <= 0.0 {
                return 0.0;
            }
            let rate = after.saturating_sub(before) as f64 / seconds;
            (rate * 10.0).round() / 10.0
        };
        Self {
            events_per_s: per_second(before.events, after.events),
            deliveries_per_s: per_second(before.deliveries, after.deliveries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(events: u64, deliveries: u64) -> Totals {
        Totals {
            events,
            deliveries,
            ..Totals::default()
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between() {
        let rates = Rates::between(
            &totals(100, 1_000),
            &totals(130, 1_450),
            Duration::from_secs(2),
        );
        assert_eq!(
            rates,
            Rates {
                events_per_s: 15.0,
                deliveries_per_s: 225.0
            }
        );
        let thirds = Rates::between(&totals(0, 0), &totals(1, 2), Duration::from_secs(3));
        assert_eq!(thirds.events_per_s, 0.3);
        assert_eq!(thirds.deliveries_per_s, 0.7);
        let none = Rates::between(&totals(5, 5), &totals(9, 9), Duration::ZERO);
        assert_eq!(none.events_per_s, 0.0);
    }

    #[test]
    fn the_summary_interval_takes_durations_off_and_zero() {
        assert_eq!(summary_every("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(summary_every("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(summary_every("off"), Ok(Duration::ZERO));
        assert_eq!(summary_every("0"), Ok(Duration::ZERO));
        assert!(summary_every("often").is_err());
    }
}
