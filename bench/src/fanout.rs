//! The `fanout` workload: V viewers join, then M senders send K messages of S bytes
//! each, and every viewer checks every message.
//!
//! Without `--rate`, senders go as fast as the slowest viewer allows: at most
//! `--window` messages may be sent and not yet received by every viewer, so the
//! run measures the rate the server sustains with nobody falling behind (past a
//! server's slow-subscriber limit, messages would be lost instead). With `--rate`,
//! each sender sends that many messages per second, at evenly staggered phases.
//!
//! With `--durable`, the servers keep what they deliver ([`crate::durable`]): tcpchat
//! as always, Redis Streams (each viewer looping on `XREAD BLOCK`) and NATS JetStream
//! with file storage (each viewer a push consumer).
//!
//! With `--scrape`, tcpchat's `/metrics` is scraped at that interval from the first
//! send to the last delivery ([`crate::scrape`]), as Prometheus would, to price it.
//!
//! Besides the server's CPU time, the run records the load generator's own: if it
//! took nearly all of the run's time, the figure is the load generator's limit, not
//! the server's.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

use super::durable;
use super::proto::{MIN_PAYLOAD, Payload, Target};
use super::resp::{Item, Resp, is_stream_id};
use super::scrape::{ScrapeReport, Scrapes, scrape_every};
use super::server::{Endpoint, SendersOn, ServerArgs};
use super::transport::{BenchStream, Stream, Transport};
use super::ws::{Framing, WsStream};
use super::{PARALLEL_SETUP, Progress, connect_all, cpu_time, source_address};

/// What `tcpchat-bench fanout` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// The server, and how to reach it.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Viewers (receivers).
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Senders.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u32,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second per sender; without it, as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most messages in flight (sent, not yet received by every viewer).
    #[arg(long, default_value_t = 2_000)]
    pub window: u64,
    /// Give up after this long, setting up included.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    pub timeout: Duration,
    /// A label for the results (the workload's name).
    #[arg(long, default_value = "fanout")]
    pub label: String,
    /// Servers keeping what they deliver: tcpchat with its history (its default),
    /// Redis Streams with its append-only file, NATS JetStream with file storage.
    #[arg(long)]
    pub durable: bool,
    /// Scrape tcpchat's `/metrics` (plain HTTP) at this interval while the load runs
    /// (every scrape must answer 200 with `tcpchat_` samples).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub scrape: Option<Duration>,
}

/// The outcome of a fanout run.
#[derive(Debug, serde::Serialize)]
pub struct FanoutReport {
    workload: String,
    target: Target,
    /// How the viewers reach the server.
    transport: Transport,
    /// How the senders do (the same, but for WebSocket viewers without
    /// `--ws-senders`).
    senders_transport: Transport,
    /// The TLS version and cipher suite negotiated (with TLS).
    tls: Option<String>,
    viewers: usize,
    senders: usize,
    messages_per_sender: u32,
    size: usize,
    rate_per_sender: Option<f64>,
    /// Whether the servers kept what they delivered (`--durable`), and how.
    durable: bool,
    protocol: String,
    complete: bool,
    expected_deliveries: u64,
    deliveries: u64,
    lost: u64,
    duplicated_or_reordered: u64,
    seconds: f64,
    deliveries_per_sec: f64,
    /// The server's CPU time (user and system) per delivery, from the first send
    /// to the last delivery, in microseconds (when its pid is known).
    server_cpu_us_per_delivery: Option<f64>,
    /// The load generator's own CPU time per delivery, over the same span, in
    /// microseconds.
    client_cpu_us_per_delivery: Option<f64>,
    latency_us: Latency,
    /// The nodes of a tcpchat cluster started for the run (`--cluster-nodes`).
    cluster_nodes: Option<u16>,
    /// Where that cluster's senders were: on the first node, or on every one.
    senders_on: Option<SendersOn>,
    /// How many addresses the viewers were spread over, and the senders.
    viewer_addrs: usize,
    sender_addrs: usize,
    /// Messages sent per second over the run (all senders): for a cluster, the
    /// rate of events into its JetStream stream; for JetStream, the publish rate.
    messages_per_sec: f64,
    /// The latency of deliveries sent through one address and received through
    /// another (from a sender on one node to a viewer on another), when the run
    /// had any.
    cross_node_latency_us: Option<Latency>,
    /// Each process of the server's CPU time over the run (from the first send to
    /// the last delivery), with the share of one core it is; and the load
    /// generator's share.
    process_cpu: Vec<ProcessCpu>,
    client_cpu_percent: Option<f64>,
    /// The scrapes of `/metrics` during the run (with `--scrape`).
    scrape: Option<ScrapeReport>,
}

/// One process's CPU time over a run.
#[derive(Debug, serde::Serialize)]
struct ProcessCpu {
    name: String,
    pid: u32,
    cpu_seconds: f64,
    /// Of one core, over the run's seconds.
    percent: f64,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl FanoutReport {
    /// Whether every message reached every viewer exactly once and in order.
    pub fn is_clean(&self) -> bool {
        self.complete
            && self.lost == 0
            && self.duplicated_or_reordered == 0
            && self.scrape.as_ref().is_none_or(ScrapeReport::is_clean)
    }

    /// A few readable lines.
    pub fn summary(&self) -> String {
        let rate = match self.rate_per_sender {
            Some(rate) => format!(" at {rate} msg/s each"),
            None => String::new(),
        };
        let tls = match &self.tls {
            Some(tls) => format!(" over {tls}"),
            None => String::new(),
        };
        let durable = if self.durable || self.transport == Transport::Ws {
            format!(" ({})", self.protocol)
        } else {
            String::new()
        };
        let durable = match (self.cluster_nodes, self.senders_on) {
            (Some(nodes), Some(SendersOn::All)) => {
                format!(" (a cluster of {nodes} nodes, senders on every node){durable}")
            }
            (Some(nodes), _) => {
                format!(" (a cluster of {nodes} nodes, senders on node 1){durable}")
            }
            (None, _) => durable,
        };
        // Each one's CPU time as a share of the run's: near 100 %, it set the pace.
        let share = |us_per_delivery: Option<f64>| {
            us_per_delivery.map(|us| {
                us * self.deliveries as f64 / 1e6 / self.seconds.max(f64::MIN_POSITIVE) * 100.0
            })
        };
        let mut cpu = String::new();
        if let (Some(us), Some(share)) = (
            self.server_cpu_us_per_delivery,
            share(self.server_cpu_us_per_delivery),
        ) {
            cpu += &format!(
                "\n  server CPU {:.0} ns per delivery ({share:.0} % of the run)",
                us * 1e3
            );
        }
        if let (Some(us), Some(share)) = (
            self.client_cpu_us_per_delivery,
            share(self.client_cpu_us_per_delivery),
        ) {
            cpu += &format!(
                "\n  load generator CPU {:.0} ns per delivery ({share:.0} % of the run)",
                us * 1e3
            );
        }
        if let Some(nodes) = self.cluster_nodes {
            cpu += &format!(
                "\n  cluster of {nodes} nodes, viewers on {} of them, senders on {}; \
                 {:.0} events/s into the stream",
                self.viewer_addrs, self.sender_addrs, self.messages_per_sec
            );
        }
        if let Some(cross) = &self.cross_node_latency_us {
            cpu += &format!(
                "\n  cross-node latency us: p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                cross.p50, cross.p99, cross.p999, cross.max
            );
        }
        if self.process_cpu.len() > 1 {
            cpu += "\n  CPU of a core:";
            for process in &self.process_cpu {
                cpu += &format!(" {} {:.0} %", process.name, process.percent);
            }
        }
        if let Some(scrape) = &self.scrape {
            cpu += &format!(
                "\n  /metrics every {} s: {} scraped, {} failed, slowest {:.1} ms{}",
                scrape.interval_s,
                scrape.ok,
                scrape.failed,
                scrape.slowest_ms,
                match &scrape.first_error {
                    Some(error) => format!(" (first failure: {error})"),
                    None => String::new(),
                }
            );
        }
        format!(
            "{} on {}{durable}{tls}: {} senders{rate} x {} messages of {} B into {} viewers\n  \
             {:.0} deliveries/s ({} of {} in {:.2} s); lost {}, duplicated or reordered {}\n  \
             latency us: p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}{cpu}",
            self.workload,
            self.target,
            self.senders,
            self.messages_per_sender,
            self.size,
            self.viewers,
            self.deliveries_per_sec,
            self.deliveries,
            self.expected_deliveries,
            self.seconds,
            self.lost,
            self.duplicated_or_reordered,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
        )
    }
}

/// What every viewer shares with the senders (one thread, so `Cell`s).
struct Shared {
    start: Instant,
    /// Deliveries per viewer.
    received: Vec<Cell<u64>>,
    histogram: RefCell<Histogram<u64>>,
    /// Deliveries from a sender on another address than the viewer's.
    cross_histogram: RefCell<Histogram<u64>>,
    lost: Cell<u64>,
    disordered: Cell<u64>,
    /// Time of the last delivery.
    last: Cell<Duration>,
    /// Messages sent by all senders.
    sent: Cell<u64>,
    /// Notified when viewers received something (senders waiting on the window).
    progressed: tokio::sync::Notify,
}

impl Shared {
    fn slowest(&self) -> u64 {
        self.received.iter().map(Cell::get).min().unwrap_or(0)
    }
}

/// Runs the workload, all of it (setting up included) within `--timeout`; must run
/// inside a `LocalSet`.
///
/// # Errors
/// When clients cannot connect or join in time.
pub async fn run(args: FanoutArgs, endpoint: Endpoint) -> anyhow::Result<FanoutReport> {
    if args.size < MIN_PAYLOAD {
        bail!("--size must be at least {MIN_PAYLOAD}");
    }
    if args.scrape.is_some() {
        if !endpoint.target.is_tcpchat() || endpoint.transport() == Transport::Tls {
            bail!("--scrape is for tcpchat with plain HTTP (not with --tls)");
        }
        if endpoint.http_addr.is_none() {
            bail!("--scrape needs tcpchat's HTTP listener (with --addr: --http-addr)");
        }
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let setup = tokio::time::timeout_at(deadline, set_up(&args, &endpoint))
        .await
        .context("setting up took longer than --timeout")??;
    measure(args, &endpoint, setup, deadline).await
}

/// Clients of a run, connected and joined.
struct Setup {
    owner: Option<Stream>,
    viewers: Vec<Stream>,
    senders: Vec<Stream>,
}

async fn set_up(args: &FanoutArgs, endpoint: &Endpoint) -> anyhow::Result<Setup> {
    let owner = if endpoint.durable {
        durable::open_room(endpoint)
            .await
            .context("cannot prepare the room")?;
        None
    } else {
        endpoint
            .target
            .open_room(endpoint)
            .await
            .context("cannot prepare the room")?
    };
    let viewers = connect_all(args.viewers, PARALLEL_SETUP, |id| {
        let endpoint = endpoint.clone();
        async move {
            let addr = endpoint.viewer_addrs[id % endpoint.viewer_addrs.len()];
            let mut stream = endpoint
                .connector
                .connect(addr, Some(source_address(id)))
                .await?;
            if endpoint.durable {
                durable::subscribe(endpoint.target, &mut stream, id).await?;
            } else {
                endpoint.target.subscribe(&mut stream, id).await?;
            }
            Ok(stream)
        }
    })
    .await
    .context("a viewer cannot subscribe")?;
    let mut senders = Vec::with_capacity(args.senders);
    for sender in 0..args.senders {
        let addr = endpoint.sender_addrs[sender % endpoint.sender_addrs.len()];
        let mut stream = endpoint
            .sender_connector
            .connect(addr, None)
            .await
            .with_context(|| format!("sender {sender} cannot connect"))?;
        let id = u16::try_from(sender).context("too many senders")?;
        let joined = if endpoint.durable {
            durable::join_sender(endpoint.target, &mut stream, id).await
        } else {
            endpoint.target.join_sender(&mut stream, id).await
        };
        joined.with_context(|| format!("sender {sender} cannot join"))?;
        senders.push(stream);
    }
    Ok(Setup {
        owner,
        viewers,
        senders,
    })
}

async fn measure(
    args: FanoutArgs,
    endpoint: &Endpoint,
    setup: Setup,
    deadline: tokio::time::Instant,
) -> anyhow::Result<FanoutReport> {
    let Setup {
        owner,
        viewers,
        senders,
    } = setup;
    let tls = viewers
        .first()
        .or(senders.first())
        .and_then(BenchStream::tls_parameters);
    let expected_per_viewer = args.senders as u64 * u64::from(args.messages);
    let shared = Rc::new(Shared {
        start: Instant::now(),
        received: (0..args.viewers).map(|_| Cell::new(0)).collect(),
        histogram: RefCell::new(Histogram::new_with_bounds(1, 60_000_000_000, 3)?),
        cross_histogram: RefCell::new(Histogram::new_with_bounds(1, 60_000_000_000, 3)?),
        lost: Cell::new(0),
        disordered: Cell::new(0),
        last: Cell::new(Duration::ZERO),
        sent: Cell::new(0),
        progressed: tokio::sync::Notify::new(),
    });
    let cpu_before = processes_cpu(endpoint);
    let client_cpu_before = cpu_time(std::process::id());
    let scrapes = Rc::new(Scrapes::default());
    let scraping = match (args.scrape, endpoint.http_addr) {
        (Some(interval), Some(addr)) => Some(AbortOnDropHandle::new(tokio::task::spawn_local(
            scrape_every(addr, interval, scrapes.clone()),
        ))),
        _ => None,
    };
    let progress = Progress::new(expected_per_viewer * args.viewers as u64, &args.label);
    let mut watching = Vec::new();
    let read_stream = endpoint.durable && endpoint.target == Target::Redis;
    for (index, stream) in viewers.into_iter().enumerate() {
        let mut viewer = Viewer::new(index, &args, shared.clone(), progress.clone());
        viewer.remote = remote_senders(endpoint, index, args.senders);
        watching.push(if read_stream {
            tokio::task::spawn_local(view_stream(stream, viewer))
        } else {
            tokio::task::spawn_local(view(stream, viewer))
        });
    }
    let mut sending = Vec::new();
    let encode = Encoder {
        target: endpoint.target,
        durable: endpoint.durable,
    };
    for (sender, stream) in senders.into_iter().enumerate() {
        sending.push(tokio::task::spawn_local(send(
            stream,
            sender,
            encode,
            args.clone(),
            shared.clone(),
        )));
    }
    // Done when every viewer has everything (or the time is up).
    let finished = tokio::time::timeout_at(deadline, async {
        for task in watching {
            let _ = task.await;
        }
    })
    .await
    .is_ok();
    let cpu_after = processes_cpu(endpoint);
    let client_cpu_after = cpu_time(std::process::id());
    drop(scraping);
    progress.finish();
    for task in sending {
        task.abort();
    }
    drop(owner);

    let deliveries: u64 = shared.received.iter().map(Cell::get).sum();
    let expected = expected_per_viewer * args.viewers as u64;
    // Messages a viewer never saw count as lost, whether or not a later one came.
    let lost = shared.lost.get() + expected.saturating_sub(deliveries + shared.lost.get());
    let seconds = shared.last.get().as_secs_f64();
    let histogram = shared.histogram.borrow();
    let cross = shared.cross_histogram.borrow();
    let us = |ns: u64| ns as f64 / 1000.0;
    let latency = |histogram: &Histogram<u64>| Latency {
        p50: us(histogram.value_at_quantile(0.5)),
        p99: us(histogram.value_at_quantile(0.99)),
        p999: us(histogram.value_at_quantile(0.999)),
        max: us(histogram.max()),
    };
    let process_cpu: Vec<ProcessCpu> = endpoint
        .processes
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .filter_map(|(process, (before, after))| {
            let used = after.as_ref()?.saturating_sub((*before)?).as_secs_f64();
            Some(ProcessCpu {
                name: process.name.clone(),
                pid: process.pid,
                cpu_seconds: used,
                percent: used / seconds.max(f64::MIN_POSITIVE) * 100.0,
            })
        })
        .collect();
    // The server's CPU: every process of it (a cluster's NATS and nodes together).
    let server_cpu = (!process_cpu.is_empty() && process_cpu.len() == endpoint.processes.len())
        .then(|| Duration::from_secs_f64(process_cpu.iter().map(|p| p.cpu_seconds).sum()));
    let client_cpu_percent = match (client_cpu_before, client_cpu_after) {
        (Some(before), Some(after)) => Some(
            after.saturating_sub(before).as_secs_f64() / seconds.max(f64::MIN_POSITIVE) * 100.0,
        ),
        _ => None,
    };
    let sent = args.senders as f64 * f64::from(args.messages);
    Ok(FanoutReport {
        workload: args.label,
        target: endpoint.target,
        transport: endpoint.transport(),
        senders_transport: endpoint.senders_transport(),
        tls,
        viewers: args.viewers,
        senders: args.senders,
        messages_per_sender: args.messages,
        size: args.size,
        rate_per_sender: args.rate,
        durable: endpoint.durable,
        protocol: if endpoint.durable {
            durable::protocol(endpoint.target).to_owned()
        } else {
            endpoint.protocol()
        },
        complete: finished && deliveries == expected,
        expected_deliveries: expected,
        deliveries,
        lost,
        duplicated_or_reordered: shared.disordered.get(),
        seconds,
        deliveries_per_sec: if seconds > 0.0 {
            deliveries as f64 / seconds
        } else {
            0.0
        },
        server_cpu_us_per_delivery: per_delivery(Some(Duration::ZERO), server_cpu, deliveries),
        client_cpu_us_per_delivery: per_delivery(client_cpu_before, client_cpu_after, deliveries),
        latency_us: latency(&histogram),
        cluster_nodes: endpoint.cluster_nodes,
        senders_on: endpoint.senders_on,
        viewer_addrs: endpoint.viewer_addrs.len(),
        sender_addrs: endpoint.sender_addrs.len(),
        messages_per_sec: if seconds > 0.0 { sent / seconds } else { 0.0 },
        cross_node_latency_us: (!cross.is_empty()).then(|| latency(&cross)),
        process_cpu,
        client_cpu_percent,
        scrape: args.scrape.map(|interval| scrapes.report(interval)),
    })
}

/// The CPU time of each of the server's processes so far (`None` for one gone).
fn processes_cpu(endpoint: &Endpoint) -> Vec<Option<Duration>> {
    endpoint
        .processes
        .iter()
        .map(|process| cpu_time(process.pid))
        .collect()
}

/// Which of the `senders` reach the server at another address than viewer
/// `viewer` does (on another node of a cluster): their deliveries to it are
/// cross-node. None over WebSocket, where a node's viewers and senders use two
/// listeners of it.
fn remote_senders(endpoint: &Endpoint, viewer: usize, senders: usize) -> Vec<bool> {
    if endpoint.transport() == Transport::Ws && endpoint.senders_transport() != Transport::Ws {
        return vec![false; senders];
    }
    let viewer_addr = endpoint.viewer_addrs[viewer % endpoint.viewer_addrs.len()];
    (0..senders)
        .map(|sender| endpoint.sender_addrs[sender % endpoint.sender_addrs.len()] != viewer_addr)
        .collect()
}

/// CPU time from `before` to `after` per delivery, in microseconds.
fn per_delivery(before: Option<Duration>, after: Option<Duration>, deliveries: u64) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if deliveries > 0 => {
            Some(after.saturating_sub(before).as_secs_f64() * 1e6 / deliveries as f64)
        }
        _ => None,
    }
}

/// One viewer's checks: the next sequence number expected of every sender, and its
/// share of the run's figures.
struct Viewer {
    index: usize,
    size: usize,
    expected: u64,
    received: u64,
    next: Vec<u32>,
    /// Per sender: whether it is on another node than this viewer.
    remote: Vec<bool>,
    shared: Rc<Shared>,
    progress: Progress,
}

impl Viewer {
    fn new(index: usize, args: &FanoutArgs, shared: Rc<Shared>, progress: Progress) -> Self {
        Self {
            index,
            size: args.size,
            expected: args.senders as u64 * u64::from(args.messages),
            received: 0,
            next: vec![0; args.senders],
            remote: vec![false; args.senders],
            shared,
            progress,
        }
    }

    fn done(&self) -> bool {
        self.received >= self.expected
    }

    /// Checks the payload at the end of `line`, if any, against its sender's
    /// sequence and records its latency; returns whether it counts as delivered.
    fn check(&mut self, line: &[u8], now_ns: u64, histogram: &mut Histogram<u64>) -> bool {
        let Some(payload) = Payload::find(line, self.size) else {
            return false;
        };
        let remote = self
            .remote
            .get(usize::from(payload.sender))
            .copied()
            .unwrap_or(false);
        let Some(expected) = self.next.get_mut(usize::from(payload.sender)) else {
            return false;
        };
        let shared = &self.shared;
        if payload.seq == *expected {
            *expected += 1;
        } else if payload.seq > *expected {
            shared
                .lost
                .set(shared.lost.get() + u64::from(payload.seq - *expected));
            *expected = payload.seq + 1;
        } else {
            shared.disordered.set(shared.disordered.get() + 1);
            return false;
        }
        let latency = now_ns.saturating_sub(payload.sent_ns).max(1);
        let _ = histogram.record(latency);
        if remote {
            let _ = shared.cross_histogram.borrow_mut().record(latency);
        }
        true
    }

    /// Adds `got` deliveries, received at `now`, to the run's figures.
    fn delivered(&mut self, got: u64, now: Duration) {
        self.received += got;
        let shared = &self.shared;
        let cell = &shared.received[self.index];
        cell.set(cell.get() + got);
        shared.progressed.notify_waiters();
        self.progress.add(got);
        if shared.last.get() < now {
            shared.last.set(now);
        }
    }
}

/// One viewer: reads, finds every payload, checks order, records latency.
async fn view(mut stream: Stream, mut viewer: Viewer) {
    if let Stream::Ws(ws) = &mut stream
        && ws.framing() == Framing::Lines
    {
        return view_lines(ws, viewer).await;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    while !viewer.done() {
        let read = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let now = viewer.shared.start.elapsed();
        let now_ns = now.as_nanos() as u64;
        filled += read;
        let mut start = 0;
        let shared = viewer.shared.clone();
        let mut histogram = shared.histogram.borrow_mut();
        let mut got = 0u64;
        while let Some(end) = memchr::memchr(b'\n', &buf[start..filled]) {
            let line = &buf[start..start + end];
            start += end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if viewer.check(line, now_ns, &mut histogram) {
                got += 1;
            }
        }
        drop(histogram);
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            // A line longer than the buffer is not ours: drop it.
            filled = 0;
        }
        viewer.delivered(got, now);
    }
}

/// One viewer of tcpchat over WebSocket: as [`view`], with every frame a line,
/// checked where it lies in the read buffer.
async fn view_lines(ws: &mut WsStream<TcpStream>, mut viewer: Viewer) {
    while !viewer.done() {
        match std::future::poll_fn(|cx| ws.poll_fill(cx)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let now = viewer.shared.start.elapsed();
        let now_ns = now.as_nanos() as u64;
        let shared = viewer.shared.clone();
        let mut histogram = shared.histogram.borrow_mut();
        let mut got = 0u64;
        let drained = ws.drain_lines(|line| {
            if viewer.check(line, now_ns, &mut histogram) {
                got += 1;
            }
        });
        drop(histogram);
        viewer.delivered(got, now);
        if drained.is_err() {
            return;
        }
    }
}

/// One viewer of a Redis stream: `XREAD BLOCK 0` for the entries after the last one
/// it has, again as soon as the reply is complete, checking every entry's payload.
async fn view_stream(mut stream: Stream, mut viewer: Viewer) {
    let mut last_id = b"0-0".to_vec();
    let mut request = BytesMut::new();
    let mut resp = Resp::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let mut asked = false;
    while !viewer.done() {
        if !asked {
            request.clear();
            durable::xread(&last_id, &mut request);
            if stream.send(&request).await.is_err() {
                return;
            }
            asked = true;
        }
        let read = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let now = viewer.shared.start.elapsed();
        let now_ns = now.as_nanos() as u64;
        filled += read;
        let shared = viewer.shared.clone();
        let mut histogram = shared.histogram.borrow_mut();
        let mut got = 0u64;
        let parsed = resp.parse(&buf[..filled], &mut |item| match item {
            Item::Bulk(bytes) if viewer.check(bytes, now_ns, &mut histogram) => got += 1,
            Item::Bulk(bytes) if is_stream_id(bytes) => {
                last_id.clear();
                last_id.extend_from_slice(bytes);
            }
            Item::End => asked = false,
            _ => {}
        });
        drop(histogram);
        let Ok(used) = parsed else { return };
        buf.copy_within(used..filled, 0);
        filled -= used;
        if filled == buf.len() {
            // One piece bigger than the buffer: grow it.
            buf.resize(buf.len() * 2, 0);
        }
        viewer.delivered(got, now);
    }
}

/// How a run's senders encode their messages.
#[derive(Debug, Clone, Copy)]
struct Encoder {
    target: Target,
    durable: bool,
}

impl Encoder {
    fn encode(self, payload: &Payload, size: usize, out: &mut BytesMut) {
        if self.durable {
            durable::encode(self.target, payload, size, out);
        } else {
            self.target.encode(payload, size, out);
        }
    }
}

/// One sender: sends its messages, windowed or at a fixed rate, and discards what
/// the server sends back (Redis counts receivers after every PUBLISH, or gives the
/// ID of every XADD; JetStream acknowledges every message stored). Runs until
/// aborted at the end of the run, so the connection stays open until then.
async fn send(
    stream: Stream,
    sender: usize,
    target: Encoder,
    args: FanoutArgs,
    shared: Rc<Shared>,
) {
    // Reading and writing from two tasks: the halves share the stream (a TLS session
    // is one state for both directions), each taking it only while it polls.
    let (mut read, mut write) = tokio::io::split(stream);
    let _drain = AbortOnDropHandle::new(tokio::task::spawn_local(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }));
    let id = u16::try_from(sender).unwrap_or(u16::MAX);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut ticker = args.rate.map(|rate| {
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        // Stagger the senders evenly across one period.
        let phase = period.mul_f64(sender as f64 / args.senders.max(1) as f64);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    let mut seq = 0u32;
    while seq < args.messages {
        let batch = match &mut ticker {
            Some(ticker) => {
                ticker.tick().await;
                1
            }
            None => {
                let progressed = shared.progressed.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                let in_flight = shared.sent.get().saturating_sub(shared.slowest());
                if in_flight >= args.window {
                    progressed.await;
                    continue;
                }
                (args.window - in_flight)
                    .min(64)
                    .min(u64::from(args.messages - seq)) as u32
            }
        };
        let sent_ns = shared.start.elapsed().as_nanos() as u64;
        for _ in 0..batch {
            target.encode(
                &Payload {
                    sender: id,
                    seq,
                    sent_ns,
                },
                args.size,
                &mut out,
            );
            seq += 1;
        }
        shared.sent.set(shared.sent.get() + u64::from(batch));
        // Flushed, so that nothing waits in a TLS session's buffer for the next batch.
        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
            break;
        }
        out.clear();
    }
    // Keep the connection (and the draining) until the run ends and aborts us.
    std::future::pending::<()>().await;
}
