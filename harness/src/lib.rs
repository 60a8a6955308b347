//! Starting, watching and stopping server processes on loopback: the one way every
//! tool that treats a server as a black box does it (the CLI and TLS tests, the soak,
//! the benchmark).
//!
//! - [`Spec::tcpchat`] runs `tcpchat serve` on ephemeral loopback ports and learns its
//!   addresses from the `listening` lines it logs (plain, TLS, HTTP; as text or, with
//!   `--log-format json`, as JSON), so no port is ever guessed.
//! - [`Spec::listening`] runs any other server (the benchmark's peers) on a port chosen
//!   with [`free_port`] and waits until it accepts connections.
//!
//! A [`ServerProcess`] keeps the last lines of the server's output (stderr and stdout)
//! for assertions and error messages, can be signalled, and is killed (by its own PID,
//! never by name) when dropped. Every wait here has a bound.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`ServerProcess::stop`] waits for the server to exit before killing it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of output kept per server: enough for any assertion, bounded for long soaks.
const KEPT_LINES: usize = 20_000;

/// A free TCP port on 127.0.0.1, for servers that cannot be told to pick one (the
/// port is released before the server binds it; a clash shows as a start failure).
///
/// # Errors
/// When no socket can be bound.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// How the harness knows a server is ready.
#[derive(Debug, Clone)]
enum Ready {
    /// tcpchat: its `listening` log lines give the plain address and, when it was
    /// given a certificate, the TLS one. It listens on `bind`:`port`.
    TcpchatLog {
        tls: bool,
        bind: String,
        port: String,
    },
    /// Anything else: it accepts a connection at this address.
    Accepting(SocketAddr),
}

/// What becomes of a server's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// Read line by line into the kept output.
    Read,
    /// Its reading end closed at once.
    Closed,
    /// Kept open and never read.
    Unread,
}

/// What to start, built step by step.
#[derive(Debug, Clone)]
pub struct Spec {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// A command that runs the server (`taskset -c 0`, `ip netns exec NS`).
    prefix: Vec<OsString>,
    /// What becomes of the server's stderr besides being read into the log.
    stderr: Stderr,
    ready: Ready,
    name: String,
}

impl Spec {
    /// `BINARY serve --bind 127.0.0.1 --port 0`, logging at `info` (more arguments
    /// may follow; [`Spec::listen_on`] changes the address). With `--tls-cert`, pass
    /// `--tls-port` too (0 for an ephemeral one).
    pub fn tcpchat(binary: impl Into<PathBuf>) -> Self {
        let binary: PathBuf = binary.into();
        Self {
            program: binary.into_os_string(),
            args: Vec::new(),
            envs: vec![("RUST_LOG".into(), "info".into())],
            prefix: Vec::new(),
            stderr: Stderr::Read,
            ready: Ready::TcpchatLog {
                tls: false,
                bind: "127.0.0.1".to_owned(),
                port: "0".to_owned(),
            },
            name: "tcpchat".to_owned(),
        }
    }

    /// For [`Spec::tcpchat`]: listen on `bind`:`port` instead of an ephemeral
    /// loopback port.
    #[must_use]
    pub fn listen_on(mut self, bind: &str, port: u16) -> Self {
        if let Ready::TcpchatLog {
            bind: b, port: p, ..
        } = &mut self.ready
        {
            *b = bind.to_owned();
            *p = port.to_string();
        }
        self
    }

    /// `PROGRAM` (with the arguments that follow), ready once `addr` accepts.
    pub fn listening(program: impl Into<OsString>, addr: SocketAddr) -> Self {
        let program = program.into();
        Self {
            name: program.to_string_lossy().into_owned(),
            program,
            args: Vec::new(),
            envs: Vec::new(),
            prefix: Vec::new(),
            stderr: Stderr::Read,
            ready: Ready::Accepting(addr),
        }
    }

    /// One more argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        let arg = arg.into();
        if let Ready::TcpchatLog { tls, .. } = &mut self.ready {
            *tls |= arg == "--tls-cert";
        }
        self.args.push(arg);
        self
    }

    /// More arguments.
    #[must_use]
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    /// An environment variable (`RUST_LOG` replaces the default `info`).
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let key = key.into();
        self.envs.retain(|(k, _)| *k != key);
        self.envs.push((key, value.into()));
        self
    }

    /// Runs the server pinned to one CPU (with `taskset`, so every thread it starts
    /// stays there).
    #[must_use]
    pub fn pinned_to(self, cpu: Option<usize>) -> Self {
        match cpu {
            Some(cpu) => self.run_by(["taskset".to_owned(), "-c".to_owned(), cpu.to_string()]),
            None => self,
        }
    }

    /// Runs the server through `command`, which must exec it in the end (so the
    /// process id stays the server's): `["ip", "netns", "exec", "NS"]`, say.
    #[must_use]
    pub fn run_by<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut prefix: Vec<OsString> = command.into_iter().map(Into::into).collect();
        prefix.append(&mut self.prefix);
        self.prefix = prefix;
        self
    }

    /// Gives the server a stderr whose reading end is closed at once, so every
    /// write to it fails (a log pipe whose reader went away). Only with
    /// [`Spec::listening`]: tcpchat's address could not be read from its log.
    #[must_use]
    pub fn stderr_closed(mut self) -> Self {
        self.stderr = Stderr::Closed;
        self
    }

    /// Gives the server a stderr pipe that nobody reads (a log pipe whose reader is
    /// stopped): once the pipe is full, every write to it blocks. Only with
    /// [`Spec::listening`], as for [`Spec::stderr_closed`].
    #[must_use]
    pub fn stderr_unread(mut self) -> Self {
        self.stderr = Stderr::Unread;
        self
    }

    /// Starts the server and waits until it is ready.
    ///
    /// # Errors
    /// When it cannot be started, exits, or is not ready within [`START_TIMEOUT`]; the
    /// error includes the end of its output.
    pub fn start(self) -> io::Result<ServerProcess> {
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        let mut scratch = None;
        let mut has_http = false;
        if let Ready::TcpchatLog { bind, port, .. } = &self.ready {
            command.args(["serve", "--bind", bind, "--port", port]);
            // Every server gets a log of its own, unless it was given one (or none):
            // a default shared by parallel runs would be refused as in use.
            let chosen = self
                .args
                .iter()
                .any(|arg| arg == "--data-dir" || arg == "--history");
            if !chosen {
                let dir = scratch_dir()?;
                command.arg("--data-dir").arg(&dir);
                scratch = Some(dir);
            }
            // The HTTP listener on an ephemeral port too, unless told otherwise: its
            // default port would be shared by every server started in parallel.
            let http = self
                .args
                .iter()
                .any(|arg| arg == "--http-port" || arg == "--no-http");
            if !http {
                command.args(["--http-port", "0"]);
            }
            has_http = !self.args.iter().any(|arg| arg == "--no-http");
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", self.name)))?;
        let log = Arc::new(Log::default());
        let mut streams = 0;
        let mut unread = None;
        if let Some(stderr) = child.stderr.take() {
            match self.stderr {
                Stderr::Read => {
                    Log::follow(&log, stderr);
                    streams += 1;
                }
                Stderr::Closed => drop(stderr),
                Stderr::Unread => unread = Some(stderr),
            }
        }
        if let Some(stdout) = child.stdout.take() {
            Log::follow(&log, stdout);
            streams += 1;
        }
        log.lock().open_streams = streams;
        let mut server = ServerProcess {
            scratch,
            pid: child.id(),
            child: Some(child),
            _unread: unread,
            name: self.name,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls_addr: None,
            has_http,
            log,
        };
        match self.ready {
            Ready::TcpchatLog { tls, .. } => {
                let plain = server.wait_for_listening("tcp");
                server.addr = plain
                    .as_deref()
                    .and_then(listening_address)
                    .ok_or_else(|| server.failure("did not log its listening address"))?;
                if tls {
                    let line = server.wait_for_listening("tls");
                    server.tls_addr =
                        Some(line.as_deref().and_then(listening_address).ok_or_else(|| {
                            server.failure("did not log its TLS listening address")
                        })?);
                }
            }
            Ready::Accepting(addr) => {
                server.addr = addr;
                server.wait_accepting(addr)?;
            }
        }
        Ok(server)
    }
}

/// The address in a tcpchat `listening` line: `... address=127.0.0.1:6000 ...` as
/// text, `"address":"127.0.0.1:6000"` as JSON.
fn listening_address(line: &str) -> Option<SocketAddr> {
    if let Some(rest) = line.split("\"address\":\"").nth(1) {
        return rest.split('"').next()?.parse().ok();
    }
    line.split("address=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `line` has a `transport` field starting with `transport`, as text or
/// as JSON (so `http` also finds `https`).
fn has_transport(line: &str, transport: &str) -> bool {
    line.contains(&format!("transport={transport}"))
        || line.contains(&format!("\"transport\":\"{transport}"))
}

/// The recent output of a server, shared with the threads that read it.
#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LogState {
    lines: VecDeque<String>,
    /// Lines ever received (the first kept one is number `total - lines.len()`).
    total: usize,
    open_streams: usize,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads `stream` line by line until it closes; never blocks the server, which
    /// would stall on a full pipe.
    fn follow(log: &Arc<Self>, stream: impl Read + Send + 'static) {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut state = log.lock();
                if state.lines.len() == KEPT_LINES {
                    state.lines.pop_front();
                }
                state.lines.push_back(line);
                state.total += 1;
                drop(state);
                log.changed.notify_all();
            }
            log.lock().open_streams -= 1;
            log.changed.notify_all();
        });
    }
}

/// A running server. See the crate documentation.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    /// A stderr pipe kept open and never read, for as long as the server runs.
    _unread: Option<std::process::ChildStderr>,
    pid: u32,
    name: String,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// Whether it is a tcpchat with an HTTP listener (not `--no-http`).
    has_http: bool,
    log: Arc<Log>,
    /// The data directory the harness made for it, removed with it.
    scratch: Option<PathBuf>,
}

/// A fresh, empty directory under the system's temporary directory.
fn scratch_dir() -> io::Result<PathBuf> {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tcpchat-harness-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl ServerProcess {
    /// The plain TCP address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS address, for a tcpchat started with a certificate.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of tcpchat's HTTP listener (`/ws`, `/metrics`; HTTPS when it has
    /// a certificate), read from its `listening` line with `transport=http` or
    /// `transport=https`. That line comes right after the plain one, so this waits
    /// at most [`START_TIMEOUT`], and only if the line is missing. `None` for other
    /// servers, and for a tcpchat started with `--no-http` or that never logged it.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        if !self.has_http {
            return None;
        }
        // `https` starts with it too.
        let line = self.wait_for_listening("http")?;
        listening_address(&line)
    }

    /// The first line with a `transport` field starting with `transport`: for
    /// tcpchat, its `listening` line for that transport.
    fn wait_for_listening(&self, transport: &str) -> Option<String> {
        self.wait_for_line_after(0, |line| has_transport(line, transport), START_TIMEOUT)
    }

    /// Its process id (for /proc, or perf).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many lines it has written so far (a mark for [`Self::wait_for_log_after`]).
    pub fn log_len(&self) -> usize {
        self.log.lock().total
    }

    /// The lines kept so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().lines.iter().cloned().collect()
    }

    /// The first kept line containing `needle`, waiting up to `timeout` for one.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_log_after(0, needle, timeout)
    }

    /// The first line after line number `mark` (see [`Self::log_len`]) containing
    /// `needle`, waiting up to `timeout` for one. `None` if none came, or the server's
    /// output ended first.
    pub fn wait_for_log_after(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Option<String> {
        self.wait_for_line_after(mark, |line| line.contains(needle), timeout)
    }

    /// The first line after line number `mark` for which `wanted` holds, waiting up
    /// to `timeout` for one.
    fn wait_for_line_after(
        &self,
        mark: usize,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.lock();
        loop {
            let first = state.total - state.lines.len();
            let skip = mark.saturating_sub(first);
            if let Some(line) = state.lines.iter().skip(skip).find(|l| wanted(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline || state.open_streams == 0 {
                return None;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Sends `signal` to the server.
    ///
    /// # Errors
    /// When it has already been reaped, or the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.child.is_none() {
            return Err(io::Error::other(format!("{} has exited", self.name)));
        }
        let pid = i32::try_from(self.pid).map_err(io::Error::other)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// Waits up to `timeout` for the server to exit on its own.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let Some(child) = &mut self.child else {
            return Err(io::Error::other(format!(
                "{} was already reaped",
                self.name
            )));
        };
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and returns how the server exited, killing it if it has not
    /// exited within [`STOP_TIMEOUT`].
    ///
    /// # Errors
    /// When it did not exit in time (it is killed), or it cannot be signalled.
    pub fn stop(mut self, signal: Signal) -> io::Result<ExitStatus> {
        self.signal(signal)?;
        match self.wait_exit(STOP_TIMEOUT)? {
            Some(status) => Ok(status),
            None => Err(self.failure(&format!(
                "did not exit within {STOP_TIMEOUT:?} of {signal}; killed"
            ))),
        }
    }

    fn wait_accepting(&mut self, addr: SocketAddr) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.wait_exit(Duration::ZERO)? {
                self.settle_output();
                return Err(self.failure(&format!("exited at start ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("did not accept on {addr} in time")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (briefly) until the output of an exited server has all been read.
    fn settle_output(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut state = self.log.lock();
        while state.open_streams > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// An error naming the server and what went wrong, with the end of its output.
    fn failure(&self, what: &str) -> io::Error {
        let state = self.log.lock();
        let tail: Vec<&str> = state
            .lines
            .iter()
            .rev()
            .take(20)
            .rev()
            .map(String::as_str)
            .collect();
        io::Error::other(format!(
            "{} {what}; its last output:\n{}",
            self.name,
            tail.join("\n")
        ))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_give_their_address() {
        let line = "2026-11-29T08:00:00Z  INFO tcpchat::server: listening address=127.0.0.1:41234 transport=tcp";
        assert_eq!(
            listening_address(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(listening_address("listening"), None);
        let http = "2026-11-29T08:00:00Z  INFO tcpchat::server: listening address=127.0.0.1:41235 transport=http";
        assert_eq!(
            listening_address(http),
            Some("127.0.0.1:41235".parse().unwrap())
        );
        assert!(has_transport(line, "tcp") && has_transport(http, "http"));
        assert!(!has_transport(line, "tls"));
    }

    #[test]
    fn json_listening_lines_give_their_address() {
        let line = r#"{"timestamp":"2026-11-29T08:00:00Z","level":"INFO","message":"listening","address":"127.0.0.1:41234","transport":"tcp","target":"tcpchat::server"}"#;
        assert_eq!(
            listening_address(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert!(has_transport(line, "tcp"));
        let https = r#"{"message":"listening","address":"[::1]:41235","transport":"https"}"#;
        assert_eq!(
            listening_address(https),
            Some("[::1]:41235".parse().unwrap())
        );
        assert!(has_transport(https, "http") && !has_transport(https, "tcp"));
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported_with_its_output() {
        let port = free_port().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let error = Spec::listening("sh", addr)
            .args(["-c", "echo no such luck >&2; exit 3"])
            .start()
            .unwrap_err()
            .to_string();
        assert!(error.contains("exited at start"), "{error}");
        assert!(error.contains("no such luck"), "{error}");
    }
}
