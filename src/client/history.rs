//! `tcpchat history`: prints the room's recent events and exits.
//!
//! It connects as `viewer tags history=N` (or `since=SEQ`), takes the seq in the
//! welcome line as the end of what to print, prints the replayed events up to it
//! and leaves without waiting for live ones.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::conn::{ClientError, Connection, Handshake, Server};
use super::tags::{self, RoomEvent};
use crate::protocol::wire::Notice;
use crate::room::Role;

/// How long the server may take to send the next replayed event.
const REPLAY_SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Which events to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last N of the log (the server caps N at 10000).
    Last(u32),
    /// Every event after this seq that the log still keeps.
    Since(u64),
}

/// How to print them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `SEQ TIME TEXT`, one event per line (TIME as the server wrote it, UTC).
    Plain,
    /// One JSON object per line: `{"seq":N,"time":"...","id":"...","text":"..."}`
    /// (`id` only when the event has one).
    Json,
}

/// One event as `--json` prints it.
#[derive(Serialize)]
struct JsonEvent<'a> {
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
}

/// The line that prints `event`.
pub fn format_event(event: &RoomEvent, output: Output) -> String {
    match output {
        Output::Plain => format!(
            "{} {} {}",
            event.seq,
            event.time.as_deref().unwrap_or("-"),
            event.text
        ),
        Output::Json => {
            let json = JsonEvent {
                seq: event.seq,
                time: event.time.as_deref(),
                id: event.id.as_deref(),
                text: &event.text,
            };
            // Strings and integers always serialize.
            serde_json::to_string(&json).unwrap_or_default()
        }
    }
}

/// Prints the events in `range` to stdout, and notices (a gap in what the log
/// keeps) to stderr.
///
/// # Errors
/// [`ClientError`]: unreachable, refused (a server without history refuses the
/// `tags` option), or the connection ended before the replay did.
pub async fn run(server: Server, range: Range, output: Output) -> Result<(), ClientError> {
    let hello = Handshake {
        heartbeat: false,
        goodbye: false,
        tags: true,
        history: match range {
            Range::Last(n) => Some(n),
            Range::Since(_) => None,
        },
        since: match range {
            Range::Since(seq) => Some(seq),
            Range::Last(_) => None,
        },
        ..Handshake::new(Role::Viewer, None)
    };
    let mut conn = Connection::open_with(&server, &hello).await?;
    let Some(end) = tags::split(&conn.greeting).0.seq else {
        return Err(ClientError::Unexpected(conn.greeting));
    };
    let mut last = match range {
        Range::Since(seq) => seq,
        // Nothing asked for, nothing coming.
        Range::Last(0) => end,
        Range::Last(_) => 0,
    };
    let mut stdout = std::io::stdout().lock();
    while last < end {
        let line = tokio::time::timeout(REPLAY_SILENCE_LIMIT, conn.reader.next_line())
            .await
            .map_err(|_| ClientError::Silent(REPLAY_SILENCE_LIMIT))??;
        let Some(line) = line else {
            return Err(ClientError::Closed { reason: None });
        };
        if line.starts_with("*** ") {
            match Notice::parse(&line) {
                Some(Notice::Error { text, .. } | Notice::Bye { text }) => {
                    return Err(ClientError::Closed { reason: Some(text) });
                }
                Some(
                    Notice::Ping
                    | Notice::Ok { .. }
                    | Notice::Token { .. }
                    | Notice::Members { .. },
                ) => {}
                // A gap in what the log keeps, or news this client does not know.
                Some(Notice::Gap { .. }) | None => {
                    // stderr may be gone; the events matter more.
                    let _ = writeln!(std::io::stderr(), "tcpchat: {line}");
                }
            }
            continue;
        }
        let Some(event) = tags::event(&line) else {
            return Err(ClientError::Unexpected(line));
        };
        if event.seq <= last {
            continue;
        }
        last = event.seq;
        if writeln!(stdout, "{}", format_event(&event, output)).is_err() {
            // Nobody reads our output any more (`| head`): done.
            return Ok(());
        }
    }
    let _ = stdout.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, text: &str) -> RoomEvent {
        RoomEvent {
            seq: 12,
            time: Some("2026-11-29T05:41:07.123Z".into()),
            id: id.map(str::to_owned),
            text: text.into(),
        }
    }

    #[test]
    fn plain_lines_are_seq_time_text() {
        assert_eq!(
            format_event(&event(None, "alice: hi  there"), Output::Plain),
            "12 2026-11-29T05:41:07.123Z alice: hi  there"
        );
    }

    #[test]
    fn json_lines_have_an_id_only_when_the_event_does() {
        assert_eq!(
            format_event(&event(Some("x-1"), "alice: \"quoted\" \\ ☃"), Output::Json),
            r#"{"seq":12,"time":"2026-11-29T05:41:07.123Z","id":"x-1","text":"alice: \"quoted\" \\ ☃"}"#
        );
        assert_eq!(
            format_event(&event(None, "bob has joined the chat."), Output::Json),
            r#"{"seq":12,"time":"2026-11-29T05:41:07.123Z","text":"bob has joined the chat."}"#
        );
    }
}
