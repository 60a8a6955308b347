//! The `conns` workload: many idle viewers held at once, the server's memory per
//! connection, and how fast one message then reaches them all.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use super::proto::{Payload, Target};
use super::server::{Endpoint, ServerArgs};
use super::transport::{BenchStream, Stream, Transport};
use super::{Progress, cpu_time, source_address};

/// Payload size of the one message.
const SIZE: usize = 64;

/// What `tcpchat-bench conns` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnsArgs {
    /// The server, and how to reach it.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Idle viewers to hold.
    #[arg(long, default_value_t = 19_000)]
    pub viewers: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub parallel: usize,
    /// Wait after the last connection before reading the server's memory.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub settle: Duration,
    /// Keep the connections open this long after the message (bench/profile.sh
    /// stops sampling the server meanwhile, so the closes stay out of its profile).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub hold: Duration,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    pub timeout: Duration,
    /// A label for the results.
    #[arg(long, default_value = "conns")]
    pub label: String,
}

/// The outcome of a conns run.
#[derive(Debug, serde::Serialize)]
pub struct ConnsReport {
    workload: String,
    target: Target,
    transport: Transport,
    /// The TLS version and cipher suite negotiated (with TLS).
    tls: Option<String>,
    viewers: usize,
    connected: usize,
    complete: bool,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_bytes_per_connection: Option<f64>,
    connect_seconds: f64,
    delivered: usize,
    broadcast_ms: f64,
    /// The server's CPU time for that one message, in milliseconds (when its pid is
    /// known).
    broadcast_server_cpu_ms: Option<f64>,
}

impl ConnsReport {
    /// Whether every viewer connected and got the message.
    pub fn is_clean(&self) -> bool {
        self.complete
    }

    /// A few readable lines.
    pub fn summary(&self) -> String {
        let memory = match self.server_bytes_per_connection {
            Some(bytes) => format!("{bytes:.0} B of server RSS per connection"),
            None => "server memory not measured (no --pid)".to_owned(),
        };
        let tls = match &self.tls {
            Some(tls) => format!(" over {tls}"),
            None => String::new(),
        };
        format!(
            "{} on {}{tls}: {} of {} idle viewers connected in {:.1} s; {memory}\n  \
             one message reached {} of them in {:.1} ms{}",
            self.workload,
            self.target,
            self.connected,
            self.viewers,
            self.connect_seconds,
            self.delivered,
            self.broadcast_ms,
            match self.broadcast_server_cpu_ms {
                Some(ms) => format!(", {ms:.0} ms of server CPU"),
                None => String::new(),
            },
        )
    }
}

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs the workload, all of it within `--timeout`; must run inside a `LocalSet`.
///
/// # Errors
/// When the room cannot be prepared or the sender cannot join in time.
pub async fn run(args: ConnsArgs, endpoint: Endpoint) -> anyhow::Result<ConnsReport> {
    let timeout = args.timeout;
    tokio::time::timeout(timeout, measure(args, endpoint))
        .await
        .context("the run took longer than --timeout")?
}

async fn measure(args: ConnsArgs, endpoint: Endpoint) -> anyhow::Result<ConnsReport> {
    let rss_before = endpoint.pid.and_then(rss_kib);
    let owner = endpoint
        .target
        .open_room(&endpoint)
        .await
        .context("cannot prepare the room")?;
    // The sender joins before the viewers, so that the only thing they are sent is
    // the one message (a tcpchat viewer is told of every join).
    let mut sender = endpoint
        .connector
        .connect(endpoint.addr, None)
        .await
        .context("the sender cannot connect")?;
    endpoint
        .target
        .join_sender(&mut sender, 0)
        .await
        .context("the sender cannot join")?;
    let tls = sender.tls_parameters();
    let start = Instant::now();
    let connected = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let delivered = Rc::new(Cell::new(0usize));
    let last_delivery = Rc::new(Cell::new(Duration::ZERO));
    let all_set = Rc::new(tokio::sync::Notify::new());
    let all_reached = Rc::new(tokio::sync::Notify::new());
    let gate = Rc::new(Semaphore::new(args.parallel.max(1)));
    let progress = Progress::new(args.viewers as u64, &format!("{} connecting", args.label));
    let mut viewers = Vec::with_capacity(args.viewers);
    for id in 0..args.viewers {
        let (gate, connected, failed, delivered, last, all_set, all_reached, progress) = (
            gate.clone(),
            connected.clone(),
            failed.clone(),
            delivered.clone(),
            last_delivery.clone(),
            all_set.clone(),
            all_reached.clone(),
            progress.clone(),
        );
        let (endpoint, total) = (endpoint.clone(), args.viewers);
        viewers.push(tokio::task::spawn_local(async move {
            let stream = {
                let _permit = gate.acquire().await;
                let joined = async {
                    let mut stream = endpoint
                        .connector
                        .connect(endpoint.addr, Some(source_address(id)))
                        .await?;
                    endpoint.target.subscribe(&mut stream, id).await?;
                    Ok::<Stream, std::io::Error>(stream)
                };
                match joined.await {
                    Ok(stream) => stream,
                    Err(_) => {
                        failed.set(failed.get() + 1);
                        if connected.get() + failed.get() == total {
                            all_set.notify_one();
                        }
                        return;
                    }
                }
            };
            connected.set(connected.get() + 1);
            progress.add(1);
            if connected.get() + failed.get() == total {
                all_set.notify_one();
            }
            let mut stream = stream;
            if wait_for_message(&mut stream).await {
                delivered.set(delivered.get() + 1);
                last.set(start.elapsed());
                // Nobody connects once the message is out, so this is everyone.
                if delivered.get() == connected.get() {
                    all_reached.notify_one();
                }
            }
            // Stay connected until the end of the run: a close during the broadcast
            // would cost the server work that is not the broadcast's.
            std::future::pending::<()>().await;
            drop(stream);
        }));
    }
    let set_up = tokio::time::timeout(args.timeout, all_set.notified()).await;
    progress.finish();
    let connect_seconds = start.elapsed().as_secs_f64();
    if set_up.is_err() {
        eprintln!(
            "conns: not every viewer connected within {:?}",
            args.timeout
        );
    }
    tokio::time::sleep(args.settle).await;
    let rss_after = endpoint.pid.and_then(rss_kib);

    // One message, to all of them.
    let mut out = BytesMut::new();
    let cpu_before = endpoint.pid.and_then(cpu_time);
    let sent_at = start.elapsed();
    endpoint.target.encode(
        &Payload {
            sender: 0,
            seq: 0,
            sent_ns: sent_at.as_nanos() as u64,
        },
        SIZE,
        &mut out,
    );
    sender.send(&out).await.context("the sender cannot send")?;
    if connected.get() > 0 {
        let _ = tokio::time::timeout(args.timeout, all_reached.notified()).await;
    }
    let cpu_after = endpoint.pid.and_then(cpu_time);
    if !args.hold.is_zero() {
        eprintln!(
            "conns: holding {} connections for {:?}",
            connected.get(),
            args.hold
        );
        tokio::time::sleep(args.hold).await;
    }
    for viewer in viewers {
        viewer.abort();
    }
    drop(owner);
    let bytes_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected.get() > 0 => {
            Some(after.saturating_sub(before) as f64 * 1024.0 / connected.get() as f64)
        }
        _ => None,
    };
    Ok(ConnsReport {
        workload: args.label,
        target: endpoint.target,
        transport: endpoint.transport(),
        tls,
        viewers: args.viewers,
        connected: connected.get(),
        complete: connected.get() == args.viewers && delivered.get() == args.viewers,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_bytes_per_connection: bytes_per_connection,
        connect_seconds,
        delivered: delivered.get(),
        broadcast_server_cpu_ms: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64() * 1e3),
            _ => None,
        },
        broadcast_ms: last_delivery.get().saturating_sub(sent_at).as_secs_f64() * 1000.0,
    })
}

/// Waits for the one message; returns whether it came.
async fn wait_for_message(stream: &mut Stream) -> bool {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some(end) = memchr::memchr(b'\n', &buf) {
            let line = buf.split_to(end + 1);
            let line = &line[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if Payload::find(line, SIZE).is_some() {
                return true;
            }
        }
        buf.reserve(1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}
