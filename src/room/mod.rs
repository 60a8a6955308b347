//! The room: who is here, under which name, and the order of everything that happens.
//!
//! This is the core of tcpchat. It is a plain struct with synchronous methods that
//! return events or errors. It performs no I/O, reads no clock, knows no sockets and
//! no wire format; the hub task owns the only instance, so it needs no lock. Every
//! rule about membership and text lives here, so that every transport obeys the same
//! rules: names are unique among connected messengers, the `NAME: ` prefix comes from
//! the member record, a message with line breaks becomes one event per line, and
//! sequence numbers are assigned here and nowhere else.

mod event;
pub mod ids;
pub mod name;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use thiserror::Error;

pub use event::{ConnId, Event, EventKind, Role};
use ids::RecentIds;

use name::NameError;

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JoinError {
    /// Another connected messenger holds the name.
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    /// The name breaks a rule.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The connection is already a member (a transport bug, reported, not panicked on).
    #[error("this connection has already joined")]
    AlreadyMember,
    /// In a cluster: the name could not be claimed, as NATS is out of reach.
    #[error("the cluster cannot be reached to claim the name; try again")]
    Unavailable,
}

impl JoinError {
    /// The stable code that line-mode error notices carry.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NameTaken(_) => "name-taken",
            Self::Name(NameError::Empty) => "name-empty",
            Self::Name(NameError::TooLong { .. }) => "name-too-long",
            Self::Name(NameError::Forbidden(_)) => "name-invalid",
            Self::AlreadyMember => "already-joined",
            Self::Unavailable => "cluster-unavailable",
        }
    }
}

/// Why a post was refused (transport bugs, reported rather than panicked on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PostError {
    /// The connection has not joined, or has left.
    #[error("not a member of the room")]
    NotMember,
    /// Viewers do not send.
    #[error("viewers cannot send messages")]
    CannotSend,
}

#[derive(Debug)]
struct Member {
    role: Role,
    name: Option<Arc<str>>,
    /// False while a name is only reserved: nobody has been told of this member yet.
    announced: bool,
    /// Whether its lines may carry `@id=` prefixes (it asked for tags).
    tagged: bool,
    /// The secret that lets another connection take its name over.
    token: Option<String>,
}

/// How a member joins, beyond its role and name.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    /// It asked for tags: its lines may carry `@id=` prefixes.
    pub tagged: bool,
    /// The secret it presents to take over its name from another connection.
    pub token: Option<&'a str>,
    /// The secret it will hold (drawn by the caller: the room has no randomness).
    pub new_token: Option<String>,
    /// In a cluster: the name was handed over from a member of another node (with
    /// its secret), so the room already has this member: no join is announced.
    pub adopted: bool,
}

/// How a join went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A new member (announced, for roles with a name).
    New,
    /// It took its name over from `from`, which is no longer a member; the room was
    /// told nothing.
    Reclaimed {
        /// The connection that held the name.
        from: ConnId,
    },
}

/// The state of the chat room. See the module documentation.
#[derive(Debug)]
pub struct Room {
    members: HashMap<ConnId, Member>,
    names: HashMap<Arc<str>, ConnId>,
    last_seq: u64,
    max_name_chars: usize,
    recent_ids: RecentIds,
    /// A replica (a cluster node): its events are proposals, numbered by the
    /// cluster's stream; [`Room::apply`] takes them back in the stream's order.
    replica: bool,
    /// In a replica, everyone in the room on every node (name -> times joined and
    /// not left), from the applied events.
    everyone: BTreeMap<Arc<str>, usize>,
}

impl Room {
    /// Names may be up to `max_name_chars` characters long from now on (a reload).
    pub fn set_max_name_chars(&mut self, max_name_chars: usize) {
        self.max_name_chars = max_name_chars;
    }

    /// An empty room whose names may be up to `max_name_chars` characters long.
    pub fn new(max_name_chars: usize) -> Self {
        Self {
            members: HashMap::new(),
            names: HashMap::new(),
            last_seq: 0,
            max_name_chars,
            recent_ids: RecentIds::default(),
            replica: false,
            everyone: BTreeMap::new(),
        }
    }

    /// A replica of a room kept in a cluster's stream, which has numbered events up
    /// to `last_seq`. Its joins, posts and leaves are proposals (numbered 0) for the
    /// stream; the stream's events come back through [`Room::apply`], which numbers
    /// the room and tells who is in it.
    pub fn replica(max_name_chars: usize, last_seq: u64) -> Self {
        Self {
            replica: true,
            ..Self::resume(max_name_chars, last_seq)
        }
    }

    /// Takes an event of the cluster's stream, in the stream's order (a replica).
    pub fn apply(&mut self, event: &Event) {
        self.last_seq = self.last_seq.max(event.seq);
        match &event.kind {
            EventKind::Joined { name } => *self.everyone.entry(name.clone()).or_default() += 1,
            EventKind::Left { name } => {
                if let Some(count) = self.everyone.get_mut(name) {
                    *count -= 1;
                    if *count == 0 {
                        self.everyone.remove(name);
                    }
                }
            }
            EventKind::Posted { name, .. } => {
                if let Some(id) = &event.id {
                    let everyone = &self.everyone;
                    self.recent_ids
                        .insert(name, id.clone(), |n| everyone.contains_key(n));
                }
            }
        }
    }

    /// A room whose history goes on from `last_seq` (a restart on a kept log): its
    /// next event is `last_seq + 1`.
    pub fn resume(max_name_chars: usize, last_seq: u64) -> Self {
        Self {
            last_seq,
            ..Self::new(max_name_chars)
        }
    }

    /// Remembers that `name` posted with `id` (from the log, after a restart), so a
    /// resend of it is ignored.
    pub fn remember_id(&mut self, name: &str, id: &str) {
        let names = &self.names;
        self.recent_ids
            .insert(&Arc::from(name), Arc::from(id), |n| names.contains_key(n));
    }

    /// Announces that `name` left, for a member of an earlier run of the server that
    /// the log still shows in the room. Does nothing if someone holds the name now.
    pub fn farewell(&mut self, name: &str, out: &mut Vec<Event>) {
        if self.names.contains_key(name) {
            return;
        }
        let seq = self.next_seq();
        out.push(Event::new(seq, EventKind::Left { name: name.into() }));
    }

    /// Holds `name` for `id` without announcing it, while the transport finds out
    /// whether the client is done with its handshake. A later [`Room::join`] by `id`
    /// with the same name announces it; with another name, or a [`Room::leave`],
    /// releases it silently.
    ///
    /// # Errors
    /// As [`Room::join`].
    pub fn reserve(&mut self, id: ConnId, name: &str) -> Result<(), JoinError> {
        if self.members.contains_key(&id) {
            return Err(JoinError::AlreadyMember);
        }
        let name = self.claim(id, name)?;
        self.members.insert(
            id,
            Member {
                role: Role::Messenger,
                name: Some(name),
                announced: false,
                tagged: false,
                token: None,
            },
        );
        Ok(())
    }

    /// Makes `id` a member in `role`. Messengers and chatters need a `name`, which
    /// must follow the name rules and be free (or reserved by `id`); their arrival is
    /// pushed to `out` as [`EventKind::Joined`]. Viewers join silently.
    ///
    /// # Errors
    /// [`JoinError::NameTaken`] or [`JoinError::Name`] for the client;
    /// [`JoinError::AlreadyMember`] if `id` already joined.
    pub fn join(
        &mut self,
        id: ConnId,
        role: Role,
        name: Option<&str>,
        out: &mut Vec<Event>,
    ) -> Result<(), JoinError> {
        self.join_with(id, role, name, Credentials::default(), out)
            .map(|_| ())
    }

    /// [`Room::join`], with `credentials`: a member that presents the secret of the
    /// connection holding its name takes the name over from it, silently
    /// ([`Joined::Reclaimed`]); a wrong secret is refused like any taken name.
    ///
    /// # Errors
    /// As [`Room::join`].
    pub fn join_with(
        &mut self,
        id: ConnId,
        role: Role,
        name: Option<&str>,
        credentials: Credentials<'_>,
        out: &mut Vec<Event>,
    ) -> Result<Joined, JoinError> {
        let reserved = match self.members.get(&id) {
            Some(member) if member.announced => return Err(JoinError::AlreadyMember),
            Some(member) => member.name.clone(),
            None => None,
        };
        if role.sends()
            && let Some(from) = self.reclaimable(id, name.unwrap_or_default(), &credentials)
        {
            let Some(old) = self.members.remove(&from) else {
                return Err(JoinError::AlreadyMember);
            };
            self.release(id);
            if let Some(name) = &old.name {
                self.names.insert(name.clone(), id);
            }
            self.members.insert(
                id,
                Member {
                    role,
                    name: old.name,
                    announced: true,
                    tagged: credentials.tagged,
                    token: credentials.new_token,
                },
            );
            return Ok(Joined::Reclaimed { from });
        }
        let name = if role.sends() {
            let wanted = name.unwrap_or_default();
            match reserved {
                Some(held) if *held == *wanted => Some(held),
                _ => {
                    self.release(id);
                    Some(self.claim(id, wanted)?)
                }
            }
        } else {
            self.release(id);
            None
        };
        if let Some(name) = &name
            && !credentials.adopted
        {
            let seq = self.next_seq();
            out.push(Event::new(seq, EventKind::Joined { name: name.clone() }));
        }
        self.members.insert(
            id,
            Member {
                role,
                name,
                announced: true,
                tagged: credentials.tagged,
                token: credentials.new_token,
            },
        );
        Ok(Joined::New)
    }

    /// The member whose name `id` may take over with the secret it presents.
    fn reclaimable(&self, id: ConnId, name: &str, credentials: &Credentials<'_>) -> Option<ConnId> {
        let presented = credentials.token?;
        let holder = *self.names.get(name)?;
        if holder == id {
            return None;
        }
        let held = self.members.get(&holder)?;
        let secret = held.token.as_deref().filter(|_| held.announced)?;
        // Constant time: how much of a guess was right must not show in the timing.
        bool::from(secret.as_bytes().ct_eq(presented.as_bytes())).then_some(holder)
    }

    /// Posts `text` from `id`: one [`EventKind::Posted`] per non-empty line, each
    /// neutralized by [`text::sanitize`] and prefixed with the member's own name. For
    /// a member that asked for tags, a line's `@id=TOKEN ` prefix becomes the event's
    /// id, and a line whose id this name used lately makes no event ([`ids`]).
    /// Returns how many events were pushed to `out`.
    ///
    /// # Errors
    /// [`PostError`] if `id` is not a member that sends.
    pub fn post(
        &mut self,
        id: ConnId,
        bytes: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<usize, PostError> {
        let member = self
            .members
            .get(&id)
            .filter(|m| m.announced)
            .ok_or(PostError::NotMember)?;
        let name = match (&member.name, member.role.sends()) {
            (Some(name), true) => name.clone(),
            _ => return Err(PostError::CannotSend),
        };
        let tagged = member.tagged;
        let before = out.len();
        for line in text::lines(bytes) {
            let (id, line) = if tagged {
                ids::split(line)
            } else {
                (None, line)
            };
            if line.is_empty() {
                continue;
            }
            let id = match id {
                Some(id) if self.recent_ids.contains(&name, id) => continue,
                Some(id) => {
                    let id: Arc<str> = Arc::from(id);
                    let names = &self.names;
                    self.recent_ids
                        .insert(&name, id.clone(), |n| names.contains_key(n));
                    Some(id)
                }
                None => None,
            };
            let seq = self.next_seq();
            out.push(Event {
                id,
                ..Event::new(
                    seq,
                    EventKind::Posted {
                        name: name.clone(),
                        text: text::sanitize(line).into_owned(),
                    },
                )
            });
        }
        Ok(out.len() - before)
    }

    /// Removes `id`. A messenger's departure is pushed to `out` as
    /// [`EventKind::Left`] and its name is free at once. Returns whether `id` was here.
    pub fn leave(&mut self, id: ConnId, out: &mut Vec<Event>) -> bool {
        let Some(member) = self.members.remove(&id) else {
            return false;
        };
        if let Some(name) = member.name {
            self.names.remove(&name);
            if member.announced {
                let seq = self.next_seq();
                out.push(Event::new(seq, EventKind::Left { name }));
            }
        }
        true
    }

    /// Everyone leaves (the server is stopping): each announced member's departure
    /// is pushed to `out`, in the order of their names.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        let mut ids: Vec<(Option<Arc<str>>, ConnId)> = self
            .members
            .iter()
            .map(|(id, member)| (member.name.clone(), *id))
            .collect();
        ids.sort();
        for (_, id) in ids {
            self.leave(id, out);
        }
    }

    /// In a replica: whether `name` is in the room on any node, as applied so far.
    pub fn is_present(&self, name: &str) -> bool {
        self.everyone.contains_key(name)
    }

    /// The names of the members in the room now (announced, so not reservations),
    /// sorted.
    pub fn present(&self) -> Vec<Arc<str>> {
        if self.replica {
            return self.everyone.keys().cloned().collect();
        }
        let mut names: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|member| member.announced)
            .filter_map(|member| member.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The member here that holds (or has reserved) `name`, if any.
    pub fn holder(&self, name: &str) -> Option<ConnId> {
        self.names.get(name).copied()
    }

    /// Takes `id` out without announcing anything (in a cluster: its name was handed
    /// over to a member of another node, and the room still has that member).
    pub fn forget(&mut self, id: ConnId) {
        if let Some(member) = self.members.remove(&id)
            && let Some(name) = member.name
        {
            self.names.remove(&name);
        }
    }

    /// The name `id` holds or has reserved, if any.
    pub fn name_of(&self, id: ConnId) -> Option<&str> {
        self.members.get(&id)?.name.as_deref()
    }

    /// How many members are here, reserved names included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The sequence number of the latest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn next_seq(&mut self) -> u64 {
        if self.replica {
            // A proposal: the stream numbers it.
            return 0;
        }
        self.last_seq += 1;
        self.last_seq
    }

    fn claim(&mut self, id: ConnId, name: &str) -> Result<Arc<str>, JoinError> {
        name::validate(name, self.max_name_chars)?;
        if self.names.contains_key(name) {
            return Err(JoinError::NameTaken(name.to_owned()));
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(name.clone(), id);
        Ok(name)
    }

    fn release(&mut self, id: ConnId) {
        if let Some(member) = self.members.remove(&id)
            && let Some(name) = member.name
        {
            self.names.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const V: ConnId = ConnId(3);

    fn room() -> Room {
        Room::new(32)
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind.clone()).collect()
    }

    fn joined(name: &str) -> EventKind {
        EventKind::Joined { name: name.into() }
    }

    fn posted(name: &str, text: &str) -> EventKind {
        EventKind::Posted {
            name: name.into(),
            text: text.into(),
        }
    }

    fn left(name: &str) -> EventKind {
        EventKind::Left { name: name.into() }
    }

    #[test]
    fn a_session_produces_numbered_events_in_order() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(V, Role::Viewer, None, &mut out).unwrap();
        assert!(out.is_empty(), "viewers join silently");
        room.join(A, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        room.post(A, b"hello world", &mut out).unwrap();
        room.leave(A, &mut out);
        assert_eq!(
            kinds(&out),
            vec![
                joined("alice"),
                posted("alice", "hello world"),
                left("alice")
            ]
        );
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(room.leave(V, &mut out));
        assert_eq!(out.len(), 3, "viewers leave silently");
    }

    #[test]
    fn names_are_unique_and_free_again_at_once() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        assert_eq!(
            room.join(B, Role::Chatter, Some("alice"), &mut out),
            Err(JoinError::NameTaken("alice".into()))
        );
        room.leave(A, &mut out);
        room.join(B, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        assert_eq!(room.name_of(B), Some("alice"));
    }

    #[test]
    fn bad_names_are_refused_by_the_room_too() {
        let mut room = room();
        let mut out = Vec::new();
        for (name, code) in [
            (None, "name-empty"),
            (Some(""), "name-empty"),
            (Some("a:b"), "name-invalid"),
            (Some("a\u{1b}"), "name-invalid"),
            (Some(&*"x".repeat(33)), "name-too-long"),
        ] {
            let err = room.join(A, Role::Messenger, name, &mut out).unwrap_err();
            assert_eq!(err.code(), code, "{name:?}");
        }
        assert!(out.is_empty() && room.is_empty());
    }

    #[test]
    fn a_message_with_line_breaks_becomes_one_line_per_break_with_the_true_prefix() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("mallory"), &mut out)
            .unwrap();
        out.clear();
        let n = room
            .post(
                A,
                b"hi\nalice: I owe mallory money\r\n\r\nbob has left the chat",
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            kinds(&out),
            vec![
                posted("mallory", "hi"),
                posted("mallory", "alice: I owe mallory money"),
                posted("mallory", "bob has left the chat"),
            ]
        );
    }

    #[test]
    fn a_bare_carriage_return_cannot_rewrite_the_line() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("mallory"), &mut out)
            .unwrap();
        out.clear();
        room.post(A, b"\ralice: hi\x1b[1A", &mut out).unwrap();
        assert_eq!(
            kinds(&out),
            vec![posted("mallory", "\u{240D}alice: hi\u{241B}[1A")]
        );
    }

    #[test]
    fn empty_posts_produce_nothing() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("a"), &mut out).unwrap();
        out.clear();
        assert_eq!(room.post(A, b"\r\n\n", &mut out), Ok(0));
        assert!(out.is_empty());
    }

    #[test]
    fn only_senders_may_post() {
        let mut room = room();
        let mut out = Vec::new();
        assert_eq!(room.post(A, b"x", &mut out), Err(PostError::NotMember));
        room.join(V, Role::Viewer, None, &mut out).unwrap();
        assert_eq!(room.post(V, b"x", &mut out), Err(PostError::CannotSend));
        assert_eq!(
            room.join(V, Role::Viewer, None, &mut out),
            Err(JoinError::AlreadyMember)
        );
    }

    #[test]
    fn a_reservation_holds_the_name_silently_until_joined() {
        let mut room = room();
        let mut out = Vec::new();
        room.reserve(A, "alice").unwrap();
        assert_eq!(
            room.join(B, Role::Messenger, Some("alice"), &mut out),
            Err(JoinError::NameTaken("alice".into()))
        );
        assert_eq!(room.post(A, b"early", &mut out), Err(PostError::NotMember));
        room.join(A, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        assert_eq!(kinds(&out), vec![joined("alice")]);
    }

    #[test]
    fn a_reservation_is_released_by_another_name_or_by_leaving() {
        let mut room = room();
        let mut out = Vec::new();
        room.reserve(A, "al").unwrap();
        room.join(A, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        room.join(B, Role::Messenger, Some("al"), &mut out).unwrap();
        assert_eq!(kinds(&out), vec![joined("alice"), joined("al")]);

        out.clear();
        room.reserve(V, "zed").unwrap();
        assert!(room.leave(V, &mut out));
        assert!(out.is_empty(), "nobody was told of the reservation");
        room.reserve(ConnId(9), "zed").unwrap();
    }

    fn tagged(token: &str) -> Credentials<'static> {
        Credentials {
            tagged: true,
            token: None,
            new_token: Some(token.to_owned()),
            adopted: false,
        }
    }

    #[test]
    fn the_right_secret_takes_a_name_over_silently_and_a_wrong_one_is_refused() {
        let mut room = room();
        let mut out = Vec::new();
        room.join_with(A, Role::Chatter, Some("alice"), tagged("s1"), &mut out)
            .unwrap();
        out.clear();
        let wrong = Credentials {
            token: Some("s2"),
            ..tagged("x")
        };
        assert_eq!(
            room.join_with(B, Role::Chatter, Some("alice"), wrong, &mut out),
            Err(JoinError::NameTaken("alice".into()))
        );
        let right = Credentials {
            token: Some("s1"),
            ..tagged("s3")
        };
        assert_eq!(
            room.join_with(B, Role::Chatter, Some("alice"), right, &mut out),
            Ok(Joined::Reclaimed { from: A })
        );
        assert!(out.is_empty(), "no leave and no second join");
        assert_eq!(room.name_of(B), Some("alice"));
        assert!(!room.leave(A, &mut out), "the old connection is no member");
        assert!(out.is_empty());
        // The secret changed hands: the old one no longer works.
        let replayed = Credentials {
            token: Some("s1"),
            ..tagged("s4")
        };
        assert!(
            room.join_with(V, Role::Chatter, Some("alice"), replayed, &mut out)
                .is_err()
        );
        assert_eq!(room.post(B, b"still here", &mut out), Ok(1));
    }

    #[test]
    fn a_repeated_id_makes_no_event_and_ids_belong_to_their_name() {
        let mut room = room();
        let mut out = Vec::new();
        room.join_with(A, Role::Chatter, Some("alice"), tagged("a"), &mut out)
            .unwrap();
        room.join_with(B, Role::Chatter, Some("bob"), tagged("b"), &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            room.post(A, b"@id=k1 hi\n@id=k1 hi\n@id=k2 there", &mut out),
            Ok(2)
        );
        assert_eq!(room.post(B, b"@id=k1 mine", &mut out), Ok(1));
        assert_eq!(
            out.iter().map(|e| e.id.as_deref()).collect::<Vec<_>>(),
            vec![Some("k1"), Some("k2"), Some("k1")]
        );
        assert_eq!(kinds(&out)[0], posted("alice", "hi"));
        // Remembered from the log after a restart, as well.
        let mut room = Room::resume(32, 100);
        room.remember_id("alice", "k9");
        room.join_with(A, Role::Chatter, Some("alice"), tagged("a"), &mut out)
            .unwrap();
        out.clear();
        assert_eq!(room.post(A, b"@id=k9 again", &mut out), Ok(0));
        assert_eq!(room.post(A, b"@id=k10 new", &mut out), Ok(1));
        assert_eq!(out[0].seq, 102, "the numbers go on from the log");
    }

    #[test]
    fn untagged_members_send_id_prefixes_as_text() {
        let mut room = room();
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("alice"), &mut out)
            .unwrap();
        out.clear();
        room.post(A, b"@id=k1 hi", &mut out).unwrap();
        assert_eq!(kinds(&out), vec![posted("alice", "@id=k1 hi")]);
        assert_eq!(out[0].id, None);
    }

    #[test]
    fn members_of_an_earlier_run_are_seen_leaving_unless_back() {
        let mut room = Room::resume(32, 7);
        let mut out = Vec::new();
        room.join(A, Role::Messenger, Some("bob"), &mut out)
            .unwrap();
        room.farewell("alice", &mut out);
        room.farewell("bob", &mut out);
        assert_eq!(kinds(&out), vec![joined("bob"), left("alice")]);
        assert_eq!(out[1].seq, 9);
    }

    proptest! {
        /// Whatever a sender posts, every event it causes carries its own name and
        /// no event text holds a character that could start a new terminal line.
        #[test]
        fn no_line_can_be_attributed_to_anyone_but_its_sender(
            text in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut room = room();
            let mut out = Vec::new();
            room.join(A, Role::Messenger, Some("mallory"), &mut out).unwrap();
            room.join(B, Role::Messenger, Some("alice"), &mut out).unwrap();
            out.clear();
            room.post(A, &text, &mut out).unwrap();
            for event in &out {
                let EventKind::Posted { name, text } = &event.kind else {
                    panic!("unexpected {event:?}")
                };
                prop_assert_eq!(&**name, "mallory");
                prop_assert!(!text.is_empty());
                prop_assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
            }
        }
    }
}
