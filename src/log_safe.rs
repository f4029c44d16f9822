//! Values from outside the agent made safe for one log line.
//!
//! Child output, request headers and paths, znode payloads and the answers
//! of other hosts are hostile input. Written into a log verbatim, a CR/LF
//! forges a second record, an ANSI escape repaints an operator's terminal,
//! and a megabyte value makes a megabyte line on every repeat. [`LogSafe`]
//! escapes every control character (C0, DEL, C1 and the Unicode bidi
//! overrides) and truncates long values, without allocating.

use std::fmt::{self, Write};

/// Characters kept of a value before it is truncated, unless a caller
/// chooses otherwise with [`LogSafe::truncated_at`].
pub const DEFAULT_MAX_CHARS: usize = 200;

/// Display wrapper: `tracing::warn!(value = %LogSafe::new(&text), ...)`.
#[derive(Clone, Copy)]
pub struct LogSafe<'a> {
    value: &'a str,
    max_chars: usize,
}

impl<'a> LogSafe<'a> {
    pub fn new(value: &'a str) -> LogSafe<'a> {
        LogSafe {
            value,
            max_chars: DEFAULT_MAX_CHARS,
        }
    }

    /// Bytes that are not UTF-8 are shown as U+FFFD.
    pub fn bytes(value: &'a [u8]) -> LogSafeBytes<'a> {
        LogSafeBytes {
            value,
            max_chars: DEFAULT_MAX_CHARS,
        }
    }

    pub fn truncated_at(self, max_chars: usize) -> LogSafe<'a> {
        LogSafe { max_chars, ..self }
    }
}

/// [`LogSafe`] over bytes that may not be UTF-8 (child output).
#[derive(Clone, Copy)]
pub struct LogSafeBytes<'a> {
    value: &'a [u8],
    max_chars: usize,
}

impl LogSafeBytes<'_> {
    pub fn truncated_at(self, max_chars: usize) -> Self {
        LogSafeBytes { max_chars, ..self }
    }
}

/// Whether `c` must not reach a log line as itself.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        // Bidi embeddings, overrides and isolates reorder what a reader sees.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        // Line and paragraph separators break lines in some viewers.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

fn write_escaped(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32),
        '\\' => f.write_str("\\\\"),
        c => f.write_char(c),
    }
}

fn write_safe(
    f: &mut fmt::Formatter<'_>,
    chars: impl Iterator<Item = char>,
    max_chars: usize,
    total_bytes: usize,
) -> fmt::Result {
    let mut shown_bytes = 0;
    for (index, c) in chars.enumerate() {
        if index == max_chars {
            return write!(
                f,
                "…({} more bytes)",
                total_bytes.saturating_sub(shown_bytes)
            );
        }
        shown_bytes += c.len_utf8();
        write_escaped(f, c)?;
    }
    Ok(())
}

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_safe(f, self.value.chars(), self.max_chars, self.value.len())
    }
}

impl fmt::Debug for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for LogSafeBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars = self.value.utf8_chunks().flat_map(|chunk| {
            let invalid = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
            chunk.valid().chars().chain(invalid)
        });
        write_safe(f, chars, self.max_chars, self.value.len())
    }
}

impl fmt::Debug for LogSafeBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            LogSafe::new("0: : session 001 user <bob>").to_string(),
            "0: : session 001 user <bob>"
        );
    }

    #[test]
    fn line_breaks_and_escapes_cannot_forge_a_record() {
        let forged = "bob\r\n2026-01-01T00:00:00Z INFO forged\x1b[31m";
        assert_eq!(
            LogSafe::new(forged).to_string(),
            "bob\\r\\n2026-01-01T00:00:00Z INFO forged\\u{1b}[31m"
        );
    }

    #[test]
    fn bidi_overrides_and_c1_controls_are_escaped() {
        assert_eq!(
            LogSafe::new("a\u{202e}b\u{85}c\u{2028}").to_string(),
            "a\\u{202e}b\\u{85}c\\u{2028}"
        );
    }

    #[test]
    fn a_backslash_is_escaped_so_escapes_cannot_be_faked() {
        assert_eq!(LogSafe::new("a\\nb").to_string(), "a\\\\nb");
    }

    #[test]
    fn long_values_are_truncated_with_the_bytes_left() {
        let long = "x".repeat(1000);
        assert_eq!(
            LogSafe::new(&long).truncated_at(5).to_string(),
            "xxxxx…(995 more bytes)"
        );
        assert_eq!(LogSafe::new(&long).to_string().chars().count(), 200 + 17);
    }

    #[test]
    fn invalid_utf8_becomes_a_replacement_character() {
        assert_eq!(
            LogSafe::bytes(b"ok\xff\xfe\nnext").to_string(),
            "ok\u{fffd}\u{fffd}\\nnext"
        );
    }

    proptest! {
        #[test]
        fn output_never_holds_a_control_character(value in ".*", max in 0usize..300) {
            let shown = LogSafe::new(&value).truncated_at(max).to_string();
            prop_assert!(!shown.chars().any(needs_escape));
            // Every shown input char costs at most 10 output chars, plus the
            // truncation marker.
            prop_assert!(shown.chars().count() <= max * 10 + 40);
        }

        #[test]
        fn bytes_never_hold_a_control_character(value in proptest::collection::vec(any::<u8>(), 0..400)) {
            let shown = LogSafe::bytes(&value).to_string();
            prop_assert!(!shown.chars().any(needs_escape));
        }
    }
}
