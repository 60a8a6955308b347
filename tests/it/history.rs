//! The room's log as clients see it: tags, `history=N`, `since=SEQ`, message ids,
//! name reclaim, and a room that goes on from its log after a restart.

use std::time::Duration;

use crate::common::*;
use rstest::rstest;

/// One tagged line, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tagged {
    seq: u64,
    time: String,
    id: Option<String>,
    text: String,
}

/// Parses `@seq=N;time=T[;id=X] TEXT`, checking the exact shape.
fn tagged(line: &str) -> Tagged {
    let (tags, text) = line
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(' '))
        .unwrap_or_else(|| panic!("not a tagged line: {line:?}"));
    let mut parts = tags.split(';');
    let seq = parts
        .next()
        .and_then(|p| p.strip_prefix("seq="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {line:?}"));
    let time = parts
        .next()
        .and_then(|p| p.strip_prefix("time="))
        .unwrap_or_else(|| panic!("no time in {line:?}"))
        .to_owned();
    let id = parts.next().map(|p| {
        p.strip_prefix("id=")
            .unwrap_or_else(|| panic!("bad tag in {line:?}"))
            .to_owned()
    });
    assert_eq!(parts.next(), None, "extra tags in {line:?}");
    // 2026-11-29T05:41:07.123Z
    let shape = time.len() == 24
        && time.ends_with('Z')
        && time.as_bytes()[10] == b'T'
        && time.as_bytes()[19] == b'.';
    assert!(shape, "time is not UTC with milliseconds: {time:?}");
    Tagged {
        seq,
        time,
        id,
        text: text.to_owned(),
    }
}

/// The `@seq=N` of a tagged welcome line.
fn welcome_seq(line: &str) -> u64 {
    let rest = line
        .strip_prefix("@seq=")
        .unwrap_or_else(|| panic!("not a tagged welcome: {line:?}"));
    let (seq, text) = rest.split_once(' ').expect("welcome text");
    assert_eq!(text, WELCOME);
    seq.parse().expect("welcome seq")
}

/// A viewer with `tags` and `options`; returns it and its welcome's seq.
async fn tagged_viewer(target: impl Into<Target>, options: &str) -> (Client, u64) {
    let mut client = Client::connect(target).await;
    client
        .send(format!("viewer tags {options}\n").as_bytes())
        .await;
    let seq = welcome_seq(&client.line().await);
    (client, seq)
}

/// A chatter with `tags` and `options`: it, its welcome's seq and its secret.
async fn tagged_chatter(
    target: impl Into<Target>,
    name: &str,
    options: &str,
) -> (Client, u64, String) {
    let mut client = Client::connect(target).await;
    client
        .send(format!("chat:{name} tags {options}\n").as_bytes())
        .await;
    let seq = welcome_seq(&client.line().await);
    let token = client.line().await;
    let secret = token
        .strip_prefix("*** token: ")
        .unwrap_or_else(|| panic!("no token line: {token:?}"))
        .to_owned();
    (client, seq, secret)
}

/// `n` tagged lines.
async fn lines(client: &mut Client, n: usize) -> Vec<Tagged> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(tagged(&client.line().await));
    }
    got
}

fn seqs(lines: &[Tagged]) -> Vec<u64> {
    lines.iter().map(|l| l.seq).collect()
}

/// Joins as `name`, posts `count` numbered messages and leaves, and waits until a
/// viewer has seen it all; returns the seq of the leave, the room's last event.
async fn post_many(server: &TestServer, name: &str, count: usize) -> u64 {
    let (mut watcher, _) = tagged_viewer(server.addr, "").await;
    let mut sender = Client::messenger(server.addr, name).await;
    let mut batch = String::new();
    for i in 0..count {
        batch.push_str(&format!("m{i}\n"));
        if batch.len() > 16 * 1024 {
            sender.send(batch.as_bytes()).await;
            batch.clear();
        }
    }
    sender.send(batch.as_bytes()).await;
    sender.finish_sending().await;
    let last_text = format!("{name} has left the chat");
    loop {
        let line = tagged(&within("the last message", watcher.line()).await);
        if line.text == last_text {
            return line.seq;
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_lines_carry_numbers_times_and_ids_byte_for_byte(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let (mut alice, seq, secret) = tagged_chatter(server.at(transport), "alice", "").await;
    assert_eq!(seq, 0, "a room that never had an event");
    assert_eq!(secret.len(), 32);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    let joined = tagged(&alice.line().await);
    assert_eq!(
        (joined.seq, joined.id, joined.text.as_str()),
        (1, None, "alice has joined the chat.")
    );
    alice.send(b"hello\n@id=Ab_9-z hi there\n").await;
    let hello = alice.line().await;
    assert_eq!(
        hello,
        format!("@seq=2;time={} alice: hello", tagged(&hello).time)
    );
    let hi = alice.line().await;
    assert_eq!(
        hi,
        format!("@seq=3;time={};id=Ab_9-z alice: hi there", tagged(&hi).time)
    );
    // The server's clock, in UTC: today.
    let today = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    assert_eq!(&tagged(&hi).time[..10], &today[..10]);

    // A plain viewer of the same room sees the same events, untagged; the welcome
    // of a tagged viewer says where the room stands.
    let (mut late, seq) = tagged_viewer(server.at(transport), "").await;
    assert_eq!(seq, 3);
    let mut plain = Client::viewer(server.at(transport)).await;
    alice.send(b"@id=x1 bye\n").await;
    assert_eq!(plain.line().await, "alice: bye");
    let bye = tagged(&late.line().await);
    assert_eq!((bye.seq, bye.id.as_deref()), (4, Some("x1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gives_the_last_n_events_then_live_ones() {
    let server = start_server(config()).await;
    let last = post_many(&server, "ann", 30).await;
    assert_eq!(last, 32, "a join, 30 messages and a leave");

    // history=0: nothing from before, the next event live.
    let (mut none, seq) = tagged_viewer(server.addr, "history=0").await;
    assert_eq!(seq, 32);
    // Fewer than kept.
    let (mut five, _) = tagged_viewer(server.addr, "history=5").await;
    // More than there are.
    let (mut all, _) = tagged_viewer(server.addr, "history=1000").await;
    let five_lines = lines(&mut five, 5).await;
    assert_eq!(seqs(&five_lines), (28..=32).collect::<Vec<_>>());
    assert_eq!(five_lines[3].text, "ann: m29");
    let all_lines = lines(&mut all, 32).await;
    assert_eq!(seqs(&all_lines), (1..=32).collect::<Vec<_>>());
    assert_eq!(all_lines[0].text, "ann has joined the chat.");

    let mut bob = Client::messenger(server.addr, "bob").await;
    bob.send(b"live\n").await;
    for viewer in [&mut none, &mut five, &mut all] {
        let joined = tagged(&viewer.line().await);
        assert_eq!(
            (joined.seq, joined.text.as_str()),
            (33, "bob has joined the chat.")
        );
        let live = tagged(&viewer.line().await);
        assert_eq!((live.seq, live.text.as_str()), (34, "bob: live"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_over_the_cap_is_capped_not_refused() {
    let server = start_server(config()).await;
    let last = post_many(&server, "ann", 10_050).await;
    let (mut viewer, seq) = tagged_viewer(server.addr, "history=50000").await;
    assert_eq!(seq, last);
    let got = lines(&mut viewer, 10_000).await;
    assert_eq!(seqs(&got), (last - 9_999..=last).collect::<Vec<_>>());
    // And then nothing more until something happens.
    viewer.assert_nothing_buffered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_resumes_exactly_and_says_what_is_no_longer_kept() {
    let server = start_server(Config {
        history_max_events: 10,
        ..config()
    })
    .await;
    let last = post_many(&server, "ann", 40).await;
    assert_eq!(last, 42);

    // At the head, and in the future: live events only.
    let (mut head, _) = tagged_viewer(server.addr, &format!("since={last}")).await;
    let (mut future, _) = tagged_viewer(server.addr, "since=1000").await;
    // Inside what is kept: exactly what came after.
    let (mut inside, _) = tagged_viewer(server.addr, &format!("since={}", last - 3)).await;
    assert_eq!(seqs(&lines(&mut inside, 3).await), vec![40, 41, 42]);
    // Before what is kept: one notice for what is gone, then the rest.
    let (mut old, _) = tagged_viewer(server.addr, "since=5").await;
    let gap = old.line().await;
    let first_kept: u64 = gap
        .strip_prefix("*** gap: events 6 to ")
        .and_then(|rest| rest.strip_suffix(" are no longer kept"))
        .unwrap_or_else(|| panic!("expected a gap notice, got {gap:?}"))
        .parse::<u64>()
        .expect("gap end")
        + 1;
    assert!(
        (10..=11).contains(&(last - first_kept + 1)),
        "the log keeps the last 10 (and up to an eighth more): {first_kept}"
    );
    let rest = lines(&mut old, (last - first_kept + 1) as usize).await;
    assert_eq!(seqs(&rest), (first_kept..=last).collect::<Vec<_>>());

    let mut bob = Client::messenger(server.addr, "bob").await;
    bob.send(b"now\n").await;
    for viewer in [&mut head, &mut future, &mut inside, &mut old] {
        let joined = tagged(&viewer.line().await);
        assert_eq!(
            (joined.seq, joined.text.as_str()),
            (43, "bob has joined the chat.")
        );
        let now = tagged(&viewer.line().await);
        assert_eq!((now.seq, now.text.as_str()), (44, "bob: now"));
    }
}

/// Messages posted while a replay is being read come after it, none lost, none
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_during_a_replay_are_neither_lost_nor_repeated() {
    let server = start_server(config()).await;
    let last = post_many(&server, "ann", 12_000).await;
    let mut talker = Client::messenger(server.addr, "bob").await;
    let talking = tokio::spawn(async move {
        for i in 0..2_000 {
            talker.send(format!("t{i}\n").as_bytes()).await;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        talker
    });
    let (mut viewer, at_join) = tagged_viewer(server.addr, "history=10000").await;
    assert!(at_join >= last);
    let talker = within("the talker", talking).await.unwrap();
    let mut got = Vec::new();
    loop {
        let line = tagged(&viewer.line().await);
        let done = line.text == "bob: t1999";
        got.push(line);
        if done {
            break;
        }
    }
    // The last 10,000 events before the viewer joined, then every event since, in
    // one unbroken run of numbers.
    let first = got[0].seq;
    assert_eq!(first, at_join - 9_999);
    assert_eq!(
        seqs(&got),
        (first..first + got.len() as u64).collect::<Vec<_>>(),
        "one unbroken run of numbers"
    );
    viewer.assert_nothing_buffered().await;
    drop(talker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_is_ignored_also_on_a_new_connection() {
    let server = start_server(config()).await;
    let (mut viewer, _) = tagged_viewer(server.addr, "").await;
    let (mut alice, _, _) = tagged_chatter(server.addr, "alice", "").await;
    alice.send(b"@id=a one\n@id=a one again\n@id=b two\n").await;
    let got = lines(&mut viewer, 3).await;
    assert_eq!(
        got.iter()
            .map(|l| (l.id.as_deref(), l.text.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (None, "alice has joined the chat."),
            (Some("a"), "alice: one"),
            (Some("b"), "alice: two"),
        ]
    );
    alice.finish_sending().await;
    let _ = alice.rest().await;
    assert_eq!(tagged(&viewer.line().await).text, "alice has left the chat");
    // Back on a new connection, resending what it was not sure of.
    let (mut alice, _, _) = tagged_chatter(server.addr, "alice", "").await;
    alice.send(b"@id=b two\n@id=c three\n").await;
    let got = lines(&mut viewer, 2).await;
    assert_eq!(got[0].text, "alice has joined the chat.");
    assert_eq!(
        (got[1].id.as_deref(), got[1].text.as_str()),
        (Some("c"), "alice: three")
    );
    // Ids are a tagged client's: an untagged one's line is its text.
    let mut plain = Client::messenger(server.addr, "carl").await;
    plain.send(b"@id=c three\n").await;
    let _joined = viewer.line().await;
    assert_eq!(tagged(&viewer.line().await).text, "carl: @id=c three");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_takes_a_name_over_a_wrong_or_used_one_does_not(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let (mut viewer, _) = tagged_viewer(server.at(transport), "").await;
    let (mut old, _, secret) = tagged_chatter(server.at(transport), "alice", "").await;
    old.send(b"first\n").await;
    let seen = lines(&mut viewer, 2).await;
    let last_seen = seen[1].seq;

    let mut wrong = Client::connect(server.at(transport)).await;
    wrong
        .send(b"chat:alice tags token=0123456789abcdef0123456789abcdef\n")
        .await;
    assert_eq!(
        wrong.line().await,
        "*** error name-taken: the name \"alice\" is already taken"
    );
    wrong.expect_closed().await;

    // The right one: the name moves at once, the old connection is told and closed,
    // the new one resumes where it wants.
    let mut new = Client::connect(server.at(transport)).await;
    new.send(format!("chat:alice tags token={secret} since={}\n", last_seen - 1).as_bytes())
        .await;
    assert_eq!(welcome_seq(&new.line().await), last_seen);
    let renewed = new.line().await;
    let new_secret = renewed.strip_prefix("*** token: ").expect("a new secret");
    assert_ne!(new_secret, secret, "a secret is good for one takeover");
    assert_eq!(tagged(&new.line().await).text, "alice: first");
    let rest = String::from_utf8(old.rest().await).unwrap();
    assert!(
        rest.ends_with(
            "*** error replaced: a new connection took this name over with its secret\n"
        ),
        "{rest:?}"
    );
    new.send(b"second\n").await;
    let next = tagged(&viewer.line().await);
    assert_eq!(
        (next.seq, next.text.as_str()),
        (last_seen + 1, "alice: second"),
        "no leave and no second join in between"
    );

    // The old secret, used again, is just a wrong one.
    let mut replayed = Client::connect(server.at(transport)).await;
    replayed
        .send(format!("chat:alice tags token={secret}\n").as_bytes())
        .await;
    assert_eq!(
        replayed.line().await,
        "*** error name-taken: the name \"alice\" is already taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_plain_viewers_see_what_they_always_saw() {
    let server = start_server(config()).await;
    let _before = post_many(&server, "ann", 3).await;
    let mut seed = Client::seed_viewer(server.addr).await;
    let mut plain = Client::viewer(server.addr).await;
    let mut bob = Client::messenger(server.addr, "bob").await;
    bob.send(b"@id=q hi\n").await;
    seed.expect_bytes(b"bob has joined the chat.bob: @id=q hi")
        .await;
    assert_eq!(plain.line().await, "bob has joined the chat.");
    assert_eq!(plain.line().await, "bob: @id=q hi");
    seed.assert_nothing_buffered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_goes_on_from_its_log() {
    let data = tempfile::tempdir().unwrap();
    let with_log = || Config {
        data_dir: Some(data.path().to_owned()),
        ..config()
    };
    let server = start_server(with_log()).await;
    let (mut alice, _, _) = tagged_chatter(server.addr, "alice", "").await;
    alice.send(b"@id=k1 before\n").await;
    let before = lines(&mut alice, 2).await;
    server.shutdown().await.unwrap();
    let _ = alice.rest().await;

    let server = start_server(with_log()).await;
    let (mut viewer, _) = tagged_viewer(server.addr, "history=10").await;
    // The history, then (as part of it, or live if the viewer came first) the leave
    // the restarted server announces.
    let got = lines(&mut viewer, 3).await;
    assert_eq!(got[..2], before[..], "the same numbers, times and texts");
    // The old process's member is not shown as present.
    assert_eq!(
        (got[2].seq, got[2].text.as_str()),
        (3, "alice has left the chat")
    );
    // The name is free, the numbers go on, and its ids are remembered.
    let (mut alice, _, _) = tagged_chatter(server.addr, "alice", "").await;
    alice.send(b"@id=k1 before\n@id=k2 after\n").await;
    let next = lines(&mut viewer, 2).await;
    assert_eq!(
        next.iter()
            .map(|l| (l.seq, l.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(4, "alice has joined the chat."), (5, "alice: after")]
    );
}

/// A server stopped in order closes the room: its log says who was there and left
/// then, so the next start has nobody to announce, and a replay shows the leave at
/// the time it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_in_order_logs_its_members_leaving() {
    use tcpchat::store::Store as _;
    let data = tempfile::tempdir().unwrap();
    let server = start_server(Config {
        data_dir: Some(data.path().to_owned()),
        ..config()
    })
    .await;
    let (mut alice, _, _) = tagged_chatter(server.addr, "alice", "").await;
    alice.send(b"@id=k1 hello\n").await;
    let said = lines(&mut alice, 2).await;
    server.shutdown().await.unwrap();
    let _ = alice.rest().await;
    let stopped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();

    let options = tcpchat::store::sqlite::Options::new(1000, false);
    let store = tcpchat::store::sqlite::SqliteStore::open(data.path(), &options)
        .expect("the stopped server's log opens");
    let recovered = store.recover().expect("the log reads");
    assert!(recovered.present.is_empty(), "{:?}", recovered.present);
    let events = store.read(0, 10).expect("the log reads");
    let last = events.last().expect("events");
    assert_eq!(last.seq, said[1].seq + 1);
    assert!(
        matches!(&last.kind, tcpchat::room::EventKind::Left { name } if &**name == "alice"),
        "{last:?}"
    );
    assert!(
        u128::from(last.time_ms) <= stopped_ms,
        "written at the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_nothing_is_kept_and_a_resume_is_one_gap() {
    let data = tempfile::tempdir().unwrap();
    let server = start_server(Config {
        history: tcpchat::config::Switch::Off,
        data_dir: Some(data.path().join("unused")),
        ..config()
    })
    .await;
    let last = post_many(&server, "ann", 5).await;
    let (mut viewer, seq) = tagged_viewer(server.addr, "since=2").await;
    assert_eq!(seq, last);
    assert_eq!(
        viewer.line().await,
        format!("*** gap: events 3 to {last} are no longer kept")
    );
    assert!(!data.path().join("unused").exists(), "no disk touched");
}

/// While the log cannot be written, the room waits: nothing is shown that is not
/// kept, nothing is dropped, and once the log works again everything goes on in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_log_fails_the_room_waits_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = tempfile::tempdir().unwrap();
    let broken = std::sync::Arc::new(AtomicBool::new(false));
    let store = Breakable::open(data.path(), broken.clone());
    let refused = store.refused.clone();
    let prepared =
        tcpchat::server::prepare_with_store(config(), Some(std::sync::Arc::new(store))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.serve(listener, async {
        let _ = stopped.await;
    }));

    let (mut viewer, _) = tagged_viewer(addr, "").await;
    let mut bob = Client::messenger(addr, "bob").await;
    bob.send(b"kept\n").await;
    assert_eq!(
        tagged(&viewer.line().await).text,
        "bob has joined the chat."
    );
    assert_eq!(tagged(&viewer.line().await).text, "bob: kept");

    broken.store(true, Ordering::SeqCst);
    bob.send(b"one\ntwo\n").await;
    // The lines have reached the log and been refused, and tried again: the room
    // has them, and shows them to no one.
    within("the log to refuse the lines twice", async {
        while refused.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    viewer.assert_nothing_buffered().await;

    broken.store(false, Ordering::SeqCst);
    let one = tagged(&viewer.line().await);
    let two = tagged(&viewer.line().await);
    assert_eq!((one.seq, one.text.as_str()), (3, "bob: one"));
    assert_eq!((two.seq, two.text.as_str()), (4, "bob: two"));
    let (mut late, _) = tagged_viewer(addr, "history=10").await;
    assert_eq!(seqs(&lines(&mut late, 4).await), vec![1, 2, 3, 4]);
    let _ = stop.send(());
    within("the server to stop", server).await.unwrap().unwrap();
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_who_is_in_the_room_in_bounded_lines(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut empty = Client::connect(server.at(transport)).await;
    empty.send(b"viewer members\n").await;
    assert_eq!(empty.line().await, WELCOME);
    assert_eq!(empty.line().await, "*** members 0:");

    // 70 names: a line of 64, then one of 6, sorted; a plain viewer sees none of it.
    let mut watcher = Client::viewer(server.at(transport)).await;
    let mut senders = Vec::new();
    for i in 0..70 {
        senders.push(Client::messenger(server.addr, &format!("m{i:02}")).await);
        assert_eq!(
            watcher.line().await,
            format!("m{i:02} has joined the chat.")
        );
    }
    let mut viewer = Client::connect(server.at(transport)).await;
    viewer.send(b"viewer members tags\n").await;
    welcome_seq(&viewer.line().await);
    let names: Vec<String> = (0..70).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        viewer.line().await,
        format!("*** members 70: {}", names[..64].join(" "))
    );
    assert_eq!(
        viewer.line().await,
        format!("*** members 70: {}", names[64..].join(" "))
    );
    // Then the room goes on as usual.
    drop(senders.pop());
    assert_eq!(tagged(&viewer.line().await).text, "m69 has left the chat");
    // A chatter that asks is in its own list.
    let mut zoe = Client::connect(server.at(transport)).await;
    zoe.send(b"chat:zoe members\n").await;
    assert_eq!(zoe.line().await, WELCOME);
    let list = zoe.line().await;
    assert!(list.starts_with("*** members 70: m00 "), "{list}");
    assert!(zoe.line().await.ends_with("m68 zoe"));
}
