//! The clients as a person at a terminal sees them: the built `tcpchat` run under a
//! pseudo-terminal (its controlling terminal, so Ctrl-C is the terminal's own) against
//! a real server process, with what it writes fed to a terminal emulator (`vt100`)
//! whose screen the tests read: the text on each row, bold or not, and where the
//! cursor is. Piped runs check what a script sees.

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use nix::pty::{Winsize, openpty};

use crate::cli::{Lines, Raw, WAIT, WELCOME, exit_of, port, start_server, tcpchat};

const ROWS: u16 = 24;
const COLUMNS: u16 = 80;

/// A `tcpchat` process on a pseudo-terminal, and the screen it draws.
struct Terminal {
    child: Option<Child>,
    keyboard: std::fs::File,
    output: mpsc::Receiver<Vec<u8>>,
    /// Everything written so far, as it came.
    written: Vec<u8>,
    screen: vt100::Parser,
}

impl Terminal {
    /// Starts `command` with a terminal of [`ROWS`] x [`COLUMNS`] as its stdin,
    /// stdout, stderr and controlling terminal, `TERM=xterm-256color` and no
    /// `NO_COLOR` unless the command sets them.
    fn spawn(command: &mut Command) -> Self {
        let size = Winsize {
            ws_row: ROWS,
            ws_col: COLUMNS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("a pseudo-terminal");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        command
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave));
        // SAFETY: between fork and exec, only async-signal-safe calls (setsid,
        // ioctl) on the child's own descriptors.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start tcpchat");
        // Only the child holds the terminal now: its exit ends our reads.
        drop(pty.slave);
        let mut reader = std::fs::File::from(pty.master.try_clone().expect("dup the master"));
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            // EIO once the last holder of the terminal has closed it.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self {
            child: Some(child),
            keyboard: std::fs::File::from(pty.master),
            output,
            written: Vec::new(),
            screen: vt100::Parser::new(
                NonZeroU16::new(ROWS).expect("rows"),
                NonZeroU16::new(COLUMNS).expect("columns"),
                0,
            ),
        }
    }

    /// Types `keys` (`\r` is Enter, `\x03` Ctrl-C).
    fn type_keys(&mut self, keys: &str) {
        self.keyboard.write_all(keys.as_bytes()).expect("type");
        self.keyboard.flush().expect("type");
    }

    /// Types `text` and Enter, then waits for the editor to draw `prompt` again
    /// (until it does, the terminal is not the editor's: keys typed then would be
    /// echoed by the terminal itself, and Ctrl-C would be a signal).
    fn enter(&mut self, prompt: &str, text: &str) {
        let from = self.written.len();
        self.type_keys(&format!("{text}\r"));
        let (text, prompt) = (text.as_bytes(), prompt.as_bytes());
        self.wait_until(&format!("the prompt after {text:?}"), |t| {
            let new = &t.written[from..];
            new.windows(text.len())
                .position(|w| w == text)
                .is_some_and(|at| new[at..].windows(prompt.len()).any(|w| w == prompt))
        });
    }

    /// The screen's rows, trailing blanks trimmed.
    fn rows(&self) -> Vec<String> {
        self.screen
            .screen()
            .rows(0, COLUMNS)
            .map(|row| row.trim_end().to_owned())
            .collect()
    }

    fn dump(&self) -> String {
        let (row, column) = self.screen.screen().cursor_position();
        format!(
            "screen (cursor at row {row}, column {column}):\n{}",
            self.rows().join("\n")
        )
    }

    /// Reads output until the screen satisfies `done`, for at most [`WAIT`].
    fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.process(&bytes),
                Err(_) => panic!("waited {WAIT:?} for {what}; {}", self.dump()),
            }
        }
    }

    fn process(&mut self, bytes: &[u8]) {
        self.written.extend_from_slice(bytes);
        self.screen.process(bytes);
    }

    /// Waits for a row whose text, time taken off, is `text`.
    fn wait_for_row(&mut self, text: &str) {
        self.wait_until(&format!("the row {text:?}"), |t| t.row_of(text).is_some());
    }

    /// The index of the row whose text, time taken off, is `text`.
    fn row_of(&self, text: &str) -> Option<u16> {
        self.rows()
            .iter()
            .position(|row| crate::cli::untimed(row) == text)
            .and_then(|row| u16::try_from(row).ok())
    }

    /// Whether the cell at `column` of the row showing `text` is bold.
    fn is_bold(&self, text: &str, column: u16) -> bool {
        let row = self.row_of(text).expect("the row is on screen");
        let start = self.rows()[usize::from(row)].len() - text.len();
        let column = u16::try_from(start).expect("narrow") + column;
        self.screen
            .screen()
            .cell(row, column)
            .is_some_and(vt100::Cell::bold)
    }

    /// Reads what the process writes until it closes the terminal (it exits),
    /// then returns its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.process(&bytes),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("tcpchat did not exit within {WAIT:?}; {}", self.dump())
                }
            }
        }
        exit_of(self.child.take().expect("still running")).code()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tcpchat CLIENT --host 127.0.0.1 --port PORT ARGS...`, colors allowed.
fn client(server: &harness::ServerProcess, args: &[&str]) -> Command {
    let mut command = tcpchat();
    command
        .args(&args[..1])
        .args(["--host", "127.0.0.1", "--port", &port(server)])
        .args(&args[1..])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR");
    command
}

/// `chat` as `name`, on a terminal, once its own join is on screen.
fn chat_on_terminal(server: &harness::ServerProcess, name: &str, no_color: bool) -> Terminal {
    let mut command = client(server, &["chat", "--name", name]);
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let mut terminal = Terminal::spawn(&mut command);
    terminal.wait_for_row(&format!("{name} has joined the chat."));
    let prompt = format!("{name}>");
    terminal.wait_until("the prompt", |t| t.rows().contains(&prompt));
    terminal
}

#[test]
fn ctrl_c_clears_a_half_typed_line_and_chat_goes_on() {
    let server = start_server();
    let mut viewer = Raw::viewer(server.addr());
    let mut chat = chat_on_terminal(&server, "eve", false);
    assert_eq!(viewer.line(), "eve has joined the chat.");
    chat.type_keys("half a thou");
    chat.wait_for_row("eve> half a thou");
    chat.type_keys("\x03");
    chat.wait_until("the line cleared", |t| {
        t.row_of("eve>").is_some() && !t.rows().iter().any(|row| row.contains("half"))
    });
    chat.enter("eve> ", "whole thought");
    chat.wait_for_row("eve: whole thought");
    // The room got the line typed after Ctrl-C, and nothing of the one before.
    assert_eq!(viewer.line(), "eve: whole thought");
    // Ctrl-C on an empty line still leaves.
    chat.type_keys("\x03");
    assert_eq!(chat.exit_code(), Some(0));
    assert_eq!(viewer.line(), "eve has left the chat");
}

#[test]
fn the_quit_words_leave_no_prompt_behind() {
    let server = start_server();
    for word in ["quit", "exit", "/quit"] {
        let mut chat = chat_on_terminal(&server, "eve", false);
        chat.type_keys(&format!("{word}\r"));
        assert_eq!(chat.exit_code(), Some(0), "{word}");
        let rows = chat.rows();
        assert!(
            !rows.iter().any(|row| row.starts_with("eve>")),
            "{word}: {}",
            chat.dump()
        );
        // The shell's prompt would start at the beginning of a line.
        assert_eq!(
            chat.screen.screen().cursor_position().1,
            0,
            "{}",
            chat.dump()
        );
    }
}

#[test]
fn your_own_lines_are_bold_on_a_terminal_unless_no_color_is_set() {
    let server = start_server();
    for no_color in [false, true] {
        let mut chat = chat_on_terminal(&server, "eve", no_color);
        let mut fay = Raw::connect(server.addr(), "name:fay\n");
        assert_eq!(fay.line(), "*** ok: joined as fay");
        fay.send("hi eve\n");
        chat.wait_for_row("fay: hi eve");
        chat.enter("eve> ", "hi fay");
        chat.wait_for_row("eve: hi fay");
        chat.enter("eve> ", "/me waves");
        chat.wait_for_row("eve: * waves");
        for (row, column) in [("eve: hi fay", 0), ("eve: hi fay", 3), ("eve: * waves", 0)] {
            assert_eq!(
                chat.is_bold(row, column),
                !no_color,
                "NO_COLOR: {no_color}; {row:?}"
            );
        }
        // Only the name: the message itself, and others' lines, are as they came.
        assert!(!chat.is_bold("eve: hi fay", 5));
        assert!(!chat.is_bold("fay: hi eve", 0));
        assert!(!chat.is_bold("fay: hi eve", 3));
        drop(fay);
        chat.wait_for_row("fay has left the chat");
        chat.type_keys("/quit\r");
        assert_eq!(chat.exit_code(), Some(0));
    }
}

#[test]
fn the_messenger_asks_for_its_name_on_a_terminal() {
    let server = start_server();
    let mut viewer = Raw::viewer(server.addr());
    let mut messenger = Terminal::spawn(&mut client(&server, &["messenger"]));
    messenger.wait_for_row("Enter a name to use:");
    messenger.type_keys("carol\r");
    messenger.wait_until("the prompt", |t| t.rows().iter().any(|r| r == "carol>"));
    assert_eq!(viewer.line(), "carol has joined the chat.");
    messenger.enter("carol> ", "hi");
    assert_eq!(viewer.line(), "carol: hi");
    messenger.type_keys("quit\r");
    assert_eq!(messenger.exit_code(), Some(0));
    assert_eq!(viewer.line(), "carol has left the chat");
    assert!(
        !messenger.rows().iter().any(|row| row == "carol>"),
        "a stray prompt after quit; {}",
        messenger.dump()
    );
}

#[test]
fn the_viewer_ends_the_line_of_its_ctrl_c() {
    let server = start_server();
    let mut viewer = Terminal::spawn(&mut client(&server, &["viewer"]));
    viewer.wait_for_row(WELCOME);
    viewer.type_keys("\x03");
    assert_eq!(viewer.exit_code(), Some(0));
    // The terminal shows `^C`; the shell's prompt would start on the next line.
    assert_eq!(
        viewer.screen.screen().cursor_position().1,
        0,
        "{}",
        viewer.dump()
    );
}

#[test]
fn chat_commands_are_answered_here_and_only_text_reaches_the_room() {
    let server = start_server();
    let mut viewer = Raw::viewer(server.addr());
    let mut zed = Raw::connect(server.addr(), "name:zed\n");
    assert_eq!(zed.line(), "*** ok: joined as zed");
    assert_eq!(viewer.line(), "zed has joined the chat.");
    let mut child = client(&server, &["chat", "--name", "eve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    assert_eq!(lines.next(), WELCOME);
    assert_eq!(lines.event(), "zed has joined the chat.");
    assert_eq!(lines.event(), "eve has joined the chat.");
    assert_eq!(viewer.line(), "eve has joined the chat.");

    // Someone who was there before, and yourself.
    stdin.write_all(b"/who\n").unwrap();
    assert_eq!(lines.next(), "*** in the room (2): eve zed");
    let mut fay = Raw::connect(server.addr(), "name:fay\n");
    assert_eq!(fay.line(), "*** ok: joined as fay");
    assert_eq!(lines.event(), "fay has joined the chat.");
    drop(zed);
    assert_eq!(lines.event(), "zed has left the chat");
    stdin.write_all(b"/who\n").unwrap();
    assert_eq!(lines.next(), "*** in the room (2): eve fay");

    stdin.write_all(b"/help\n").unwrap();
    let help: Vec<String> = (0..5).map(|_| lines.next()).collect();
    for command in ["/who", "/me TEXT", "//TEXT", "/quit", "/help"] {
        assert!(
            help.iter()
                .any(|line| line.starts_with(&format!("*** {command}"))),
            "{command} in {help:#?}"
        );
    }
    stdin.write_all(b"/nick bob\n").unwrap();
    assert_eq!(
        lines.next(),
        "*** unknown command /nick: nothing was sent (/help lists the commands)"
    );
    stdin.write_all(b"/me\n").unwrap();
    assert_eq!(
        lines.next(),
        "*** /me needs something to do, as in: /me waves"
    );
    stdin.write_all(b"/me waves\n//etc\n").unwrap();
    assert_eq!(lines.event(), "eve: * waves");
    assert_eq!(lines.event(), "eve: /etc");
    // The room got those two lines, and nothing of the commands.
    assert_eq!(viewer.line(), "fay has joined the chat.");
    assert_eq!(viewer.line(), "zed has left the chat");
    assert_eq!(viewer.line(), "eve: * waves");
    assert_eq!(viewer.line(), "eve: /etc");
    stdin.write_all(b"/quit\n").unwrap();
    assert_eq!(exit_of(child).code(), Some(0));
    assert_eq!(viewer.line(), "eve has left the chat");
    drop(fay);
}
