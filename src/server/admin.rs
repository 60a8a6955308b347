//! The operator's interface: a Unix socket (`--admin-socket`, by default
//! `admin.sock` in the data directory) that `tcpchat admin` talks to.
//!
//! A Unix socket rather than an HTTP endpoint with a token: who may use it is decided
//! by the file's permissions (the server's own user, and root), there is no secret to
//! hand out, store or leak, and it cannot be reached from the network, whatever the
//! firewall says. The socket is made readable and writable by its owner only.
//!
//! One command per connection: a line of words in, lines out, the last one `ok: ...`
//! or `error: ...`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::bans::{Ban, Bans, MAX_BAN, rounded};
use crate::hub::WeakHub;

/// How long a command may take to arrive.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest command line.
const MAX_COMMAND_BYTES: u64 = 1024;

/// A ban's length when the command gives none.
pub const DEFAULT_BAN: Duration = Duration::from_secs(3600);

/// What `help` says.
const HELP: &str = "\
who                      the names in the room
kick NAME                disconnect NAME (the room sees them leave)
ban NAME|ADDRESS [FOR]   keep a name or an address (IPv6: its /64) out, for FOR (1h), and disconnect NAME
unban NAME|ADDRESS       lift a ban
bans                     the bans in force";

/// The admin socket, bound.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds the socket at `path`, for its owner only. A socket file left by a server
    /// that is gone is replaced; one that a running server answers on is an error.
    ///
    /// # Errors
    /// When the path cannot be used, saying why.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt as _;
            // Only a socket is replaced: a path given by mistake (a config file, a
            // directory) is never removed.
            if !metadata.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket",
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another tcpchat answers on it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the operator's commands until the hub is gone.
pub(super) async fn run(socket: AdminSocket, hub: WeakHub, bans: Arc<Bans>) {
    loop {
        let stream = match socket.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "the admin socket failed to accept; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if hub.upgrade().is_none() {
            return;
        }
        tokio::spawn(serve(stream, hub.clone(), bans.clone()));
    }
}

async fn serve(stream: UnixStream, hub: WeakHub, bans: Arc<Bans>) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        COMMAND_TIMEOUT,
        BufReader::new(reader.take(MAX_COMMAND_BYTES)).read_line(&mut line),
    )
    .await;
    let answer = match read {
        Ok(Ok(_)) => answer(line.trim(), &hub, &bans).await,
        Ok(Err(error)) => format!("error: cannot read the command: {error}"),
        Err(_) => "error: no command within 10 s".to_owned(),
    };
    let _ = writer.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = writer.shutdown().await;
}

/// The answer to `command`: lines, the last `ok: ...` or `error: ...`.
async fn answer(command: &str, hub: &WeakHub, bans: &Arc<Bans>) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(hub) = hub.upgrade() else {
        return "error: the server is stopping".to_owned();
    };
    match words.as_slice() {
        ["help"] => format!("{HELP}\nok"),
        ["who"] => match hub.who().await {
            Ok(names) => {
                let mut out: String = names.iter().map(|name| format!("{name}\n")).collect();
                out.push_str(&format!("ok: {} in the room", names.len()));
                out
            }
            Err(_) => "error: the server is stopping".to_owned(),
        },
        ["kick", name] => match hub.kick(name).await {
            Ok(true) => {
                info!(name, "kicked by the operator");
                format!("ok: {name} disconnected")
            }
            Ok(false) => format!("error: nobody called {name} is in the room here"),
            Err(_) => "error: the server is stopping".to_owned(),
        },
        ["ban", target, rest @ ..] if rest.len() <= 1 => {
            let how_long = match rest.first() {
                Some(text) => match humantime::parse_duration(text) {
                    Ok(duration) if duration > MAX_BAN => {
                        return format!("error: {text} is too long: a ban lasts at most 100 years");
                    }
                    Ok(duration) if !duration.is_zero() => duration,
                    _ => return format!("error: {text:?} is not a length of time (10m, 1h, 2d)"),
                },
                None => DEFAULT_BAN,
            };
            let ban = Ban::parse(target);
            let saved = blocking(bans, {
                let ban = ban.clone();
                move |bans| bans.add(ban, how_long)
            })
            .await;
            info!(%ban, for = %rounded(how_long), "banned by the operator");
            let kicked = match &ban {
                Ban::Name(name) => hub.kick(name).await.unwrap_or(false),
                Ban::Address(_) => false,
            };
            let also = if kicked { ", and disconnected" } else { "" };
            match saved {
                Ok(()) => format!("ok: {ban} banned for {}{also}", rounded(how_long)),
                Err(error) => {
                    warn!(%ban, %error, "cannot save the bans: this one lasts until the server stops");
                    format!(
                        "error: {ban} banned for {}{also}, but only until the server stops: cannot save the bans: {error}",
                        rounded(how_long)
                    )
                }
            }
        }
        ["unban", target] => {
            let ban = Ban::parse(target);
            let lifted = blocking(bans, {
                let ban = ban.clone();
                move |bans| bans.remove(&ban)
            })
            .await;
            match lifted {
                Ok(true) => {
                    info!(%ban, "ban lifted by the operator");
                    format!("ok: {ban} is no longer banned")
                }
                Ok(false) => format!("error: {ban} is not banned"),
                Err(error) => {
                    warn!(%ban, %error, "ban lifted, but cannot save the bans: it comes back at a restart");
                    format!(
                        "error: {ban} is no longer banned, but the ban comes back if the server restarts: cannot save the bans: {error}"
                    )
                }
            }
        }
        ["bans"] => {
            let list = bans.list();
            let mut out: String = list
                .iter()
                .map(|(ban, left)| format!("{ban}  for {} more\n", rounded(*left)))
                .collect();
            out.push_str(&match list.len() {
                1 => "ok: 1 ban".to_owned(),
                n => format!("ok: {n} bans"),
            });
            out
        }
        [] => "error: no command; try help".to_owned(),
        _ => format!("error: unknown command {command:?}; try help"),
    }
}

/// Runs `change` on the bans on a blocking thread: it may write and sync their file.
async fn blocking<T: Send + 'static>(
    bans: &Arc<Bans>,
    change: impl FnOnce(&Bans) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let bans = bans.clone();
    tokio::task::spawn_blocking(move || change(&bans))
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error.to_string())))
}
