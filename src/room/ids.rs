//! Message ids: what makes a resent line harmless.
//!
//! A client that asked for tags may start a line with `@id=TOKEN ` (1 to
//! [`MAX_ID_CHARS`] characters of `A-Za-z0-9_-`). The room remembers the last
//! [`IDS_PER_NAME`] ids each name used and ignores a line whose id it has seen from
//! that name, so a client that is not sure its line landed (its connection dropped)
//! can send it again. Pure: no I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Longest id, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// Ids remembered per name: far more than a client resends after a reconnect.
pub const IDS_PER_NAME: usize = 1024;

/// Names whose ids are remembered; past this, only the names of members still in
/// the room are kept.
pub const NAMES_REMEMBERED: usize = 4096;

const PREFIX: &[u8] = b"@id=";

/// Whether `id` is a well-formed message id.
pub fn is_valid(id: &[u8]) -> bool {
    (1..=MAX_ID_CHARS).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits `@id=TOKEN text` into the id and the text. A line without a well-formed
/// prefix is all text.
pub fn split(line: &[u8]) -> (Option<&str>, &[u8]) {
    let Some(rest) = line.strip_prefix(PREFIX) else {
        return (None, line);
    };
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return (None, line);
    };
    let (id, text) = (&rest[..space], &rest[space + 1..]);
    match std::str::from_utf8(id) {
        Ok(id) if is_valid(id.as_bytes()) => (Some(id), text),
        _ => (None, line),
    }
}

/// The ids each name used lately.
#[derive(Debug, Default)]
pub struct RecentIds {
    by_name: HashMap<Arc<str>, VecDeque<Arc<str>>>,
}

impl RecentIds {
    /// Whether `name` used `id` lately.
    pub fn contains(&self, name: &str, id: &str) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|ids| ids.iter().any(|seen| &**seen == id))
    }

    /// Remembers that `name` used `id`. `is_present` says whether a name is held by
    /// a member now: those are kept when the list of names is pruned.
    pub fn insert(&mut self, name: &Arc<str>, id: Arc<str>, is_present: impl Fn(&str) -> bool) {
        if !self.by_name.contains_key(name) && self.by_name.len() >= NAMES_REMEMBERED {
            self.by_name.retain(|name, _| is_present(name));
        }
        let ids = self.by_name.entry(name.clone()).or_default();
        if ids.len() >= IDS_PER_NAME {
            ids.pop_front();
        }
        ids.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_an_id_only_when_well_formed() {
        assert_eq!(split(b"@id=a-1_B hello"), (Some("a-1_B"), &b"hello"[..]));
        assert_eq!(split(b"@id=x "), (Some("x"), &b""[..]));
        for line in [
            &b"@id= hello"[..],
            b"@id=a.b hello",
            b"@id=abc",
            b"@ID=abc hi",
            b"hello @id=abc x",
        ] {
            assert_eq!(split(line), (None, line), "{line:?}");
        }
        let long = format!("@id={} x", "a".repeat(MAX_ID_CHARS + 1));
        assert_eq!(split(long.as_bytes()).0, None);
        let longest = format!("@id={} x", "a".repeat(MAX_ID_CHARS));
        assert!(split(longest.as_bytes()).0.is_some());
    }

    #[test]
    fn ids_are_remembered_per_name_within_the_bound() {
        let mut ids = RecentIds::default();
        let alice: Arc<str> = "alice".into();
        for n in 0..=IDS_PER_NAME {
            ids.insert(&alice, n.to_string().into(), |_| true);
        }
        assert!(!ids.contains("alice", "0"), "the oldest is forgotten");
        assert!(ids.contains("alice", "1"));
        assert!(ids.contains("alice", &IDS_PER_NAME.to_string()));
        assert!(!ids.contains("bob", "1"), "ids are per name");
    }
}
