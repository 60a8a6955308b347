//! The server's log as an operator reads it: the built binary with `--log-format
//! json`, each stderr line parsed as JSON. Every connection's lines say who it is
//! (conn, peer, transport, role, name); a departure says how long it stayed, how many
//! messages it sent and why it ended; refusals say why in the same field; a summary
//! line comes at the interval asked for; and no text anyone posted is ever logged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{ServerProcess, Signal, Spec};
use serde_json::Value;

use crate::cli::{WAIT, WELCOME};

/// What the messengers post: it must appear in no log line at `info`.
const SECRET: &str = "the launch code is 0451";

/// A line-mode connection, with its own address as the server sees it.
struct Conn {
    reader: BufReader<TcpStream>,
    local: SocketAddr,
}

impl Conn {
    fn connect(addr: SocketAddr, handshake: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let local = stream.local_addr().expect("local address");
        let mut conn = Self {
            reader: BufReader::new(stream),
            local,
        };
        conn.send(handshake);
        conn
    }

    fn viewer(addr: SocketAddr) -> Self {
        let mut conn = Self::connect(addr, "viewer\n");
        assert_eq!(conn.line(), WELCOME);
        conn
    }

    fn messenger(addr: SocketAddr, name: &str) -> Self {
        let mut conn = Self::connect(addr, &format!("name:{name}\n"));
        assert_eq!(conn.line(), format!("*** ok: joined as {name}"));
        conn
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        assert!(line.ends_with('\n'), "incomplete line {line:?}");
        line.pop();
        line
    }

    fn send(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(text.as_bytes())
            .expect("write");
    }

    /// Closes with FIN, after everything the server sent was read (unread data
    /// would turn the close into a reset), and waits for the server's close.
    fn close(mut self) {
        self.reader
            .get_ref()
            .shutdown(Shutdown::Write)
            .expect("shutdown");
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to the end");
    }

    /// Resets the connection (SO_LINGER 0, then close).
    fn reset(self) {
        socket2::SockRef::from(self.reader.get_ref())
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
}

/// A `tcpchat serve --log-format json` process, with `args` besides.
fn json_server(args: &[&str]) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .args(["--log-format", "json", "--seed-grace", "50ms"])
        .args(args)
        .start()
        .expect("start the server")
}

/// Every line of the server's output, parsed; a line that is not a JSON object fails
/// the test.
fn records(server: &ServerProcess) -> Vec<Value> {
    server
        .log_lines()
        .iter()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

/// The first record with `message` for which `wanted` holds, waiting up to
/// [`WAIT`] for one.
fn wait_record(server: &ServerProcess, message: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    wait_record_after(server, 0, message, wanted)
}

/// [`wait_record`] among the lines after line number `mark` (see
/// `ServerProcess::log_len`).
fn wait_record_after(
    server: &ServerProcess,
    mark: usize,
    message: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        // These servers write far fewer lines than the harness keeps, so line
        // number `mark` is the `mark`th line kept.
        if let Some(record) = records(server)
            .into_iter()
            .skip(mark)
            .find(|r| r["message"] == message && wanted(r))
        {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} line as wanted within {WAIT:?}; the log:\n{}",
            server.log_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `joined` line of the connection from `conn`'s address.
fn joined(server: &ServerProcess, conn: &Conn) -> Value {
    let peer = conn.local.to_string();
    wait_record(server, "joined", |r| r["peer"] == peer.as_str())
}

/// The departure line of the connection `joined` says joined.
fn left(server: &ServerProcess, joined: &Value) -> Value {
    wait_record(server, "left", |r| r["conn"] == joined["conn"])
}

/// `left` says who left as `joined` did, and `reason` and `messages`; its
/// `duration_s` is at least `stayed` and at most the time since `since`.
fn assert_departure(
    left: &Value,
    joined: &Value,
    reason: &str,
    messages: u64,
    stayed: Duration,
    since: Instant,
) {
    for field in ["conn", "peer", "transport", "role", "name", "mode"] {
        assert_eq!(left[field], joined[field], "{field} in {left}");
    }
    assert_eq!(left["level"], "INFO", "{left}");
    assert_eq!(left["reason"], reason, "{left}");
    assert_eq!(left["messages"], messages, "{left}");
    let duration = left["duration_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("duration_s is a number: {left}"));
    assert!(
        duration >= stayed.as_secs_f64() && duration <= since.elapsed().as_secs_f64(),
        "duration_s {duration} not between {stayed:?} and {:?}: {left}",
        since.elapsed()
    );
    assert!(left["timestamp"].is_string(), "{left}");
}

#[test]
fn json_logs_say_who_left_after_how_long_with_how_many_messages_and_why() {
    let server = json_server(&["--max-message-bytes", "64", "--handshake-timeout", "1s"]);
    let addr = server.addr();
    let start = Instant::now();

    let mut viewer = Conn::viewer(addr);
    let viewer_joined = joined(&server, &viewer);
    assert_eq!(viewer_joined["role"], "viewer");
    assert_eq!(viewer_joined["transport"], "tcp");
    assert_eq!(viewer_joined["mode"], "line");
    assert!(viewer_joined.get("name").is_none(), "{viewer_joined}");
    assert_eq!(viewer_joined["level"], "INFO");

    // alice posts two lines (one message with a line break counts as two), stays a
    // while, and closes with FIN.
    let mut alice = Conn::messenger(addr, "alice");
    let alice_joined = joined(&server, &alice);
    assert_eq!(alice_joined["role"], "messenger");
    assert_eq!(alice_joined["name"], "alice");
    assert_eq!(alice_joined["peer"], alice.local.to_string().as_str());
    assert_eq!(viewer.line(), "alice has joined the chat.");
    let alice_since = Instant::now();
    alice.send(&format!("{SECRET}\nand {SECRET} again\n"));
    assert_eq!(viewer.line(), format!("alice: {SECRET}"));
    assert_eq!(viewer.line(), format!("alice: and {SECRET} again"));
    let stayed = Duration::from_millis(300);
    std::thread::sleep(stayed.saturating_sub(alice_since.elapsed()));
    alice.close();
    assert_eq!(viewer.line(), "alice has left the chat");
    let alice_left = left(&server, &alice_joined);
    assert_departure(&alice_left, &alice_joined, "closed", 2, stayed, start);

    // A second alice is refused while the first is there; the refusal names the
    // name and says why in `reason`, as departures do.
    let mut bob = Conn::messenger(addr, "bob");
    let bob_joined = joined(&server, &bob);
    assert_eq!(viewer.line(), "bob has joined the chat.");
    let mut second_bob = Conn::connect(addr, "name:bob\n");
    assert!(second_bob.line().starts_with("*** error name-taken"));
    let refused = wait_record(&server, "refused", |r| {
        r["peer"] == second_bob.local.to_string().as_str()
    });
    assert_eq!(refused["reason"], "name-taken", "{refused}");
    assert_eq!(refused["name"], "bob", "{refused}");
    assert_eq!(refused["role"], "messenger", "{refused}");
    assert_eq!(refused["transport"], "tcp", "{refused}");
    assert!(refused["conn"].is_string(), "{refused}");

    // bob posts once and resets its connection.
    bob.send(&format!("{SECRET}, says bob\n"));
    assert_eq!(viewer.line(), format!("bob: {SECRET}, says bob"));
    bob.reset();
    assert_eq!(viewer.line(), "bob has left the chat");
    let bob_left = left(&server, &bob_joined);
    assert_departure(&bob_left, &bob_joined, "reset", 1, Duration::ZERO, start);
    assert!(bob_left["error"].is_string(), "{bob_left}");

    // carol's line is over the limit: she is told so and closed.
    let mut carol = Conn::messenger(addr, "carol");
    let carol_joined = joined(&server, &carol);
    assert_eq!(viewer.line(), "carol has joined the chat.");
    carol.send(&format!("{}\n", SECRET.repeat(4)));
    assert!(carol.line().starts_with("*** error message-too-long"));
    carol.close();
    let carol_left = left(&server, &carol_joined);
    assert_departure(
        &carol_left,
        &carol_joined,
        "message-too-long",
        0,
        Duration::ZERO,
        start,
    );

    // A client that never finishes its handshake is refused at the timeout.
    let mut silent = Conn::connect(addr, "");
    assert!(silent.line().starts_with("*** error handshake-timeout"));
    let timed_out = wait_record(&server, "refused", |r| {
        r["peer"] == silent.local.to_string().as_str()
    });
    assert_eq!(timed_out["reason"], "handshake-timeout", "{timed_out}");

    // A second viewer leaves with FIN; the first stays until shutdown.
    let other = Conn::viewer(addr);
    let other_joined = joined(&server, &other);
    other.close();
    let other_left = left(&server, &other_joined);
    assert_departure(
        &other_left,
        &other_joined,
        "closed",
        0,
        Duration::ZERO,
        start,
    );

    let lines = server.log_lines();
    assert!(
        lines.iter().all(|line| !line.contains(SECRET)),
        "a posted text is in the log:\n{}",
        lines.join("\n")
    );
    assert_eq!(server.stop(Signal::SIGTERM).expect("stop").code(), Some(0));
    let mut rest = Vec::new();
    viewer
        .reader
        .read_to_end(&mut rest)
        .expect("read to the end");
}

#[test]
fn a_member_there_at_shutdown_leaves_for_shutdown_and_no_posted_text_is_logged() {
    let server = json_server(&[]);
    let addr = server.addr();
    let start = Instant::now();
    let mut viewer = Conn::viewer(addr);
    let viewer_joined = joined(&server, &viewer);
    let mut dana = Conn::messenger(addr, "dana");
    assert_eq!(viewer.line(), "dana has joined the chat.");
    dana.send(&format!("{SECRET}\n"));
    assert_eq!(viewer.line(), format!("dana: {SECRET}"));
    dana.close();
    assert_eq!(viewer.line(), "dana has left the chat");
    server.signal(Signal::SIGTERM).expect("SIGTERM");
    let viewer_left = left(&server, &viewer_joined);
    assert_departure(
        &viewer_left,
        &viewer_joined,
        "shutdown",
        0,
        Duration::ZERO,
        start,
    );
    wait_record(&server, "stopped", |_| true);
    let mut rest = Vec::new();
    viewer
        .reader
        .read_to_end(&mut rest)
        .expect("read to the end");
    let lines = server.log_lines();
    assert!(
        lines.iter().all(|line| !line.contains(SECRET)),
        "a posted text is in the log:\n{}",
        lines.join("\n")
    );
    // What an operator's `jq 'select(.message == "left")'` finds: every member
    // that joined, once.
    let records = records(&server);
    let count = |message: &str| records.iter().filter(|r| r["message"] == message).count();
    assert_eq!(count("joined"), 2);
    assert_eq!(count("left"), 2);
}

#[test]
fn the_summary_line_counts_members_by_role_and_rates_since_the_last_one() {
    let server = json_server(&["--log-summary", "200ms"]);
    let addr = server.addr();
    let mut viewer = Conn::viewer(addr);
    let mut erin = Conn::messenger(addr, "erin");
    assert_eq!(viewer.line(), "erin has joined the chat.");
    let members = |r: &Value| r["viewers"] == 1 && r["messengers"] == 1 && r["chatters"] == 0;
    let first = wait_record(&server, "summary", members);
    assert_eq!(first["level"], "INFO", "{first}");
    assert!(first["timestamp"].is_string(), "{first}");
    // Posting: events and deliveries flow.
    for n in 0..20 {
        erin.send(&format!("line {n}\n"));
        assert_eq!(viewer.line(), format!("erin: line {n}"));
    }
    let busy = wait_record(&server, "summary", |r| {
        members(r) && r["events_per_s"].as_f64().is_some_and(|rate| rate > 0.0)
    });
    assert!(
        busy["deliveries_per_s"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0),
        "{busy}"
    );
    // Quiet again: the rates are since the last summary line, so they fall to 0.
    let quiet = wait_record_after(&server, server.log_len(), "summary", |r| {
        r["events_per_s"] == 0.0
    });
    assert_eq!(quiet["deliveries_per_s"], 0.0, "{quiet}");
    assert!(members(&quiet), "{quiet}");
    // The members are counted out as they leave.
    erin.close();
    assert_eq!(viewer.line(), "erin has left the chat");
    wait_record(&server, "summary", |r| {
        r["viewers"] == 1 && r["messengers"] == 0
    });
}

/// The default text format stays one readable line per event, with the same fields.
#[test]
fn text_logs_say_the_same_in_words() {
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .start()
        .expect("start the server");
    let addr = server.addr();
    let mut viewer = Conn::viewer(addr);
    let mut fred = Conn::messenger(addr, "fred");
    let peer = format!("peer={}", fred.local);
    assert_eq!(viewer.line(), "fred has joined the chat.");
    fred.send(&format!("{SECRET}\n"));
    assert_eq!(viewer.line(), format!("fred: {SECRET}"));
    fred.close();
    assert_eq!(viewer.line(), "fred has left the chat");
    let line = server
        .wait_for_log(" left ", WAIT)
        .expect("a departure line");
    for part in [
        "INFO",
        &peer,
        "transport=tcp",
        "role=messenger",
        "name=\"fred\"",
        "reason=closed",
        "messages=1",
        "duration_s=",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(server.log_lines().iter().all(|l| !l.contains(SECRET)));
}
