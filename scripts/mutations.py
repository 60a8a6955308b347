#!/usr/bin/env python3
"""Removes each protection of the server in turn and reports which tests notice.

Usage: python3 scripts/mutations.py [NAME ...]   (all mutations when no name is given)

Each mutation edits the source, runs the tests that guard it with --no-fail-fast,
records the failing tests, and restores the files with `git checkout`. It refuses
to touch a file with uncommitted changes, and refuses a mutation whose code is gone
(so this script cannot silently go stale). Results are in docs/RELIABILITY.md
("Each protection, removed").
"""
import re
import subprocess
import sys

# (name, tests to run, edits). Tests are cargo test filters: "it::MODULE::" runs a
# module of the integration binary, "lib::PATH" the library's unit tests.
MUTATIONS = [
    ("WebSocket Origin not checked", ["it::websocket::"], [
        ("src/server/http.rs", "    if !origin_allowed(\n", "    if false && !origin_allowed(\n")]),
    ("WebSocket frame cut short not finished before the closing frames", ["it::websocket::"], [
        ("src/hub/member.rs", "let unfinished = if self.format.is_framed() && self.cut_short {",
         "let unfinished = if false && self.cut_short {")]),
    ("WebSocket clients that never answer pings kept", ["it::websocket::"], [
        ("src/server/stream.rs", "        if self.member.take_pinged() {",
         "        if false && self.member.take_pinged() {")]),
    ("WebSocket client frames not unmasked", ["it::websocket::", "lib::protocol::websocket"], [
        ("src/protocol/websocket.rs", "            unmask(&mut payload, header.mask);",
         "            let _ = header.mask;")]),
    ("WebSocket message size unchecked", ["it::websocket::", "lib::protocol::websocket"], [
        ("src/protocol/websocket.rs",
         "if so_far.saturating_add(header.len) > self.max_message_bytes as u64 {",
         "if so_far.saturating_add(header.len) > u64::MAX - 1 {")]),
    ("the chat page builds markup from text", ["it::browser::"], [
        ("src/server/page/app.js", "if (text !== undefined) node.textContent = text;",
         "if (text !== undefined) node.innerHTML = text;")]),
    ("cluster: names not claimed across nodes", ["it::cluster::"], [
        ("src/hub/mod.rs", "            adopted = names\n                .claim(name, request.id, request.options.token.as_deref())\n                .await?;",
         "            let _ = (names, name);")]),
    ("cluster: a gone node's members never announced", ["it::cluster::"], [
        ("src/cluster/mod.rs", "    async fn give_up(self: Arc<Self>, node: String, revision: u64) {\n",
         "    async fn give_up(self: Arc<Self>, node: String, revision: u64) {\n        if true { let _ = (node, revision); return; }\n")]),
    ("cluster: a failed append not published again", ["it::cluster::"], [
        ("src/cluster/mod.rs", "if !landed && self.append(sent.payload, &sent.id).await.is_none() {",
         "if !landed && self.expelled.is_cancelled() {")]),
    ("cluster: a restarted node ignores its log's mark", ["it::cluster::"], [
        ("src/cluster/mod.rs", "Some(mark) => (mark.message, mark.last_seq),",
         "Some(_) => (logged, logged),")]),
    ("cluster: a stopping node does not wait for its events to reach the stream", ["it::cluster::"], [
        ("src/server/mod.rs", "            settle(&unpublished, timeout).await;",
         "            let _ = (&unpublished, timeout);")]),
    ("cluster: a give-up cut short is never finished", ["it::cluster::"], [
        ("src/cluster/mod.rs", "if seen.remove(&entry.key).is_some() && entry.key != self.node {",
         "if seen.remove(&entry.key).is_some() && entry.key == \"never\" {")]),
    ("cluster: a node on a trimmed stream ignores the anchors", ["it::cluster::", "lib::cluster::numbering"], [
        ("src/cluster/numbering.rs", "let Some(base) = anchor.and_then(|anchor| self.base(anchor)) else {",
         "let Some(base) = anchor.map(|_| 0) else {")]),
    ("bans forgotten at a restart", ["it::admin::"], [
        ("src/server/mod.rs", "Switch::On => Bans::open(config.data_dir().join(\"bans\")),",
         "Switch::On => Ok(Bans::default()),")]),
    ("a server stopped in order leaves its members present in the log", ["it::history::"], [
        ("src/hub/mod.rs", "            self.room.close(&mut self.events);",
         "            let _ = &self.events;")]),
    ("a connection's place under the connection limit never given back", ["lib::server::admission"], [
        ("src/server/admission.rs", "        self.counts.places.add_permits(1);\n",
         "")]),
    ("password not checked", ["it::password::", "lib::server::password"], [
        ("src/server/password.rs", "        let Some(hash) = &self.hash else {\n            return Ok(());\n        };",
         "        let Some(hash) = self.hash.as_ref().filter(|_| false) else {\n            return Ok(());\n        };")]),
    ("password guessing not throttled", ["it::password::", "lib::server::password"], [
        ("src/server/password.rs", "            *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW\n",
         "            *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW && false\n")]),
    ("kick does nothing", ["it::admin::"], [
        ("src/hub/ring.rs", "    pub fn kick(&self) {\n", "    pub fn kick(&self) {\n        return;\n")]),
    ("bans not checked", ["it::admin::", "lib::server::bans"], [
        ("src/server/bans.rs", "        if entries.is_empty() {\n            return Ok(());", "        if true {\n            return Ok(());")]),
    ("a reload applies nothing", ["it::reload::"], [
        ("src/main.rs", "            reloader.apply(args.config.clone()).await;",
         "            let _ = (&reloader, &args);")]),
    ("connection limit ignored", ["it::limits::"], [
        ("src/server/admission.rs", "let max_connections = max_connections(config);",
         "let max_connections = usize::MAX >> 4;")]),
    ("flood control and per-address limit off", ["it::limits::", "it::departures::"], [
        ("src/server/admission.rs",
         "let limited = !(self.loopback_exempt && peer.ip().is_loopback());",
         "let limited = false && self.loopback_exempt;")]),
    ("handshake timeout never fires", ["it::limits::", "it::tls::"], [
        ("src/server/accept.rs", "deadline: Instant::now() + config.handshake_timeout,",
         "deadline: Instant::now() + Duration::from_secs(3600),")]),
    ("TLS handshake not under the handshake timeout", ["it::tls::"], [
        ("src/server/accept.rs",
         "tokio::time::timeout_at(arrival.deadline, acceptor.accept(stream))",
         "tokio::time::timeout_at(arrival.deadline + Duration::from_secs(3600), acceptor.accept(stream))")]),
    ("seed handshakes accepted over TLS", ["it::tls::"], [
        ("src/server/accept.rs", "seed_allowed: matches!(transport, Transport::Plain),",
         "seed_allowed: true,")]),
    ("handshake size unchecked while waiting for the newline", ["it::limits::"], [
        ("src/protocol/handshake.rs",
         "    fn push_line_in_progress(&mut self) -> Step {\n        if self.buf.len() > self.max_bytes {",
         "    fn push_line_in_progress(&mut self) -> Step {\n        if false {")]),
    ("line limit off by one", ["it::fuzz_corpus::"], [
        ("src/protocol/line.rs", "if newline - line_start > self.max_line_bytes {",
         "if newline - line_start > self.max_line_bytes + 1 {")]),
    ("name length unchecked", ["it::names::"], [
        ("src/room/name.rs", "if name.chars().count() > max_chars {",
         "if name.chars().count() > max_chars + 1000 {")]),
    ("slow-viewer policy off (a lagging viewer is never dropped)", ["it::slow_viewer::"], [
        ("src/hub/ring.rs", "    behind > backlog\n", "    let _ = (behind, backlog);\n    false\n"),
        ("src/hub/member.rs",
         "            Fetch::Gone => Err(End::TooSlow {\n                behind: self.behind(ring, format),\n            }),",
         "            Fetch::Gone => Ok(None),")]),
    ("control characters passed through", ["it::names::"], [
        ("src/room/text.rs", "    if !decoded.chars().any(needs_neutralizing) {", "    if true {")]),
    ("messages not split at line breaks", ["it::seed_mode::", "it::names::"], [
        ("src/room/mod.rs", "        for line in text::lines(bytes) {",
         "        for line in [bytes].into_iter().filter(|b| !b.is_empty()) {")]),
    ("dead-peer detection off", ["it::dead_peers::"], [
        ("src/socket.rs",
         "    socket.set_tcp_keepalive(&keepalive)?;\n    socket.set_tcp_user_timeout(Some(dead_peer_timeout))?;\n",
         "    let _ = (keepalive, socket);\n")]),
    ("departure of a held-back sender not checked", ["it::departures::"], [
        ("src/server/stream.rs",
         "if self.member.is_held_back() && socket::is_peer_gone(self.stream.tcp()) {",
         "if false && self.member.is_held_back() && socket::is_peer_gone(self.stream.tcp()) {")]),
    ("held-back sender woken only when its next token is due", ["lib::hub::member", "it::departures::"], [
        ("src/hub/member.rs",
         "let wait = bucket.next_token_in(now).min(HELD_BACK_DEPARTURE_CHECK);",
         "let wait = bucket.next_token_in(now);")]),
    ("flood control on the system clock", ["lib::hub::member"], [
        ("src/hub/member.rs",
         "            let now = Instant::now();\n            let wanted = text::lines(&bytes).count();",
         "            let now = Instant::from_std(std::time::Instant::now());\n            let wanted = text::lines(&bytes).count();")]),
    ("a leaving chatter not given the room up to its leave", ["it::line_mode::"], [
        ("src/hub/member.rs",
         "        if !feed.is_saying_goodbye() && input.left.is_none() && input.leave.is_none() {",
         "        if !feed.is_saying_goodbye() {\n            return Err(End::PeerClosed);\n        }\n"
         "        if !feed.is_saying_goodbye() && input.left.is_none() && input.leave.is_none() {")]),
    ("a chatter saying goodbye stops counting as a receiver at once", ["lib::hub::member"], [
        ("src/hub/mod.rs",
         "                    Some(published) => {\n                        let seq = self.room.last_seq();",
         "                    Some(published) => {\n                        self.receivers.remove(id);\n                        let seq = self.room.last_seq();")]),
    ("a chatter's leave forgotten before it is sent", ["lib::hub::member"], [
        ("src/hub/member.rs",
         "            input.left = Some(left);\n            cx.waker().wake_by_ref();",
         "            input.left = Some(left);\n            self.membership.forget();\n            cx.waker().wake_by_ref();")]),
    ("a draining chatter waits for the ring's end, not its own leave", ["lib::hub::member"], [
        ("src/hub/member.rs",
         "            f.next >= f.until || matches!(self.shared.ring.fetch(f.next), Fetch::Closed)",
         "            matches!(self.shared.ring.fetch(f.next), Fetch::Closed)")]),
    ("shutdown closes viewers at once instead of draining", ["it::shutdown::"], [
        ("src/hub/member.rs",
         "        if self.drain_deadline.is_none() && self.shared.is_stopping() {\n            self.begin_drain();",
         "        if self.drain_deadline.is_none() && self.shared.is_stopping() {\n            return Err(End::Deadline);")]),
    ("shutdown deadline ignored", ["it::shutdown::"], [
        ("src/hub/member.rs",
         "            && deadline.as_mut().poll(cx).is_ready()\n        {\n            return Err(End::Deadline);",
         "            && false\n            && deadline.as_mut().poll(cx).is_ready()\n        {\n            return Err(End::Deadline);")]),
    ("events shown before the log has them", ["it::history::", "it::crash::"], [
        ("src/hub/log.rs",
         "        if !append_until_done(store, &events, mark, hub_stopped, report) {",
         "        let _ = done.send(events.clone());\n        if !append_until_done(store, &events, mark, hub_stopped, report) {"),
        ("src/hub/log.rs",
         "        if done.send(events).is_err() {\n            return;\n        }",
         "        let _ = events;")]),
    ("a replay ends one event before the live feed starts", ["it::history::"], [
        ("src/hub/mod.rs", "                    last_seq: self.published_seq,",
         "                    last_seq: self.published_seq.saturating_sub(1),")]),
    ("repeated message ids not ignored", ["it::history::"], [
        ("src/room/mod.rs", "                Some(id) if self.recent_ids.contains(&name, id) => continue,",
         "                Some(id) if false && self.recent_ids.contains(&name, id) => continue,")]),
    ("any secret takes a name over", ["it::history::"], [
        ("src/room/mod.rs",
         "        bool::from(secret.as_bytes().ct_eq(presented.as_bytes())).then_some(holder)",
         "        let _ = (secret, presented);\n        Some(holder)")]),
    ("a replaced connection is not closed", ["it::history::"], [
        ("src/hub/member.rs", "        if self.waker.is_replaced() {",
         "        if false && self.waker.is_replaced() {")]),
    ("members of a killed server never shown leaving", ["it::history::", "it::crash::"], [
        ("src/hub/mod.rs", "        owner.room.farewell(name, &mut owner.events);",
         "        let _ = name;")]),
    ("retention keeps one event too few", ["lib::store::"], [
        ("src/store/sqlite.rs", "            let keep_from = last.seq + 1 - self.max_events;",
         "            let keep_from = last.seq + 2 - self.max_events;")]),
    ("a gap in a replay not told", ["it::history::"], [
        ("src/hub/replay.rs",
         "        if event.seq > next {\n            gap(&mut out, format, next, event.seq - 1);\n        }",
         "        let _ = gap;")]),
    ("a departure's messages not counted", ["it::logs::"], [
        ("src/hub/member.rs", "self.messages += lines;", "let _ = lines;")]),
    ("a reset reported as a close", ["it::logs::"], [
        ("src/hub/member.rs", "ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {\n            \"reset\"",
         "ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {\n            \"closed\"")]),
    ("summary rates counted from the start, not the last line", ["it::logs::"], [
        ("src/logging.rs", "        before = now;\n", "")]),
    ("log writes that panic on a closed stderr", ["it::cli::"], [
        ("src/logging.rs", "        .with_writer(writer)\n", "        .with_writer(std::io::stderr)\n"),
        ("src/logging.rs", "        .log_internal_errors(false);\n", "        .log_internal_errors(true);\n"),
        ("src/logging.rs", "    let (writer, guard) =", "    let (_writer, guard) =")]),
]


def cargo_args(tests):
    """One cargo invocation per kind of test binary."""
    runs = []
    lib = [t[len("lib::"):] for t in tests if t.startswith("lib::")]
    it = [t[len("it::"):] for t in tests if t.startswith("it::")]
    if lib:
        runs.append(["cargo", "test", "-q", "-p", "tcpchat", "--no-fail-fast", "--lib", "--"] + lib)
    if it:
        runs.append(["cargo", "test", "-q", "-p", "tcpchat", "--no-fail-fast", "--test", "it", "--"] + it)
    return runs


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
            failed = set()
            for args in cargo_args(tests):
                run = subprocess.run(args, capture_output=True, text=True)
                failed |= set(re.findall(r"^    (\S+)$", run.stdout, re.M))
                if run.returncode != 0 and not failed and "error[" in run.stderr:
                    failed.add("(does not compile)")
            print(f"| {name} | {', '.join(sorted(failed)) or 'NOTHING FAILED'} |", flush=True)
        finally:
            subprocess.run(["git", "checkout", "--"] + paths)


if __name__ == "__main__":
    main()
