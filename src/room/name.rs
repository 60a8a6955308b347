//! The rules a messenger's name must follow, in one function.
//!
//! A name is what viewers see in front of every line a messenger sends, so it must
//! not be able to imitate anything else on a viewer's screen. The rules below make
//! every chat line parse one way only: a chat line is `NAME: text`, and since a name
//! holds no `:` and no whitespace, the first `: ` always ends the true sender's name.
//! Performs no I/O.

use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// `name:` with nothing after it.
    #[error("a name must not be empty")]
    Empty,
    /// Longer than the configured maximum, counted in characters.
    #[error("a name may have at most {max_chars} characters")]
    TooLong {
        /// The limit that was exceeded.
        max_chars: usize,
    },
    /// Holds a character that could forge or garble other lines.
    #[error("a name may not contain {0}")]
    Forbidden(ForbiddenChar),
}

/// A character refused in a name, named for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForbiddenChar(pub char);

impl std::fmt::Display for ForbiddenChar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        if c == ':' {
            f.write_str("':'")
        } else if c.is_whitespace() {
            write!(f, "whitespace (U+{:04X})", c as u32)
        } else if c == '*' {
            f.write_str("a leading '*' (reserved for server notices)")
        } else {
            write!(f, "the control character U+{:04X}", c as u32)
        }
    }
}

/// Checks `name` against the rules:
/// - at least one character and at most `max_chars` characters;
/// - no whitespace, so `NAME has joined the chat.` cannot be imitated by a name
///   that itself contains such a sentence;
/// - no `:`, so `NAME: text` always splits at the true sender;
/// - no control or invisible formatting characters (C0, DEL, C1, bidi overrides,
///   zero-width characters), which could move a terminal's cursor or reorder text;
/// - no leading `*`, because line-mode server notices start with `*** `.
///
/// # Errors
/// [`NameError`] says which rule was broken.
pub fn validate(name: &str, max_chars: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.starts_with('*') {
        return Err(NameError::Forbidden(ForbiddenChar('*')));
    }
    if let Some(c) = name.chars().find(|&c| is_forbidden(c)) {
        return Err(NameError::Forbidden(ForbiddenChar(c)));
    }
    if name.chars().count() > max_chars {
        return Err(NameError::TooLong { max_chars });
    }
    Ok(())
}

fn is_forbidden(c: char) -> bool {
    c == ':' || c.is_whitespace() || c.is_control() || is_invisible_format(c)
}

/// Unicode format characters that change how surrounding text is displayed
/// without being visible themselves.
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                // soft hyphen
        | '\u{061C}'              // Arabic letter mark
        | '\u{180E}'              // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202E}' // line/paragraph separators, bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}' // bidi isolates, deprecated format characters
        | '\u{FEFF}'              // zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "alice", "Bob_2", "x", "zoë", "名前", "a-b.c", "o'neil", "🦀", "a*",
        ] {
            assert_eq!(validate(name, 32), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_by_rule() {
        let forbidden = |c| Err(NameError::Forbidden(ForbiddenChar(c)));
        let table: &[(&str, Result<(), NameError>)] = &[
            ("", Err(NameError::Empty)),
            ("alice: hi", forbidden(':')),
            ("a:b", forbidden(':')),
            ("John Smith", forbidden(' ')),
            ("tab\there", forbidden('\t')),
            ("bell\u{7}", forbidden('\u{7}')),
            ("esc\u{1b}[2J", forbidden('\u{1b}')),
            ("cr\r", forbidden('\r')),
            ("nl\n", forbidden('\n')),
            ("del\u{7f}", forbidden('\u{7f}')),
            ("csi\u{9b}", forbidden('\u{9b}')),
            ("rlo\u{202e}", forbidden('\u{202e}')),
            ("zw\u{200b}sp", forbidden('\u{200b}')),
            ("nbsp\u{a0}", forbidden('\u{a0}')),
            ("*** server", forbidden('*')),
            ("*x", forbidden('*')),
        ];
        for (name, want) in table {
            assert_eq!(&validate(name, 32), want, "{name:?}");
        }
    }

    #[test]
    fn length_is_counted_in_characters_at_the_bound() {
        let at = "é".repeat(32);
        let past = "é".repeat(33);
        assert_eq!(validate(&at, 32), Ok(()));
        assert_eq!(
            validate(&past, 32),
            Err(NameError::TooLong { max_chars: 32 })
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            validate("a b", 32).unwrap_err().to_string(),
            "a name may not contain whitespace (U+0020)"
        );
        assert_eq!(
            validate("a:b", 32).unwrap_err().to_string(),
            "a name may not contain ':'"
        );
    }
}
