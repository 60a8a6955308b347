//! The `catchup` workload: a room that already holds E messages, then V viewers
//! connecting at once, each asking for the last E events; how long until every one
//! of them has all E, every event checked.
//!
//! The messages are posted first by one sender that stays connected, so they are the
//! room's last E events, and the run waits until they are stored (a live viewer of
//! tcpchat has them all, every XADD or JetStream publication is acknowledged). Then:
//!
//! - tcpchat: `viewer history=E tags`; the welcome `@seq=S Welcome...`, then E tagged
//!   lines whose `seq` must be S-E+1..S in order, each carrying the next payload.
//! - Redis: `XREVRANGE bench + - COUNT E`, one command per viewer; newest first, so
//!   the payloads must come in descending order.
//! - NATS: a push consumer per viewer from stream sequence LAST-E+1
//!   (`by_start_sequence`), payloads in ascending order.
//!
//! The time runs from the moment every viewer starts connecting to the moment the
//! last one has its last event: connecting, asking and reading, for all of them.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::durable;
use super::proto::{MIN_PAYLOAD, Payload, ROOM, Target};
use super::resp::{self, Item, Resp};
use super::server::{Endpoint, ServerArgs};
use super::transport::{BenchStream, Stream, Transport};
use super::{Progress, cpu_time, source_address};

/// What `tcpchat-bench catchup` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CatchupArgs {
    /// The server, and how to reach it.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Viewers connecting at once, each catching up.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Messages posted before they connect, and asked for by each of them (tcpchat
    /// replays at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub events: u32,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Give up after this long, posting included.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    pub timeout: Duration,
    /// A label for the results (the workload's name).
    #[arg(long, default_value = "catchup")]
    pub label: String,
}

/// The outcome of a catchup run.
#[derive(Debug, serde::Serialize)]
pub struct CatchupReport {
    workload: String,
    target: Target,
    transport: Transport,
    /// The TLS version and cipher suite negotiated (with TLS).
    tls: Option<String>,
    protocol: &'static str,
    viewers: usize,
    events: u32,
    size: usize,
    complete: bool,
    expected_deliveries: u64,
    deliveries: u64,
    lost: u64,
    duplicated_or_reordered: u64,
    /// Posting the messages until all were stored.
    prefill_seconds: f64,
    /// From the start of every viewer's connection to the last one's last event.
    catchup_seconds: f64,
    /// The median viewer's time to its last event.
    median_viewer_seconds: f64,
    deliveries_per_sec: f64,
    /// The server's CPU time while the viewers caught up, in milliseconds (when its
    /// pid is known).
    server_cpu_ms: Option<f64>,
}

impl CatchupReport {
    /// Whether every viewer got every event once and in order.
    pub fn is_clean(&self) -> bool {
        self.complete && self.lost == 0 && self.duplicated_or_reordered == 0
    }

    /// A few readable lines.
    pub fn summary(&self) -> String {
        let tls = match &self.tls {
            Some(tls) => format!(" over {tls}"),
            None => String::new(),
        };
        format!(
            "{} on {} ({}){tls}: {} viewers each catching up on {} messages of {} B \
             (posted in {:.2} s)\n  all caught up in {:.1} ms (median viewer {:.1} ms), \
             {:.0} deliveries/s ({} of {}); lost {}, duplicated or reordered {}{}",
            self.workload,
            self.target,
            self.protocol,
            self.viewers,
            self.events,
            self.size,
            self.prefill_seconds,
            self.catchup_seconds * 1e3,
            self.median_viewer_seconds * 1e3,
            self.deliveries_per_sec,
            self.deliveries,
            self.expected_deliveries,
            self.lost,
            self.duplicated_or_reordered,
            match self.server_cpu_ms {
                Some(ms) => format!("\n  server CPU {ms:.0} ms"),
                None => String::new(),
            },
        )
    }
}

/// Runs the workload, all of it within `--timeout`; must run inside a `LocalSet`.
///
/// # Errors
/// When the room cannot be filled in time, or a client cannot connect.
pub async fn run(args: CatchupArgs, endpoint: Endpoint) -> anyhow::Result<CatchupReport> {
    if args.size < MIN_PAYLOAD {
        bail!("--size must be at least {MIN_PAYLOAD}");
    }
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    durable::open_room(&endpoint)
        .await
        .context("cannot prepare the room")?;
    let posting = Instant::now();
    let prefilled = tokio::time::timeout_at(deadline, prefill(&args, &endpoint))
        .await
        .context("posting took longer than --timeout")??;
    let prefill_seconds = posting.elapsed().as_secs_f64();
    eprintln!(
        "catchup: {} messages stored in {prefill_seconds:.2} s",
        args.events
    );
    let report = measure(&args, &endpoint, &prefilled, deadline).await;
    // The sender (and tcpchat's live viewer) leave only now: their departure is an
    // event of its own.
    drop(prefilled);
    Ok(CatchupReport {
        prefill_seconds,
        ..report
    })
}

/// The room, filled: the connections that filled it, kept open until the end, and
/// the stream sequence of the last message (JetStream).
struct Prefilled {
    _keep: Vec<Stream>,
    last_seq: u64,
}

/// Posts `--events` messages from one sender and waits until they are stored.
async fn prefill(args: &CatchupArgs, endpoint: &Endpoint) -> anyhow::Result<Prefilled> {
    let mut sender = endpoint
        .connector
        .connect(endpoint.addr, None)
        .await
        .context("the sender cannot connect")?;
    // tcpchat: a live viewer, there before the sender joins, sees every message once
    // it is stored.
    let mut watcher = None;
    if endpoint.target.is_tcpchat() {
        let mut stream = endpoint
            .connector
            .connect(endpoint.addr, None)
            .await
            .context("the watcher cannot connect")?;
        endpoint
            .target
            .subscribe(&mut stream, 0)
            .await
            .context("the watcher cannot subscribe")?;
        watcher = Some(stream);
    }
    durable::join_sender(endpoint.target, &mut sender, 0)
        .await
        .context("the sender cannot join")?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let start = Instant::now();
    let (mut read, mut write) = tokio::io::split(sender);
    // Written while the replies are read: neither side may wait for the other.
    let total = args.events;
    let (size, target) = (args.size, endpoint.target);
    let writing = tokio::task::spawn_local(async move {
        for seq in 0..total {
            durable::encode(
                target,
                &Payload {
                    sender: 0,
                    seq,
                    sent_ns: start.elapsed().as_nanos() as u64,
                },
                size,
                &mut out,
            );
            if out.len() >= 60 * 1024 || seq + 1 == total {
                write.write_all_flushed(&out).await?;
                out.clear();
            }
        }
        Ok::<_, std::io::Error>(write)
    });
    let mut last_seq = 0;
    match endpoint.target {
        Target::Redis => {
            let mut replies = 0u32;
            let mut refused = None;
            read_replies(&mut read, |item| match item {
                Item::End => {
                    replies += 1;
                    replies >= total
                }
                Item::Error(error) => {
                    refused = Some(String::from_utf8_lossy(error).into_owned());
                    false
                }
                _ => false,
            })
            .await
            .context("reading XADD's replies")?;
            if let Some(error) = refused {
                bail!("Redis refused an XADD: {error}");
            }
        }
        Target::Nats => {
            let mut acks = 0u32;
            let mut refused = None;
            read_lines(&mut read, |line| {
                if line.contains("\"error\"") {
                    // Refused, but answered: the run fails once every one is.
                    acks += 1;
                    refused = Some(line.to_owned());
                } else if let Some(seq) = ack_seq(line) {
                    acks += 1;
                    last_seq = last_seq.max(seq);
                }
                acks >= total
            })
            .await
            .context("reading JetStream's acknowledgements")?;
            if let Some(error) = refused {
                bail!("JetStream refused a message: {error}");
            }
        }
        _ => {
            let Some(watcher) = watcher.as_mut() else {
                bail!("no watcher");
            };
            let mut seen = 0u32;
            read_lines(watcher, |line| {
                if Payload::find(line.as_bytes(), size).is_some() {
                    seen += 1;
                }
                seen >= total
            })
            .await
            .context("the watcher")?;
        }
    }
    let write = writing
        .await
        .context("the sender's task")?
        .context("the sender cannot send")?;
    let mut keep = vec![read.unsplit(write)];
    keep.extend(watcher);
    Ok(Prefilled {
        _keep: keep,
        last_seq,
    })
}

/// The stream sequence in a JetStream publication's acknowledgement
/// (`{"stream":"bench", "seq":12}`).
fn ack_seq(line: &str) -> Option<u64> {
    let rest = line.split("\"seq\":").nth(1)?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads lines (without their terminator) until `done` says so. One buffer, lines
/// found with `memchr` and looked at in place, as a fan-out viewer reads.
async fn read_lines(
    stream: &mut (impl AsyncReadExt + Unpin),
    mut done: impl FnMut(&str) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buf[filled..]).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += read;
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &buf[start..filled]) {
            let line = &buf[start..start + end];
            start += end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let finished = match std::str::from_utf8(line) {
                Ok(line) => done(line),
                Err(_) => done(&String::from_utf8_lossy(line)),
            };
            if finished {
                return Ok(());
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            // A line longer than the buffer: grow it.
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Reads Redis replies until `done` says so.
async fn read_replies(
    stream: &mut (impl AsyncReadExt + Unpin),
    mut done: impl FnMut(Item<'_>) -> bool,
) -> std::io::Result<()> {
    let mut resp = Resp::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut finished = false;
    loop {
        let used = resp.parse(&buf, &mut |item| finished |= done(item))?;
        let _ = buf.split_to(used);
        if finished {
            return Ok(());
        }
        buf.reserve(64 * 1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One viewer's account, shared with the run.
#[derive(Debug, Default)]
struct Account {
    received: Cell<u64>,
    lost: Cell<u64>,
    disordered: Cell<u64>,
    /// When it had everything.
    done: Cell<Option<Duration>>,
}

/// Checks payloads against the order they must come in: ascending from 0, or (Redis's
/// XREVRANGE) descending from the last.
struct Order<'a> {
    next: i64,
    step: i64,
    size: usize,
    account: &'a Account,
    progress: &'a Progress,
    /// Deliveries not yet shown in the progress bar (which reads the clock at every
    /// update: once per delivery would cost the load generator more than the rest).
    unshown: u64,
}

impl Order<'_> {
    /// Checks the payload at the end of `line`; returns whether there was one.
    fn check(&mut self, line: &[u8]) -> bool {
        let Some(payload) = Payload::find(line, self.size) else {
            return false;
        };
        let account = self.account;
        let seq = i64::from(payload.seq);
        let ahead = (seq - self.next) * self.step;
        if payload.sender != 0 || ahead < 0 {
            account.disordered.set(account.disordered.get() + 1);
            return true;
        }
        account.lost.set(account.lost.get() + ahead as u64);
        account.received.set(account.received.get() + 1);
        self.unshown += 1;
        if self.unshown == 1024 {
            self.progress.add(self.unshown);
            self.unshown = 0;
        }
        self.next = seq + self.step;
        true
    }
}

impl Drop for Order<'_> {
    fn drop(&mut self) {
        self.progress.add(self.unshown);
    }
}

async fn measure(
    args: &CatchupArgs,
    endpoint: &Endpoint,
    prefilled: &Prefilled,
    deadline: tokio::time::Instant,
) -> CatchupReport {
    let accounts: Rc<Vec<Account>> =
        Rc::new((0..args.viewers).map(|_| Account::default()).collect());
    let tls = Rc::new(Cell::new(None::<String>));
    let progress = Progress::new(
        u64::from(args.events) * args.viewers as u64,
        &format!("{} catching up", args.label),
    );
    let start_seq = prefilled
        .last_seq
        .saturating_sub(u64::from(args.events) - 1);
    let cpu_before = endpoint.pid.and_then(cpu_time);
    // Viewers that have finished, well or not, and a wake-up when all have.
    let ended = Rc::new((Cell::new(0usize), tokio::sync::Notify::new()));
    let start = Instant::now();
    let viewers: Vec<_> = (0..args.viewers)
        .map(|id| {
            let (endpoint, accounts, progress, tls, ended) = (
                endpoint.clone(),
                accounts.clone(),
                progress.clone(),
                tls.clone(),
                ended.clone(),
            );
            let total = args.viewers;
            let (events, size) = (args.events, args.size);
            tokio::task::spawn_local(async move {
                let result = async {
                    let mut stream = endpoint
                        .connector
                        .connect(endpoint.addr, Some(source_address(id)))
                        .await?;
                    if id == 0 {
                        tls.set(stream.tls_parameters());
                    }
                    let account = &accounts[id];
                    catch_up(
                        &mut stream,
                        endpoint.target,
                        id,
                        events,
                        size,
                        start_seq,
                        account,
                        &progress,
                    )
                    .await?;
                    account.done.set(Some(start.elapsed()));
                    Ok::<Stream, std::io::Error>(stream)
                };
                let result = result.await;
                if let Err(error) = &result {
                    eprintln!("catchup: viewer {id}: {error}");
                }
                ended.0.set(ended.0.get() + 1);
                if ended.0.get() == total {
                    ended.1.notify_one();
                }
                // Stay connected until every viewer is done: a close would cost the
                // server work that is not the catching up.
                std::future::pending::<()>().await;
                drop(result);
            })
        })
        .collect();
    if args.viewers > 0 {
        let _ = tokio::time::timeout_at(deadline, ended.1.notified()).await;
    }
    let cpu_after = endpoint.pid.and_then(cpu_time);
    progress.finish();
    for viewer in viewers {
        viewer.abort();
    }

    let expected = u64::from(args.events) * args.viewers as u64;
    let deliveries: u64 = accounts.iter().map(|a| a.received.get()).sum();
    let disordered: u64 = accounts.iter().map(|a| a.disordered.get()).sum();
    let lost_seen: u64 = accounts.iter().map(|a| a.lost.get()).sum();
    let mut times: Vec<Duration> = accounts.iter().filter_map(|a| a.done.get()).collect();
    times.sort();
    let complete = times.len() == args.viewers && deliveries == expected;
    let catchup_seconds = times.last().copied().unwrap_or_default().as_secs_f64();
    let median_viewer_seconds = times
        .get(times.len() / 2)
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    CatchupReport {
        workload: args.label.clone(),
        target: endpoint.target,
        transport: endpoint.transport(),
        tls: tls.take(),
        protocol: durable::catchup_protocol(endpoint.target),
        viewers: args.viewers,
        events: args.events,
        size: args.size,
        complete,
        expected_deliveries: expected,
        deliveries,
        lost: lost_seen + expected.saturating_sub(deliveries + lost_seen),
        duplicated_or_reordered: disordered,
        prefill_seconds: 0.0,
        catchup_seconds,
        median_viewer_seconds,
        deliveries_per_sec: if complete && catchup_seconds > 0.0 {
            deliveries as f64 / catchup_seconds
        } else {
            0.0
        },
        server_cpu_ms: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64() * 1e3),
            _ => None,
        },
    }
}

/// One viewer: asks for the last `events` and reads them all, checking each.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    stream: &mut Stream,
    target: Target,
    id: usize,
    events: u32,
    size: usize,
    start_seq: u64,
    account: &Account,
    progress: &Progress,
) -> std::io::Result<()> {
    let wanted = u64::from(events);
    match target {
        Target::Redis => {
            let mut out = BytesMut::new();
            let count = events.to_string();
            resp::command(
                &mut out,
                &[
                    b"XREVRANGE",
                    ROOM.as_bytes(),
                    b"+",
                    b"-",
                    b"COUNT",
                    count.as_bytes(),
                ],
            );
            stream.send(&out).await?;
            let mut order = Order {
                next: i64::from(events) - 1,
                step: -1,
                size,
                account,
                progress,
                unshown: 0,
            };
            let mut refused = None;
            read_replies(stream, |item| match item {
                Item::Bulk(bytes) => {
                    order.check(bytes);
                    false
                }
                Item::Error(error) => {
                    refused = Some(String::from_utf8_lossy(error).into_owned());
                    true
                }
                Item::Simple(_) => false,
                Item::End => true,
            })
            .await?;
            if let Some(error) = refused {
                return Err(std::io::Error::other(format!("Redis refused: {error}")));
            }
        }
        Target::Nats => {
            stream
                .send(durable::consumer_request(id, Some(start_seq.max(1))).as_bytes())
                .await?;
            let mut order = Order {
                next: 0,
                step: 1,
                size,
                account,
                progress,
                unshown: 0,
            };
            let mut seen = 0u64;
            let mut refused = None;
            read_lines(stream, |line| {
                if order.check(line.as_bytes()) {
                    seen += 1;
                } else if line.contains("\"error\"") {
                    refused = Some(line.to_owned());
                    return true;
                }
                seen >= wanted
            })
            .await?;
            if let Some(error) = refused {
                return Err(std::io::Error::other(format!("JetStream refused: {error}")));
            }
        }
        _ => {
            stream
                .send(format!("viewer history={events} tags\n").as_bytes())
                .await?;
            let mut order = Order {
                next: 0,
                step: 1,
                size,
                account,
                progress,
                unshown: 0,
            };
            // The seq of the welcome is the last event's; the E lines after it must
            // be the E events up to it.
            let mut expected_seq: Option<u64> = None;
            let mut seen = 0u64;
            let mut bad = None;
            read_lines(stream, |line| {
                let seq = tag_seq(line);
                let Some(next) = expected_seq else {
                    if line.starts_with('@') && line.contains(" Welcome") {
                        match seq {
                            Some(last) => expected_seq = Some((last + 1).saturating_sub(wanted)),
                            None => {
                                bad = Some(format!("a welcome without its seq: {line:?}"));
                                return true;
                            }
                        }
                    }
                    return false;
                };
                seen += 1;
                if seq == Some(next) {
                    order.check(line.as_bytes());
                } else {
                    // Not the event expected here: out of order, or not ours.
                    account.disordered.set(account.disordered.get() + 1);
                }
                expected_seq = Some(next + 1);
                seen >= wanted
            })
            .await?;
            if let Some(bad) = bad {
                return Err(std::io::Error::other(bad));
            }
        }
    }
    Ok(())
}

/// The `seq` tag of a tagged tcpchat line (`@seq=12;time=... text`).
fn tag_seq(line: &str) -> Option<u64> {
    let tags = line.strip_prefix('@')?.split(' ').next()?;
    tags.split(';')
        .find_map(|tag| tag.strip_prefix("seq="))?
        .parse()
        .ok()
}

/// What `write_all` and `flush` are to a half of a split stream.
trait WriteAllFlushed {
    async fn write_all_flushed(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl<W: tokio::io::AsyncWrite + Unpin> WriteAllFlushed for W {
    async fn write_all_flushed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_acknowledgements() {
        assert_eq!(
            tag_seq("@seq=12;time=2026-11-29T05:41:07.123Z alice: hello"),
            Some(12)
        );
        assert_eq!(
            tag_seq("@time=x;seq=7 Welcome to the \"a\" Chat Server!"),
            Some(7)
        );
        assert_eq!(tag_seq("alice: hello"), None);
        assert_eq!(ack_seq("{\"stream\":\"bench\", \"seq\":1234}"), Some(1234));
        assert_eq!(
            ack_seq("{\"stream\":\"bench\",\"seq\":5,\"duplicate\":true}"),
            Some(5)
        );
        assert_eq!(ack_seq("PONG"), None);
    }

    #[test]
    fn payloads_are_checked_in_either_direction() {
        let progress = Progress::new(0, "test");
        let line = |seq: u32| {
            let mut out = BytesMut::new();
            Payload {
                sender: 0,
                seq,
                sent_ns: 1,
            }
            .encode(64, &mut out);
            format!("@seq={seq} b0: {}", String::from_utf8_lossy(&out))
        };
        let account = Account::default();
        let mut up = Order {
            next: 0,
            step: 1,
            size: 64,
            account: &account,
            progress: &progress,
            unshown: 0,
        };
        for seq in [0, 1, 3, 2, 4] {
            assert!(up.check(line(seq).as_bytes()));
        }
        assert!(!up.check(b"b0 has joined the chat"));
        assert_eq!(
            (
                account.received.get(),
                account.lost.get(),
                account.disordered.get()
            ),
            (4, 1, 1)
        );
        let account = Account::default();
        let mut down = Order {
            next: 9,
            step: -1,
            size: 64,
            account: &account,
            progress: &progress,
            unshown: 0,
        };
        for seq in (0..10).rev() {
            assert!(down.check(line(seq).as_bytes()));
        }
        assert_eq!(
            (
                account.received.get(),
                account.lost.get(),
                account.disordered.get()
            ),
            (10, 0, 0)
        );
    }
}
