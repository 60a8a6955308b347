//! Dead peers, for real: the server and the clients live in two network namespaces
//! joined by a veth pair, and the link is cut (the client's end goes down). No FIN and
//! no reset ever reach the server; it must notice on its own, within
//! `--dead-peer-timeout`, announce the messenger as gone and free its name.
//!
//! Needs root and `ip` (iproute2). CI runs as root and sets `TCPCHAT_REQUIRE_NETNS=1`,
//! which turns a missing capability into a failure; elsewhere the test says it was
//! skipped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::Spec;

use crate::common::ip;

const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Two namespaces, `server` at 10.77.0.1 and `client` at 10.77.0.2, removed on drop.
struct Namespaces {
    server: String,
    client: String,
}

impl Namespaces {
    fn create() -> Option<Self> {
        let tag = std::process::id();
        let ns = Self {
            server: format!("tcpchat-srv-{tag}"),
            client: format!("tcpchat-cli-{tag}"),
        };
        let (veth_s, veth_c) = (format!("vs{tag}"), format!("vc{tag}"));
        let ok = ip(&["netns", "add", &ns.server])
            && ip(&["netns", "add", &ns.client])
            && ip(&[
                "link", "add", &veth_s, "type", "veth", "peer", "name", &veth_c,
            ])
            && ip(&["link", "set", &veth_s, "netns", &ns.server])
            && ip(&["link", "set", &veth_c, "netns", &ns.client])
            && ns.exec_ok(
                &ns.server,
                &["ip", "addr", "add", "10.77.0.1/24", "dev", &veth_s],
            )
            && ns.exec_ok(
                &ns.client,
                &["ip", "addr", "add", "10.77.0.2/24", "dev", &veth_c],
            )
            && ns.exec_ok(&ns.server, &["ip", "link", "set", &veth_s, "up"])
            && ns.exec_ok(&ns.client, &["ip", "link", "set", &veth_c, "up"])
            && ns.exec_ok(&ns.server, &["ip", "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    fn exec_ok(&self, namespace: &str, args: &[&str]) -> bool {
        let mut full = vec!["netns", "exec", namespace];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn command(&self, namespace: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace, program]);
        command
    }

    /// Starts `tcpchat ROLE --name NAME` in `namespace` against the server at `host`;
    /// returns its keyboard (kept open: a client whose input ends, leaves) and the
    /// process, killed on drop.
    fn talker(&self, namespace: &str, role: &str, name: &str, host: &str) -> (ChildStdin, Killed) {
        let mut child = self
            .command(namespace, env!("CARGO_BIN_EXE_tcpchat"))
            .args([role, "--name", name, "--host", host, "--port", "6000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {role} {name}: {e}"));
        let keys = child.stdin.take().unwrap();
        (keys, Killed(child))
    }

    /// Takes the client's end of the link down: from the server's side, the client
    /// simply stops answering.
    fn cut(&self) {
        let veth_c = format!("vc{}", std::process::id());
        assert!(
            self.exec_ok(&self.client, &["ip", "link", "set", &veth_c, "down"]),
            "could not cut the link"
        );
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth end, and with it the pair.
        ip(&["netns", "del", &self.server]);
        ip(&["netns", "del", &self.client]);
    }
}

/// Lines a child prints, each wait bounded.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(read: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(read).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self(rx)
    }

    /// The next line, without the time the viewer puts before events.
    fn next_within(&self, limit: Duration) -> String {
        let line = self
            .0
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no line within {limit:?}"));
        crate::cli::untimed(&line).to_owned()
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_vanished_peer_is_announced_within_the_dead_peer_timeout() {
    let Some(ns) = Namespaces::create() else {
        assert!(
            std::env::var_os("TCPCHAT_REQUIRE_NETNS").is_none(),
            "TCPCHAT_REQUIRE_NETNS is set but network namespaces cannot be created (root and iproute2 needed)"
        );
        eprintln!("skipped: cannot create network namespaces (needs root and iproute2)");
        return;
    };
    let tcpchat = env!("CARGO_BIN_EXE_tcpchat");
    let timeout = format!("{}s", DEAD_PEER_TIMEOUT.as_secs());
    let _server = Spec::tcpchat(tcpchat)
        .run_by(["ip", "netns", "exec", &ns.server])
        .listen_on("0.0.0.0", 6000)
        .args([
            "--dead-peer-timeout",
            &timeout,
            "--heartbeat-interval",
            "1h",
        ])
        .start()
        .expect("start the server");

    // The witness watches from the server's own namespace, over its loopback.
    let mut watcher = ns
        .command(&ns.server, tcpchat)
        .args(["viewer", "--host", "127.0.0.1", "--port", "6000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the viewer");
    let seen = Lines::of(watcher.stdout.take().unwrap());
    let _watcher = Killed(watcher);
    assert!(
        seen.next_within(Duration::from_secs(10))
            .starts_with("Welcome")
    );

    // Across the link: an idle messenger (found by keepalive probes) and a chatter
    // that is being sent chat (found by TCP_USER_TIMEOUT on unacknowledged data).
    let (mut ghost_keys, _ghost) = ns.talker(&ns.client, "messenger", "ghost", "10.77.0.1");
    assert_eq!(
        seen.next_within(Duration::from_secs(10)),
        "ghost has joined the chat."
    );
    ghost_keys.write_all(b"still here\n").unwrap();
    assert_eq!(
        seen.next_within(Duration::from_secs(10)),
        "ghost: still here"
    );

    let (_phantom_keys, _phantom) = ns.talker(&ns.client, "chat", "phantom", "10.77.0.1");
    assert_eq!(
        seen.next_within(Duration::from_secs(10)),
        "phantom has joined the chat."
    );

    ns.cut();
    let cut = Instant::now();
    // Chat keeps flowing, so the chatter has unacknowledged data on its way.
    let (mut talk, _talker) = ns.talker(&ns.server, "messenger", "talker", "127.0.0.1");
    let bound = DEAD_PEER_TIMEOUT + Duration::from_secs(3);
    let mut gone = Vec::new();
    let mut sent = 0;
    while gone.len() < 2 {
        assert!(
            cut.elapsed() < bound,
            "not announced within {bound:?}: {gone:?}"
        );
        if sent < 20 {
            talk.write_all(format!("tick {sent}\n").as_bytes()).unwrap();
            sent += 1;
        }
        let Ok(line) = seen.0.recv_timeout(Duration::from_millis(250)) else {
            continue;
        };
        if line.ends_with("has left the chat") {
            gone.push(crate::cli::untimed(&line).to_owned());
        }
    }
    gone.sort();
    assert_eq!(
        gone,
        ["ghost has left the chat", "phantom has left the chat"]
    );
    let noticed = cut.elapsed();
    assert!(
        noticed > DEAD_PEER_TIMEOUT / 2,
        "noticed after {noticed:?}: something other than the dead-peer timer closed them"
    );

    // Both names are free again.
    let (_again_keys, _again) = ns.talker(&ns.server, "messenger", "ghost", "127.0.0.1");
    loop {
        let line = seen.next_within(Duration::from_secs(10));
        if line == "ghost has joined the chat." {
            break;
        }
        assert!(line.starts_with("talker"), "unexpected {line:?}");
    }
}
