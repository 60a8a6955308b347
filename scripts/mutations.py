#!/usr/bin/env python3
"""Removes each protection of the server in turn and reports which tests notice.

Usage: python3 scripts/mutations.py [NAME ...]   (all mutations when no name is given)

Each mutation edits the source, runs the relevant integration tests with
--no-fail-fast, records the failing tests, and restores the files with
`git checkout`. It refuses to touch a file with uncommitted changes.
Results are in docs/RELIABILITY.md ("Each protection, removed").
"""
import re
import subprocess
import sys

MUTATIONS = [
    ("connection limit ignored", ["limits"], [
        ("src/server/mod.rs", "let max_connections = accept::max_connections(&config);",
         "let max_connections = usize::MAX >> 4;")]),
    ("flood control and per-address limit off", ["limits"], [
        ("src/server/accept.rs",
         "let limited = !peer.ip().is_loopback() || shared.config.no_loopback_exemption;",
         "let limited = false && shared.config.no_loopback_exemption;")]),
    ("handshake timeout never fires", ["limits"], [
        ("src/server/tcp.rs", "let deadline = sleep(config.handshake_timeout);",
         "let deadline = sleep(Duration::from_secs(3600));")]),
    ("handshake size unchecked while waiting for the newline", ["limits"], [
        ("src/protocol/handshake.rs", "State::Line if self.buf.len() > self.max_bytes =>",
         "State::Line if false =>")]),
    ("line limit off by one", ["fuzz_corpus"], [
        ("src/protocol/line.rs", "if newline - line_start > self.max_line_bytes {",
         "if newline - line_start > self.max_line_bytes + 1 {")]),
    ("name length unchecked", ["names"], [
        ("src/protocol/name.rs", "if name.chars().count() > max_chars {",
         "if name.chars().count() > max_chars + 1000 {")]),
    ("slow-viewer policy off (a lagging viewer skips what it missed)", ["slow_viewer"], [
        ("src/hub/ring.rs", "    behind > backlog\n", "    let _ = (behind, backlog);\n    false\n"),
        ("src/server/tcp.rs",
         "            Fetch::Gone => Err(End::TooSlow {\n                behind: feed.behind(self.mode),\n            }),",
         "            Fetch::Gone => {\n                feed.next += 1;\n                Ok(false)\n            }")]),
    ("control characters passed through", ["names"], [
        ("src/protocol/text.rs", "    if !decoded.chars().any(needs_neutralizing) {", "    if true {")]),
    ("messages not split at line breaks", ["seed_mode", "names"], [
        ("src/room/mod.rs", "        for line in text::lines(bytes) {",
         "        for line in [bytes].into_iter().filter(|b| !b.is_empty()) {")]),
    ("dead-peer detection off", ["dead_peers"], [
        ("src/socket.rs",
         "    socket.set_tcp_keepalive(&keepalive)?;\n    socket.set_tcp_user_timeout(Some(dead_peer_timeout))?;\n",
         "    let _ = (keepalive, socket);\n")]),
    ("a leaving chatter not given the room up to its leave", ["line_mode"], [
        ("src/server/tcp.rs",
         "                    Some(feed) if feed.until.is_none() => {\n                        feed.until = Some(self.membership.leave_and_wait().await.unwrap_or(0));\n                        continue;\n                    }",
         "                    Some(feed) if feed.until.is_none() => return End::PeerClosed,")]),
    ("shutdown closes viewers at once instead of draining", ["shutdown"], [
        ("src/server/tcp.rs",
         "                Wake::Stop => {\n                    self.begin_drain();\n                    Ok(())\n                }",
         "                Wake::Stop => Err(End::Deadline),")]),
]


def main():
    wanted = set(sys.argv[1:])
    print("| Protection removed | Tests that failed |\n| --- | --- |")
    for name, tests, edits in MUTATIONS:
        if wanted and name not in wanted:
            continue
        paths = sorted({path for path, _, _ in edits})
        dirty = subprocess.run(["git", "status", "--porcelain", "--"] + paths,
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            sys.exit(f"uncommitted changes in {paths}; commit or stash them first")
        try:
            for path, old, new in edits:
                source = open(path).read()
                if old not in source:
                    sys.exit(f"{name}: the code to mutate is gone from {path}; update this script")
                open(path, "w").write(source.replace(old, new, 1))
            args = ["cargo", "test", "-q", "--no-fail-fast"]
            for test in tests:
                args += ["--test", test]
            out = subprocess.run(args, capture_output=True, text=True).stdout
            failed = sorted(set(re.findall(r"^    (\S+)$", out, re.M)))
            print(f"| {name} | {', '.join(failed) or 'NOTHING FAILED'} |", flush=True)
        finally:
            subprocess.run(["git", "checkout", "--"] + paths)


if __name__ == "__main__":
    main()
