//! Replays: the log's events a receiving member asked for (`history=N`,
//! `since=SEQ`), sent before its live feed.
//!
//! A replay covers the events after the one asked for, up to the last one published
//! before the member joined (its welcome's `@seq`); the live feed starts right after
//! that, so the two meet with no gap and no duplicate. It is read a chunk at a time
//! on a blocking thread, so a replaying member holds one chunk at most.
//!
//! The log is cut into aligned chunks of [`REPLAY_CHUNK_EVENTS`] events. A complete
//! chunk never changes once its events are in the log, so it is read and encoded
//! once per format and shared, through a small cache, by every replay that needs it:
//! a hundred clients catching up on the same ten thousand events cost the log one
//! read and the encoder one pass, and each client a slice of shared bytes. The
//! chunk still being filled, and a chunk that retention has cut into, are read for
//! each replay on its own.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::config::{MAX_HISTORY_REPLAY, REPLAY_CHUNK_EVENTS};
use crate::protocol::handshake::Options;
use crate::protocol::wire::{Format, Notice};
use crate::store::{Store, StoreError};

/// Encoded chunks kept for sharing (all formats together): about 64 * 512 events,
/// a few MB at most.
const CACHED_CHUNKS: usize = 64;

/// A member's replay. See the module documentation.
#[derive(Debug)]
pub(super) struct Replay {
    /// The next event to send.
    next: u64,
    /// The last event to send: the live feed starts after it.
    last: u64,
    /// The part being read.
    reading: Option<tokio::task::JoinHandle<Result<Part, StoreError>>>,
}

/// Part of a replay, encoded in the member's format.
#[derive(Debug)]
struct Part {
    bytes: Bytes,
    /// The next event to send after it.
    next: u64,
}

impl Replay {
    /// The replay `options` ask for, when the room's last event is `last`.
    pub(super) fn asked(options: &Options, last: u64) -> Option<Self> {
        let next = match (options.since, options.history) {
            (Some(since), _) => since.saturating_add(1),
            (None, Some(n)) => last.saturating_sub(n.min(MAX_HISTORY_REPLAY)) + 1,
            (None, None) => return None,
        };
        (next <= last).then_some(Self {
            next,
            last,
            reading: None,
        })
    }

    /// The next part of the replay once it is there (starting to read it if needed),
    /// or `None` when the replay is done.
    ///
    /// # Errors
    /// [`StoreError`] when the log cannot be read.
    pub(super) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        store: Option<&Arc<dyn Store>>,
        cache: &Arc<ReplayCache>,
        format: Format,
    ) -> Poll<Result<Option<Bytes>, StoreError>> {
        if self.next > self.last {
            return Poll::Ready(Ok(None));
        }
        let (next, last) = (self.next, self.last);
        let Some(store) = store else {
            // Nothing is kept: the whole range is a gap.
            self.next = last + 1;
            let mut out = BytesMut::new();
            gap(&mut out, format, next, last);
            return Poll::Ready(Ok(Some(out.freeze())));
        };
        let reading = self.reading.get_or_insert_with(|| {
            let store = store.clone();
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || cache.part(&*store, format, next, last))
        });
        let part = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(result)) => result,
            Poll::Ready(Err(error)) => Err(StoreError::Sqlite(error.to_string())),
        };
        self.reading = None;
        let part = part?;
        self.next = part.next;
        Poll::Ready(Ok(Some(part.bytes)))
    }
}

/// An aligned chunk of the log, encoded in one format, with where each event's line
/// starts.
#[derive(Debug)]
struct Encoded {
    bytes: Bytes,
    /// `starts[i]` is where event `first + i` starts; one more entry for the end.
    starts: Vec<usize>,
    first: u64,
}

impl Encoded {
    /// The lines of events `from` to `to`, both in the chunk.
    fn slice(&self, from: u64, to: u64) -> Bytes {
        let at = |seq: u64| self.starts[usize::try_from(seq - self.first).unwrap_or(0)];
        self.bytes.slice(at(from)..at(to + 1))
    }
}

type Slot = Arc<OnceLock<Option<Arc<Encoded>>>>;

/// Complete chunks of the log, encoded, shared by replays. See the module
/// documentation.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    by_chunk: HashMap<(Format, u64), Slot>,
    /// Oldest first, for eviction.
    order: VecDeque<(Format, u64)>,
}

impl ReplayCache {
    /// The next part of a replay of `next..=last`. Blocking: runs on a blocking
    /// thread.
    fn part(
        &self,
        store: &dyn Store,
        format: Format,
        next: u64,
        last: u64,
    ) -> Result<Part, StoreError> {
        let size = REPLAY_CHUNK_EVENTS as u64;
        let chunk = (next - 1) / size;
        let chunk_last = (chunk + 1) * size;
        if chunk_last <= last {
            let slot = self.slot(format, chunk);
            // Every replay that needs this chunk now waits for the one that reads it.
            let shared =
                slot.get_or_init(|| encode_whole_chunk(store, format, chunk).ok().flatten());
            match shared {
                Some(encoded) => {
                    return Ok(Part {
                        bytes: encoded.slice(next, chunk_last),
                        next: chunk_last + 1,
                    });
                }
                // Not whole (retention has cut into it) or not readable: read this
                // replay's part on its own, which reports errors and gaps.
                None => self.forget(format, chunk),
            }
        }
        read_part(store, format, next, last.min(chunk_last))
    }

    fn slot(&self, format: Format, chunk: u64) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.by_chunk.get(&(format, chunk)) {
            return slot.clone();
        }
        if slots.order.len() >= CACHED_CHUNKS
            && let Some(oldest) = slots.order.pop_front()
        {
            slots.by_chunk.remove(&oldest);
        }
        let slot = Slot::default();
        slots.by_chunk.insert((format, chunk), slot.clone());
        slots.order.push_back((format, chunk));
        slot
    }

    fn forget(&self, format: Format, chunk: u64) {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.by_chunk.remove(&(format, chunk));
        slots.order.retain(|key| *key != (format, chunk));
    }
}

/// Chunk `chunk`, encoded, if the log holds all of its events.
fn encode_whole_chunk(
    store: &dyn Store,
    format: Format,
    chunk: u64,
) -> Result<Option<Arc<Encoded>>, StoreError> {
    let first = chunk * REPLAY_CHUNK_EVENTS as u64 + 1;
    let events = store.read(first - 1, REPLAY_CHUNK_EVENTS)?;
    let whole = events.len() == REPLAY_CHUNK_EVENTS
        && events
            .iter()
            .zip(first..)
            .all(|(event, seq)| event.seq == seq);
    if !whole {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(events.len() * 96);
    let mut starts = Vec::with_capacity(events.len() + 1);
    for event in &events {
        starts.push(out.len());
        format.encode(event, &mut out);
    }
    starts.push(out.len());
    Ok(Some(Arc::new(Encoded {
        bytes: out.freeze(),
        starts,
        first,
    })))
}

/// Reads and encodes events `next` to `last` (at most a chunk's worth); a range the
/// log no longer keeps becomes a gap notice.
fn read_part(store: &dyn Store, format: Format, next: u64, last: u64) -> Result<Part, StoreError> {
    let wanted = usize::try_from(last - next + 1)
        .unwrap_or(usize::MAX)
        .min(REPLAY_CHUNK_EVENTS);
    let events = store.read(next - 1, wanted)?;
    let mut out = BytesMut::with_capacity(events.len() * 96);
    let mut next = next;
    for event in events.iter().take_while(|event| event.seq <= last) {
        if event.seq > next {
            gap(&mut out, format, next, event.seq - 1);
        }
        format.encode(event, &mut out);
        next = event.seq + 1;
    }
    // Fewer events than asked for, or none up to `last`: the rest of the range is
    // not in the log.
    let short = events.len() < wanted || events.last().is_none_or(|event| event.seq > last);
    if next <= last && short {
        gap(&mut out, format, next, last);
        next = last + 1;
    }
    Ok(Part {
        bytes: out.freeze(),
        next,
    })
}

/// Appends the notice that events `from` to `to` are no longer kept.
fn gap(out: &mut BytesMut, format: Format, from: u64, to: u64) {
    if let Some(line) = format.notice(&Notice::Gap { from, to }) {
        out.extend_from_slice(&line);
    }
}
