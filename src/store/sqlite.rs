//! The embedded log: one SQLite database (WAL) in the data directory.
//!
//! `room.db` holds the events (one row each, keyed by their number), the names the
//! log shows in the room, and the last number ever given (so that numbering goes on
//! even if retention kept nothing). Its `application_id` marks it as tcpchat's, so a
//! foreign database is refused instead of written into; a lock file (`flock`) keeps a
//! second server off the same directory.
//!
//! Appends run on the log writer's thread, one transaction per batch, with prepared
//! statements. In WAL mode with `synchronous=NORMAL` a committed transaction is in
//! the operating system's hands: a killed process loses nothing, a power cut may lose
//! the last transactions; `fsync` (`synchronous=FULL`) waits for the disk at every
//! commit. Replays read through a small pool of read-only connections, which WAL lets
//! run beside the writer without blocking it.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{Recovered, Store, StoreError, StreamMark};
use crate::room::{Event, EventKind};

/// Marks a database as tcpchat's (`PRAGMA application_id`): "tcch".
const APPLICATION_ID: i64 = 0x7463_6368;

/// The log format this build writes and reads (`PRAGMA user_version`).
const FORMAT_VERSION: i64 = 1;

/// The database's file name in the data directory.
pub const FILE_NAME: &str = "room.db";

/// The lock file's name in the data directory.
const LOCK_NAME: &str = "lock";

/// Idle read connections kept for replays.
const IDLE_READERS: usize = 4;

/// Message ids read back at start, most recent first: enough for every name's
/// [`IDS_PER_NAME`](crate::room::ids::IDS_PER_NAME) in any realistic room.
const RECOVERED_IDS: i64 = 100_000;

/// Event kinds as stored.
const JOINED: i64 = 1;
const POSTED: i64 = 2;
const LEFT: i64 = 3;

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most events kept; older ones are deleted as new ones come.
    pub max_events: u64,
    /// Wait for the disk at every commit (power-loss durability).
    pub fsync: bool,
    /// How often the WAL is copied back into the database, on a thread of its own.
    pub checkpoint_every: std::time::Duration,
}

impl Options {
    /// Keep `max_events`, waiting for the disk at every commit if `fsync`, with the
    /// usual checkpoint interval.
    pub fn new(max_events: u64, fsync: bool) -> Self {
        Self {
            max_events,
            fsync,
            checkpoint_every: CHECKPOINT_EVERY,
        }
    }
}

/// The embedded log. See the module documentation.
#[derive(Debug)]
pub struct SqliteStore {
    file: PathBuf,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// Events kept (a reload may change it).
    max_events: std::sync::atomic::AtomicU64,
    /// Stops the checkpointer when the store is dropped.
    _checkpointer: Option<Checkpointer>,
    /// Held for the store's life: another server cannot take the directory.
    _lock: Flock<File>,
}

/// How often the WAL is copied back into the database, off the writer's thread.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The thread that checkpoints the WAL, so that no commit ever waits for a
/// checkpoint (and, without `fsync`, for the disk). Stopped, after one last
/// checkpoint, when dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(file: &Path, every: std::time::Duration) -> Result<Self, StoreError> {
        let conn = Connection::open(file)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A first checkpoint now opens every file this connection will use, so that
        // the server's descriptors are all open once it starts (a soak compares them
        // with their count at the start).
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tcpchat-checkpoint".to_owned())
            .spawn(move || {
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(every),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    // PASSIVE: copies what it can without waiting for anyone; the next
                    // round does the rest.
                    if let Err(error) =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(%error, "cannot checkpoint the room's log");
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Sqlite(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// The oldest number kept, as far as the writer knows (trimming is amortized).
    first_kept: Option<u64>,
}

impl SqliteStore {
    /// Opens (creating on first use) the log in `dir`.
    ///
    /// # Errors
    /// [`StoreError`], saying in words why the directory or the file cannot be used:
    /// it cannot be created or written, another server holds it, the file is not a
    /// tcpchat log.
    pub fn open(dir: &Path, options: &Options) -> Result<Arc<Self>, StoreError> {
        let directory_error = |reason: String| StoreError::Directory {
            dir: dir.to_owned(),
            reason,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(directory_error("it is not a directory".to_owned()));
        }
        fs::create_dir_all(dir).map_err(|e| directory_error(e.to_string()))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_NAME))
            .map_err(|e| directory_error(e.to_string()))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(StoreError::InUse(dir.to_owned()));
            }
            Err((_, errno)) => return Err(directory_error(errno.desc().to_owned())),
        };
        let file = dir.join(FILE_NAME);
        let conn = Connection::open(&file).map_err(|e| directory_error(e.to_string()))?;
        let first_kept = prepare(&conn, &file, options.fsync).map_err(|e| match e {
            // SQLite's own words for a file it cannot read as a database, or a
            // directory it cannot write, deserve the path.
            StoreError::Sqlite(reason) if reason.contains("not a database") => {
                StoreError::Foreign(file.clone())
            }
            StoreError::Sqlite(reason) => directory_error(reason),
            other => other,
        })?;
        let checkpointer = Checkpointer::start(&file, options.checkpoint_every)
            .map_err(|e| directory_error(e.to_string()))?;
        Ok(Arc::new(Self {
            _checkpointer: Some(checkpointer),
            file,
            writer: Mutex::new(Writer { conn, first_kept }),
            readers: Mutex::new(Vec::new()),
            max_events: std::sync::atomic::AtomicU64::new(options.max_events.max(1)),
            _lock: lock,
        }))
    }

    /// A read connection from the pool, or a new one.
    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = lock(&self.readers).pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut readers = lock(&self.readers);
        if readers.len() < IDLE_READERS {
            readers.push(conn);
        }
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader()?;
        let result = f(&conn);
        // A connection that failed may be in any state: let it go.
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }
}

/// A mutex that a panic elsewhere cannot make unusable (nothing here leaves the data
/// half-changed: SQLite's transactions do that job).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks that `conn` is a tcpchat log (or a new, empty database, which it makes
/// one), sets it up, and returns the oldest number kept.
fn prepare(conn: &Connection, file: &Path, fsync: bool) -> Result<Option<u64>, StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let application_id: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
    if application_id != APPLICATION_ID && !(application_id == 0 && tables == 0) {
        return Err(StoreError::Foreign(file.to_owned()));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::TooNew {
            file: file.to_owned(),
            found: version,
            known: FORMAT_VERSION,
        });
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite(format!(
            "cannot switch {} to WAL mode (it stays in {mode} mode)",
            file.display()
        )));
    }
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    // Checkpoints run on a thread of their own (`Checkpointer`), never in a commit;
    // the WAL file is cut back to this size after each one.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Creating the tables is also the proof that the directory is writable: a
    // read-only one fails here, at start, not at the first message.
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS events (
             seq INTEGER PRIMARY KEY,
             time_ms INTEGER NOT NULL,
             kind INTEGER NOT NULL,
             name TEXT NOT NULL,
             text TEXT,
             msgid TEXT
         );
         CREATE TABLE IF NOT EXISTS present (name TEXT PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {FORMAT_VERSION};
         COMMIT;"
    ))?;
    let first: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |row| row.get(0))?;
    Ok(first.map(|seq| seq.max(0) as u64))
}

fn kind_code(kind: &EventKind) -> (i64, &str, Option<&str>) {
    match kind {
        EventKind::Joined { name } => (JOINED, name, None),
        EventKind::Posted { name, text } => (POSTED, name, Some(text)),
        EventKind::Left { name } => (LEFT, name, None),
    }
}

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    let seq: i64 = row.get(0)?;
    let time_ms: i64 = row.get(1)?;
    let code: i64 = row.get(2)?;
    let name: String = row.get(3)?;
    let text: Option<String> = row.get(4)?;
    let id: Option<String> = row.get(5)?;
    let name = name.into();
    let kind = match (code, text) {
        (JOINED, _) => EventKind::Joined { name },
        (POSTED, Some(text)) => EventKind::Posted { name, text },
        (LEFT, _) => EventKind::Left { name },
        (code, _) => {
            return Ok(Err(StoreError::Damaged {
                seq,
                reason: format!("unknown kind {code}, or a message without text"),
            }));
        }
    };
    Ok(Ok(Event {
        seq: seq.max(0) as u64,
        time_ms: time_ms.max(0) as u64,
        id: id.map(Into::into),
        kind,
    }))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let writer = lock(&self.writer);
        let conn = &writer.conn;
        let last: i64 = conn.query_row(
            "SELECT max((SELECT value FROM meta WHERE key = 'last_seq'), \
             coalesce((SELECT max(seq) FROM events), 0))",
            [],
            |row| row.get(0),
        )?;
        let mut present = Vec::new();
        let mut statement = conn.prepare("SELECT name FROM present ORDER BY name")?;
        for name in statement.query_map([], |row| row.get::<_, String>(0))? {
            present.push(name?);
        }
        let mut recent_ids = Vec::new();
        let mut statement = conn.prepare(
            "SELECT name, msgid FROM events WHERE msgid IS NOT NULL ORDER BY seq DESC LIMIT ?1",
        )?;
        for pair in statement.query_map([RECOVERED_IDS], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })? {
            recent_ids.push(pair?);
        }
        recent_ids.reverse();
        let meta = |key: &str| -> Result<Option<u64>, StoreError> {
            let value: Option<i64> = conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()?;
            Ok(value.map(|v| v.max(0) as u64))
        };
        let mark = match (meta("stream_message")?, meta("stream_last_seq")?) {
            (Some(message), Some(last_seq)) => Some(StreamMark { message, last_seq }),
            _ => None,
        };
        Ok(Recovered {
            last_seq: last.max(0) as u64,
            present,
            recent_ids,
            mark,
        })
    }

    fn append(&self, events: &[Event], mark: Option<StreamMark>) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut writer = lock(&self.writer);
        let Writer { conn, first_kept } = &mut *writer;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (seq, time_ms, kind, name, text, msgid) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut arrive =
                tx.prepare_cached("INSERT OR IGNORE INTO present (name) VALUES (?1)")?;
            let mut depart = tx.prepare_cached("DELETE FROM present WHERE name = ?1")?;
            for event in events {
                let (code, name, text) = kind_code(&event.kind);
                insert.execute(params![
                    to_i64(event.seq),
                    to_i64(event.time_ms),
                    code,
                    name,
                    text,
                    event.id.as_deref()
                ])?;
                match code {
                    JOINED => arrive.execute([name])?,
                    LEFT => depart.execute([name])?,
                    _ => 0,
                };
            }
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_seq'")?
                .execute([to_i64(last.seq)])?;
            if let Some(mark) = mark {
                let mut put =
                    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
                put.execute(params!["stream_message", to_i64(mark.message)])?;
                put.execute(params!["stream_last_seq", to_i64(mark.last_seq)])?;
            }
        }
        // Retention, amortized: trim once the log holds an eighth more than it keeps.
        let first = *first_kept.get_or_insert(events[0].seq);
        let max_events = self
            .max_events
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let slack = (max_events / 8).max(1);
        // Saturating: a bound near u64::MAX keeps everything (wrapping once turned it
        // into a DELETE of the whole log).
        let held = last.seq.saturating_sub(first).saturating_add(1);
        let trimmed = if held > max_events.saturating_add(slack) {
            let keep_from = last.seq.saturating_add(1).saturating_sub(max_events);
            tx.prepare_cached("DELETE FROM events WHERE seq < ?1")?
                .execute([to_i64(keep_from)])?;
            Some(keep_from)
        } else {
            None
        };
        tx.commit()?;
        if let Some(keep_from) = trimmed {
            *first_kept = Some(keep_from);
        }
        Ok(())
    }

    fn read(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        self.with_reader(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, time_ms, kind, name, text, msgid FROM events \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement.query_map(
                params![to_i64(after), i64::try_from(max).unwrap_or(i64::MAX)],
                event_from_row,
            )?;
            let mut events = Vec::with_capacity(max.min(1024));
            for row in rows {
                events.push(row??);
            }
            Ok(events)
        })
    }

    fn set_max_events(&self, max_events: u64) {
        self.max_events
            .store(max_events.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn probe(&self) -> Result<(), StoreError> {
        // A real write (of the value it already has), so a full disk or a
        // read-only file system shows.
        let mut writer = lock(&self.writer);
        let tx = writer.conn.transaction()?;
        tx.execute("UPDATE meta SET value = value WHERE key = 'last_seq'", [])?;
        tx.commit()?;
        Ok(())
    }

    fn first_kept(&self) -> Result<Option<u64>, StoreError> {
        self.with_reader(|conn| {
            let first: Option<i64> = conn
                .query_row("SELECT min(seq) FROM events", [], |row| row.get(0))
                .optional()?
                .flatten();
            Ok(first.map(|seq| seq.max(0) as u64))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(max_events: u64) -> Options {
        Options {
            // No checkpoint of its own while a test looks at the WAL.
            checkpoint_every: std::time::Duration::from_secs(3600),
            ..Options::new(max_events, false)
        }
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            time_ms: 1_700_000_000_000 + seq,
            id: seq.is_multiple_of(2).then(|| format!("id{seq}").into()),
            kind,
        }
    }

    fn conversation(from: u64, to: u64) -> Vec<Event> {
        (from..=to)
            .map(|seq| {
                event(
                    seq,
                    EventKind::Posted {
                        name: "alice".into(),
                        text: format!("line {seq}"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_cluster_mark_is_kept_with_its_events_and_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), &options(100)).unwrap();
            assert_eq!(store.recover().unwrap().mark, None);
            let mark = StreamMark {
                message: 7,
                last_seq: 3,
            };
            store.append(&conversation(1, 3), Some(mark)).unwrap();
            // Events without a mark (the first part of a message) leave it as it was.
            store.append(&conversation(4, 4), None).unwrap();
        }
        let store = SqliteStore::open(dir.path(), &options(100)).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.last_seq, 4);
        assert_eq!(
            recovered.mark,
            Some(StreamMark {
                message: 7,
                last_seq: 3
            })
        );
    }

    #[test]
    fn events_come_back_as_they_went_in_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let events = vec![
            event(
                1,
                EventKind::Joined {
                    name: "alice".into(),
                },
            ),
            event(
                2,
                EventKind::Posted {
                    name: "alice".into(),
                    text: "héllo ␛ there".into(),
                },
            ),
            event(3, EventKind::Joined { name: "bob".into() }),
            event(
                4,
                EventKind::Left {
                    name: "alice".into(),
                },
            ),
        ];
        {
            let store = SqliteStore::open(dir.path(), &options(100)).unwrap();
            store.append(&events[..2], None).unwrap();
            store.append(&events[2..], None).unwrap();
            assert_eq!(store.read(0, 100).unwrap(), events);
            assert_eq!(store.read(2, 1).unwrap(), events[2..3]);
            assert_eq!(store.read(4, 10).unwrap(), vec![]);
        }
        let store = SqliteStore::open(dir.path(), &options(100)).unwrap();
        assert_eq!(store.read(0, 100).unwrap(), events);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.last_seq, 4);
        assert_eq!(recovered.present, vec!["bob".to_owned()], "alice left");
        assert_eq!(
            recovered.recent_ids,
            vec![
                ("alice".to_owned(), "id2".to_owned()),
                ("alice".to_owned(), "id4".to_owned())
            ]
        );
    }

    /// A bound near `u64::MAX` (any u64 is accepted, and a reload applies it) keeps
    /// everything; it once wrapped into a bound that deleted the whole log.
    #[test]
    fn an_enormous_bound_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &options(u64::MAX - 1)).unwrap();
        for chunk in conversation(1, 50).chunks(7) {
            store.append(chunk, None).unwrap();
        }
        assert_eq!(store.read(0, 100).unwrap().len(), 50);
    }

    #[test]
    fn retention_keeps_the_last_events_and_numbering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), &options(100)).unwrap();
            for chunk in conversation(1, 1000).chunks(7) {
                store.append(chunk, None).unwrap();
                // At least the last 100 are kept, and at most an eighth more.
                let last = chunk[chunk.len() - 1].seq;
                let first = store.first_kept().unwrap().unwrap();
                let kept = last - first + 1;
                assert!(
                    kept == last.min(100) || (100..=112).contains(&kept),
                    "{kept}"
                );
            }
            let first = store.first_kept().unwrap().unwrap();
            let kept = store.read(0, 10_000).unwrap();
            assert_eq!(kept.first().map(|e| e.seq), Some(first));
            assert_eq!(kept.last().map(|e| e.seq), Some(1000));
            assert!(kept.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        }
        let store = SqliteStore::open(dir.path(), &options(1)).unwrap();
        assert_eq!(store.recover().unwrap().last_seq, 1000);
        store.append(&conversation(1001, 1003), None).unwrap();
        // Even with nothing of the old log left, the numbers are not reused.
        assert_eq!(store.recover().unwrap().last_seq, 1003);
    }

    #[test]
    fn a_torn_or_garbled_wal_tail_loses_only_the_unfinished_transaction() {
        // Long lines, so that the second transaction spans many WAL frames.
        let long = |from, to| -> Vec<Event> {
            conversation(from, to)
                .into_iter()
                .map(|mut event| {
                    if let EventKind::Posted { text, .. } = &mut event.kind {
                        text.push_str(&" padding".repeat(40));
                    }
                    event
                })
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join(format!("{FILE_NAME}-wal"));
        let store = SqliteStore::open(dir.path(), &options(1000)).unwrap();
        store.append(&long(1, 10), None).unwrap();
        store.append(&long(11, 200), None).unwrap();
        let full = fs::read(&wal).unwrap();
        // A crash in the middle of writing the second transaction: its last frames,
        // the commit among them, never reached the disk. Copy the files as they
        // would be (the store still holds them open, as a killed process would).
        let page: i64 = store
            .writer
            .lock()
            .unwrap()
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        let frame = 24 + usize::try_from(page).unwrap();
        let copy = tempfile::tempdir().unwrap();
        fs::copy(dir.path().join(FILE_NAME), copy.path().join(FILE_NAME)).unwrap();
        let torn = &full[..full.len() - 2 * frame - frame / 2];
        fs::write(copy.path().join(format!("{FILE_NAME}-wal")), torn).unwrap();
        let reopened = SqliteStore::open(copy.path(), &options(1000)).unwrap();
        assert_eq!(reopened.read(0, 1000).unwrap(), long(1, 10));
        assert_eq!(reopened.recover().unwrap().last_seq, 10);
        reopened.append(&long(11, 11), None).unwrap();
        assert_eq!(reopened.recover().unwrap().last_seq, 11);
        drop(reopened);

        // Garbage after the last transaction is not a transaction.
        let garbled = tempfile::tempdir().unwrap();
        fs::copy(dir.path().join(FILE_NAME), garbled.path().join(FILE_NAME)).unwrap();
        let mut tail = full.clone();
        tail.extend(std::iter::repeat_n(0xA5u8, 5000));
        fs::write(garbled.path().join(format!("{FILE_NAME}-wal")), tail).unwrap();
        let reopened = SqliteStore::open(garbled.path(), &options(1000)).unwrap();
        assert_eq!(reopened.read(0, 1000).unwrap(), long(1, 200));
        reopened.append(&long(201, 201), None).unwrap();
        assert_eq!(reopened.recover().unwrap().last_seq, 201);
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        fs::write(&file, b"these are my notes, not a database\n".repeat(200)).unwrap();
        let error = SqliteStore::open(dir.path(), &options(10)).unwrap_err();
        assert!(matches!(error, StoreError::Foreign(_)), "{error}");
        assert!(error.to_string().contains("is not a tcpchat log"));

        let other = tempfile::tempdir().unwrap();
        let conn = Connection::open(other.path().join(FILE_NAME)).unwrap();
        conn.execute_batch("CREATE TABLE accounts (id INTEGER)")
            .unwrap();
        drop(conn);
        let error = SqliteStore::open(other.path(), &options(10)).unwrap_err();
        assert!(matches!(error, StoreError::Foreign(_)), "{error}");
        assert_eq!(
            fs::read(&file).unwrap(),
            b"these are my notes, not a database\n".repeat(200)
        );
    }

    #[test]
    fn a_second_server_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteStore::open(dir.path(), &options(10)).unwrap();
        let error = SqliteStore::open(dir.path(), &options(10)).unwrap_err();
        assert!(matches!(error, StoreError::InUse(_)), "{error}");
    }

    #[test]
    fn a_read_only_directory_is_refused_at_start() {
        use std::os::unix::fs::PermissionsExt;
        // Root may write anywhere: nothing to check then.
        if nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        let error = SqliteStore::open(&dir.path().join("log"), &options(10)).unwrap_err();
        assert!(matches!(error, StoreError::Directory { .. }), "{error}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
