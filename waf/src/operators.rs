//! Operators (`@rx`, `@pm`, ...), compiled once at load. Every matcher runs in linear time:
//! `@rx` on the `regex` crate, `@pm` on Aho-Corasick, libinjection for SQLi/XSS.

use std::net::IpAddr;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ipnet::IpNet;
use regex::bytes::{Regex, RegexBuilder};

use crate::error::ErrorKind;
use crate::macros::Macro;
use crate::prefilter::{matches_over, required_literals};
use crate::transforms::{ByteSet, holds};

/// A compiled operator.
#[derive(Clone, Debug)]
pub enum Operator {
    /// `@rx`: a regular expression.
    Rx {
        /// The expression.
        regex: Regex,
        /// Literal sets every match meets (a literal of each; lower-cased), most selective
        /// first; empty when none is known.
        literals: Vec<Vec<Vec<u8>>>,
        /// Whether the expression is `^.*$`, which CRS uses to capture each value of a
        /// collection whole: it matches exactly the values without a line feed (`.` is
        /// any byte but `\n`, `$` the end of the value), and the match is the value.
        whole_line: bool,
        /// Whether it was compiled in Unicode mode (see [`compile_regex`]).
        unicode: bool,
    },
    /// `@pm`, `@pmFromFile`: any of the phrases, without case.
    Pm {
        /// The matcher.
        matcher: AhoCorasick,
        /// The phrases, lower-cased.
        phrases: Vec<Vec<u8>>,
    },
    /// `@streq`.
    Streq(Macro),
    /// `@contains`.
    Contains(Macro),
    /// `@containsWord`.
    ContainsWord(Macro),
    /// `@beginsWith`.
    BeginsWith(Macro),
    /// `@endsWith`.
    EndsWith(Macro),
    /// `@within`: the value is a substring of the argument.
    Within(Macro),
    /// `@strmatch`: the argument is a substring of the value.
    StrMatch(Macro),
    /// `@eq`.
    Eq(Macro),
    /// `@ge`.
    Ge(Macro),
    /// `@gt`.
    Gt(Macro),
    /// `@le`.
    Le(Macro),
    /// `@lt`.
    Lt(Macro),
    /// `@validateByteRange`: matches when a byte is outside the ranges.
    ValidateByteRange(Box<[bool; 256]>),
    /// `@validateUrlEncoding`: matches invalid percent-encoding.
    ValidateUrlEncoding,
    /// `@validateUtf8Encoding`: matches invalid UTF-8.
    ValidateUtf8Encoding,
    /// `@unconditionalMatch`.
    Unconditional,
    /// `@noMatch`.
    NoMatch,
    /// `@ipMatch`: the value is an address in one of the networks.
    IpMatch(Vec<IpNet>),
    /// `@detectSQLi`: libinjection's SQL injection detector.
    DetectSqli,
    /// `@detectXSS`: libinjection's XSS detector.
    DetectXss,
}

/// The pattern of the operators with a macro argument, binding it to `$m`: one list for
/// [`Operator::argument`] and [`Operator::argument_mut`].
macro_rules! with_argument {
    ($m:ident) => {
        Operator::Streq($m)
            | Operator::Contains($m)
            | Operator::ContainsWord($m)
            | Operator::BeginsWith($m)
            | Operator::EndsWith($m)
            | Operator::Within($m)
            | Operator::StrMatch($m)
            | Operator::Eq($m)
            | Operator::Ge($m)
            | Operator::Gt($m)
            | Operator::Le($m)
            | Operator::Lt($m)
    };
}

/// The regex size limit: CRS's assembled expressions are large.
const REGEX_SIZE_LIMIT: usize = 256 << 20;

/// Compiles a regular expression the way `@rx` does. Like ModSecurity's PCRE (which runs
/// without UTF mode) the expression matches bytes: `\b`, `\w`, `.` and `(?i)` are ASCII, a
/// non-ASCII character stands for its UTF-8 bytes (so in a class each byte is a member),
/// which also keeps every expression on the regex crate's fast lazy DFA. Expressions that
/// need Unicode (`\x{2028}`, `\p{L}`) compile in Unicode mode.
pub fn compile_regex(pattern: &str) -> Result<Regex, ErrorKind> {
    compile_rx(pattern).map(|(re, _)| re)
}

/// [`compile_regex`], also saying whether the expression was compiled in Unicode mode.
fn compile_rx(pattern: &str) -> Result<(Regex, bool), ErrorKind> {
    let build = |p: &str, unicode: bool| {
        RegexBuilder::new(p)
            .unicode(unicode)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(8 << 20)
            .build()
    };
    match build(&byte_pattern(pattern), false) {
        Ok(re) => Ok((re, false)),
        Err(_) => build(pattern, true)
            .map(|re| (re, true))
            .map_err(|e| ErrorKind::Regex(e.to_string())),
    }
}

/// Writes every non-ASCII character of a pattern as escapes of its UTF-8 bytes, and
/// `\x{HH}` as `\xHH` (which the regex crate reads as a byte inside classes too).
fn byte_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            let rest = &pattern[i + 1..];
            if let Some(hex) = rest
                .strip_prefix("x{")
                .and_then(|r| r.split_once('}'))
                .map(|(h, _)| h)
                .filter(|h| (1..=2).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                out.push_str(&format!("\\x{hex:0>2}"));
                for _ in 0..hex.len() + 3 {
                    chars.next();
                }
                continue;
            }
            out.push('\\');
            if let Some((_, n)) = chars.next() {
                push_byte_char(&mut out, n);
            }
            continue;
        }
        push_byte_char(&mut out, c);
    }
    out
}

fn push_byte_char(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c);
    } else {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
}

fn phrases_matcher(phrases: Vec<Vec<u8>>) -> Result<Operator, ErrorKind> {
    let matcher = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(&phrases)
        .map_err(|e| ErrorKind::Invalid {
            what: "phrase list",
            detail: e.to_string(),
        })?;
    let mut phrases: Vec<Vec<u8>> = phrases.iter().map(|p| p.to_ascii_lowercase()).collect();
    phrases.sort();
    phrases.dedup();
    Ok(Operator::Pm { matcher, phrases })
}

fn macro_arg(arg: &str) -> Result<Macro, ErrorKind> {
    Macro::parse(arg)
}

/// Where `@pmFromFile` finds its files.
#[derive(Clone, Copy, Debug)]
pub enum DataFiles<'a> {
    /// Read them from this directory (the CRS rules directory, where CRS keeps its `.data`
    /// files).
    Dir(&'a Path),
    /// Check only that each is a plain file name, to be read from the CRS rules directory
    /// where the rules are loaded (validation away from the edge, without the CRS at hand).
    /// The phrases compiled are then the file names: such a rule set is for checking, not
    /// for running.
    NamesOnly,
    /// There are none: the Core Rule Set is off, so `@pmFromFile` is refused.
    Absent,
}

impl Operator {
    /// Compiles `@name argument`; `data` resolves `@pmFromFile` files.
    pub fn compile(name: &str, arg: &str, data: DataFiles) -> Result<Operator, ErrorKind> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "rx" => {
                let (regex, unicode) = compile_rx(arg)?;
                let literals = required_literals(regex.as_str(), unicode);
                Operator::Rx {
                    whole_line: arg == "^.*$",
                    regex,
                    literals,
                    unicode,
                }
            }
            "pm" => {
                let words: Vec<Vec<u8>> = arg
                    .split_whitespace()
                    .map(|w| w.as_bytes().to_vec())
                    .collect();
                if words.is_empty() {
                    return Err(ErrorKind::Invalid {
                        what: "@pm argument",
                        detail: "no phrases".into(),
                    });
                }
                phrases_matcher(words)?
            }
            "pmfromfile" | "pmf" => {
                let mut words = Vec::new();
                for file in arg.split_whitespace() {
                    match data {
                        DataFiles::Dir(dir) => {
                            let path = dir.join(file);
                            let text = std::fs::read_to_string(&path).map_err(|e| {
                                ErrorKind::DataFile(path.display().to_string(), e.to_string())
                            })?;
                            words.extend(
                                text.lines()
                                    .map(str::trim)
                                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                                    .map(|l| l.as_bytes().to_vec()),
                            );
                        }
                        DataFiles::NamesOnly => {
                            let plain = !file.is_empty()
                                && file != ".."
                                && file
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                            if !plain {
                                return Err(ErrorKind::DataFile(
                                    file.to_string(),
                                    "not a plain file name of the Core Rule Set's rules directory"
                                        .into(),
                                ));
                            }
                            words.push(file.as_bytes().to_vec());
                        }
                        DataFiles::Absent => {
                            return Err(ErrorKind::DataFile(
                                file.to_string(),
                                "@pmFromFile reads the Core Rule Set's data files, and the Core Rule Set is off".into(),
                            ));
                        }
                    }
                }
                if words.is_empty() {
                    return Err(ErrorKind::Invalid {
                        what: "@pmFromFile data",
                        detail: format!("no phrases in {arg}"),
                    });
                }
                phrases_matcher(words)?
            }
            "streq" => Operator::Streq(macro_arg(arg)?),
            "contains" => Operator::Contains(macro_arg(arg)?),
            "containsword" => Operator::ContainsWord(macro_arg(arg)?),
            "beginswith" => Operator::BeginsWith(macro_arg(arg)?),
            "endswith" => Operator::EndsWith(macro_arg(arg)?),
            "within" => Operator::Within(macro_arg(arg)?),
            "strmatch" => Operator::StrMatch(macro_arg(arg)?),
            "eq" => Operator::Eq(macro_arg(arg)?),
            "ge" => Operator::Ge(macro_arg(arg)?),
            "gt" => Operator::Gt(macro_arg(arg)?),
            "le" => Operator::Le(macro_arg(arg)?),
            "lt" => Operator::Lt(macro_arg(arg)?),
            "validatebyterange" => Operator::ValidateByteRange(byte_ranges(arg)?),
            "validateurlencoding" => Operator::ValidateUrlEncoding,
            "validateutf8encoding" => Operator::ValidateUtf8Encoding,
            "unconditionalmatch" => Operator::Unconditional,
            "nomatch" => Operator::NoMatch,
            "ipmatch" => Operator::IpMatch(networks(arg)?),
            "detectsqli" => Operator::DetectSqli,
            "detectxss" => Operator::DetectXss,
            _ => return Err(ErrorKind::UnsupportedOperator(name.to_string())),
        })
    }

    /// Literal sets every value the operator matches meets (it contains a literal of each;
    /// lower-cased, for an ASCII case-insensitive search), when the operator has such sets:
    /// `@rx` with required literals, `@pm` with its phrases (one set).
    pub fn literals(&self) -> Option<Vec<&[Vec<u8>]>> {
        match self {
            Operator::Rx { literals, .. } if !literals.is_empty() => {
                Some(literals.iter().map(Vec::as_slice).collect())
            }
            Operator::Pm { phrases, .. } => Some(vec![phrases]),
            _ => None,
        }
    }

    /// Per byte set of `sets`: whether the operator can match some value made only of its
    /// bytes, with `arg` its constant argument (empty for operators without one). `false`
    /// is certain; `true` may be wrong (the operators this does not reason about always
    /// say `true`).
    pub fn can_match_over(&self, arg: &[u8], sets: &[ByteSet]) -> Vec<bool> {
        if let Operator::Rx { regex, unicode, .. } = self {
            // One parse of the expression for every set.
            return matches_over(regex.as_str(), *unicode, sets);
        }
        sets.iter()
            .map(|bytes| self.can_match_bytes(arg, bytes))
            .collect()
    }

    /// [`Operator::can_match_over`] for one set, but for `@rx`.
    fn can_match_bytes(&self, arg: &[u8], bytes: &ByteSet) -> bool {
        let has = |b: &u8| holds(bytes, *b);
        let has_either_case =
            |b: &u8| has(b) || has(&b.to_ascii_lowercase()) || has(&b.to_ascii_uppercase());
        match self {
            Operator::Pm { phrases, .. } => phrases.iter().any(|p| p.iter().all(has_either_case)),
            // The argument is part of every value they match.
            Operator::Streq(_)
            | Operator::Contains(_)
            | Operator::ContainsWord(_)
            | Operator::BeginsWith(_)
            | Operator::EndsWith(_)
            | Operator::StrMatch(_) => arg.iter().all(has),
            Operator::ValidateByteRange(allowed) => {
                (0..=255u8).any(|b| has(&b) && !allowed[usize::from(b)])
            }
            Operator::ValidateUrlEncoding => has(&b'%'),
            Operator::ValidateUtf8Encoding => (0x80..=0xffu8).any(|b| has(&b)),
            Operator::NoMatch => false,
            Operator::DetectXss => has(&b'<') || has(&b'='),
            Operator::Rx { .. }
            | Operator::Within(_)
            | Operator::Eq(_)
            | Operator::Ge(_)
            | Operator::Gt(_)
            | Operator::Le(_)
            | Operator::Lt(_)
            | Operator::Unconditional
            | Operator::IpMatch(_)
            | Operator::DetectSqli => true,
        }
    }

    /// The macro argument, for operators that expand one per evaluation.
    pub fn argument(&self) -> Option<&Macro> {
        match self {
            with_argument!(m) => Some(m),
            _ => None,
        }
    }

    /// The macro argument, to replace it with the text it always expands to.
    pub fn argument_mut(&mut self) -> Option<&mut Macro> {
        match self {
            with_argument!(m) => Some(m),
            _ => None,
        }
    }

    /// Runs the operator on `value`, with `arg` the expanded macro argument (empty for
    /// operators without one). With `captures`, the capturing groups of `@rx` (and the
    /// matched phrase or fingerprint of `@pm`/`@detectSQLi`) are stored there, group 0 first.
    pub fn matches(&self, value: &[u8], arg: &[u8], captures: Option<&mut Vec<Vec<u8>>>) -> bool {
        match self {
            Operator::Rx {
                whole_line: true, ..
            } => {
                let matches = !value.contains(&b'\n');
                if let Some(out) = captures.filter(|_| matches) {
                    out.clear();
                    out.push(value.to_vec());
                }
                matches
            }
            Operator::Rx { regex: re, .. } => match captures {
                // Without groups the match is the only capture: one search finds it.
                Some(out) if re.captures_len() == 1 => match re.find(value) {
                    Some(m) => {
                        out.clear();
                        out.push(m.as_bytes().to_vec());
                        true
                    }
                    None => false,
                },
                // Captures cost an allocation: only for values that match.
                Some(out) if re.is_match(value) => match re.captures(value) {
                    Some(c) => {
                        out.clear();
                        for i in 0..c.len().min(10) {
                            out.push(c.get(i).map(|m| m.as_bytes().to_vec()).unwrap_or_default());
                        }
                        true
                    }
                    None => false,
                },
                Some(_) => false,
                None => re.is_match(value),
            },
            Operator::Pm { matcher: ac, .. } => match ac.find(value) {
                Some(m) => {
                    if let Some(out) = captures {
                        out.clear();
                        out.push(value[m.range()].to_vec());
                    }
                    true
                }
                None => false,
            },
            Operator::Streq(_) => value == arg,
            Operator::Contains(_) => contains(value, arg),
            Operator::ContainsWord(_) => contains_word(value, arg),
            Operator::BeginsWith(_) => value.starts_with(arg),
            Operator::EndsWith(_) => value.ends_with(arg),
            Operator::Within(_) => contains(arg, value),
            Operator::StrMatch(_) => contains(value, arg),
            Operator::Eq(_) => atoi(value) == atoi(arg),
            Operator::Ge(_) => atoi(value) >= atoi(arg),
            Operator::Gt(_) => atoi(value) > atoi(arg),
            Operator::Le(_) => atoi(value) <= atoi(arg),
            Operator::Lt(_) => atoi(value) < atoi(arg),
            Operator::ValidateByteRange(allowed) => value.iter().any(|&b| !allowed[usize::from(b)]),
            Operator::ValidateUrlEncoding => !valid_url_encoding(value),
            Operator::ValidateUtf8Encoding => std::str::from_utf8(value).is_err(),
            Operator::Unconditional => true,
            Operator::NoMatch => false,
            Operator::IpMatch(nets) => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Operator::DetectSqli => {
                if sql_single_token(value) {
                    return false;
                }
                let r = libinjectionrs::detect_sqli(value);
                if r.is_injection() {
                    if let (Some(out), Some(fp)) = (captures, r.fingerprint.as_ref()) {
                        out.clear();
                        out.push(
                            fp.as_bytes()
                                .iter()
                                .copied()
                                .take_while(|&b| b != 0)
                                .collect(),
                        );
                    }
                    true
                } else {
                    false
                }
            }
            Operator::DetectXss => {
                xss_possible(value) && libinjectionrs::detect_xss(value).is_injection()
            }
        }
    }
}

/// Whether libinjection reads `value` as one word or one number, which it never calls SQL
/// injection: a letter then letters, digits and underscores (one word token, whatever
/// keyword it is), or digits only (one number token). Its tokenizer splits words only at
/// characters these values do not hold, and no one-token fingerprint but `X` (an evil
/// token, which neither can be) is on its blacklist; the tests check every keyword it
/// knows. Most argument names and many values of a request are such words, and
/// libinjection's three contexts cost microseconds per value.
fn sql_single_token(value: &[u8]) -> bool {
    match value.first() {
        Some(first) if first.is_ascii_alphabetic() => value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_'),
        Some(_) => value.iter().all(u8::is_ascii_digit),
        None => false,
    }
}

/// Whether libinjection's XSS check can find anything in `value`. Each of its findings
/// is a token of its HTML5 tokenizer: a tag, doctype or comment, which begins at a `<`, or
/// an attribute's value after a blacklisted name, which only an `=` after the name
/// starts (in each of the five contexts it reads a value in, the quoted ones starting
/// inside a value that follows no name). A value with neither byte, as ids, numbers and
/// most text are, is never XSS to it; the tests run the real check on such values built
/// from what it looks for.
fn xss_possible(value: &[u8]) -> bool {
    memchr::memchr2(b'<', b'=', value).is_some()
}

/// Whether `needle` occurs in `hay` (`@contains`, `@within`), with a substring search
/// instead of a comparison at every position (CRS's 920450 runs `@within` on a list for
/// every request header).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // In a short haystack a short needle is compared where one of its bytes occurs:
    // building a `memmem` searcher costs more than such a search (CRS's `@within` lists are
    // a few hundred bytes). That byte is its first letter or digit: CRS wraps each entry of
    // a list and each value it looks up in delimiters (`/proxy/`, `|text/html|`), which
    // occur at every entry, while a letter occurs at few. Both bounds cap the work (64 KiB of
    // comparisons at worst); a long value from the request gets the searcher, linear
    // whatever its bytes.
    if needle.is_empty() {
        return true;
    }
    if needle.len() <= 64 && hay.len() <= 1024 {
        let at = needle
            .iter()
            .position(u8::is_ascii_alphanumeric)
            .unwrap_or(0);
        // The anchor is searched from `at` bytes into the haystack, so an offset in that
        // slice is where the needle would start in the whole haystack.
        return hay.len() >= needle.len()
            && memchr::memchr_iter(needle[at], &hay[at..=hay.len() - needle.len() + at])
                .any(|start| hay[start..].starts_with(needle));
    }
    memchr::memmem::find(hay, needle).is_some()
}

/// Whether `needle` occurs in `hay` with no word character on either side.
fn contains_word(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    memchr::memmem::find_iter(hay, needle).any(|i| {
        !word(i.checked_sub(1).and_then(|j| hay.get(j))) && !word(hay.get(i + needle.len()))
    })
}

/// C's `atoi`: optional blanks and sign, then digits; anything else gives 0.
pub fn atoi(s: &[u8]) -> i64 {
    let s = s.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if neg { -v } else { v }
}

fn valid_url_encoding(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            match v.get(i + 1..i + 3) {
                Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

fn byte_ranges(arg: &str) -> Result<Box<[bool; 256]>, ErrorKind> {
    let mut allowed = Box::new([false; 256]);
    let bad = |detail: String| ErrorKind::Invalid {
        what: "@validateByteRange argument",
        detail,
    };
    for part in arg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u8 = lo.parse().map_err(|_| bad(part.to_string()))?;
        let hi: u8 = hi.parse().map_err(|_| bad(part.to_string()))?;
        if lo > hi {
            return Err(bad(part.to_string()));
        }
        for b in lo..=hi {
            allowed[usize::from(b)] = true;
        }
    }
    Ok(allowed)
}

fn networks(arg: &str) -> Result<Vec<IpNet>, ErrorKind> {
    arg.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|e| ErrorKind::Invalid {
                    what: "@ipMatch address",
                    detail: format!("{p}: {e}"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_operators_find_needles_anywhere_and_words_only_between_non_word_bytes() {
        assert!(contains(b"/proxy/ /lock-token/", b"/lock-token/"));
        assert!(contains(b"/proxy/", b"/proxy/"));
        assert!(contains(b"abc", b""));
        assert!(!contains(b"/proxy/", b"/proxy-x/"));
        assert!(!contains(b"ab", b"abc"));
        assert!(contains_word(b"select 1", b"select"));
        assert!(contains_word(b"1;select", b"select"));
        assert!(!contains_word(b"selected", b"select"));
        assert!(!contains_word(b"_select", b"select"));
        // A later occurrence counts when the first is inside a word.
        assert!(contains_word(b"unselect select", b"select"));
        assert!(contains_word(b"x", b""));
    }

    #[test]
    fn libinjection_calls_no_single_word_or_number_sql_injection() {
        let mut words: Vec<Vec<u8>> = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS
            .iter()
            .map(|k| k.word.as_bytes().to_vec())
            .filter(|w| sql_single_token(w))
            .collect();
        assert!(words.len() > 500, "{} keywords", words.len());
        // Lower and mixed case, digits and underscores, plain names and numbers.
        let more: Vec<Vec<u8>> = words
            .iter()
            .flat_map(|w| [w.to_ascii_lowercase(), [w.as_slice(), b"_1x"].concat()])
            .collect();
        words.extend(more);
        words.extend(
            [
                "Ascending",
                "SortName",
                "true",
                "x1",
                "a_b_c",
                "0",
                "100",
                "0123456789",
            ]
            .map(|w| w.as_bytes().to_vec()),
        );
        for w in &words {
            assert!(sql_single_token(w));
            assert!(
                !libinjectionrs::detect_sqli(w).is_injection(),
                "{}",
                String::from_utf8_lossy(w)
            );
        }
        for not_one in ["1a", "a b", "a,b", "a-b", "a.b", "_a", "", "1'", "a'"] {
            assert!(!sql_single_token(not_one.as_bytes()), "{not_one}");
        }
    }

    #[test]
    fn libinjection_finds_no_xss_without_a_tag_or_an_attribute_value() {
        // What its check looks for, and what moves its tokenizer between states, joined at
        // random into values without `<` or `=`: none is XSS to it.
        const PARTS: &[&str] = &[
            "script",
            "SCRIPT",
            "iframe",
            "svg",
            "style",
            "img",
            "object",
            "embed",
            "xml",
            "onerror",
            "onload",
            "OnMouseOver",
            "href",
            "src",
            "formaction",
            "xmlns",
            "xlink:href",
            "attributeName",
            "values",
            "to",
            "from",
            "by",
            "data:",
            "javascript:",
            "JaVaScRiPt:",
            "vbscript:",
            "view-source:",
            "alert(1)",
            "DOCTYPE",
            "!DOCTYPE",
            "[if",
            "import",
            "IMPORT",
            "ENTITY",
            "?",
            "!",
            "--",
            "-->",
            "]]>",
            "%>",
            "'",
            "\"",
            "`",
            ">",
            "/>",
            "/",
            " ",
            "\t",
            "\n",
            "\r",
            "\u{b}",
            "\u{c}",
            "\0",
            "&#",
            "&lt;",
            ";",
            ":",
            "(",
            ")",
            "x",
            "1",
            "a1b2c3d4e5f60718",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        };
        for _ in 0..50_000 {
            let value: String = (0..1 + next(8)).map(|_| PARTS[next(PARTS.len())]).collect();
            assert!(!xss_possible(value.as_bytes()));
            assert!(
                !libinjectionrs::detect_xss(value.as_bytes()).is_injection(),
                "{value:?}"
            );
        }
        // With either byte the check runs, and finds what it looks for.
        for xss in [
            "<script>alert(1)</script>",
            "x onerror=alert(1)",
            "' onload=x",
            "<!DOCTYPE x>",
        ] {
            assert!(xss_possible(xss.as_bytes()));
            assert!(
                libinjectionrs::detect_xss(xss.as_bytes()).is_injection(),
                "{xss}"
            );
        }
    }

    fn op(name: &str, arg: &str) -> Operator {
        Operator::compile(name, arg, DataFiles::Dir(Path::new("."))).unwrap()
    }

    #[test]
    fn contains_finds_short_and_long_needles() {
        assert!(contains(b"abc", b""));
        assert!(contains(b"aaab", b"aab"));
        assert!(contains(b"/proxy/ /expect/", b"/expect/"));
        assert!(!contains(b"/proxy/ /expect/", b"/expect//"));
        assert!(!contains(b"ab", b"abc"));
        let long = b"0123456789abcdefghijklmnopqrstuvwxyz";
        assert!(contains(b"--0123456789abcdefghijklmnopqrstuvwxyz--", long));
        assert!(!contains(b"--0123456789abcdefghijklmnopqrstuvwxy--", long));
        // Anchored on a letter after a delimiter, at the haystack's edges too.
        assert!(contains(b"/proxy/ /expect/", b"/proxy/"));
        assert!(contains(b"|text/html|", b"|text/html|"));
        assert!(!contains(b"/proxy/ /expect/", b" /expect/ "));
        assert!(contains(b"x", b"x"));
        assert!(!contains(b"/x", b"/x/"));
        assert!(contains(b"--//--", b"//"));
        let mut big = vec![b'a'; 4096];
        assert!(!contains(&big, b"ab"));
        big.push(b'b');
        assert!(contains(&big, b"ab"));
    }

    #[test]
    fn a_whole_line_expression_matches_as_its_regex_does() {
        let whole = op("rx", "^.*$");
        assert!(matches!(
            whole,
            Operator::Rx {
                whole_line: true,
                ..
            }
        ));
        let regex = compile_regex("^.*$").unwrap();
        for value in [
            &b""[..],
            b"accept",
            b"a\nb",
            b"\n",
            b"x\n",
            b"\xff\xfe",
            b"a\rb",
        ] {
            let mut caps = Vec::new();
            let matched = whole.matches(value, b"", Some(&mut caps));
            assert_eq!(matched, regex.is_match(value), "{value:?}");
            if matched {
                assert_eq!(caps, [regex.find(value).unwrap().as_bytes()], "{value:?}");
            }
            assert_eq!(whole.matches(value, b"", None), matched);
        }
        assert!(matches!(
            op("rx", "^.*$x"),
            Operator::Rx {
                whole_line: false,
                ..
            }
        ));
    }

    #[test]
    fn rx_captures_groups() {
        let mut caps = Vec::new();
        assert!(op("rx", "a(b+)c").matches(b"xabbc", b"", Some(&mut caps)));
        assert_eq!(caps, vec![b"abbc".to_vec(), b"bb".to_vec()]);
        // Without groups, the match alone.
        assert!(op("rx", "b+").matches(b"abbc", b"", Some(&mut caps)));
        assert_eq!(caps, vec![b"bb".to_vec()]);
        assert!(!op("rx", "^b").matches(b"abbc", b"", Some(&mut caps)));
    }

    #[test]
    fn rx_matches_bytes_like_pcre_without_utf() {
        // Each UTF-8 byte of a non-ASCII class member is a member.
        let re = compile_regex("^[’]{3}$").unwrap();
        assert!(re.is_match("’".as_bytes()));
        assert!(compile_regex("\\xbc").unwrap().is_match(b"\xbc"));
        assert!(
            compile_regex("(?i)\\bselect\\b")
                .unwrap()
                .is_match(b"x SELECT y")
        );
        assert!(compile_regex("\\p{L}").unwrap().is_match("é".as_bytes()));
        let re = compile_regex("^\\x{bc}[^>\\x{be}]+$").unwrap();
        assert!(re.is_match(b"\xbcab"));
        assert!(!re.is_match(b"\xbca\xbe"));
        assert_eq!(byte_pattern("\\\\x{41}é"), "\\\\x{41}\\xC3\\xA9");
    }

    #[test]
    fn pm_is_case_insensitive() {
        assert!(op("pm", "select union").matches(b"x UNION y", b"", None));
        assert!(!op("pm", "select union").matches(b"nothing", b"", None));
    }

    #[test]
    fn numeric_and_string_comparisons() {
        assert!(op("lt", "5").matches(b"4", b"5", None));
        assert!(!op("ge", "5").matches(b"4", b"5", None));
        assert!(op("within", "x").matches(b"GET", b"GET HEAD POST", None));
        assert!(!op("within", "x").matches(b"PUT", b"GET HEAD POST", None));
        assert!(op("containsWord", "x").matches(b"a union b", b"union", None));
        assert!(!op("containsWord", "x").matches(b"reunion", b"union", None));
        assert_eq!(atoi(b" -12abc"), -12);
    }

    #[test]
    fn validators() {
        assert!(op("validateByteRange", "32-126").matches(b"a\x01", b"", None));
        assert!(!op("validateByteRange", "32-126, 9").matches(b"a\tb", b"", None));
        assert!(op("validateUrlEncoding", "").matches(b"%zz", b"", None));
        assert!(!op("validateUrlEncoding", "").matches(b"%41", b"", None));
        assert!(op("validateUtf8Encoding", "").matches(b"\xff", b"", None));
        assert!(op("ipMatch", "10.0.0.0/8,::1").matches(b"10.1.2.3", b"", None));
    }

    #[test]
    fn libinjection_detectors() {
        assert!(op("detectSQLi", "").matches(b"1' OR '1'='1", b"", None));
        assert!(!op("detectSQLi", "").matches(b"hello world", b"", None));
        assert!(op("detectXSS", "").matches(b"<script>alert(1)</script>", b"", None));
    }

    #[test]
    fn unknown_operator_is_reported() {
        assert!(matches!(
            Operator::compile("rbl", "x", DataFiles::Dir(Path::new("."))),
            Err(ErrorKind::UnsupportedOperator(_))
        ));
    }
}
