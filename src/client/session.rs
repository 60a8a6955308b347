//! A chatter or a viewer that outlives its connections: the library behind
//! `tcpchat chat` and `tcpchat viewer`, driven by typed lines and read as a stream
//! of [`Update`]s, so that it can be tested without a terminal.
//!
//! It asks for `tags`, shows the last events of the room on joining (`history=N`),
//! and when the connection drops or the server restarts it reconnects by itself with
//! [`Backoff`], takes its name back with the secret the server gave it
//! (`token=...`), asks for exactly the events it missed (`since=<last seq shown>`),
//! and sends again, with their ids, the typed lines it has not yet seen land. The
//! server ignores an id it already has, and this side never shows an event whose
//! seq it has shown, so nothing is lost, doubled or reordered, on screen or in the
//! room.
//!
//! A server that does not know `tags` (it refuses the option) gets the plain
//! handshake instead: the session then shows lines as they come and ends when the
//! connection does, as the clients always did.
//!
//! One task owns the connection; the handle only queues commands and reads updates.
//! Each connection has a writer task of its own, so a slow write never stops the
//! reading.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::conn::{
    ClientError, Connection, Handshake, LineReader, SERVER_SILENCE_LIMIT, Server, WriteHalf,
};
use super::outbox::{IdGen, Outbox};
use super::tags::{self, RoomEvent};
use crate::protocol::wire::Notice;
use crate::room::Role;

/// How many events of the room's log `chat` and `viewer` show on joining.
pub const DEFAULT_HISTORY: u32 = 20;

/// How long leaving waits for typed lines that have not reached the room yet
/// (the server may be restarting).
pub const LEAVE_PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a leaving chatter waits for the server to confirm, by closing its side,
/// that it has everything.
const LEAVE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest attempt to reconnect (TCP, TLS and the handshake together).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Room left in a line for its `@id=TOKEN ` prefix.
const ID_PREFIX_BYTES: usize = 70;

/// How often a server that stays down for the same reason is news again.
pub const RETRY_NEWS_INTERVAL: Duration = Duration::from_secs(30);

/// Error codes that end a connection for a reason that may pass: reconnecting is
/// worth it. Every other `*** error` ends the session.
const TRANSIENT_ERRORS: &[&str] = &["too-slow", "handshake-timeout"];

/// What a session is and how it behaves.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where to connect.
    pub server: Server,
    /// `Some` for a chatter with that name, `None` for a viewer.
    pub name: Option<String>,
    /// Events of the log to show on joining (0: none).
    pub history: u32,
    /// Waits between reconnection attempts.
    pub backoff: Backoff,
    /// A server silent this long (it pings every 15 s) is given up and reconnected.
    pub silence_limit: Duration,
    /// How long leaving waits for typed lines still on their way.
    pub leave_timeout: Duration,
    /// Where the ids of typed lines come from.
    pub ids: IdGen,
    /// Longest typed line accepted, in bytes (the server closes a sender whose line
    /// is over its limit, 4096 bytes by default, `@id=` prefix included).
    pub max_line_bytes: usize,
    /// Ask for the member list (`members`) and keep it up to date, for
    /// [`Session::who`].
    pub members: bool,
}

impl SessionOptions {
    /// A chatter called `name`, with the defaults.
    pub fn chatter(server: Server, name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            members: true,
            ..Self::viewer(server)
        }
    }

    /// A viewer, with the defaults.
    pub fn viewer(server: Server) -> Self {
        Self {
            server,
            name: None,
            history: DEFAULT_HISTORY,
            backoff: Backoff::default(),
            silence_limit: SERVER_SILENCE_LIMIT,
            leave_timeout: LEAVE_PENDING_TIMEOUT,
            ids: IdGen::random(),
            max_line_bytes: crate::Config::default()
                .max_message_bytes
                .saturating_sub(ID_PREFIX_BYTES),
            members: false,
        }
    }
}

/// Something to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The server's welcome, untagged (once, on the first connection).
    Welcome(String),
    /// An event of the room, each seq once and in order.
    Event(RoomEvent),
    /// A line from a server that does not tag its events, as it came.
    Line(String),
    /// A typed line waits for the connection to come back.
    Queued {
        /// What was typed.
        text: String,
    },
    /// The connection is gone; the next attempt is in `retry_in`.
    Lost {
        /// Why, in words.
        reason: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// An attempt to reconnect failed; the next one is in `retry_in`. Said when
    /// the reason changes, and otherwise every [`RETRY_NEWS_INTERVAL`], not at
    /// every attempt.
    Retrying {
        /// Why, in words.
        reason: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// Connected again; the events missed follow.
    Reconnected,
    /// A server notice other than the ones the session handles, such as
    /// `*** gap: events 5 to 10 are no longer kept`, as it came.
    Notice(String),
    /// The server's log is behind what was shown: it started over (its data was
    /// lost or replaced). Its events are shown from its present on.
    HistoryReset {
        /// The last seq shown before.
        shown: u64,
        /// The server's last seq now.
        server: u64,
    },
    /// Who is in the room, as asked with [`Session::who`].
    Members {
        /// The names, sorted; `None` when the server does not list them (it is
        /// older than the `members` option, or does not tag events).
        names: Option<Vec<String>>,
        /// Whether connected. When not, the names are the room as the last
        /// connection saw it.
        connected: bool,
    },
    /// Leaving waits for typed lines that have not reached the room.
    Leaving {
        /// How many.
        pending: usize,
        /// For at most this long.
        timeout: Duration,
    },
}

/// A typed line that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a line may have at most {max} bytes; this one has {bytes}, and was not sent")]
pub struct TooLong {
    /// The line's size.
    pub bytes: usize,
    /// The limit.
    pub max: usize,
}

enum Command {
    Send(String),
    Who,
    Leave,
}

/// A running session: queue lines with [`Session::send`], read what to show with
/// [`Session::next`], end with [`Session::leave`] and [`Session::finish`].
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    updates: mpsc::UnboundedReceiver<Update>,
    backlog: Arc<Backlog>,
    task: JoinHandle<Result<(), ClientError>>,
    max_line_bytes: usize,
}

/// Updates waiting for the program past which a session stops reading the server,
/// until the program has taken half of them: a program that shows lines more slowly
/// than the room makes them (a slow terminal, a pipe) holds this many, not the room.
const MAX_QUEUED_UPDATES: usize = 4096;

/// How many updates wait for the program, shared by the session's task and handle.
#[derive(Debug, Default)]
struct Backlog {
    queued: AtomicUsize,
    /// Told when the program has taken enough for reading to go on.
    drained: Notify,
}

impl Backlog {
    fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= MAX_QUEUED_UPDATES
    }

    /// The program took one.
    fn taken(&self) {
        let before = self.queued.fetch_sub(1, Ordering::AcqRel);
        if before.saturating_sub(1) <= MAX_QUEUED_UPDATES / 2 {
            self.drained.notify_waiters();
        }
    }

    /// Returns once at most half of [`MAX_QUEUED_UPDATES`] wait.
    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued.load(Ordering::Acquire) <= MAX_QUEUED_UPDATES / 2 {
                return;
            }
            notified.await;
        }
    }
}

/// Where a session's task puts what the program should show, counted.
#[derive(Debug, Clone)]
struct Updates {
    tx: mpsc::UnboundedSender<Update>,
    backlog: Arc<Backlog>,
}

impl Updates {
    fn send(&self, update: Update) {
        // Counted first, so that the program never takes one not yet counted.
        self.backlog.queued.fetch_add(1, Ordering::AcqRel);
        // Nobody reads any more only when the handle is gone; then nobody cares.
        let _ = self.tx.send(update);
    }
}

impl Session {
    /// Connects and joins. A failure of this first connection (unreachable, a
    /// taken name, ...) is returned as it is; later ones are retried.
    ///
    /// # Errors
    /// [`ClientError`] from the first connection.
    pub async fn start(options: SessionOptions) -> Result<Self, ClientError> {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let max_line_bytes = options.max_line_bytes;
        let backlog = Arc::new(Backlog::default());
        let updates_tx = Updates {
            tx: updates_tx,
            backlog: backlog.clone(),
        };
        let mut runner = Runner::new(options, updates_tx);
        let link = runner.connect().await?;
        let task = tokio::spawn(runner.run(link, commands_rx));
        Ok(Self {
            commands,
            updates,
            backlog,
            task,
            max_line_bytes,
        })
    }

    /// Queues a typed line for the room (a viewer's are ignored). Text with line
    /// breaks becomes one message per line; empty lines are skipped.
    ///
    /// # Errors
    /// [`TooLong`] when a line is over the limit: nothing of the text is sent.
    pub fn send(&self, text: &str) -> Result<(), TooLong> {
        let lines: Vec<&str> = text
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.is_empty())
            .collect();
        if let Some(long) = lines.iter().find(|line| line.len() > self.max_line_bytes) {
            return Err(TooLong {
                bytes: long.len(),
                max: self.max_line_bytes,
            });
        }
        for line in lines {
            // The task is gone only once the session has ended: nothing to send to.
            let _ = self.commands.send(Command::Send(line.to_owned()));
        }
        Ok(())
    }

    /// Asks who is in the room: an [`Update::Members`] follows. Nothing is sent
    /// to the server; the session keeps the list it was given when it joined,
    /// with every join and leave since.
    pub fn who(&self) {
        let _ = self.commands.send(Command::Who);
    }

    /// Starts leaving: once every typed line has landed (or
    /// [`SessionOptions::leave_timeout`] has passed), the session closes and
    /// [`Session::next`] returns `None`.
    pub fn leave(&self) {
        let _ = self.commands.send(Command::Leave);
    }

    /// The next thing to show; `None` once the session has ended (then
    /// [`Session::finish`] says how).
    pub async fn next(&mut self) -> Option<Update> {
        let update = self.updates.recv().await?;
        self.backlog.taken();
        Some(update)
    }

    /// Updates waiting for [`Session::next`].
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.backlog.queued.load(Ordering::Acquire)
    }

    /// How the session ended: `Ok` when it left as asked.
    ///
    /// # Errors
    /// The [`ClientError`] that ended it.
    pub async fn finish(self) -> Result<(), ClientError> {
        drop(self.commands);
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(ClientError::Io(std::io::Error::other(error))),
        }
    }
}

/// What ended a connection.
enum Ending {
    /// It is over, as asked.
    Left,
    /// Gone for a reason that may pass: reconnect.
    Lost(ClientError),
}

/// What goes to a connection's writer task.
enum Write {
    Line(String),
    Finish,
}

/// One connection.
struct Link {
    /// Its number, for [`Outbox::take_unsent`].
    id: u64,
    reader: LineReader,
    writes: mpsc::UnboundedSender<Write>,
    writer: JoinHandle<std::io::Result<()>>,
    /// The seq in this connection's welcome: the replay of missed events is over
    /// once it has been shown.
    welcome_seq: u64,
    /// Names of this connection's member list received so far.
    listed: usize,
    /// Missed events replayed: typed lines may go out.
    caught_up: bool,
    /// Our end is closed; the server's close ends the session.
    finishing: bool,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Writes lines as they come, each batch in one write.
async fn write_lines(
    mut half: WriteHalf,
    mut writes: mpsc::UnboundedReceiver<Write>,
) -> std::io::Result<()> {
    let mut batch = Vec::new();
    while let Some(write) = writes.recv().await {
        let mut finish = false;
        let mut next = Some(write);
        while let Some(write) = next {
            match write {
                Write::Line(line) => batch.extend_from_slice(line.as_bytes()),
                Write::Finish => finish = true,
            }
            next = writes.try_recv().ok();
        }
        half.write_all(&batch).await?;
        half.flush().await?;
        batch.clear();
        if finish {
            half.shutdown().await?;
        }
    }
    Ok(())
}

/// The task that owns the connection and the state that outlives it.
struct Runner {
    options: SessionOptions,
    updates: Updates,
    outbox: Outbox,
    backoff: Backoff,
    /// The seq of the last event shown, or passed over on purpose: the `since=`
    /// of the next connection, and the bar an event must clear to be shown.
    last_seq: u64,
    /// The secret that takes our name back.
    token: Option<String>,
    /// The server tags events (false after falling back to the plain handshake).
    tagged: bool,
    /// Connections made so far.
    links: u64,
    /// When leaving gives up on typed lines still pending.
    leave_by: Option<Instant>,
    /// The handle is gone: no more commands.
    commands_closed: bool,
    /// The `Leaving` update was shown.
    told_leaving: bool,
    /// The last `Retrying` shown, and when: the same news is not repeated at
    /// every attempt.
    retry_news: Option<(String, Instant)>,
    /// Ask for the member list (false once the server refused the option).
    members: bool,
    /// Who is in the room: the connection's member list, with the joins and
    /// leaves numbered after its welcome applied to it as to a set.
    room: BTreeSet<String>,
    /// A member list came: `room` is the room, not just empty.
    room_known: bool,
    /// A connection is up.
    connected: bool,
}

impl Runner {
    fn new(options: SessionOptions, updates: Updates) -> Self {
        let outbox = Outbox::new(options.ids.clone());
        let backoff = options.backoff.clone();
        let members = options.members;
        Self {
            options,
            updates,
            outbox,
            backoff,
            last_seq: 0,
            token: None,
            tagged: true,
            links: 0,
            leave_by: None,
            commands_closed: false,
            told_leaving: false,
            retry_news: None,
            members,
            room: BTreeSet::new(),
            room_known: false,
            connected: false,
        }
    }

    fn show(&self, update: Update) {
        self.updates.send(update);
    }

    fn role(&self) -> Role {
        if self.options.name.is_some() {
            Role::Chatter
        } else {
            Role::Viewer
        }
    }

    /// Opens a connection: the first asks for history, later ones for what was
    /// missed, with the token.
    async fn connect(&mut self) -> Result<Link, ClientError> {
        let first = self.links == 0;
        let conn = loop {
            let plain = Handshake::new(self.role(), self.options.name.as_deref());
            let hello = if self.tagged {
                Handshake {
                    tags: true,
                    history: (first && self.options.history > 0).then_some(self.options.history),
                    since: (!first).then_some(self.last_seq),
                    token: self.token.clone(),
                    members: self.members,
                    ..plain
                }
            } else {
                plain
            };
            match Connection::open_with(&self.options.server, &hello).await {
                // A server from before member lists: do without them.
                Err(ClientError::Refused { code, text })
                    if code == "unknown-option"
                        && first
                        && self.members
                        && text.contains("\"members\"") =>
                {
                    self.members = false;
                }
                // A server from before history and resume refuses the options
                // (after a name, it takes an unknown word for the rest of a name
                // with a space): talk to it as before. A refusal for another
                // reason comes again.
                Err(ClientError::Refused { code, .. })
                    if (code == "unknown-option" || code == "name-invalid")
                        && first
                        && self.tagged =>
                {
                    self.tagged = false;
                    self.members = false;
                }
                other => break other?,
            }
        };
        self.connected = true;
        self.links += 1;
        let (welcome_tags, welcome) = tags::split(&conn.greeting);
        let welcome_seq = match (self.tagged, welcome_tags.seq) {
            (false, _) => 0,
            (true, Some(seq)) => seq,
            (true, None) => return Err(ClientError::Unexpected(conn.greeting)),
        };
        if first {
            self.show(Update::Welcome(welcome.to_owned()));
            if self.options.history == 0 {
                // Joining without history: what came before is passed over.
                self.last_seq = welcome_seq;
            }
        } else if welcome_seq < self.last_seq {
            self.show(Update::HistoryReset {
                shown: self.last_seq,
                server: welcome_seq,
            });
            self.last_seq = welcome_seq;
        }
        let Connection { reader, writer, .. } = conn;
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let mut link = Link {
            id: self.links,
            reader,
            writes,
            writer: tokio::spawn(write_lines(writer, writes_rx)),
            welcome_seq,
            listed: 0,
            caught_up: false,
            finishing: false,
        };
        self.check_caught_up(&mut link);
        Ok(link)
    }

    /// Runs connections until the session ends.
    async fn run(
        mut self,
        first: Link,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), ClientError> {
        let mut link = first;
        loop {
            let lost = match self.serve(&mut link, &mut commands).await? {
                Ending::Left => return Ok(()),
                Ending::Lost(error) => error,
            };
            drop(link);
            self.connected = false;
            if !self.tagged {
                // Without seqs and ids nothing could be resumed safely.
                return Err(lost);
            }
            if self.leave_by.is_some() && self.outbox.is_empty() {
                return Ok(());
            }
            let retry_in = self.backoff.next_delay();
            self.retry_news = None;
            self.show(Update::Lost {
                reason: describe(&lost),
                retry_in,
            });
            match self.reconnect(retry_in, &mut commands).await? {
                Some(next) => link = next,
                None => return Ok(()),
            }
        }
    }

    /// Serves one connection until it ends.
    async fn serve(
        &mut self,
        link: &mut Link,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Ending, ClientError> {
        if link.caught_up && !link.finishing {
            // Lines typed while this connection was being made.
            self.write_unsent(link);
        }
        loop {
            if self.leave_by.is_some() && self.outbox.is_empty() && !link.finishing {
                if self.role() == Role::Viewer {
                    return Ok(Ending::Left);
                }
                // A FIN, then the server closes once it has everything: the room
                // shows our leave after our last line.
                let _ = link.writes.send(Write::Finish);
                link.finishing = true;
                self.leave_by = Some(Instant::now() + LEAVE_CLOSE_TIMEOUT);
            }
            let leave_by = self.leave_by;
            tokio::select! {
                command = commands.recv(), if !self.commands_closed => {
                    self.on_command(command);
                    if link.caught_up && !link.finishing {
                        self.write_unsent(link);
                    }
                }
                // The program is behind: the server waits (and drops a viewer that
                // falls too far behind) rather than this process holding the room.
                () = self.updates.backlog.drained(), if self.updates.backlog.is_full() => {}
                line = tokio::time::timeout(self.options.silence_limit, link.reader.next_line()),
                    if !self.updates.backlog.is_full() => {
                    let line = match line {
                        Err(_) => {
                            return Ok(Ending::Lost(ClientError::Silent(self.options.silence_limit)));
                        }
                        Ok(Err(error)) if link.finishing => {
                            tracing::debug!(%error, "connection failed after our goodbye");
                            return Ok(Ending::Left);
                        }
                        Ok(Err(error)) => return Ok(Ending::Lost(error.into())),
                        Ok(Ok(None)) if link.finishing => return Ok(Ending::Left),
                        Ok(Ok(None)) => {
                            return Ok(Ending::Lost(ClientError::Closed { reason: None }));
                        }
                        Ok(Ok(Some(line))) => line,
                    };
                    if let Some(ending) = self.on_line(link, line)? {
                        return Ok(ending);
                    }
                }
                written = &mut link.writer => {
                    if link.finishing {
                        return Ok(Ending::Left);
                    }
                    let error = match written {
                        Ok(Err(error)) => error,
                        Ok(Ok(())) => std::io::Error::other("the writer stopped"),
                        Err(error) => std::io::Error::other(error),
                    };
                    return Ok(Ending::Lost(error.into()));
                }
                () = sleep_until(leave_by), if leave_by.is_some() => {
                    if link.finishing || self.outbox.is_empty() {
                        return Ok(Ending::Left);
                    }
                    return Err(ClientError::Undelivered { lines: self.outbox.len() });
                }
            }
        }
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Send(text)) if self.role() == Role::Chatter => {
                self.outbox.push(text);
            }
            Some(Command::Send(_)) => {}
            Some(Command::Who) => self.show(Update::Members {
                names: self.room_known.then(|| self.room.iter().cloned().collect()),
                connected: self.connected,
            }),
            Some(Command::Leave) => self.begin_leaving(),
            None => {
                self.commands_closed = true;
                self.begin_leaving();
            }
        }
    }

    fn begin_leaving(&mut self) {
        if self.leave_by.is_none() {
            self.leave_by = Some(Instant::now() + self.options.leave_timeout);
        }
    }

    /// Handles one line from the server; `Some` when it ends the connection.
    fn on_line(&mut self, link: &mut Link, line: String) -> Result<Option<Ending>, ClientError> {
        if line.starts_with("*** ") {
            return self.on_notice(link, &line);
        }
        if !self.tagged {
            self.show(Update::Line(line));
            return Ok(None);
        }
        let Some(event) = tags::event(&line) else {
            // No tcpchat server sends this; show it rather than hide it.
            self.show(Update::Line(line));
            return Ok(None);
        };
        // The member list is the room when this connection was let in, at or past
        // its welcome: only later joins and leaves change it. Applied in order as
        // to a set, those the list already shows change nothing for long.
        if event.seq > link.welcome_seq {
            if let Some(name) = event.joined() {
                self.room.insert(name.to_owned());
            } else if let Some(name) = event.left() {
                self.room.remove(name);
            }
        }
        if event.seq <= self.last_seq {
            return Ok(None);
        }
        self.last_seq = event.seq;
        if let (Some(id), Some(name)) = (&event.id, &self.options.name)
            && event.is_message_from(name)
        {
            self.outbox.landed(id);
        }
        self.show(Update::Event(event));
        self.check_caught_up(link);
        Ok(None)
    }

    fn on_notice(&mut self, link: &mut Link, line: &str) -> Result<Option<Ending>, ClientError> {
        match Notice::parse(line) {
            Some(Notice::Ping) => {
                // A quiet connection has replayed all it had.
                link.caught_up = true;
                self.check_caught_up(link);
            }
            Some(Notice::Token { secret }) => self.token = Some(secret),
            Some(Notice::Ok { .. }) => {}
            Some(Notice::Members { names, .. }) => {
                // A new connection's list replaces what the last one knew.
                if link.listed == 0 {
                    self.room.clear();
                }
                link.listed += names.len();
                self.room.extend(names);
                self.room_known = true;
            }
            Some(Notice::Bye { text }) => {
                return Ok(Some(Ending::Lost(ClientError::Closed {
                    reason: Some(text),
                })));
            }
            Some(Notice::Error { code, text }) => {
                let closed = ClientError::Closed { reason: Some(text) };
                if TRANSIENT_ERRORS.contains(&code.as_str()) {
                    return Ok(Some(Ending::Lost(closed)));
                }
                return Err(closed);
            }
            // A gap in the replay, or a notice this client does not know: shown.
            Some(Notice::Gap { .. }) | None => self.show(Update::Notice(line.to_owned())),
        }
        Ok(None)
    }

    /// Once the missed events are in, the typed lines that have not landed go out
    /// again, in order, with their ids.
    fn check_caught_up(&mut self, link: &mut Link) {
        if !link.caught_up && (self.last_seq >= link.welcome_seq || !self.tagged) {
            link.caught_up = true;
        }
        if link.caught_up && !link.finishing {
            self.write_unsent(link);
        }
    }

    fn write_unsent(&mut self, link: &mut Link) {
        for line in self.outbox.take_unsent(link.id) {
            let wire = if self.tagged {
                line.wire_line()
            } else {
                format!("{}\n", line.text)
            };
            let _ = link.writes.send(Write::Line(wire));
            if !self.tagged {
                // Nothing will say it landed: sent is all there is to know.
                self.outbox.landed(&line.id);
            }
        }
    }

    /// Waits `delay`, then tries to connect again, and again, until it works, the
    /// error is not one that passes, or leaving gives up. `None` when the session
    /// is over (it left with nothing pending).
    async fn reconnect(
        &mut self,
        mut delay: Duration,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Option<Link>, ClientError> {
        loop {
            let wake = Instant::now() + delay;
            loop {
                if self.leave_by.is_some() {
                    if self.outbox.is_empty() {
                        return Ok(None);
                    }
                    if !self.told_leaving {
                        self.told_leaving = true;
                        self.show(Update::Leaving {
                            pending: self.outbox.len(),
                            timeout: self.options.leave_timeout,
                        });
                    }
                }
                let leave_by = self.leave_by;
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    command = commands.recv(), if !self.commands_closed => {
                        let queued = match &command {
                            Some(Command::Send(text)) if self.role() == Role::Chatter => {
                                Some(text.clone())
                            }
                            _ => None,
                        };
                        self.on_command(command);
                        if let Some(text) = queued {
                            self.show(Update::Queued { text });
                        }
                    }
                    () = sleep_until(leave_by), if leave_by.is_some() => {
                        return Err(ClientError::Undelivered { lines: self.outbox.len() });
                    }
                }
            }
            // Lines typed meanwhile are queued once the attempt is over; the user
            // hears about them at once.
            let mut typed = Vec::new();
            let updates = self.updates.clone();
            let chatter = self.role() == Role::Chatter;
            let mut closed = self.commands_closed;
            let attempt = {
                let connecting = tokio::time::timeout(ATTEMPT_TIMEOUT, self.connect());
                tokio::pin!(connecting);
                loop {
                    tokio::select! {
                        attempt = &mut connecting => break attempt,
                        command = commands.recv(), if !closed => {
                            match &command {
                                Some(Command::Send(text)) if chatter => {
                                    updates.send(Update::Queued { text: text.clone() });
                                }
                                None => closed = true,
                                _ => {}
                            }
                            typed.push(command);
                        }
                    }
                }
            };
            for command in typed {
                self.on_command(command);
            }
            let error = match attempt {
                Ok(Ok(link)) => {
                    self.backoff.reset();
                    self.show(Update::Reconnected);
                    return Ok(Some(link));
                }
                Ok(Err(error)) if is_transient(&error) => error,
                Ok(Err(error)) => return Err(error),
                Err(_) => ClientError::Silent(ATTEMPT_TIMEOUT),
            };
            delay = self.backoff.next_delay();
            let reason = describe(&error);
            let now = Instant::now();
            let news = self.retry_news.as_ref().is_none_or(|(said, at)| {
                *said != reason || now.duration_since(*at) >= RETRY_NEWS_INTERVAL
            });
            if news {
                self.retry_news = Some((reason.clone(), now));
                self.show(Update::Retrying {
                    reason,
                    retry_in: delay,
                });
            }
        }
    }
}

/// Why a connection ended or an attempt failed, in words for a status line.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Closed {
            reason: Some(reason),
        } => reason.clone(),
        ClientError::Silent(limit) => format!(
            "the server has been silent for {}",
            humantime::format_duration(*limit)
        ),
        other => other.to_string(),
    }
}

/// Whether an attempt that failed this way is worth another.
fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Refused { code, .. } => TRANSIENT_ERRORS.contains(&code.as_str()),
        ClientError::TlsSetup(_) | ClientError::Undelivered { .. } => false,
        ClientError::Unreachable { .. }
        | ClientError::Tls { .. }
        | ClientError::Closed { .. }
        | ClientError::Silent(_)
        | ClientError::Io(_)
        | ClientError::Unexpected(_) => true,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
