//! `tcpchat-bench report --cluster`: the tables of `bench/run.sh --cluster`.
//!
//! Each workload's runs on one tcpchat, NATS core pub/sub, JetStream (`nats` with
//! `--durable`) and tcpchat clusters (`tcpchat-clusterN`, `+senders-all` with the
//! senders on every node): medians of deliveries per second against NATS's and
//! tcpchat's, the messages per second (for a cluster, the events per second into
//! its stream; for JetStream, its publish rate), the CPU of each process against
//! the run's time (what bounds the figure), the latency and, across nodes, its
//! p99; then the issue's targets, held or not.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::{Runs, number, ratio, server_of, yes_no};

/// The name of a run's server in these tables.
fn name_of(run: &Value) -> String {
    if let Some(nodes) = run["cluster_nodes"].as_u64() {
        let all = if run["senders_on"].as_str() == Some("all") {
            "+senders-all"
        } else {
            ""
        };
        format!("tcpchat-cluster{nodes}{all}")
    } else if run["durable"].as_bool() == Some(true) && run["target"].as_str() == Some("nats") {
        "jetstream".to_owned()
    } else {
        server_of(run)
    }
}

fn is_cluster(server: &str) -> bool {
    server.starts_with("tcpchat-cluster")
}

/// Whether a process of the server is NATS (a cluster's, or the peer itself).
fn is_nats(process: &Value) -> bool {
    process["name"]
        .as_str()
        .is_some_and(|name| name.starts_with("nats"))
}

/// A run's CPU share (of one core) of its NATS processes and of its tcpchat ones.
fn cpu_split(run: &Value) -> (f64, f64) {
    let mut nats = 0.0;
    let mut nodes = 0.0;
    for process in run["process_cpu"].as_array().into_iter().flatten() {
        let percent = process["percent"].as_f64().unwrap_or(0.0);
        if is_nats(process) {
            nats += percent;
        } else {
            nodes += percent;
        }
    }
    (nats, nodes)
}

impl Runs {
    /// The median of a figure each run computes with `f`.
    fn median_of(&self, f: impl Fn(&Value) -> Option<f64>) -> Option<f64> {
        let mut values: Vec<f64> = self.0.iter().filter_map(f).collect();
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

/// What set the pace of a run, from the CPU shares: the load generator's core, the
/// server's (NATS and nodes together: they share it), or neither (waiting).
fn bound(nats: Option<f64>, nodes: Option<f64>, generator: Option<f64>) -> String {
    const BUSY: f64 = 85.0;
    let (nats, nodes) = (nats.unwrap_or(0.0), nodes.unwrap_or(0.0));
    let server = nats + nodes;
    match generator {
        Some(generator) if generator >= BUSY && generator >= server => {
            "load generator (CPU 1)".to_owned()
        }
        _ if server >= BUSY && nats >= nodes => {
            format!("CPU 0, mostly NATS ({nats:.0} % vs nodes {nodes:.0} %)")
        }
        _ if server >= BUSY => {
            format!("CPU 0, mostly the nodes ({nodes:.0} % vs NATS {nats:.0} %)")
        }
        _ => format!("no CPU saturated (CPU 0 {server:.0} %): round trips"),
    }
}

/// The cluster run's tables.
pub fn tables(text: &str) -> anyhow::Result<String> {
    let mut order: Vec<String> = Vec::new();
    let mut servers: Vec<String> = Vec::new();
    let mut runs: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let run: Value = serde_json::from_str(line)?;
        let workload = run["workload"].as_str().unwrap_or("?").to_owned();
        let server = name_of(&run);
        if !order.contains(&workload) {
            order.push(workload.clone());
        }
        if !servers.contains(&server) {
            servers.push(server.clone());
        }
        runs.entry((workload, server)).or_default().0.push(run);
    }
    let of = |workload: &str, server: &str| runs.get(&(workload.to_owned(), server.to_owned()));
    let paced = |workload: &str| {
        servers.iter().any(|s| {
            of(workload, s).is_some_and(|r| r.0.iter().any(|r| !r["rate_per_sender"].is_null()))
        })
    };
    let mut out = String::new();
    let mut targets = String::new();
    let mut target = |what: String, figure: String, held: Option<bool>| {
        let verdict = match held {
            Some(true) => "held",
            Some(false) => "NOT held",
            None => "not measured",
        };
        let _ = writeln!(targets, "| {what} | {figure} | {verdict} |");
    };

    // Throughput: every server's deliveries/s, against NATS core's and tcpchat's.
    for workload in order.iter().filter(|w| !paced(w)) {
        let nats = of(workload, "nats").and_then(|r| r.median("/deliveries_per_sec"));
        let single = of(workload, "tcpchat").and_then(|r| r.median("/deliveries_per_sec"));
        let _ = writeln!(
            out,
            "{workload}\n\n\
             | Server | Runs | Nothing lost | Deliveries/s (median) | vs NATS | vs tcpchat | \
             Messages/s into the room | CPU of a core: NATS | nodes | generator | Bound by |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for server in &servers {
            let Some(r) = of(workload, server) else {
                continue;
            };
            let rate = r.median("/deliveries_per_sec");
            let nats_cpu = r.median_of(|run| Some(cpu_split(run).0));
            let nodes_cpu = r.median_of(|run| Some(cpu_split(run).1));
            let generator = r.median("/client_cpu_percent");
            let _ = writeln!(
                out,
                "| {server} | {} | {} | {} | {} | {} | {} | {} % | {} % | {} % | {} |",
                r.0.len(),
                yes_no(r.clean()),
                number(rate, 0),
                ratio(rate, nats),
                ratio(rate, single),
                number(r.median("/messages_per_sec"), 0),
                number(nats_cpu, 0),
                number(nodes_cpu, 0),
                number(generator, 0),
                bound(nats_cpu, nodes_cpu, generator),
            );
            if is_cluster(server) {
                target(
                    format!("{server}, {workload}: deliveries/s at least NATS core's"),
                    format!("{} vs {}", number(rate, 0), number(nats, 0)),
                    rate.zip(nats).map(|(rate, nats)| rate >= nats),
                );
            }
        }
        out.push('\n');
    }

    // Latency: p99 everywhere, and across nodes, against one tcpchat's p99.
    for workload in order.iter().filter(|w| paced(w)) {
        let single = of(workload, "tcpchat").and_then(|r| r.median("/latency_us/p99"));
        let _ = writeln!(
            out,
            "{workload}\n\n\
             | Server | Runs | Nothing lost | p50 (us) | p99 (us) | p99 vs tcpchat | \
             Cross-node p50 (us) | Cross-node p99 (us) | Cross-node p99 vs tcpchat p99 |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for server in &servers {
            let Some(r) = of(workload, server) else {
                continue;
            };
            let p99 = r.median("/latency_us/p99");
            let cross = r.median("/cross_node_latency_us/p99");
            let _ = writeln!(
                out,
                "| {server} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.0.len(),
                yes_no(r.clean()),
                number(r.median("/latency_us/p50"), 0),
                number(p99, 0),
                ratio(p99, single),
                number(r.median("/cross_node_latency_us/p50"), 0),
                number(cross, 0),
                ratio(cross, single),
            );
            if is_cluster(server) {
                target(
                    format!("{server}, {workload}: cross-node p99 at most 2x one tcpchat's"),
                    format!("{} us vs 2 x {} us", number(cross, 0), number(single, 0)),
                    cross
                        .zip(single)
                        .map(|(cross, single)| cross <= 2.0 * single),
                );
            }
        }
        out.push('\n');
    }

    let all_clean = runs.values().all(Runs::clean);
    let count: usize = runs.values().map(|r| r.0.len()).sum();
    target(
        "Nothing lost, duplicated or reordered, in any run".to_owned(),
        format!("{count} runs"),
        Some(all_clean),
    );
    let _ = write!(
        out,
        "Targets\n\n| Target | Measured (medians) | |\n| --- | --- | --- |\n{targets}\n"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workload: &str, extra: &str, rate: f64, p99: f64, cross: Option<f64>) -> String {
        let cross = cross.map_or("null".to_owned(), |c| {
            format!(r#"{{"p50":1.0,"p99":{c},"p999":1.0,"max":1.0}}"#)
        });
        format!(
            r#"{{"workload":"{workload}",{extra},"complete":true,"lost":0,"duplicated_or_reordered":0,"rate_per_sender":{},"deliveries_per_sec":{rate},"messages_per_sec":100.0,"latency_us":{{"p50":1.0,"p99":{p99},"p999":1.0,"max":1.0}},"cross_node_latency_us":{cross},"client_cpu_percent":30.0,"process_cpu":[{{"name":"nats-server","percent":60.0}},{{"name":"node1","percent":35.0}}]}}"#,
            if workload.contains("latency") {
                "100.0"
            } else {
                "null"
            }
        )
    }

    #[test]
    fn clusters_against_nats_and_tcpchat_with_targets() {
        let tcpchat = r#""target":"tcpchat","durable":false"#;
        let nats = r#""target":"nats","durable":false"#;
        let js = r#""target":"nats","durable":true"#;
        let c2 = r#""target":"tcpchat","cluster_nodes":2,"senders_on":"all""#;
        let text = [
            run("f", tcpchat, 20e6, 1.0, None),
            run("f", nats, 6e6, 1.0, None),
            run("f", js, 0.7e6, 1.0, None),
            run("f", c2, 4e6, 1.0, Some(1.0)),
            run("latency", tcpchat, 1.0, 1000.0, None),
            run("latency", c2, 1.0, 1500.0, Some(2500.0)),
        ]
        .join("\n");
        let out = tables(&text).unwrap();
        assert!(out.contains("| tcpchat-cluster2+senders-all | 1 | yes | 4,000,000 | 0.67x | 0.20x | 100 | 60 % | 35 % | 30 % | CPU 0, mostly NATS"), "{out}");
        assert!(out.contains("| jetstream | 1 |"), "{out}");
        assert!(
            out.contains("deliveries/s at least NATS core's | 4,000,000 vs 6,000,000 | NOT held |"),
            "{out}"
        );
        assert!(out.contains("| 2,500 | 2.50x |"), "{out}");
        assert!(
            out.contains(
                "cross-node p99 at most 2x one tcpchat's | 2,500 us vs 2 x 1,000 us | NOT held |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| Nothing lost, duplicated or reordered, in any run | 6 runs | held |"),
            "{out}"
        );
    }
}
