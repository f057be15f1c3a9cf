//! Bounds on what a config may be, checked before the KDL parser sees the text: the parser
//! recurses once per nesting level (and once per `*` or `/` inside a block comment), so text it
//! would overflow the stack on is refused with a diagnostic first.

/// The largest config file kiln reads (a real matrix with its modules is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// How deep `{ … }` blocks may nest (kiln's own language needs 4).
pub const MAX_NESTING: usize = 64;

/// How deep `/* … */` comments may nest.
pub const MAX_COMMENT_NESTING: usize = 16;

/// How many `*` and `/` one block comment may hold (the parser recurses on each).
pub const MAX_COMMENT_MARKS: usize = 2048;

/// How long a chain of imports may be.
pub const MAX_IMPORT_DEPTH: usize = 32;

/// The stack the KDL parser runs on: its error recovery recurses once per bad token, so the
/// stack grows with the text (bounded by [`MAX_CONFIG_BYTES`]). Only the pages it touches are
/// ever used.
pub fn parser_stack_bytes(text_len: usize) -> usize {
    16 * 1024 * 1024 + text_len.saturating_mul(4096)
}

/// What the pre-scan found, at a byte offset of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooComplex {
    /// A `{` that opens block number `MAX_NESTING + 1`.
    Nesting { offset: usize },
    /// A `/*` nested too deeply, or a block comment with too many `*`/`/`, starting here.
    Comment { offset: usize },
}

/// Scans KDL text for nesting the parser cannot take: block depth and block comments. Strings
/// (quoted, multi-line and raw) and line comments are skipped, so braces inside them do not
/// count. The scan is linear and never fails: text it does not understand is left to the parser.
pub fn scan(text: &str) -> Option<TooComplex> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(TooComplex::Nesting { offset: i });
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = (i + 2..b.len())
                    .find(|&j| newline_at(b, j))
                    .unwrap_or(b.len());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match block_comment(b, i) {
                Ok(end) => i = end,
                Err(e) => return Some(e),
            },
            // A string that is not terminated is scanned as code: the parser's recovery may
            // read its contents as nodes.
            b'"' => i = quoted(b, i).unwrap_or(i + 1),
            b'#' => {
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + hashes) == Some(&b'"') {
                    i = raw(b, i + hashes, hashes).unwrap_or(i + hashes + 1);
                } else {
                    i += hashes;
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether a KDL 2 newline starts at `i`: CR, LF, VT, FF, NEL, LS or PS.
fn newline_at(b: &[u8], i: usize) -> bool {
    matches!(b[i], b'\n' | b'\r' | 0x0b | 0x0c)
        || b[i..].starts_with("\u{85}".as_bytes())
        || b[i..].starts_with("\u{2028}".as_bytes())
        || b[i..].starts_with("\u{2029}".as_bytes())
}

/// Skips a block comment starting at `start` (`/*`); its end, or the problem.
fn block_comment(b: &[u8], start: usize) -> Result<usize, TooComplex> {
    let mut i = start + 2;
    let mut nesting = 1usize;
    let mut marks = 0usize;
    let too_complex = TooComplex::Comment { offset: start };
    loop {
        match b.get(i) {
            None => return Ok(b.len()),
            Some(b'*') if b.get(i + 1) == Some(&b'/') => {
                nesting -= 1;
                i += 2;
                if nesting == 0 {
                    return Ok(i);
                }
            }
            Some(b'/') if b.get(i + 1) == Some(&b'*') => {
                nesting += 1;
                i += 2;
                if nesting > MAX_COMMENT_NESTING {
                    return Err(too_complex);
                }
            }
            Some(b'*' | b'/') => {
                marks += 1;
                i += 1;
                if marks > MAX_COMMENT_MARKS {
                    return Err(too_complex);
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// Skips a quoted string (`"…"` or `"""…"""`) starting at `start`; its end, or `None` when it
/// is not terminated (a single-line string ends at a newline for the parser too).
fn quoted(b: &[u8], start: usize) -> Option<usize> {
    let multi = b[start..].starts_with(b"\"\"\"");
    let mut i = start + if multi { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' if !multi => return Some(i + 1),
            b'"' if b[i..].starts_with(b"\"\"\"") => return Some(i + 3),
            _ if !multi && newline_at(b, i) => return None,
            _ => i += 1,
        }
    }
    None
}

/// Skips a raw string whose opening quote is at `quote`, after `hashes` `#`s; its end, or `None`
/// when it is not terminated.
fn raw(b: &[u8], quote: usize, hashes: usize) -> Option<usize> {
    let multi = b[quote..].starts_with(b"\"\"\"");
    let close_quotes = if multi { 3 } else { 1 };
    let mut i = quote + close_quotes;
    while i < b.len() {
        if b[i..].starts_with(&b"\"\"\""[..close_quotes])
            && b[i + close_quotes..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == b'#')
                .count()
                == hashes
        {
            return Some(i + close_quotes + hashes);
        }
        if !multi && newline_at(b, i) {
            return None;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let ok = "a { b { c \"{{{{\" #\"{{\"# } } // {{{{\n/* { */";
        assert_eq!(scan(ok), None);
        let deep = "a{".repeat(MAX_NESTING + 1);
        assert_eq!(
            scan(&deep),
            Some(TooComplex::Nesting {
                offset: 2 * MAX_NESTING + 1
            })
        );
        assert_eq!(scan(&"a{".repeat(MAX_NESTING)), None);
        let in_string = format!("x \"{}\"", "{".repeat(1000));
        assert_eq!(scan(&in_string), None);
        let in_raw = format!("x ##\"\"#{}\"##", "{".repeat(1000));
        assert_eq!(scan(&in_raw), None);
        let in_multi = format!("x \"\"\"\n{}\n\"\"\"", "{".repeat(1000));
        assert_eq!(scan(&in_multi), None);
    }

    #[test]
    fn an_unterminated_string_is_scanned_as_code() {
        for newline in ["\n", "\r", "\u{85}", "\u{2028}", "\u{2029}", "\u{c}"] {
            let text = format!("step \"b{newline}{}\"", "{".repeat(MAX_NESTING + 1));
            assert!(
                matches!(scan(&text), Some(TooComplex::Nesting { .. })),
                "{newline:?}"
            );
            let comment = format!("// x{newline}{}", "{".repeat(MAX_NESTING + 1));
            assert!(scan(&comment).is_some(), "{newline:?}");
        }
    }

    #[test]
    fn block_comments_are_bounded() {
        assert_eq!(scan("/* /* */ */ a"), None);
        assert_eq!(
            scan(&format!("x\n{}", "/*".repeat(1000))),
            Some(TooComplex::Comment { offset: 2 })
        );
        let stars = format!("/*{}*/", "*".repeat(MAX_COMMENT_MARKS + 1));
        assert_eq!(scan(&stars), Some(TooComplex::Comment { offset: 0 }));
        assert_eq!(scan(&format!("/*{}*/", "*".repeat(80))), None);
    }
}
