//! The session against a stand-in server that follows the history-and-resume
//! contract (tags, history, since, tokens, ids), over real loopback sockets. The
//! stand-in can be killed and brought back on the same port with its log, as a
//! server with a data directory would, and can misbehave on purpose (lose a
//! connection right after storing a line, fall silent, refuse the new options).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::*;
use crate::client::outbox::IdGen;

/// Longest any expectation waits.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    id: Option<String>,
    text: String,
}

impl Stored {
    fn tagged(&self) -> String {
        let id = self
            .id
            .as_ref()
            .map(|id| format!(";id={id}"))
            .unwrap_or_default();
        format!(
            "@seq={};time=2026-11-29T05:41:07.123Z{id} {}\n",
            self.seq, self.text
        )
    }
}

struct Holder {
    token: String,
    conn: u64,
    kick: Option<oneshot::Sender<()>>,
}

/// The room's state, which outlives a "restart".
struct Room {
    events: Vec<Stored>,
    /// Events before this seq are no longer kept.
    kept_from: u64,
    ids: HashSet<(String, String)>,
    holders: HashMap<String, Holder>,
    live: broadcast::Sender<Stored>,
    tokens: u64,
    conns: u64,
    /// Refuse the history options, as a server from before them.
    legacy: bool,
    /// Store the next message, then drop its sender's connection before it sees it.
    lose_after_storing: bool,
    /// Read nothing and send nothing on this connection from now on, and do not
    /// notice when it closes.
    mute: Option<u64>,
}

impl Room {
    fn new() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            events: Vec::new(),
            kept_from: 1,
            ids: HashSet::new(),
            holders: HashMap::new(),
            live: broadcast::channel(1024).0,
            tokens: 0,
            conns: 0,
            legacy: false,
            lose_after_storing: false,
            mute: None,
        }))
    }

    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }

    fn push(&mut self, id: Option<String>, text: String) {
        let event = Stored {
            seq: self.last_seq() + 1,
            id,
            text,
        };
        self.events.push(event.clone());
        let _ = self.live.send(event);
    }

    fn texts(&self) -> Vec<String> {
        self.events.iter().map(|e| e.text.clone()).collect()
    }
}

/// A stand-in server on a loopback port.
struct Fake {
    addr: SocketAddr,
    room: Arc<Mutex<Room>>,
    accept: JoinHandle<()>,
}

impl Fake {
    async fn start(room: Arc<Mutex<Room>>, addr: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_room = room.clone();
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                conns.spawn(serve(stream, accept_room.clone()));
            }
        });
        Self { addr, room, accept }
    }

    /// Kills the server (every connection just closes) and brings it back on the
    /// same port: the members of the old process are logged as leaving.
    async fn restart(self) -> Self {
        self.accept.abort();
        let _ = self.accept.await;
        {
            let mut room = self.room.lock().unwrap();
            let mut names: Vec<String> = room.holders.drain().map(|(name, _)| name).collect();
            names.sort();
            for name in names {
                room.push(None, format!("{name} has left the chat"));
            }
        }
        Self::start(self.room, Some(self.addr)).await
    }

    /// Kills the server and keeps it down.
    async fn kill(self) -> (Arc<Mutex<Room>>, SocketAddr) {
        self.accept.abort();
        let _ = self.accept.await;
        (self.room, self.addr)
    }

    fn server(&self) -> Server {
        Server {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            tls: None,
        }
    }
}

async fn serve(stream: TcpStream, room: Arc<Mutex<Room>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let Ok(Some(hello)) = lines.next_line().await else {
        return;
    };
    let mut words = hello.split(' ');
    let role = words.next().unwrap_or_default().to_owned();
    let (mut since, mut history, mut token) = (None, None, None);
    let legacy = room.lock().unwrap().legacy;
    for word in words {
        match word.split_once('=') {
            _ if word == "heartbeat" || word == "goodbye" => {}
            _ if word == "tags" && !legacy => {}
            Some(("since", n)) if !legacy => since = n.parse::<u64>().ok(),
            Some(("history", n)) if !legacy => history = n.parse::<usize>().ok(),
            Some(("token", t)) if !legacy => token = Some(t.to_owned()),
            _ => {
                let refusal = format!("*** error unknown-option: unknown option {word:?}\n");
                let _ = write.write_all(refusal.as_bytes()).await;
                return;
            }
        }
    }
    let name = role.strip_prefix("chat:").map(str::to_owned);
    let joined = (|| {
        let mut room = room.lock().unwrap();
        room.conns += 1;
        let conn = room.conns;
        let mut new_token = None;
        let mut kicked = None;
        let mut joined = false;
        if let Some(name) = &name {
            let (kick, kick_rx) = oneshot::channel();
            kicked = Some(kick_rx);
            match room.holders.get_mut(name) {
                Some(holder) if token.as_ref() == Some(&holder.token) => {
                    if let Some(kick) = holder.kick.take() {
                        let _ = kick.send(());
                    }
                    holder.conn = conn;
                    holder.kick = Some(kick);
                }
                Some(_) => return Err(name.clone()),
                None => {
                    room.tokens += 1;
                    let secret = format!("secret{}", room.tokens);
                    room.holders.insert(
                        name.clone(),
                        Holder {
                            token: secret.clone(),
                            conn,
                            kick: Some(kick),
                        },
                    );
                    new_token = Some(secret);
                    joined = true;
                }
            }
        }
        let live = room.live.subscribe();
        let last = room.last_seq();
        let mut replay = Vec::new();
        if let Some(since) = since {
            if since + 1 < room.kept_from && room.kept_from <= last {
                replay.push(format!(
                    "*** gap: events {} to {} are no longer kept\n",
                    since + 1,
                    room.kept_from - 1
                ));
            }
            let kept_from = room.kept_from;
            replay.extend(
                room.events
                    .iter()
                    .filter(|e| e.seq > since && e.seq >= kept_from)
                    .map(Stored::tagged),
            );
        } else if let Some(n) = history {
            let skip = room.events.len().saturating_sub(n);
            replay.extend(room.events[skip..].iter().map(Stored::tagged));
        }
        if joined && let Some(name) = &name {
            room.push(None, format!("{name} has joined the chat."));
        }
        Ok((conn, live, last, replay, new_token, kicked))
    })();
    let (conn, mut live, welcome_seq, replay, new_token, mut kicked) = match joined {
        Ok(joined) => joined,
        Err(name) => {
            let refusal = format!("*** error name-taken: the name \"{name}\" is already taken\n");
            let _ = write.write_all(refusal.as_bytes()).await;
            return;
        }
    };
    let welcome = if legacy {
        "Welcome to the \"Fake\" Chat Server!\n".to_owned()
    } else {
        format!("@seq={welcome_seq} Welcome to the \"Fake\" Chat Server!\n")
    };
    let mut out = welcome;
    if let Some(secret) = new_token {
        out.push_str(&format!("*** token: {secret}\n"));
    }
    out.extend(replay);
    if write.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else {
                    if room.lock().unwrap().mute == Some(conn) {
                        // As a server that has not noticed the peer is gone (the
                        // network between them is): the name stays held until
                        // taken over.
                        if let Some(kicked) = kicked.take() {
                            let _ = kicked.await;
                        }
                        return;
                    }
                    break;
                };
                let Some(name) = &name else { continue };
                let mut room = room.lock().unwrap();
                if room.mute == Some(conn) {
                    continue;
                }
                let (id, text) = match line.strip_prefix("@id=").and_then(|l| l.split_once(' ')) {
                    Some((id, text)) => (Some(id.to_owned()), text.to_owned()),
                    None => (None, line.clone()),
                };
                if let Some(id) = &id
                    && !room.ids.insert((name.clone(), id.clone()))
                {
                    continue;
                }
                let lose = std::mem::take(&mut room.lose_after_storing);
                room.push(if legacy { None } else { id }, format!("{name}: {text}"));
                if lose {
                    // Gone before the event reaches the sender; no leave either
                    // (as a server that has not noticed yet).
                    return;
                }
            }
            event = live.recv() => {
                let Ok(event) = event else { break };
                if event.seq <= welcome_seq || room.lock().unwrap().mute == Some(conn) {
                    continue;
                }
                let line = if legacy {
                    format!("{}\n", event.text)
                } else {
                    event.tagged()
                };
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            _ = async { kicked.as_mut().unwrap().await }, if kicked.is_some() => {
                let _ = write.write_all(b"*** error replaced: the name was taken over with its token\n").await;
                return;
            }
        }
    }
    if let Some(name) = &name {
        let mut room = room.lock().unwrap();
        if room.holders.get(name).is_some_and(|h| h.conn == conn) {
            room.holders.remove(name);
            room.push(None, format!("{name} has left the chat"));
        }
    }
}

/// Fast backoff and short limits, for tests.
fn options(fake: &Fake, name: Option<&str>) -> SessionOptions {
    SessionOptions {
        name: name.map(str::to_owned),
        backoff: Backoff::with_seed(Duration::from_millis(20), Duration::from_millis(100), 1),
        ids: IdGen::with_prefix("t"),
        leave_timeout: Duration::from_secs(2),
        ..SessionOptions::viewer(fake.server())
    }
}

async fn next(session: &mut Session) -> Update {
    tokio::time::timeout(WAIT, session.next())
        .await
        .expect("an update in time")
        .expect("the session goes on")
}

/// Updates until one matches, that one included.
async fn updates_until(session: &mut Session, done: impl Fn(&Update) -> bool) -> Vec<Update> {
    let mut updates = Vec::new();
    loop {
        let update = next(session).await;
        let last = done(&update);
        updates.push(update);
        if last {
            return updates;
        }
    }
}

/// The texts of the events shown until one matches, that one included.
async fn shown_until(session: &mut Session, done: impl Fn(&Update) -> bool) -> Vec<String> {
    updates_until(session, done)
        .await
        .into_iter()
        .filter_map(|update| match update {
            Update::Event(event) => Some(event.text),
            _ => None,
        })
        .collect()
}

fn is_event(text: &str) -> impl Fn(&Update) -> bool + '_ {
    move |update| matches!(update, Update::Event(e) if e.text == text)
}

async fn finish(session: Session) -> Result<(), ClientError> {
    tokio::time::timeout(WAIT, session.finish())
        .await
        .expect("the session ends in time")
}

#[tokio::test]
async fn history_then_live_events_each_once() {
    let room = Room::new();
    {
        let mut room = room.lock().unwrap();
        for i in 1..=5 {
            room.push(None, format!("old: {i}"));
        }
    }
    let fake = Fake::start(room, None).await;
    let mut viewer = Session::start(SessionOptions {
        history: 2,
        ..options(&fake, None)
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut viewer).await,
        Update::Welcome("Welcome to the \"Fake\" Chat Server!".into())
    );
    let mut bob = Session::start(SessionOptions {
        history: 0,
        ..options(&fake, Some("bob"))
    })
    .await
    .unwrap();
    bob.send("hi").unwrap();
    let seen = shown_until(&mut viewer, is_event("bob: hi")).await;
    assert_eq!(
        seen,
        ["old: 4", "old: 5", "bob has joined the chat.", "bob: hi"]
    );
    // bob asked for no history: only what happened since he came.
    let seen = shown_until(&mut bob, is_event("bob: hi")).await;
    assert_eq!(seen, ["bob has joined the chat.", "bob: hi"]);
    bob.leave();
    while bob.next().await.is_some() {}
    finish(bob).await.unwrap();
    let seen = shown_until(&mut viewer, is_event("bob has left the chat")).await;
    assert_eq!(seen, ["bob has left the chat"]);
}

#[tokio::test]
async fn a_restart_loses_nothing_and_doubles_nothing() {
    let fake = Fake::start(Room::new(), None).await;
    let mut bob = Session::start(options(&fake, Some("bob"))).await.unwrap();
    bob.send("one").unwrap();
    shown_until(&mut bob, is_event("bob: one")).await;

    // Down, with lines typed meanwhile.
    let (room, addr) = fake.kill().await;
    let lost = next(&mut bob).await;
    assert!(matches!(lost, Update::Lost { .. }), "{lost:?}");
    bob.send("two").unwrap();
    bob.send("three\nfour").unwrap();
    let mut queued = Vec::new();
    while queued.len() < 3 {
        match next(&mut bob).await {
            Update::Queued { text } => queued.push(text),
            Update::Retrying { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(queued, ["two", "three", "four"]);
    {
        let mut room = room.lock().unwrap();
        let mut names: Vec<String> = room.holders.drain().map(|(name, _)| name).collect();
        names.sort();
        for name in names {
            room.push(None, format!("{name} has left the chat"));
        }
    }
    let fake = Fake::start(room, Some(addr)).await;
    let seen = shown_until(&mut bob, is_event("bob: four")).await;
    assert_eq!(
        seen,
        [
            "bob has left the chat",
            "bob has joined the chat.",
            "bob: two",
            "bob: three",
            "bob: four"
        ]
    );
    // Everyone else sees the same room.
    let mut viewer = Session::start(SessionOptions {
        history: 100,
        ..options(&fake, None)
    })
    .await
    .unwrap();
    let seen = shown_until(&mut viewer, is_event("bob: four")).await;
    assert_eq!(
        seen,
        [
            "bob has joined the chat.",
            "bob: one",
            "bob has left the chat",
            "bob has joined the chat.",
            "bob: two",
            "bob: three",
            "bob: four"
        ]
    );

    // And once more, through the harness-like restart helper, with a line in flight.
    let fake = fake.restart().await;
    bob.send("five").unwrap();
    shown_until(&mut bob, is_event("bob: five")).await;
    let texts = fake.room.lock().unwrap().texts();
    let fives = texts.iter().filter(|t| *t == "bob: five").count();
    assert_eq!(fives, 1, "{texts:?}");
    bob.leave();
    while bob.next().await.is_some() {}
    finish(bob).await.unwrap();
}

#[tokio::test]
async fn a_line_stored_just_before_the_connection_dropped_is_not_sent_twice() {
    let fake = Fake::start(Room::new(), None).await;
    let mut bob = Session::start(options(&fake, Some("bob"))).await.unwrap();
    fake.room.lock().unwrap().lose_after_storing = true;
    bob.send("once").unwrap();
    bob.send("after").unwrap();
    let updates = shown_until(&mut bob, is_event("bob: after")).await;
    assert_eq!(
        updates,
        ["bob has joined the chat.", "bob: once", "bob: after"]
    );
    let texts = fake.room.lock().unwrap().texts();
    // The name was reclaimed with the token: no leave, no second join.
    assert_eq!(
        texts,
        ["bob has joined the chat.", "bob: once", "bob: after"]
    );
}

#[tokio::test]
async fn a_silent_server_is_left_for_a_new_connection_that_reclaims_the_name() {
    let fake = Fake::start(Room::new(), None).await;
    let mut bob = Session::start(SessionOptions {
        silence_limit: Duration::from_millis(300),
        ..options(&fake, Some("bob"))
    })
    .await
    .unwrap();
    shown_until(&mut bob, is_event("bob has joined the chat.")).await;
    // bob's is the first connection.
    fake.room.lock().unwrap().mute = Some(1);
    bob.send("into the void").unwrap();
    let lost = next(&mut bob).await;
    assert!(
        matches!(&lost, Update::Lost { reason, .. } if reason.contains("silent")),
        "{lost:?}"
    );
    assert_eq!(next(&mut bob).await, Update::Reconnected);
    let seen = shown_until(&mut bob, is_event("bob: into the void")).await;
    assert_eq!(seen, ["bob: into the void"]);
    assert_eq!(
        fake.room.lock().unwrap().texts(),
        ["bob has joined the chat.", "bob: into the void"]
    );
}

#[tokio::test]
async fn a_gap_in_the_log_is_said_once() {
    let fake = Fake::start(Room::new(), None).await;
    let mut viewer = Session::start(options(&fake, None)).await.unwrap();
    next(&mut viewer).await;
    let fake = {
        let (room, addr) = fake.kill().await;
        {
            let mut room = room.lock().unwrap();
            for i in 1..=4 {
                room.push(None, format!("x: {i}"));
            }
            room.kept_from = 3;
        }
        Fake::start(room, Some(addr)).await
    };
    let updates = updates_until(&mut viewer, is_event("x: 4")).await;
    let shown: Vec<String> = updates
        .iter()
        .filter_map(|update| match update {
            Update::Event(event) => Some(event.text.clone()),
            Update::Notice(line) => Some(line.clone()),
            Update::Reconnected => Some("reconnected".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        shown,
        [
            "reconnected",
            "*** gap: events 1 to 2 are no longer kept",
            "x: 3",
            "x: 4"
        ]
    );
    drop(fake);
}

#[tokio::test]
async fn a_taken_name_or_a_replaced_session_ends_it() {
    let fake = Fake::start(Room::new(), None).await;
    let _bob = Session::start(options(&fake, Some("bob"))).await.unwrap();
    let refused = Session::start(options(&fake, Some("bob"))).await;
    assert!(
        matches!(&refused, Err(ClientError::Refused { code, .. }) if code == "name-taken"),
        "{:?}",
        refused.err()
    );
    // Someone else with bob's token takes over: the old session ends, for good.
    let mut old = Session::start(options(&fake, Some("ann"))).await.unwrap();
    shown_until(&mut old, is_event("ann has joined the chat.")).await;
    let token = fake.room.lock().unwrap().holders["ann"].token.clone();
    let mut thief = TcpStream::connect(fake.addr).await.unwrap();
    thief
        .write_all(format!("chat:ann tags token={token}\n").as_bytes())
        .await
        .unwrap();
    while old.next().await.is_some() {}
    let ended = finish(old).await;
    assert!(
        matches!(&ended, Err(ClientError::Closed { reason: Some(r) }) if r.contains("taken over")),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_server_without_history_is_spoken_to_as_before() {
    let room = Room::new();
    room.lock().unwrap().legacy = true;
    let fake = Fake::start(room, None).await;
    let mut bob = Session::start(options(&fake, Some("bob"))).await.unwrap();
    assert_eq!(
        next(&mut bob).await,
        Update::Welcome("Welcome to the \"Fake\" Chat Server!".into())
    );
    assert_eq!(
        next(&mut bob).await,
        Update::Line("bob has joined the chat.".into())
    );
    bob.send("plain").unwrap();
    assert_eq!(next(&mut bob).await, Update::Line("bob: plain".into()));
    // Without seqs nothing could be resumed: a lost connection ends the session.
    let _down = fake.kill().await;
    while bob.next().await.is_some() {}
    assert!(matches!(
        finish(bob).await,
        Err(ClientError::Closed { reason: None })
    ));
}

#[tokio::test]
async fn leaving_waits_for_unsent_lines_then_gives_up_and_says_so() {
    let fake = Fake::start(Room::new(), None).await;
    let mut bob = Session::start(SessionOptions {
        leave_timeout: Duration::from_millis(300),
        ..options(&fake, Some("bob"))
    })
    .await
    .unwrap();
    shown_until(&mut bob, is_event("bob has joined the chat.")).await;
    let _down = fake.kill().await;
    shown_until(&mut bob, |u| matches!(u, Update::Lost { .. })).await;
    bob.send("never").unwrap();
    bob.leave();
    let mut leaving = false;
    while let Some(update) = tokio::time::timeout(WAIT, bob.next()).await.unwrap() {
        leaving |= matches!(update, Update::Leaving { pending: 1, .. });
    }
    assert!(leaving);
    assert!(matches!(
        finish(bob).await,
        Err(ClientError::Undelivered { lines: 1 })
    ));
}

#[tokio::test]
async fn lines_over_the_limit_are_refused_whole() {
    let fake = Fake::start(Room::new(), None).await;
    let bob = Session::start(SessionOptions {
        max_line_bytes: 10,
        ..options(&fake, Some("bob"))
    })
    .await
    .unwrap();
    assert_eq!(
        bob.send("short\nmuch too long"),
        Err(TooLong { bytes: 13, max: 10 })
    );
    assert_eq!(bob.send("\n\r\n"), Ok(()));
}

#[tokio::test]
async fn a_server_that_stays_down_is_news_once_not_at_every_attempt() {
    let fake = Fake::start(Room::new(), None).await;
    let mut viewer = Session::start(options(&fake, None)).await.unwrap();
    next(&mut viewer).await;
    let _down = fake.kill().await;
    // About ten attempts (20 ms doubling to 100 ms) in a second.
    let mut updates = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(update) = tokio::time::timeout_at(until, viewer.next()).await {
        updates.push(update.unwrap());
    }
    assert!(matches!(updates[0], Update::Lost { .. }), "{updates:?}");
    let retrying: Vec<&Update> = updates
        .iter()
        .filter(|u| matches!(u, Update::Retrying { .. }))
        .collect();
    assert_eq!(retrying.len(), 1, "{updates:?}");
}

#[tokio::test]
async fn a_server_without_member_lists_is_joined_without_them() {
    // The stand-in refuses `members` as a server from before it would.
    let fake = Fake::start(Room::new(), None).await;
    let mut bob = Session::start(SessionOptions {
        members: true,
        ..options(&fake, Some("bob"))
    })
    .await
    .unwrap();
    shown_until(&mut bob, is_event("bob has joined the chat.")).await;
    bob.send("still tagged").unwrap();
    shown_until(&mut bob, is_event("bob: still tagged")).await;
    bob.who();
    assert_eq!(
        next(&mut bob).await,
        Update::Members {
            names: None,
            connected: true
        }
    );
    bob.leave();
    assert!(finish(bob).await.is_ok());
}

/// A program that does not keep up (a slow terminal, a pipe) holds a bounded number
/// of updates: the session stops reading, so the server is pushed back (and would drop
/// a viewer too far behind); once the program reads, every line arrives, in order.
#[tokio::test]
async fn a_program_that_falls_behind_pushes_back_on_the_server() {
    const LINES: u64 = 100_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (wrote_tx, mut wrote) = tokio::sync::watch::channel(0u64);
    let flood = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let _hello = lines.next_line().await;
        let welcome = "@seq=0 Welcome to the \"Flood\" Chat Server!\n";
        write.write_all(welcome.as_bytes()).await.unwrap();
        let mut chunk = String::new();
        for seq in 1..=LINES {
            chunk.push_str(&format!(
                "@seq={seq};time=2026-11-29T05:41:07.123Z line {seq}\n"
            ));
            if seq % 100 == 0 {
                if write.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                chunk.clear();
                let _ = wrote_tx.send(seq);
            }
        }
        // Open until the viewer goes.
        let _ = lines.next_line().await;
    });
    let server = Server {
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    let mut viewer = Session::start(SessionOptions::viewer(server))
        .await
        .unwrap();
    // The program reads nothing until the server has stopped getting anywhere: its
    // writes wait for the session, which waits for the program.
    let mut stalled_at = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), wrote.changed()).await {
            Ok(Ok(())) => stalled_at = *wrote.borrow(),
            Ok(Err(_)) => panic!("the server gave up"),
            Err(_) => break,
        }
    }
    assert!(
        stalled_at < LINES,
        "the server wrote all {LINES} lines to a program that read none"
    );
    let queued = viewer.queued();
    assert!(
        queued <= MAX_QUEUED_UPDATES + 2,
        "{queued} updates held for a program that reads none"
    );
    assert_eq!(
        next(&mut viewer).await,
        Update::Welcome("Welcome to the \"Flood\" Chat Server!".into())
    );
    for seq in 1..=LINES {
        match next(&mut viewer).await {
            Update::Event(event) => {
                assert_eq!((event.seq, event.text), (seq, format!("line {seq}")));
            }
            other => panic!("{other:?} instead of event {seq}"),
        }
    }
    flood.abort();
}
