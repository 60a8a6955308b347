//! The log survives `kill -9`: the built server, under continuous traffic, is
//! killed with SIGKILL at random moments and restarted on the same data directory.
//! Viewers that resume from the last number they saw must find one unbroken run of
//! events, and every event any of them saw must be in the log, unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{ServerProcess, Signal, Spec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Kills and restarts.
const ROUNDS: usize = 6;

/// What one viewer saw: seq -> the whole tagged line.
type Seen = BTreeMap<u64, String>;

fn start(data: &std::path::Path) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--data-dir")
        .arg(data)
        .start()
        .expect("the server starts on its data directory")
}

/// A small deterministic generator, seeded and printed, so a failing run can be
/// repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seq_of(line: &str) -> u64 {
    line.strip_prefix("@seq=")
        .and_then(|rest| rest.split([';', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tagged line: {line:?}"))
}

/// Connects as a tagged viewer resuming after `since`, and reads until the server
/// goes away; returns what it saw after the welcome.
async fn view(
    addr: SocketAddr,
    since: u64,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("viewer tags since={since}\n").as_bytes())
        .await
        .expect("handshake");
    let mut lines = BufReader::new(stream).lines();
    let welcome = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("a welcome in time")
        .expect("a welcome")
        .expect("a welcome line");
    assert!(welcome.starts_with("@seq="), "{welcome}");
    let _ = ready.send(());
    let mut seen = Vec::new();
    // Bounded: the server is killed within a second of the viewers being ready.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        seen.push(line);
    }
    seen
}

/// Posts numbered lines with ids as `name` until the connection fails.
async fn talk(addr: SocketAddr, name: String, first: u64) -> u64 {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return first;
    };
    if stream
        .write_all(format!("name:{name} tags\n").as_bytes())
        .await
        .is_err()
    {
        return first;
    }
    let mut n = first;
    // Bounded by the kill, and by count in case the kill never comes.
    while n < first + 200_000 {
        let line = format!("@id={name}-{n} {name} says {n}\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        n += 1;
        if n.is_multiple_of(64) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_the_log_keeps_everything_anyone_saw() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let data = tempfile::tempdir().unwrap();
    let mut seen: [Seen; 2] = Default::default();
    let mut next_post = [0u64; 2];
    for round in 0..ROUNDS {
        let mut server = start(data.path());
        let addr = server.addr();
        let mut viewers: Vec<JoinHandle<Vec<String>>> = Vec::new();
        let mut ready = Vec::new();
        for viewer in &seen {
            let since = viewer.keys().next_back().copied().unwrap_or(0);
            let (tx, rx) = tokio::sync::oneshot::channel();
            viewers.push(tokio::spawn(view(addr, since, tx)));
            ready.push(rx);
        }
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .expect("viewers ready in time")
                .expect("viewer ready");
        }
        let talkers: Vec<JoinHandle<u64>> = (0..2)
            .map(|i| tokio::spawn(talk(addr, format!("t{i}"), next_post[i])))
            .collect();
        let alive = Duration::from_millis(100 + rng.next() % 400);
        tokio::time::sleep(alive).await;
        server.signal(Signal::SIGKILL).expect("kill -9");
        server
            .wait_exit(Duration::from_secs(5))
            .expect("wait")
            .expect("the server is dead");
        for (i, talker) in talkers.into_iter().enumerate() {
            next_post[i] = talker.await.expect("talker");
        }
        for (i, viewer) in viewers.into_iter().enumerate() {
            let lines = viewer.await.expect("viewer");
            for line in lines {
                if line.starts_with("*** ") {
                    panic!("round {round}: viewer {i} got a notice: {line}");
                }
                let seq = seq_of(&line);
                let last = seen[i].keys().next_back().copied().unwrap_or(0);
                assert_eq!(
                    seq,
                    last + 1,
                    "round {round}: viewer {i} saw {seq} after {last} (seed {seed})"
                );
                seen[i].insert(seq, line);
            }
        }
        eprintln!(
            "round {round}: killed after {alive:?}; viewers at {:?}",
            seen.iter()
                .map(|s| s.keys().next_back().copied().unwrap_or(0))
                .collect::<Vec<_>>()
        );
    }

    // The log, read back after the last crash, holds every event anyone saw, with
    // the same number, time and text.
    let server = start(data.path());
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"viewer tags since=0\n").await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let welcome = lines.next_line().await.unwrap().unwrap();
    let last = seq_of(&welcome);
    let mut log = Seen::new();
    while log.len() < last as usize {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("the log in time")
            .unwrap()
            .expect("the whole log");
        log.insert(seq_of(&line), line);
    }
    assert_eq!(
        log.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "numbers from 1, none reused, none skipped"
    );
    let mut checked = 0;
    for viewer in &seen {
        assert!(!viewer.is_empty(), "a viewer saw nothing (seed {seed})");
        for (seq, line) in viewer {
            assert_eq!(
                log.get(seq),
                Some(line),
                "event {seq} changed (seed {seed})"
            );
            checked += 1;
        }
    }
    // Members of a killed server are shown leaving once it is back.
    let farewells = log
        .values()
        .filter(|l| l.ends_with(" t0 has left the chat"))
        .count();
    assert!(
        farewells >= ROUNDS - 1,
        "{farewells} leaves of t0 in {ROUNDS} rounds"
    );
    eprintln!("{checked} events seen by viewers, all in the log of {last}");
}
