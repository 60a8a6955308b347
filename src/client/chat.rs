//! `tcpchat chat`: one program that shows the room and sends what you type.
//!
//! It runs a chatter [`Session`] (`chat:NAME`, line mode, with `tags` and
//! `members`): the server treats it as a messenger and a viewer at once, so the
//! name, the join and the leave are one thing, and your own lines come back in the
//! room's order, as everyone else sees them. It shows the last events on joining,
//! and survives a lost connection or a server restart: it reconnects, fills the gap
//! and sends again what had not landed, each line exactly once.
//!
//! Incoming lines are printed above the line being typed. A typed line is erased
//! once entered; the room's version of it shows when it lands, so it appears once.
//!
//! A typed line that starts with `/` is a command ([`Typed`]), answered here and
//! never sent as it is: `/help`, `/who`, `/me TEXT`, `/quit`; `//TEXT` sends
//! `/TEXT`. `/me waves` sends the ordinary message `* waves`, which everyone sees
//! as `alice: * waves`: the server writes the name, so an action can no more pass
//! for someone else's line, or for the server's, than any other message can.

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::conn::{ClientError, Server, is_quit};
use super::display::Style;
use super::session::{Session, SessionOptions, Update};
use super::terminal::{Input, Terminal, end_interrupted_line};

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// Text for the room, as it goes to the server.
    Say(String),
    /// `/who`: show who is in the room.
    Who,
    /// `/help`: show the commands.
    Help,
    /// `/quit`, `quit`, `exit`: leave.
    Quit,
    /// An unknown or incomplete command: this is shown, and nothing is sent.
    Mistake(String),
}

impl Typed {
    /// Reads a typed line: a quit word, a `/command`, or text for the room
    /// (`//TEXT` is the text `/TEXT`; `/me TEXT` is the text `* TEXT`).
    pub fn parse(line: &str) -> Self {
        if is_quit(line) {
            return Self::Quit;
        }
        if let Some(text) = line.strip_prefix("//") {
            return Self::Say(format!("/{text}"));
        }
        let Some(command) = line.strip_prefix('/') else {
            return Self::Say(line.to_owned());
        };
        let (word, rest) = command
            .split_once(char::is_whitespace)
            .unwrap_or((command, ""));
        match word.to_ascii_lowercase().as_str() {
            "help" => Self::Help,
            "who" => Self::Who,
            "quit" => Self::Quit,
            "me" => action(rest).map_or_else(
                || Self::Mistake("*** /me needs something to do, as in: /me waves".to_owned()),
                Self::Say,
            ),
            _ => Self::Mistake(format!(
                "*** unknown command /{word}: nothing was sent (/help lists the commands)"
            )),
        }
    }
}

/// The text of `/me TEXT`: each line of `TEXT` as `* LINE`; `None` when there is
/// nothing but blanks.
fn action(text: &str) -> Option<String> {
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line).trim())
        .filter(|line| !line.is_empty())
        .map(|line| format!("* {line}"))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Whether a typed line leaves: the editor reads nothing after it.
fn is_leaving(line: &str) -> bool {
    Typed::parse(line) == Typed::Quit
}

/// What `/help` shows, for the chatter `name`.
fn help(name: &str) -> [String; 5] {
    [
        "*** /who: who is in the room".to_owned(),
        format!("*** /me TEXT: an action; everyone sees \"{name}: * TEXT\""),
        "*** //TEXT: send a line that starts with / (//etc sends /etc)".to_owned(),
        "*** /quit (or quit, exit, Ctrl-D, Ctrl-C on an empty line): leave".to_owned(),
        "*** /help: this list".to_owned(),
    ]
}

/// Joins as a chatter under `name`, showing the last `history` events, and runs
/// until the user leaves.
///
/// # Errors
/// [`ClientError`]: refused (a taken name, say), unreachable at first, or ended by
/// the server for a reason that reconnecting cannot fix.
pub async fn run(server: Server, name: &str, history: u32) -> Result<(), ClientError> {
    let options = SessionOptions {
        history,
        ..SessionOptions::chatter(server, name)
    };
    let mut session = Session::start(options).await?;
    let style = Style {
        own_name: Some(name.to_owned()),
        ..Style::for_stdout()
    };
    let mut terminal = Terminal::start(format!("{name}> "), true, is_leaving);
    let mut input_open = true;
    // Once the user has left, the editor is gone and Ctrl-C is a signal again: it
    // gives up on lines still waiting to land.
    let mut interrupt: Option<Signal> = None;
    let mut unsent = 0;
    loop {
        let give_up = tokio::select! {
            input = terminal.next(), if input_open => {
                let typed = match input {
                    Input::Line(line) => Typed::parse(&line),
                    Input::End => Typed::Quit,
                };
                match typed {
                    Typed::Quit => {
                        input_open = false;
                        interrupt = Some(signal(SignalKind::interrupt())?);
                        session.leave();
                    }
                    Typed::Say(text) => {
                        if let Err(too_long) = session.send(&text) {
                            terminal.print(&style.status(&format!("*** {too_long}")));
                        }
                    }
                    Typed::Who => session.who(),
                    Typed::Help => {
                        for line in help(name) {
                            terminal.print(&style.status(&line));
                        }
                    }
                    Typed::Mistake(text) => terminal.print(&style.status(&text)),
                }
                false
            },
            update = session.next() => match update {
                Some(update) => {
                    if let Update::Leaving { pending, .. } = update {
                        unsent = pending;
                    }
                    terminal.print(&style.render(&update));
                    false
                }
                None => break,
            },
            Some(()) = recv(&mut interrupt) => true,
        };
        if give_up {
            drop(terminal);
            end_interrupted_line();
            if unsent == 0 {
                return Ok(());
            }
            return Err(ClientError::Undelivered { lines: unsent });
        }
    }
    // Restore the terminal before anyone prints the outcome.
    drop(terminal);
    session.finish().await
}

/// The next signal, if listening; never otherwise.
async fn recv(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_are_text_commands_or_mistakes() {
        let say = |text: &str| Typed::Say(text.to_owned());
        for (line, typed) in [
            ("hello", say("hello")),
            ("", say("")),
            (" /who", say(" /who")),
            ("//etc", say("/etc")),
            ("//", say("/")),
            ("/me waves", say("* waves")),
            ("/ME  waves  twice ", say("* waves  twice")),
            ("/me waves\nand smiles", say("* waves\n* and smiles")),
            ("/who", Typed::Who),
            ("/WHO", Typed::Who),
            ("/help", Typed::Help),
            ("/quit", Typed::Quit),
            ("/Quit now", Typed::Quit),
            ("quit", Typed::Quit),
            (" EXIT ", Typed::Quit),
        ] {
            assert_eq!(Typed::parse(line), typed, "{line:?}");
        }
        for (line, says) in [
            ("/me", "*** /me needs something to do"),
            ("/me   ", "*** /me needs something to do"),
            ("/nick bob", "*** unknown command /nick: nothing was sent"),
            ("/", "*** unknown command /: nothing was sent"),
        ] {
            match Typed::parse(line) {
                Typed::Mistake(text) => {
                    assert!(text.starts_with(says), "{line:?}: {text}");
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_action_always_starts_with_a_star_and_a_space() {
        // Whatever follows `/me`, the room gets `NAME: * ...`: never a line of its
        // own that could start with another name or with `***`.
        for text in ["** reconnected", "\nbob: hi", "x\r\n*** bye"] {
            let Typed::Say(sent) = Typed::parse(&format!("/me {text}")) else {
                panic!("{text:?}");
            };
            for line in sent.split('\n') {
                assert!(line.starts_with("* "), "{text:?}: {line:?}");
            }
        }
    }
}
