//! The interactive clients' terminal: typed lines in, chat lines out, never garbled.
//!
//! On a terminal, a thread runs a line editor (rustyline) that owns the screen; lines
//! from the server go through its external printer, which prints them above the line
//! being typed and redraws it. When stdin or stdout is not a terminal (scripts,
//! tests), lines are read and printed plainly, with no prompt.
//!
//! A line typed and sent is erased from the screen: the room's own version of it
//! (`bob: hello`, with its time) is what shows it was sent, once it lands, so it is
//! never on screen twice. From Enter until the erasing is done, lines from the
//! server wait, so that the erasing always hits the typed line.
//!
//! Ctrl-C on a half-typed line clears it and goes on; on an empty line it ends
//! input, as Ctrl-D does. A line that leaves (`quit`) is the last one read: no
//! prompt is drawn after it, so none is left on screen.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};
use rustyline::error::ReadlineError;
use rustyline::{
    Cmd, ConditionalEventHandler, DefaultEditor, Event, EventContext, EventHandler,
    ExternalPrinter, KeyCode, KeyEvent, Modifiers, Movement, RepeatCount,
};
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthStr;

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
    /// Closed while a typed line is being erased.
    gate: Arc<Gate>,
    /// The editor is reading a line: its prompt is on screen.
    reading: Arc<AtomicBool>,
}

impl Terminal {
    /// Starts reading lines, showing `prompt` when on a terminal. With
    /// `erase_typed`, each line typed is erased from the screen once entered. A
    /// line for which `is_last` holds (a quit word) is the last one read.
    pub fn start(prompt: String, erase_typed: bool, is_last: fn(&str) -> bool) -> Self {
        let (tx, input) = mpsc::channel(16);
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let editor = interactive.then(DefaultEditor::new).and_then(Result::ok);
        let gate = Arc::new(Gate::default());
        let reading = Arc::new(AtomicBool::new(false));
        let Some(mut editor) = editor else {
            std::thread::spawn(move || read_plain(&tx, is_last));
            return Self {
                input,
                printer: None,
                saved: None,
                gate,
                reading,
            };
        };
        let saved = termios::tcgetattr(std::io::stdin()).ok();
        let printer = editor
            .create_external_printer()
            .ok()
            .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(ClearOrInterrupt)),
        );
        let erasing = erase_typed.then(|| {
            editor.bind_sequence(
                KeyEvent(KeyCode::Enter, Modifiers::NONE),
                EventHandler::Conditional(Box::new(CloseOnEnter(gate.clone()))),
            );
            gate.clone()
        });
        let editing = Editing {
            prompt,
            erasing,
            reading: reading.clone(),
            is_last,
        };
        std::thread::spawn(move || read_edited(&mut editor, &editing, &tx));
        Self {
            input,
            printer,
            saved,
            gate,
            reading,
        }
    }

    /// The next thing typed.
    pub async fn next(&mut self) -> Input {
        self.input.recv().await.unwrap_or(Input::End)
    }

    /// Shows a line from the server above the line being typed.
    pub fn print(&mut self, line: &str) {
        self.gate.wait_open();
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
    /// for a key (the server went away mid-line), and then moves past its prompt.
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
            if self.reading.load(Ordering::SeqCst) {
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(b"\r\n");
                let _ = stdout.flush();
            }
        }
    }
}

/// Closed from the moment Enter is pressed until the typed line is erased. Never
/// closed for long: a line printed meanwhile waits a few microseconds (and at most
/// [`Gate::MAX_WAIT`], should the editor thread be stuck).
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    const MAX_WAIT: Duration = Duration::from_millis(500);

    fn set(&self, closed: bool) {
        let mut state = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = closed;
        if !closed {
            self.opened.notify_all();
        }
    }

    fn wait_open(&self) {
        let state = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .opened
            .wait_timeout_while(state, Self::MAX_WAIT, |closed| *closed);
    }
}

/// Bound to Enter: closes the gate, then lets the editor accept the line as usual.
struct CloseOnEnter(Arc<Gate>);

impl ConditionalEventHandler for CloseOnEnter {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext) -> Option<Cmd> {
        self.0.set(true);
        None
    }
}

/// Bound to Ctrl-C: clears a half-typed line (it goes to the kill ring, so
/// Ctrl-Y brings it back); on an empty line, the editor's own Ctrl-C ends input.
struct ClearOrInterrupt;

impl ConditionalEventHandler for ClearOrInterrupt {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, context: &EventContext) -> Option<Cmd> {
        (!context.line().is_empty()).then_some(Cmd::Kill(Movement::WholeBuffer))
    }
}

/// How many rows of the screen `prompt` and the typed `line` took, `columns` wide.
/// The editor ends an accepted line with a newline, so the cursor is on the row
/// after them.
fn input_rows(prompt: &str, line: &str, columns: usize) -> usize {
    let columns = columns.max(1);
    line.split('\n')
        .enumerate()
        .map(|(i, part)| {
            let width = part.width() + if i == 0 { prompt.width() } else { 0 };
            // A row filled to the last column puts the cursor on a fresh one.
            width / columns + 1
        })
        .sum()
}

/// Erases the typed line the editor left on screen, moving the cursor up to where
/// its prompt was.
fn erase_input(editor: &mut DefaultEditor, prompt: &str, line: &str) {
    let Some((columns, _)) = editor.dimensions() else {
        return;
    };
    let rows = input_rows(prompt, line, usize::from(columns));
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "\r\x1b[{rows}A\x1b[J");
    let _ = stdout.flush();
}

/// How the editor thread reads.
struct Editing {
    prompt: String,
    /// Erase each line once entered, then open this gate.
    erasing: Option<Arc<Gate>>,
    /// Set while the editor reads a line.
    reading: Arc<AtomicBool>,
    /// The line that ends the reading.
    is_last: fn(&str) -> bool,
}

/// Reads lines with the editor until input ends or a last line is read.
fn read_edited(editor: &mut DefaultEditor, editing: &Editing, tx: &mpsc::Sender<Input>) {
    let prompt = editing.prompt.as_str();
    loop {
        editing.reading.store(true, Ordering::SeqCst);
        let read = editor.readline(prompt);
        editing.reading.store(false, Ordering::SeqCst);
        if let Some(gate) = &editing.erasing {
            if let Ok(line) = &read {
                erase_input(editor, prompt, line);
            }
            // Before waiting on the channel: its reader may be waiting for the gate.
            gate.set(false);
        }
        match read {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let last = (editing.is_last)(&line);
                if tx.blocking_send(Input::Line(line)).is_err() || last {
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

fn read_plain(tx: &mpsc::Sender<Input>, is_last: fn(&str) -> bool) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let last = is_last(&line);
        if tx.blocking_send(Input::Line(line)).is_err() || last {
            return;
        }
    }
    let _ = tx.blocking_send(Input::End);
}

/// After Ctrl-C outside the editor, where the terminal echoes `^C` and leaves the
/// cursor after it: ends that line, so that whatever comes next (the shell's
/// prompt) starts on a line of its own. Nothing when stdout is not a terminal.
pub fn end_interrupted_line() {
    let mut stdout = std::io::stdout();
    if stdout.is_terminal() {
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }
}

/// Asks for a name the way the original Messenger did, until one is given. The
/// question is asked only when stdin is a terminal: from a pipe, the first
/// non-empty line is the name.
///
/// # Errors
/// When stdin ends first.
pub fn ask_name() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let asking = stdin.is_terminal();
    loop {
        if asking {
            print!("Enter a name to use: ");
            std::io::stdout().flush()?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_take_rows_by_their_width() {
        assert_eq!(input_rows("bob> ", "", 80), 1);
        assert_eq!(input_rows("bob> ", "hello", 80), 1);
        // 5 + 74 = 79 columns: one row. 5 + 75 = 80: the cursor wraps to a second.
        assert_eq!(input_rows("bob> ", &"x".repeat(74), 80), 1);
        assert_eq!(input_rows("bob> ", &"x".repeat(75), 80), 2);
        assert_eq!(input_rows("bob> ", &"x".repeat(200), 80), 3);
        // Wide characters count twice.
        assert_eq!(input_rows("bob> ", &"雪".repeat(40), 80), 2);
        // A pasted line break starts a row of its own.
        assert_eq!(input_rows("bob> ", "one\ntwo", 80), 2);
        assert_eq!(input_rows("bob> ", "x", 0), 7);
    }

    #[test]
    fn the_gate_lets_printing_through_once_opened() {
        let gate = Arc::new(Gate::default());
        gate.wait_open();
        gate.set(true);
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                gate.set(false);
            })
        };
        let started = std::time::Instant::now();
        gate.wait_open();
        assert!(started.elapsed() < Gate::MAX_WAIT);
        opener.join().unwrap();
    }
}
