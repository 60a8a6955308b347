//! `tcpchat-bench`: a load generator for tcpchat and the servers people would use
//! instead (Redis pub/sub, NATS, an IRC server), bounded in count and time.
//!
//! - [`fanout`]: viewers and senders; every viewer checks every message; deliveries
//!   per second, latency percentiles, losses. With `--durable`, against servers that
//!   keep what they deliver ([`durable`]: Redis Streams, NATS JetStream).
//! - [`catchup`]: a room holding many messages, then many viewers at once each
//!   asking for the last of them; the time until all have all.
//! - [`conns`]: many idle viewers; the server's memory per connection; one message
//!   to all.
//! - [`report`]: turns the JSON lines of many runs into tables and a chart.
//!
//! `fanout`, `catchup` and `conns` start the server themselves ([`server`]: a fresh one per
//! run, pinned to a CPU with `--server-cpu`, stopped by its PID at the end), or use
//! one already running (`--addr`). Clients speak plain TCP or, with `--tls`, TLS 1.3
//! ([`transport`]), or with `--ws`, WebSocket ([`ws`]).
//!
//! It runs on one thread (pin it to a core of its own): the server under test gets
//! the other. Each run prints a readable summary on stderr and one JSON line on
//! stdout, and fails (exit code 1) if any message was lost, duplicated or reordered
//! or the run did not complete: it asserts completeness, never speed.

mod catchup;
mod conns;
mod durable;
mod fanout;
mod proto;
mod report;
mod resp;
mod scrape;
mod server;
mod transport;
mod ws;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

/// Benchmark a server (tcpchat, Redis, NATS or IRC) under load, every message checked.
#[derive(Debug, clap::Parser)]
#[command(name = "tcpchat-bench", version)]
enum BenchCommand {
    /// Viewers and senders: throughput, latency, and every message checked.
    Fanout(fanout::FanoutArgs),
    /// A room full of messages, then many viewers at once asking for the last of them.
    Catchup(catchup::CatchupArgs),
    /// Many idle viewers: memory per connection, and one message to all of them.
    Conns(conns::ConnsArgs),
    /// Summarize JSON results into tables and a chart.
    Report(report::ReportArgs),
}

fn main() -> std::process::ExitCode {
    let command = <BenchCommand as clap::Parser>::parse();
    // Tens of thousands of connections need as many file descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcpchat-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a bench subcommand.
///
/// # Errors
/// When the run cannot be set up, or it was incomplete or lossy.
fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (json, complete) = match command {
        BenchCommand::Report(args) => return report::run(&args),
        BenchCommand::Fanout(mut args) => {
            args.server.durable = args.durable;
            let report = with_server(&args.server.clone(), |endpoint| fanout::run(args, endpoint))?;
            eprintln!("{}", report.summary());
            (serde_json::to_string(&report)?, report.is_clean())
        }
        BenchCommand::Catchup(mut args) => {
            args.server.durable = true;
            let report = with_server(&args.server.clone(), |endpoint| {
                catchup::run(args, endpoint)
            })?;
            eprintln!("{}", report.summary());
            (serde_json::to_string(&report)?, report.is_clean())
        }
        BenchCommand::Conns(args) => {
            let report = with_server(&args.server.clone(), |endpoint| conns::run(args, endpoint))?;
            eprintln!("{}", report.summary());
            (serde_json::to_string(&report)?, report.is_clean())
        }
    };
    println!("{json}");
    if !complete {
        bail!("the run was incomplete, or lost, duplicated or reordered messages");
    }
    Ok(())
}

/// Starts the server `args` describe (unless it is already running), runs
/// `workload` against it on a single-threaded runtime, and stops it.
///
/// # Errors
/// When the server cannot be started, or the workload fails.
fn with_server<F, Fut, R>(args: &server::ServerArgs, workload: F) -> anyhow::Result<R>
where
    F: FnOnce(server::Endpoint) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = server::Server::start(args)?;
    let local = tokio::task::LocalSet::new();
    let endpoint = server.endpoint().clone();
    let result = runtime.block_on(local.run_until(async move {
        tokio::select! {
            result = workload(endpoint) => result,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
        }
    }));
    // Every client task (and connection) ends before the server is stopped, so that
    // its shutdown has nobody to say goodbye to; and it is stopped whatever the
    // outcome, so that a failed run leaves no server behind.
    drop(local);
    server.stop();
    result
}

/// Waits for SIGINT or SIGTERM (never returns if neither can be watched), so that a
/// run interrupted (bench/profile.sh ending early, Ctrl-C) still stops its server.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The CPU time process `pid`'s threads have used so far, in nanoseconds from
/// /proc (`schedstat`; /proc/PID/stat counts in 10 ms ticks, too coarse for a
/// broadcast): the server's cost of a workload, whatever the load generator's speed.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        // A thread may end between listing and reading: it is simply not counted.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(std::time::Duration::from_nanos(total))
}

/// Clients connecting and joining at once during a run's set-up (some servers take
/// a while to register each, IRC servers a whole second).
pub const PARALLEL_SETUP: usize = 256;

/// Runs `connect(i)` for `i` in `0..count`, at most `parallel` at a time, and returns
/// the connections in order. Must run inside a `LocalSet`.
///
/// # Errors
/// The first failure.
pub async fn connect_all<F, Fut, S>(
    count: usize,
    parallel: usize,
    connect: F,
) -> std::io::Result<Vec<S>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>> + 'static,
    S: 'static,
{
    let gate = std::rc::Rc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let gate = gate.clone();
            let connecting = connect(i);
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await;
                connecting.await
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(count);
    for task in tasks {
        streams.push(task.await.map_err(std::io::Error::other)??);
    }
    Ok(streams)
}

/// The loopback address connection `id` comes from: 127.0.0.2 and up, so that tens
/// of thousands of connections never run out of ephemeral ports.
pub fn source_address(id: usize) -> IpAddr {
    const SPREAD: usize = 250;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (id % SPREAD) as u8))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
#[derive(Debug, Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    fn new(total: u64, label: &str) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(label.to_owned());
        Self(bar)
    }

    fn add(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_grows_as_it_works() {
        use std::time::{Duration, Instant};
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        let mut now = before;
        // Busy until the process has used 50 ms more (a loaded machine may take longer).
        while now < before + Duration::from_millis(50) && start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            now = cpu_time(pid).unwrap();
        }
        assert!(
            now >= before + Duration::from_millis(50),
            "{before:?} -> {now:?}"
        );
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
