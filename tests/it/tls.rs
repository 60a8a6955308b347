//! TLS: the handshake under the handshake deadline, plaintext on the TLS port, line
//! mode only, the certificate reloaded on SIGHUP without dropping anyone, and the
//! clients' `--tls` as a user runs them. (The line-mode suites run over TLS too; see
//! `Transport`.)

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{ServerProcess, Signal, Spec};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cli::{Lines, exit_of, one_line, run, tcpchat};
use crate::common::certs::{TestCert, scratch_dir, trusting};
use crate::common::*;

/// Reads until the peer closes (or resets); returns what came and how long it took.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match within("the connection to close", stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A client that opens the TLS port and stalls, silent or half way through its
/// ClientHello, costs only itself and is closed at the handshake timeout, which
/// covers the TLS handshake and the chat handshake together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_slowloris_is_closed_at_the_handshake_timeout_and_delays_nobody() {
    let timeout = Duration::from_millis(600);
    let server = start_server(Config {
        handshake_timeout: timeout,
        ..config()
    })
    .await;
    let mut silent = TcpStream::connect(server.tls_addr).await.unwrap();
    let mut halfway = TcpStream::connect(server.tls_addr).await.unwrap();
    // The start of a TLS 1.2/1.3 ClientHello record, and no more.
    halfway
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // After the TLS handshake, nothing: the chat handshake's share of the same timer.
    let mut mute = Client::connect(server.at(Transport::Tls)).await;

    // Meanwhile the room works as usual, over TLS too.
    let mut viewer = Client::viewer(server.at(Transport::Tls)).await;
    let mut amy = Client::messenger(server.at(Transport::Tls), "amy").await;
    amy.send(b"not waiting for anyone\n").await;
    assert_eq!(viewer.line().await, "amy has joined the chat.");
    assert_eq!(viewer.line().await, "amy: not waiting for anyone");

    for stalled in [&mut silent, &mut halfway] {
        let (got, after) = until_closed(stalled).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("Welcome"),
            "{got:?}"
        );
        assert!(
            after < timeout + Duration::from_secs(1),
            "closed after {after:?}"
        );
    }
    assert_eq!(
        mute.line().await,
        "*** error handshake-timeout: no handshake received in time"
    );
    mute.expect_closed().await;
}

/// Plaintext sent to the TLS port is no TLS handshake: the connection is closed at
/// once (not at the timeout), nothing of the chat is sent, no name is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_the_tls_port_is_closed_at_once() {
    let server = start_server(config()).await;
    for handshake in [&b"viewer\n"[..], b"name:bob\n", b"viewer"] {
        let mut plain = TcpStream::connect(server.tls_addr).await.unwrap();
        plain.write_all(handshake).await.unwrap();
        let (got, after) = until_closed(&mut plain).await;
        let got = String::from_utf8_lossy(&got);
        assert!(!got.contains("Welcome") && !got.contains("***"), "{got:?}");
        assert!(after < Duration::from_secs(2), "closed after {after:?}");
    }
    let _bob = Client::messenger(server.at(Transport::Tls), "bob").await;
}

/// There are no seed clients over TLS: a first read that is exactly `viewer` is the
/// start of a line, not a seed handshake, and the welcome that follows its `\n` is a
/// line-mode welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_seed_like_first_read_waits_for_its_newline() {
    let server = start_server(config()).await;
    let mut viewer = Client::connect(server.at(Transport::Tls)).await;
    viewer.send(b"viewer").await;
    // Four times the seed grace of `config()`: over plain TCP this would now be a
    // seed viewer, welcomed without a newline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    viewer.assert_nothing_buffered().await;
    viewer.send(b"\n").await;
    assert_eq!(viewer.line().await, WELCOME);
}

/// Connects over TLS trusting `trusted`, and returns the client and the certificate
/// the server presented.
async fn tls_client(
    addr: std::net::SocketAddr,
    trusted: &[&CertificateDer<'static>],
) -> (Client, CertificateDer<'static>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(Arc::new(trusting(trusted)));
    let tls = within(
        "the TLS handshake",
        connector.connect("localhost".try_into().unwrap(), stream),
    )
    .await
    .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (Client::from_stream(Either::Right(Box::new(tls))), presented)
}

fn start_tls_server(cert: &TestCert) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .args(["--tls-port", "0", "--tls-cert"])
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .start()
        .expect("start the server")
}

/// SIGHUP reloads the certificate and key: connections open before keep chatting,
/// new ones get the new certificate; a broken pair keeps the one in use, and the log
/// says why in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_anyone() {
    let dir = scratch_dir("tls-reload");
    let old = TestCert::generate(&dir.join("old"), "server");
    let new = TestCert::generate(&dir.join("new"), "server");
    // The operator's files: the old pair now, the new one later, at the same paths.
    let live = TestCert::generate(&dir, "live");
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let server = start_tls_server(&live);
    let tls_addr = server.tls_addr().unwrap();
    let both = [&old.der, &new.der];

    let (mut viewer, presented) = tls_client(tls_addr, &both).await;
    assert_eq!(presented, old.der);
    viewer.send(b"viewer\n").await;
    assert_eq!(viewer.line().await, WELCOME);
    let (mut early, _) = tls_client(tls_addr, &both).await;
    early.send(b"name:early\n").await;
    assert_eq!(early.line().await, "*** ok: joined as early");
    assert_eq!(viewer.line().await, "early has joined the chat.");

    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    let mark = server.log_len();
    server.signal(Signal::SIGHUP).unwrap();
    let reloaded = server.wait_for_log_after(mark, "reloaded the TLS certificate", WAIT);
    assert!(reloaded.is_some(), "{:?}", server.log_lines());
    let (_late, presented) = tls_client(tls_addr, &both).await;
    assert_eq!(
        presented, new.der,
        "a handshake after SIGHUP gets the new certificate"
    );
    early.send(b"still here\n").await;
    assert_eq!(viewer.line().await, "early: still here");

    // A broken pair: nothing changes but the log.
    std::fs::write(&live.key, "not a key\n").unwrap();
    let mark = server.log_len();
    server.signal(Signal::SIGHUP).unwrap();
    let refused = server
        .wait_for_log_after(mark, "cannot reload the TLS certificate", WAIT)
        .expect("a log line saying the reload failed");
    assert!(refused.contains("live.key"), "{refused}");
    let (_later, presented) = tls_client(tls_addr, &both).await;
    assert_eq!(presented, new.der, "the pair in use stays");
    early.send(b"and still\n").await;
    assert_eq!(viewer.line().await, "early: and still");
    assert_eq!(server.stop(Signal::SIGTERM).unwrap().code(), Some(0));
}

/// What a new user does: serve with a certificate, chat over TLS trusting it.
#[test]
fn chat_over_tls_works_as_a_user_would_try_it() {
    let cert = TestCert::generate(&scratch_dir("tls-chat"), "server");
    let server = start_tls_server(&cert);
    let port = server.tls_addr().unwrap().port().to_string();
    let ca = cert.cert.to_str().unwrap();
    let mut watcher = tcpchat()
        .args([
            "viewer",
            "--tls",
            "--ca",
            ca,
            "--host",
            "localhost",
            "--port",
            &port,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watched = Lines::of(watcher.stdout.take().unwrap());
    assert_eq!(watched.next(), crate::cli::WELCOME);
    let mut chat = tcpchat()
        .args([
            "chat",
            "--name",
            "eve",
            "--tls",
            "--ca",
            ca,
            "--host",
            "localhost",
        ])
        .args(["--port", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(chat.stdout.take().unwrap());
    let mut keys = chat.stdin.take().unwrap();
    assert_eq!(lines.next(), crate::cli::WELCOME);
    assert_eq!(lines.event(), "eve has joined the chat.");
    keys.write_all(b"hello over tls\n").unwrap();
    assert_eq!(lines.event(), "eve: hello over tls");
    keys.write_all(b"/quit\n").unwrap();
    assert_eq!(exit_of(chat).code(), Some(0));
    assert_eq!(watched.event(), "eve has joined the chat.");
    assert_eq!(watched.event(), "eve: hello over tls");
    assert_eq!(watched.event(), "eve has left the chat");
    assert_eq!(server.stop(Signal::SIGTERM).unwrap().code(), Some(0));
    // The viewer waits for the server to come back, until Ctrl-C.
    assert!(watched.next().starts_with("*** connection lost"));
    crate::cli::signal(&watcher, Signal::SIGINT);
    assert_eq!(exit_of(watcher).code(), Some(0));
}

/// A certificate the client cannot trust, or a server that is not TLS there, is one
/// line that says so, and exit code 1.
#[test]
fn tls_failures_are_one_clear_line_and_exit_code_1() {
    let dir = scratch_dir("tls-failures");
    let cert = TestCert::generate(&dir, "server");
    let stranger = TestCert::generate(&dir, "stranger");
    let server = start_tls_server(&cert);
    let tls_port = server.tls_addr().unwrap().port().to_string();
    let plain_port = server.addr().port().to_string();
    let untrusted = "the server's certificate is not signed by a CA this client trusts";
    let cases: [(Vec<&str>, &str); 5] = [
        // The system's roots do not know a self-signed certificate.
        (vec!["--port", &tls_port], untrusted),
        (
            vec!["--ca", stranger.cert.to_str().unwrap(), "--port", &tls_port],
            untrusted,
        ),
        (
            vec!["--ca", cert.cert.to_str().unwrap(), "--port", &plain_port],
            "the server did not answer in TLS",
        ),
        (
            vec!["--ca", "/nonexistent/ca.pem", "--port", &tls_port],
            "cannot read /nonexistent/ca.pem",
        ),
        (
            vec!["--ca", cert.key.to_str().unwrap(), "--port", &tls_port],
            "holds no PEM certificate",
        ),
    ];
    for (args, says) in cases {
        let (code, _, stderr) = run(tcpchat()
            .args(["viewer", "--tls", "--host", "localhost"])
            .args(&args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with("tcpchat: ") && line.contains(says),
            "{args:?}: {line}"
        );
    }
    // A certificate for another name.
    let elsewhere = {
        let made = rcgen::generate_simple_self_signed(vec!["example.org".to_owned()]).unwrap();
        let path = dir.join("elsewhere.crt");
        std::fs::write(&path, made.cert.pem()).unwrap();
        std::fs::write(dir.join("elsewhere.key"), made.signing_key.serialize_pem()).unwrap();
        path
    };
    let other = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .args(["--tls-port", "0", "--tls-cert"])
        .arg(&elsewhere)
        .args(["--tls-key"])
        .arg(dir.join("elsewhere.key"))
        .start()
        .unwrap();
    let (code, _, stderr) = run(tcpchat()
        .args(["viewer", "--tls", "--host", "localhost", "--ca"])
        .arg(&elsewhere)
        .args(["--port", &other.tls_addr().unwrap().port().to_string()]));
    assert_eq!(code, 1);
    assert!(
        one_line(&stderr).contains("the server's certificate is not valid for \"localhost\""),
        "{stderr}"
    );
}

/// A certificate or key that cannot be used stops `serve` at once, in one line.
#[test]
fn serve_refuses_an_unusable_certificate_in_one_line() {
    let dir = scratch_dir("tls-serve-errors");
    let one = TestCert::generate(&dir, "one");
    let two = TestCert::generate(&dir, "two");
    let missing = dir.join("missing.pem");
    let cases = [
        (&missing, &one.key, "cannot read"),
        (&one.key, &one.key, "holds no PEM certificate"),
        (&one.cert, &one.cert, "holds no PEM private key"),
        // A key that does not belong to the certificate.
        (&one.cert, &two.key, "does not belong to the certificate"),
    ];
    for (cert, key, says) in cases {
        let (code, _, stderr) = run(tcpchat()
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                "0",
                "--http-port",
                "0",
            ])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key));
        assert_eq!(code, 1, "{cert:?} {key:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with("tcpchat: cannot use the TLS certificate: ") && line.contains(says),
            "{line}"
        );
    }
    // Half a pair is a usage error.
    let (code, _, stderr) = run(tcpchat().args(["serve", "--tls-cert"]).arg(&one.cert));
    assert_eq!(code, 2);
    one_line(&stderr);
}
