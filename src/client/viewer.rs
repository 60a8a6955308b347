//! `tcpchat viewer`: shows the room, one line per event, until Ctrl-C.

use std::io::Write;

use super::conn::{ClientError, Connection, SERVER_SILENCE_LIMIT};
use crate::room::Role;

/// Connects as a viewer and prints every line until Ctrl-C (`Ok`) or until the
/// server refuses, goes away or falls silent (the error says which).
///
/// # Errors
/// [`ClientError`].
pub async fn run(host: &str, port: u16) -> Result<(), ClientError> {
    let mut conn = Connection::open(host, port, Role::Viewer, None).await?;
    let mut stdout = std::io::stdout();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut line = conn.greeting.clone();
    loop {
        if writeln!(stdout, "{line}").is_err() {
            // Nobody is reading our output any more: leave quietly.
            return Ok(());
        }
        line = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            line = conn.reader.next_chat_line(Some(SERVER_SILENCE_LIMIT)) => line?,
        };
    }
}
