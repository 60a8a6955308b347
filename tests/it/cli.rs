//! The `tcpchat` binary as a user runs it: exit codes, one-line errors, signals, and
//! the clients against a real server process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::{ServerProcess, Signal, Spec};
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub(crate) const WAIT: Duration = Duration::from_secs(10);
pub(crate) const WELCOME: &str = "Welcome to the \"Bad IRC\" Chat Server!";

static NEXT_HOME: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn tcpchat() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcpchat"));
    command.env_remove("RUST_LOG");
    // The default data directory is under here: each run gets its own, and the
    // tester's own is left alone.
    let data_home = std::env::temp_dir().join(format!(
        "tcpchat-cli-{}-{}",
        std::process::id(),
        NEXT_HOME.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    command.env("XDG_DATA_HOME", data_home);
    command
}

/// Runs to completion and returns (exit code, stdout, stderr).
pub(crate) fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.stdin(Stdio::null()).output().expect("run tcpchat");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits for a child to exit, for at most [`WAIT`].
pub(crate) fn exit_of(mut child: Child) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(WAIT) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("tcpchat (pid {pid}) did not exit within {WAIT:?}");
        }
    }
}

pub(crate) fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).expect("kill");
}

/// A `tcpchat serve` process on ephemeral loopback ports.
pub(crate) fn start_server() -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .args(["--seed-grace", "50ms"])
        .start()
        .expect("start the server")
}

pub(crate) fn port(server: &ServerProcess) -> String {
    server.addr().port().to_string()
}

/// Sends `sig` and returns how the server exited.
pub(crate) fn stop(server: ServerProcess, sig: Signal) -> ExitStatus {
    server.stop(sig).expect("the server stops")
}

/// A raw line-mode connection.
pub(crate) struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr, handshake: &str) -> Self {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.write_all(handshake.as_bytes()).expect("write");
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub(crate) fn viewer(addr: SocketAddr) -> Self {
        let mut raw = Self::connect(addr, "viewer\n");
        assert_eq!(raw.line(), WELCOME);
        raw
    }

    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        assert!(line.ends_with('\n'), "incomplete line {line:?}");
        line.pop();
        line
    }

    pub(crate) fn send(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(text.as_bytes())
            .expect("write");
    }

    pub(crate) fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to end");
        assert!(
            rest.is_empty(),
            "more input: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Reads a child's stdout line by line, each wait bounded.
pub(crate) struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub(crate) fn of(stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self(rx)
    }

    pub(crate) fn next(&self) -> String {
        self.0.recv_timeout(WAIT).expect("a line on stdout")
    }

    /// The next line, an event as `chat` and `viewer` show it, without its time.
    pub(crate) fn event(&self) -> String {
        untimed(&self.next()).to_owned()
    }
}

/// An event line without the time `chat` and `viewer` put before it (`12:41 ` today,
/// `2026-11-28 12:41 ` on other days); other lines as they are.
pub(crate) fn untimed(line: &str) -> &str {
    let is_time = |t: &str| {
        let b = t.as_bytes();
        b.len() == 5 && b[2] == b':' && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit())
    };
    let is_date = |d: &str| {
        d.len() == 10
            && d.bytes().enumerate().all(|(i, c)| match i {
                4 | 7 => c == b'-',
                _ => c.is_ascii_digit(),
            })
    };
    if let Some((time, rest)) = line.split_once(' ')
        && is_time(time)
    {
        return rest;
    }
    if let Some((date, rest)) = line.split_once(' ')
        && is_date(date)
        && let Some((time, rest)) = rest.split_once(' ')
        && is_time(time)
    {
        return rest;
    }
    line
}

#[test]
fn times_are_taken_off_events_and_nothing_else() {
    assert_eq!(untimed("12:41 alice: hi"), "alice: hi");
    assert_eq!(untimed("2026-11-28 23:59 bob: late"), "bob: late");
    assert_eq!(untimed("alice: 12:41 hi"), "alice: 12:41 hi");
    assert_eq!(untimed(WELCOME), WELCOME);
    assert_eq!(untimed("*** reconnected"), "*** reconnected");
}

pub(crate) fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn a_port_in_use_is_one_line_and_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, stderr) = run(tcpchat().args(["serve", "--bind", "127.0.0.1", "--port", &port]));
    assert_eq!(code, 1);
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!("tcpchat: cannot listen on 127.0.0.1:{port}: ")),
        "{line}"
    );
    assert!(line.contains("in use"), "{line}");
}

#[test]
fn an_invalid_port_is_one_line_and_exit_code_2() {
    for (bad, says) in [("70000", "--port"), ("abc", "--port"), ("-1", "'-1'")] {
        let (code, _, stderr) = run(tcpchat().args(["serve", "--port", bad]));
        assert_eq!(code, 2, "--port {bad}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with("tcpchat: ") && line.contains(says),
            "{line}"
        );
    }
    for bad in [
        &["--handshake-timeout", "soon"][..],
        &["--flood-rate", "0"],
        &["--flood-rate=-5"],
        &["--flood-rate", "inf"],
    ] {
        let (code, _, stderr) = run(tcpchat().arg("serve").args(bad));
        assert_eq!(code, 2, "{bad:?}");
        let line = one_line(&stderr);
        let flag = bad[0].split('=').next().unwrap();
        assert!(line.contains(flag), "{line}");
    }
}

#[test]
fn sigterm_and_sigint_stop_the_server_with_exit_code_0() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let server = start_server();
        let mut viewer = Raw::viewer(server.addr());
        let mut messenger = Raw::connect(server.addr(), "name:ann\n");
        assert_eq!(messenger.line(), "*** ok: joined as ann");
        messenger.send("last words\n");
        assert_eq!(viewer.line(), "ann has joined the chat.");
        assert_eq!(viewer.line(), "ann: last words");
        let status = stop(server, sig);
        assert_eq!(status.code(), Some(0), "{sig:?}");
        viewer.expect_closed();
        messenger.expect_closed();
    }
}

#[test]
fn clients_say_when_the_server_is_unreachable() {
    let port = {
        let unused = TcpListener::bind("127.0.0.1:0").unwrap();
        unused.local_addr().unwrap().port().to_string()
    };
    let target = ["--host", "127.0.0.1", "--port", &port];
    for args in [
        vec!["viewer"],
        vec!["messenger", "--name", "x"],
        vec!["chat", "--name", "x"],
    ] {
        let (code, _, stderr) = run(tcpchat().args(&args).args(target));
        assert_eq!(code, 1, "{args:?}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with(&format!("tcpchat: cannot connect to 127.0.0.1:{port}: ")),
            "{line}"
        );
    }
}

#[test]
fn a_taken_name_is_reported_in_words() {
    let server = start_server();
    let mut holder = Raw::connect(server.addr(), "name:alice\n");
    assert_eq!(holder.line(), "*** ok: joined as alice");
    for client in ["messenger", "chat"] {
        let (code, _, stderr) = run(tcpchat().args([
            client,
            "--name",
            "alice",
            "--host",
            "127.0.0.1",
            "--port",
            &port(&server),
        ]));
        assert_eq!(code, 1, "{client}");
        assert_eq!(
            one_line(&stderr),
            "tcpchat: the server refused us: the name \"alice\" is already taken"
        );
    }
}

#[test]
fn a_piped_messenger_sends_each_line_until_quit() {
    let server = start_server();
    let mut viewer = Raw::viewer(server.addr());
    let mut messenger = tcpchat()
        .args([
            "messenger",
            "--name",
            "bob",
            "--host",
            "127.0.0.1",
            "--port",
            &port(&server),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = messenger.stdin.take().unwrap();
    stdin
        .write_all(b"hello\n\nworld, and \x1b[31mred\nQuit\nnot sent\n")
        .unwrap();
    drop(stdin);
    assert_eq!(exit_of(messenger).code(), Some(0));
    assert_eq!(viewer.line(), "bob has joined the chat.");
    assert_eq!(viewer.line(), "bob: hello");
    assert_eq!(viewer.line(), "bob: world, and \u{241B}[31mred");
    assert_eq!(viewer.line(), "bob has left the chat");
}

#[test]
fn a_piped_messenger_without_a_name_reads_it_without_asking() {
    let server = start_server();
    let mut viewer = Raw::viewer(server.addr());
    let output = {
        let mut child = tcpchat()
            .args(["messenger", "--host", "127.0.0.1", "--port", &port(&server)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"\ncarol\nhi\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert_eq!(output.status.code(), Some(0));
    // Not a terminal: no question on stdout, the first line is the name.
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    assert_eq!(viewer.line(), "carol has joined the chat.");
    assert_eq!(viewer.line(), "carol: hi");
}

#[test]
fn the_viewer_prints_the_room_and_says_when_the_server_goes_away() {
    let server = start_server();
    let mut child = tcpchat()
        .args(["viewer", "--host", "127.0.0.1", "--port", &port(&server)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(child.stdout.take().unwrap());
    assert_eq!(lines.next(), WELCOME);
    let mut dee = Raw::connect(server.addr(), "name:dee\n");
    assert_eq!(dee.line(), "*** ok: joined as dee");
    dee.send("anyone?\n");
    assert_eq!(lines.event(), "dee has joined the chat.");
    assert_eq!(lines.event(), "dee: anyone?");
    assert_eq!(stop(server, Signal::SIGTERM).code(), Some(0));
    // It says so, and waits for the server to come back (see client_resume).
    let lost = lines.next();
    assert!(
        lost.starts_with("*** connection lost (the server is shutting down); reconnecting in "),
        "{lost}"
    );
    signal(&child, Signal::SIGINT);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit_of(child).code(), Some(0));
    assert_eq!(stderr, "");
}

#[test]
fn the_viewer_leaves_on_ctrl_c_with_exit_code_0() {
    let server = start_server();
    let mut child = tcpchat()
        .args(["viewer", "--host", "127.0.0.1", "--port", &port(&server)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Lines::of(child.stdout.take().unwrap());
    assert_eq!(lines.next(), WELCOME);
    signal(&child, Signal::SIGINT);
    assert_eq!(exit_of(child).code(), Some(0));
}

#[test]
fn chat_shows_the_room_and_sends_what_is_typed() {
    let server = start_server();
    let mut child = tcpchat()
        .args([
            "chat",
            "--name",
            "eve",
            "--host",
            "127.0.0.1",
            "--port",
            &port(&server),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    assert_eq!(lines.next(), WELCOME);
    assert_eq!(lines.event(), "eve has joined the chat.");
    let mut fay = Raw::connect(server.addr(), "name:fay\n");
    assert_eq!(fay.line(), "*** ok: joined as fay");
    assert_eq!(lines.event(), "fay has joined the chat.");
    fay.send("hi eve\n");
    assert_eq!(lines.event(), "fay: hi eve");
    stdin.write_all(b"hi fay\n").unwrap();
    assert_eq!(lines.event(), "eve: hi fay");
    stdin.write_all(b"/quit\n").unwrap();
    assert_eq!(exit_of(child).code(), Some(0));
}

/// The server's log is a pipe whose reader went away (`tcpchat serve 2>&1 | tee log`
/// and `tee` killed), or stopped reading (`tee` suspended, the pipe full): every log
/// line fails or would block. That costs log lines, nothing else: clients are served,
/// joins and leaves go on, and SIGTERM still shuts the server down in order. In
/// either log format.
#[test]
fn a_lost_or_stalled_log_pipe_costs_log_lines_not_the_server() {
    for (stalled, format) in [
        (false, "text"),
        (true, "text"),
        (false, "json"),
        (true, "json"),
    ] {
        let port = harness::free_port().expect("a free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let spec = Spec::listening(env!("CARGO_BIN_EXE_tcpchat"), addr)
            .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--http-port", "0", "--log-format", format])
            // Every event logged: far more than a pipe holds.
            .env("RUST_LOG", "debug");
        let spec = if stalled {
            spec.stderr_unread()
        } else {
            spec.stderr_closed()
        };
        let server = spec.start().expect("start the server");
        let mut viewer = Raw::viewer(addr);
        for i in 0..20 {
            let name = format!("m{i}");
            let mut messenger = Raw::connect(addr, &format!("name:{name}\n"));
            assert_eq!(messenger.line(), format!("*** ok: joined as {name}"));
            let burst: String = (0..100)
                .map(|n| format!("line {n} logged nowhere\n"))
                .collect();
            messenger.send(&burst);
            assert_eq!(viewer.line(), format!("{name} has joined the chat."));
            for n in 0..100 {
                assert_eq!(viewer.line(), format!("{name}: line {n} logged nowhere"));
            }
            drop(messenger);
            assert_eq!(viewer.line(), format!("{name} has left the chat"));
        }
        assert_eq!(
            stop(server, Signal::SIGTERM).code(),
            Some(0),
            "stalled: {stalled}, {format}"
        );
        viewer.expect_closed();
    }
}

/// `tcpchat serve` on ephemeral loopback ports with its log in `dir`.
fn serve_on(dir: &std::path::Path) -> Command {
    let mut command = tcpchat();
    command
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir);
    command
}

/// A data directory that cannot be used stops the server at start, with one line
/// that says why and where, before it listens.
#[test]
fn an_unusable_data_directory_is_one_line_and_exit_code_1() {
    let scratch = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let file = scratch.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    // A file in the directory that is not a tcpchat log.
    let foreign = scratch.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("room.db"), b"my notes\n".repeat(100)).unwrap();
    let cases = [
        (file.clone(), "cannot use the data directory"),
        (foreign.clone(), "is not a tcpchat log"),
    ];
    for (dir, expected) in cases {
        let (code, _, stderr) = run(&mut serve_on(&dir));
        assert_eq!(code, 1, "{dir:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(line.starts_with("tcpchat: "), "{line}");
        assert!(line.contains(expected), "{dir:?}: {line}");
        assert!(line.contains(&*dir.to_string_lossy()), "{line}");
    }
    assert_eq!(
        std::fs::read(foreign.join("room.db")).unwrap(),
        b"my notes\n".repeat(100),
        "a foreign file is left alone"
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let first = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--data-dir")
        .arg(data.path())
        .start()
        .expect("the first server starts");
    let (code, _, stderr) = run(&mut serve_on(data.path()));
    assert_eq!(code, 1, "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("is in use by another tcpchat"), "{line}");
    drop(first);
}

/// Whether this machine can listen on IPv6's loopback (some containers have no
/// IPv6): the IPv6 halves of the tests below need it.
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// By default the server listens on every interface, IPv6 and IPv4 alike, and an
/// IPv4 client shows in the log as the IPv4 address it is.
#[test]
fn by_default_the_server_listens_on_ipv4_and_ipv6() {
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .listen_on("*", 0)
        .start()
        .expect("the server starts on its default address");
    let port = server.addr().port();
    let mut v4 = Raw::connect(SocketAddr::from(([127, 0, 0, 1], port)), "viewer\n");
    assert_eq!(v4.line(), WELCOME);
    assert!(
        server
            .wait_for_log("peer=127.0.0.1:", WAIT)
            .is_some_and(|line| line.contains("joined")),
        "the peer is logged as an IPv4 address"
    );
    if has_ipv6_loopback() {
        let v6: SocketAddr = format!("[::1]:{port}").parse().expect("an address");
        let mut viewer = Raw::connect(v6, "viewer\n");
        assert_eq!(viewer.line(), WELCOME);
    }
}

/// `--bind` takes a host name, and listens on each of its addresses.
#[test]
fn bind_takes_a_host_name() {
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .listen_on("localhost", 0)
        .start()
        .expect("the server starts on localhost");
    let listening: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("listening") && line.contains("transport=tcp"))
        .collect();
    assert!(
        listening
            .iter()
            .any(|line| line.contains("address=127.0.0.1:")),
        "{listening:?}"
    );
    if has_ipv6_loopback()
        && std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
            .is_ok_and(|mut found| found.any(|a| a.is_ipv6()))
    {
        assert!(
            listening.iter().any(|line| line.contains("address=[::1]:")),
            "{listening:?}"
        );
    }
    let (code, _, stderr) =
        run(tcpchat().args(["serve", "--bind", "nosuch.invalid", "--port", "0"]));
    assert_eq!(code, 1);
    assert!(
        one_line(&stderr).starts_with("tcpchat: cannot listen on nosuch.invalid: not an address, and the name does not resolve"),
        "{stderr}"
    );
    // An address with a port is a usage error that says where the port goes.
    for with_port in [
        "127.0.0.1:6000",
        ":6000",
        "localhost:6000",
        "localhost:http",
    ] {
        let (code, _, stderr) = run(tcpchat().args(["serve", "--bind", with_port]));
        assert_eq!(code, 2, "{with_port}: {stderr}");
        assert!(
            stderr.contains(&format!("'{with_port}' for '--bind <ADDR|HOST>'"))
                && stderr.contains("the port has its own flag (--port"),
            "{stderr}"
        );
    }
    for bracketed in ["[::1]:6000", "[::1]"] {
        let (code, _, stderr) = run(tcpchat().args(["serve", "--bind", bracketed]));
        assert_eq!(code, 2, "{bracketed}: {stderr}");
        assert!(
            stderr.contains("give an IPv6 address without brackets (::1)"),
            "{stderr}"
        );
    }
}

#[test]
fn an_ipv6_host_is_shown_in_brackets() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let (code, _, stderr) = run(tcpchat().args(["viewer", "--host", "::1", "--port", &closed]));
    assert_eq!(code, 1);
    assert!(
        one_line(&stderr).starts_with(&format!("tcpchat: cannot connect to [::1]:{closed}: ")),
        "{stderr}"
    );
}

/// A usage error names what is wrong: `tcpchat chat` without `--name` says which
/// argument is missing, in one line, with exit code 2.
#[test]
fn a_usage_error_names_what_is_missing() {
    let (code, _, stderr) = run(tcpchat().arg("chat"));
    assert_eq!(code, 2);
    assert_eq!(
        one_line(&stderr),
        "tcpchat: the following required arguments were not provided: --name <NAME>"
    );
    let (code, _, stderr) = run(tcpchat().args(["admin"]));
    assert_eq!(code, 2);
    assert!(one_line(&stderr).contains("<COMMAND>"), "{stderr}");
}
