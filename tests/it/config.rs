//! `tcpchat serve --config FILE`, the `TCPCHAT_*` variables and `--check-config`, run
//! as an operator would: the built binary, a file on disk, its answer on stdout or
//! stderr and its exit code.

use std::path::{Path, PathBuf};

use harness::Spec;

use crate::cli::{Raw, one_line, run, tcpchat};

/// A config file holding `text`, in a directory that lives as long as the guard.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("tcpchat.toml");
    std::fs::write(&path, text).expect("write the config file");
    (dir, path)
}

/// `tcpchat serve --check-config ARGS` with `env`: the effective setting of
/// `max-message-bytes`, as its line says it (`max-message-bytes = N  # SOURCE`).
fn effective(file: Option<&Path>, env: Option<&str>, flag: Option<&str>) -> String {
    let mut command = tcpchat();
    command.args(["serve", "--check-config"]);
    if let Some(file) = file {
        command.arg("--config").arg(file);
    }
    if let Some(value) = env {
        command.env("TCPCHAT_MAX_MESSAGE_BYTES", value);
    }
    if let Some(value) = flag {
        command.args(["--max-message-bytes", value]);
    }
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .find(|line| line.starts_with("max-message-bytes = "))
        .unwrap_or_else(|| panic!("no max-message-bytes in {stdout}"))
        .to_owned()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_default() {
    let (_dir, file) = config_file("# the room's limit\nmax-message-bytes = 1000\n");
    let file = Some(file.as_path());
    let table = [
        (None, None, None, "max-message-bytes = 4096  # default"),
        (file, None, None, "max-message-bytes = 1000  # file, line 2"),
        (
            file,
            Some("2000"),
            None,
            "max-message-bytes = 2000  # TCPCHAT_MAX_MESSAGE_BYTES",
        ),
        (
            None,
            Some("2000"),
            None,
            "max-message-bytes = 2000  # TCPCHAT_MAX_MESSAGE_BYTES",
        ),
        (
            file,
            Some("2000"),
            Some("3000"),
            "max-message-bytes = 3000  # command line",
        ),
        (
            file,
            None,
            Some("3000"),
            "max-message-bytes = 3000  # command line",
        ),
    ];
    for (file, env, flag, expected) in table {
        assert_eq!(
            effective(file, env, flag),
            expected,
            "file {file:?}, env {env:?}, flag {flag:?}"
        );
    }
}

#[test]
fn every_mistake_is_one_line_naming_the_key_and_where_it_is_and_exit_code_2() {
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "max-mesage-bytes = 10\n",
            &[],
            ":1: max-mesage-bytes: no such setting",
        ),
        (
            "name = \"x\"\nport = true\n",
            &[],
            ":2: port: must be a string or a number",
        ),
        ("fsync = 1\n", &[], ":1: fsync: must be true or false"),
        // Wrong even though the flag overrides it.
        (
            "\nmax-message-bytes = \"lots\"\n",
            &["--max-message-bytes", "100"],
            ":2: max-message-bytes: invalid value 'lots'",
        ),
        (
            "handshake-timeout = \"soon\"\n",
            &[],
            ":1: handshake-timeout: invalid value 'soon'",
        ),
        (
            "name = \"unterminated\n",
            &[],
            ":1: not a valid config file",
        ),
    ];
    for (text, flags, says) in cases {
        let (_dir, file) = config_file(text);
        let (code, stdout, stderr) = run(tcpchat()
            .args(["serve", "--check-config", "--config"])
            .arg(&file)
            .args(flags));
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with(&format!("tcpchat: {}", file.display())) && line.contains(says),
            "{text:?}: {line}"
        );
    }
    let (code, _, stderr) = run(tcpchat()
        .args(["serve", "--check-config"])
        .env("TCPCHAT_FLOOD_RATE", "0"));
    assert_eq!(code, 2);
    let line = one_line(&stderr);
    assert!(
        line.starts_with("tcpchat: TCPCHAT_FLOOD_RATE: invalid value '0'"),
        "{line}"
    );
    let (code, _, stderr) = run(tcpchat().args(["serve", "--config", "/nonexistent/tcpchat.toml"]));
    assert_eq!(code, 2);
    assert!(
        one_line(&stderr).contains("cannot read the config file /nonexistent/tcpchat.toml"),
        "{stderr}"
    );
}

#[test]
fn the_example_file_lists_every_setting_with_its_default() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/tcpchat.toml");
    let text = std::fs::read_to_string(&example).expect("contrib/tcpchat.toml");
    let (code, generated, _) = run(tcpchat().args(["serve", "--example-config"]));
    assert_eq!(code, 0);
    assert_eq!(
        text, generated,
        "contrib/tcpchat.toml is out of date: `tcpchat serve --example-config > contrib/tcpchat.toml`"
    );
    let (code, stdout, stderr) = run(tcpchat()
        .args(["serve", "--check-config", "--config"])
        .arg(&example));
    assert_eq!(code, 0, "{stderr}");
    for line in stdout.lines().filter(|line| !line.starts_with("# tcpchat")) {
        assert!(
            line.ends_with("# default"),
            "everything is commented out: {line}"
        );
    }
    // Each key of the effective settings has its commented line in the example.
    for line in stdout.lines().filter(|line| !line.starts_with('#')) {
        let key = line.split(" = ").next().expect("a key");
        assert!(
            text.lines().any(|l| l.starts_with(&format!("#{key} = "))),
            "{key} is in the example"
        );
    }
}

/// A server started with a config file and a variable uses both, as the welcome
/// line and the listening port show.
#[test]
fn a_server_started_with_a_config_file_uses_it() {
    let (_dir, file) = config_file("name = \"Night shift\"\nmax-name-chars = 4\n");
    let server = Spec::tcpchat(env!("CARGO_BIN_EXE_tcpchat"))
        .arg("--config")
        .arg(&file)
        .env("TCPCHAT_MAX_NAME_CHARS", "5")
        .start()
        .expect("the server starts with the file");
    let mut viewer = Raw::connect(server.addr(), "viewer\n");
    assert_eq!(viewer.line(), "Welcome to the \"Night shift\" Chat Server!");
    let mut long = Raw::connect(server.addr(), "name:sixsix\n");
    let refusal = long.line();
    assert!(refusal.starts_with("*** error name-too-long"), "{refusal}");
    let mut five = Raw::connect(server.addr(), "name:fiver\n");
    assert_eq!(five.line(), "*** ok: joined as fiver");
}
