//! The server: its listeners, their transports, and orderly shutdown.
//!
//! [`run`] is the seam tests and `main` share: it takes bound listeners, the
//! configuration and a shutdown future, and returns when the server has stopped.
//!
//! Transports are thin adapters over the member core ([`crate::hub::member`]):
//! `stream.rs` serves every byte stream (plain TCP, TLS), `accept.rs` runs one accept
//! loop per listener, and `admission.rs` holds the limits every listener shares.
//! Dependencies point one way: `mod.rs` -> `accept.rs` -> `stream.rs` ->
//! `admission.rs`.

mod accept;
pub mod admin;
pub mod admission;
pub mod bans;
mod http;
pub mod password;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::config::{Config, Switch};
use crate::hub;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::sqlite::{self, SqliteStore};
use crate::tls::Certificates;
use accept::{Listening, Transport};
use admission::Gate;
use bans::Bans;

/// The sockets the server serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Plain TCP: seed mode and line mode (one per address listened on).
    pub plain: Vec<TcpListener>,
    /// TLS, line mode only, with its (reloadable) certificate.
    pub tls: Option<(Vec<TcpListener>, Arc<Certificates>)>,
    /// HTTP: the page, its WebSocket, health checks and metrics.
    pub http: Vec<TcpListener>,
    /// The operator's socket (`tcpchat admin`).
    pub admin: Option<admin::AdminSocket>,
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Self {
        Self {
            plain: vec![plain],
            tls: None,
            http: Vec::new(),
            admin: None,
        }
    }
}

/// The settings connections take when they arrive: a reload (SIGHUP) replaces them
/// for connections from then on; a connection keeps those it came with.
#[derive(Debug)]
pub struct Settings(std::sync::RwLock<Arc<Config>>);

impl Settings {
    fn new(config: Arc<Config>) -> Self {
        Self(std::sync::RwLock::new(config))
    }

    /// The settings now.
    pub fn current(&self) -> Arc<Config> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, config: Arc<Config>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }
}

/// Applies a reload to a running server: see [`Reloader::apply`].
#[derive(Debug, Clone)]
pub struct Reloader {
    settings: Arc<Settings>,
    gate: Arc<Gate>,
    hub: hub::WeakHub,
}

impl Reloader {
    /// Takes `config` for what arrives from now on: the limits, timeouts and origins
    /// a connection takes when it arrives, the per-address limit, the loopback
    /// exemption and the password, and in the room the chat name, flood control, the
    /// heartbeat, the longest name and how many events the log keeps. Settings that
    /// need a restart (ports, the data directory...) are the caller's to report.
    pub async fn apply(&self, config: Config) {
        let config = Arc::new(config);
        self.gate.reconfigure(&config);
        if let Some(hub) = self.hub.upgrade() {
            let _ = hub.reconfigure(&config).await;
        }
        self.settings.replace(config);
    }
}

/// A server ready to serve: its log open, its hub running.
#[derive(Debug)]
pub struct Prepared {
    config: Arc<Config>,
    /// The settings connections take when they arrive (a reload replaces them).
    settings: Arc<Settings>,
    gate: Arc<Gate>,
    hub: hub::Hub,
    hub_task: tokio::task::JoinHandle<()>,
    /// In a cluster: cancelled when this node must stop (the others gave it up).
    expelled: Option<tokio_util::sync::CancellationToken>,
    /// In a cluster: this node's events not yet in the stream.
    unpublished: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// Opens the room's log (unless history is off) and starts the hub. Blocks while
/// the log is opened: call it before listening, so that a data directory that
/// cannot be used stops the server before anyone can connect.
///
/// # Errors
/// When the log cannot be opened or read, saying why in one line.
pub fn prepare(config: Config) -> anyhow::Result<Prepared> {
    let store = open_store(&config)?;
    let bans = open_bans(&config)?;
    prepare_with(config, store, bans)
}

/// The operator's bans: kept in the data directory beside the room's log, or, with
/// history off (no data directory), in memory only.
///
/// # Errors
/// When the bans file cannot be read or is not one.
fn open_bans(config: &Config) -> anyhow::Result<Bans> {
    match config.history {
        Switch::On => Bans::open(config.data_dir().join("bans")),
        Switch::Off => Ok(Bans::default()),
    }
}

fn open_store(config: &Config) -> anyhow::Result<Option<Arc<dyn Store>>> {
    Ok(match config.history {
        Switch::On => {
            let options = sqlite::Options::new(config.history_max_events, config.fsync);
            Some(SqliteStore::open(&config.data_dir(), &options)?)
        }
        Switch::Off => None,
    })
}

/// How long a node starting in a cluster waits to catch up with the stream before
/// it serves anyway.
const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`prepare`] for a node of a cluster (`--cluster`): also connects to NATS, opens
/// the room's stream, and brings this node's log up to it before serving.
///
/// # Errors
/// As [`prepare`]; and when NATS cannot be reached or its stream is not tcpchat's, or
/// this node's log is ahead of the stream (another room's data directory).
pub async fn prepare_cluster(config: Config) -> anyhow::Result<Prepared> {
    let store = open_store(&config)?;
    let bans = open_bans(&config)?;
    let recovered = match &store {
        Some(store) => store.recover()?,
        None => crate::store::Recovered::default(),
    };
    let cluster = Cluster::connect(&config).await?;
    let replication = cluster.start(&recovered).await?;
    let unpublished = replication.unacked.clone();
    let config = Arc::new(config);
    let (hub, hub_task) =
        hub::spawn_replica(&config, store, &recovered, Metrics::shared(), replication);
    // Members are let in once the room is what the stream says: a viewer welcomed
    // earlier would be told an old number, and its history would be short.
    let stats = hub.stats();
    let caught_up = async {
        let seq = cluster.caught_up(CATCH_UP_PATIENCE).await?;
        while stats.published_seq() < seq {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Some(seq)
    };
    match tokio::time::timeout(CATCH_UP_PATIENCE, caught_up).await {
        Ok(Some(seq)) => info!(seq, "caught up with the cluster's stream"),
        _ => warn!(
            "not caught up with the cluster's stream after {CATCH_UP_PATIENCE:?}; serving anyway, the room will follow"
        ),
    }
    Ok(Prepared {
        settings: Arc::new(Settings::new(config.clone())),
        gate: Arc::new(Gate::new(&config, bans)),
        config,
        hub,
        hub_task,
        expelled: Some(cluster.expelled()),
        unpublished: Some(unpublished),
    })
}

/// [`prepare`] with the log `store` (another implementation of [`Store`]), or none;
/// the operator's bans are kept in memory only.
///
/// # Errors
/// When the log cannot be read.
pub fn prepare_with_store(
    config: Config,
    store: Option<Arc<dyn Store>>,
) -> anyhow::Result<Prepared> {
    prepare_with(config, store, Bans::default())
}

fn prepare_with(
    config: Config,
    store: Option<Arc<dyn Store>>,
    bans: Bans,
) -> anyhow::Result<Prepared> {
    let config = Arc::new(config);
    let (hub, hub_task) = hub::spawn_with(&config, store, Metrics::shared())?;
    Ok(Prepared {
        settings: Arc::new(Settings::new(config.clone())),
        gate: Arc::new(Gate::new(&config, bans)),
        config,
        hub,
        hub_task,
        expelled: None,
        unpublished: None,
    })
}

/// Serves the chat on `listeners` until `shutdown` completes: [`prepare`], then
/// [`Prepared::serve`].
///
/// # Errors
/// As [`prepare`] and [`Prepared::serve`].
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    prepare(config)?.serve(listeners, shutdown).await
}

impl Prepared {
    /// What applies a reload to this server once it serves.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            settings: self.settings.clone(),
            gate: self.gate.clone(),
            hub: self.hub.downgrade(),
        }
    }

    /// The server's metrics (for what happens outside it, such as certificate
    /// reloads).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.hub.metrics().clone()
    }

    /// Serves the chat on `listeners` until `shutdown` completes, then shuts down in
    /// order: stop accepting; stop reading messengers and let the room finish what it
    /// already accepted (and the log keep it); let every viewer receive all of it
    /// (within [`Config::shutdown_timeout`]); close every connection.
    ///
    /// # Errors
    /// Only if the server cannot run at all; a failing connection ends that
    /// connection.
    pub async fn serve(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            settings,
            gate,
            hub,
            hub_task,
            expelled,
            unpublished,
        } = self;
        let listeners = listeners.into();
        match config.history {
            Switch::On => info!(
                data_dir = %config.data_dir().display(),
                fsync = config.fsync,
                max_events = config.history_max_events,
                "keeping the room's log"
            ),
            Switch::Off => info!("history is off: nothing is kept"),
        }
        let listening = Listening {
            hub: hub.clone(),
            settings: settings.clone(),
            gate: gate.clone(),
            ids: Arc::new(AtomicU64::new(0)),
            tracker: TaskTracker::new(),
        };
        let tracker = listening.tracker.clone();
        for listener in &listeners.plain {
            if let Some(address) = accept::local_address(listener) {
                info!(
                    %address,
                    transport = %"tcp",
                    chat = %config.chat_name,
                    max_connections = gate.max_connections(),
                    "listening"
                );
            }
        }
        // HTTPS with the chat's own certificate, when it has one.
        let certificates = listeners
            .tls
            .as_ref()
            .map(|(_, certificates)| certificates.clone());
        let web = http::Web {
            hub: hub.downgrade(),
            settings: settings.clone(),
            gate: gate.clone(),
            ids: listening.ids.clone(),
            tracker: listening.tracker.clone(),
        };
        for (i, listener) in listeners.http.into_iter().enumerate() {
            let transport = if certificates.is_some() {
                "https"
            } else {
                "http"
            };
            if let Some(address) = accept::local_address(&listener) {
                info!(%address, %transport, "listening");
                if i == 0 {
                    info!(url = %page_url(address, transport), "the chat page");
                }
            }
            tokio::spawn(http::run(listener, certificates.clone(), web.clone()));
        }
        if let Some(socket) = listeners.admin {
            info!(path = %socket.path().display(), "the admin socket (tcpchat admin)");
            tokio::spawn(admin::run(socket, hub.downgrade(), gate.bans()));
        }
        let mut loops: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
        if let Some((tls, certificates)) = listeners.tls {
            for listener in tls {
                if let Some(address) = accept::local_address(&listener) {
                    info!(%address, transport = %"tls", certificate = %certificates.cert_path().display(), "listening");
                }
                loops.push(Box::pin(accept::run(
                    listener,
                    Transport::Tls(certificates.clone()),
                    listening.clone(),
                )));
            }
        }
        for listener in listeners.plain {
            loops.push(Box::pin(accept::run(
                listener,
                Transport::Plain,
                listening.clone(),
            )));
        }
        drop(listening);
        let accepting = futures_util::future::join_all(loops);
        let summary_stop = tokio_util::sync::CancellationToken::new();
        if let Some(every) = crate::logging::summary_interval() {
            let metrics = hub.metrics().clone();
            tokio::spawn(crate::logging::summarize(
                metrics,
                every,
                summary_stop.clone(),
            ));
        }

        let expelled_token = expelled.clone();
        let given_up = async move {
            match expelled_token {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            _ = accepting => {}
            () = given_up => {}
        }

        summary_stop.cancel();
        info!(connections = tracker.len(), "shutting down");
        hub.begin_shutdown();
        let stats = hub.stats();
        // The hub stops once every sender has let go; this handle must not keep it.
        drop(hub);
        tracker.close();
        let timeout = config.shutdown_timeout;
        // Each connection stops itself at the deadline; the margin covers its last close.
        let margin = std::time::Duration::from_secs(2);
        if tokio::time::timeout(timeout + margin, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                connections = tracker.len(),
                "connections still open after the deadline"
            );
        }
        let slow_viewers = stats.slow_viewers();
        match tokio::time::timeout(margin, hub_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the hub task failed"),
            Err(_) => warn!("the hub did not stop in time"),
        }
        if let Some(unpublished) = unpublished {
            settle(&unpublished, timeout).await;
        }
        info!(slow_viewers, "stopped");
        if expelled.is_some_and(|token| token.is_cancelled()) {
            anyhow::bail!("this node stopped: the cluster gave it up, or its stream is gone");
        }
        Ok(())
    }
}

/// In a cluster, at shutdown: waits (at most `timeout`) for what this node's members
/// said to be in the cluster's stream, so that stopping a node loses nothing it took
/// (NATS may be away: then its publisher is still trying).
async fn settle(unpublished: &std::sync::atomic::AtomicUsize, timeout: std::time::Duration) {
    let pending = || unpublished.load(std::sync::atomic::Ordering::Acquire);
    if pending() == 0 {
        return;
    }
    info!(
        events = pending(),
        "waiting for this node's last events to be in the cluster's stream"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    while pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if pending() > 0 {
        error!(
            lost = pending(),
            "stopping with events this node took that never reached the cluster's stream (NATS away for all of --shutdown-timeout): they are lost"
        );
    }
}

/// The address to open the chat page at, for an HTTP listener on `address`: a
/// wildcard bind is reached as `localhost`.
fn page_url(address: std::net::SocketAddr, scheme: &str) -> String {
    let port = address.port();
    match address.ip() {
        ip if ip.is_unspecified() => format!("{scheme}://localhost:{port}/"),
        std::net::IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}/"),
        std::net::IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}/"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_urls() {
        let url = |a: &str| super::page_url(a.parse().expect("address"), "http");
        assert_eq!(url("0.0.0.0:6080"), "http://localhost:6080/");
        assert_eq!(url("[::]:6080"), "http://localhost:6080/");
        assert_eq!(url("192.0.2.7:80"), "http://192.0.2.7:80/");
        assert_eq!(url("[2001:db8::1]:6080"), "http://[2001:db8::1]:6080/");
    }
}
