//! `tcpchat bench report`: medians of many runs as Markdown tables, and a chart.
//!
//! Reads the JSON lines that `fanout` and `conns` print, groups them by workload and
//! server, and takes the median of each figure over the runs. Throughput is also
//! given as a ratio to Redis measured in the same runs: absolute figures on a shared
//! machine move with its load, ratios much less.
//!
//! A server over TLS is a server of its own in the tables (`tcpchat+tls`), compared
//! with Redis over TLS (`redis+tls`), and has its own panels in the chart: plaintext
//! against plaintext, TLS against TLS.
//!
//! The durable fan-out (`fanout --durable`) compares every server with the better of
//! the peers that keep what they deliver (Redis Streams, JetStream); the catch-up
//! (`catchup`) compares times with Redis's; tcpchat with `--history off`
//! (`tcpchat-nohistory`) is compared with tcpchat in the latency workload. A table
//! checks those three against their targets. A last one gives the cost of `--fsync`:
//! tcpchat with it (`tcpchat-fsync`) against tcpchat with its defaults, in deliveries
//! per second where the load is as fast as the server takes it and in p99 latency
//! where it is paced.
//!
//! A fan-out with the viewers over WebSocket is a server of its own too
//! (`tcpchat+ws`, `nats+ws`; `+ws-all` with the senders over WebSocket as well), in a
//! table of its own: each compared with NATS over WebSocket in deliveries per
//! second, and with its own plaintext row in server CPU per delivery; the targets
//! table checks tcpchat's against the issue's. tcpchat scraped every second
//! (`tcpchat+scrape`) is compared with tcpchat in a last table.

mod cluster;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// What `tcpchat-bench report` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A file of JSON lines from `tcpchat-bench fanout`, `catchup` and `conns`.
    pub results: PathBuf,
    /// Also draw the medians as an SVG chart into this file.
    #[arg(long, conflicts_with = "cluster")]
    pub svg: Option<PathBuf>,
    /// The tables of `bench/run.sh --cluster` instead: tcpchat clusters against
    /// one tcpchat, NATS core pub/sub and JetStream, and the cluster's targets.
    #[arg(long)]
    pub cluster: bool,
}

/// The servers in the order of the tables: plaintext, then TLS, then WebSocket. Any
/// other comes after.
const SERVERS: [&str; 13] = [
    "tcpchat",
    "tcpchat+scrape",
    "tcpchat-nohistory",
    "tcpchat-fsync",
    "redis",
    "nats",
    "irc",
    "tcpchat+tls",
    "redis+tls",
    "tcpchat+ws",
    "nats+ws",
    "tcpchat+ws-all",
    "nats+ws-all",
];

/// What marks a server over TLS.
const TLS_SUFFIX: &str = "+tls";

/// What marks a server with its viewers over WebSocket (and `+ws-all`, its senders
/// too).
const WS_SUFFIX: &str = "+ws";
const WS_ALL_SUFFIX: &str = "+ws-all";

/// What marks tcpchat scraped during the run.
const SCRAPE_SUFFIX: &str = "+scrape";

/// The server of a run: its target, and `+tls` when the run was over TLS, `+ws`
/// when its viewers were over WebSocket (`+ws-all`: its senders too), `+scrape`
/// when its `/metrics` was scraped (runs from before the transport was recorded
/// were all plaintext).
fn server_of(run: &Value) -> String {
    let target = run["target"].as_str().unwrap_or("?");
    let transport = match (run["transport"].as_str(), run["senders_transport"].as_str()) {
        (Some("tls"), _) => TLS_SUFFIX,
        (Some("ws"), Some("ws")) => WS_ALL_SUFFIX,
        (Some("ws"), _) => WS_SUFFIX,
        _ => "",
    };
    let scrape = if run["scrape"].is_object() {
        SCRAPE_SUFFIX
    } else {
        ""
    };
    let cluster = match run["cluster_nodes"].as_u64() {
        Some(nodes) if run["senders_on"].as_str() == Some("all") => {
            format!("-cluster{nodes}+senders-all")
        }
        Some(nodes) => format!("-cluster{nodes}"),
        None => String::new(),
    };
    format!("{target}{cluster}{transport}{scrape}")
}

/// How a server's clients reach it, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Plain,
    Tls,
    WebSocket,
}

impl Class {
    fn of(server: &str) -> Self {
        if server.ends_with(TLS_SUFFIX) {
            Self::Tls
        } else if server.ends_with(WS_SUFFIX) || server.ends_with(WS_ALL_SUFFIX) {
            Self::WebSocket
        } else {
            Self::Plain
        }
    }
}

/// The target of a server, without what says how it was reached or scraped.
fn target_of(server: &str) -> &str {
    server.split('+').next().unwrap_or(server)
}

/// The Redis a server is compared with: Redis over the same transport.
fn redis_for(server: &str) -> &'static str {
    if server.ends_with(TLS_SUFFIX) {
        "redis+tls"
    } else {
        "redis"
    }
}

/// Whether `server` is tcpchat (with or without history or fsync, over either
/// transport).
fn is_tcpchat(server: &str) -> bool {
    server.starts_with("tcpchat")
}

/// The runs of one workload on one server.
#[derive(Debug, Default)]
struct Runs(Vec<Value>);

impl Runs {
    fn clean(&self) -> bool {
        self.0.iter().all(|r| {
            r["complete"].as_bool() == Some(true)
                && r["lost"].as_u64().unwrap_or(0) == 0
                && r["duplicated_or_reordered"].as_u64().unwrap_or(0) == 0
                && (r["scrape"].is_null()
                    || (r["scrape"]["failed"].as_u64() == Some(0)
                        && r["scrape"]["ok"].as_u64().unwrap_or(0) > 0))
        })
    }

    /// The median server CPU per delivery in nanoseconds (recorded in microseconds).
    fn server_cpu_ns_per_delivery(&self) -> Option<f64> {
        Some(self.median("/server_cpu_us_per_delivery")? * 1e3)
    }

    fn median(&self, pointer: &str) -> Option<f64> {
        let mut values: Vec<f64> = self
            .0
            .iter()
            .filter_map(|r| r.pointer(pointer)?.as_f64())
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Throughput,
    Durable,
    Latency,
    Catchup,
    Connections,
}

/// Workloads in the order they first appear, each with its runs per server.
#[derive(Debug, Default)]
struct Results {
    order: Vec<String>,
    kinds: BTreeMap<String, Kind>,
    runs: BTreeMap<(String, String), Runs>,
    /// Every server seen, in table order.
    servers: Vec<String>,
}

impl Results {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut results = Self::default();
        for (number, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let run: Value = serde_json::from_str(line)
                .with_context(|| format!("line {} is not JSON", number + 1))?;
            let workload = run["workload"].as_str().unwrap_or("?").to_owned();
            let target = server_of(&run);
            if !results.servers.contains(&target) {
                results.servers.push(target.clone());
            }
            let kind = if run.get("server_bytes_per_connection").is_some() {
                Kind::Connections
            } else if run.get("catchup_seconds").is_some() {
                Kind::Catchup
            } else if run["durable"].as_bool() == Some(true) && run["rate_per_sender"].is_null() {
                Kind::Durable
            } else if run["rate_per_sender"].is_null() {
                Kind::Throughput
            } else {
                Kind::Latency
            };
            if !results.order.contains(&workload) {
                results.order.push(workload.clone());
            }
            results.kinds.insert(workload.clone(), kind);
            results
                .runs
                .entry((workload, target))
                .or_default()
                .0
                .push(run);
        }
        // The known ones in their order, then the others as they came.
        let rank = |server: &String| {
            SERVERS
                .iter()
                .position(|s| s == server)
                .unwrap_or(SERVERS.len())
        };
        results.servers.sort_by_key(rank);
        Ok(results)
    }

    fn of(&self, workload: &str, server: &str) -> Option<&Runs> {
        self.runs.get(&(workload.to_owned(), server.to_owned()))
    }

    fn workloads(&self, kind: Kind) -> impl Iterator<Item = &String> {
        self.order
            .iter()
            .filter(move |w| self.kinds.get(*w) == Some(&kind))
    }

    /// The better of the peers (not tcpchat) over the same transport as `server` in
    /// `workload`, by median deliveries per second: its name and figure.
    fn best_peer(&self, workload: &str, server: &str) -> Option<(&str, f64)> {
        let tls = server.ends_with(TLS_SUFFIX);
        self.servers
            .iter()
            .filter(|s| !is_tcpchat(s) && s.ends_with(TLS_SUFFIX) == tls)
            .filter_map(|s| {
                Some((
                    s.as_str(),
                    self.of(workload, s)?.median("/deliveries_per_sec")?,
                ))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl Results {
    /// NATS's median deliveries per second in `workload` with its clients reached
    /// as `server`'s are (`+ws` or `+ws-all`).
    fn nats_over_websocket(&self, workload: &str, server: &str) -> Option<f64> {
        let suffix = if server.ends_with(WS_ALL_SUFFIX) {
            WS_ALL_SUFFIX
        } else {
            WS_SUFFIX
        };
        self.of(workload, &format!("nats{suffix}"))?
            .median("/deliveries_per_sec")
    }
}

fn number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if decimals == 0 => group_thousands(v.round() as u64),
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_owned(),
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn tables(results: &Results) -> String {
    let mut out = String::new();
    // The rows of `kind`'s workloads on the servers `shown` takes, under `header`.
    let mut table = |kind: Kind,
                     shown: &dyn Fn(&str) -> bool,
                     header: &str,
                     row: &dyn Fn(&str, &str, &Runs) -> String| {
        let mut rows = String::new();
        for workload in results.workloads(kind) {
            for server in results.servers.iter().filter(|s| shown(s)) {
                if let Some(runs) = results.of(workload, server) {
                    rows.push_str(&row(workload, server, runs));
                }
            }
        }
        if !rows.is_empty() {
            out.push_str(header);
            out.push_str(&rows);
            out.push('\n');
        }
    };
    let all = |_: &str| true;
    table(
        Kind::Throughput,
        &|server| Class::of(server) != Class::WebSocket,
        "| Workload | Server | Runs | Nothing lost | Deliveries/s (median) | vs Redis | Server CPU per delivery (ns) | p99 latency (us) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            let rate = runs.median("/deliveries_per_sec");
            let redis = results
                .of(workload, redis_for(server))
                .and_then(|r| r.median("/deliveries_per_sec"));
            let ratio = match (rate, redis) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".to_owned(),
            };
            format!(
                "| {workload} | {server} | {} | {} | {} | {ratio} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(rate, 0),
                number(runs.server_cpu_ns_per_delivery(), 0),
                number(runs.median("/latency_us/p99"), 0),
            )
        },
    );
    table(
        Kind::Throughput,
        &|server| Class::of(server) == Class::WebSocket,
        "| Workload | Server | Runs | Nothing lost | Deliveries/s (median) | vs NATS over WebSocket | Server CPU per delivery (ns) | vs its plain row | Load generator CPU per delivery (ns) | p99 latency (us) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            let rate = runs.median("/deliveries_per_sec");
            let cpu = runs.server_cpu_ns_per_delivery();
            let plain = results
                .of(workload, target_of(server))
                .and_then(Runs::server_cpu_ns_per_delivery);
            format!(
                "| {workload} | {server} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(rate, 0),
                ratio(rate, results.nats_over_websocket(workload, server)),
                number(cpu, 0),
                ratio(cpu, plain),
                number(
                    runs.median("/client_cpu_us_per_delivery")
                        .map(|us| us * 1e3),
                    0
                ),
                number(runs.median("/latency_us/p99"), 0),
            )
        },
    );
    table(
        Kind::Durable,
        &all,
        "| Workload | Server | Runs | Nothing lost | Deliveries/s (median) | vs better durable peer | Server CPU per delivery (ns) | p99 latency (us) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            let rate = runs.median("/deliveries_per_sec");
            let best = results.best_peer(workload, server).map(|(_, rate)| rate);
            format!(
                "| {workload} | {server} | {} | {} | {} | {} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(rate, 0),
                ratio(rate, best),
                number(runs.server_cpu_ns_per_delivery(), 0),
                number(runs.median("/latency_us/p99"), 0),
            )
        },
    );
    table(
        Kind::Latency,
        &all,
        "| Workload | Server | Runs | Nothing lost | p50 (us) | p99 (us) | p99.9 (us) | max (us) | Server CPU per delivery (ns) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            format!(
                "| {workload} | {server} | {} | {} | {} | {} | {} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(runs.median("/latency_us/p50"), 0),
                number(runs.median("/latency_us/p99"), 0),
                number(runs.median("/latency_us/p999"), 0),
                number(runs.median("/latency_us/max"), 0),
                number(runs.server_cpu_ns_per_delivery(), 0),
            )
        },
    );
    table(
        Kind::Catchup,
        &all,
        "| Workload | Server | Runs | Nothing lost | All caught up (ms) | Median viewer (ms) | Deliveries/s | Speed vs Redis | Server CPU (ms) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            let time = runs.median("/catchup_seconds");
            let redis = results
                .of(workload, redis_for(server))
                .and_then(|r| r.median("/catchup_seconds"));
            format!(
                "| {workload} | {server} | {} | {} | {} | {} | {} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(time.map(|s| s * 1e3), 1),
                number(runs.median("/median_viewer_seconds").map(|s| s * 1e3), 1),
                number(runs.median("/deliveries_per_sec"), 0),
                // Times: Redis's over this one's, so that 2x means twice as fast.
                ratio(redis, time),
                number(runs.median("/server_cpu_ms"), 0),
            )
        },
    );
    table(
        Kind::Connections,
        &all,
        "| Workload | Server | Runs | All connected and reached | Server RSS per connection (B) | One message to all (ms) | Server CPU for it (ms) | Connecting (s) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        &|workload, server, runs| {
            format!(
                "| {workload} | {server} | {} | {} | {} | {} | {} | {} |\n",
                runs.0.len(),
                yes_no(runs.clean()),
                number(runs.median("/server_bytes_per_connection"), 0),
                number(runs.median("/broadcast_ms"), 1),
                number(runs.median("/broadcast_server_cpu_ms"), 0),
                number(runs.median("/connect_seconds"), 1),
            )
        },
    );
    out.push_str(&targets(results));
    out.push_str(&fsync_cost(results));
    out.push_str(&scrape_cost(results));
    out
}

/// The targets of the durable room log, as far as the results measure them: tcpchat
/// against the better durable peer, against Redis catching up, and its latency with
/// history on against off.
fn targets(results: &Results) -> String {
    let mut rows = Vec::new();
    let clean = |workload: &str, servers: &[&str]| {
        servers
            .iter()
            .all(|s| results.of(workload, s).is_some_and(Runs::clean))
    };
    for workload in results.workloads(Kind::Durable) {
        let (Some(tcpchat), Some((peer, best))) = (
            results
                .of(workload, "tcpchat")
                .and_then(|r| r.median("/deliveries_per_sec")),
            results.best_peer(workload, "tcpchat"),
        ) else {
            continue;
        };
        let held = tcpchat >= 3.0 * best && clean(workload, &["tcpchat", peer]);
        rows.push(format!(
            "| {workload}: tcpchat at least 3x the better durable peer's deliveries/s | {:.2}x {peer} ({} against {}) | {} |\n",
            tcpchat / best,
            number(Some(tcpchat), 0),
            number(Some(best), 0),
            yes_no(held),
        ));
    }
    for workload in results.workloads(Kind::Catchup) {
        let time = |server| results.of(workload, server)?.median("/catchup_seconds");
        let (Some(tcpchat), Some(redis)) = (time("tcpchat"), time("redis")) else {
            continue;
        };
        let held =
            tcpchat > 0.0 && redis >= 2.0 * tcpchat && clean(workload, &["tcpchat", "redis"]);
        rows.push(format!(
            "| {workload}: tcpchat catches up at least 2x faster than Redis | {} ({:.1} ms against {:.1}) | {} |\n",
            ratio(Some(redis), Some(tcpchat)),
            tcpchat * 1e3,
            redis * 1e3,
            yes_no(held),
        ));
    }
    for workload in results.workloads(Kind::Latency) {
        let p99 = |server| results.of(workload, server)?.median("/latency_us/p99");
        let (Some(on), Some(off)) = (p99("tcpchat"), p99("tcpchat-nohistory")) else {
            continue;
        };
        let held =
            off > 0.0 && on <= 1.25 * off && clean(workload, &["tcpchat", "tcpchat-nohistory"]);
        rows.push(format!(
            "| {workload}: p99 with history at most 1.25x without | {:.2} ({} us against {}) | {} |\n",
            on / off.max(f64::MIN_POSITIVE),
            number(Some(on), 0),
            number(Some(off), 0),
            yes_no(held),
        ));
    }
    for workload in results.workloads(Kind::Throughput) {
        let figure = |server: &str, pointer: &str| results.of(workload, server)?.median(pointer);
        if let (Some(tcpchat), Some(nats)) = (
            figure("tcpchat+ws", "/deliveries_per_sec"),
            figure("nats+ws", "/deliveries_per_sec"),
        ) {
            let held =
                nats > 0.0 && tcpchat >= 2.0 * nats && clean(workload, &["tcpchat+ws", "nats+ws"]);
            rows.push(format!(
                "| {workload}: tcpchat at least 2x NATS in deliveries/s, viewers over WebSocket | {} ({} against {}) | {} |\n",
                ratio(Some(tcpchat), Some(nats)),
                number(Some(tcpchat), 0),
                number(Some(nats), 0),
                yes_no(held),
            ));
        }
        let cpu = |server: &str| results.of(workload, server)?.server_cpu_ns_per_delivery();
        if let (Some(ws), Some(line)) = (cpu("tcpchat+ws"), cpu("tcpchat")) {
            let held =
                line > 0.0 && ws <= 1.5 * line && clean(workload, &["tcpchat+ws", "tcpchat"]);
            rows.push(format!(
                "| {workload}: tcpchat's server CPU per delivery over WebSocket at most 1.5x line mode's | {} ({} ns against {}) | {} |\n",
                ratio(Some(ws), Some(line)),
                number(Some(ws), 0),
                number(Some(line), 0),
                yes_no(held),
            ));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = "| Target | Measured | Held |\n| --- | --- | --- |\n".to_owned();
    out.extend(rows);
    out.push('\n');
    out
}

/// The cost of `--fsync`: tcpchat with it against tcpchat with its defaults in the
/// same runs, as deliveries per second in the workloads as fast as the server goes
/// (fan-out, durable fan-out) and as p99 latency in the paced ones (where
/// deliveries per second are the pace's).
fn fsync_cost(results: &Results) -> String {
    let mut rows = Vec::new();
    let clean = |workload: &str| {
        ["tcpchat", "tcpchat-fsync"]
            .iter()
            .all(|s| results.of(workload, s).is_some_and(Runs::clean))
    };
    for workload in &results.order {
        let figure = |pointer: &str| {
            Some((
                results.of(workload, "tcpchat-fsync")?.median(pointer)?,
                results.of(workload, "tcpchat")?.median(pointer)?,
            ))
        };
        let row = match results.kinds.get(workload) {
            Some(Kind::Throughput | Kind::Durable) => {
                figure("/deliveries_per_sec").map(|(fsync, defaults)| {
                    format!(
                        "| {workload}: deliveries/s | {} ({} against {}) |",
                        ratio(Some(fsync), Some(defaults)),
                        number(Some(fsync), 0),
                        number(Some(defaults), 0),
                    )
                })
            }
            Some(Kind::Latency) => figure("/latency_us/p99").map(|(fsync, defaults)| {
                format!(
                    "| {workload}: p99 latency | {} ({} us against {}) |",
                    ratio(Some(fsync), Some(defaults)),
                    number(Some(fsync), 0),
                    number(Some(defaults), 0),
                )
            }),
            _ => None,
        };
        if let Some(row) = row {
            rows.push(format!("{row} {} |\n", yes_no(clean(workload))));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = "| Cost of --fsync | tcpchat-fsync against tcpchat | Nothing lost |\n\
                   | --- | --- | --- |\n"
        .to_owned();
    out.extend(rows);
    out.push('\n');
    out
}

/// The cost of being scraped: tcpchat with its `/metrics` scraped every second
/// during the load (`tcpchat+scrape`) against tcpchat in the same runs, in
/// deliveries per second and in server CPU per delivery, with the scrapes made.
fn scrape_cost(results: &Results) -> String {
    let mut rows = Vec::new();
    for workload in results.workloads(Kind::Throughput) {
        let (Some(scraped), Some(plain)) = (
            results.of(workload, "tcpchat+scrape"),
            results.of(workload, "tcpchat"),
        ) else {
            continue;
        };
        let clean = yes_no(scraped.clean() && plain.clean());
        let scrapes = number(scraped.median("/scrape/ok"), 0);
        let slowest = number(scraped.median("/scrape/slowest_ms"), 1);
        let rate = (
            scraped.median("/deliveries_per_sec"),
            plain.median("/deliveries_per_sec"),
        );
        rows.push(format!(
            "| {workload}: deliveries/s | {} ({} against {}) | {scrapes} | {slowest} | {clean} |\n",
            ratio(rate.0, rate.1),
            number(rate.0, 0),
            number(rate.1, 0),
        ));
        let cpu = (
            scraped.server_cpu_ns_per_delivery(),
            plain.server_cpu_ns_per_delivery(),
        );
        rows.push(format!(
            "| {workload}: server CPU per delivery | {} ({} ns against {}) | {scrapes} | {slowest} | {clean} |\n",
            ratio(cpu.0, cpu.1),
            number(cpu.0, 0),
            number(cpu.1, 0),
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = "| Cost of a /metrics scrape every second | tcpchat+scrape against tcpchat | Scrapes per run (median) | Slowest scrape (ms, median) | Nothing lost, every scrape good |\n\
                   | --- | --- | --- | --- | --- |\n"
        .to_owned();
    out.extend(rows);
    out.push('\n');
    out
}

/// `a / b` as a ratio (`4.07x`), or `-`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

fn yes_no(clean: bool) -> &'static str {
    if clean { "yes" } else { "NO" }
}

/// One panel of the chart: one figure of a workload for each server over one
/// transport (bars are labelled with the target alone; the title says TLS).
struct Panel {
    title: String,
    unit: &'static str,
    lower_is_better: bool,
    bars: Vec<(String, f64)>,
}

fn panels(results: &Results) -> Vec<Panel> {
    let mut panels = Vec::new();
    for workload in &results.order {
        // (JSON pointer, scale, unit, lower is better) of each figure drawn.
        let figures: &[(&str, f64, &'static str, bool)] = match results.kinds.get(workload) {
            Some(Kind::Throughput | Kind::Durable) => &[
                ("/deliveries_per_sec", 1.0, "deliveries/s", false),
                (
                    "/server_cpu_us_per_delivery",
                    1e3,
                    "server CPU ns/delivery",
                    true,
                ),
            ],
            Some(Kind::Latency) => &[("/latency_us/p99", 1.0, "p99 latency, us", true)],
            Some(Kind::Catchup) => &[("/catchup_seconds", 1e3, "all caught up, ms", true)],
            Some(Kind::Connections) => &[
                (
                    "/server_bytes_per_connection",
                    1.0,
                    "server bytes/connection",
                    true,
                ),
                ("/broadcast_ms", 1.0, "one message to all, ms", true),
            ],
            None => continue,
        };
        // Plaintext panels, then TLS ones, then WebSocket ones: TLS figures are
        // another scale, and only comparable with each other; so are WebSocket ones.
        for class in [Class::Plain, Class::Tls, Class::WebSocket] {
            for &(pointer, scale, unit, lower_is_better) in figures {
                let bars: Vec<_> = results
                    .servers
                    .iter()
                    .filter(|server| Class::of(server) == class)
                    .filter_map(|server| {
                        Some((
                            server.trim_end_matches(TLS_SUFFIX).to_owned(),
                            results.of(workload, server)?.median(pointer)? * scale,
                        ))
                    })
                    .collect();
                if !bars.is_empty() {
                    panels.push(Panel {
                        title: match class {
                            Class::Plain => workload.clone(),
                            Class::Tls => format!("{workload}, TLS"),
                            Class::WebSocket => format!("{workload}, WebSocket viewers"),
                        },
                        unit,
                        lower_is_better,
                        bars,
                    });
                }
            }
        }
    }
    panels
}

fn color(server: &str) -> &'static str {
    match server {
        "tcpchat+scrape" => "#3aafa9",
        "tcpchat+ws-all" => "#1f5f8b",
        "nats+ws-all" => "#b07d2b",
        "tcpchat" | "tcpchat+ws" => "#2b7a78",
        "tcpchat-nohistory" => "#7fb8b6",
        "tcpchat-fsync" => "#174e4c",
        "redis" => "#d1495b",
        "nats" | "nats+ws" => "#edae49",
        _ => "#6c6f93",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws the panels as bar charts, `COLUMNS` to a row.
fn svg(panels: &[Panel]) -> String {
    const W: f64 = 260.0;
    const H: f64 = 300.0;
    const TOP: f64 = 60.0;
    const BOTTOM: f64 = 40.0;
    const COLUMNS: usize = 4;
    let mut out = String::new();
    let width = W * panels.len().clamp(1, COLUMNS) as f64;
    let height = H * panels.len().div_ceil(COLUMNS).max(1) as f64;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, panel) in panels.iter().enumerate() {
        let x0 = W * (i % COLUMNS) as f64;
        let y0 = H * (i / COLUMNS) as f64;
        let max = panel
            .bars
            .iter()
            .map(|b| b.1)
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + W / 2.0,
            y0 + 20.0,
            escape(&panel.title)
        );
        let better = if panel.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{} ({better})</text>"##,
            x0 + W / 2.0,
            y0 + 38.0,
            panel.unit
        );
        // Bars as wide as in a panel of four, centred: a TLS panel's two bars look
        // like the same servers' bars beside them.
        let slot = (W - 40.0) / panel.bars.len().max(4) as f64;
        let left = x0 + (W - slot * panel.bars.len() as f64) / 2.0;
        for (j, (server, value)) in panel.bars.iter().enumerate() {
            let height = (H - TOP - BOTTOM) * value / max;
            let x = left + slot * j as f64 + slot * 0.15;
            let y = y0 + H - BOTTOM - height;
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{height:.1}" fill="{}"/>"##,
                slot * 0.7,
                color(server)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + slot * 0.35,
                y - 4.0,
                compact(*value)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + slot * 0.35,
                y0 + H - BOTTOM + 16.0,
                escape(server)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// 12345678 -> "12.3M".
fn compact(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Prints the tables and writes the chart.
///
/// # Errors
/// When the results cannot be read or the chart cannot be written.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    if args.cluster {
        print!("{}", cluster::tables(&text)?);
        return Ok(());
    }
    let results = Results::parse(&text)?;
    print!("{}", tables(&results));
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&panels(&results)))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNS: &str = r#"
{"workload":"4x100","target":"tcpchat","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":2.0,"deliveries_per_sec":9000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"4x100","target":"tcpchat","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":3.0,"deliveries_per_sec":7000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"4x100","target":"tcpchat","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":2.5,"deliveries_per_sec":8000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"4x100","target":"redis","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"deliveries_per_sec":2000000.0,"latency_us":{"p50":1.0,"p99":5.0,"p999":3.0,"max":4.0}}
{"workload":"idle","target":"redis","complete":false,"server_bytes_per_connection":2000.0,"broadcast_ms":30.0,"broadcast_server_cpu_ms":25.0,"connect_seconds":4.0}
"#;

    /// The same workload over TLS, and one plaintext run that says so.
    const TLS_RUNS: &str = r#"
{"workload":"4x100","target":"redis","transport":"tls","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"deliveries_per_sec":1000000.0,"latency_us":{"p50":1.0,"p99":9.0,"p999":3.0,"max":4.0}}
{"workload":"4x100","target":"tcpchat","transport":"tls","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.05,"deliveries_per_sec":3000000.0,"latency_us":{"p50":1.0,"p99":7.0,"p999":3.0,"max":4.0}}
{"workload":"4x100","target":"nats","transport":"tcp","complete":true,"lost":1,"duplicated_or_reordered":0,"rate_per_sender":null,"deliveries_per_sec":1000000.0,"latency_us":{"p50":1.0,"p99":6.0,"p999":3.0,"max":4.0}}
"#;

    #[test]
    fn medians_and_ratios_to_redis() {
        let results = Results::parse(RUNS).unwrap();
        let table = tables(&results);
        assert!(
            table.contains("| 4x100 | tcpchat | 3 | yes | 8,000,000 | 4.00x | 2,500 | 2 |"),
            "{table}"
        );
        assert!(
            table.contains("| 4x100 | redis | 1 | yes | 2,000,000 | 1.00x | - | 5 |"),
            "{table}"
        );
        assert!(
            table.contains("| idle | redis | 1 | NO | 2,000 | 30.0 | 25 | 4.0 |"),
            "{table}"
        );
    }

    #[test]
    fn tls_rows_follow_plaintext_ones_and_compare_with_redis_over_tls() {
        let results = Results::parse(&format!("{TLS_RUNS}{RUNS}")).unwrap();
        let table = tables(&results);
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| 4x100 |"))
            .collect();
        assert_eq!(
            rows,
            [
                "| 4x100 | tcpchat | 3 | yes | 8,000,000 | 4.00x | 2,500 | 2 |",
                "| 4x100 | redis | 1 | yes | 2,000,000 | 1.00x | - | 5 |",
                "| 4x100 | nats | 1 | NO | 1,000,000 | 0.50x | - | 6 |",
                "| 4x100 | tcpchat+tls | 1 | yes | 3,000,000 | 3.00x | 50 | 7 |",
                "| 4x100 | redis+tls | 1 | yes | 1,000,000 | 1.00x | - | 9 |",
            ],
            "{table}"
        );
        let panels = panels(&results);
        let titles: Vec<(&str, usize)> = panels
            .iter()
            .map(|p| (p.title.as_str(), p.bars.len()))
            .collect();
        assert_eq!(
            titles,
            [
                ("4x100", 3),
                ("4x100", 1),
                ("4x100, TLS", 2),
                ("4x100, TLS", 1),
                ("idle", 1),
                ("idle", 1),
            ]
        );
        // TLS bars carry the target's name (and colour); the title says TLS.
        assert_eq!(panels[2].bars[0].0, "tcpchat");
    }

    /// The durable room log's workloads: durable fan-out, catch-up, and latency with
    /// history on and off.
    const HISTORY_RUNS: &str = r#"
{"workload":"durable-4x100","target":"tcpchat","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.03,"deliveries_per_sec":9000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"durable-4x100","target":"redis","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.4,"deliveries_per_sec":2000000.0,"latency_us":{"p50":1.0,"p99":5.0,"p999":3.0,"max":4.0}}
{"workload":"durable-4x100","target":"nats","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":1.7,"deliveries_per_sec":500000.0,"latency_us":{"p50":1.0,"p99":6.0,"p999":3.0,"max":4.0}}
{"workload":"catchup-100x10k","target":"tcpchat","transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"catchup_seconds":0.2,"median_viewer_seconds":0.15,"deliveries_per_sec":5000000.0,"server_cpu_ms":150.0}
{"workload":"catchup-100x10k","target":"redis","transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"catchup_seconds":0.3,"median_viewer_seconds":0.25,"deliveries_per_sec":3333333.0,"server_cpu_ms":250.0}
{"workload":"latency","target":"tcpchat","transport":"tcp","durable":false,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":100.0,"server_cpu_us_per_delivery":2.5,"deliveries_per_sec":1.0,"latency_us":{"p50":400.0,"p99":1200.0,"p999":3.0,"max":4.0}}
{"workload":"latency","target":"tcpchat-nohistory","transport":"tcp","durable":false,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":100.0,"server_cpu_us_per_delivery":2.4,"deliveries_per_sec":1.0,"latency_us":{"p50":400.0,"p99":1000.0,"p999":3.0,"max":4.0}}
"#;

    #[test]
    fn durable_catchup_and_history_tables_and_targets() {
        let results = Results::parse(HISTORY_RUNS).unwrap();
        let table = tables(&results);
        for row in [
            "| durable-4x100 | tcpchat | 1 | yes | 9,000,000 | 4.50x | 30 | 2 |",
            "| durable-4x100 | redis | 1 | yes | 2,000,000 | 1.00x | 400 | 5 |",
            "| durable-4x100 | nats | 1 | yes | 500,000 | 0.25x | 1,700 | 6 |",
            "| catchup-100x10k | tcpchat | 1 | yes | 200.0 | 150.0 | 5,000,000 | 1.50x | 150 |",
            "| catchup-100x10k | redis | 1 | yes | 300.0 | 250.0 | 3,333,333 | 1.00x | 250 |",
            "| latency | tcpchat-nohistory | 1 | yes | 400 | 1,000 | 3 | 4 | 2,400 |",
            "| durable-4x100: tcpchat at least 3x the better durable peer's deliveries/s | 4.50x redis (9,000,000 against 2,000,000) | yes |",
            "| catchup-100x10k: tcpchat catches up at least 2x faster than Redis | 1.50x (200.0 ms against 300.0) | NO |",
            "| latency: p99 with history at most 1.25x without | 1.20 (1,200 us against 1,000) | yes |",
        ] {
            assert!(table.contains(row), "{row}\n{table}");
        }
        // Durable runs are not ordinary fan-out: no "vs Redis" table for them.
        assert!(!table.contains("| vs Redis |"), "{table}");
        let panels = panels(&results);
        let titles: Vec<(&str, &str)> = panels.iter().map(|p| (p.title.as_str(), p.unit)).collect();
        assert!(
            titles.contains(&("catchup-100x10k", "all caught up, ms")),
            "{titles:?}"
        );
        assert!(
            titles.contains(&("durable-4x100", "deliveries/s")),
            "{titles:?}"
        );
    }

    /// tcpchat with `--fsync` beside tcpchat with its defaults: two durable fan-outs
    /// and the paced latency workload (with history off too).
    const FSYNC_RUNS: &str = r#"
{"workload":"durable-4x100","target":"tcpchat","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.03,"deliveries_per_sec":9000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"durable-4x100","target":"tcpchat-fsync","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.04,"deliveries_per_sec":6000000.0,"latency_us":{"p50":1.0,"p99":3.0,"p999":3.0,"max":4.0}}
{"workload":"durable-4x100","target":"redis","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.4,"deliveries_per_sec":2000000.0,"latency_us":{"p50":1.0,"p99":5.0,"p999":3.0,"max":4.0}}
{"workload":"durable-1x1000","target":"tcpchat-fsync","transport":"tcp","durable":true,"complete":false,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.02,"deliveries_per_sec":4000000.0,"latency_us":{"p50":1.0,"p99":3.0,"p999":3.0,"max":4.0}}
{"workload":"durable-1x1000","target":"tcpchat","transport":"tcp","durable":true,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.02,"deliveries_per_sec":5000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0}}
{"workload":"latency","target":"tcpchat","transport":"tcp","durable":false,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":100.0,"server_cpu_us_per_delivery":2.5,"deliveries_per_sec":1.0,"latency_us":{"p50":400.0,"p99":1200.0,"p999":3.0,"max":4.0}}
{"workload":"latency","target":"tcpchat-fsync","transport":"tcp","durable":false,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":100.0,"server_cpu_us_per_delivery":2.6,"deliveries_per_sec":1.0,"latency_us":{"p50":500.0,"p99":3000.0,"p999":3.0,"max":4.0}}
{"workload":"latency","target":"tcpchat-nohistory","transport":"tcp","durable":false,"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":100.0,"server_cpu_us_per_delivery":2.4,"deliveries_per_sec":1.0,"latency_us":{"p50":400.0,"p99":1000.0,"p999":3.0,"max":4.0}}
"#;

    #[test]
    fn the_cost_of_fsync_against_tcpchat_s_defaults() {
        let results = Results::parse(FSYNC_RUNS).unwrap();
        assert_eq!(
            results.servers,
            ["tcpchat", "tcpchat-nohistory", "tcpchat-fsync", "redis"]
        );
        let table = tables(&results);
        let cost: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("| Cost of --fsync |"))
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(
            cost,
            [
                "| Cost of --fsync | tcpchat-fsync against tcpchat | Nothing lost |",
                "| --- | --- | --- |",
                "| durable-4x100: deliveries/s | 0.67x (6,000,000 against 9,000,000) | yes |",
                "| durable-1x1000: deliveries/s | 0.80x (4,000,000 against 5,000,000) | NO |",
                "| latency: p99 latency | 2.50x (3,000 us against 1,200) | yes |",
            ],
            "{table}"
        );
        // A durable server of its own, compared with the better peer, never one.
        assert!(
            table.contains(
                "| durable-4x100 | tcpchat-fsync | 1 | yes | 6,000,000 | 3.00x | 40 | 3 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| durable-4x100: tcpchat at least 3x the better durable peer's deliveries/s | 4.50x redis"),
            "{table}"
        );
        assert!(table.contains("| latency: p99 with history at most 1.25x without | 1.20 "));
        // Without tcpchat-fsync's runs, no such table.
        assert!(!tables(&Results::parse(HISTORY_RUNS).unwrap()).contains("Cost of --fsync"));
        // Its bars have a colour of their own.
        let colours: Vec<&str> = results.servers.iter().map(|s| color(s)).collect();
        for (i, colour) in colours.iter().enumerate() {
            assert!(!colours[..i].contains(colour), "{colours:?}");
        }
        let latency = panels(&results)
            .into_iter()
            .find(|p| p.title == "latency")
            .unwrap();
        let bars: Vec<&str> = latency.bars.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(bars, ["tcpchat", "tcpchat-nohistory", "tcpchat-fsync"]);
    }

    /// Fan-outs with WebSocket viewers beside the plain ones, with senders over
    /// WebSocket too, and tcpchat scraped.
    const WEB_RUNS: &str = r#"
{"workload":"4x100","target":"tcpchat","transport":"tcp","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.02,"client_cpu_us_per_delivery":0.04,"deliveries_per_sec":20000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"4x100","target":"nats","transport":"tcp","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.1,"client_cpu_us_per_delivery":0.05,"deliveries_per_sec":7000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"4x100","target":"tcpchat","transport":"ws","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.025,"client_cpu_us_per_delivery":0.038,"deliveries_per_sec":18000000.0,"latency_us":{"p50":1.0,"p99":3.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"4x100","target":"nats","transport":"ws","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.12,"client_cpu_us_per_delivery":0.06,"deliveries_per_sec":5000000.0,"latency_us":{"p50":1.0,"p99":4.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"4x100","target":"tcpchat","transport":"ws","senders_transport":"ws","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.07,"client_cpu_us_per_delivery":0.07,"deliveries_per_sec":9000000.0,"latency_us":{"p50":1.0,"p99":5.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"4x100","target":"nats","transport":"ws","senders_transport":"ws","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.12,"client_cpu_us_per_delivery":0.06,"deliveries_per_sec":4000000.0,"latency_us":{"p50":1.0,"p99":6.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"scrape","target":"tcpchat","transport":"tcp","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.02,"deliveries_per_sec":20000000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0},"scrape":null}
{"workload":"scrape","target":"tcpchat","transport":"tcp","senders_transport":"tcp","complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":null,"server_cpu_us_per_delivery":0.0202,"deliveries_per_sec":19800000.0,"latency_us":{"p50":1.0,"p99":2.0,"p999":3.0,"max":4.0},"scrape":{"interval_s":1.0,"ok":5,"failed":0,"slowest_ms":2.5,"bytes":4000,"first_error":null}}
"#;

    #[test]
    fn websocket_rows_compare_with_nats_over_websocket_and_their_plain_rows() {
        let results = Results::parse(WEB_RUNS).unwrap();
        assert_eq!(
            results.servers,
            [
                "tcpchat",
                "tcpchat+scrape",
                "nats",
                "tcpchat+ws",
                "nats+ws",
                "tcpchat+ws-all",
                "nats+ws-all"
            ]
        );
        let table = tables(&results);
        for row in [
            // The plain table has no WebSocket rows.
            "| 4x100 | tcpchat | 1 | yes | 20,000,000 | - | 20 | 2 |",
            "| 4x100 | tcpchat+ws | 1 | yes | 18,000,000 | 3.60x | 25 | 1.25x | 38 | 3 |",
            "| 4x100 | nats+ws | 1 | yes | 5,000,000 | 1.00x | 120 | 1.20x | 60 | 4 |",
            "| 4x100 | tcpchat+ws-all | 1 | yes | 9,000,000 | 2.25x | 70 | 3.50x | 70 | 5 |",
            "| 4x100: tcpchat at least 2x NATS in deliveries/s, viewers over WebSocket | 3.60x (18,000,000 against 5,000,000) | yes |",
            "| 4x100: tcpchat's server CPU per delivery over WebSocket at most 1.5x line mode's | 1.25x (25 ns against 20) | yes |",
            "| scrape: deliveries/s | 0.99x (19,800,000 against 20,000,000) | 5 | 2.5 | yes |",
            "| scrape: server CPU per delivery | 1.01x (20 ns against 20) | 5 | 2.5 | yes |",
        ] {
            assert!(table.contains(row), "{row}\n{table}");
        }
        assert_eq!(
            table.matches("| 4x100 | tcpchat+ws |").count(),
            1,
            "{table}"
        );
        // A failed scrape makes its run unclean.
        let failed = WEB_RUNS.replace("\"failed\":0", "\"failed\":1");
        let table = tables(&Results::parse(&failed).unwrap());
        assert!(
            table.contains(
                "| scrape: deliveries/s | 0.99x (19,800,000 against 20,000,000) | 5 | 2.5 | NO |"
            ),
            "{table}"
        );
        let panels = panels(&results);
        let titles: Vec<(&str, usize)> = panels
            .iter()
            .map(|p| (p.title.as_str(), p.bars.len()))
            .collect();
        assert!(
            titles.contains(&("4x100, WebSocket viewers", 4)),
            "{titles:?}"
        );
    }

    #[test]
    fn the_chart_has_a_bar_per_server_and_figure() {
        let results = Results::parse(RUNS).unwrap();
        let chart = svg(&panels(&results));
        // Deliveries (2 servers), server CPU (tcpchat only), memory and broadcast (redis).
        assert_eq!(chart.matches("<rect x=").count(), 5);
        assert!(chart.contains(">8.0M<") && chart.contains(">2.0M<"));
        assert!(chart.contains("server CPU ns/delivery"));
    }
}
