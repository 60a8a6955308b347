//! Typed lines on their way to the room: each gets an `@id=` of its own, and stays
//! here until the room's event carrying that id comes back, however many
//! connections that takes. The server ignores an id it has seen from the same name,
//! so sending a line again on a new connection can never post it twice.
//!
//! Pure: no I/O, no clock. The random part of the ids comes from the system once.

use std::collections::VecDeque;

use super::tags::is_valid_id;

/// Hands out ids: a random prefix for this run of the program, then a counter
/// (`3f9a0c1d22b4e7a1-1`, `3f9a0c1d22b4e7a1-2`, ...). The server remembers ids per
/// name across its restarts, so the prefix keeps two runs under the same name from
/// ever reusing one.
#[derive(Debug, Clone)]
pub struct IdGen {
    prefix: String,
    next: u64,
}

impl IdGen {
    /// Ids with a fresh random prefix.
    pub fn random() -> Self {
        Self::with_prefix(&random_prefix())
    }

    /// Ids with a given prefix (tests); characters an id may not hold are dropped
    /// and the prefix is cut to leave room for the counter.
    pub fn with_prefix(prefix: &str) -> Self {
        let prefix: String = prefix
            .chars()
            .filter(|&c| is_valid_id(c.encode_utf8(&mut [0; 4])))
            .take(40)
            .collect();
        Self { prefix, next: 0 }
    }

    /// The next id: never the same twice from one generator.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        if self.prefix.is_empty() {
            self.next.to_string()
        } else {
            format!("{}-{}", self.prefix, self.next)
        }
    }
}

/// 64 random bits in hex, from the system's generator; should that fail, from the
/// standard library's hasher keys (also seeded by the system) mixed with the time
/// and the process id, which is still unique enough for ids.
fn random_prefix() -> String {
    let mut bytes = [0u8; 8];
    let bits = if getrandom::fill(&mut bytes).is_ok() {
        u64::from_le_bytes(bytes)
    } else {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    format!("{bits:016x}")
}

/// A typed line not yet seen in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its `@id=`.
    pub id: String,
    /// What was typed.
    pub text: String,
    /// The connection it was last written to, if any.
    sent_on: Option<u64>,
}

impl Pending {
    /// The line as written to the server, `\n` included.
    pub fn wire_line(&self) -> String {
        format!("@id={} {}\n", self.id, self.text)
    }
}

/// Lines typed and not yet seen landing, in the order they were typed.
#[derive(Debug)]
pub struct Outbox {
    lines: VecDeque<Pending>,
    ids: IdGen,
}

impl Outbox {
    /// An empty outbox that names lines with `ids`.
    pub fn new(ids: IdGen) -> Self {
        Self {
            lines: VecDeque::new(),
            ids,
        }
    }

    /// Queues a typed line (one line, without `\n`) and returns its id.
    pub fn push(&mut self, text: String) -> String {
        let id = self.ids.next_id();
        self.lines.push_back(Pending {
            id: id.clone(),
            text,
            sent_on: None,
        });
        id
    }

    /// The room has the line with this id: it is no longer pending. Returns whether
    /// it was (an id from an earlier run, or seen twice, is not).
    pub fn landed(&mut self, id: &str) -> bool {
        match self.lines.iter().position(|line| line.id == id) {
            Some(at) => {
                self.lines.remove(at);
                true
            }
            None => false,
        }
    }

    /// The lines not yet written to connection `link`, in order, now counted as
    /// written to it. On a new connection that is every pending line.
    pub fn take_unsent(&mut self, link: u64) -> Vec<Pending> {
        self.lines
            .iter_mut()
            .filter(|line| line.sent_on != Some(link))
            .map(|line| {
                line.sent_on = Some(link);
                line.clone()
            })
            .collect()
    }

    /// How many lines are pending.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether every typed line has landed.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The pending lines, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_never_repeat() {
        let mut ids = IdGen::random();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = ids.next_id();
            assert!(is_valid_id(&id), "{id}");
            assert!(seen.insert(id));
        }
        let first = IdGen::random().next_id();
        assert!(first.ends_with("-1") && first.len() == 18, "{first}");
    }

    #[test]
    fn two_runs_do_not_share_ids() {
        let a = IdGen::random().next_id();
        let b = IdGen::random().next_id();
        assert_ne!(a, b);
    }

    #[test]
    fn a_prefix_is_cleaned_and_bounded() {
        assert_eq!(IdGen::with_prefix("t").next_id(), "t-1");
        assert_eq!(IdGen::with_prefix("a b;c").next_id(), "abc-1");
        assert_eq!(IdGen::with_prefix("").next_id(), "1");
        let mut long = IdGen::with_prefix(&"x".repeat(100));
        let id = long.next_id();
        assert!(is_valid_id(&id) && id.len() == 42, "{id}");
        for _ in 0..10 {
            assert!(is_valid_id(&long.next_id()));
        }
    }

    #[test]
    fn lines_stay_until_they_land_and_are_resent_in_order() {
        let mut outbox = Outbox::new(IdGen::with_prefix("t"));
        assert_eq!(outbox.push("one".into()), "t-1");
        assert_eq!(outbox.push("two".into()), "t-2");
        let first: Vec<String> = outbox
            .take_unsent(1)
            .iter()
            .map(Pending::wire_line)
            .collect();
        assert_eq!(first, ["@id=t-1 one\n", "@id=t-2 two\n"]);
        // Written once per connection.
        assert!(outbox.take_unsent(1).is_empty());
        outbox.push("three".into());
        let ids = |lines: Vec<Pending>| lines.into_iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(ids(outbox.take_unsent(1)), ["t-3"]);
        assert!(outbox.landed("t-1"));
        assert!(!outbox.landed("t-1"), "landing twice");
        assert!(!outbox.landed("other-1"));
        // A new connection gets everything still pending, in typed order.
        assert_eq!(ids(outbox.take_unsent(2)), ["t-2", "t-3"]);
        // A line can land out of order (a resend raced an earlier write).
        assert!(outbox.landed("t-3"));
        assert_eq!(outbox.len(), 1);
        assert!(outbox.landed("t-2"));
        assert!(outbox.is_empty());
    }
}
