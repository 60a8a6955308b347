//! `tcpchat messenger`: sends each typed line to the room, as the original Messenger.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::conn::{ClientError, Connection, SERVER_SILENCE_LIMIT, Server, is_quit};
use super::terminal::{Input, Terminal, ask_name};
use crate::room::Role;

/// How long a leaving client waits for the server to confirm it has everything.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Joins as a messenger (asking for a name if `name` is `None`) and sends each
/// non-empty typed line until `quit`, `exit` or the end of input.
///
/// # Errors
/// [`ClientError`]: refused (a taken name, say), unreachable, or the server went away.
pub async fn run(server: Server, name: Option<String>) -> Result<(), ClientError> {
    let name = match name {
        Some(name) => name,
        None => tokio::task::spawn_blocking(ask_name)
            .await
            .map_err(std::io::Error::other)??,
    };
    let conn = Connection::open(&server, Role::Messenger, Some(&name)).await?;
    talk(conn, &name).await
}

/// Typed lines go to the server until the user leaves.
async fn talk(mut conn: Connection, name: &str) -> Result<(), ClientError> {
    let mut terminal = Terminal::start(format!("{name}> "), false, is_quit);
    let result = loop {
        tokio::select! {
            input = terminal.next() => match input {
                Input::Line(line) if is_quit(&line) => break Ok(()),
                Input::Line(line) if line.is_empty() => {}
                Input::Line(line) => {
                    let mut bytes = line.into_bytes();
                    bytes.push(b'\n');
                    if let Err(e) = conn.writer.write_all(&bytes).await {
                        break Err(e.into());
                    }
                }
                Input::End => break Ok(()),
            },
            // A messenger receives no chat traffic, but the server's goodbye, an
            // error, or its silence end the conversation.
            line = conn.reader.next_chat_line(Some(SERVER_SILENCE_LIMIT)) => match line {
                Ok(_) => {}
                Err(e) => break Err(e),
            },
        }
    };
    if result.is_ok() {
        leave(&mut conn).await;
    }
    // Restore the terminal before anyone prints the outcome.
    drop(terminal);
    result
}

/// Says goodbye with a FIN, then waits (briefly) for the server to close its side,
/// which it does once everything we sent has reached the room.
async fn leave(conn: &mut Connection) {
    let _ = conn.writer.shutdown().await;
    let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
        while let Ok(Some(_)) = conn.reader.next_line().await {}
    })
    .await;
}
