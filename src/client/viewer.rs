//! `tcpchat viewer`: shows the room, one line per event, until Ctrl-C.
//!
//! It runs a viewer [`Session`]: the last events on joining, each with its local
//! time, and a lost connection or a server restart is resumed where it left off.
//! Ctrl-C ends it, and the line the terminal's `^C` is on, so the shell's prompt
//! starts on a fresh one.

use std::io::Write;

use tokio::signal::unix::{SignalKind, signal};

use super::conn::{ClientError, Server};
use super::display::Style;
use super::session::{Session, SessionOptions};
use super::terminal::end_interrupted_line;

/// Connects as a viewer, shows the last `history` events, and prints every event
/// until Ctrl-C (`Ok`) or until the server refuses or ends the session for a reason
/// that reconnecting cannot fix (the error says which).
///
/// # Errors
/// [`ClientError`].
pub async fn run(server: Server, history: u32) -> Result<(), ClientError> {
    // Registered before anything is shown, so a Ctrl-C is never the default "kill".
    let mut interrupt = signal(SignalKind::interrupt())?;
    let options = SessionOptions {
        history,
        ..SessionOptions::viewer(server)
    };
    let mut session = Session::start(options).await?;
    let style = Style::for_stdout();
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                end_interrupted_line();
                return Ok(());
            }
            update = session.next() => match update {
                Some(update) => {
                    if writeln!(stdout, "{}", style.render(&update)).is_err() {
                        // Nobody is reading our output any more: leave quietly.
                        return Ok(());
                    }
                }
                None => return session.finish().await,
            },
        }
    }
}
