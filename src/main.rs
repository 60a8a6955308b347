//! The `tcpchat` command: the server and its clients.
//!
//! Exit codes: 0 when the server stopped on a signal or the user left a client;
//! 1 when something failed (one line on stderr says what); 2 for bad command-line
//! input.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::EnvFilter;

use tcpchat::{Config, client, server};

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
    Serve(ServeArgs),
    /// Show the room, one line per event (Ctrl-C to leave).
    Viewer(Target),
    /// Send lines to the room under a name (`quit` or `exit` to leave).
    Messenger {
        /// The name to send under; asked for when not given.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show the room and send what you type, in one program.
    Chat {
        /// The name to send under.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 6000)]
    port: u16,
    /// Address to listen on; 0.0.0.0 is every IPv4 interface, as the original.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Server host name or address.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Server port.
    #[arg(long, default_value_t = 6000)]
    port: u16,
}

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
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Viewer(target) => run_client(|| client::viewer::run(&target.host, target.port)),
        Command::Messenger { name, target } => {
            run_client(|| client::messenger::run(&target.host, target.port, name.clone()))
        }
        Command::Chat { name, target } => {
            run_client(|| client::chat::run(&target.host, target.port, &name))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcpchat: {error:#}");
            ExitCode::FAILURE
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
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("tcpchat: {}", first.trim_start_matches("error: "));
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging("info");
    raise_open_file_limit();
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
        let address = SocketAddr::new(args.bind, args.port);
        let listener = listen(address).with_context(|| format!("cannot listen on {address}"))?;
        let shutdown = shutdown_signal().context("cannot handle signals")?;
        server::run(listener, args.config, shutdown).await
    })
}

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
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
    init_logging("warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(client())?;
    Ok(())
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
