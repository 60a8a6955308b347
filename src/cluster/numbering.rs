//! The room's event numbers, from the stream's messages.
//!
//! A stream message carries one event or a batch of them (a node under load puts
//! everything its members said meanwhile into one message: JetStream's cost is per
//! message). An event's number is one more than the count of events in every message
//! before it, in the stream's order, so every node numbers alike and without gaps
//! however the events were batched, and a message that holds no event (one tcpchat
//! cannot read) takes no number.
//!
//! A node that follows the stream from its first message, or from the mark its log
//! kept, knows the count. A node that starts where the stream was already trimmed
//! does not: it holds the messages it gets until one carries an *anchor* (its
//! publisher's count after a message this node holds, or the one just before them),
//! and numbers from there. Publishers follow the stream closely, so the wait is a few
//! messages.
//!
//! Pure: no NATS, no clock.

use std::collections::VecDeque;

/// Most messages held while the count is unknown; older ones are let go (their
/// events will not be in this node's history).
const MAX_HELD: usize = 64 * 1024;

/// A publisher's count: after the stream's message `message`, the room had `count`
/// events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Anchor {
    pub(super) message: u64,
    pub(super) count: u64,
}

/// A message's events, numbered.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Numbered<T> {
    /// The stream message they came in.
    pub(super) message: u64,
    /// The number of the first of them.
    pub(super) first_seq: u64,
    pub(super) events: Vec<T>,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Numbering<T> {
    /// The last message taken (0: none yet).
    last: u64,
    /// Events in the stream up to and with `last`, once known.
    count: Option<u64>,
    /// Messages taken while the count is unknown, oldest first, without gaps.
    held: VecDeque<(u64, Vec<T>)>,
}

impl<T> Numbering<T> {
    /// Numbering that goes on after `message`, with `count` events up to it.
    pub(super) fn known(message: u64, count: u64) -> Self {
        Self {
            last: message,
            count: Some(count),
            held: VecDeque::new(),
        }
    }

    /// Numbering that does not know the count yet (the stream was trimmed before
    /// this node came).
    pub(super) fn unknown() -> Self {
        Self {
            last: 0,
            count: None,
            held: VecDeque::new(),
        }
    }

    /// The last message taken and the count after it, once the count is known.
    pub(super) fn position(&self) -> Option<Anchor> {
        self.count.map(|count| Anchor {
            message: self.last,
            count,
        })
    }

    /// Messages held, waiting for an anchor.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the stream's message `message` (in the stream's order) with its
    /// `events` and its publisher's `anchor`; returns what can be numbered now, in
    /// order.
    pub(super) fn take(
        &mut self,
        message: u64,
        events: Vec<T>,
        anchor: Option<Anchor>,
    ) -> Vec<Numbered<T>> {
        if message <= self.last {
            return Vec::new();
        }
        if message != self.last + 1 {
            // Messages the stream no longer holds were skipped: what they counted is
            // not known any more.
            self.count = None;
            self.held.clear();
        }
        self.last = message;
        if let Some(count) = self.count {
            let len = events.len() as u64;
            self.count = Some(count + len);
            return vec![Numbered {
                message,
                first_seq: count + 1,
                events,
            }];
        }
        self.held.push_back((message, events));
        if self.held.len() > MAX_HELD {
            self.held.pop_front();
        }
        let Some(base) = anchor.and_then(|anchor| self.base(anchor)) else {
            return Vec::new();
        };
        let mut count = base;
        let mut numbered = Vec::with_capacity(self.held.len());
        for (message, events) in self.held.drain(..) {
            let first_seq = count + 1;
            count += events.len() as u64;
            numbered.push(Numbered {
                message,
                first_seq,
                events,
            });
        }
        self.count = Some(count);
        numbered
    }

    /// The count before the first held message, if `anchor` tells it.
    fn base(&self, anchor: Anchor) -> Option<u64> {
        let front = self.held.front()?.0;
        if anchor.message + 1 == front {
            return Some(anchor.count);
        }
        if anchor.message < front || anchor.message > self.last {
            return None;
        }
        let within: u64 = self
            .held
            .iter()
            .take_while(|(message, _)| *message <= anchor.message)
            .map(|(_, events)| events.len() as u64)
            .sum();
        anchor.count.checked_sub(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(message: u64, count: u64) -> Option<Anchor> {
        Some(Anchor { message, count })
    }

    /// The numbers of what `numbered` holds, flat.
    fn seqs(numbered: &[Numbered<char>]) -> Vec<(u64, char)> {
        numbered
            .iter()
            .flat_map(|n| {
                n.events
                    .iter()
                    .enumerate()
                    .map(move |(i, e)| (n.first_seq + i as u64, *e))
            })
            .collect()
    }

    #[test]
    fn a_known_count_numbers_batches_without_gaps() {
        let mut numbering = Numbering::known(0, 0);
        assert_eq!(seqs(&numbering.take(1, vec!['a'], None)), [(1, 'a')]);
        assert_eq!(
            seqs(&numbering.take(2, vec!['b', 'c', 'd'], None)),
            [(2, 'b'), (3, 'c'), (4, 'd')]
        );
        // A message with nothing tcpchat can read takes no number.
        assert!(seqs(&numbering.take(3, vec![], None)).is_empty());
        assert_eq!(seqs(&numbering.take(4, vec!['e'], None)), [(5, 'e')]);
        assert_eq!(numbering.position(), anchor(4, 5));
        // A message seen again (a follower that started over) is not numbered twice.
        assert!(numbering.take(4, vec!['e'], None).is_empty());
    }

    #[test]
    fn going_on_from_a_mark() {
        let mut numbering = Numbering::known(10, 37);
        assert_eq!(
            seqs(&numbering.take(11, vec!['x', 'y'], None)),
            [(38, 'x'), (39, 'y')]
        );
    }

    #[test]
    fn a_trimmed_stream_is_numbered_from_the_first_anchor_that_reaches_it() {
        // Messages 1..=9 are gone; 10 holds 2 events, 11 holds 3, and the room had
        // 20 events after message 9.
        let mut numbering = Numbering::unknown();
        // Anchors from before what this node holds tell nothing.
        assert!(numbering.take(10, vec!['a', 'b'], anchor(8, 17)).is_empty());
        assert!(numbering.take(11, vec!['c', 'd', 'e'], None).is_empty());
        assert_eq!(numbering.held(), 2);
        // Message 12's publisher had counted through message 11: 25.
        let numbered = numbering.take(12, vec!['f'], anchor(11, 25));
        assert_eq!(
            seqs(&numbered),
            [
                (21, 'a'),
                (22, 'b'),
                (23, 'c'),
                (24, 'd'),
                (25, 'e'),
                (26, 'f')
            ]
        );
        assert_eq!(numbering.position(), anchor(12, 26));
        assert_eq!(seqs(&numbering.take(13, vec!['g'], None)), [(27, 'g')]);
    }

    #[test]
    fn an_anchor_just_before_the_first_held_message_numbers_at_once() {
        let mut numbering = Numbering::unknown();
        assert_eq!(
            seqs(&numbering.take(10, vec!['a'], anchor(9, 20))),
            [(21, 'a')]
        );
    }

    #[test]
    fn impossible_anchors_are_ignored() {
        let mut numbering = Numbering::unknown();
        // From the future, and one that counts fewer events than are held.
        assert!(
            numbering
                .take(10, vec!['a', 'b'], anchor(11, 30))
                .is_empty()
        );
        assert!(numbering.take(11, vec!['c'], anchor(10, 1)).is_empty());
        assert_eq!(
            seqs(&numbering.take(12, vec![], anchor(11, 6))),
            [(4, 'a'), (5, 'b'), (6, 'c')]
        );
    }

    #[test]
    fn skipped_messages_make_the_count_unknown_again() {
        let mut numbering = Numbering::known(0, 0);
        assert_eq!(seqs(&numbering.take(1, vec!['a'], None)), [(1, 'a')]);
        // Messages 2..=4 were trimmed before this node read them.
        assert!(numbering.take(5, vec!['b'], None).is_empty());
        assert_eq!(numbering.position(), None);
        assert_eq!(
            seqs(&numbering.take(6, vec!['c'], anchor(5, 9))),
            [(9, 'b'), (10, 'c')]
        );
    }
}
