//! The server under test: started (and stopped) by the load generator itself through
//! the harness, or one already running at a given address.
//!
//! Each target's command line lives here: tcpchat on an ephemeral port it reports
//! in its log, keeping its history in a fresh `--data-dir` (or with `--history off`
//! as `tcpchat-nohistory`, or waiting for the disk at every commit of it with
//! `--fsync` as `tcpchat-fsync`); redis-server, nats-server and InspIRCd on a free port,
//! each with the settings of docs/BENCHMARKS.md ("The peers"). For the workloads of
//! servers that keep what they deliver (`durable`), redis-server also writes its
//! append-only file and nats-server runs JetStream, both in the run's temporary
//! directory. With `--ws`, viewers reach tcpchat on `/ws` of its HTTP listener
//! (whose address it logs too) and nats-server on its websocket listener, which a
//! configuration file turns on (plain, no compression); senders too with
//! `--ws-senders`, else they speak the target's own protocol. A started server may be
//! pinned to one CPU, is stopped by its PID with SIGTERM when the run ends, and is
//! killed if it does not exit in time.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use harness::{ServerProcess, Signal, Spec};

use super::proto::Target;
use super::transport::{Certificate, Connector, TempDir, Transport, read_certificates};
use super::ws::Framing;

/// InspIRCd's configuration, with `@PORT@` and `@DIR@` to fill in.
const INSPIRCD_CONF: &str = include_str!("../peers/inspircd.conf.in");

/// Which server to benchmark and how to reach it (shared by `fanout` and `conns`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The kind of server.
    #[arg(long, value_enum, default_value_t = Target::Tcpchat)]
    pub target: Target,
    /// Benchmark the server already running at this address instead of starting one;
    /// a comma-separated list (the nodes of a tcpchat cluster) spreads the fan-out's
    /// viewers evenly over them (viewer i on the i-th modulo their number).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub addr: Vec<SocketAddr>,
    /// With --addr: that server's process id, to read its CPU time and memory from
    /// /proc; a comma-separated list (a cluster's nodes and its NATS) for the CPU time
    /// of each (memory and the other workloads' CPU figures are the first one's).
    #[arg(long, requires = "addr", value_delimiter = ',', num_args = 1..)]
    pub pid: Vec<u32>,
    /// The tcpchat binary to start (default: `tcpchat` beside this program).
    #[arg(long, conflicts_with = "addr")]
    pub server_bin: Option<PathBuf>,
    /// Pin the server started to this CPU (default: anywhere).
    #[arg(long, conflicts_with = "addr")]
    pub server_cpu: Option<usize>,
    /// Connect over TLS 1.3 (tcpchat and redis only). A server started here is given
    /// a self-signed certificate made for this run.
    #[arg(long)]
    pub tls: bool,
    /// With --addr and --tls: the PEM certificate(s) to trust.
    #[arg(long, requires = "addr", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Viewers connect over WebSocket (tcpchat and nats only): tcpchat's `/ws` on its
    /// HTTP listener, nats-server's websocket listener (plain, no compression). With
    /// --addr, that address is the WebSocket listener's.
    #[arg(long, conflicts_with = "tls")]
    pub ws: bool,
    /// With --ws: senders connect over WebSocket too (else in the target's own
    /// protocol over TCP).
    #[arg(long, requires = "ws")]
    pub ws_senders: bool,
    /// With --addr: where senders connect, in the target's own protocol: another
    /// node of a tcpchat cluster (a comma-separated list: several, sender j on the
    /// j-th modulo their number), or with --ws the server's plain listener (with
    /// --ws and no --senders-addr, --ws-senders is needed).
    #[arg(
        long,
        requires = "addr",
        conflicts_with = "ws_senders",
        value_delimiter = ',',
        num_args = 1..
    )]
    pub senders_addr: Vec<SocketAddr>,
    /// With --addr: tcpchat's HTTP listener, for `--scrape` (default with --ws:
    /// --addr itself).
    #[arg(long, requires = "addr")]
    pub http_addr: Option<SocketAddr>,
    /// Start a tcpchat cluster of this many nodes instead of one server: a
    /// nats-server with JetStream (in the run's directory), then the nodes, each
    /// `tcpchat serve --cluster nats://...` with its own data directory, all pinned
    /// to --server-cpu. The fan-out's viewers are spread evenly over the nodes.
    #[arg(long, conflicts_with = "addr", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub cluster_nodes: Option<u16>,
    /// With --cluster-nodes: the fan-out's senders all on the first node (`one`), or
    /// spread evenly over every node (`all`).
    #[arg(long, value_enum, default_value_t = SendersOn::One, requires = "cluster_nodes")]
    pub senders_on: SendersOn,
    /// Set by the workloads of servers that keep what they deliver (`fanout
    /// --durable`, `catchup`): Redis writes its append-only file, NATS runs JetStream,
    /// and their clients speak Redis Streams and JetStream ([`crate::durable`]).
    #[arg(skip)]
    pub durable: bool,
}

/// Where a cluster's fan-out senders connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendersOn {
    /// The first node only.
    One,
    /// Every node, evenly.
    All,
}

/// A process of the server under test whose CPU time a run reads: its name
/// (`tcpchat`, `nats-server`, `node2`...) and PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub name: String,
    pub pid: u32,
}

/// Where and how a run's clients reach the server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's kind.
    pub target: Target,
    /// Where its clients connect (the TLS listener with `--tls`, the WebSocket one
    /// with `--ws`); the fan-out's senders connect to `sender_addrs`.
    pub addr: SocketAddr,
    /// tcpchat's HTTP listener (`/metrics`), when known.
    pub http_addr: Option<SocketAddr>,
    /// Its process id, when known (a cluster's first node's).
    pub pid: Option<u32>,
    /// Every process of the server under test whose CPU time counts: the server's,
    /// or a cluster's NATS and nodes (with --addr: the PIDs given).
    pub processes: Vec<Process>,
    /// Where the fan-out's viewers connect, viewer i to the i-th modulo their
    /// number: `addr` alone, but for a cluster (every node) or a list in --addr.
    pub viewer_addrs: Vec<SocketAddr>,
    /// Where the fan-out's senders connect, sender j to the j-th modulo their
    /// number: `addr`, but for viewers over WebSocket and senders not (the plain
    /// listener), a cluster with senders on every node, or a list in --senders-addr.
    pub sender_addrs: Vec<SocketAddr>,
    /// The nodes of a cluster started here (with --cluster-nodes).
    pub cluster_nodes: Option<u16>,
    /// Where a cluster's senders are.
    pub senders_on: Option<SendersOn>,
    /// Opens connections to it.
    pub connector: Connector,
    /// Opens the fan-out's senders' connections.
    pub sender_connector: Connector,
    /// Whether the run is one of servers keeping what they deliver (Redis Streams,
    /// JetStream; tcpchat always keeps its history unless `tcpchat-nohistory`).
    pub durable: bool,
}

impl Endpoint {
    /// Plain TCP, TLS or WebSocket.
    pub fn transport(&self) -> Transport {
        self.connector.transport()
    }

    /// How the fan-out's senders reach it.
    pub fn senders_transport(&self) -> Transport {
        self.sender_connector.transport()
    }

    /// What the results say its clients speak (outside the durable workloads).
    pub fn protocol(&self) -> String {
        match (self.transport(), self.senders_transport()) {
            (Transport::Ws, Transport::Ws) => {
                format!("WebSocket: {}", self.target.protocol())
            }
            (Transport::Ws, _) => {
                format!("WebSocket viewers, TCP senders: {}", self.target.protocol())
            }
            _ => self.target.protocol().to_owned(),
        }
    }
}

/// How WebSocket clients of `target` upgrade and frame: tcpchat on `/ws`, a line per
/// text frame; NATS on any path, its protocol as a byte stream in binary frames
/// (the only frames it takes).
fn websocket_connector(target: Target) -> Connector {
    if target.is_tcpchat() {
        Connector::websocket("/ws", Framing::Lines)
    } else {
        Connector::websocket("/", Framing::Stream)
    }
}

/// The server of one run: started here (and stopped by [`Server::stop`], or killed
/// when dropped), or one already running.
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    // Field order is drop order: the processes go before the files they read (and
    // in the order they are kept: a cluster's nodes before its NATS).
    processes: Vec<ServerProcess>,
    _certificate: Option<Certificate>,
    _dir: Option<TempDir>,
}

impl Server {
    /// Starts the server `args` describe or, with `--addr`, takes the one already
    /// running there. Once a started server accepts connections, says so on stderr
    /// in one line, `bench: server pid N listening on ADDR`, that scripts wait for
    /// (bench/profile.sh).
    ///
    /// # Errors
    /// When the options do not fit together, or the server cannot be started.
    pub fn start(args: &ServerArgs) -> anyhow::Result<Self> {
        if args.tls
            && !matches!(
                args.target,
                Target::Tcpchat | Target::TcpchatNohistory | Target::TcpchatFsync | Target::Redis
            )
        {
            bail!(
                "--tls is supported for tcpchat and redis only, not {}",
                args.target
            );
        }
        if args.ws && !(args.target.is_tcpchat() || args.target == Target::Nats) {
            bail!(
                "--ws is supported for tcpchat and nats only, not {}",
                args.target
            );
        }
        if args.ws && args.durable {
            bail!("--ws is for the live fan-out, not the workloads of kept messages");
        }
        if args.durable && matches!(args.target, Target::Irc | Target::TcpchatNohistory) {
            bail!(
                "{} keeps no history: it has no place in a durable workload",
                args.target
            );
        }
        if args.cluster_nodes.is_some() {
            return Self::start_cluster(args);
        }
        if let Some(&addr) = args.addr.first() {
            let connector = match (&args.tls_ca, args.tls) {
                (Some(ca), true) => Connector::tls(read_certificates(ca)?)?,
                (None, true) => {
                    bail!("--tls with --addr needs --tls-ca (the certificate to trust)")
                }
                (_, false) if args.ws => websocket_connector(args.target),
                (_, false) => Connector::plain(),
            };
            let http_addr = args
                .http_addr
                .or((args.ws && args.target.is_tcpchat()).then_some(addr));
            let (sender_addr, sender_connector) = match args.senders_addr.first() {
                Some(&senders) => (senders, Connector::plain()),
                None if args.ws && !args.ws_senders => {
                    bail!("--ws with --addr needs --senders-addr (or --ws-senders)")
                }
                None => (addr, connector.clone()),
            };
            let sender_addrs = if args.senders_addr.is_empty() {
                vec![sender_addr]
            } else {
                args.senders_addr.clone()
            };
            return Ok(Self {
                endpoint: Endpoint {
                    target: args.target,
                    addr,
                    http_addr,
                    pid: args.pid.first().copied(),
                    processes: args
                        .pid
                        .iter()
                        .map(|&pid| Process {
                            name: format!("pid {pid}"),
                            pid,
                        })
                        .collect(),
                    connector,
                    viewer_addrs: args.addr.clone(),
                    sender_addrs,
                    sender_connector,
                    durable: args.durable,
                    cluster_nodes: None,
                    senders_on: None,
                },
                processes: Vec::new(),
                _certificate: None,
                _dir: None,
            });
        }

        let certificate = if args.tls {
            Some(Certificate::generate()?)
        } else {
            None
        };
        let own = match &certificate {
            Some(certificate) => Connector::tls(vec![certificate.der()])?,
            None => Connector::plain(),
        };
        let dir =
            TempDir::new("tcpchat-bench-server").context("cannot create a temporary directory")?;
        let launch = spec(args, certificate.as_ref(), &dir)?;
        // The harness's errors name the server and end with its last output.
        let process = launch.spec.pinned_to(args.server_cpu).start()?;
        let http_addr = if args.target.is_tcpchat() {
            process.http_addr()
        } else {
            None
        };
        // Where clients speak the target's own protocol (over TLS with --tls).
        let own_addr = if args.target.is_tcpchat() && args.tls {
            process
                .tls_addr()
                .context("tcpchat started without a TLS listener")?
        } else {
            process.addr()
        };
        let (addr, connector) = if args.ws {
            let addr = if args.target.is_tcpchat() {
                http_addr.context("tcpchat started without an HTTP listener")?
            } else {
                let addr = launch
                    .websocket
                    .context("the server was started without a websocket listener")?;
                wait_accepting(addr)?;
                addr
            };
            (addr, websocket_connector(args.target))
        } else {
            (own_addr, own.clone())
        };
        let (sender_addr, sender_connector) = if args.ws && !args.ws_senders {
            (own_addr, own)
        } else {
            (addr, connector.clone())
        };
        eprintln!(
            "bench: server pid {} listening on {addr}{}",
            process.pid(),
            match connector.transport() {
                Transport::Tls => " (TLS)",
                Transport::Ws => " (WebSocket)",
                Transport::Tcp => "",
            }
        );
        Ok(Self {
            endpoint: Endpoint {
                target: args.target,
                addr,
                http_addr,
                pid: Some(process.pid()),
                processes: vec![Process {
                    name: args.target.to_string(),
                    pid: process.pid(),
                }],
                connector,
                viewer_addrs: vec![addr],
                sender_addrs: vec![sender_addr],
                sender_connector,
                durable: args.durable,
                cluster_nodes: None,
                senders_on: None,
            },
            processes: vec![process],
            _certificate: certificate,
            _dir: Some(dir),
        })
    }

    /// Where and how to reach it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops a server started here (SIGTERM, then a kill if it has not exited within
    /// the harness's stop timeout); a server that was already running is left alone.
    /// A server that had to be killed is reported on stderr, not as a failed run:
    /// the run's figures were taken before.
    /// A cluster's nodes go first, then its NATS.
    pub fn stop(mut self) {
        for process in std::mem::take(&mut self.processes) {
            let pid = process.pid();
            eprintln!("bench: stopping server pid {pid}");
            if let Err(error) = process.stop(Signal::SIGTERM) {
                eprintln!("bench: server pid {pid}: {error}");
            }
        }
    }

    /// Starts a tcpchat cluster (`--cluster-nodes`): nats-server with JetStream, then
    /// the nodes, one after the other (each logs its listening address once it has
    /// joined the room's stream), all pinned to `--server-cpu`.
    fn start_cluster(args: &ServerArgs) -> anyhow::Result<Self> {
        let nodes = args.cluster_nodes.unwrap_or(1);
        if args.target != Target::Tcpchat {
            bail!("--cluster-nodes is for --target tcpchat only");
        }
        if args.tls || args.ws {
            bail!("--cluster-nodes is for plain TCP clients only");
        }
        let dir =
            TempDir::new("tcpchat-bench-cluster").context("cannot create a temporary directory")?;
        let port = harness::free_port().context("no free port")?;
        let nats_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let nats = Spec::listening("nats-server", nats_addr)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(data_dir(&dir, "jetstream")?)
            .pinned_to(args.server_cpu)
            .start()?;
        let mut processes = vec![Process {
            name: "nats-server".to_owned(),
            pid: nats.pid(),
        }];
        // Nodes are stopped before NATS: they come first.
        let mut started = Vec::new();
        let binary = tcpchat_binary(args)?;
        let url = format!("nats://{nats_addr}");
        for node in 1..=nodes {
            let data = data_dir(&dir, &format!("node{node}"))?;
            let process = Spec::tcpchat(&binary)
                .arg("--data-dir")
                .arg(data)
                .args(["--cluster", &url])
                .pinned_to(args.server_cpu)
                .start()
                .with_context(|| format!("cluster node {node} did not start"))?;
            processes.push(Process {
                name: format!("node{node}"),
                pid: process.pid(),
            });
            started.push(process);
        }
        let viewer_addrs: Vec<SocketAddr> = started.iter().map(ServerProcess::addr).collect();
        let sender_addrs = match args.senders_on {
            SendersOn::One => viewer_addrs[..1].to_vec(),
            SendersOn::All => viewer_addrs.clone(),
        };
        let first = &started[0];
        eprintln!(
            "bench: cluster of {nodes} nodes (pids {}) on nats-server pid {} at {nats_addr}, \
             listening on {}",
            started
                .iter()
                .map(|p| p.pid().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            nats.pid(),
            viewer_addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let endpoint = Endpoint {
            target: args.target,
            addr: first.addr(),
            http_addr: first.http_addr(),
            pid: Some(first.pid()),
            processes,
            connector: Connector::plain(),
            viewer_addrs,
            sender_addrs,
            sender_connector: Connector::plain(),
            durable: args.durable,
            cluster_nodes: Some(nodes),
            senders_on: Some(args.senders_on),
        };
        started.push(nats);
        Ok(Self {
            endpoint,
            processes: started,
            _certificate: None,
            _dir: Some(dir),
        })
    }
}

/// Waits until `addr` accepts connections, for at most the harness's start timeout
/// (a server's second listener, once the harness has seen the first).
fn wait_accepting(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + harness::START_TIMEOUT;
    while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
        .is_err()
    {
        if std::time::Instant::now() >= deadline {
            bail!("nothing accepts on {addr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// What [`spec`] makes: the command line, and the WebSocket listener's address when
/// it has one the harness does not wait for (nats-server with `--ws`: the harness
/// waits for its plain listener).
#[derive(Debug)]
struct Launch {
    spec: Spec,
    websocket: Option<SocketAddr>,
}

impl From<Spec> for Launch {
    fn from(spec: Spec) -> Self {
        Self {
            spec,
            websocket: None,
        }
    }
}

/// How to start `args.target` (never with `--addr`): its command line, with the
/// certificate for TLS, InspIRCd's configuration written into `dir`, and every
/// server's data (tcpchat's history, Redis's append-only file, JetStream's store)
/// kept in `dir`, which goes with the run.
fn spec(
    args: &ServerArgs,
    certificate: Option<&Certificate>,
    dir: &TempDir,
) -> anyhow::Result<Launch> {
    // The peers cannot be told to pick a port and report it: each gets a free one.
    let free = || -> anyhow::Result<(SocketAddr, String)> {
        let port = harness::free_port().context("no free port")?;
        Ok((
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            port.to_string(),
        ))
    };
    if args.target == Target::Nats && args.ws {
        // Its websocket listener is only to be had from a configuration file.
        let (addr, port) = free()?;
        let (ws_addr, ws_port) = free()?;
        let config = dir.path().join("nats.conf");
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n  compression: false\n}}\n"
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        return Ok(Launch {
            spec: Spec::listening("nats-server", addr).arg("-c").arg(config),
            websocket: Some(ws_addr),
        });
    }
    Ok(Launch::from(match args.target {
        Target::Tcpchat | Target::TcpchatNohistory | Target::TcpchatFsync => {
            let binary = tcpchat_binary(args)?;
            // A fresh history for every run; with `--history off`, nothing should be
            // written, but whatever is goes there too. With `--fsync`, the log's
            // commits wait for that directory's disk.
            let data = data_dir(dir, "tcpchat")?;
            let spec = Spec::tcpchat(binary).arg("--data-dir").arg(data);
            let spec = match args.target {
                Target::TcpchatNohistory => spec.args(["--history", "off"]),
                Target::TcpchatFsync => spec.arg("--fsync"),
                _ => spec,
            };
            match certificate {
                None => spec,
                // On an ephemeral port too, which tcpchat logs.
                Some(certificate) => spec
                    .arg("--tls-cert")
                    .arg(&certificate.cert_file)
                    .arg("--tls-key")
                    .arg(&certificate.key_file)
                    .args(["--tls-port", "0"]),
            }
        }
        Target::Redis => {
            let (addr, port) = free()?;
            // No snapshots (and, but for the durable workloads, no append-only file);
            // as many clients as the idle workload holds.
            let spec = Spec::listening("redis-server", addr).args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--maxclients",
                "19500",
                "--daemonize",
                "no",
            ]);
            // Keeping what it delivers: the append-only file, fsynced every second
            // (Redis's default policy for it), in the run's directory.
            let spec = if args.durable {
                spec.args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
                    .arg(data_dir(dir, "redis")?)
            } else {
                spec.args(["--appendonly", "no"])
            };
            match certificate {
                None => spec.args(["--port", &port]),
                // Only the TLS listener; clients are not asked for certificates.
                Some(certificate) => spec
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&certificate.cert_file)
                    .arg("--tls-key-file")
                    .arg(&certificate.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&certificate.cert_file)
                    .args(["--tls-auth-clients", "no"]),
            }
        }
        Target::Nats => {
            let (addr, port) = free()?;
            let spec = Spec::listening("nats-server", addr).args(["-a", "127.0.0.1", "-p", &port]);
            if args.durable {
                // JetStream, storing in the run's directory.
                spec.args(["-js", "-sd"]).arg(data_dir(dir, "jetstream")?)
            } else {
                spec
            }
        }
        Target::Irc => {
            let (addr, port) = free()?;
            let config = dir.path().join("inspircd.conf");
            let text = INSPIRCD_CONF
                .replace("@PORT@", &port)
                .replace("@DIR@", &dir.path().to_string_lossy());
            std::fs::write(&config, text)
                .with_context(|| format!("cannot write {}", config.display()))?;
            let mut config_arg = std::ffi::OsString::from("--config=");
            config_arg.push(&config);
            Spec::listening("inspircd", addr).args([
                std::ffi::OsString::from("--runasroot"),
                "--nofork".into(),
                config_arg,
            ])
        }
    }))
}

/// The tcpchat to start: `--server-bin`, or the one beside this program.
fn tcpchat_binary(args: &ServerArgs) -> anyhow::Result<PathBuf> {
    let binary = match &args.server_bin {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("tcpchat"),
    };
    if !binary.is_file() {
        bail!(
            "no tcpchat at {} (build it, or give --server-bin)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A new directory `name` in `dir`, for a server's data.
fn data_dir(dir: &TempDir, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Target) -> ServerArgs {
        ServerArgs {
            target,
            addr: Vec::new(),
            pid: Vec::new(),
            server_bin: None,
            server_cpu: None,
            tls: false,
            tls_ca: None,
            ws: false,
            ws_senders: false,
            senders_addr: Vec::new(),
            http_addr: None,
            cluster_nodes: None,
            senders_on: SendersOn::One,
            durable: false,
        }
    }

    #[test]
    fn tls_is_refused_for_servers_benchmarked_in_plaintext_only() {
        for target in [Target::Nats, Target::Irc] {
            let error = Server::start(&ServerArgs {
                tls: true,
                ..args(target)
            })
            .unwrap_err()
            .to_string();
            assert!(error.contains("tcpchat and redis only"), "{error}");
        }
        let error = Server::start(&ServerArgs {
            tls: true,
            addr: vec!["127.0.0.1:1".parse().unwrap()],
            ..args(Target::Redis)
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("--tls-ca"), "{error}");
    }

    #[test]
    fn a_running_server_is_used_as_it_is() {
        let server = Server::start(&ServerArgs {
            addr: vec!["127.0.0.1:6000".parse().unwrap()],
            pid: vec![42],
            ..args(Target::Redis)
        })
        .unwrap();
        let endpoint = server.endpoint();
        assert_eq!(endpoint.addr.port(), 6000);
        assert_eq!(endpoint.pid, Some(42));
        assert_eq!(endpoint.transport(), Transport::Tcp);
        server.stop();
    }

    #[test]
    fn durable_peers_keep_what_they_deliver_in_the_run_s_directory() {
        let dir = TempDir::new("tcpchat-bench-test").unwrap();
        let durable = |target| ServerArgs {
            durable: true,
            ..args(target)
        };
        let nats = format!("{:?}", spec(&durable(Target::Nats), None, &dir).unwrap());
        assert!(nats.contains("\"-js\", \"-sd\""), "{nats}");
        assert!(dir.path().join("jetstream").is_dir());
        let redis = format!("{:?}", spec(&durable(Target::Redis), None, &dir).unwrap());
        assert!(
            redis.contains("\"--appendonly\", \"yes\", \"--appendfsync\", \"everysec\""),
            "{redis}"
        );
        let plain = format!("{:?}", spec(&args(Target::Redis), None, &dir).unwrap());
        assert!(plain.contains("\"--appendonly\", \"no\""), "{plain}");
        assert!(!format!("{:?}", spec(&args(Target::Nats), None, &dir).unwrap()).contains("-js"));
        let error = Server::start(&durable(Target::Irc))
            .unwrap_err()
            .to_string();
        assert!(error.contains("keeps no history"), "{error}");
    }

    #[test]
    fn tcpchat_gets_a_fresh_data_dir_and_history_off_or_fsync_when_asked() {
        let dir = TempDir::new("tcpchat-bench-test").unwrap();
        // Any file will do: the spec is only built, not started.
        let binary = std::env::current_exe().unwrap();
        let tcpchat = |target| ServerArgs {
            server_bin: Some(binary.clone()),
            ..args(target)
        };
        let on = format!("{:?}", spec(&tcpchat(Target::Tcpchat), None, &dir).unwrap());
        assert!(on.contains("\"--data-dir\""), "{on}");
        assert!(!on.contains("\"--history\""), "{on}");
        assert!(!on.contains("\"--fsync\""), "{on}");
        assert!(dir.path().join("tcpchat").is_dir());
        let off = format!(
            "{:?}",
            spec(&tcpchat(Target::TcpchatNohistory), None, &dir).unwrap()
        );
        assert!(off.contains("\"--history\", \"off\""), "{off}");
        assert!(!off.contains("\"--fsync\""), "{off}");
        let fsync = format!(
            "{:?}",
            spec(&tcpchat(Target::TcpchatFsync), None, &dir).unwrap()
        );
        assert!(fsync.contains("\"--fsync\""), "{fsync}");
        assert!(fsync.contains("\"--data-dir\""), "{fsync}");
        assert!(!fsync.contains("\"--history\""), "{fsync}");
    }

    #[test]
    fn nats_over_websocket_gets_a_plain_uncompressed_websocket_listener() {
        let dir = TempDir::new("tcpchat-bench-test").unwrap();
        let ws = |target| ServerArgs {
            ws: true,
            ..args(target)
        };
        let nats = format!("{:?}", spec(&ws(Target::Nats), None, &dir).unwrap());
        assert!(nats.contains("\"-c\""), "{nats}");
        let config = std::fs::read_to_string(dir.path().join("nats.conf")).unwrap();
        for line in ["websocket {", "no_tls: true", "compression: false"] {
            assert!(config.contains(line), "{config}");
        }
        for target in [Target::Redis, Target::Irc] {
            let error = Server::start(&ws(target)).unwrap_err().to_string();
            assert!(error.contains("tcpchat and nats only"), "{error}");
        }
        let error = Server::start(&ServerArgs {
            durable: true,
            ..ws(Target::Nats)
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("live fan-out"), "{error}");
        // A running tcpchat's WebSocket listener is its HTTP listener too; its
        // senders speak line mode to the plain one, or WebSocket if so asked.
        let running = |senders_addr, ws_senders| {
            Server::start(&ServerArgs {
                addr: vec!["127.0.0.1:6080".parse().unwrap()],
                senders_addr,
                ws_senders,
                ..ws(Target::Tcpchat)
            })
        };
        let error = running(Vec::new(), false).unwrap_err().to_string();
        assert!(error.contains("--senders-addr"), "{error}");
        let server = running(vec!["127.0.0.1:6000".parse().unwrap()], false).unwrap();
        let endpoint = server.endpoint();
        assert_eq!(endpoint.transport(), Transport::Ws);
        assert_eq!(endpoint.senders_transport(), Transport::Tcp);
        assert_eq!(endpoint.sender_addrs[0].port(), 6000);
        assert_eq!(endpoint.http_addr, Some(endpoint.addr));
        server.stop();
        let server = running(Vec::new(), true).unwrap();
        assert_eq!(server.endpoint().senders_transport(), Transport::Ws);
        assert_eq!(server.endpoint().sender_addrs[0].port(), 6080);
        server.stop();
    }

    #[test]
    fn a_cluster_is_of_plain_tcpchat_nodes_and_a_list_of_addresses_spreads_clients() {
        let cluster = |target, tls| ServerArgs {
            cluster_nodes: Some(2),
            tls,
            ..args(target)
        };
        let error = Server::start(&cluster(Target::Nats, false))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tcpchat only"), "{error}");
        let error = Server::start(&cluster(Target::Tcpchat, true))
            .unwrap_err()
            .to_string();
        assert!(error.contains("plain TCP"), "{error}");
        // Nodes already running: viewers over every one, senders over those given.
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:6000".parse().unwrap(),
            "127.0.0.1:6010".parse().unwrap(),
        ];
        let server = Server::start(&ServerArgs {
            addr: nodes.clone(),
            senders_addr: nodes[1..].to_vec(),
            pid: vec![7, 8, 9],
            ..args(Target::Tcpchat)
        })
        .unwrap();
        let endpoint = server.endpoint();
        assert_eq!(endpoint.addr, nodes[0]);
        assert_eq!(endpoint.viewer_addrs, nodes);
        assert_eq!(endpoint.sender_addrs, nodes[1..]);
        assert_eq!(endpoint.pid, Some(7));
        assert_eq!(endpoint.processes.len(), 3);
        server.stop();
    }

    #[test]
    fn inspircd_gets_its_configuration_filled_in() {
        let dir = TempDir::new("tcpchat-bench-test").unwrap();
        let _spec = spec(&args(Target::Irc), None, &dir).unwrap();
        let config = std::fs::read_to_string(dir.path().join("inspircd.conf")).unwrap();
        assert!(
            !config.contains("@PORT@") && !config.contains("@DIR@"),
            "{config}"
        );
        assert!(config.contains(&format!("{}/inspircd.pid", dir.path().display())));
        let port = config
            .split("port=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert!(port.parse::<u16>().unwrap() > 0);
    }
}
