//! Layer 13, the access log: one JSON line per request on standard output.
//!
//! Written in the `logging` phase. Each line carries the time, request id, client address,
//! the country and e-mail fields (empty until the geo and access layers fill them), method,
//! path with `api_key`/`ApiKey` query values scrubbed, status, bytes sent, duration, and the
//! decision that mattered (layer, rule, reason). The line is written by hand into a reused
//! buffer: no allocation per request beyond a scrubbed path, no formatting machinery.

use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    io::Write,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// One request, as the log line records it.
#[derive(Clone, Debug)]
pub struct AccessRecord<'a> {
    /// When the request arrived.
    pub time: SystemTime,
    /// The request id.
    pub request_id: &'a str,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The client's country, once the geo layer knows it.
    pub country: &'a str,
    /// The signed-in e-mail address, once the access layer knows it.
    pub email: &'a str,
    /// The method.
    pub method: &'a str,
    /// The request target, path and query, before scrubbing.
    pub path: &'a str,
    /// The response status (0 when none was sent).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time from the request head to the end of the response.
    pub duration: Duration,
    /// The deciding layer.
    pub layer: &'a str,
    /// What it decided.
    pub decision: &'a str,
    /// The rule.
    pub rule: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Query parameters whose values are secrets (Jellyfin's API keys), compared without case
/// after percent-decoding, as Jellyfin itself reads them.
const SECRET_PARAMETERS: [&[u8]; 2] = [b"api_key", b"apikey"];

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a raw query parameter name is one of the secret ones.
fn is_secret_name(raw: &[u8]) -> bool {
    let mut decoded = [0u8; 16];
    let mut len = 0;
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' if i + 2 < raw.len() => match (hex_value(raw[i + 1]), hex_value(raw[i + 2])) {
                (Some(high), Some(low)) => {
                    i += 2;
                    high << 4 | low
                }
                _ => b'%',
            },
            b'+' => b' ',
            other => other,
        };
        i += 1;
        if len == decoded.len() {
            return false;
        }
        decoded[len] = byte;
        len += 1;
    }
    SECRET_PARAMETERS
        .iter()
        .any(|name| name.eq_ignore_ascii_case(&decoded[..len]))
}

/// The request target with the values of `api_key`/`ApiKey` replaced by `REDACTED`.
pub fn scrub_path(path: &str) -> Cow<'_, str> {
    let Some((before, query)) = path.split_once('?') else {
        return Cow::Borrowed(path);
    };
    let secret = |pair: &str| is_secret_name(pair.split('=').next().unwrap_or(pair).as_bytes());
    if !query.split('&').any(secret) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    out.push_str(before);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if secret(pair) {
            out.push_str(pair.split('=').next().unwrap_or(pair));
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
    Cow::Owned(out)
}

/// The bytes [`json_string`] escapes: JSON's (`"`, `\\`, control characters), and DEL.
const ESCAPED: [bool; 256] = {
    let mut escaped = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        escaped[b] = true;
        b += 1;
    }
    escaped[b'"' as usize] = true;
    escaped[b'\\' as usize] = true;
    escaped[0x7f] = true;
    escaped
};

/// Writes `text` as a JSON string: runs without escapes are copied whole.
fn json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    while let Some(offset) = bytes[start..].iter().position(|&b| ESCAPED[usize::from(b)]) {
        let i = start + offset;
        out.extend_from_slice(&bytes[start..i]);
        match bytes[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_number(out: &mut Vec<u8>, mut n: u64, min_digits: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < min_digits.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes `ip` as text: IPv4 by hand (the formatting machinery costs about a thousand
/// instructions per address), IPv6 as the standard library writes it.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_number(out, u64::from(octet), 1);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes the date and time to the second (`2026-01-31T23:59:59`) of `secs` since the epoch.
fn push_second(out: &mut Vec<u8>, secs: u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
    push_number(out, as_u64(year), 4);
    out.push(b'-');
    push_number(out, as_u64(month), 2);
    out.push(b'-');
    push_number(out, as_u64(day), 2);
    out.push(b'T');
    push_number(out, rem / 3600, 2);
    out.push(b':');
    push_number(out, rem % 3600 / 60, 2);
    out.push(b':');
    push_number(out, rem % 60, 2);
}

thread_local! {
    /// The last second written by this thread and its text: the requests of one second
    /// skip the calendar arithmetic.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Writes `time` as RFC 3339 UTC with milliseconds (`2026-01-31T23:59:59.123Z`).
pub fn push_time(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let (cached, text) = second.get();
        if cached == secs {
            out.extend_from_slice(&text);
            return;
        }
        let start = out.len();
        push_second(out, secs);
        if let Ok(text) = <[u8; 19]>::try_from(&out[start..]) {
            second.set((secs, text));
        }
    });
    out.push(b'.');
    push_number(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// Writes the record as one JSON line (with its newline) into `out`.
pub fn write_line(out: &mut Vec<u8>, record: &AccessRecord<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, record.time);
    out.extend_from_slice(b"\",\"requestId\":");
    json_string(out, record.request_id);
    out.extend_from_slice(b",\"clientIp\":");
    match record.client_ip {
        Some(ip) => {
            out.push(b'"');
            push_ip(out, ip);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"country\":");
    json_string(out, record.country);
    out.extend_from_slice(b",\"email\":");
    json_string(out, record.email);
    out.extend_from_slice(b",\"method\":");
    json_string(out, record.method);
    out.extend_from_slice(b",\"path\":");
    json_string(out, &scrub_path(record.path));
    out.extend_from_slice(b",\"status\":");
    push_number(out, u64::from(record.status), 1);
    out.extend_from_slice(b",\"bytes\":");
    push_number(out, record.bytes, 1);
    out.extend_from_slice(b",\"durationMs\":");
    let micros = u64::try_from(record.duration.as_micros()).unwrap_or(u64::MAX);
    push_number(out, micros / 1000, 1);
    out.push(b'.');
    push_number(out, micros % 1000, 3);
    out.extend_from_slice(b",\"layer\":");
    json_string(out, record.layer);
    out.extend_from_slice(b",\"decision\":");
    json_string(out, record.decision);
    out.extend_from_slice(b",\"rule\":");
    json_string(out, record.rule);
    out.extend_from_slice(b",\"reason\":");
    json_string(out, record.reason);
    out.extend_from_slice(b"}\n");
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes the record's line to standard output.
pub fn emit(record: &AccessRecord<'_>) {
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        write_line(&mut line, record);
        // A closed stdout must not take the edge down; the line is lost.
        let _ = std::io::stdout().lock().write_all(&line);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_scrubbed_whatever_their_case_or_encoding() {
        assert_eq!(
            scrub_path("/Videos/1/stream?api_key=s3cret&Static=true"),
            "/Videos/1/stream?api_key=REDACTED&Static=true"
        );
        assert_eq!(scrub_path("/a?ApiKey=s3cret"), "/a?ApiKey=REDACTED");
        assert_eq!(
            scrub_path("/a?APIKEY=x&b=1&api_key"),
            "/a?APIKEY=REDACTED&b=1&api_key=REDACTED"
        );
        assert_eq!(scrub_path("/a?api%5Fkey=s3cret"), "/a?api%5Fkey=REDACTED");
        assert_eq!(scrub_path("/a?api_keys=visible"), "/a?api_keys=visible");
        assert!(matches!(scrub_path("/a?b=1"), Cow::Borrowed(_)));
        assert!(matches!(scrub_path("/a"), Cow::Borrowed(_)));
    }

    #[test]
    fn addresses_are_written_as_the_standard_library_writes_them() {
        for text in [
            "0.0.0.0",
            "192.0.2.1",
            "255.255.255.255",
            "10.200.3.45",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let mut out = Vec::new();
        push_time(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(1_767_225_599_123),
        );
        assert_eq!(out, b"2025-12-31T23:59:59.123Z");
        out.clear();
        push_time(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, b"2000-02-29T00:00:00.000Z");
        // The same second again, from the remembered text.
        out.clear();
        push_time(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(951_782_400_999),
        );
        assert_eq!(out, b"2000-02-29T00:00:00.999Z");
    }

    #[test]
    fn every_character_survives_a_json_string() {
        let text: String = (0..=0x7f_u8)
            .map(char::from)
            .chain("é→🔒".chars())
            .collect();
        let mut out = Vec::new();
        json_string(&mut out, &text);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, text);
        let written = String::from_utf8(out).unwrap();
        for escape in [
            "\\u0000", "\\u001f", "\\u007f", "\\n", "\\t", "\\\"", "\\\\",
        ] {
            assert!(written.contains(escape), "{escape} in {written}");
        }
        assert!(written.ends_with("~\\u007fé→🔒\""), "{written}");
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            &AccessRecord {
                time: UNIX_EPOCH,
                request_id: "0123456789abcdef",
                client_ip: Some("2001:db8::1".parse().unwrap()),
                country: "",
                email: "",
                method: "GET",
                path: "/x?api_key=k&q=\"\u{1}\"",
                status: 200,
                bytes: 12345,
                duration: Duration::from_micros(1_234_567),
                layer: "upstream",
                decision: "pass",
                rule: "",
                reason: "",
            },
        );
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["clientIp"], "2001:db8::1");
        assert_eq!(value["path"], "/x?api_key=REDACTED&q=\"\u{1}\"");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 12345);
        assert_eq!(value["durationMs"], 1234.567);
        assert_eq!(value["country"], "");
        assert_eq!(value["email"], "");
        assert_eq!(value["layer"], "upstream");
        assert_eq!(value["decision"], "pass");
    }
}
