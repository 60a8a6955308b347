//! `serve --password-hash`: a password made by `tcpchat hash-password`, asked for in
//! the handshake (`pass=...`), a wrong or missing one refused in words, guessing
//! throttled per address, and seed clients (which cannot send one) kept out unless
//! `--allow-seed-clients`. Run as an operator would: the built binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;

use harness::{ServerProcess, Spec};

use crate::cli::{Raw, WAIT, WELCOME, run, tcpchat};

/// Runs `tcpchat hash-password` with `password` on its standard input.
fn hash_password(password: &str) -> std::process::Output {
    let mut child = tcpchat()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpchat hash-password");
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("its output")
}

/// The hash `tcpchat hash-password` makes of `password`.
fn hash_of(password: &str) -> String {
    let output = hash_password(password);
    assert!(output.status.success(), "{output:?}");
    let hash = String::from_utf8(output.stdout).expect("UTF-8");
    let hash = hash.trim_end().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(password), "the password is not in its hash");
    hash
}

fn server(hash: &str, more: &[&str]) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .args(["--password-hash", hash, "--seed-grace", "50ms"])
        .args(more)
        .start()
        .expect("the server starts with a password")
}

/// Connects, sends `handshake`, and returns the one line it gets before the server
/// closes the connection.
fn refused(addr: SocketAddr, handshake: &str) -> String {
    let mut raw = Raw::connect(addr, handshake);
    let line = raw.line();
    raw.expect_closed();
    line
}

#[test]
fn the_password_lets_in_and_a_wrong_or_missing_one_is_refused_in_words() {
    let hash = hash_of("s3cret");
    let server = server(&hash, &[]);
    let addr = server.addr();
    let mut viewer = Raw::connect(addr, "viewer pass=s3cret\n");
    assert_eq!(viewer.line(), WELCOME);
    let mut alice = Raw::connect(addr, "name:alice pass=s3cret\n");
    assert_eq!(alice.line(), "*** ok: joined as alice");
    alice.send("hello\n");
    assert_eq!(viewer.line(), "alice has joined the chat.");
    assert_eq!(viewer.line(), "alice: hello");
    assert_eq!(
        refused(addr, "viewer pass=guess\n"),
        "*** error bad-password: wrong password"
    );
    assert_eq!(
        refused(addr, "name:mallory\n"),
        "*** error bad-password: this server asks for a password: add pass=PASSWORD to the handshake"
    );
    // The log says who was refused and why, never the password.
    assert!(
        server
            .wait_for_log("add pass=PASSWORD", WAIT)
            .is_some_and(|line| line.contains("refused")),
        "the refusals are logged"
    );
    let said = server.log_lines().join("\n");
    assert!(said.contains("wrong password"), "{said}");
    assert!(
        !said.contains("s3cret") && !said.contains("guess"),
        "{said}"
    );
}

#[test]
fn an_address_that_keeps_guessing_is_locked_out() {
    let server = server(&hash_of("s3cret"), &[]);
    for _ in 0..5 {
        assert!(
            refused(server.addr(), "viewer pass=guess\n").starts_with("*** error bad-password")
        );
    }
    assert_eq!(
        refused(server.addr(), "viewer pass=s3cret\n"),
        "*** error too-many-attempts: too many wrong passwords from this address; try again in 60 s"
    );
}

/// The seed protocol's `viewer` (no newline): kept out with a password, let in
/// with --allow-seed-clients.
fn seed_viewer_output(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("a timeout");
    stream.write_all(b"viewer").expect("the seed handshake");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Up to the welcome, or the end of the connection.
    while !got.ends_with(WELCOME.as_bytes()) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn seed_clients_are_kept_out_unless_allowed() {
    let hash = hash_of("s3cret");
    let closed = server(&hash, &[]);
    let output = seed_viewer_output(closed.addr());
    assert!(!output.contains(WELCOME), "refused: {output:?}");
    let open = server(&hash, &["--allow-seed-clients"]);
    assert_eq!(seed_viewer_output(open.addr()), WELCOME);
}

#[test]
fn tcpchat_s_clients_send_the_password_from_tcpchat_password() {
    let server = server(&hash_of("s3cret"), &[]);
    let port = server.addr().port().to_string();
    let history = || {
        let mut command = tcpchat();
        command.args(["history", "--host", "127.0.0.1", "--port", &port]);
        command
    };
    let (code, _, stderr) = run(&mut history());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the server refused us: this server asks for a password"),
        "{stderr}"
    );
    let (code, _, stderr) = run(history().env("TCPCHAT_PASSWORD", "s3cret"));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_password_hash_that_is_not_one_is_a_usage_error() {
    let (code, _, stderr) = run(tcpchat().args(["serve", "--password-hash", "s3cret"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("make one with `tcpchat hash-password`"),
        "{stderr}"
    );
    let output = hash_password("two words");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("without spaces"));
}
