//! Reading the tags a server puts before an event's line when the client asked for
//! `tags`: `@seq=N;time=2026-11-29T05:41:07.123Z;id=TOKEN TEXT`.
//!
//! Pure: strings in, values out. The keys this client knows are `seq`, `time` and
//! `id`; any other key is skipped, so a server may add tags without breaking it.
//! Notices (`*** ...`) are never tagged and are not read here.

/// An event of the room as a tagged line tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// Its place in the room's order: 1 for the first event, +1 per event.
    pub seq: u64,
    /// When the room accepted it, as the server wrote it (UTC, RFC 3339 with
    /// milliseconds), if it said.
    pub time: Option<String>,
    /// The `@id=` its sender gave it, if any.
    pub id: Option<String>,
    /// The line as an untagged client sees it: `alice: hello`,
    /// `alice has joined the chat.`, `alice has left the chat`.
    pub text: String,
}

impl RoomEvent {
    /// When the room accepted it, if the server said so in a form we can read.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.as_deref()?.parse().ok()
    }

    /// Whether `name` sent it: a message whose text starts with `NAME: `. (A name
    /// holds no `:`, so the first `: ` of a message always ends its sender's name.)
    pub fn is_message_from(&self, name: &str) -> bool {
        self.text
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(": "))
    }

    /// The name in a join, `NAME has joined the chat.`, if this is one.
    pub fn joined(&self) -> Option<&str> {
        name_before(&self.text, " has joined the chat.")
    }

    /// The name in a leave, `NAME has left the chat`, if this is one.
    pub fn left(&self) -> Option<&str> {
        name_before(&self.text, " has left the chat")
    }
}

/// The name `text` starts with when the rest is exactly `rest`. A name holds no
/// space and no `:`, so a message (`bob: x has left the chat`) is never taken for
/// a join or a leave.
fn name_before<'a>(text: &'a str, rest: &str) -> Option<&'a str> {
    let name = text.strip_suffix(rest)?;
    (!name.is_empty() && !name.contains([' ', ':'])).then_some(name)
}

/// The tags of one line; every field is `None` when the line has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tags<'a> {
    /// `seq=N`.
    pub seq: Option<u64>,
    /// `time=...`, as written.
    pub time: Option<&'a str>,
    /// `id=TOKEN`.
    pub id: Option<&'a str>,
}

/// Splits a line into its tags and its text. A line that does not start with a
/// well-formed tag block (`@key=value;key=value` then one space) is all text, with
/// no tags.
pub fn split(line: &str) -> (Tags<'_>, &str) {
    let untagged = (Tags::default(), line);
    let Some((block, text)) = line.strip_prefix('@').and_then(|rest| rest.split_once(' ')) else {
        return untagged;
    };
    let mut tags = Tags::default();
    for pair in block.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            return untagged;
        };
        match key {
            "seq" => match value.parse() {
                Ok(seq) => tags.seq = Some(seq),
                Err(_) => return untagged,
            },
            "time" => tags.time = Some(value),
            "id" => tags.id = Some(value),
            _ => {}
        }
    }
    (tags, text)
}

/// The event a tagged line stands for; `None` for a line without `seq`.
pub fn event(line: &str) -> Option<RoomEvent> {
    let (tags, text) = split(line);
    Some(RoomEvent {
        seq: tags.seq?,
        time: tags.time.map(str::to_owned),
        id: tags.id.map(str::to_owned),
        text: text.to_owned(),
    })
}

/// The longest `@id=` token the protocol allows.
pub const MAX_ID_CHARS: usize = 64;

/// Whether `id` may follow `@id=`: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_every_tag() {
        let line = "@seq=42;time=2026-11-29T05:41:07.123Z;id=ab-1 alice: hello there";
        let event = event(line).unwrap();
        assert_eq!(
            event,
            RoomEvent {
                seq: 42,
                time: Some("2026-11-29T05:41:07.123Z".into()),
                id: Some("ab-1".into()),
                text: "alice: hello there".into(),
            }
        );
        assert_eq!(
            event.timestamp().unwrap().as_millisecond(),
            1_795_930_867_123
        );
        assert!(event.is_message_from("alice"));
        assert!(!event.is_message_from("alic"));
        assert!(!event.is_message_from("bob"));
    }

    #[test]
    fn joins_and_leaves_name_who_came_and_went_and_messages_never_do() {
        let text = |text: &str| RoomEvent {
            seq: 1,
            time: None,
            id: None,
            text: text.into(),
        };
        assert_eq!(text("alice has joined the chat.").joined(), Some("alice"));
        assert_eq!(text("alice has left the chat").left(), Some("alice"));
        assert_eq!(text("alice has left the chat").joined(), None);
        for message in [
            "bob: x has left the chat",
            "bob: * has joined the chat.",
            " has left the chat",
            "alice has left the chat.",
        ] {
            assert_eq!(text(message).joined(), None, "{message}");
            assert_eq!(text(message).left(), None, "{message}");
        }
    }

    #[test]
    fn joins_leaves_and_the_welcome() {
        let join =
            event("@seq=1;time=2026-11-29T05:41:07.000Z alice has joined the chat.").unwrap();
        assert_eq!((join.seq, join.id.as_deref()), (1, None));
        assert_eq!(join.text, "alice has joined the chat.");
        assert!(!join.is_message_from("alice"));
        let (tags, text) = split("@seq=0 Welcome to the \"Bad IRC\" Chat Server!");
        assert_eq!(tags.seq, Some(0));
        assert_eq!(tags.time, None);
        assert_eq!(text, "Welcome to the \"Bad IRC\" Chat Server!");
    }

    #[test]
    fn unknown_tags_are_skipped_and_order_does_not_matter() {
        let line = "@time=2026-01-01T00:00:00.000Z;x-new=1;seq=7 bob: hi";
        let event = event(line).unwrap();
        assert_eq!(event.seq, 7);
        assert_eq!(event.text, "bob: hi");
    }

    #[test]
    fn lines_without_a_well_formed_tag_block_are_all_text() {
        for line in [
            "alice: @seq=1 hi",
            "Welcome to the \"Bad IRC\" Chat Server!",
            "@seq=1",
            "@seq=x alice: hi",
            "@seq=-1 alice: hi",
            "@novalue alice: hi",
            "",
        ] {
            let (tags, text) = split(line);
            assert_eq!(tags, Tags::default(), "{line:?}");
            assert_eq!(text, line);
            assert_eq!(event(line), None, "{line:?}");
        }
        // A tag block with no seq is a tag block, but not an event.
        assert_eq!(event("@id=abc alice: hi"), None);
    }

    #[test]
    fn the_text_keeps_its_spaces() {
        let event = event("@seq=3 alice:   spaced  out ").unwrap();
        assert_eq!(event.text, "alice:   spaced  out ");
    }

    #[test]
    fn ids_are_1_to_64_safe_characters() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("Zx9_-"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(65)));
        for bad in ["a b", "a;b", "a=b", "é", "a.b", "a\n"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
