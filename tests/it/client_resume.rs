//! History and resume, as a user of the built `tcpchat chat` sees them: a server
//! process with a data directory is killed (SIGKILL) and started again on the same
//! port and directory, lines are typed before, during and after, and the client's
//! screen and the room's log must both hold every line exactly once, in order.
//! `tcpchat history` is checked against the same log.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::time::{Duration, Instant};

use harness::{ServerProcess, Signal, Spec};

use crate::cli::{Lines, Raw, WELCOME, exit_of, one_line, run, tcpchat, untimed};

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("tcpchat-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tcpchat serve` with its log in `data`, on `port` (0: an ephemeral one).
fn serve(data: &Path, port: u16) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .listen_on("127.0.0.1", port)
        .arg("--data-dir")
        .arg(data.as_os_str())
        .start()
        .expect("start the server")
}

/// Reads the client's stdout until a line (without its time) is `wanted`;
/// returns every line on the way, `wanted` included, without their times.
fn until(lines: &Lines, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = untimed(&lines.next()).to_owned();
        let done = line == wanted;
        seen.push(line);
        if done {
            return seen;
        }
    }
}

fn type_line(keys: &mut ChildStdin, line: &str) {
    keys.write_all(format!("{line}\n").as_bytes()).unwrap();
    keys.flush().unwrap();
}

/// The room's log as a fresh viewer gets it with `history=N`: (seq, text).
fn room_log(addr: SocketAddr) -> Vec<(u64, String)> {
    let mut viewer = Raw::connect(addr, "viewer tags history=10000\n");
    let welcome = viewer.line();
    let (seq, text) = welcome
        .strip_prefix("@seq=")
        .and_then(|rest| rest.split_once(' '))
        .unwrap_or_else(|| panic!("a tagged welcome, got {welcome:?}"));
    assert_eq!(text, WELCOME);
    let last: u64 = seq.parse().unwrap();
    let mut log = Vec::new();
    while log.last().is_none_or(|(seq, _)| *seq < last) {
        let line = viewer.line();
        let (tags, text) = line.split_once(' ').unwrap();
        let seq = tags
            .strip_prefix("@seq=")
            .and_then(|tags| tags.split(';').next())
            .unwrap()
            .parse()
            .unwrap();
        log.push((seq, text.to_owned()));
    }
    log
}

/// The lines of `texts` that are messages from `name`, in order.
fn messages_from<'a>(texts: impl IntoIterator<Item = &'a String>, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    texts
        .into_iter()
        .filter_map(|text| text.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn chat_survives_a_killed_server_with_every_line_once_in_order() {
    let data = TempDir::new("resume");
    let server = serve(data.path(), 0);
    let port = server.addr().port();
    let mut chat = tcpchat()
        .args(["chat", "--name", "eve", "--history", "0"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(chat.stdout.take().unwrap());
    let mut keys = chat.stdin.take().unwrap();
    assert_eq!(lines.next(), WELCOME);
    assert_eq!(lines.event(), "eve has joined the chat.");
    type_line(&mut keys, "one");
    type_line(&mut keys, "two");
    assert_eq!(lines.event(), "eve: one");
    assert_eq!(lines.event(), "eve: two");

    // The server dies without a word; a line typed while it is down waits.
    let mut server = server;
    server.signal(Signal::SIGKILL).unwrap();
    assert!(server.wait_exit(Duration::from_secs(10)).unwrap().is_some());
    drop(server);
    let lost = lines.next();
    assert!(lost.starts_with("*** connection lost ("), "{lost}");
    assert!(lost.contains("); reconnecting in "), "{lost}");
    type_line(&mut keys, "three, typed while the server is down");
    until(
        &lines,
        "*** not connected: sending when reconnected: three, typed while the server is down",
    );

    // Back on the same port and data directory: the client comes back by itself.
    let started = Instant::now();
    let server = serve(data.path(), port);
    until(&lines, "*** reconnected");
    assert!(started.elapsed() < Duration::from_secs(10));
    let after = until(&lines, "eve: three, typed while the server is down");
    type_line(&mut keys, "four");
    let mut rest = until(&lines, "eve: four");

    // The room has each line once, in order, and so does the screen.
    let log = room_log(server.addr());
    let texts: Vec<String> = log.iter().map(|(_, text)| text.clone()).collect();
    let expected = [
        "one",
        "two",
        "three, typed while the server is down",
        "four",
    ];
    assert_eq!(messages_from(&texts, "eve"), expected, "room: {texts:?}");
    let seqs: Vec<u64> = log.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let mut screen = vec!["eve: one".to_owned(), "eve: two".to_owned()];
    screen.extend(after);
    screen.append(&mut rest);
    assert_eq!(
        messages_from(&screen, "eve"),
        expected,
        "screen: {screen:?}"
    );
    // No event shown twice: the screen's events are the room's, in its order.
    let shown: Vec<&String> = screen.iter().filter(|l| !l.starts_with("*** ")).collect();
    let room_tail: Vec<&String> = texts.iter().skip_while(|t| *t != "eve: one").collect();
    assert_eq!(shown, room_tail);

    type_line(&mut keys, "/quit");
    assert_eq!(
        until(&lines, "eve has left the chat").last().unwrap(),
        "eve has left the chat"
    );
    assert_eq!(exit_of(chat).code(), Some(0));
    let log = room_log(server.addr());
    assert_eq!(log.last().unwrap().1, "eve has left the chat");
}

#[test]
fn a_chat_started_later_shows_the_last_events_and_history_prints_them() {
    let data = TempDir::new("history");
    let server = serve(data.path(), 0);
    let port = server.addr().port().to_string();
    let mut ann = Raw::connect(server.addr(), "name:ann\n");
    assert_eq!(ann.line(), "*** ok: joined as ann");
    for i in 1..=5 {
        ann.send(&format!("message {i}\n"));
    }
    // Every message is in the log once a fresh viewer sees the last one.
    let log = loop {
        let log = room_log(server.addr());
        if log.last().is_some_and(|(_, text)| text == "ann: message 5") {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(log.len(), 6);

    let mut chat = tcpchat()
        .args(["chat", "--name", "bob", "--history", "3"])
        .args(["--host", "127.0.0.1", "--port", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Lines::of(chat.stdout.take().unwrap());
    assert_eq!(lines.next(), WELCOME);
    for i in 3..=5 {
        assert_eq!(lines.event(), format!("ann: message {i}"));
    }
    assert_eq!(lines.event(), "bob has joined the chat.");
    drop(chat.stdin.take());
    assert_eq!(exit_of(chat).code(), Some(0));

    let (code, stdout, stderr) = run(tcpchat().args(["history", "--last", "2", "--port", &port]));
    assert_eq!((code, stderr.as_str()), (0, ""));
    let printed: Vec<&str> = stdout.lines().collect();
    assert_eq!(printed.len(), 2, "{stdout}");
    // `SEQ TIME TEXT`, the time in UTC with milliseconds.
    for (line, (seq, text)) in printed.iter().zip(&room_log(server.addr())[6..]) {
        let (s, rest) = line.split_once(' ').unwrap();
        let (time, t) = rest.split_once(' ').unwrap();
        assert_eq!((s, t), (seq.to_string().as_str(), text.as_str()));
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    }

    let (code, stdout, _) =
        run(tcpchat().args(["history", "--since", "4", "--json", "--port", &port]));
    assert_eq!(code, 0);
    let texts: Vec<String> = stdout
        .lines()
        .map(|line| {
            assert!(line.starts_with("{\"seq\":"), "{line}");
            let text = line.rsplit_once("\"text\":\"").unwrap().1;
            text.trim_end_matches("\"}").to_owned()
        })
        .collect();
    assert_eq!(
        texts[..2],
        ["ann: message 4".to_owned(), "ann: message 5".to_owned()]
    );

    // Nothing asked for, nothing printed; and a refusal is one line and exit 1.
    let (code, stdout, _) = run(tcpchat().args(["history", "--last", "0", "--port", &port]));
    assert_eq!((code, stdout.as_str()), (0, ""));
    drop(server);
    let (code, _, stderr) = run(tcpchat().args(["history", "--port", &port]));
    assert_eq!(code, 1);
    assert!(one_line(&stderr).starts_with("tcpchat: cannot connect to localhost:"));
}
