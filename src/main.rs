//! The `tcpchat` command: the server and its clients.
//!
//! Exit codes: 0 when the server stopped on a signal or the user left a client;
//! 1 when something failed (one line on stderr says what); 2 for bad command-line
//! input.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::EnvFilter;

use tcpchat::server::Listeners;
use tcpchat::tls::Certificates;
use tcpchat::{Config, client, config_file, server};

/// A chat server that speaks the original tutorial's protocol byte for byte, and a
/// newline-framed line mode for `nc`, telnet and its own clients.
#[derive(Debug, Parser)]
#[command(name = "tcpchat", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the chat server.
    Serve(Box<ServeArgs>),
    /// Show the room, one line per event (Ctrl-C to leave); reconnects by itself.
    Viewer {
        #[command(flatten)]
        history: HistoryArg,
        #[command(flatten)]
        target: Target,
    },
    /// Send lines to the room under a name (`quit` or `exit` to leave).
    Messenger {
        /// The name to send under; asked for when not given.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show the room and send what you type, in one program; reconnects by itself,
    /// losing nothing.
    Chat {
        /// The name to send under.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        history: HistoryArg,
        #[command(flatten)]
        target: Target,
    },
    /// Run an operator's command on the server on this machine, through its admin
    /// socket: who, kick NAME, ban NAME|ADDRESS [FOR], unban NAME|ADDRESS, bans, help.
    Admin {
        /// The server's admin socket [default: admin.sock in the data directory].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The server's data directory, to find its socket (as `serve --data-dir`).
        #[arg(long, value_name = "DIR", conflicts_with = "socket")]
        data_dir: Option<PathBuf>,
        /// The command and its words.
        #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Make the hash for `serve --password-hash` from a password read from standard
    /// input (on a terminal: asked for twice, not shown).
    HashPassword,
    /// Print a shell's completion script for tcpchat (bash: `tcpchat completions bash
    /// > /etc/bash_completion.d/tcpchat`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print tcpchat's manual page (roff), or with --out-dir write one page per
    /// command there (tcpchat.1, tcpchat-serve.1, ...).
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the room's recent events and exit.
    History {
        /// The last N events of the room's log (the server gives at most 10000)
        /// [default: 20].
        #[arg(long, value_name = "N", conflicts_with = "since")]
        last: Option<u32>,
        /// Every event after this seq that the log still keeps.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// One JSON object per line: {"seq":N,"time":"...","id":"...","text":"..."}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
struct HistoryArg {
    /// Events of the room's log to show on joining (0 for none).
    #[arg(long = "history", value_name = "N", default_value_t = client::session::DEFAULT_HISTORY)]
    events: u32,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 6000)]
    port: u16,
    /// Where to listen: `*` is every interface, IPv6 and IPv4 alike (IPv4 alone where
    /// the machine has no IPv6); an address (`0.0.0.0` every IPv4 interface, as the
    /// original; `127.0.0.1`; `::1`); or a host name, which listens on each of its
    /// addresses (`localhost`: 127.0.0.1 and ::1).
    #[arg(long, value_name = "ADDR|HOST", default_value = "*", value_parser = parse_bind)]
    bind: String,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Serve line mode over TLS too, with this certificate chain (PEM, leaf first).
    /// SIGHUP reloads it and the key; connections already open keep theirs.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TCP port of the TLS listener (0 picks a free one), on the --bind address.
    #[arg(long, default_value_t = 6001)]
    tls_port: u16,
    /// TCP port of the HTTP listener: /healthz, /readyz, /metrics (0 picks a free
    /// one).
    #[arg(long, default_value_t = 6080)]
    http_port: u16,
    /// Where the HTTP listener listens, as --bind [default: the --bind address].
    #[arg(long, value_name = "ADDR|HOST", value_parser = parse_bind)]
    http_bind: Option<String>,
    /// No HTTP listener.
    #[arg(long, conflicts_with_all = ["http_port", "http_bind"])]
    no_http: bool,
    #[command(flatten)]
    config: Config,
    /// The operator's socket, for `tcpchat admin` [default: admin.sock in the data
    /// directory]. Only the server's own user (and root) can use it.
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// No admin socket.
    #[arg(long, conflicts_with = "admin_socket")]
    no_admin: bool,
    /// Read the settings from this TOML file too: each of these flags, without its
    /// dashes, is a key (`max-message-bytes = 4096`); flags and TCPCHAT_* variables
    /// win over it. `contrib/tcpchat.toml` lists every key. [env: TCPCHAT_CONFIG]
    #[arg(long = "config", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Check the settings (flags, TCPCHAT_* variables, --config file), print the ones
    /// in effect and where each came from, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print an example config file with every key and its default, and exit.
    #[arg(long, hide = true)]
    example_config: bool,
    #[command(flatten)]
    log: tcpchat::logging::LogArgs,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Server host name or address.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Server port [default: 6000, or 6001 with --tls].
    #[arg(long)]
    port: Option<u16>,
    /// Connect with TLS, trusting the system's root certificates (or --ca).
    #[arg(long)]
    tls: bool,
    /// With --tls: trust only the CA certificate(s) in this PEM file (for a server
    /// with a private CA or a self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,
}

impl Target {
    fn server(&self) -> client::conn::Server {
        client::conn::Server {
            host: self.host.clone(),
            port: self
                .port
                .unwrap_or(if self.tls { TLS_PORT } else { PLAIN_PORT }),
            tls: self.tls.then(|| client::conn::TlsOptions {
                ca: self.ca.clone(),
            }),
        }
    }
}

/// The server's default ports.
const PLAIN_PORT: u16 = 6000;
const TLS_PORT: u16 = 6001;

// jemalloc: its size classes are naturally aligned, so the 128-byte-aligned I/O
// registration tokio allocates per connection costs its size and no more (about a
// sixth of an idle connection's footprint with the system allocator), and it gives
// memory freed after a burst of connections back to the system on its own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Pending connections the kernel may queue before the server accepts them.
const LISTEN_BACKLOG: u32 = 4096;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let cli = match cli.command {
        Command::Serve(args) => match with_settings(args) {
            Settled::Serve(args) => Cli {
                command: Command::Serve(args),
            },
            Settled::Exit(code) => return code,
        },
        command => Cli { command },
    };
    let logging = match &cli.command {
        Command::Serve(args) => tcpchat::logging::init(&args.log),
        _ => init_logging("warn"),
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args, read_settings().map(|(_, values)| values).ok()),
        Command::Viewer { history, target } => {
            run_client(|| client::viewer::run(target.server(), history.events))
        }
        Command::Messenger { name, target } => {
            run_client(|| client::messenger::run(target.server(), name.clone()))
        }
        Command::Chat {
            name,
            history,
            target,
        } => run_client(|| client::chat::run(target.server(), &name, history.events)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "tcpchat", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir } => manual(out_dir.as_deref()),
        Command::HashPassword => hash_password(),
        Command::Admin {
            socket,
            data_dir,
            command,
        } => admin(socket, data_dir, &command),
        Command::History {
            last,
            since,
            json,
            target,
        } => {
            let range = match since {
                Some(seq) => client::history::Range::Since(seq),
                None => {
                    client::history::Range::Last(last.unwrap_or(client::session::DEFAULT_HISTORY))
                }
            };
            let output = if json {
                client::history::Output::Json
            } else {
                client::history::Output::Plain
            };
            run_client(|| client::history::run(target.server(), range, output))
        }
    };
    // Flushes the log. Bounded; and whatever the log's sink does (a closed pipe, a
    // stopped reader), it cannot change how we exit.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(logging)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // stderr may be gone: then there is nobody to tell.
            let _ = writeln!(std::io::stderr(), "tcpchat: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings of the --config file (or `TCPCHAT_CONFIG`) and of the `TCPCHAT_*`
/// variables, checked against `serve`'s flags.
fn settings_overlay(
    args: &ServeArgs,
    serve: &clap::Command,
) -> Result<config_file::Overlay, config_file::ConfigError> {
    let file = args.config_file.clone().or_else(|| {
        std::env::var_os("TCPCHAT_CONFIG")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    let env = std::env::vars_os().filter_map(|(key, value)| {
        let key = key.into_string().ok()?;
        key.starts_with("TCPCHAT_")
            .then(|| (key, value.to_string_lossy().into_owned()))
    });
    config_file::gather(serve, file.as_deref(), env)
}

/// What [`with_settings`] leaves to do.
enum Settled {
    /// Serve with these settings.
    Serve(Box<ServeArgs>),
    /// Nothing: exit with this code (`--check-config`, `--example-config`, or a
    /// mistake, said on stderr).
    Exit(ExitCode),
}

/// For `serve`: reads the settings of the --config file (or `TCPCHAT_CONFIG`) and
/// of the `TCPCHAT_*` variables, checks them all, and parses the command line again
/// with them as its defaults, so that flags still win.
fn with_settings(args: Box<ServeArgs>) -> Settled {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let Some(serve) = command.find_subcommand("serve") else {
        return Settled::Serve(args);
    };
    if args.example_config {
        let _ = write!(std::io::stdout(), "{}", config_file::example(serve));
        return Settled::Exit(ExitCode::SUCCESS);
    }
    let overlay = match settings_overlay(&args, serve) {
        Ok(overlay) => overlay,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tcpchat: {error}");
            return Settled::Exit(ExitCode::from(2));
        }
    };
    if overlay.is_empty() && !args.check_config {
        return Settled::Serve(args);
    }
    let command = command.mut_subcommand("serve", |serve| overlay.apply(serve));
    let matches = match command.clone().try_get_matches_from(std::env::args_os()) {
        Ok(matches) => matches,
        Err(error) => return Settled::Exit(usage_error(&error)),
    };
    if args.check_config {
        if let (Some(serve), Some(serve_matches)) = (
            command.find_subcommand("serve"),
            matches.subcommand_matches("serve"),
        ) {
            let _ = write!(
                std::io::stdout(),
                "{}",
                overlay.effective(serve, serve_matches)
            );
        }
        return Settled::Exit(ExitCode::SUCCESS);
    }
    match Cli::from_arg_matches(&matches) {
        Ok(Cli {
            command: Command::Serve(args),
        }) => Settled::Serve(args),
        Ok(_) => Settled::Exit(ExitCode::FAILURE),
        Err(error) => Settled::Exit(usage_error(&error)),
    }
}

/// Where the admin socket is: `given`, or `admin.sock` in `data_dir`.
fn admin_socket_path(given: Option<&std::path::Path>, data_dir: &std::path::Path) -> PathBuf {
    given.map_or_else(|| data_dir.join("admin.sock"), std::path::Path::to_path_buf)
}

/// `tcpchat admin`: sends `words` to the server's admin socket and prints its answer;
/// an error if the answer is one.
fn admin(
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    words: &[String],
) -> anyhow::Result<()> {
    use std::io::Read as _;
    let data_dir = Config {
        data_dir,
        ..Config::default()
    }
    .data_dir();
    let path = admin_socket_path(socket.as_deref(), &data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the server's admin socket {} (is the server running, with this data directory, as this user?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .context("cannot set a timeout")?;
    stream
        .write_all(format!("{}\n", words.join(" ")).as_bytes())
        .context("cannot send the command")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("cannot read the server's answer")?;
    let last = answer.lines().last().unwrap_or_default().to_owned();
    let body = answer
        .lines()
        .take(answer.lines().count().saturating_sub(1))
        .collect::<Vec<_>>();
    let mut out = std::io::stdout();
    for line in body {
        let _ = writeln!(out, "{line}");
    }
    match last.strip_prefix("error: ") {
        Some(error) => anyhow::bail!("{error}"),
        None => {
            let said = last.strip_prefix("ok: ").unwrap_or_default();
            if !said.is_empty() {
                let _ = writeln!(out, "{said}");
            }
            Ok(())
        }
    }
}

/// `tcpchat hash-password`: prints the hash of a password read from stdin.
fn hash_password() -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again =
            rpassword::prompt_password("Once more: ").context("cannot read the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    let hash = server::password::hash(&password).map_err(anyhow::Error::msg)?;
    writeln!(std::io::stdout(), "{hash}").context("cannot write the hash")
}

/// Tells systemd (the service manager that started us, if any) `state`.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "cannot tell systemd how the server is doing");
    }
}

/// `tcpchat man`: the manual page on stdout, or every command's page in `out_dir`.
fn manual(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the manual pages in {}", dir.display()))
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("cannot render the manual page")?;
            std::io::stdout()
                .write_all(&page)
                .context("cannot write the manual page")
        }
    }
}

/// Help and version go to stdout as usual; a mistake gets one line and exit code 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            // The message and what it names (the missing flags, say), without the
            // usage block and the hint that follow the first empty line.
            let rendered = error.render().to_string();
            let said: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            let said = if said.is_empty() {
                "invalid arguments".to_owned()
            } else {
                said.join(" ")
            };
            let _ = writeln!(
                std::io::stderr(),
                "tcpchat: {}",
                said.trim_start_matches("error: ")
            );
            ExitCode::from(2)
        }
    }
}

fn serve(
    args: ServeArgs,
    running: Option<std::collections::BTreeMap<String, String>>,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let certificates = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            Certificates::load(cert, key).context("cannot use the TLS certificate")?,
        )),
        _ => None,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // On one CPU (say, pinned with taskset) the single-threaded scheduler does the
    // same work without the bookkeeping of work stealing on every task switch.
    let mut runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        // The log first: a data directory that cannot be used stops the server
        // before it listens.
        let data_dir = args.config.data_dir();
        let keeps_history = args.config.history == tcpchat::config::Switch::On;
        let prepared = if args.config.cluster.is_some() {
            server::prepare_cluster(args.config).await?
        } else {
            server::prepare(args.config)?
        };
        let plain = listen_all(&args.bind, args.port)?;
        let tls = match certificates {
            Some(certificates) => {
                let listeners = listen_all(&args.bind, args.tls_port)?;
                Some((listeners, certificates))
            }
            None => None,
        };
        let http = if args.no_http {
            Vec::new()
        } else {
            listen_all(args.http_bind.as_deref().unwrap_or(&args.bind), args.http_port)?
        };
        // The admin socket: where asked; by default in the data directory, unless
        // history is off (then nothing touches the disk unless asked to).
        let admin = match (&args.admin_socket, args.no_admin, keeps_history) {
            (_, true, _) | (None, false, false) => None,
            (Some(path), false, _) => Some(
                server::admin::AdminSocket::bind(path)
                    .with_context(|| format!("cannot use the admin socket {}", path.display()))?,
            ),
            (None, false, true) => {
                let path = admin_socket_path(None, &data_dir);
                match server::admin::AdminSocket::bind(&path) {
                    Ok(socket) => Some(socket),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "no admin socket (give one with --admin-socket)");
                        None
                    }
                }
            }
        };
        reload_on_sighup(
            tls.as_ref().map(|(_, certificates)| certificates.clone()),
            prepared.metrics(),
            prepared.reloader(),
            running,
        )
        .context("cannot handle signals")?;
        let signalled = shutdown_signal().context("cannot handle signals")?;
        // Under systemd (Type=notify): ready once listening, stopping once asked to.
        // Outside it (no NOTIFY_SOCKET) these do nothing.
        notify_systemd(sd_notify::NotifyState::Ready);
        let shutdown = async move {
            signalled.await;
            notify_systemd(sd_notify::NotifyState::Stopping);
        };
        prepared
            .serve(
                Listeners {
                    plain,
                    tls,
                    http,
                    admin,
                },
                shutdown,
            )
            .await
    })
}

/// Reloads the TLS certificate and key on every SIGHUP: new handshakes get the new
/// pair; a pair that cannot be used leaves the old one in place, and the log says why.
/// Settings a reload changes for what arrives from then on (`Reloader::apply`); a
/// change to any other needs a restart.
const LIVE_SETTINGS: &[&str] = &[
    "allow-seed-clients",
    "dead-peer-timeout",
    "flood-burst",
    "flood-rate",
    "handshake-timeout",
    "heartbeat-interval",
    "history-max-events",
    "http-allowed-origins",
    "max-connections-per-ip",
    "max-handshake-bytes",
    "max-message-bytes",
    "max-name-chars",
    "name",
    "no-loopback-exemption",
    "password-hash",
    "seed-grace",
];

/// The serve settings as they stand now (the command line, the `TCPCHAT_*`
/// variables and the --config file, read again), and every one's value.
///
/// # Errors
/// What is wrong, in one line.
fn read_settings() -> Result<(Box<ServeArgs>, std::collections::BTreeMap<String, String>), String> {
    use clap::{CommandFactory, FromArgMatches};
    let first = Cli::try_parse_from(std::env::args_os()).map_err(|error| error.to_string())?;
    let Command::Serve(args) = first.command else {
        return Err("not serving".to_owned());
    };
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| "no serve command".to_owned())?;
    let overlay = settings_overlay(&args, serve).map_err(|error| error.to_string())?;
    let command = command.mut_subcommand("serve", |serve| overlay.apply(serve));
    let matches = command
        .clone()
        .try_get_matches_from(std::env::args_os())
        .map_err(|error| error.to_string())?;
    let values = match (
        command.find_subcommand("serve"),
        matches.subcommand_matches("serve"),
    ) {
        (Some(serve), Some(serve_matches)) => config_file::values(serve, serve_matches),
        _ => return Err("no serve settings".to_owned()),
    };
    match Cli::from_arg_matches(&matches).map_err(|error| error.to_string())? {
        Cli {
            command: Command::Serve(args),
        } => Ok((args, values)),
        _ => Err("not serving".to_owned()),
    }
}

/// On SIGHUP: reloads the TLS pair (if any) and reads the settings again. What a
/// reload can change (`LIVE_SETTINGS`) changes at once for what arrives from then on;
/// a change to any other setting is logged as waiting for a restart; settings that
/// do not parse leave everything as it runs, and the log says why.
fn reload_on_sighup(
    certificates: Option<Arc<Certificates>>,
    metrics: Arc<tcpchat::metrics::Metrics>,
    reloader: server::Reloader,
    mut running: Option<std::collections::BTreeMap<String, String>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if let Some(certificates) = &certificates {
                reload_certificates(certificates, &metrics);
            }
            let Some(before) = &running else {
                continue;
            };
            let (args, after) = match read_settings() {
                Ok(read) => read,
                Err(error) => {
                    let error = error
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_owned();
                    tracing::error!(%error, "cannot reload the settings; keeping the ones in use");
                    continue;
                }
            };
            let changed: Vec<&String> = after
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(value))
                .map(|(key, _)| key)
                .collect();
            let (live, later): (Vec<&String>, Vec<&String>) = changed
                .into_iter()
                .partition(|key| LIVE_SETTINGS.contains(&key.as_str()));
            reloader.apply(args.config.clone()).await;
            let listed = |keys: &[&String]| {
                keys.iter()
                    .map(|key| key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !later.is_empty() {
                let keys = listed(&later);
                tracing::warn!(settings = %keys, "changed settings that take effect at the next restart");
            }
            let keys = listed(&live);
            tracing::info!(changed = %keys, "reloaded the settings");
            // What is in effect now: the live ones as read; the others as they run.
            let mut now = before.clone();
            for key in live {
                if let Some(value) = after.get(key) {
                    now.insert(key.clone(), value.clone());
                }
            }
            running = Some(now);
        }
    });
    Ok(())
}

/// Reloads the TLS certificate and key (SIGHUP), counting the result.
fn reload_certificates(certificates: &Certificates, metrics: &tcpchat::metrics::Metrics) {
    let reloaded = certificates.reload();
    let result = if reloaded.is_ok() { "ok" } else { "failed" };
    metrics
        .tls_reloads
        .get_or_create(&tcpchat::metrics::Outcome {
            result: result.to_owned(),
        })
        .inc();
    match reloaded {
        Ok(()) => tracing::info!(
            certificate = %certificates.cert_path().display(),
            "reloaded the TLS certificate"
        ),
        Err(error) => tracing::warn!(
            %error,
            "cannot reload the TLS certificate; keeping the one in use"
        ),
    }
}

/// A `--bind` value: an address or a host name, without a port (`127.0.0.1:6000` or
/// `localhost:6000` is refused at once, rather than looked up as a host name).
fn parse_bind(value: &str) -> Result<String, String> {
    // An IPv6 address has at least two colons; a name or an IPv4 address none.
    if value.starts_with('[') {
        return Err(
            "give an IPv6 address without brackets (::1), and the port with its own flag (--port, --tls-port, --http-port)"
                .to_owned(),
        );
    }
    if value.matches(':').count() == 1 {
        return Err(
            "give the address or host name alone: the port has its own flag (--port, --tls-port, --http-port)"
                .to_owned(),
        );
    }
    Ok(value.to_owned())
}

/// Listens on `port` at `bind` (see `serve --bind`): one listener per address.
///
/// # Errors
/// When a name does not resolve, or an address cannot be listened on, saying which.
fn listen_all(bind: &str, port: u16) -> anyhow::Result<Vec<TcpListener>> {
    if bind == "*" {
        // One socket for both families, where the machine has IPv6.
        let any6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
        return match listen(any6) {
            Ok(listener) => Ok(vec![listener]),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL)
                ) =>
            {
                let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                Ok(vec![
                    listen(any4).with_context(|| format!("cannot listen on {any4}"))?,
                ])
            }
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("cannot listen on {any6}")))
            }
        };
    }
    let addresses: Vec<SocketAddr> = match bind.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            use std::net::ToSocketAddrs as _;
            let mut found: Vec<SocketAddr> = (bind, port)
                .to_socket_addrs()
                .with_context(|| {
                    format!(
                        "cannot listen on {bind}: not an address, and the name does not resolve"
                    )
                })?
                .collect();
            found.sort();
            found.dedup();
            found
        }
    };
    anyhow::ensure!(
        !addresses.is_empty(),
        "cannot listen on {bind}: it has no address"
    );
    addresses
        .into_iter()
        .map(|address| listen(address).with_context(|| format!("cannot listen on {address}")))
        .collect()
}

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let SocketAddr::V6(v6) = address
        && v6.ip().is_unspecified()
    {
        // `::` takes IPv4 too (as IPv4-mapped addresses), whatever the system's default.
        socket2::SockRef::from(&socket).set_only_v6(false)?;
    }
    // Restarting right after a stop must not fail on connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// here, before the server says it is listening, so that no signal sent after that
/// can take the default action and kill the process.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Every connection is a file descriptor: take all the operating system allows.
fn raise_open_file_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
}

fn run_client<F, Fut>(client: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), client::conn::ClientError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(client())?;
    Ok(())
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
///
/// Lines are written by a thread of their own, through a bounded queue that drops
/// lines rather than wait: a log sink that blocks (a stopped pipe reader) or is gone
/// (a closed pipe) costs log lines, never the server. Returns the guard that flushes
/// the queue when dropped.
fn init_logging(default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("tcpchat-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        // Its own complaint about a failed write would go to stderr with `eprintln!`,
        // which panics when stderr is a closed pipe.
        .log_internal_errors(false)
        .init();
    guard
}
