//! SIGHUP: the settings read again (the command line, the `TCPCHAT_*` variables and
//! the `--config` file). What a reload can change changes at once for connections
//! from then on, without dropping anyone; a change that needs a restart is logged as
//! such; a file that no longer parses leaves everything as it runs.

use harness::{Signal, Spec};

use crate::cli::{Raw, WAIT};

fn welcome(name: &str) -> String {
    format!("Welcome to the \"{name}\" Chat Server!")
}

#[test]
fn sighup_changes_the_live_settings_for_newcomers_and_keeps_everyone_connected() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("tcpchat.toml");
    std::fs::write(&file, "name = \"Day shift\"\nmax-name-chars = 5\n").expect("write");
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--config")
        .arg(&file)
        .start()
        .expect("the server starts with its file");
    let addr = server.addr();
    let mut early = Raw::connect(addr, "viewer\n");
    assert_eq!(early.line(), welcome("Day shift"));
    let mut refused = Raw::connect(addr, "name:sevenXX\n");
    assert!(refused.line().starts_with("*** error name-too-long"));

    let hash = tcpchat::server::password::hash("s3cret").expect("a hash");
    std::fs::write(
        &file,
        format!(
            "name = \"Night shift\"\nmax-name-chars = 8\npassword-hash = \"{hash}\"\nmax-batch-bytes = 1000\n"
        ),
    )
    .expect("rewrite");
    let mark = server.log_len();
    server.signal(Signal::SIGHUP).expect("SIGHUP");
    let reloaded = server
        .wait_for_log_after(mark, "reloaded the settings", WAIT)
        .expect("the reload is logged");
    for key in ["name", "max-name-chars", "password-hash"] {
        assert!(reloaded.contains(key), "{key} in {reloaded}");
    }
    let later = server
        .wait_for_log_after(mark, "take effect at the next restart", WAIT)
        .expect("a restart-only change is logged");
    assert!(later.contains("max-batch-bytes"), "{later}");

    // Newcomers: the new name, the new limit, the password.
    let mut late = Raw::connect(addr, "viewer pass=s3cret\n");
    assert_eq!(late.line(), welcome("Night shift"));
    let mut stranger = Raw::connect(addr, "viewer\n");
    assert!(stranger.line().starts_with("*** error bad-password"));
    let mut seven = Raw::connect(addr, "name:sevenXX pass=s3cret\n");
    assert_eq!(seven.line(), "*** ok: joined as sevenXX");
    // Whoever was there stays, and sees the room go on.
    assert_eq!(early.line(), "sevenXX has joined the chat.");
    assert_eq!(late.line(), "sevenXX has joined the chat.");

    // A file that no longer parses: the reload is refused, nothing changes.
    std::fs::write(&file, "name = \n").expect("break the file");
    let mark = server.log_len();
    server.signal(Signal::SIGHUP).expect("SIGHUP");
    let refusal = server
        .wait_for_log_after(
            mark,
            "cannot reload the settings; keeping the ones in use",
            WAIT,
        )
        .expect("the broken file is logged");
    assert!(refusal.contains("tcpchat.toml:1"), "{refusal}");
    let mut after = Raw::connect(addr, "viewer pass=s3cret\n");
    assert_eq!(after.line(), welcome("Night shift"));
}
