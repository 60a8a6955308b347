//! The fan-out's `--scrape`: what a Prometheus server does to tcpchat while the load
//! runs, `GET /metrics` on its HTTP listener at a fixed interval, so that the run's
//! figures show what being scraped costs the hub.
//!
//! Each scrape is one HTTP/1.1 request on a new connection (`Connection: close`, the
//! response read to its end, at most [`MAX_RESPONSE`] bytes within
//! [`SCRAPE_TIMEOUT`]). It counts only if the answer is a `200` whose body has
//! `tcpchat_` samples; any other counts as failed, and a run with a failed scrape
//! is not clean.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The biggest response read (tcpchat's metrics are a few kilobytes).
const MAX_RESPONSE: u64 = 4 << 20;

/// The scrapes of one run so far (one thread, so `Cell`s).
#[derive(Debug, Default)]
pub struct Scrapes {
    ok: Cell<u64>,
    failed: Cell<u64>,
    slowest: Cell<Duration>,
    bytes: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

/// What the results say of a run's scrapes.
#[derive(Debug, serde::Serialize)]
pub struct ScrapeReport {
    /// The interval between scrapes, in seconds.
    pub interval_s: f64,
    /// Scrapes answered with `200` and `tcpchat_` samples.
    pub ok: u64,
    /// Scrapes that failed, timed out or lacked samples.
    pub failed: u64,
    /// The slowest scrape, in milliseconds.
    pub slowest_ms: f64,
    /// The size of the last good response, in bytes.
    pub bytes: u64,
    /// Why the first failed scrape failed.
    pub first_error: Option<String>,
}

impl Scrapes {
    /// The results' account of them, scraping every `interval`.
    pub fn report(&self, interval: Duration) -> ScrapeReport {
        ScrapeReport {
            interval_s: interval.as_secs_f64(),
            ok: self.ok.get(),
            failed: self.failed.get(),
            slowest_ms: self.slowest.get().as_secs_f64() * 1e3,
            bytes: self.bytes.get(),
            first_error: self.first_error.borrow().clone(),
        }
    }
}

impl ScrapeReport {
    /// Whether at least one scrape was made, and every one succeeded.
    pub fn is_clean(&self) -> bool {
        self.ok > 0 && self.failed == 0
    }
}

/// Scrapes `addr` every `interval` (the first at once), recording into `scrapes`,
/// until aborted: the run aborts it when the load is over.
pub async fn scrape_every(addr: SocketAddr, interval: Duration, scrapes: Rc<Scrapes>) {
    let mut ticker = tokio::time::interval(interval);
    // A slow scrape delays the next, as Prometheus does; never a burst to catch up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let start = Instant::now();
        let outcome = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}")));
        let took = start.elapsed();
        if scrapes.slowest.get() < took {
            scrapes.slowest.set(took);
        }
        match outcome {
            Ok(bytes) => {
                scrapes.ok.set(scrapes.ok.get() + 1);
                scrapes.bytes.set(bytes as u64);
            }
            Err(error) => {
                scrapes.failed.set(scrapes.failed.get() + 1);
                scrapes
                    .first_error
                    .borrow_mut()
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
}

/// One scrape: the size of the response if it is a `200` with `tcpchat_` samples.
///
/// # Errors
/// When the request fails, or the response is not such.
async fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr).await.context("cannot connect")?;
    stream
        .write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .context("cannot send the request")?;
    let mut response = Vec::with_capacity(16 * 1024);
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .context("cannot read the response")?;
    check(&response)?;
    Ok(response.len())
}

/// Checks a whole response: status `200`, and a body with at least one sample
/// line of tcpchat's (`tcpchat_...`, not a `# HELP` or `# TYPE` line).
fn check(response: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(response);
    let status = text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("answered {status:?}");
    }
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        bail!("a response without a body");
    };
    if !body.lines().any(|line| line.starts_with("tcpchat_")) {
        bail!("a 200 without tcpchat_ samples");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_with_tcpchat_samples_is_a_good_scrape() {
        let good = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n# HELP tcpchat_viewers Viewers.\n# TYPE tcpchat_viewers gauge\ntcpchat_viewers 3\n";
        check(good).unwrap();
        for bad in [
            &b"HTTP/1.1 404 Not Found\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n# HELP tcpchat_viewers Viewers.\n",
            b"HTTP/1.1 200 OK\r\n\r\nredis_clients 3\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(check(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Against a server that answers once well, then badly: one good, one failed.
    #[tokio::test]
    async fn scrapes_are_counted_good_and_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\ntcpchat_connections 1\n",
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await.unwrap();
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let scrapes = Rc::new(Scrapes::default());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let task = tokio::task::spawn_local(scrape_every(
                    addr,
                    Duration::from_millis(50),
                    scrapes.clone(),
                ));
                let deadline = Instant::now() + Duration::from_secs(10);
                while scrapes.ok.get() + scrapes.failed.get() < 2 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                task.abort();
            })
            .await;
        let report = scrapes.report(Duration::from_millis(50));
        assert_eq!((report.ok, report.failed), (1, 1), "{report:?}");
        assert!(!report.is_clean());
        assert!(
            report.first_error.as_deref().unwrap().contains("503"),
            "{report:?}"
        );
    }
}
