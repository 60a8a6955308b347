//! Turning a messenger's raw bytes into chat text that is safe to show.
//!
//! Owns two rules: a message is split at its line breaks (so every resulting line
//! gets the true sender's prefix), and what remains can never steer a viewer's
//! terminal. Performs no I/O.

use std::borrow::Cow;

/// Splits `bytes` at `\n`, strips one `\r` before each `\n`, and skips empty lines.
///
/// Both modes use it: a line-mode line never holds a `\n`, and a seed-mode message
/// that does is cut here so a sender cannot start a fresh line under another name.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
}

/// Byte offset just past the `n`-th line that [`lines`] would yield (its terminator
/// included), or the length of `bytes` if it holds fewer. Cutting there splits a
/// message between two posts without changing the events it makes.
pub fn end_of_lines(bytes: &[u8], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |at| start + at);
        let line = &bytes[start..end];
        if !line.strip_suffix(b"\r").unwrap_or(line).is_empty() {
            seen += 1;
            if seen == n {
                return (end + 1).min(bytes.len());
            }
        }
        start = end + 1;
    }
    bytes.len()
}

/// Decodes one line as UTF-8 (invalid sequences become U+FFFD, as the original's
/// decoder did) and neutralizes every character that could move a terminal's cursor
/// or rewrite what is on screen.
///
/// - C0 controls other than tab, and DEL, become their visible Unicode "control
///   picture": `\r` shows as `␍`, ESC as `␛`, DEL as `␡`. The text stays readable
///   and nothing is silently dropped.
/// - C1 controls (U+0080..U+009F, which include an 8-bit CSI) and the Unicode line
///   and paragraph separators become U+FFFD.
/// - Tab stays.
///
/// Returns the input unchanged (borrowed) when there is nothing to neutralize,
/// which is the common case.
pub fn sanitize(line: &[u8]) -> Cow<'_, str> {
    let decoded = String::from_utf8_lossy(line);
    if !decoded.chars().any(needs_neutralizing) {
        return decoded;
    }
    Cow::Owned(decoded.chars().map(neutralize).collect())
}

fn needs_neutralizing(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

fn neutralize(c: char) -> char {
    match c {
        '\t' => '\t',
        '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'),
        '\u{7f}' => '\u{2421}',
        c if needs_neutralizing(c) => '\u{FFFD}',
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(bytes: &[u8]) -> Vec<&[u8]> {
        lines(bytes).collect()
    }

    #[test]
    fn splits_on_newlines_and_skips_empty_lines() {
        assert_eq!(all_lines(b"a\nb\r\n\r\n\nc"), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(all_lines(b""), Vec::<&[u8]>::new());
        assert_eq!(all_lines(b"\n\r\n"), Vec::<&[u8]>::new());
        assert_eq!(all_lines(b"  "), vec![&b"  "[..]]);
    }

    #[test]
    fn cutting_after_n_lines_keeps_the_events_the_same() {
        let bytes = b"a\n\r\nb\r\n\nc";
        assert_eq!(end_of_lines(bytes, 0), 0);
        assert_eq!(end_of_lines(bytes, 1), 2);
        assert_eq!(end_of_lines(bytes, 2), 7);
        assert_eq!(end_of_lines(bytes, 3), bytes.len());
        assert_eq!(end_of_lines(bytes, 9), bytes.len());
        for n in 0..4 {
            let (head, tail) = bytes.split_at(end_of_lines(bytes, n));
            let mut rejoined: Vec<&[u8]> = lines(head).collect();
            assert_eq!(rejoined.len(), n.min(3));
            rejoined.extend(lines(tail));
            assert_eq!(rejoined, all_lines(bytes));
        }
    }

    #[test]
    fn only_one_cr_before_lf_is_a_terminator() {
        assert_eq!(all_lines(b"x\r\r\n"), vec![&b"x\r"[..]]);
        assert_eq!(sanitize(b"x\r"), "x\u{240D}");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            sanitize(b"hello, w\xc3\xb6rld\t!"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn cursor_moving_characters_become_visible() {
        let table: &[(&[u8], &str)] = &[
            (b"a\rb", "a\u{240D}b"),
            (b"\x1b[2J\x1b[Hgotcha", "\u{241B}[2J\u{241B}[Hgotcha"),
            (b"bell\x07", "bell\u{2407}"),
            (b"back\x08\x08", "back\u{2408}\u{2408}"),
            (b"nul\x00", "nul\u{2400}"),
            (b"del\x7f", "del\u{2421}"),
            ("csi\u{9b}31m".as_bytes(), "csi\u{FFFD}31m"),
            ("ls\u{2028}ps\u{2029}".as_bytes(), "ls\u{FFFD}ps\u{FFFD}"),
            (b"tab\tstays", "tab\tstays"),
        ];
        for (raw, want) in table {
            assert_eq!(sanitize(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        assert_eq!(sanitize(b"ok\xff\xfe"), "ok\u{FFFD}\u{FFFD}");
    }
}
