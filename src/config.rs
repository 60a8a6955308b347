//! Every default and limit of the server, in one place.
//!
//! Each field of [`Config`] is also a `tcpchat serve` flag; the `default_value` in its
//! attribute is the only place its default is written, and [`Config::default`] reads
//! it from there. The constants below are the limits a client can meet that are not
//! worth a flag. Every buffer the server keeps is bounded by one of these numbers.
//! (Scheduling constants, which no client can observe, sit beside the code they tune.)

use std::time::Duration;

/// How long a refused or closing client gets to read its last line and close its
/// end, before the server closes the connection anyway.
pub const LINGER: Duration = Duration::from_secs(1);

/// How long a viewer disconnected as too slow gets to read its way to the notice
/// that says why: its socket buffers are full of chat it has not read yet.
pub const SLOW_VIEWER_LINGER: Duration = Duration::from_secs(10);

/// How much of a closing client's input is read and dropped while it lingers. A
/// client still flooding past this is cut off with a reset.
pub const LINGER_BYTES: usize = 64 * 1024;

/// While flood control holds a sender's input back (the server does not read it
/// then), how often the server checks, without reading, whether the sender has
/// closed or reset its connection, so that its departure is noticed within this.
pub const HELD_BACK_DEPARTURE_CHECK: Duration = Duration::from_millis(500);

/// File descriptors kept back from the connection limit for the listeners, the
/// standard streams, the runtime and logging.
pub const RESERVED_FDS: u64 = 64;

/// Bytes of viewer backlog per batch the shared backlog holds. Each batch held costs
/// about 128 bytes besides its text, so this keeps that overhead to half the backlog
/// at most. Under load batches are large and the byte bound binds; when events
/// trickle in one per batch, this one does.
pub const BACKLOG_BYTES_PER_BATCH: usize = 256;

/// How many batches of events the shared backlog holds for `viewer_backlog_bytes`
/// (4096 by default): a viewer that many batches behind is too slow, however few
/// bytes they hold.
pub fn backlog_batches(viewer_backlog_bytes: usize) -> usize {
    (viewer_backlog_bytes / BACKLOG_BYTES_PER_BATCH)
        .clamp(1024, 1 << 16)
        .next_power_of_two()
}

/// Most bytes a line-mode sender's connection reads at once (at least
/// `max_message_bytes`): it bounds what is read ahead of flood control and the inbox.
pub const LINE_READ_BYTES: usize = 16 * 1024;

/// Most events a `history=N` replay sends (a larger N is capped to this).
pub const MAX_HISTORY_REPLAY: u64 = 10_000;

/// Events a replay reads from the log at a time: what one replaying client holds.
pub const REPLAY_CHUNK_EVENTS: usize = 512;

/// Events taken into the room but not yet in the log, past which the room stops
/// taking more until the log catches up (a failing disk pauses the room; see
/// RELIABILITY.md).
pub const MAX_UNCOMMITTED_EVENTS: usize = 8 * 1024;

use std::path::PathBuf;

use clap::Parser;

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// The server's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Chat name shown in the welcome line (the original hard-coded "Bad IRC").
    #[arg(long = "name", default_value = "Bad IRC")]
    pub chat_name: String,

    /// Web pages allowed to open WebSocket connections to the chat, besides the chat
    /// page itself (the origin of the address it was loaded from, always allowed):
    /// origins such as `https://chat.example.org`, comma-separated, or `*` for any.
    /// A request without an Origin header (a program, not a browser) is allowed.
    #[arg(long, value_delimiter = ',', value_name = "ORIGINS")]
    pub http_allowed_origins: Vec<String>,

    /// Time a client has to finish its handshake. Each connection has its own timer,
    /// so a silent client costs only itself (the original waited forever, and
    /// blocked everyone while it did).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,

    /// How long a first read that is exactly a seed handshake (`viewer`,
    /// `name:NAME`, no terminator) waits for a `\n` that would make it line mode.
    /// Long enough for a line split by the network or typed in pieces; only seed
    /// clients wait for it, and they never notice.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    pub seed_grace: Duration,

    /// Largest handshake, in bytes (the original read 2048 at most; a name and its
    /// options fit easily in this).
    #[arg(long, default_value_t = 512)]
    pub max_handshake_bytes: usize,

    /// Largest message, in bytes: a line-mode line before its `\n` (longer lines get
    /// the sender closed with an error), and the most a seed-mode read takes at once.
    #[arg(long, default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Longest name, in characters: long enough for real names, short enough that
    /// every line stays readable.
    #[arg(long, default_value_t = 32)]
    pub max_name_chars: usize,

    /// How far, in bytes of its own wire format, a viewer may fall behind the room
    /// beyond what its socket buffers hold, before it is disconnected as too slow.
    /// The backlog is shared by all viewers (one copy of each event), so this bounds
    /// the server's memory whatever the number of slow viewers. It also holds at most
    /// one batch of events per 256 bytes of it (4096 single events by default).
    #[arg(long, default_value_t = 1 << 20)]
    pub viewer_backlog_bytes: usize,

    /// Commands waiting for the room (joins, messages, leaves). When it is full,
    /// connections stop reading their sockets until there is room: a flood is slowed
    /// by TCP backpressure, never buffered.
    #[arg(long, default_value_t = 1024)]
    pub hub_inbox: usize,

    /// Most bytes of events the room encodes into one batch before publishing it.
    /// Bigger batches mean fewer writes per viewer under load; under light load a
    /// batch is a single event and goes out at once.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_batch_bytes: usize,

    /// Most connections open at once, handshakes included. By default, as many as the
    /// process may open files, less a reserve for the listener and the logs (the
    /// server raises its open-file limit to the hard limit at start). Past it, new
    /// connections are closed at once.
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Most connections open at once from one IP address (for IPv6, from one /64,
    /// the block a single site is given), so one host cannot take every slot.
    /// Past it, new connections from that address are closed at once.
    #[arg(long, default_value_t = 32)]
    pub max_connections_per_ip: usize,

    /// Messages per second a messenger may sustain, counted in lines. Past its burst,
    /// the server stops reading the sender's socket until the rate allows more: TCP
    /// backpressure slows it down; nothing is dropped and nothing piles up.
    #[arg(long, default_value_t = 5.0, value_parser = positive_rate)]
    pub flood_rate: f64,

    /// Lines a messenger may send at once before the rate applies, so that someone
    /// pasting a few lines is not slowed at all.
    #[arg(long, default_value_t = 20)]
    pub flood_burst: u32,

    /// Let in only clients that give this password (`pass=...` in their handshake):
    /// its hash, as `tcpchat hash-password` prints it (argon2id, PHC format). Seed
    /// clients cannot send one and are refused, unless --allow-seed-clients.
    #[arg(long, value_name = "HASH", value_parser = password_hash)]
    pub password_hash: Option<String>,

    /// With --password-hash: let seed clients in anyway, without a password (the
    /// original tutorial's clients cannot send one). Anyone who speaks the seed
    /// protocol can then read and post: a password kept only from line mode.
    #[arg(long)]
    pub allow_seed_clients: bool,

    /// Apply the per-address limit and flood control to loopback clients too. By
    /// default they are exempt, as the operator's own bots, bridges and benchmarks
    /// connect from there (mature IRC servers exempt localhost the same way).
    #[arg(long)]
    pub no_loopback_exemption: bool,

    /// How long a peer may stay unreachable (no FIN, no RST: the link is simply gone)
    /// before its connection is dropped. Enforced by TCP keepalive probes and
    /// TCP_USER_TIMEOUT, which send nothing a plain `nc` viewer would see.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub dead_peer_timeout: Duration,

    /// Quiet time after which a client that asked for `heartbeat` gets `*** ping`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    pub heartbeat_interval: Duration,

    /// On SIGINT or SIGTERM, how long to wait for viewers to receive everything
    /// already accepted before closing whoever is left.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub shutdown_timeout: Duration,

    /// Keep the room's log: every event is stored (SQLite, in --data-dir) before
    /// anyone sees it, so late joiners get history (`history=N`), reconnecting
    /// clients resume without a gap (`since=SEQ`) and a restart forgets nothing.
    /// `off` keeps nothing and touches no disk.
    #[arg(long, value_enum, default_value = "on")]
    pub history: Switch,

    /// Where the log lives, created on first start [default: $XDG_DATA_HOME/tcpchat,
    /// that is ~/.local/share/tcpchat, or ./tcpchat-data without a home directory].
    /// One server per directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most events the log keeps; older ones are deleted as new ones come.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub history_max_events: u64,

    /// Wait for the disk at every commit of the log, so that a power cut loses
    /// nothing either (without it, a crash of the server loses nothing, a crash of
    /// the machine may lose the last moments). Costs throughput: see BENCHMARKS.md.
    #[arg(long)]
    pub fsync: bool,

    /// Serve one room with other tcpchat nodes through NATS JetStream: its servers,
    /// comma-separated (`nats://HOST:PORT`, `tls://HOST:PORT` for TLS; a
    /// `user:password@` in the address is used). See docs/CLUSTER.md.
    #[arg(long, value_name = "URLS")]
    pub cluster: Option<String>,

    /// The room's name in the cluster: its stream is `TCPCHAT_<ROOM>` (letters,
    /// digits, `-` and `_`).
    #[arg(long, value_name = "ROOM", default_value = "tcpchat", value_parser = room_name)]
    pub cluster_room: String,

    /// A node not heard from for this long is gone: its members are announced as left
    /// on every other node and their names are free again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub cluster_node_timeout: Duration,

    /// Copies JetStream keeps of the room's stream and key-value buckets (3 with a
    /// three-server NATS cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,

    /// A NATS credentials file (`.creds`), for a NATS server that asks for one.
    #[arg(long, value_name = "FILE")]
    pub cluster_creds: Option<PathBuf>,

    /// The CA certificate (PEM) that NATS's certificate must chain to; implies TLS.
    #[arg(long, value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
}

/// `--cluster-room`: a name that is safe in a stream's name and a subject.
fn room_name(value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(value.to_owned())
    } else {
        Err("1 to 64 letters, digits, '-' or '_'".to_owned())
    }
}

impl Config {
    /// The data directory: `--data-dir`, or the default.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|dir| !dir.is_empty())
                    .map(|home| PathBuf::from(home).join(".local/share"))
            });
        match data_home {
            Some(dir) => dir.join("tcpchat"),
            None => PathBuf::from("tcpchat-data"),
        }
    }
}

/// `--password-hash`: a password hash tcpchat can check (argon2, PHC format).
fn password_hash(text: &str) -> Result<String, String> {
    let hash = argon2::password_hash::PasswordHash::new(text).map_err(|error| {
        format!("not a password hash ({error}); make one with `tcpchat hash-password`")
    })?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "a {} hash; tcpchat checks argon2 ones (`tcpchat hash-password`)",
            hash.algorithm
        ));
    }
    Ok(text.to_owned())
}

/// A rate of lines per second: finite and above zero (no rate at all would hold a
/// sender's second burst back forever).
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err("must be a number of lines per second above 0".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

/// A count of at least one.
fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (to keep nothing, use --history off)".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

impl Default for Config {
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        Defaults::parse_from(["tcpchat"]).config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_flag_definitions() {
        let config = Config::default();
        assert_eq!(config.chat_name, "Bad IRC");
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.seed_grace, Duration::from_millis(250));
        assert_eq!(config.viewer_backlog_bytes, 1 << 20);
    }
}
