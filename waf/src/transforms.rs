//! Transformations (`t:...`): pure functions from bytes to bytes that return the input
//! borrowed when they change nothing.

use std::borrow::Cow;

use base64::Engine as _;
use sha1::Digest as _;

use crate::error::ErrorKind;

/// One transformation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transform {
    /// `t:lowercase` (ASCII).
    Lowercase,
    /// `t:uppercase` (ASCII).
    Uppercase,
    /// `t:urlDecode`: `%XX` and `+`.
    UrlDecode,
    /// `t:urlDecodeUni`: `%XX`, `%uXXXX` and `+`.
    UrlDecodeUni,
    /// `t:urlEncode`.
    UrlEncode,
    /// `t:htmlEntityDecode`.
    HtmlEntityDecode,
    /// `t:jsDecode`.
    JsDecode,
    /// `t:cssDecode`.
    CssDecode,
    /// `t:escapeSeqDecode`: ANSI C escapes.
    EscapeSeqDecode,
    /// `t:utf8toUnicode`: multi-byte UTF-8 to `%uXXXX`.
    Utf8ToUnicode,
    /// `t:removeNulls`.
    RemoveNulls,
    /// `t:replaceNulls`: NUL to space.
    ReplaceNulls,
    /// `t:removeWhitespace`.
    RemoveWhitespace,
    /// `t:compressWhitespace`.
    CompressWhitespace,
    /// `t:replaceComments`: C comments to one space.
    ReplaceComments,
    /// `t:removeComments`: C, SQL and shell comments removed.
    RemoveComments,
    /// `t:removeCommentsChar`: comment markers removed.
    RemoveCommentsChar,
    /// `t:cmdLine`: shell-evasion normalisation.
    CmdLine,
    /// `t:normalizePath` (alias `normalisePath`).
    NormalizePath,
    /// `t:normalizePathWin`: backslashes to slashes, then `normalizePath`.
    NormalizePathWin,
    /// `t:length`: the decimal length.
    Length,
    /// `t:base64Decode`.
    Base64Decode,
    /// `t:base64DecodeExt`: skips characters outside the alphabet.
    Base64DecodeExt,
    /// `t:base64Encode`.
    Base64Encode,
    /// `t:sha1`: the raw digest.
    Sha1,
    /// `t:hexEncode`.
    HexEncode,
    /// `t:hexDecode`.
    HexDecode,
    /// `t:trim`.
    Trim,
    /// `t:trimLeft`.
    TrimLeft,
    /// `t:trimRight`.
    TrimRight,
}

/// A set of byte values, as four 64-bit words.
pub type ByteSet = [u64; 4];

/// The set of the bytes of `bytes` and of the range `lo..=hi`.
const fn byte_set(bytes: &[u8], lo: u8, hi: u8) -> ByteSet {
    let mut set = [0u64; 4];
    let mut i = 0;
    while i < bytes.len() {
        set[(bytes[i] >> 6) as usize] |= 1 << (bytes[i] & 63);
        i += 1;
    }
    let mut b = lo as usize;
    while b <= hi as usize && lo <= hi {
        set[b >> 6] |= 1 << (b & 63);
        b += 1;
    }
    set
}

/// The bytes `is_space` accepts.
const SPACES: &[u8] = b" \t\n\r\x0b\x0c\xa0";
const NO_RANGE: (u8, u8) = (1, 0);

/// The bytes present in a value.
pub fn bytes_present(value: &[u8]) -> ByteSet {
    let mut set = [0u64; 4];
    for &b in value {
        insert(&mut set, b);
    }
    set
}

/// The set of the bytes of `bytes`.
pub const fn set_of(bytes: &[u8]) -> ByteSet {
    byte_set(bytes, NO_RANGE.0, NO_RANGE.1)
}

/// Whether `set` holds byte `b`.
pub fn holds(set: &ByteSet, b: u8) -> bool {
    set[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

/// Whether two byte sets have no byte in common.
pub fn disjoint(a: ByteSet, b: ByteSet) -> bool {
    a.iter().zip(b).all(|(x, y)| x & y == 0)
}

/// Whether every byte of `inner` is in `outer`.
pub fn within(inner: &ByteSet, outer: &ByteSet) -> bool {
    inner.iter().zip(outer).all(|(i, o)| i & !o == 0)
}

/// Adds byte `b` to `set`.
fn insert(set: &mut ByteSet, b: u8) {
    set[usize::from(b >> 6)] |= 1 << (b & 63);
}

impl Transform {
    /// The bytes without which the transformation leaves a value as it is, or `None` when
    /// it may change any value. The engine skips a transformation on a value that holds
    /// none of them.
    pub fn triggers(self) -> Option<ByteSet> {
        const UPPER: ByteSet = byte_set(b"", b'A', b'Z');
        const LOWER: ByteSet = byte_set(b"", b'a', b'z');
        const PERCENT_PLUS: ByteSet = byte_set(b"%+", NO_RANGE.0, NO_RANGE.1);
        const AMP: ByteSet = byte_set(b"&", NO_RANGE.0, NO_RANGE.1);
        const BACKSLASH: ByteSet = byte_set(b"\\", NO_RANGE.0, NO_RANGE.1);
        const HIGH: ByteSet = byte_set(b"", 0x80, 0xff);
        const NUL: ByteSet = byte_set(b"\0", NO_RANGE.0, NO_RANGE.1);
        const SPACE: ByteSet = byte_set(SPACES, NO_RANGE.0, NO_RANGE.1);
        const SLASH: ByteSet = byte_set(b"/", NO_RANGE.0, NO_RANGE.1);
        const COMMENT: ByteSet = byte_set(b"#/*-", NO_RANGE.0, NO_RANGE.1);
        const CMD: ByteSet = byte_set(b"\"'\\^ ,;\t\r\n", b'A', b'Z');
        const PATH: ByteSet = byte_set(b"/.", NO_RANGE.0, NO_RANGE.1);
        const PATH_WIN: ByteSet = byte_set(b"/.\\", NO_RANGE.0, NO_RANGE.1);
        Some(match self {
            Transform::Lowercase => UPPER,
            Transform::Uppercase => LOWER,
            Transform::UrlDecode | Transform::UrlDecodeUni => PERCENT_PLUS,
            Transform::HtmlEntityDecode => AMP,
            Transform::JsDecode | Transform::CssDecode | Transform::EscapeSeqDecode => BACKSLASH,
            Transform::Utf8ToUnicode => HIGH,
            Transform::RemoveNulls | Transform::ReplaceNulls => NUL,
            Transform::RemoveWhitespace
            | Transform::CompressWhitespace
            | Transform::Trim
            | Transform::TrimLeft
            | Transform::TrimRight => SPACE,
            Transform::ReplaceComments => SLASH,
            Transform::RemoveComments | Transform::RemoveCommentsChar => COMMENT,
            Transform::CmdLine => CMD,
            Transform::NormalizePath => PATH,
            Transform::NormalizePathWin => PATH_WIN,
            Transform::UrlEncode
            | Transform::Length
            | Transform::Base64Decode
            | Transform::Base64DecodeExt
            | Transform::Base64Encode
            | Transform::Sha1
            | Transform::HexEncode
            | Transform::HexDecode => return None,
        })
    }

    /// The bytes a value made of `input`'s bytes may hold once transformed: every byte of
    /// the result is in the set returned (which may hold more). A transformation that may
    /// produce any byte from such a value gives every byte.
    pub fn image(self, input: ByteSet) -> ByteSet {
        const ALL: ByteSet = [u64::MAX; 4];
        const UPPER: u64 = 0x07FF_FFFE; // 'A'..='Z' in word 1
        const LOWER: u64 = UPPER << 32; // 'a'..='z' in word 1
        const SPACE: ByteSet = set_of(b" ");
        const SLASH: ByteSet = set_of(b"/");
        const DIGITS: ByteSet = byte_set(b"", b'0', b'9');
        let has = |b: u8| holds(&input, b);
        let with = |extra: ByteSet| -> ByteSet { std::array::from_fn(|w| input[w] | extra[w]) };
        let lowered = {
            let mut set = input;
            set[1] = (set[1] & !UPPER) | ((set[1] & UPPER) << 32);
            set
        };
        if self.triggers().is_some_and(|t| disjoint(t, input)) {
            return input;
        }
        match self {
            Transform::Lowercase => lowered,
            Transform::Uppercase => {
                let mut set = input;
                set[1] = (set[1] & !LOWER) | ((set[1] & LOWER) >> 32);
                set
            }
            Transform::UrlDecode | Transform::UrlDecodeUni if !has(b'%') => with(SPACE),
            Transform::RemoveNulls
            | Transform::RemoveWhitespace
            | Transform::Trim
            | Transform::TrimLeft
            | Transform::TrimRight => input,
            Transform::ReplaceNulls
            | Transform::CompressWhitespace
            | Transform::ReplaceComments
            | Transform::RemoveComments
            | Transform::RemoveCommentsChar => with(SPACE),
            Transform::CmdLine => std::array::from_fn(|w| input[w] | lowered[w] | SPACE[w]),
            Transform::NormalizePath | Transform::NormalizePathWin => with(SLASH),
            Transform::Length => DIGITS,
            Transform::JsDecode => js_image(input),
            Transform::Base64Decode | Transform::Base64DecodeExt => base64_image(input),
            Transform::HexDecode => hex_image(input),
            _ => ALL,
        }
    }

    /// The transformation by name (case-insensitive). `None` for `t:none`, which is
    /// handled by the caller.
    pub fn from_name(name: &str) -> Result<Transform, ErrorKind> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "lowercase" => Transform::Lowercase,
            "uppercase" => Transform::Uppercase,
            "urldecode" => Transform::UrlDecode,
            "urldecodeuni" => Transform::UrlDecodeUni,
            "urlencode" => Transform::UrlEncode,
            "htmlentitydecode" => Transform::HtmlEntityDecode,
            "jsdecode" => Transform::JsDecode,
            "cssdecode" => Transform::CssDecode,
            "escapeseqdecode" => Transform::EscapeSeqDecode,
            "utf8tounicode" => Transform::Utf8ToUnicode,
            "removenulls" => Transform::RemoveNulls,
            "replacenulls" => Transform::ReplaceNulls,
            "removewhitespace" => Transform::RemoveWhitespace,
            "compresswhitespace" => Transform::CompressWhitespace,
            "replacecomments" => Transform::ReplaceComments,
            "removecomments" => Transform::RemoveComments,
            "removecommentschar" => Transform::RemoveCommentsChar,
            "cmdline" => Transform::CmdLine,
            "normalizepath" | "normalisepath" => Transform::NormalizePath,
            "normalizepathwin" | "normalisepathwin" => Transform::NormalizePathWin,
            "length" => Transform::Length,
            "base64decode" => Transform::Base64Decode,
            "base64decodeext" => Transform::Base64DecodeExt,
            "base64encode" => Transform::Base64Encode,
            "sha1" => Transform::Sha1,
            "hexencode" => Transform::HexEncode,
            "hexdecode" => Transform::HexDecode,
            "trim" => Transform::Trim,
            "trimleft" => Transform::TrimLeft,
            "trimright" => Transform::TrimRight,
            _ => return Err(ErrorKind::UnsupportedTransformation(name.to_string())),
        })
    }

    /// The transformed value, or `None` when the transformation left the input as it was
    /// (a borrowed result is the input itself unless it is shorter, as `t:trim`'s is).
    pub fn changed(self, input: &[u8]) -> Option<Vec<u8>> {
        match self.apply(input) {
            Cow::Borrowed(b) if b.len() == input.len() => None,
            other => Some(other.into_owned()),
        }
    }

    /// Applies the transformation.
    pub fn apply<'a>(self, input: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Transform::Lowercase => {
                if input.iter().any(u8::is_ascii_uppercase) {
                    Cow::Owned(input.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::Uppercase => {
                if input.iter().any(u8::is_ascii_lowercase) {
                    Cow::Owned(input.to_ascii_uppercase())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::UrlDecode => {
                if input.iter().any(|&b| b == b'%' || b == b'+') {
                    Cow::Owned(url_decode(input, false))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::UrlDecodeUni => {
                if input.iter().any(|&b| b == b'%' || b == b'+') {
                    Cow::Owned(url_decode(input, true))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::UrlEncode => Cow::Owned(url_encode(input)),
            Transform::HtmlEntityDecode => {
                if input.contains(&b'&') {
                    Cow::Owned(html_entity_decode(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::JsDecode => {
                if input.contains(&b'\\') {
                    Cow::Owned(js_decode(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::CssDecode => {
                if input.contains(&b'\\') {
                    Cow::Owned(css_decode(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::EscapeSeqDecode => {
                if input.contains(&b'\\') {
                    Cow::Owned(escape_seq_decode(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::Utf8ToUnicode => {
                if input.is_ascii() {
                    Cow::Borrowed(input)
                } else {
                    Cow::Owned(utf8_to_unicode(input))
                }
            }
            Transform::RemoveNulls => {
                if input.contains(&0) {
                    Cow::Owned(input.iter().copied().filter(|&b| b != 0).collect())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::ReplaceNulls => {
                if input.contains(&0) {
                    Cow::Owned(
                        input
                            .iter()
                            .map(|&b| if b == 0 { b' ' } else { b })
                            .collect(),
                    )
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::RemoveWhitespace => {
                if input.iter().any(|&b| is_space(b)) {
                    Cow::Owned(input.iter().copied().filter(|&b| !is_space(b)).collect())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::CompressWhitespace => compress_whitespace(input),
            Transform::ReplaceComments => {
                if input.windows(2).any(|w| w == b"/*") {
                    Cow::Owned(replace_comments(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::RemoveComments | Transform::RemoveCommentsChar
                if !has_comment_marks(input) =>
            {
                Cow::Borrowed(input)
            }
            Transform::RemoveComments => Cow::Owned(remove_comments(input)),
            Transform::RemoveCommentsChar => Cow::Owned(remove_comments_char(input)),
            Transform::CmdLine
                if !input
                    .iter()
                    .any(|b| b.is_ascii_uppercase() || b"\"'\\^ ,;\t\r\n".contains(b)) =>
            {
                // Nothing to remove, lower-case or space out.
                Cow::Borrowed(input)
            }
            Transform::CmdLine => Cow::Owned(cmd_line(input)),
            Transform::NormalizePath => {
                if needs_path_normalisation(input) {
                    Cow::Owned(normalize_path(input))
                } else {
                    Cow::Borrowed(input)
                }
            }
            Transform::NormalizePathWin
                if !input.contains(&b'\\') && !needs_path_normalisation(input) =>
            {
                Cow::Borrowed(input)
            }
            Transform::NormalizePathWin => {
                let slashed: Vec<u8> = input
                    .iter()
                    .map(|&b| if b == b'\\' { b'/' } else { b })
                    .collect();
                Cow::Owned(normalize_path(&slashed))
            }
            Transform::Length => Cow::Owned(input.len().to_string().into_bytes()),
            Transform::Base64Decode => Cow::Owned(base64_decode(input, false)),
            Transform::Base64DecodeExt => Cow::Owned(base64_decode(input, true)),
            Transform::Base64Encode => Cow::Owned(
                base64::engine::general_purpose::STANDARD
                    .encode(input)
                    .into_bytes(),
            ),
            Transform::Sha1 => Cow::Owned(sha1::Sha1::digest(input).to_vec()),
            Transform::HexEncode => Cow::Owned(hex_encode(input)),
            Transform::HexDecode => Cow::Owned(hex_decode(input)),
            Transform::Trim => Cow::Borrowed(trim_left(trim_right(input))),
            Transform::TrimLeft => Cow::Borrowed(trim_left(input)),
            Transform::TrimRight => Cow::Borrowed(trim_right(input)),
        }
    }
}

/// Every distinct value along a chain of transformations, the input first (`multiMatch`).
pub fn apply_chain_multi(chain: &[Transform], input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![input.to_vec()];
    let mut value = input.to_vec();
    for t in chain {
        if let Some(v) = t.changed(&value)
            && v != value
        {
            value = v;
            out.push(value.clone());
        }
    }
    out
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0xa0)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex2(a: u8, b: u8) -> Option<u8> {
    Some(hex_val(a)? << 4 | hex_val(b)?)
}

/// `%uXXXX` (and JS `\uXXXX`) to one byte, as ModSecurity does without a unicode map:
/// the low byte, full-width ASCII (`U+FF01..U+FF5E`) mapped to ASCII.
fn unicode_byte(d: &[u8]) -> Option<u8> {
    if d.len() < 4 || !d[..4].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut c = hex2(d[2], d[3])?;
    if c > 0 && c < 0x5f && matches!(d[0], b'f' | b'F') && matches!(d[1], b'f' | b'F') {
        c += 0x20;
    }
    Some(c)
}

fn url_decode(input: &[u8], uni: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if uni
                && matches!(input.get(i + 1), Some(b'u' | b'U'))
                && let Some(c) = input.get(i + 2..i + 6).and_then(unicode_byte)
            {
                out.push(c);
                i += 6;
                continue;
            }
            if let (Some(&a), Some(&c)) = (input.get(i + 1), input.get(i + 2))
                && let Some(v) = hex2(a, c)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b);
        } else if b == b'+' {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

fn url_encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
            out.push(b);
        } else if b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        }
    }
    out
}

fn html_entity_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        // The bytes up to the next `&` are copied as they are, in one go.
        let Some(amp) = memchr::memchr(b'&', &input[i..]) else {
            out.extend_from_slice(&input[i..]);
            break;
        };
        out.extend_from_slice(&input[i..i + amp]);
        i += amp;
        let rest = &input[i + 1..];
        if rest.first() == Some(&b'#') {
            let (hex, digits_at) = match rest.get(1) {
                Some(b'x' | b'X') => (true, 2),
                _ => (false, 1),
            };
            let digits = &rest[digits_at..];
            let n = digits
                .iter()
                .take_while(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            if n > 0 {
                let mut v: u32 = 0;
                for &d in &digits[..n] {
                    let dv = u32::from(hex_val(d).unwrap_or(0));
                    v = v.wrapping_mul(if hex { 16 } else { 10 }).wrapping_add(dv);
                }
                out.push((v & 0xff) as u8);
                i += 1 + digits_at + n;
                if input.get(i) == Some(&b';') {
                    i += 1;
                }
                continue;
            }
        } else {
            let n = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            let name = rest[..n].to_ascii_lowercase();
            let decoded = match name.as_slice() {
                b"quot" => Some(b'"'),
                b"amp" => Some(b'&'),
                b"lt" => Some(b'<'),
                b"gt" => Some(b'>'),
                b"nbsp" => Some(0xa0),
                _ => None,
            };
            if let Some(d) = decoded {
                out.push(d);
                i += 1 + n;
                if input.get(i) == Some(&b';') {
                    i += 1;
                }
                continue;
            }
        }
        out.push(b'&');
        i += 1;
    }
    out
}

fn js_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let next = input[i + 1];
        match next {
            b'u' | b'U' => {
                if let Some(c) = input.get(i + 2..i + 6).and_then(unicode_byte) {
                    out.push(c);
                    i += 6;
                    continue;
                }
            }
            b'x' | b'X' => {
                if let (Some(&a), Some(&b)) = (input.get(i + 2), input.get(i + 3))
                    && let Some(v) = hex2(a, b)
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            b'0'..=b'7' => {
                let n = input[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(*b))
                    .count();
                let mut v: u32 = 0;
                for &d in &input[i + 1..i + 1 + n] {
                    v = v * 8 + u32::from(d - b'0');
                }
                out.push((v & 0xff) as u8);
                i += 1 + n;
                continue;
            }
            _ => {}
        }
        let c = match next {
            b'a' => 7,
            b'b' => 8,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(c);
        i += 2;
    }
    out
}

fn css_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        if i + 1 >= input.len() {
            // A lone trailing backslash is dropped.
            i += 1;
            continue;
        }
        let rest = &input[i + 1..];
        let n = rest
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if n > 0 {
            let digits = &rest[..n];
            let mut c = if n == 1 {
                hex_val(digits[0]).unwrap_or(0)
            } else {
                hex2(digits[n - 2], digits[n - 1]).unwrap_or(0)
            };
            // Full-width ASCII (U+FF01..U+FF5E) becomes ASCII.
            if n >= 4 && c > 0 && c < 0x5f {
                let hi = &digits[n - 4..n - 2];
                if hi.eq_ignore_ascii_case(b"ff") && digits[..n - 4].iter().all(|&d| d == b'0') {
                    c += 0x20;
                }
            }
            out.push(c);
            i += 1 + n;
            if input.get(i).is_some_and(|&b| is_space(b)) {
                i += 1;
            }
            continue;
        }
        if rest[0] == b'\n' {
            i += 2;
            continue;
        }
        out.push(rest[0]);
        i += 2;
    }
    out
}

fn escape_seq_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let next = input[i + 1];
        let simple = match next {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            b'?' => Some(b'?'),
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        if (next == b'x' || next == b'X')
            && let (Some(&a), Some(&b)) = (input.get(i + 2), input.get(i + 3))
            && let Some(v) = hex2(a, b)
        {
            out.push(v);
            i += 4;
            continue;
        }
        if (b'0'..=b'7').contains(&next) {
            let n = input[i + 1..]
                .iter()
                .take(3)
                .take_while(|b| (b'0'..=b'7').contains(*b))
                .count();
            let mut v: u32 = 0;
            for &d in &input[i + 1..i + 1 + n] {
                v = v * 8 + u32::from(d - b'0');
            }
            out.push((v & 0xff) as u8);
            i += 1 + n;
            continue;
        }
        out.push(b'\\');
        out.push(next);
        i += 2;
    }
    out
}

fn utf8_to_unicode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut rest = input;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_unicode(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_unicode(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let skip = e.error_len().unwrap_or(bad.len());
                out.extend_from_slice(&bad[..skip]);
                rest = &bad[skip..];
            }
        }
    }
    out
}

fn push_unicode(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            out.extend_from_slice(format!("%u{:04x}", u32::from(c) & 0xffff).as_bytes());
        }
    }
}

fn compress_whitespace(input: &[u8]) -> Cow<'_, [u8]> {
    let needs = input.windows(2).any(|w| is_space(w[0]) && is_space(w[1]))
        || input.iter().any(|&b| is_space(b) && b != b' ');
    if !needs {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut in_space = false;
    for &b in input {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
    Cow::Owned(out)
}

fn replace_comments(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'/' && input.get(i + 1) == Some(&b'*') {
            out.push(b' ');
            match input[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i = i + 2 + p + 2,
                None => break,
            }
        } else if input[i] == b'*' && input.get(i + 1) == Some(&b'/') {
            out.push(b' ');
            i += 2;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

fn remove_comments(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with(b"/*") {
            match rest[2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i += 2 + p + 2,
                None => break,
            }
        } else if rest.starts_with(b"<!--") {
            match rest[4..].windows(3).position(|w| w == b"-->") {
                Some(p) => i += 4 + p + 3,
                None => break,
            }
        } else if rest.starts_with(b"--") || rest[0] == b'#' {
            break;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

/// Whether a value holds anything `removeComments` or `removeCommentsChar` removes (`/*`,
/// `*/`, `--`, which `<!--` and `-->` contain, or `#`).
fn has_comment_marks(input: &[u8]) -> bool {
    input.contains(&b'#')
        || input
            .windows(2)
            .any(|w| w == b"/*" || w == b"*/" || w == b"--")
}

fn remove_comments_char(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with(b"/*") || rest.starts_with(b"*/") || rest.starts_with(b"--") {
            i += 2;
        } else if rest.starts_with(b"<!--") {
            i += 4;
        } else if rest.starts_with(b"-->") {
            i += 3;
        } else if rest[0] == b'#' {
            i += 1;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

fn cmd_line(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    let mut space = false;
    for &b in input {
        match b {
            b'"' | b'\'' | b'\\' | b'^' => {}
            b' ' | b',' | b';' | b'\t' | b'\r' | b'\n' => {
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            b'/' | b'(' => {
                if space {
                    out.pop();
                }
                space = false;
                out.push(b);
            }
            _ => {
                space = false;
                out.push(b.to_ascii_lowercase());
            }
        }
    }
    out
}

fn needs_path_normalisation(input: &[u8]) -> bool {
    input
        .windows(2)
        .any(|w| w == b"//" || w == b"/." || w == b"./")
        || input == b"."
        || input == b".."
}

fn normalize_path(input: &[u8]) -> Vec<u8> {
    if input.is_empty() {
        return Vec::new();
    }
    let absolute = input[0] == b'/';
    let trailing = input.ends_with(b"/")
        || input.ends_with(b"/.")
        || input.ends_with(b"/..")
        || input == b"."
        || input == b"..";
    let mut parts: Vec<&[u8]> = Vec::new();
    for seg in input.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if parts.last().is_some_and(|p| *p != b"..") {
                    parts.pop();
                } else if !absolute {
                    parts.push(seg);
                }
            }
            _ => parts.push(seg),
        }
    }
    let mut out = Vec::with_capacity(input.len());
    if absolute {
        out.push(b'/');
    }
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(p);
    }
    if trailing && !parts.is_empty() {
        out.push(b'/');
    }
    out
}

fn base64_decode(input: &[u8], skip_invalid: bool) -> Vec<u8> {
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    // Most values are all of the alphabet, or stop at their first byte outside it: they
    // are decoded in place, without a copy.
    let valid = input
        .iter()
        .position(|b| !alphabet(b))
        .unwrap_or(input.len());
    let clean: Cow<'_, [u8]> = if skip_invalid && valid < input.len() {
        Cow::Owned(input.iter().copied().filter(alphabet).collect())
    } else {
        Cow::Borrowed(&input[..valid])
    };
    let usable = clean.len() - clean.len() % 4;
    let mut out = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&clean[..usable])
        .unwrap_or_default();
    let tail = &clean[usable..];
    if tail.len() >= 2
        && let Ok(t) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(tail)
    {
        out.extend_from_slice(&t);
    }
    out
}

/// [`Transform::image`] of `t:base64Decode` (and `t:base64DecodeExt`): every decoded byte
/// is made of two consecutive 6-bit values of the alphabet's characters (the first byte of
/// a group of four from the first and second, the second from the second and third, the
/// third from the third and fourth), so only those pairs of the values present can appear.
fn base64_image(input: ByteSet) -> ByteSet {
    let values: Vec<u8> = (0u8..)
        .zip(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
        .filter(|&(_, &c)| holds(&input, c))
        .map(|(value, _)| value)
        .collect();
    let mut out = [0u64; 4];
    for &a in &values {
        for &b in &values {
            insert(&mut out, (a << 2) | (b >> 4));
            insert(&mut out, ((a & 0x0f) << 4) | (b >> 2));
            insert(&mut out, ((a & 0x03) << 6) | b);
        }
    }
    out
}

/// [`Transform::image`] of `t:jsDecode` on a set holding `\`: the bytes kept, and what
/// each escape that can be spelled with the set's bytes decodes to (`\xHH` and `\uHHHH`
/// pairs of its hex digits, octal numbers of its octal digits, the letters of `\n` and
/// the like their control characters).
fn js_image(input: ByteSet) -> ByteSet {
    let has = |b: u8| holds(&input, b);
    let mut out = input;
    for (letter, control) in [
        (b'a', 7),
        (b'b', 8),
        (b'f', 0x0c),
        (b'n', b'\n'),
        (b'r', b'\r'),
        (b't', b'\t'),
        (b'v', 0x0b),
    ] {
        if has(letter) {
            insert(&mut out, control);
        }
    }
    // `\xHH` and `\uHHHH` give a pair of hex digits; `\uffHH` the full-width form's
    // ASCII byte (see `unicode_byte`).
    let full_width = (has(b'u') || has(b'U')) && (has(b'f') || has(b'F'));
    if has(b'x') || has(b'X') || has(b'u') || has(b'U') {
        let pairs = hex_image(input);
        for b in (0..=255u8).filter(|&b| holds(&pairs, b)) {
            insert(&mut out, b);
            if full_width && (1..0x5f).contains(&b) {
                insert(&mut out, b + 0x20);
            }
        }
    }
    // Octal escapes of one to three digits, the number's low byte.
    let octal: Vec<u32> = (0..8u8).filter(|d| has(b'0' + d)).map(u32::from).collect();
    for &a in &octal {
        for &b in &octal {
            for &c in &octal {
                for v in [a, a * 8 + b, a * 64 + b * 8 + c] {
                    insert(&mut out, (v & 0xff) as u8);
                }
            }
        }
    }
    out
}

/// [`Transform::image`] of `t:hexDecode`: each byte is a pair of the hex digits present.
fn hex_image(input: ByteSet) -> ByteSet {
    let digits: Vec<u8> = (0..=255u8)
        .filter(|&c| holds(&input, c))
        .filter_map(hex_val)
        .collect();
    let mut out = [0u64; 4];
    for &high in &digits {
        for &low in &digits {
            insert(&mut out, (high << 4) | low);
        }
    }
    out
}

fn hex_encode(input: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(input.len() * 2);
    for &b in input {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    out
}

fn hex_decode(input: &[u8]) -> Vec<u8> {
    input
        .chunks_exact(2)
        .map_while(|p| hex2(p[0], p[1]))
        .collect()
}

fn trim_left(input: &[u8]) -> &[u8] {
    let n = input.iter().take_while(|&&b| is_space(b)).count();
    &input[n..]
}

fn trim_right(input: &[u8]) -> &[u8] {
    let n = input.iter().rev().take_while(|&&b| is_space(b)).count();
    &input[..input.len() - n]
}

#[cfg(test)]
mod tests {
    use super::Transform as T;
    use super::*;

    fn t(tr: T, s: &[u8]) -> Vec<u8> {
        tr.apply(s).into_owned()
    }

    /// Every transformation, by name.
    const NAMES: &[&str] = &[
        "lowercase",
        "uppercase",
        "urlDecode",
        "urlDecodeUni",
        "urlEncode",
        "htmlEntityDecode",
        "jsDecode",
        "cssDecode",
        "escapeSeqDecode",
        "utf8toUnicode",
        "removeNulls",
        "replaceNulls",
        "removeWhitespace",
        "compressWhitespace",
        "replaceComments",
        "removeComments",
        "removeCommentsChar",
        "cmdLine",
        "normalizePath",
        "normalizePathWin",
        "length",
        "base64Decode",
        "base64DecodeExt",
        "base64Encode",
        "sha1",
        "hexEncode",
        "hexDecode",
        "trim",
        "trimLeft",
        "trimRight",
    ];

    #[test]
    fn a_transformed_value_holds_only_bytes_of_the_image_of_its_alphabet() {
        let alphabets: Vec<Vec<u8>> = [
            &b"0123456789"[..],
            b"0123456789abcdef",
            b"0123456789ABCDEFabcdef-",
            b"ABCXYZ019",
            b"abc,;XY",
            b"ab+c=",
            b"\\x47fu",
            b"\\0123abn",
            b"\\x4a7",
            b"\\nrtv",
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,",
            b"abc ABC\t\n/*-#+;,'\"^()",
            b"%+0123456789abcdefABCDEFu",
            b"&#;x0123456789abcdeflgt",
            b"\\xu0123456789abcdef",
            b"/.\\abc",
            b"\0\x80\xc3\xa9\xffab",
        ]
        .iter()
        .map(|a| a.to_vec())
        .collect();
        let mut next = crate::xorshift(0x2545_F491_4F6C_DD1Du64);
        for name in NAMES {
            let tr = T::from_name(name).unwrap();
            for alphabet in &alphabets {
                let image = tr.image(bytes_present(alphabet));
                for _ in 0..2000 {
                    let len = (next() % 24) as usize;
                    let value: Vec<u8> = (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect();
                    let out = bytes_present(&tr.apply(&value));
                    assert!(
                        within(&out, &image),
                        "{name} on {:?} gave {:?}",
                        String::from_utf8_lossy(&value),
                        String::from_utf8_lossy(&tr.apply(&value)),
                    );
                }
            }
        }
    }

    #[test]
    fn url_decoding() {
        assert_eq!(t(T::UrlDecode, b"a%20b+c%zz"), b"a b c%zz");
        assert_eq!(t(T::UrlDecodeUni, b"%u0041%uff1c"), b"A<");
    }

    #[test]
    fn entity_js_css_and_escape_decoding() {
        assert_eq!(
            t(T::HtmlEntityDecode, b"&lt;&#x41;&#66&amp;x&foo;"),
            b"<AB&x&foo;"
        );
        assert_eq!(
            t(T::HtmlEntityDecode, b"GET /a?b=1&c=2 HTTP/1.1"),
            b"GET /a?b=1&c=2 HTTP/1.1"
        );
        assert_eq!(t(T::HtmlEntityDecode, b"x&quot"), b"x\"");
        assert_eq!(t(T::JsDecode, b"\\x41\\u0042\\n\\101"), b"AB\nA");
        assert_eq!(t(T::CssDecode, b"\\61 \\62x\\\""), b"abx\"");
        assert_eq!(t(T::EscapeSeqDecode, b"\\x41\\t\\q"), b"A\t\\q");
    }

    #[test]
    fn whitespace_and_comments() {
        assert_eq!(t(T::CompressWhitespace, b"a \t\n b"), b"a b");
        assert_eq!(t(T::RemoveWhitespace, b" a b "), b"ab");
        assert_eq!(t(T::ReplaceComments, b"a/*x*/b/*c"), b"a b ");
        assert_eq!(t(T::RemoveCommentsChar, b"a/*b*/--c#"), b"abc");
        assert_eq!(
            t(T::CmdLine, b"C^md.exe /c \"dir\" , x"),
            b"cmd.exe/c dir x"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(t(T::NormalizePath, b"/a/./b/../../c//d/"), b"/c/d/");
        assert_eq!(
            t(T::NormalizePath, b"../../etc/passwd"),
            b"../../etc/passwd"
        );
        assert_eq!(t(T::NormalizePathWin, b"C:\\a\\..\\b"), b"C:/b");
    }

    #[test]
    fn codecs() {
        assert_eq!(t(T::Base64Decode, b"SGVsbG8=!"), b"Hello");
        // Decoded in place up to the first byte outside the alphabet; `Ext` skips them.
        assert_eq!(t(T::Base64Decode, b"SGVs bG8"), b"Hel");
        assert_eq!(t(T::Base64DecodeExt, b"SGVs bG8"), b"Hello");
        assert_eq!(t(T::Base64DecodeExt, b"SGVsbG8"), b"Hello");
        // A tail whose last character has bits left over is not decoded.
        assert_eq!(t(T::Base64Decode, b"SGVsbG9"), b"Hel");
        assert_eq!(t(T::HexEncode, b"\x01\xff"), b"01ff");
        assert_eq!(t(T::HexDecode, b"4142"), b"AB");
        assert_eq!(t(T::Length, b"abc"), b"3");
        assert_eq!(t(T::Utf8ToUnicode, "é".as_bytes()), b"%u00e9");
        assert_eq!(t(T::Sha1, b"abc").len(), 20);
    }

    #[test]
    fn unknown_names_are_reported() {
        assert!(matches!(
            T::from_name("md5"),
            Err(ErrorKind::UnsupportedTransformation(_))
        ));
        assert_eq!(T::from_name("base64decode").unwrap(), T::Base64Decode);
    }

    #[test]
    fn multi_match_keeps_each_step() {
        let v = apply_chain_multi(&[T::UrlDecode, T::Lowercase], b"%41");
        assert_eq!(v, vec![b"%41".to_vec(), b"A".to_vec(), b"a".to_vec()]);
        // A trimmed value is a new step (a shorter borrowed slice is a change).
        let v = apply_chain_multi(&[T::Trim], b" a ");
        assert_eq!(v, vec![b" a ".to_vec(), b"a".to_vec()]);
        assert_eq!(T::Trim.changed(b" a "), Some(b"a".to_vec()));
        assert_eq!(T::Trim.changed(b"a"), None);
    }

    const ALL: &[T] = &[
        T::Lowercase,
        T::Uppercase,
        T::UrlDecode,
        T::UrlDecodeUni,
        T::UrlEncode,
        T::HtmlEntityDecode,
        T::JsDecode,
        T::CssDecode,
        T::EscapeSeqDecode,
        T::Utf8ToUnicode,
        T::RemoveNulls,
        T::ReplaceNulls,
        T::RemoveWhitespace,
        T::CompressWhitespace,
        T::ReplaceComments,
        T::RemoveComments,
        T::RemoveCommentsChar,
        T::CmdLine,
        T::NormalizePath,
        T::NormalizePathWin,
        T::Length,
        T::Base64Decode,
        T::Base64DecodeExt,
        T::Base64Encode,
        T::Sha1,
        T::HexEncode,
        T::HexDecode,
        T::Trim,
        T::TrimLeft,
        T::TrimRight,
    ];

    #[test]
    fn a_value_without_a_transformations_triggers_is_left_as_it_is() {
        for &t in ALL {
            let Some(triggers) = t.triggers() else {
                continue;
            };
            let quiet: Vec<u8> = (0..=255u8)
                .filter(|&b| triggers[usize::from(b >> 6)] >> (b & 63) & 1 == 0)
                .collect();
            let mut values = vec![quiet.clone(), quiet.iter().rev().copied().collect()];
            values.extend(quiet.windows(3).map(<[u8]>::to_vec));
            values.extend(quiet.iter().map(|&b| vec![b, b]));
            for v in values {
                assert_eq!(t.changed(&v), None, "{t:?} changed {v:?}");
            }
        }
    }

    #[test]
    fn shortcuts_agree_with_the_full_transformations() {
        for v in [
            &b"plain"[..],
            b"UPPER",
            b"a b",
            b"a/*b*/c",
            b"a--b",
            b"#x",
            b"a\\b",
            b"/a/./b",
            b"a,b;c",
            b"x'y",
        ] {
            assert_eq!(
                T::RemoveComments.apply(v).into_owned(),
                remove_comments(v),
                "{v:?}"
            );
            assert_eq!(
                T::RemoveCommentsChar.apply(v).into_owned(),
                remove_comments_char(v),
                "{v:?}"
            );
            assert_eq!(T::CmdLine.apply(v).into_owned(), cmd_line(v), "{v:?}");
            let slashed: Vec<u8> = v
                .iter()
                .map(|&b| if b == b'\\' { b'/' } else { b })
                .collect();
            assert_eq!(
                T::NormalizePathWin.apply(v).into_owned(),
                normalize_path(&slashed),
                "{v:?}"
            );
        }
    }
}
