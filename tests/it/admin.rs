//! `tcpchat admin`: the operator's commands through the server's admin socket, run as
//! an operator would (the built binary, a server started by the harness).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use harness::{ServerProcess, Spec};

use crate::cli::{Raw, WELCOME, run, tcpchat};

fn server(socket: &Path) -> ServerProcess {
    Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--admin-socket")
        .arg(socket)
        .start()
        .expect("the server starts with an admin socket")
}

/// `tcpchat admin --socket SOCKET WORDS...`: (exit code, stdout, stderr).
fn admin(socket: &Path, words: &[&str]) -> (i32, String, String) {
    run(tcpchat()
        .arg("admin")
        .arg("--socket")
        .arg(socket)
        .args(words))
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("admin.sock")
}

#[test]
fn the_operator_sees_who_is_there_and_kicks_someone_out() {
    let dir = tempfile::tempdir().expect("a directory");
    let socket = socket_in(&dir);
    let server = server(&socket);
    let mode = std::fs::metadata(&socket)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the server's user may use it");
    let mut viewer = Raw::viewer(server.addr());
    let mut alice = Raw::connect(server.addr(), "name:alice\n");
    assert_eq!(alice.line(), "*** ok: joined as alice");
    assert_eq!(viewer.line(), "alice has joined the chat.");

    let (code, stdout, stderr) = admin(&socket, &["who"]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "alice\n1 in the room\n"),
        "{stderr}"
    );
    let (code, stdout, stderr) = admin(&socket, &["kick", "alice"]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "alice disconnected\n"),
        "{stderr}"
    );
    assert_eq!(
        alice.line(),
        "*** error kicked: disconnected by the operator"
    );
    alice.expect_closed();
    assert_eq!(viewer.line(), "alice has left the chat");
    let (code, _, stderr) = admin(&socket, &["kick", "alice"]);
    assert_eq!(code, 1);
    assert_eq!(stderr, "tcpchat: nobody called alice is in the room here\n");
    let (code, _, stderr) = admin(&socket, &["dance"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown command \"dance\"; try help"),
        "{stderr}"
    );
}

#[test]
fn bans_keep_a_name_or_an_address_out_until_lifted() {
    let dir = tempfile::tempdir().expect("a directory");
    let socket = socket_in(&dir);
    let server = server(&socket);
    let mut mallory = Raw::connect(server.addr(), "name:mallory\n");
    assert_eq!(mallory.line(), "*** ok: joined as mallory");

    let (code, stdout, stderr) = admin(&socket, &["ban", "mallory", "10m"]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "mallory banned for 10m, and disconnected\n"),
        "{stderr}"
    );
    assert_eq!(
        mallory.line(),
        "*** error kicked: disconnected by the operator"
    );
    let mut again = Raw::connect(server.addr(), "name:mallory\n");
    let refusal = again.line();
    assert!(
        refusal.starts_with("*** error banned: the name \"mallory\" is banned for 9m"),
        "{refusal}"
    );
    let (code, stdout, _) = admin(&socket, &["bans"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("mallory  for 9m"), "{stdout}");
    assert!(stdout.ends_with("\n1 ban\n"), "{stdout}");
    let (code, _, _) = admin(&socket, &["unban", "mallory"]);
    assert_eq!(code, 0);
    let mut back = Raw::connect(server.addr(), "name:mallory\n");
    assert_eq!(back.line(), "*** ok: joined as mallory");

    let (code, _, stderr) = admin(&socket, &["ban", "127.0.0.1", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    let mut viewer = Raw::connect(server.addr(), "viewer\n");
    let refusal = viewer.line();
    assert!(
        refusal.starts_with("*** error banned: this address is banned for 59m"),
        "{refusal}"
    );
    let (code, _, _) = admin(&socket, &["unban", "127.0.0.1"]);
    assert_eq!(code, 0);
    let mut viewer = Raw::connect(server.addr(), "viewer\n");
    assert_eq!(viewer.line(), WELCOME);
    let (code, _, stderr) = admin(&socket, &["ban", "mallory", "soon"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("\"soon\" is not a length of time"),
        "{stderr}"
    );
    let (code, _, stderr) = admin(&socket, &["ban", "mallory", "10000y"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("10000y is too long: a ban lasts at most 100 years"),
        "{stderr}"
    );
}

/// With the room's log on, bans are kept in the data directory: a restarted server
/// still keeps mallory out, and says for how much longer.
#[test]
fn bans_outlive_a_restart() {
    let dir = tempfile::tempdir().expect("a directory");
    let start = || {
        Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
            .arg("--data-dir")
            .arg(dir.path())
            .start()
            .expect("the server starts on its data directory")
    };
    let admin_here = |words: &[&str]| {
        run(tcpchat()
            .arg("admin")
            .arg("--data-dir")
            .arg(dir.path())
            .args(words))
    };
    let server = start();
    let (code, _, stderr) = admin_here(&["ban", "mallory", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = admin_here(&["ban", "eve", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = admin_here(&["unban", "eve"]);
    assert_eq!(code, 0, "{stderr}");
    server
        .stop(harness::Signal::SIGTERM)
        .expect("the server stops");

    let server = start();
    let mut again = Raw::connect(server.addr(), "name:mallory\n");
    let refusal = again.line();
    assert!(
        refusal.starts_with("*** error banned: the name \"mallory\" is banned for 59m"),
        "{refusal}"
    );
    let mut eve = Raw::connect(server.addr(), "name:eve\n");
    assert_eq!(
        eve.line(),
        "*** ok: joined as eve",
        "a lifted ban stays lifted"
    );
    let (code, stdout, _) = admin_here(&["bans"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("mallory  for 59m"), "{stdout}");
    assert!(stdout.ends_with("\n1 ban\n"), "{stdout}");
}

/// `--admin-socket` naming a file that is not a socket (a slip of the keyboard) is an
/// error, and the file is left alone.
#[test]
fn an_admin_socket_path_that_is_a_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("tcpchat.toml");
    std::fs::write(&file, "name = \"mine\"\n").expect("written");
    // Started as a server (bounded: before the fix it served on, the file gone).
    let refused = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--admin-socket")
        .arg(&file)
        .start()
        .map(|_| ())
        .expect_err("the server refuses the path");
    let said = refused.to_string();
    assert!(
        said.contains("cannot use the admin socket") && said.contains("is not a socket"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("still there"),
        "name = \"mine\"\n"
    );
}

#[test]
fn without_a_server_admin_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("a directory");
    let (code, _, stderr) = run(tcpchat()
        .arg("admin")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("who"));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!(
            "tcpchat: cannot reach the server's admin socket {}/admin.sock (is the server running",
            dir.path().display()
        )),
        "{stderr}"
    );
}
