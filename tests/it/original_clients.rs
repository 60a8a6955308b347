//! The original tutorial's clients, unchanged, against tcpchat.
//!
//! `tests/compat/*.cs` are C# stand-ins written from the behaviour shared/SEED.md
//! describes (one write per message, no terminators, a 10 ms "still connected?" check),
//! compiled with Mono's `mcs` and run with `mono`. CI installs Mono and sets
//! `TCPCHAT_REQUIRE_MONO=1`, which turns a missing Mono into a failure; elsewhere these
//! tests say they were skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use crate::common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The compiled clients, or `None` when Mono is not installed (and not required).
fn compiled() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let have_mono = ["mcs", "mono"].iter().all(|tool| {
            std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        if !have_mono {
            assert!(
                std::env::var_os("TCPCHAT_REQUIRE_MONO").is_none(),
                "TCPCHAT_REQUIRE_MONO is set but mcs/mono are not installed"
            );
            eprintln!("skipped: Mono (mcs, mono) is not installed");
            return None;
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("original-clients");
        std::fs::create_dir_all(&dir).expect("create dir");
        for client in ["Viewer", "Messenger"] {
            let source = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/compat")
                .join(format!("{client}.cs"));
            let status = std::process::Command::new("mcs")
                .arg(format!(
                    "-out:{}",
                    dir.join(format!("{client}.exe")).display()
                ))
                .arg(source)
                .stdout(Stdio::null())
                .status()
                .expect("run mcs");
            assert!(status.success(), "mcs failed on {client}.cs");
        }
        Some(dir)
    })
    .as_deref()
}

fn original(dir: &Path, client: &str, port: u16) -> Command {
    let mut command = Command::new("mono");
    command
        .arg(dir.join(format!("{client}.exe")))
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

struct Output(Lines<BufReader<ChildStdout>>);

impl Output {
    fn of(child: &mut Child) -> Self {
        Self(BufReader::new(child.stdout.take().expect("stdout")).lines())
    }

    async fn line(&mut self) -> String {
        within("a line from the original client", self.0.next_line())
            .await
            .expect("read stdout")
            .expect("the client ended early")
    }

    /// Reads lines until their concatenation is `expected`: the original prints each
    /// read as a line, so where the lines break depends on timing, not on the protocol.
    async fn stream(&mut self, expected: &str) {
        let mut seen = String::new();
        while seen.len() < expected.len() {
            seen.push_str(&self.line().await);
        }
        assert_eq!(seen, expected);
    }
}

async fn exit_code(child: &mut Child) -> Option<i32> {
    within("the original client to exit", child.wait())
        .await
        .expect("wait")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_viewer_and_messenger_work_unchanged() {
    let Some(dir) = compiled() else { return };
    let server = start_server(Config::default()).await;
    let port = server.addr.port();
    let mut viewer = original(dir, "Viewer", port).spawn().expect("start Viewer");
    let mut shown = Output::of(&mut viewer);
    assert_eq!(shown.line().await, WELCOME);

    // Fed from a pipe, the Messenger writes its lines and quits within milliseconds.
    let mut piped = original(dir, "Messenger", port)
        .spawn()
        .expect("start Messenger");
    let mut stdin = piped.stdin.take().unwrap();
    stdin
        .write_all(b"alice\nhello world\n\nsecond line\nQUIT\n")
        .await
        .unwrap();
    drop(stdin);
    assert_eq!(exit_code(&mut piped).await, Some(0));
    shown
        .stream(
            "alice has joined the chat.alice: hello worldalice: second linealice has left the chat",
        )
        .await;

    // Typed by a person: lines come long after the handshake.
    let mut typed = original(dir, "Messenger", port)
        .spawn()
        .expect("start Messenger");
    let mut keyboard = typed.stdin.take().unwrap();
    keyboard.write_all(b"bob\n").await.unwrap();
    shown.stream("bob has joined the chat.").await;
    keyboard.write_all(b"anyone here?\n").await.unwrap();
    shown.stream("bob: anyone here?").await;
    keyboard.write_all(b"exit\n").await.unwrap();
    assert_eq!(exit_code(&mut typed).await, Some(0));
    shown.stream("bob has left the chat").await;

    server.shutdown().await.unwrap();
    assert_eq!(shown.line().await, "The server has gone away.");
    assert_eq!(exit_code(&mut viewer).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_messenger_hears_that_its_name_is_taken() {
    let Some(dir) = compiled() else { return };
    let server = start_server(Config::default()).await;
    let _carol = Client::messenger(server.addr, "carol").await;
    let mut second = original(dir, "Messenger", server.addr.port())
        .spawn()
        .expect("start Messenger");
    let mut stdin = second.stdin.take().unwrap();
    stdin.write_all(b"carol\nhello\n").await.unwrap();
    let mut shown = Output::of(&mut second);
    assert_eq!(
        shown.line().await,
        "Enter a name to use: The server rejected us; \"carol\" is probably in use."
    );
    assert_eq!(exit_code(&mut second).await, Some(1));
    drop(stdin);
}
