//! `tcpchat chat`: one program that shows the room and sends what you type.
//!
//! It runs a chatter [`Session`] (`chat:NAME`, line mode, with `tags`): the server
//! treats it as a messenger and a viewer at once, so the name, the join and the
//! leave are one thing, and your own lines come back in the room's order, as
//! everyone else sees them. It shows the last events on joining, and survives a
//! lost connection or a server restart: it reconnects, fills the gap and sends
//! again what had not landed, each line exactly once.
//!
//! Incoming lines are printed above the line being typed. A typed line is erased
//! once entered; the room's version of it shows when it lands, so it appears once.

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::conn::{ClientError, Server, is_quit};
use super::display::Style;
use super::session::{Session, SessionOptions, Update};
use super::terminal::{Input, Terminal};

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
    let style = Style::for_stdout();
    let mut terminal = Terminal::start(format!("{name}> "), true);
    let mut leaving = false;
    let mut input_open = true;
    // Once the user has left, Ctrl-C (or Ctrl-D in the editor) gives up on lines
    // still waiting to land.
    let mut interrupt: Option<Signal> = None;
    let mut unsent = 0;
    loop {
        let give_up = tokio::select! {
            input = terminal.next(), if input_open => match input {
                Input::Line(_) if leaving => false,
                Input::Line(line) if is_quit(&line) => {
                    leaving = true;
                    interrupt = Some(signal(SignalKind::interrupt())?);
                    session.leave();
                    false
                }
                Input::Line(line) => {
                    if let Err(too_long) = session.send(&line) {
                        terminal.print(&style.status(&format!("*** {too_long}")));
                    }
                    false
                }
                Input::End => {
                    input_open = false;
                    let gave_up = leaving;
                    leaving = true;
                    interrupt = Some(signal(SignalKind::interrupt())?);
                    session.leave();
                    gave_up
                }
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
