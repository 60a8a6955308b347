//! The shared backlog of encoded events that every viewer reads at its own cursor.
//!
//! The hub is the only writer: it publishes batches of events, each encoded once per
//! wire format in use, in the room's order. Viewers read them without any lock: each
//! slot is an [`ArcSwapOption`], and each viewer waits on its own [`Subscriber`]
//! waker, which the hub wakes after every publish. A batch is kept until every format
//! in use has more than the retention after it; a viewer that needs an evicted batch
//! has fallen too far behind in its own format.
//!
//! Memory is therefore bounded once for the whole server (the retention), not per
//! viewer, and an idle viewer holds nothing but its cursor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use atomic_waker::AtomicWaker;
use bytes::Bytes;

use crate::protocol::wire::{Format, PerFormat};

/// Events encoded once for every format in use, published as one unit.
#[derive(Debug)]
pub struct Batch {
    /// Position of this batch in the ring's history.
    pub index: u64,
    /// Sequence number of the last event in the batch.
    pub last_seq: u64,
    /// How many events it holds.
    pub events: u32,
    /// The batch in each format (empty for formats nobody receives).
    bytes: PerFormat<Bytes>,
    /// Offset of the first byte of each format's bytes in that format's log.
    starts: PerFormat<u64>,
}

impl Batch {
    /// The batch as `format` writes it.
    pub fn bytes(&self, format: Format) -> &Bytes {
        &self.bytes[format]
    }

    /// Offset of the batch's first byte in the `format` log (all bytes ever published
    /// in that format, counted from server start).
    pub fn start(&self, format: Format) -> u64 {
        self.starts[format]
    }
}

/// Where a new viewer starts reading: the next batch, and the log offsets there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the next batch to read.
    pub index: u64,
    offsets: PerFormat<u64>,
}

impl Cursor {
    /// The offset in the `format` log.
    pub fn offset(&self, format: Format) -> u64 {
        self.offsets[format]
    }
}

/// The answer to "what is at index i?".
#[derive(Debug)]
pub enum Fetch {
    /// The batch.
    Ready(Arc<Batch>),
    /// Not published yet.
    Pending,
    /// Evicted: the reader fell behind the retention.
    Gone,
    /// The hub has stopped and everything published has been read.
    Closed,
}

/// A member's wake-up call. The hub wakes every receiver after each publish, and
/// a member whose name a new connection took over.
#[derive(Debug, Default)]
pub struct Subscriber {
    waker: AtomicWaker,
    /// Why the hub ended the member: [`NOT_ENDED`], [`REPLACED`] or [`KICKED`].
    ended: AtomicU8,
}

const NOT_ENDED: u8 = 0;
const REPLACED: u8 = 1;
const KICKED: u8 = 2;

impl Subscriber {
    /// Marks the member as replaced by a new connection under its name, and wakes
    /// it. Hub task only.
    pub fn replace(&self) {
        self.ended.store(REPLACED, Ordering::Release);
        self.waker.wake();
    }

    /// Marks the member as disconnected by the operator, and wakes it. Hub task only.
    pub fn kick(&self) {
        let _ = self
            .ended
            .compare_exchange(NOT_ENDED, KICKED, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Whether a new connection took this member's name over.
    pub fn is_replaced(&self) -> bool {
        self.ended.load(Ordering::Acquire) == REPLACED
    }

    /// Whether the operator disconnected this member.
    pub fn is_kicked(&self) -> bool {
        self.ended.load(Ordering::Acquire) == KICKED
    }

    /// Wakes the viewer if it is waiting. Hub task only; never blocks.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Registers the current task to be woken at the next publish.
    pub fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }
}

/// The shared backlog. See the module documentation.
#[derive(Debug)]
pub struct Ring {
    slots: Box<[ArcSwapOption<Batch>]>,
    /// Index of the next batch to be published.
    head: AtomicU64,
    /// End of each format's log.
    ends: PerFormat<AtomicU64>,
    closed: AtomicBool,
}

impl Ring {
    /// A ring with room for `slots` batches (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(2).next_power_of_two();
        Self {
            slots: (0..slots).map(|_| ArcSwapOption::empty()).collect(),
            head: AtomicU64::new(0),
            ends: PerFormat::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// How many batches it holds at most: a reader this many batches behind has lost
    /// its next one, however few bytes they hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// What is at `index`. Never blocks.
    pub fn fetch(&self, index: u64) -> Fetch {
        // `closed` before `head`: once closed, `head` is final.
        let closed = self.closed.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        if index >= head {
            return if closed {
                Fetch::Closed
            } else {
                Fetch::Pending
            };
        }
        if head - index > self.slots.len() as u64 {
            return Fetch::Gone;
        }
        match self.slot(index).load_full() {
            Some(batch) if batch.index == index => Fetch::Ready(batch),
            _ => Fetch::Gone,
        }
    }

    /// Like [`Ring::fetch`], but registers `subscriber` first when nothing is ready,
    /// so a publish that races with this call still wakes the caller.
    pub fn poll_fetch(&self, index: u64, subscriber: &Subscriber, cx: &Context<'_>) -> Poll<Fetch> {
        match self.fetch(index) {
            Fetch::Pending => {}
            ready => return Poll::Ready(ready),
        }
        subscriber.register(cx);
        match self.fetch(index) {
            Fetch::Pending => Poll::Pending,
            ready => Poll::Ready(ready),
        }
    }

    /// End of the `format` log: the offset one past the last byte published.
    pub fn end(&self, format: Format) -> u64 {
        self.ends[format].load(Ordering::Acquire)
    }

    /// Where a viewer joining now starts. Hub task only (the publisher), so that
    /// the cursor is consistent with the room's order.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            index: self.head.load(Ordering::Relaxed),
            offsets: PerFormat::from_fn(|f| self.ends[f].load(Ordering::Relaxed)),
        }
    }

    fn slot(&self, index: u64) -> &ArcSwapOption<Batch> {
        let mask = self.slots.len() as u64 - 1;
        &self.slots[(index & mask) as usize]
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The slow-viewer policy: a viewer `behind` bytes behind the end of its own
/// format's log (bytes published for it that its socket has not taken) is dropped
/// once that exceeds its `backlog`. The ring keeps at least `backlog` bytes of every
/// format in use (and its capacity in batches), so a viewer within both bounds always
/// finds its next batch.
pub fn is_too_far_behind(behind: u64, backlog: u64) -> bool {
    behind > backlog
}

/// The hub's half of the ring: publishes and evicts. Only one exists per ring.
#[derive(Debug)]
pub struct Publisher {
    ring: Arc<Ring>,
    /// Oldest batch still held.
    tail: u64,
    /// Bytes of backlog to keep in every format in use.
    retention_bytes: u64,
}

impl Publisher {
    /// A publisher for `ring`, keeping at least `retention_bytes` of every format in use.
    pub fn new(ring: Arc<Ring>, retention_bytes: usize) -> Self {
        Self {
            ring,
            tail: 0,
            retention_bytes: retention_bytes as u64,
        }
    }

    /// The ring this publisher writes.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// Publishes one batch and evicts what no viewer within its bound can still
    /// need: a batch goes once, for every format in `in_use`, a viewer whose next byte
    /// were that batch's first would be past the retention. Does not wake anyone: the
    /// caller wakes its subscribers once it is done publishing.
    pub fn publish(
        &mut self,
        last_seq: u64,
        events: u32,
        bytes: PerFormat<Bytes>,
        in_use: &PerFormat<bool>,
    ) {
        debug_assert!(!self.ring.is_closed(), "publish after close");
        let ring = &self.ring;
        let index = ring.head.load(Ordering::Relaxed);
        let starts = PerFormat::from_fn(|f| ring.ends[f].load(Ordering::Relaxed));
        let ends = PerFormat::from_fn(|f| starts[f] + bytes[f].len() as u64);
        // The slot about to be reused, and anything beyond the retention, goes first.
        let capacity = ring.slots.len() as u64;
        while self.tail < index
            && (index - self.tail >= capacity || self.is_past_retention(self.tail, &ends, in_use))
        {
            ring.slot(self.tail).store(None);
            self.tail += 1;
        }
        ring.slot(index).store(Some(Arc::new(Batch {
            index,
            last_seq,
            events,
            bytes,
            starts,
        })));
        for (format, end) in ends.iter() {
            ring.ends[format].store(*end, Ordering::Release);
        }
        ring.head.store(index + 1, Ordering::Release);
    }

    /// Marks the ring finished: readers get [`Fetch::Closed`] once they have read
    /// everything. The caller wakes its subscribers afterwards.
    pub fn close(&self) {
        self.ring.closed.store(true, Ordering::Release);
    }

    /// Whether a viewer of any format in use, with batch `index` next, would be too
    /// far behind the new `ends`.
    fn is_past_retention(
        &self,
        index: u64,
        ends: &PerFormat<u64>,
        in_use: &PerFormat<bool>,
    ) -> bool {
        let Some(batch) = self.ring.slot(index).load_full() else {
            return true;
        };
        Format::ALL
            .into_iter()
            .filter(|&f| in_use[f])
            .all(|f| is_too_far_behind(ends[f] - batch.starts[f], self.retention_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_FORMAT: PerFormat<bool> = PerFormat::splat(true);

    fn publisher(slots: usize, retention: usize) -> Publisher {
        Publisher::new(Arc::new(Ring::new(slots)), retention)
    }

    fn batch(seed: &'static [u8], line: &'static [u8]) -> PerFormat<Bytes> {
        PerFormat::from_fn(|f| match f {
            Format::Seed => Bytes::from_static(seed),
            _ => Bytes::from_static(line),
        })
    }

    fn ready(fetch: Fetch) -> Arc<Batch> {
        match fetch {
            Fetch::Ready(batch) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn readers_see_batches_in_order_with_offsets_per_format() {
        let mut p = publisher(8, 1024);
        let ring = p.ring().clone();
        assert!(matches!(ring.fetch(0), Fetch::Pending));
        p.publish(1, 1, batch(b"a: x", b"a: x\n"), &EVERY_FORMAT);
        p.publish(3, 1, batch(b"b: yb: z", b"b: y\nb: z\n"), &EVERY_FORMAT);
        let first = ready(ring.fetch(0));
        let second = ready(ring.fetch(1));
        assert_eq!((first.last_seq, second.last_seq), (1, 3));
        assert_eq!(second.start(Format::Seed), 4);
        assert_eq!(second.start(Format::Line), 5);
        assert_eq!(&second.bytes(Format::Line)[..], b"b: y\nb: z\n");
        assert_eq!((ring.end(Format::Seed), ring.end(Format::Line)), (12, 15));
        assert!(matches!(ring.fetch(2), Fetch::Pending));
    }

    #[test]
    fn batches_past_the_retention_are_evicted() {
        let mut p = publisher(64, 10);
        let ring = p.ring().clone();
        for _ in 0..4 {
            p.publish(0, 1, batch(b"12345", b"12345\n"), &EVERY_FORMAT);
        }
        // 20 seed bytes published: a seed reader at the start of batch 1 would be 15
        // bytes behind, a line reader 18, both past the retention of 10.
        assert!(matches!(ring.fetch(0), Fetch::Gone));
        assert!(matches!(ring.fetch(1), Fetch::Gone));
        ready(ring.fetch(2));
        ready(ring.fetch(3));
    }

    /// A viewer exactly `backlog` bytes behind is kept and finds its next batch; one
    /// byte further behind, it is too slow, and the ring may have let go of it.
    #[test]
    fn the_backlog_bound_holds_at_the_bound_and_one_past_it() {
        const BACKLOG: usize = 100;
        let mut p = publisher(1024, BACKLOG);
        let ring = p.ring().clone();
        for _ in 0..30 {
            p.publish(0, 1, batch(b"0123456789", b"012345678\n"), &EVERY_FORMAT);
        }
        let end = ring.end(Format::Seed);
        assert_eq!(end, 300);
        // At the bound: the viewer's next batch starts at `end - BACKLOG`.
        let at_bound = end - BACKLOG as u64;
        assert!(!is_too_far_behind(end - at_bound, BACKLOG as u64));
        let index = at_bound / 10;
        assert_eq!(ready(ring.fetch(index)).start(Format::Seed), at_bound);
        // One byte past the bound.
        assert!(is_too_far_behind(end - (at_bound - 1), BACKLOG as u64));
        assert!(matches!(ring.fetch(index - 1), Fetch::Gone));
    }

    /// The bound is in each viewer's own format: where one format writes four times
    /// the bytes of another, each keeps its full backlog, and a viewer of either
    /// within its bound finds its next batch.
    #[test]
    fn the_backlog_is_kept_in_each_format_in_use() {
        const BACKLOG: u64 = 100;
        let mut p = publisher(1024, BACKLOG as usize);
        let ring = p.ring().clone();
        for _ in 0..100 {
            p.publish(0, 1, batch(b"0123456789", &[b'x'; 40]), &EVERY_FORMAT);
        }
        for format in Format::ALL {
            let end = ring.end(format);
            let per_batch = end / 100;
            // The earliest batch a viewer within its bound may need still exists.
            let needed = (end - BACKLOG).div_ceil(per_batch);
            let kept = ready(ring.fetch(needed));
            assert!(!is_too_far_behind(end - kept.start(format), BACKLOG));
        }
        // The small format keeps more than its bound, since the large one needs it;
        // once nobody receives the large one, only the small one's bound counts.
        let seed_only = PerFormat::from_fn(|f| f == Format::Seed);
        p.publish(0, 1, batch(b"0123456789", b""), &seed_only);
        let end = ring.end(Format::Seed);
        let oldest = (0..=100)
            .find(|&i| matches!(ring.fetch(i), Fetch::Ready(_)))
            .unwrap();
        let kept = ready(ring.fetch(oldest)).start(Format::Seed);
        assert!(!is_too_far_behind(end - kept, BACKLOG));
        assert!(is_too_far_behind(end - (kept - 10), BACKLOG));
    }

    #[test]
    fn a_reader_lapped_by_the_slot_count_sees_gone() {
        let mut p = publisher(4, 1 << 20);
        let ring = p.ring().clone();
        for _ in 0..6 {
            p.publish(0, 1, batch(b"x", b"x\n"), &EVERY_FORMAT);
        }
        assert!(matches!(ring.fetch(1), Fetch::Gone));
        ready(ring.fetch(2));
        ready(ring.fetch(5));
    }

    #[test]
    fn closing_ends_readers_only_after_the_last_batch() {
        let mut p = publisher(4, 1024);
        let ring = p.ring().clone();
        p.publish(1, 1, batch(b"x", b"x\n"), &EVERY_FORMAT);
        p.close();
        ready(ring.fetch(0));
        assert!(matches!(ring.fetch(1), Fetch::Closed));
    }

    #[test]
    fn a_cursor_starts_after_what_was_published() {
        let mut p = publisher(4, 1024);
        p.publish(1, 1, batch(b"abc", b"abc\n"), &EVERY_FORMAT);
        let cursor = p.ring().cursor();
        assert_eq!(cursor.index, 1);
        assert_eq!(
            (cursor.offset(Format::Seed), cursor.offset(Format::Line)),
            (3, 4)
        );
    }
}
