//! How `chat` and `viewer` show a session's [`Update`]s: events with their time in
//! the local time zone (`12:41`, with the date when it is not today), status lines
//! as `*** ...`. On a terminal that takes colors (stdout is one, `TERM` is not
//! `dumb`, and `NO_COLOR` is not set), times and status lines are dimmed and, in
//! `chat`, the name on your own lines is bold, so they stand apart from others'.
//!
//! Performs no I/O: it turns updates into text. The clock and the time zone come in
//! as values, so the rules can be tested.

use std::io::IsTerminal;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::session::Update;

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Turns updates into lines to print.
#[derive(Debug, Clone)]
pub struct Style {
    /// Dim times and status lines, and embolden your own name, with ANSI.
    pub color: bool,
    /// Messages from this name (yours, in `chat`) show it in bold.
    pub own_name: Option<String>,
    /// Times are shown in this zone.
    pub zone: TimeZone,
    /// Events of this day show only their time of day.
    pub today: Date,
}

impl Style {
    /// The style for this process's stdout: color on a terminal unless `NO_COLOR`
    /// is set (to anything but an empty string, as <https://no-color.org> asks) or
    /// `TERM` is `dumb`, and the system's time zone.
    pub fn for_stdout() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var_os("TERM").is_some_and(|term| term == "dumb");
        let zone = TimeZone::system();
        let today = jiff::Timestamp::now()
            .to_zoned_datetime(zone.clone())
            .date();
        Self {
            color: std::io::stdout().is_terminal() && !no_color,
            own_name: None,
            zone,
            today,
        }
    }

    /// Plain text, UTC (tests).
    pub fn plain_utc(today: Date) -> Self {
        Self {
            color: false,
            own_name: None,
            zone: TimeZone::UTC,
            today,
        }
    }

    /// The line that shows `update`.
    pub fn render(&self, update: &Update) -> String {
        match update {
            Update::Welcome(text) => text.clone(),
            Update::Line(text) => self.line(text),
            Update::Event(event) => match event.timestamp() {
                Some(time) => format!("{} {}", self.dim(&self.time(time)), self.line(&event.text)),
                None => self.line(&event.text),
            },
            Update::Members {
                names: Some(names),
                connected,
            } => self.status(&format!(
                "*** {}in the room ({}): {}",
                if *connected {
                    ""
                } else {
                    "not connected; when last connected, "
                },
                names.len(),
                names.join(" ")
            )),
            Update::Members { names: None, .. } => {
                self.status("*** this server does not say who is in the room")
            }
            Update::Queued { text } => self.status(&format!(
                "*** not connected: sending when reconnected: {text}"
            )),
            Update::Lost { reason, retry_in } => self.status(&format!(
                "*** connection lost ({reason}); reconnecting in {}...",
                seconds(*retry_in)
            )),
            Update::Retrying { reason, retry_in } => self.status(&format!(
                "*** cannot reconnect ({reason}); retrying in {}...",
                seconds(*retry_in)
            )),
            Update::Reconnected => self.status("*** reconnected"),
            Update::Notice(line) => self.status(line),
            Update::HistoryReset { shown, server } => self.status(&format!(
                "*** the server's history starts over (it is at event {server}; \
                 this window had shown up to {shown})"
            )),
            Update::Leaving { pending, timeout } => self.status(&format!(
                "*** waiting up to {} for {pending} unsent line{} to reach the room \
                 (Ctrl-C to give up)",
                seconds(*timeout),
                if *pending == 1 { "" } else { "s" }
            )),
        }
    }

    /// `12:41` today, `2026-11-28 12:41` on other days, in the local zone.
    pub fn time(&self, time: jiff::Timestamp) -> String {
        let local = time.to_zoned_datetime(self.zone.clone());
        if local.date() == self.today {
            local.strftime("%H:%M").to_string()
        } else {
            local.strftime("%Y-%m-%d %H:%M").to_string()
        }
    }

    /// A line of the room: a message from [`Style::own_name`] has that name in
    /// bold when colored.
    fn line(&self, text: &str) -> String {
        if self.color
            && let Some(name) = &self.own_name
            && let Some(message) = text
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
            && message.starts_with(' ')
        {
            return format!("{BOLD}{name}:{RESET}{message}");
        }
        text.to_owned()
    }

    /// A status line (`*** ...`), dimmed when colored.
    pub fn status(&self, text: &str) -> String {
        self.dim(text)
    }

    fn dim(&self, text: &str) -> String {
        if self.color {
            format!("{DIM}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

/// `1.6 s`.
fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tags::RoomEvent;
    use jiff::civil::date;

    fn event(time: &str, text: &str) -> Update {
        Update::Event(RoomEvent {
            seq: 1,
            time: Some(time.into()),
            id: None,
            text: text.into(),
        })
    }

    #[test]
    fn events_show_their_local_time_and_the_date_on_other_days() {
        let style = Style::plain_utc(date(2026, 11, 29));
        assert_eq!(
            style.render(&event("2026-11-29T05:41:07.123Z", "alice: hi")),
            "05:41 alice: hi"
        );
        assert_eq!(
            style.render(&event("2026-11-28T23:59:59.999Z", "bob: late")),
            "2026-11-28 23:59 bob: late"
        );
        let paris = Style {
            zone: TimeZone::get("Europe/Paris").unwrap_or(TimeZone::fixed(jiff::tz::offset(1))),
            ..style.clone()
        };
        assert_eq!(
            paris.render(&event("2026-11-29T05:41:07.123Z", "alice: hi")),
            "06:41 alice: hi"
        );
        // A time this client cannot read is left out rather than guessed.
        assert_eq!(style.render(&event("yesterday", "carol: hm")), "carol: hm");
    }

    #[test]
    fn color_dims_times_and_status_lines_only() {
        let style = Style {
            color: true,
            ..Style::plain_utc(date(2026, 11, 29))
        };
        assert_eq!(
            style.render(&event("2026-11-29T05:41:07.123Z", "alice: hi")),
            "\x1b[2m05:41\x1b[0m alice: hi"
        );
        assert_eq!(
            style.render(&Update::Reconnected),
            "\x1b[2m*** reconnected\x1b[0m"
        );
        assert_eq!(
            style.render(&Update::Welcome("Welcome!".into())),
            "Welcome!"
        );
    }

    #[test]
    fn status_lines_say_what_happens_next() {
        let style = Style::plain_utc(date(2026, 11, 29));
        assert_eq!(
            style.render(&Update::Lost {
                reason: "the server is shutting down".into(),
                retry_in: Duration::from_millis(1600),
            }),
            "*** connection lost (the server is shutting down); reconnecting in 1.6 s..."
        );
        assert_eq!(
            style.render(&Update::Leaving {
                pending: 1,
                timeout: Duration::from_secs(10),
            }),
            "*** waiting up to 10.0 s for 1 unsent line to reach the room (Ctrl-C to give up)"
        );
    }

    #[test]
    fn your_own_name_is_bold_when_colored_and_only_on_your_messages() {
        let plain = Style {
            own_name: Some("alice".into()),
            ..Style::plain_utc(date(2026, 11, 29))
        };
        let colored = Style {
            color: true,
            ..plain.clone()
        };
        let mine = event("2026-11-29T05:41:07.123Z", "alice: hi");
        assert_eq!(
            colored.render(&mine),
            "\x1b[2m05:41\x1b[0m \x1b[1malice:\x1b[0m hi"
        );
        assert_eq!(plain.render(&mine), "05:41 alice: hi");
        assert_eq!(
            colored.render(&Update::Line("alice: * waves".into())),
            "\x1b[1malice:\x1b[0m * waves"
        );
        for theirs in ["alicia: hi", "bob: alice: hi", "alice has joined the chat."] {
            assert_eq!(
                colored.render(&Update::Line(theirs.into())),
                theirs,
                "{theirs}"
            );
        }
    }

    #[test]
    fn the_member_list_says_when_it_may_be_stale_or_unknown() {
        let style = Style::plain_utc(date(2026, 11, 29));
        let names = Some(vec!["alice".to_owned(), "bob".to_owned()]);
        assert_eq!(
            style.render(&Update::Members {
                names: names.clone(),
                connected: true
            }),
            "*** in the room (2): alice bob"
        );
        assert_eq!(
            style.render(&Update::Members {
                names,
                connected: false
            }),
            "*** not connected; when last connected, in the room (2): alice bob"
        );
        assert_eq!(
            style.render(&Update::Members {
                names: None,
                connected: true
            }),
            "*** this server does not say who is in the room"
        );
    }
}
