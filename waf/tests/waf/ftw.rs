//! go-ftw's test format, as CRS's regression suite uses it: the request a stage sends, put
//! together as go-ftw puts it on the wire, and the rule ids a stage expects. Shared by the
//! in-process conformance run here and the proxy's sample run over real sockets
//! (`proxy/tests/proxy/waf_conformance.rs` includes this file by path).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

/// One HTTP request as go-ftw would put it on the wire.
pub struct Wire {
    /// The method.
    pub method: String,
    /// The request target.
    pub uri: String,
    /// The protocol, `HTTP/1.1` unless the test says otherwise.
    pub version: String,
    /// The headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, as the web server hands it on (dechunked).
    pub body: Vec<u8>,
}

/// A YAML scalar as text.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether a header is present, by name in any case.
pub fn has_header(h: &[(String, Vec<u8>)], name: &str) -> bool {
    h.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`, `None` on a bad escape.
fn query_unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// go-ftw's encoding of form data given unencoded.
fn encode_form(data: &str) -> String {
    if query_unescape(data).as_deref() != Some(data.as_bytes()) {
        return data.to_string();
    }
    data.split('&')
        .map(|token| match token.split_once('=') {
            Some((k, v)) => format!("{}={}", query_escape(k), query_escape(v)),
            None => query_escape(token),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn parse_raw(raw: &[u8]) -> Wire {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .unwrap_or((raw.len(), raw.len()));
    let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let uri = first.next().unwrap_or_default().to_string();
    let version = first.next().unwrap_or_default().trim().to_string();
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().as_bytes().to_vec()))
        .collect();
    let mut body = raw[split.1..].to_vec();
    let chunked = headers.iter().any(|(k, v): &(String, Vec<u8>)| {
        k.eq_ignore_ascii_case("Transfer-Encoding") && v.eq_ignore_ascii_case(b"chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Wire {
        method,
        uri,
        version,
        headers,
        body,
    }
}

/// The body of a chunked message, as the web server hands it on.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = b.get(end + 2..).unwrap_or_default();
    }
    out
}

/// The request of a stage's `input`.
pub fn wire(input: &Value) -> Wire {
    if let Some(enc) = input.get("encoded_request").and_then(Value::as_str) {
        let compact: String = enc.chars().filter(|c| !c.is_whitespace()).collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .unwrap_or_default();
        return parse_raw(&raw);
    }
    let method = input.get("method").map_or("GET".into(), scalar);
    let uri = input.get("uri").map_or("/".into(), scalar);
    let version = input.get("version").map_or("HTTP/1.1".into(), scalar);
    let mut headers: Vec<(String, Vec<u8>)> = input
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), scalar(v).into_bytes()))
                .collect()
        })
        .unwrap_or_default();
    let autocomplete = input
        .get("autocomplete_headers")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut data = input.get("data").map(scalar).unwrap_or_default();
    if !data.is_empty() && autocomplete {
        if !has_header(&headers, "Content-Type") {
            headers.push((
                "Content-Type".into(),
                b"application/x-www-form-urlencoded".to_vec(),
            ));
        }
        let ct = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if ct == "application/x-www-form-urlencoded" {
            data = encode_form(&data);
        }
    }
    let ct = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    if ct.starts_with("multipart/form-data;") {
        data = data.replace('\n', "\r\n");
    }
    if autocomplete {
        if !has_header(&headers, "Connection") {
            headers.push(("Connection".into(), b"close".to_vec()));
        }
        let body_method = ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .any(|m| method.contains(m));
        if (!data.is_empty() || body_method) && !has_header(&headers, "Content-Length") {
            headers.push(("Content-Length".into(), data.len().to_string().into_bytes()));
        }
    }
    Wire {
        method,
        uri,
        version,
        headers,
        body: data.into_bytes(),
    }
}

/// The rule ids of an `expect_ids`/`no_expect_ids` list.
pub fn ids(v: Option<&Value>) -> Vec<u64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Every test file under `dir`, sorted.
pub fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && !p.to_string_lossy().ends_with(".skeleton")
        {
            out.push(p);
        }
    }
}
