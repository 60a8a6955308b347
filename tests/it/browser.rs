//! The web page in a real browser (headless Chromium through chromedriver), used as a
//! person would: it reads the room, joins, talks with raw line-mode clients, shows
//! hostile text as text, and rides out two server restarts under traffic without
//! losing or doubling a line, including lines typed while the server was gone.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium chromium-driver`). CI sets
//! `TCPCHAT_REQUIRE_BROWSER=1`, which turns their absence into a failure; elsewhere the
//! test says it was skipped. `TCPCHAT_UPDATE_SCREENSHOT=1` also writes the screenshot
//! to docs/chat-page.png.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use harness::{ServerProcess, Signal, Spec};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Longest the page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// Longest the page may take to come back after a restart: the server's start plus
/// the page's backoff, which reaches 5 s.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// Longest a raw client waits for a line.
const LINE_WAIT: Duration = Duration::from_secs(10);
/// The browser window: wide enough for the member list beside the room.
const DESKTOP: (u32, u32) = (960, 760);
/// The reader's time zone: 5:45 ahead of UTC, so a time shown in UTC, or off by
/// whole hours, cannot pass for local.
const READER_TZ: &str = "Asia/Kathmandu";
const READER_OFFSET_MINUTES: u32 = 5 * 60 + 45;
/// A phone's screen.
const PHONE: (u32, u32) = (390, 780);

/// A name the rules allow (no whitespace, no ':') that is also an HTML tag.
const HOSTILE_NAME: &str = "<img/src=x/onerror=alert(1)>";
const HOSTILE_TEXT: &str =
    "<img src=x onerror=alert(1)> <b>not bold</b> &amp; <script>alert(2)</script>";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromium and chromedriver, or `None` (the test is skipped) when either is missing
/// and not required.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        (chromium, driver) => {
            let missing = [
                ("chromium", chromium.is_none()),
                ("chromedriver", driver.is_none()),
            ]
            .iter()
            .filter(|(_, gone)| *gone)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(" and ");
            assert!(
                std::env::var_os("TCPCHAT_REQUIRE_BROWSER").is_none(),
                "TCPCHAT_REQUIRE_BROWSER is set but {missing} not found on PATH (Debian: apt-get install chromium chromium-driver)"
            );
            eprintln!("skipped: {missing} not found on PATH");
            None
        }
    }
}

/// A chromedriver we started, with a Chromium session. chromedriver leads a process
/// group of its own, which the browsers it starts join; dropping this kills that group
/// (by its id, which is chromedriver's PID), so no browser outlives a failed test.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Self {
        let port = harness::free_port().expect("a free port for chromedriver");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .env("TZ", READER_TZ)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Self {
            driver,
            client: None,
            _profile: profile,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + PAGE_WAIT;
        while StdTcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {address} within {PAGE_WAIT:?}"
            );
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--lang=en-US",
                    "--hide-scrollbars",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            }),
        );
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://{address}")),
        )
        .await
        .expect("a browser session within 30 s")
        .expect("a browser session");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// Ends the session cleanly (the browser quits), then the driver.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A port outside the kernel's ephemeral range, free now: the server gets it again on
/// each restart, and no connection of a parallel test can be handed it meanwhile.
fn steady_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(20_000).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos()) as u64
        ^ u64::from(std::process::id()) << 20;
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % u64::from(span)) as u16;
        if StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

fn start_server(data: &Path, chat_port: u16, http_port: u16) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .listen_on("127.0.0.1", chat_port)
        .arg("--data-dir")
        .arg(data)
        .arg("--http-port")
        .arg(http_port.to_string())
        .start()
        .expect("the server starts on its ports and data directory")
}

/// A raw line-mode client, as `nc` would be.
struct Raw {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: SocketAddr, handshake: &str) -> Self {
        let stream = tokio::time::timeout(LINE_WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (reader, writer) = stream.into_split();
        let mut raw = Self {
            lines: BufReader::new(reader).lines(),
            writer,
        };
        raw.send(handshake).await;
        raw
    }

    /// A plain viewer, welcomed.
    async fn viewer(addr: SocketAddr) -> Self {
        let mut raw = Self::connect(addr, "viewer").await;
        assert!(raw.line().await.starts_with("Welcome to the"));
        raw
    }

    /// A plain messenger, acknowledged.
    async fn messenger(addr: SocketAddr, name: &str) -> Self {
        let mut raw = Self::connect(addr, &format!("name:{name}")).await;
        assert_eq!(raw.line().await, format!("*** ok: joined as {name}"));
        raw
    }

    async fn send(&mut self, line: &str) {
        tokio::time::timeout(
            LINE_WAIT,
            self.writer.write_all(format!("{line}\n").as_bytes()),
        )
        .await
        .expect("write in time")
        .expect("write");
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(LINE_WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line within {LINE_WAIT:?}"))
            .expect("read")
            .expect("a line before the end of the stream")
    }
}

fn seq_of(line: &str) -> u64 {
    line.strip_prefix("@seq=")
        .and_then(|rest| rest.split([';', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tagged line: {line:?}"))
}

/// The room's whole log, as a tagged viewer replays it: (seq, text).
async fn server_log(addr: SocketAddr) -> Vec<(u64, String)> {
    let mut raw = Raw::connect(addr, "viewer tags since=0").await;
    let last = seq_of(&raw.line().await);
    let mut log = Vec::new();
    while log.last().map_or(0, |(seq, _)| *seq) < last {
        let line = raw.line().await;
        if line.starts_with("*** ") {
            continue;
        }
        let text = line.split_once(' ').expect("a tagged event").1.to_owned();
        log.push((seq_of(&line), text));
    }
    log
}

/// The `time` tag of event `seq`, as the server sends it.
async fn server_time(addr: SocketAddr, seq: u64) -> String {
    let mut raw = Raw::connect(addr, &format!("viewer tags since={}", seq - 1)).await;
    let _welcome = raw.line().await;
    let line = raw.line().await;
    assert_eq!(seq_of(&line), seq);
    line.split([';', ' '])
        .find_map(|tag| tag.strip_prefix("time="))
        .unwrap_or_else(|| panic!("no time in {line:?}"))
        .to_owned()
}

/// `HH:MM` in the reader's zone of a UTC `time` tag (2026-11-29T05:41:07.123Z).
fn reader_clock(utc: &str) -> (u32, u32) {
    let number = |range: std::ops::Range<usize>| -> u32 {
        utc.get(range)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a UTC time: {utc:?}"))
    };
    let minutes = (number(11..13) * 60 + number(14..16) + READER_OFFSET_MINUTES) % (24 * 60);
    (minutes / 60, minutes % 60)
}

/// The hour and minute a shown time says, whether on a 12- or a 24-hour clock.
fn shown_clock(shown: &str) -> (u32, u32) {
    let colon = shown
        .find(':')
        .unwrap_or_else(|| panic!("no clock in {shown:?}"));
    let digits = |s: &str| -> u32 {
        s.parse()
            .unwrap_or_else(|_| panic!("no clock in {shown:?}"))
    };
    let before: String = shown[..colon]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let after: String = shown[colon + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let (mut hour, minute) = (digits(&before), digits(&after));
    let upper = shown.to_uppercase();
    if upper.contains("PM") && hour < 12 {
        hour += 12;
    } else if upper.contains("AM") && hour == 12 {
        hour = 0;
    }
    (hour, minute)
}

/// Presses and releases `key` wherever the focus is, as a keyboard does.
async fn press(client: &Client, key: Key) {
    let key = char::from(key);
    client
        .perform_actions(
            KeyActions::new("keyboard".to_owned())
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key }),
        )
        .await
        .expect("a key press");
}

/// Who is in the room, as the server says.
async fn server_members(addr: SocketAddr) -> BTreeSet<String> {
    let mut raw = Raw::connect(addr, "viewer tags members").await;
    let _welcome = raw.line().await;
    let mut names = BTreeSet::new();
    loop {
        let line = raw.line().await;
        let (count, list) = line
            .strip_prefix("*** members ")
            .and_then(|rest| rest.split_once(':'))
            .unwrap_or_else(|| panic!("not a members line: {line:?}"));
        names.extend(list.split_whitespace().map(str::to_owned));
        if names.len() >= count.parse::<usize>().expect("a count") {
            return names;
        }
    }
}

/// One event as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    seq: u64,
    kind: String,
    who: Option<String>,
    body: String,
}

impl Shown {
    /// The server's text for what the page shows.
    fn text(&self) -> String {
        let who = self.who.clone().unwrap_or_default();
        match self.kind.as_str() {
            "message" => format!("{who}: {}", self.body),
            "join" => format!("{who} has joined the chat."),
            "leave" => format!("{who} has left the chat"),
            _ => self.body.clone(),
        }
    }
}

/// What the page shows, read in one go.
#[derive(Debug, Clone)]
struct Page {
    events: Vec<Shown>,
    pending: Vec<String>,
    members: BTreeSet<String>,
    state: String,
    /// What the state line says, for failure messages.
    #[allow(dead_code)]
    state_text: String,
    images: u64,
    focus: String,
    joined: bool,
    members_open: bool,
    overflows: bool,
}

impl Page {
    fn messages(&self, who: &str, body: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.kind == "message" && e.who.as_deref() == Some(who) && e.body == body)
            .count()
    }

    fn has(&self, who: &str, body: &str) -> bool {
        self.messages(who, body) > 0
    }

    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }
}

const READ_PAGE: &str = r#"
const text = (root, sel) => { const n = root.querySelector(sel); return n ? n.textContent : null; };
return {
  events: [...document.querySelectorAll('#log li[data-seq]')].map((li) =>
    [Number(li.dataset.seq), li.dataset.kind || '', text(li, '.who'), text(li, '.body') || '']),
  pending: [...document.querySelectorAll('#pending li')].map((li) => text(li, '.body') || ''),
  members: [...document.querySelectorAll('#members li')].map((li) => text(li, '.who') || ''),
  state: document.getElementById('state').dataset.state || '',
  stateText: document.getElementById('state').textContent,
  images: document.querySelectorAll('img').length,
  focus: document.activeElement ? document.activeElement.id : '',
  joined: !document.getElementById('send-form').hidden,
  membersOpen: document.getElementById('members-panel').open,
  overflows: document.documentElement.scrollWidth > window.innerWidth,
};
"#;

async fn read_page(client: &Client) -> Page {
    let value = client
        .execute(READ_PAGE, vec![])
        .await
        .expect("read the page");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    let events = value["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| Shown {
            seq: e[0].as_u64().expect("a seq"),
            kind: e[1].as_str().expect("a kind").to_owned(),
            who: e[2].as_str().map(str::to_owned),
            body: e[3].as_str().expect("a body").to_owned(),
        })
        .collect();
    Page {
        events,
        pending: strings(&value["pending"]),
        members: strings(&value["members"]).into_iter().collect(),
        state: value["state"].as_str().unwrap_or_default().to_owned(),
        state_text: value["stateText"].as_str().unwrap_or_default().to_owned(),
        images: value["images"].as_u64().expect("an image count"),
        focus: value["focus"].as_str().unwrap_or_default().to_owned(),
        joined: value["joined"].as_bool().expect("joined"),
        members_open: value["membersOpen"].as_bool().expect("membersOpen"),
        overflows: value["overflows"].as_bool().expect("overflows"),
    }
}

/// Polls the page until `ready` holds, for at most `limit`; fails with what it showed.
async fn wait_page(
    client: &Client,
    what: &str,
    limit: Duration,
    ready: impl Fn(&Page) -> bool,
) -> Page {
    let deadline = Instant::now() + limit;
    loop {
        let page = read_page(client).await;
        if ready(&page) {
            return page;
        }
        if Instant::now() >= deadline {
            panic!("the page did not show {what} within {limit:?}; it shows {page:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Types `text` into the field `id` and presses Enter, as a person would.
async fn type_line(client: &Client, id: &str, text: &str) {
    let field = client.find(Locator::Id(id)).await.expect("the field");
    field
        .send_keys(&format!("{text}{}", char::from(Key::Enter)))
        .await
        .expect("typing");
}

/// The page's events must be the log's, one for one, in order, from its first.
fn assert_matches_log(page: &Page, log: &[(u64, String)]) {
    let first = page.events.first().expect("the page shows events").seq;
    let expected: Vec<(u64, String)> = log.iter().filter(|(s, _)| *s >= first).cloned().collect();
    let shown: Vec<(u64, String)> = page.events.iter().map(|e| (e.seq, e.text())).collect();
    if shown != expected {
        let missing: Vec<_> = expected.iter().filter(|e| !shown.contains(e)).collect();
        let extra: Vec<_> = shown.iter().filter(|e| !expected.contains(e)).collect();
        panic!(
            "the page differs from the log: missing {missing:?}, not in the log or out of place {extra:?}\npage: {shown:#?}"
        );
    }
}

/// A plain messenger called `name`, or `None` while the server is away.
async fn try_messenger(addr: SocketAddr, name: &str) -> Option<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(format!("name:{name}\n").as_bytes())
        .await
        .ok()?;
    let mut ok = [0u8; 64];
    // The acknowledgement: the name is ours (a refusal closes).
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut ok))
        .await
        .ok()?
        .ok()?;
    ok[..n].starts_with(b"*** ok").then_some(stream)
}

/// Posts numbered lines as `name` until `stop`, reconnecting whenever the server is
/// away, as a busy room would; bounded by count and time.
async fn traffic(addr: SocketAddr, name: &'static str, stop: Arc<AtomicBool>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && sent < 2_000 {
        let Some(stream) = conn.as_mut() else {
            conn = try_messenger(addr, name).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        if stream
            .write_all(format!("traffic {sent}\n").as_bytes())
            .await
            .is_err()
        {
            conn = None;
            continue;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    sent
}

/// Where the screenshot goes: the target directory, and the docs when asked.
fn save_screenshot(png: &[u8]) {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("browser-screenshot.png");
    std::fs::write(&target, png).expect("write the screenshot");
    eprintln!("screenshot: {}", target.display());
    if std::env::var_os("TCPCHAT_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/chat-page.png");
        std::fs::write(&docs, png).expect("write docs/chat-page.png");
        eprintln!("screenshot: {}", docs.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reads_joins_talks_escapes_and_survives_restarts() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let data = tempfile::tempdir().expect("a data directory");
    let chat_port = steady_port();
    let http_port = steady_port();
    let mut server = start_server(data.path(), chat_port, http_port);
    let chat = server.addr();
    let url = format!("http://127.0.0.1:{http_port}/");

    // Some history before anyone opens the page.
    let mut carol = Raw::messenger(chat, "carol").await;
    carol.send("good morning, everyone").await;
    carol.send("the build is green again").await;

    let browser = Browser::start(&chromium, &chromedriver).await;
    let client = browser.client();
    client.goto(&url).await.expect("open the page");

    // Reading: the history, times, who is here, and that the page is live.
    let page = wait_page(client, "the history, live", PAGE_WAIT, |p| {
        p.events.len() == 3 && p.state == "live" && p.members.contains("carol")
    })
    .await;
    assert_matches_log(&page, &server_log(chat).await);
    assert!(!page.joined, "a reader has not joined yet");
    assert_eq!(page.members, BTreeSet::from(["carol".to_owned()]));
    // Times are the reader's own: the server's UTC, moved to the browser's zone.
    let shown_time = client
        .execute(
            "return document.querySelector('#log li[data-seq=\"2\"] time').textContent",
            vec![],
        )
        .await
        .expect("a time")
        .as_str()
        .expect("a time's text")
        .to_owned();
    let utc = server_time(chat, 2).await;
    assert_eq!(
        shown_clock(&shown_time),
        reader_clock(&utc),
        "event 2 at {utc} is shown as {shown_time:?} in {READER_TZ}"
    );
    eprintln!("event 2 at {utc} is shown as {shown_time:?} in {READER_TZ}");
    // Joins stand apart from messages.
    let looks = client
        .execute(
            "const style = (sel) => { const s = getComputedStyle(document.querySelector(sel)); \
             return [s.color, s.fontSize, s.fontStyle].join(' '); }; \
             return [style('#log li[data-kind=join] .body'), style('#log li[data-kind=message] .body')]",
            vec![],
        )
        .await
        .expect("styles");
    assert_ne!(looks[0], looks[1], "a join looks like a message");

    // Joining, by keyboard alone: Tab from the top of the page reaches the name field,
    // every stop on the way showing where the focus is; the name, Enter; typing then
    // goes on in the message box.
    let mut watcher = Raw::viewer(chat).await;
    let mut stops = Vec::new();
    for _ in 0..8 {
        press(client, Key::Tab).await;
        let stop = client
            .execute(
                "const e = document.activeElement; const s = getComputedStyle(e); \
                 return [e.id || e.tagName, s.outlineStyle, s.outlineWidth]",
                vec![],
            )
            .await
            .expect("the focus");
        stops.push(stop.clone());
        assert!(
            stop[1] != "none" && stop[2] != "0px",
            "no visible focus on {stop:?}"
        );
        if stop[0] == "name" {
            break;
        }
    }
    assert_eq!(
        stops.last().map(|s| s[0].clone()),
        Some(json!("name")),
        "Tab never reached the name field: {stops:?}"
    );
    eprintln!("focus path: {stops:?}");
    client
        .active_element()
        .await
        .expect("the focused field")
        .send_keys(&format!("alice{}", char::from(Key::Enter)))
        .await
        .expect("typing");
    let page = wait_page(client, "alice joined", PAGE_WAIT, |p| {
        p.joined && p.state == "live" && p.members.contains("alice")
    })
    .await;
    assert_eq!(
        page.focus, "message",
        "after joining, typing goes to the message box"
    );
    assert_eq!(watcher.line().await, "alice has joined the chat.");

    // Talking: what the page sends reaches a raw viewer; what a raw messenger sends
    // reaches the page.
    type_line(client, "message", "Hello from the browser!").await;
    assert_eq!(watcher.line().await, "alice: Hello from the browser!");
    let mut bob = Raw::messenger(chat, "bob").await;
    bob.send("hi alice, welcome back").await;
    carol.send("lunch at noon?").await;
    type_line(client, "message", "Sounds good, see you there").await;
    let page = wait_page(client, "bob's and carol's lines", PAGE_WAIT, |p| {
        p.has("bob", "hi alice, welcome back")
            && p.has("carol", "lunch at noon?")
            && p.has("alice", "Sounds good, see you there")
            && p.pending.is_empty()
            && p.members.len() == 3
    })
    .await;
    assert_eq!(
        page.members,
        ["alice", "bob", "carol"].map(str::to_owned).into(),
    );
    assert_matches_log(&page, &server_log(chat).await);
    save_screenshot(&client.screenshot().await.expect("a screenshot"));

    // A phone: the member list folds away and nothing is wider than the screen.
    client
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .expect("resize");
    wait_page(client, "the phone layout", PAGE_WAIT, |p| {
        !p.members_open && !p.overflows
    })
    .await;
    client
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .expect("resize");

    // Hostile text is shown as text: no element is made of it, no script runs.
    let mut hostile = Raw::messenger(chat, HOSTILE_NAME).await;
    hostile.send(HOSTILE_TEXT).await;
    let page = wait_page(client, "the hostile line, as text", PAGE_WAIT, |p| {
        p.has(HOSTILE_NAME, HOSTILE_TEXT) && p.members.contains(HOSTILE_NAME)
    })
    .await;
    assert_eq!(page.images, 0, "a name or a message made an element");
    let made = client
        .execute(
            "return document.querySelectorAll('#log b, #log script, #members img').length",
            vec![],
        )
        .await
        .expect("count elements");
    assert_eq!(made, json!(0), "a message made an element");
    drop(hostile);

    // Restart 1: the server freezes (SIGSTOP) after the page sent a line it never
    // reads, then dies (SIGKILL); another line is typed while it is gone. The page
    // must send both again once it is back: each lands once.
    let stop = Arc::new(AtomicBool::new(false));
    let talker = tokio::spawn(traffic(chat, "dave", stop.clone()));
    wait_page(client, "dave's traffic", PAGE_WAIT, |p| {
        p.events.iter().any(|e| e.who.as_deref() == Some("dave"))
    })
    .await;
    server.signal(Signal::SIGSTOP).expect("SIGSTOP");
    type_line(client, "message", "sent as the server froze").await;
    wait_page(client, "the frozen line, pending", PAGE_WAIT, |p| {
        p.pending.contains(&"sent as the server froze".to_owned())
    })
    .await;
    server.signal(Signal::SIGKILL).expect("SIGKILL");
    server
        .wait_exit(Duration::from_secs(10))
        .expect("wait")
        .expect("the server died");
    wait_page(client, "the lost connection", PAGE_WAIT, |p| {
        p.state == "reconnecting"
    })
    .await;
    type_line(client, "message", "typed while the server was down").await;
    wait_page(client, "the offline line, pending", PAGE_WAIT, |p| {
        p.pending
            .contains(&"typed while the server was down".to_owned())
    })
    .await;
    server = start_server(data.path(), chat_port, http_port);
    wait_page(client, "the page back after a kill", RECOVERY_WAIT, |p| {
        p.state == "live"
            && p.pending.is_empty()
            && p.has("alice", "sent as the server froze")
            && p.has("alice", "typed while the server was down")
    })
    .await;

    // Restart 2: an orderly stop (SIGTERM), with a line typed while it is down.
    let seen = read_page(client).await.last_seq();
    wait_page(client, "traffic after the first restart", PAGE_WAIT, |p| {
        p.last_seq() > seen + 2
    })
    .await;
    let status = server.stop(Signal::SIGTERM).expect("an orderly stop");
    assert!(status.success(), "SIGTERM: {status}");
    wait_page(client, "the closed connection", PAGE_WAIT, |p| {
        p.state == "reconnecting"
    })
    .await;
    type_line(client, "message", "typed during the second restart").await;
    server = start_server(data.path(), chat_port, http_port);
    wait_page(client, "the page back after a stop", RECOVERY_WAIT, |p| {
        p.state == "live"
            && p.pending.is_empty()
            && p.has("alice", "typed during the second restart")
    })
    .await;
    let seen = read_page(client).await.last_seq();
    wait_page(client, "traffic after the second restart", PAGE_WAIT, |p| {
        p.last_seq() > seen + 2
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let sent = talker.await.expect("the traffic task");
    assert!(sent > 0);
    wait_page(client, "dave leaving", PAGE_WAIT, |p| {
        p.events
            .last()
            .is_some_and(|e| e.kind == "leave" && e.who.as_deref() == Some("dave"))
    })
    .await;

    // Every line exactly once, in order: the page against the server's log, once the
    // page has caught up with its end.
    let chat = server.addr();
    let log = server_log(chat).await;
    let last = log.last().expect("a log").0;
    let page = wait_page(client, "the end of the log", PAGE_WAIT, |p| {
        p.last_seq() == last
    })
    .await;
    assert_matches_log(&page, &log);
    for line in [
        "Hello from the browser!",
        "sent as the server froze",
        "typed while the server was down",
        "typed during the second restart",
    ] {
        let text = format!("alice: {line}");
        let landed = log.iter().filter(|(_, t)| *t == text).count();
        assert_eq!(landed, 1, "{text:?} is in the log {landed} times");
        assert_eq!(page.messages("alice", line), 1, "{text:?} on the page");
    }
    assert_eq!(
        page.members,
        server_members(chat).await,
        "who is in the room"
    );
    assert_eq!(page.members, BTreeSet::from(["alice".to_owned()]));
    assert_eq!(page.images, 0);

    // A reload of the tab comes back as alice (the name and its secret are kept for
    // the tab), showing the end of the room again.
    client.refresh().await.expect("reload");
    wait_page(client, "the reloaded page, as alice", PAGE_WAIT, |p| {
        p.joined && p.state == "live" && p.members.contains("alice")
    })
    .await;
    let log = server_log(chat).await;
    let last = log.last().expect("a log").0;
    let page = wait_page(client, "the end of the log again", PAGE_WAIT, |p| {
        p.last_seq() == last
    })
    .await;
    assert_matches_log(&page, &log);
    assert!(
        page.events.len() >= 100.min(log.len()),
        "the last 100 events, at least"
    );
    assert_eq!(
        page.members,
        server_members(chat).await,
        "who is in the room"
    );

    browser.close().await;
    drop(server);
}

/// With a server password the page asks for it, says so when it is wrong, and once
/// it is right reads and talks as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_server_s_password() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let hash = tcpchat::server::password::hash("s3cret").expect("a hash");
    let data = tempfile::tempdir().expect("a data directory");
    let http_port = steady_port();
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--http-port",
            &http_port.to_string(),
            "--password-hash",
            &hash,
        ])
        .start()
        .expect("the server starts with a password");
    let chat = server.addr();
    let mut carol = Raw::connect(chat, "name:carol pass=s3cret").await;
    assert_eq!(carol.line().await, "*** ok: joined as carol");
    carol.send("is anyone there?").await;

    let browser = Browser::start(&chromium, &chromedriver).await;
    let client = browser.client();
    client
        .goto(&format!("http://127.0.0.1:{http_port}/"))
        .await
        .expect("open the page");
    let shown = |id: &'static str| async move {
        client
            .find(Locator::Id(id))
            .await
            .expect("the element")
            .is_displayed()
            .await
            .expect("whether it shows")
    };
    let text_of = |id: &'static str| async move {
        client
            .find(Locator::Id(id))
            .await
            .expect("the element")
            .text()
            .await
            .expect("its text")
    };
    let deadline = Instant::now() + PAGE_WAIT;
    while !shown("pass").await {
        assert!(Instant::now() < deadline, "the page asks for the password");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        text_of("pass-error").await,
        "This chat asks for a password."
    );
    assert!(!shown("name").await, "no name field before the password");
    type_line(client, "pass", "guess").await;
    let deadline = Instant::now() + PAGE_WAIT;
    while text_of("pass-error").await != "Wrong password." {
        assert!(
            Instant::now() < deadline,
            "the page says the password is wrong"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    type_line(client, "pass", "s3cret").await;
    let page = wait_page(client, "the room, live", PAGE_WAIT, |p| {
        p.state == "live" && p.events.len() == 2 && p.members.contains("carol")
    })
    .await;
    assert_eq!(page.events[1].text(), "carol: is anyone there?");
    let mut viewer = Raw::connect(chat, "viewer pass=s3cret").await;
    assert!(viewer.line().await.starts_with("Welcome to the"));
    type_line(client, "name", "dave").await;
    type_line(client, "message", "here I am").await;
    // The page's own line reaches a line-mode viewer.
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let line = viewer.line().await;
        if line == "dave: here I am" {
            break;
        }
        assert!(Instant::now() < deadline, "dave's line did not arrive");
    }
    browser.close().await;
}
