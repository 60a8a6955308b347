//! Running tcpchat as a service: the systemd unit in `contrib/` and the readiness
//! notifications it relies on (`Type=notify`), the shell completions and the manual
//! page.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Signal, Spec};

use crate::cli::{WAIT, run, tcpchat};

/// `systemd-analyze verify` accepts `contrib/tcpchat.service` (with its ExecStart
/// pointed at the binary just built, as the check wants the program to exist).
/// Skipped without systemd-analyze, unless `TCPCHAT_REQUIRE_SYSTEMD` is set.
#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(
            std::env::var_os("TCPCHAT_REQUIRE_SYSTEMD").is_none(),
            "systemd-analyze is not installed (Debian: apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/tcpchat.service");
    let text = std::fs::read_to_string(&unit).expect("contrib/tcpchat.service");
    assert!(
        text.contains("ExecStart=/usr/local/bin/tcpchat serve "),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("a directory");
    let copy = dir.path().join("tcpchat.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/tcpchat", env!("CARGO_BIN_EXE_tcpchat")),
    )
    .expect("write the copy");
    let output = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("tcpchat.service"),
        "no warning about the unit: {said}"
    );
}

/// Under systemd (`NOTIFY_SOCKET`), the server says `READY=1` once it listens and
/// `STOPPING=1` when it is asked to stop.
#[test]
fn the_server_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("a notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .env("NOTIFY_SOCKET", &path)
        .start()
        .expect("the server starts");
    let said = |socket: &UnixDatagram| {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(said(&socket), "READY=1\n");
    // Ready means listening.
    std::net::TcpStream::connect(server.addr()).expect("it accepts once ready");
    let started = Instant::now();
    let status = {
        let stopping = std::thread::spawn(move || server.stop(Signal::SIGTERM));
        let message = said(&socket);
        assert_eq!(message, "STOPPING=1\n");
        stopping.join().expect("the stop").expect("it stops")
    };
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn completions_and_the_manual_page_cover_every_command() {
    let (code, script, stderr) = run(tcpchat().args(["completions", "bash"]));
    assert_eq!(code, 0, "{stderr}");
    for word in ["serve", "chat", "viewer", "--max-message-bytes", "--config"] {
        assert!(script.contains(word), "{word} in the bash completions");
    }
    let (code, page, stderr) = run(tcpchat().arg("man"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH tcpchat"),
        "a roff page"
    );
    assert!(page.contains("serve"), "{page}");
    let dir = tempfile::tempdir().expect("a directory");
    let (code, _, stderr) = run(tcpchat().arg("man").arg("--out-dir").arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    let serve =
        std::fs::read_to_string(dir.path().join("tcpchat-serve.1")).expect("a page for serve");
    assert!(
        serve.contains("max\\-message\\-bytes"),
        "serve's flags are in its page"
    );
    let (code, _, stderr) = run(tcpchat().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "an unknown shell is a usage error: {stderr}");
}
