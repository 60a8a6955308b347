//! `tcpchat chat`: one program that shows the room and sends what you type.
//!
//! It uses one connection in the chatter role (`chat:NAME`, line mode): the server
//! treats it as a messenger and a viewer at once, so the name, the join and the leave
//! are one thing, and your own lines come back in the room's order, as everyone
//! else sees them. Incoming lines are printed above the line being typed.

use super::conn::{ClientError, Connection, Server};
use super::messenger::talk;
use crate::room::Role;

/// Joins as a chatter under `name` and runs until the user leaves.
///
/// # Errors
/// [`ClientError`]: refused (a taken name, say), unreachable, or the server went away.
pub async fn run(server: Server, name: &str) -> Result<(), ClientError> {
    let conn = Connection::open(&server, Role::Chatter, Some(name)).await?;
    talk(conn, name, true).await
}
