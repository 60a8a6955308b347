//! `tcpchat viewer`: shows the room, one line per event, until Ctrl-C.

use std::io::Write;

use tokio::signal::unix::{SignalKind, signal};

use super::conn::{ClientError, Connection, SERVER_SILENCE_LIMIT, Server};
use crate::room::Role;

/// Connects as a viewer and prints every line until Ctrl-C (`Ok`) or until the
/// server refuses, goes away or falls silent (the error says which).
///
/// # Errors
/// [`ClientError`].
pub async fn run(server: Server) -> Result<(), ClientError> {
    // Registered before anything is shown, so a Ctrl-C is never the default "kill".
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut conn = Connection::open(&server, Role::Viewer, None).await?;
    let mut stdout = std::io::stdout();
    let mut line = conn.greeting.clone();
    loop {
        if writeln!(stdout, "{line}").is_err() {
            // Nobody is reading our output any more: leave quietly.
            return Ok(());
        }
        line = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            line = conn.reader.next_chat_line(Some(SERVER_SILENCE_LIMIT)) => line?,
        };
    }
}
