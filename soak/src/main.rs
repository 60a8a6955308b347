//! `tcpchat-soak`: many clients misbehaving at once against a real server process,
//! checked continuously, bounded in time.
//!
//! It treats the server as a black box: it starts `tcpchat serve` as a child (through
//! the shared harness), speaks the wire, and reads the process's file descriptors and
//! memory from /proc. It connects steady viewers (line and seed mode)
//! that stay for the whole run, then keeps `--clients` churning clients busy until
//! `--duration` is over: messengers in both modes that send and leave (FIN) or reset,
//! chatters, viewers that come and go, viewers that stall, handshakes left half done,
//! garbage, name collisions and immediate rejoins.
//!
//! Every message is a token `SESSION.N` (sometimes padded after a `~`). The steady viewers check, as each line
//! arrives, that every token comes exactly once, in its session's order, under that
//! session's name. At the end: sessions that closed with FIN must be complete and
//! reset ones a prefix of what they sent; all steady viewers must have seen the
//! same history; and once the clients are gone, the server's open file descriptors
//! must be back to their baseline and its memory within a quarter (or 4 MiB) of it. Last, the server is stopped
//! with SIGTERM under full load, and must exit 0 with every viewer's history intact.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use harness::{ServerProcess, Signal, Spec};

/// Many misbehaving clients against a tcpchat server process, every message checked.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tcpchat-soak", version)]
struct SoakArgs {
    /// The `tcpchat` binary to soak (default: the one beside this program).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// How long clients keep coming and going.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Churning clients at any moment.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seed for the random choices (printed, so that a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the final report, as JSON, to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// The server's handshake timeout during a soak: short, so that clients left half
/// way through a handshake are cleared within the run.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The server's seed grace (its default): seed messengers wait it out before typing.
const SEED_GRACE: Duration = Duration::from_millis(250);
/// Any single wait of a soak client.
const WAIT: Duration = Duration::from_secs(15);
/// Messages the final blast may have sent ahead of the slowest steady viewer.
const BLAST_WINDOW: u64 = 20_000;
/// Longest line the soak accepts from the server.
const MAX_LINE: usize = 1 << 16;
/// Steady line-mode viewers (plus one seed-mode viewer).
const STEADY_LINE_VIEWERS: usize = 3;

fn main() -> std::process::ExitCode {
    let args = <SoakArgs as clap::Parser>::parse();
    // Each soak client is a file descriptor or more.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcpchat-soak: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the soak and prints its report. Fails if any check failed.
///
/// # Errors
/// When the server cannot be started, or when the soak found a fault.
async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!(
        "soak: {} with {} churning clients, seed {seed}",
        humantime::format_duration(args.duration),
        args.clients
    );
    let server = start_server(args.server_bin.clone())?;
    let ledger = Arc::new(Ledger::default());
    let started = Instant::now();

    // Steady viewers first, so they all see the same history from its start.
    let mut steady = Vec::new();
    for _ in 0..STEADY_LINE_VIEWERS {
        steady.push(SteadyViewer::start(server.addr(), ledger.clone()).await?);
    }
    let seed_viewer = SeedViewer::start(server.addr()).await?;
    // The server keeps a bounded backlog of recent chat for its viewers: fill it
    // before measuring, so the baseline is the server's steady state.
    let connected = Usage::of(server.pid())?;
    warm_up(server.addr(), &ledger).await?;
    let baseline = wait_for_baseline(server.pid(), connected.fds).await?;
    println!(
        "soak: baseline with {} steady viewers, after warm-up: {} fds, {} KiB RSS",
        STEADY_LINE_VIEWERS + 1,
        baseline.fds,
        baseline.rss_kib
    );

    // Churn.
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut churners = Vec::new();
    for slot in 0..args.clients {
        let ledger = ledger.clone();
        let addr = server.addr();
        let rng = fastrand::Rng::with_seed(seed.wrapping_add(slot as u64));
        churners.push(tokio::spawn(churn(addr, ledger, rng, deadline)));
    }
    let mut peak_rss_kib = baseline.rss_kib;
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = ticker.tick() => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
        let usage = Usage::of(server.pid())?;
        peak_rss_kib = peak_rss_kib.max(usage.rss_kib);
        println!(
            "soak: {:>5.0} s  sessions {:>6}  sent {:>8}  received {:>8}  faults {}  fds {}  rss {} KiB",
            started.elapsed().as_secs_f64(),
            ledger.next_session.load(Ordering::Relaxed),
            ledger.sent.load(Ordering::Relaxed),
            steady[0].lines.load(Ordering::Relaxed),
            ledger.fault_count.load(Ordering::Relaxed),
            usage.fds,
            usage.rss_kib
        );
    }
    for churner in churners {
        match tokio::time::timeout(WAIT * 2, churner).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ledger.fault(format!("a client task failed: {e}")),
            Err(_) => ledger.fault("a client did not finish in time".to_owned()),
        }
    }

    // Quiet again: the server must give back every descriptor.
    let settled = wait_for_baseline(server.pid(), baseline.fds).await?;
    if settled.fds != baseline.fds {
        ledger.fault(format!(
            "open fds did not return to the baseline: {} now, {} before",
            settled.fds, baseline.fds
        ));
    }
    // Memory: allocator caches and tables sized for the busiest moment may stay,
    // but nothing may grow with the traffic the run has seen.
    let allowance = (baseline.rss_kib / 4).max(4 * 1024);
    if settled.rss_kib > baseline.rss_kib + allowance {
        ledger.fault(format!(
            "RSS did not return near the baseline: {} KiB now, {} KiB before",
            settled.rss_kib, baseline.rss_kib
        ));
    }
    let (ended_complete, ended_reset) = check_completeness(&server, &steady, &ledger).await?;

    // Last: stop the server under full load.
    let exit_code = shutdown_under_load(server, &ledger, &steady).await?;
    let mut histories = Vec::new();
    for viewer in steady {
        histories.push(viewer.finish(&ledger).await);
    }
    let seed_history = seed_viewer.finish().await;
    if histories.windows(2).any(|w| w[0] != w[1]) {
        ledger.fault("the steady line viewers saw different histories".to_owned());
    }
    if let Some(first) = histories.first()
        && Some(first.seed_hash) != seed_history
    {
        ledger.fault("the seed viewer's history differs from the line viewers'".to_owned());
    }
    if exit_code != Some(0) {
        ledger.fault(format!("the server exited with {exit_code:?} on SIGTERM"));
    }

    let report = Report {
        seed,
        seconds: started.elapsed().as_secs_f64(),
        churning_clients: args.clients,
        sessions: ledger.next_session.load(Ordering::Relaxed),
        sessions_closed: ended_complete,
        sessions_reset: ended_reset,
        messages_sent: ledger.sent.load(Ordering::Relaxed),
        lines_seen_per_steady_viewer: histories.first().map_or(0, |h| h.lines),
        kinds: ledger
            .kinds
            .lock()
            .map(|k| k.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default(),
        baseline_fds: baseline.fds,
        settled_fds: settled.fds,
        baseline_rss_kib: baseline.rss_kib,
        peak_rss_kib,
        settled_rss_kib: settled.rss_kib,
        server_exit_code: exit_code,
        faults: ledger.fault_count.load(Ordering::Relaxed),
        first_faults: ledger.faults.lock().map(|f| f.clone()).unwrap_or_default(),
    };
    report.print();
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{}\n", report.to_json()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.faults > 0 {
        bail!("the soak found {} fault(s)", report.faults);
    }
    Ok(())
}

/// Everything the soak knows about the sessions, shared by all its tasks.
#[derive(Debug, Default)]
struct Ledger {
    next_session: AtomicU64,
    /// Rejoiners drawn so far: each rejoiner's name is its own number, taken with
    /// one atomic step (two rejoiners starting at once on two worker threads once
    /// read the same session count and chose the same name).
    next_rejoiner: AtomicU64,
    sent: AtomicU64,
    sessions: RwLock<HashMap<u64, SessionRecord>>,
    /// Names held right now by one-off sessions (targets for name collisions).
    held: Mutex<HashMap<u64, String>>,
    fault_count: AtomicU64,
    faults: Mutex<Vec<String>>,
    kinds: Mutex<HashMap<&'static str, u64>>,
}

#[derive(Debug, Clone)]
struct SessionRecord {
    name: String,
    sent: u64,
    ending: Ending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Open,
    /// Closed with FIN: everything sent must arrive.
    Fin,
    /// Closed with a reset: what arrives must be a prefix of what was sent.
    Reset,
}

impl Ledger {
    fn fault(&self, what: String) {
        self.fault_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut faults) = self.faults.lock()
            && faults.len() < 20
        {
            eprintln!("soak: FAULT: {what}");
            faults.push(what);
        }
    }

    fn count(&self, kind: &'static str) {
        if let Ok(mut kinds) = self.kinds.lock() {
            *kinds.entry(kind).or_default() += 1;
        }
    }

    /// A new session under `name` (or a fresh name).
    fn open(&self, name: Option<String>) -> (u64, String) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let name = name.unwrap_or_else(|| format!("c{id}"));
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.insert(
                id,
                SessionRecord {
                    name: name.clone(),
                    sent: 0,
                    ending: Ending::Open,
                },
            );
        }
        (id, name)
    }

    /// Records `count` more messages from `session`, before they are written.
    fn sending(&self, session: u64, count: u64) {
        self.sent.fetch_add(count, Ordering::Relaxed);
        if let Ok(mut sessions) = self.sessions.write()
            && let Some(record) = sessions.get_mut(&session)
        {
            record.sent += count;
        }
    }

    /// The server has accepted `session`'s name.
    fn joined(&self, session: u64) {
        // Rejoiners' names are left alone: they must find them free again.
        if let Some(name) = self.name_of(session).filter(|n| n.starts_with('c'))
            && let Ok(mut held) = self.held.lock()
        {
            held.insert(session, name);
        }
    }

    fn end(&self, session: u64, ending: Ending) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&session);
        }
        if let Ok(mut sessions) = self.sessions.write()
            && let Some(record) = sessions.get_mut(&session)
        {
            record.ending = ending;
        }
    }

    fn name_of(&self, session: u64) -> Option<String> {
        self.sessions
            .read()
            .ok()?
            .get(&session)
            .map(|r| r.name.clone())
    }

    /// The name of some one-off session that holds its name right now.
    /// A name some session holds now, for a client that must be refused it. Not a
    /// rejoiner's (`r...`): between two of its sessions the name is free, a collision
    /// that came just then would take it (as it may), and the rejoiner, which checks
    /// that its name is free at once, would count that as a fault of the server.
    fn some_held_name(&self, rng: &mut fastrand::Rng) -> Option<String> {
        let held = self.held.lock().ok()?;
        let names: Vec<&String> = held
            .values()
            .filter(|name| !name.starts_with('r'))
            .collect();
        let skip = rng.usize(..names.len().max(1));
        names.get(skip).map(|name| (*name).clone())
    }
}

/// A line-mode connection of the soak.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    lines: std::collections::VecDeque<String>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            lines: Default::default(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::other("write timed out"))?
    }

    /// The next line, or `None` when the server closed the connection.
    async fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Some(line));
            }
            if let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') {
                let chunk = self.buf.split_to(end + 1);
                let text = String::from_utf8_lossy(&chunk);
                self.lines.extend(text.lines().map(str::to_owned));
                continue;
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::other("the server sent an endless line"));
            }
            self.buf.reserve(16 * 1024);
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::other("read timed out"))??;
            if read == 0 {
                return Ok(None);
            }
        }
    }

    /// FIN, then waits for the server to close its side (it does once it has
    /// handled everything we sent).
    async fn close(mut self) -> std::io::Result<()> {
        self.stream.shutdown().await?;
        while self.line().await?.is_some() {}
        Ok(())
    }

    fn reset(self) {
        if let Ok(std) = self.stream.into_std() {
            let _ = socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO));
        }
    }
}

/// One churning slot: picks a behaviour, runs it, again, until the deadline.
async fn churn(
    addr: SocketAddr,
    ledger: Arc<Ledger>,
    mut rng: fastrand::Rng,
    deadline: tokio::time::Instant,
) {
    while tokio::time::Instant::now() < deadline {
        let roll = rng.u32(..100);
        let result = match roll {
            0..30 => line_messenger(addr, &ledger, &mut rng, None, true).await,
            30..45 => seed_messenger(addr, &ledger, &mut rng).await,
            45..55 => chatter(addr, &ledger, &mut rng).await,
            55..65 => passing_viewer(addr, &ledger, &mut rng).await,
            65..72 => stalled_viewer(addr, &ledger, &mut rng).await,
            72..80 => half_handshake(addr, &ledger, &mut rng).await,
            80..87 => garbage(addr, &ledger, &mut rng).await,
            87..93 => name_collision(addr, &ledger, &mut rng).await,
            _ => rejoiner(addr, &ledger, &mut rng).await,
        };
        if let Err(e) = result {
            ledger.fault(format!("client error: {e:#}"));
        }
    }
}

async fn pause(rng: &mut fastrand::Rng, max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=max_ms))).await;
}

/// Joins in line mode, sends numbered messages in random batches, leaves with FIN
/// or a reset. Returns the session's name.
async fn line_messenger(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
    name: Option<String>,
    may_reset: bool,
) -> anyhow::Result<()> {
    ledger.count("line messenger");
    let (session, name) = ledger.open(name);
    let mut conn = Conn::connect(addr).await?;
    conn.send(format!("name:{name}\n").as_bytes()).await?;
    let ack = conn.line().await?;
    if ack.as_deref() != Some(&format!("*** ok: joined as {name}")) {
        ledger.end(session, Ending::Fin);
        if ack
            .as_deref()
            .is_some_and(|a| a.starts_with("*** error name-taken"))
        {
            bail!("the name {name} of a finished session was not free: {ack:?}");
        }
        bail!("line messenger {name} not accepted: {ack:?}");
    }
    ledger.joined(session);
    let total = rng.u64(1..=60);
    let mut n = 0;
    while n < total {
        let batch = rng.u64(1..=6).min(total - n);
        let mut text = String::new();
        for _ in 0..batch {
            n += 1;
            text.push_str(&format!("{session}.{n}\n"));
        }
        ledger.sending(session, batch);
        conn.send(text.as_bytes()).await?;
        pause(rng, 15).await;
    }
    if may_reset && rng.u32(..4) == 0 {
        ledger.count("reset");
        ledger.end(session, Ending::Reset);
        conn.reset();
    } else {
        conn.close().await?;
        ledger.end(session, Ending::Fin);
    }
    Ok(())
}

/// The original Messenger's way: `name:NAME` in one write, a person's pause, then
/// one write per message with no terminator (a `|` keeps merged reads apart).
async fn seed_messenger(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("seed messenger");
    let (session, name) = ledger.open(None);
    let mut conn = Conn::connect(addr).await?;
    conn.send(format!("name:{name}").as_bytes()).await?;
    tokio::time::sleep(SEED_GRACE + Duration::from_millis(50)).await;
    ledger.joined(session);
    let total = rng.u64(1..=30);
    for n in 1..=total {
        ledger.sending(session, 1);
        conn.send(format!("{session}.{n}|").as_bytes()).await?;
        pause(rng, 20).await;
    }
    if rng.u32(..4) == 0 {
        ledger.count("reset");
        ledger.end(session, Ending::Reset);
        conn.reset();
    } else {
        conn.close().await?;
        ledger.end(session, Ending::Fin);
    }
    Ok(())
}

/// A chatter: sends like a messenger and checks its own view of the room.
async fn chatter(addr: SocketAddr, ledger: &Ledger, rng: &mut fastrand::Rng) -> anyhow::Result<()> {
    ledger.count("chatter");
    let (session, name) = ledger.open(None);
    let conn = Conn::connect(addr).await?;
    let (read, mut write) = conn.stream.into_split();
    write.write_all(format!("chat:{name}\n").as_bytes()).await?;
    let mut reader = BufReader::new(read);
    let mut first = String::new();
    reader.read_line(&mut first).await?;
    if !first.starts_with("Welcome") {
        ledger.end(session, Ending::Fin);
        bail!("chatter {name} not welcomed: {first:?}");
    }
    let reading = tokio::spawn(async move {
        let mut own = 0;
        let mut line = String::new();
        let own_prefix = format!("{name}: ");
        while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
            if line.starts_with(&own_prefix) {
                own += 1;
            }
            line.clear();
        }
        own
    });
    let total = rng.u64(1..=20);
    for n in 1..=total {
        ledger.sending(session, 1);
        write
            .write_all(format!("{session}.{n}\n").as_bytes())
            .await?;
        pause(rng, 30).await;
    }
    write.shutdown().await?;
    let own = tokio::time::timeout(WAIT, reading).await??;
    ledger.end(session, Ending::Fin);
    if own != total {
        bail!("chatter session {session} saw {own} of its own {total} lines");
    }
    Ok(())
}

/// A viewer that comes, watches (checking order) and goes.
async fn passing_viewer(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("passing viewer");
    let mut conn = Conn::connect(addr).await?;
    conn.send(b"viewer\n").await?;
    let mut checker = Checker::default();
    let stay = Duration::from_millis(rng.u64(50..=1500));
    let until = tokio::time::Instant::now() + stay;
    while let Ok(line) = tokio::time::timeout_at(until, conn.line()).await {
        let Some(line) = line? else {
            bail!("a passing viewer was closed by the server");
        };
        if !line.starts_with("Welcome") {
            checker.check(&line, ledger, false);
        }
    }
    if rng.bool() {
        conn.reset();
    } else {
        drop(conn);
    }
    Ok(())
}

/// A viewer that takes its welcome and then never reads again.
async fn stalled_viewer(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("stalled viewer");
    let mut conn = Conn::connect(addr).await?;
    conn.send(b"viewer\n").await?;
    conn.line().await?;
    pause(rng, 3000).await;
    conn.reset();
    Ok(())
}

/// Starts a handshake and stops: either gives up, or waits to be told off.
async fn half_handshake(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("half handshake");
    let mut conn = Conn::connect(addr).await?;
    let partial: &[u8] = [&b"vie"[..], b"name", b"chat:", b"viewer "][rng.usize(..4)];
    conn.send(partial).await?;
    if rng.bool() {
        pause(rng, 500).await;
        drop(conn);
        return Ok(());
    }
    let asked = Instant::now();
    let answer = conn.line().await?;
    let waited = asked.elapsed();
    if answer.as_deref() != Some("*** error handshake-timeout: no handshake received in time") {
        bail!("a half handshake got {answer:?}");
    }
    if waited > HANDSHAKE_TIMEOUT + Duration::from_secs(2) {
        bail!("a half handshake was cut after {waited:?}");
    }
    if conn.line().await?.is_some() {
        bail!("more after the handshake timeout notice");
    }
    Ok(())
}

/// Random bytes: must be refused (one error line at most) and closed.
async fn garbage(addr: SocketAddr, ledger: &Ledger, rng: &mut fastrand::Rng) -> anyhow::Result<()> {
    ledger.count("garbage");
    let mut conn = Conn::connect(addr).await?;
    let mut junk: Vec<u8> = (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect();
    if rng.bool() {
        junk.push(b'\n');
    }
    // Never start like a real handshake.
    junk[0] = b'#';
    conn.send(&junk).await?;
    let mut lines = 0;
    while let Some(line) = conn.line().await? {
        lines += 1;
        if lines > 1 || !line.starts_with("*** error ") {
            bail!("garbage was answered with {line:?}");
        }
    }
    Ok(())
}

/// Tries a name someone holds: must be refused (or, if its holder just left,
/// accepted).
async fn name_collision(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("name collision");
    let Some(name) = ledger.some_held_name(rng) else {
        return Ok(());
    };
    let mut conn = Conn::connect(addr).await?;
    conn.send(format!("name:{name}\n").as_bytes()).await?;
    match conn.line().await? {
        Some(line) if line.starts_with("*** error name-taken") => {}
        Some(line) if line.starts_with("*** ok") => {
            // The holder had just left; we are now a messenger that says nothing.
            let (session, _) = ledger.open(Some(name));
            conn.close().await?;
            ledger.end(session, Ending::Fin);
        }
        other => bail!("a name collision got {other:?}"),
    }
    Ok(())
}

/// Leaves, then comes back at once under the same name: it must be free.
async fn rejoiner(
    addr: SocketAddr,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    ledger.count("rejoiner");
    let name = format!("r{}", ledger.next_rejoiner.fetch_add(1, Ordering::Relaxed));
    // With FIN each time: the server closes its side only once the leave is done.
    for round in 1..=3 {
        line_messenger(addr, ledger, rng, Some(name.clone()), false)
            .await
            .with_context(|| format!("rejoiner {name}, session {round} of 3"))?;
    }
    Ok(())
}

/// What a steady viewer checks, line by line.
#[derive(Debug, Default)]
struct Checker {
    /// Last token number seen per session.
    last: HashMap<u64, u64>,
    /// Each session's name, once looked up (it never changes).
    names: HashMap<u64, String>,
    hash: Fnv,
    seed_hash: Fnv,
    lines: u64,
}

impl Checker {
    fn check(&mut self, line: &str, ledger: &Ledger, steady: bool) {
        self.lines += 1;
        self.hash.add(line.as_bytes());
        self.hash.add(b"\n");
        self.seed_hash.add(line.as_bytes());
        if line.starts_with("*** ") {
            ledger.fault(format!("a viewer got a notice: {line:?}"));
            return;
        }
        if line.ends_with(" has joined the chat.") || line.ends_with(" has left the chat") {
            return;
        }
        let Some((name, text)) = line.split_once(": ") else {
            ledger.fault(format!("unexpected line {line:?}"));
            return;
        };
        if name == MARKER {
            return;
        }
        for token in text.split('|').filter(|t| !t.is_empty()) {
            // `SESSION.N`, optionally followed by `~` and padding.
            let token = token.split('~').next().unwrap_or(token);
            let parsed = token
                .split_once('.')
                .and_then(|(s, n)| Some((s.parse::<u64>().ok()?, n.parse::<u64>().ok()?)));
            let Some((session, n)) = parsed else {
                ledger.fault(format!("unparseable message {line:?}"));
                continue;
            };
            let owner = match self.names.get(&session) {
                Some(owner) => Some(owner.as_str()),
                None => ledger
                    .name_of(session)
                    .map(|owner| &**self.names.entry(session).or_insert(owner)),
            };
            if owner != Some(name) {
                ledger.fault(format!(
                    "{token} of session {session} ({owner:?}) shown as from {name}"
                ));
            }
            let last = self.last.entry(session).or_insert(0);
            // A viewer that joined late may start in the middle of a session.
            let expected = if *last == 0 && !steady { n } else { *last + 1 };
            if n != expected {
                ledger.fault(format!(
                    "session {session}: message {n} after {last} (lost, duplicated or reordered)"
                ));
            }
            *last = n;
        }
    }
}

/// The name of the messenger whose line ends the churn phase.
const MARKER: &str = "soak-end";

/// FNV-1a, to compare long histories without keeping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What a steady viewer saw, to compare with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct History {
    lines: u64,
    hash: u64,
    seed_hash: u64,
}

struct SteadyViewer {
    lines: Arc<AtomicU64>,
    marker: watch::Receiver<bool>,
    last: Arc<Mutex<HashMap<u64, u64>>>,
    task: tokio::task::JoinHandle<Checker>,
}

impl SteadyViewer {
    async fn start(addr: SocketAddr, ledger: Arc<Ledger>) -> anyhow::Result<Self> {
        let mut conn = Conn::connect(addr).await?;
        conn.send(b"viewer\n").await?;
        match conn.line().await? {
            Some(line) if line.starts_with("Welcome") => {}
            other => bail!("a steady viewer was not welcomed: {other:?}"),
        }
        let lines = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(HashMap::new()));
        let (seen, marker) = watch::channel(false);
        let counter = lines.clone();
        let shared_last = last.clone();
        let task = tokio::spawn(async move {
            let mut checker = Checker::default();
            loop {
                match conn.line().await {
                    Ok(Some(line)) => {
                        checker.check(&line, &ledger, true);
                        counter.store(checker.lines, Ordering::Relaxed);
                        if line.starts_with(MARKER) {
                            if let Ok(mut last) = shared_last.lock() {
                                last.clone_from(&checker.last);
                            }
                            let _ = seen.send(true);
                        }
                    }
                    Ok(None) => break,
                    // Reads time out only if the server is silent for a long time,
                    // which the soak never is until its end.
                    Err(e) => {
                        ledger.fault(format!("a steady viewer failed: {e}"));
                        break;
                    }
                }
            }
            checker
        });
        Ok(Self {
            lines,
            marker,
            last,
            task,
        })
    }

    async fn finish(self, ledger: &Ledger) -> History {
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(checker)) => History {
                lines: checker.lines,
                hash: checker.hash.0,
                seed_hash: checker.seed_hash.0,
            },
            _ => {
                ledger.fault("a steady viewer did not see the end".to_owned());
                History {
                    lines: 0,
                    hash: 0,
                    seed_hash: 0,
                }
            }
        }
    }
}

/// A seed-mode viewer that stays all along; its raw stream is hashed.
struct SeedViewer {
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl SeedViewer {
    async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"viewer").await?;
        let welcome = b"Welcome to the \"Bad IRC\" Chat Server!";
        let mut got = vec![0; welcome.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut got)).await??;
        if got != welcome {
            bail!("the seed viewer was not welcomed");
        }
        let task = tokio::spawn(async move {
            let mut hash = Fnv::default();
            let mut buf = vec![0; 64 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return Some(hash.0),
                    Ok(n) => hash.add(&buf[..n]),
                    Err(_) => return None,
                }
            }
        });
        Ok(Self { task })
    }

    async fn finish(self) -> Option<u64> {
        tokio::time::timeout(WAIT, self.task).await.ok()?.ok()?
    }
}

/// After the churn: a marker line shows every steady viewer has everything; then
/// every session must be complete (FIN) or a prefix (reset).
async fn check_completeness(
    server: &ServerProcess,
    steady: &[SteadyViewer],
    ledger: &Ledger,
) -> anyhow::Result<(u64, u64)> {
    let mut marker = Conn::connect(server.addr()).await?;
    marker
        .send(format!("name:{MARKER}\nend\n").as_bytes())
        .await?;
    for viewer in steady {
        let mut seen = viewer.marker.clone();
        if tokio::time::timeout(WAIT, seen.wait_for(|seen| *seen))
            .await
            .is_err()
        {
            ledger.fault("a steady viewer never saw the end marker".to_owned());
        }
    }
    let sessions = ledger
        .sessions
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    let (mut complete, mut reset) = (0, 0);
    for viewer in steady {
        let last = viewer.last.lock().map(|l| l.clone()).unwrap_or_default();
        for (id, record) in &sessions {
            let received = last.get(id).copied().unwrap_or(0);
            match record.ending {
                Ending::Fin if received != record.sent => ledger.fault(format!(
                    "session {id} ({}) closed after sending {} but {received} arrived",
                    record.name, record.sent
                )),
                Ending::Reset if received > record.sent => ledger.fault(format!(
                    "session {id} sent {} but {received} arrived",
                    record.sent
                )),
                Ending::Open => {
                    ledger.fault(format!("session {id} never ended"));
                }
                _ => {}
            }
        }
    }
    for record in sessions.values() {
        match record.ending {
            Ending::Fin => complete += 1,
            Ending::Reset => reset += 1,
            Ending::Open => {}
        }
    }
    drop(marker);
    Ok((complete, reset))
}

/// Floods the room from several senders, then SIGTERM: the server must exit 0.
async fn shutdown_under_load(
    mut server: ServerProcess,
    ledger: &Arc<Ledger>,
    steady: &[SteadyViewer],
) -> anyhow::Result<Option<i32>> {
    let stop = Arc::new(AtomicBool::new(false));
    // Full load, but no more than the steady viewers can take: past that they would
    // rightly be dropped as too slow, which is another test's business.
    let seen: Vec<Arc<AtomicU64>> = steady.iter().map(|v| v.lines.clone()).collect();
    let slowest = move || {
        seen.iter()
            .map(|l| l.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    let sent_before = ledger.sent.load(Ordering::Relaxed);
    let seen_before = slowest();
    let slowest = Arc::new(slowest);
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (session, name) = ledger.open(None);
        let mut conn = Conn::connect(server.addr()).await?;
        conn.send(format!("name:{name}\n").as_bytes()).await?;
        conn.line().await?;
        let stop = stop.clone();
        let ledger = ledger.clone();
        let slowest = slowest.clone();
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let in_flight = (ledger.sent.load(Ordering::Relaxed) - sent_before)
                    .saturating_sub(slowest() - seen_before);
                if in_flight > BLAST_WINDOW {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let mut batch = String::new();
                for _ in 0..50 {
                    n += 1;
                    batch.push_str(&format!("{session}.{n}\n"));
                }
                ledger.sending(session, 50);
                if conn.send(batch.as_bytes()).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            ledger.end(session, Ending::Reset);
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.signal(Signal::SIGTERM)?;
    let status = tokio::task::spawn_blocking(move || server.wait_exit(WAIT)).await??;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = tokio::time::timeout(WAIT, sender).await;
    }
    match status {
        Some(status) => Ok(status.code()),
        None => {
            ledger.fault("the server did not exit within 15 s of SIGTERM".to_owned());
            Ok(None)
        }
    }
}

/// Sends a few megabytes through the room (more than the server's backlog holds),
/// then leaves.
async fn warm_up(addr: SocketAddr, ledger: &Ledger) -> anyhow::Result<()> {
    let (session, name) = ledger.open(None);
    let mut conn = Conn::connect(addr).await?;
    conn.send(format!("name:{name}\n").as_bytes()).await?;
    conn.line().await?;
    ledger.joined(session);
    let padding = "w".repeat(200);
    let mut n = 0;
    for _ in 0..200 {
        let mut batch = String::new();
        for _ in 0..100 {
            n += 1;
            batch.push_str(&format!("{session}.{n}~{padding}\n"));
        }
        ledger.sending(session, 100);
        conn.send(batch.as_bytes()).await?;
    }
    conn.close().await?;
    ledger.end(session, Ending::Fin);
    Ok(())
}

/// Polls the server's descriptors until they are back to `fds` (connections that
/// linger to deliver a last notice may take a few seconds).
async fn wait_for_baseline(pid: u32, fds: usize) -> anyhow::Result<Usage> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let usage = Usage::of(pid)?;
        if usage.fds <= fds || Instant::now() > until {
            return Ok(usage);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A process's open descriptors and resident memory, from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
}

impl Usage {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .context("cannot read the server's descriptors")?
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("cannot read the server's status")?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Ok(Self { fds, rss_kib })
    }
}

/// `tcpchat serve` as a child process on an ephemeral loopback port, with a short
/// handshake timeout so that clients left half way through a handshake are cleared
/// within the run.
fn start_server(binary: Option<PathBuf>) -> anyhow::Result<ServerProcess> {
    let binary = match binary {
        Some(binary) => binary,
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("tcpchat"),
    };
    let server = Spec::tcpchat(&binary)
        .args(["--handshake-timeout", "2s"])
        .start()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(server)
}

/// The outcome of a soak.
#[derive(Debug, serde::Serialize)]
struct Report {
    seed: u64,
    seconds: f64,
    churning_clients: usize,
    sessions: u64,
    sessions_closed: u64,
    sessions_reset: u64,
    messages_sent: u64,
    lines_seen_per_steady_viewer: u64,
    kinds: std::collections::BTreeMap<&'static str, u64>,
    baseline_fds: usize,
    settled_fds: usize,
    baseline_rss_kib: u64,
    peak_rss_kib: u64,
    settled_rss_kib: u64,
    server_exit_code: Option<i32>,
    faults: u64,
    first_faults: Vec<String>,
}

impl Report {
    fn print(&self) {
        println!("soak: done in {:.0} s (seed {})", self.seconds, self.seed);
        println!(
            "  sessions: {} ({} closed with FIN, {} reset); messages sent: {}",
            self.sessions, self.sessions_closed, self.sessions_reset, self.messages_sent
        );
        println!("  client behaviours: {:?}", self.kinds);
        println!(
            "  each steady viewer saw {} lines; histories identical: {}",
            self.lines_seen_per_steady_viewer,
            !self.first_faults.iter().any(|f| f.contains("histor"))
        );
        println!(
            "  server fds: {} at baseline, {} after the churn",
            self.baseline_fds, self.settled_fds
        );
        println!(
            "  server RSS: {} KiB at baseline, {} KiB peak, {} KiB after the churn",
            self.baseline_rss_kib, self.peak_rss_kib, self.settled_rss_kib
        );
        println!(
            "  server exit code on SIGTERM under load: {:?}",
            self.server_exit_code
        );
        println!("  faults: {}", self.faults);
        for fault in &self.first_faults {
            println!("    {fault}");
        }
        println!("{}", self.to_json());
    }

    fn to_json(&self) -> String {
        serde_json::json!({ "soak": self }).to_string()
    }
}
