//! The interactive clients' terminal: typed lines in, chat lines out, never garbled.
//!
//! On a terminal, a thread runs a line editor (rustyline) that owns the screen; lines
//! from the server go through its external printer, which prints them above the line
//! being typed and redraws it. When stdin or stdout is not a terminal (scripts,
//! tests), lines are read and printed plainly, with no prompt.

use std::io::{BufRead, IsTerminal, Write};

use nix::sys::termios::{self, SetArg, Termios};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// What the person at the keyboard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Typed a line (without its newline).
    Line(String),
    /// Ended input: Ctrl-D, Ctrl-C, or the end of piped input.
    End,
}

/// Typed lines in, server lines out.
pub struct Terminal {
    input: mpsc::Receiver<Input>,
    printer: Option<Box<dyn ExternalPrinter + Send>>,
    /// The terminal's settings before the editor changed them.
    saved: Option<Termios>,
}

impl Terminal {
    /// Starts reading lines, showing `prompt` when on a terminal.
    pub fn start(prompt: String) -> Self {
        let (tx, input) = mpsc::channel(16);
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let editor = interactive.then(DefaultEditor::new).and_then(Result::ok);
        let Some(mut editor) = editor else {
            std::thread::spawn(move || read_plain(&tx));
            return Self {
                input,
                printer: None,
                saved: None,
            };
        };
        let saved = termios::tcgetattr(std::io::stdin()).ok();
        let printer = editor
            .create_external_printer()
            .ok()
            .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
        std::thread::spawn(move || read_edited(&mut editor, &prompt, &tx));
        Self {
            input,
            printer,
            saved,
        }
    }

    /// The next thing typed.
    pub async fn next(&mut self) -> Input {
        self.input.recv().await.unwrap_or(Input::End)
    }

    /// Shows a line from the server above the line being typed.
    pub fn print(&mut self, line: &str) {
        if let Some(printer) = &mut self.printer
            && printer.print(format!("{line}\n")).is_ok()
        {
            return;
        }
        // A closed stdout (piped into `head`, say) is not worth a panic.
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

impl Drop for Terminal {
    /// Gives the terminal back as it was, even if the editor thread is still waiting
    /// for a key (the server went away mid-line), and moves past the prompt.
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(b"\r\n");
            let _ = stdout.flush();
        }
    }
}

fn read_edited(editor: &mut DefaultEditor, prompt: &str, tx: &mpsc::Sender<Input>) {
    loop {
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if tx.blocking_send(Input::Line(line)).is_err() {
                    return;
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) | Err(_) => {
                let _ = tx.blocking_send(Input::End);
                return;
            }
        }
    }
}

fn read_plain(tx: &mpsc::Sender<Input>) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if tx.blocking_send(Input::Line(line)).is_err() {
            return;
        }
    }
    let _ = tx.blocking_send(Input::End);
}

/// Asks for a name the way the original Messenger did, until one is given.
///
/// # Errors
/// When stdin ends first.
pub fn ask_name() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    loop {
        print!("Enter a name to use: ");
        std::io::stdout().flush()?;
        let mut name = String::new();
        if stdin.lock().read_line(&mut name)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no name given",
            ));
        }
        let name = name.trim();
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
    }
}
