//! iptables-restore input, line by line, as iptables-restore 1.8.9 reads it: what kind of line
//! each is (`*table`, `:CHAIN POLICY [p:b]`, `COMMIT`, `#` comment, or a rule/command line), the
//! `[p:b]` prefix of rule lines, and the tokenizer that turns a rule line into argv words
//! (`add_param_to_argv`: double quotes group and may contain `\x` escapes, single quotes are
//! ordinary characters). Applying the lines to a ruleset is the CLI's job.

use std::borrow::Cow;

use crate::error::{param, Result};
use crate::model::Counters;

use super::generic::scan_u64;

/// One input line, classified. Which of these a line is depends on whether a table is open,
/// exactly as in iptables-restore (`*x` inside a table is a rule line, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty line or `#` comment (the text, for `-v`).
    Skip(&'a str),
    /// `*table` (None: nothing after the `*`).
    Table(Option<&'a str>),
    /// `:CHAIN POLICY [p:b]`: name, policy word, and the counters word if any.
    Chain { name: Option<&'a str>, policy: Option<&'a str>, counters: Option<&'a str> },
    Commit,
    /// A rule or command line: `[p:b]` prefix if present, then the rest.
    Rule { counters: Option<(&'a str, &'a str)>, rest: &'a str },
    /// A non-empty line outside a table that is not `*table`: iptables-restore fails it.
    Stray,
}

/// Classifies `line` (without its newline).
pub fn classify(line: &str, in_table: bool, lineno: usize) -> Result<Line<'_>> {
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Skip(line));
    }
    // iptables-restore compares with "COMMIT\n"; we also accept a last line without newline.
    if line == "COMMIT" && in_table {
        return Ok(Line::Commit);
    }
    if let Some(rest) = line.strip_prefix('*').filter(|_| !in_table) {
        return Ok(Line::Table(rest.split([' ', '\t']).find(|w| !w.is_empty())));
    }
    if !in_table {
        return Ok(Line::Stray);
    }
    if let Some(rest) = line.strip_prefix(':') {
        let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
        return Ok(Line::Chain { name: words.next(), policy: words.next(), counters: words.next() });
    }
    let (counters, rest) = split_rule_counters(line, lineno)?;
    Ok(Line::Rule { counters, rest })
}

/// `tokenize_rule_counters`: a leading `[p:b]` and the text after the `]`.
fn split_rule_counters(line: &str, lineno: usize) -> Result<(Option<(&str, &str)>, &str)> {
    let Some(inner) = line.strip_prefix('[') else { return Ok((None, line)) };
    let close = inner.find(']').ok_or_else(|| param(format!("Bad line {lineno}: need ]")))?;
    // strtok semantics: empty fields are skipped.
    let body = &inner[..close];
    let body = body.trim_start_matches(':');
    let (p, b) = match body.split_once(':') {
        Some((p, b)) => (p, b.trim_start_matches(':')),
        None if body.is_empty() => return Err(param(format!("Bad line {lineno}: need :"))),
        None => return Err(param(format!("Bad line {lineno}: need ]"))),
    };
    if b.is_empty() {
        return Err(param(format!("Bad line {lineno}: need ]")));
    }
    Ok((Some((p, b)), &inner[close + 1..]))
}

/// `[p:b]` of a `:CHAIN` line (`parse_counters`: `sscanf("[%llu:%llu]")`).
pub fn parse_counters(word: &str) -> Option<Counters> {
    let inner = word.strip_prefix('[')?;
    let (p, b) = inner.split_once(':')?;
    let packets = scan_u64(p)?;
    let bytes = scan_u64(b)?;
    Some(Counters { packets, bytes })
}

/// iptables-restore's limit on an unquoted word (`param_buffer`), and its message.
const MAX_PARAM: usize = 1024;
const TOO_LONG: &str = "Parameter too long!";

/// Words of a rule line, split like iptables-restore's `add_param_to_argv`: slices of the line
/// unless it quotes.
pub fn split_args(text: &str) -> Result<Vec<Cow<'_, str>>> {
    // bytewise, the words borrowed: the separators and the quote are ASCII, so the slices are
    // whole characters (most bytes are above both: one comparison for them)
    let separator = |c: u8| matches!(c, b' ' | b'\t' | b'\n');
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(16);
    let mut i = 0;
    loop {
        while i < b.len() && separator(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() {
            let c = b[i];
            if c <= b'"' {
                if c == b'"' {
                    return split_quoted(text);
                }
                if separator(c) {
                    break;
                }
            }
            i += 1;
        }
        if i - start >= MAX_PARAM {
            return Err(param(TOO_LONG));
        }
        out.push(Cow::Borrowed(&text[start..i]));
    }
}

/// `split_args` of a line that quotes: words are built byte by byte.
fn split_quoted(text: &str) -> Result<Vec<Cow<'_, str>>> {
    let mut out = Vec::new();
    let mut param_buf: Vec<u8> = Vec::new();
    let mut quote_open = false;
    let mut escaped = false;
    for &c in text.as_bytes() {
        if quote_open {
            if escaped {
                param_buf.push(c);
                escaped = false;
                continue;
            } else if c == b'\\' {
                escaped = true;
                continue;
            } else if c == b'"' {
                // The closing quote ends the word (falls through to the separator case).
                quote_open = false;
            } else {
                param_buf.push(c);
                continue;
            }
        } else if c == b'"' {
            quote_open = true;
            continue;
        }
        match c {
            b'"' => {}
            b' ' | b'\t' | b'\n' => {
                if param_buf.is_empty() {
                    continue;
                }
            }
            _ => {
                param_buf.push(c);
                if param_buf.len() >= MAX_PARAM {
                    return Err(param(TOO_LONG));
                }
                continue;
            }
        }
        out.push(Cow::Owned(String::from_utf8_lossy(&param_buf).into_owned()));
        param_buf.clear();
    }
    if !param_buf.is_empty() {
        out.push(Cow::Owned(String::from_utf8_lossy(&param_buf).into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer() {
        fn w(s: &str) -> Vec<Cow<'_, str>> {
            split_args(s).unwrap_or_default()
        }
        assert_eq!(w("-A INPUT  -j ACCEPT"), ["-A", "INPUT", "-j", "ACCEPT"]);
        assert_eq!(w("--comment \"ssh access\" -j X"), ["--comment", "ssh access", "-j", "X"]);
        assert_eq!(w("--comment 'single quoted'"), ["--comment", "'single", "quoted'"]);
        assert_eq!(w(r#"--comment "double \"escaped\" quotes""#), ["--comment", "double \"escaped\" quotes"]);
        assert_eq!(w(r#"a "" b"#), ["a", "", "b"]);
        assert_eq!(w(r#""ab"cd"#), ["ab", "cd"]);
        assert!(w("   ").is_empty());
        assert_eq!(w(" -A\tINPUT\n"), ["-A", "INPUT"]);
        // A word of 1024 bytes or more is refused, quoted line or not.
        let long = "a".repeat(1024);
        assert!(split_args(&format!("-A {long}")).is_err());
        assert!(split_args(&format!("--comment \"x\" {long}")).is_err());
        assert_eq!(w(&"a".repeat(1023)).len(), 1);
    }

    #[test]
    fn lines() {
        assert_eq!(classify("# x", false, 1).ok(), Some(Line::Skip("# x")));
        assert_eq!(classify("*filter", false, 1).ok(), Some(Line::Table(Some("filter"))));
        assert_eq!(classify("COMMIT", true, 1).ok(), Some(Line::Commit));
        assert_eq!(classify("COMMIT", false, 1).ok(), Some(Line::Stray));
        assert_eq!(
            classify(":INPUT DROP [1:2]", true, 1).ok(),
            Some(Line::Chain { name: Some("INPUT"), policy: Some("DROP"), counters: Some("[1:2]") })
        );
        assert_eq!(
            classify("[5:300] -A INPUT -j ACCEPT", true, 1).ok(),
            Some(Line::Rule { counters: Some(("5", "300")), rest: " -A INPUT -j ACCEPT" })
        );
        assert!(classify("[5:300 -A INPUT", true, 3).is_err());
        assert_eq!(parse_counters("[10:600]"), Some(Counters { packets: 10, bytes: 600 }));
        assert_eq!(parse_counters("10:600"), None);
    }
}
