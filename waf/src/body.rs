//! Request body processors: each body is parsed once into the values rules inspect
//! (`ARGS_POST`, `FILES`, `MULTIPART_PART_HEADERS`, `XML`).

/// A file part of a multipart body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePart {
    /// The form field name.
    pub field: String,
    /// The file name the client sent.
    pub filename: String,
    /// The content size in bytes.
    pub size: usize,
}

/// What a body processor extracted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Arguments (`ARGS_POST`): name and value.
    pub args: Vec<(String, Vec<u8>)>,
    /// File parts.
    pub files: Vec<FilePart>,
    /// Each part's header lines, by field name.
    pub part_headers: Vec<(String, Vec<u8>)>,
    /// XML text nodes (`XML:/*`).
    pub xml_text: Vec<Vec<u8>>,
    /// XML attribute values (`XML://@*`).
    pub xml_attrs: Vec<Vec<u8>>,
    /// Why the body did not parse (`REQBODY_ERROR_MSG`); what parsed before stays.
    pub error: Option<String>,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, bad `%` stays).
pub fn form_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    // Copies the runs between escapes whole: most names and values hold none.
    while let Some(i) = rest.iter().position(|&b| b == b'+' || b == b'%') {
        out.extend_from_slice(&rest[..i]);
        let escape = &rest[i..];
        let decoded = match escape {
            [b'+', ..] => Some((b' ', 1)),
            [b'%', a, b, ..] => hex_val(*a).zip(hex_val(*b)).map(|(a, b)| (a << 4 | b, 3)),
            _ => None,
        };
        let (byte, len) = decoded.unwrap_or((b'%', 1));
        out.push(byte);
        rest = &escape[len..];
    }
    out.extend_from_slice(rest);
    out
}

/// Splits a query string or urlencoded body into decoded name/value pairs.
pub fn parse_urlencoded(input: &[u8]) -> Vec<(String, Vec<u8>)> {
    input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = String::from_utf8(form_decode(k))
                .unwrap_or_else(|bad| String::from_utf8_lossy(bad.as_bytes()).into_owned());
            (name, form_decode(v))
        })
        .collect()
}

/// A parameter of a header value (`boundary=...`, `name="a;b"`), unquoted. Quoted values
/// may contain `;`.
pub fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let b = value.as_bytes();
    let mut i = b.iter().position(|&c| c == b';')? + 1;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b';') {
            i += 1;
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            i += 1;
        }
        let key = value[key_start..i].trim();
        if i >= b.len() || b[i] == b';' {
            continue;
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let (v, next) = if b.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            (&value[start..j.min(b.len())], j + 1)
        } else {
            let start = i;
            let mut j = start;
            while j < b.len() && b[j] != b';' {
                j += 1;
            }
            (value[start..j].trim(), j)
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(v);
        }
        i = next;
    }
    None
}

/// Parses a `multipart/form-data` body.
pub fn parse_multipart(body: &[u8], content_type: &str) -> Parsed {
    let mut out = Parsed::default();
    let Some(boundary) = header_param(content_type, "boundary").filter(|b| !b.is_empty()) else {
        out.error = Some("multipart: no boundary".into());
        return out;
    };
    let delim = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut pos = match find(body, &delim, 0) {
        Some(p) => p,
        None => {
            out.error = Some("multipart: boundary not found".into());
            return out;
        }
    };
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let start = skip_line_end(body, after);
        match find(body, &delim, start) {
            Some(next) => {
                let mut end = next;
                if end > start && body[end - 1] == b'\n' {
                    end -= 1;
                    if end > start && body[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                parts.push(&body[start..end]);
                pos = next;
            }
            None => {
                out.error = Some("multipart: final boundary missing".into());
                parts.push(&body[start..]);
                break;
            }
        }
    }
    for part in parts {
        let (headers, content) = split_part(part);
        let mut name = None;
        let mut filename = None;
        let mut lines = Vec::new();
        for line in headers {
            let text = String::from_utf8_lossy(line);
            if let Some((k, v)) = text.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-disposition")
            {
                name = header_param(v, "name").map(str::to_string);
                filename = header_param(v, "filename")
                    .or_else(|| header_param(v, "filename*"))
                    .map(str::to_string);
            }
            lines.push(line.to_vec());
        }
        let name = name.unwrap_or_default();
        for l in lines {
            out.part_headers.push((name.clone(), l));
        }
        match filename {
            Some(f) => out.files.push(FilePart {
                field: name,
                filename: f,
                size: content.len(),
            }),
            None => out.args.push((name, content.to_vec())),
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn skip_line_end(body: &[u8], mut i: usize) -> usize {
    while i < body.len() && (body[i] == b' ' || body[i] == b'\t') {
        i += 1;
    }
    if body.get(i) == Some(&b'\r') {
        i += 1;
    }
    if body.get(i) == Some(&b'\n') {
        i += 1;
    }
    i
}

/// Splits a part into its header lines and content at the first empty line.
fn split_part(part: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut headers = Vec::new();
    let mut i = 0;
    while i < part.len() {
        let end = part[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(part.len(), |p| i + p);
        let mut line = &part[i..end];
        if line.ends_with(b"\r") {
            line = &line[..line.len() - 1];
        }
        i = (end + 1).min(part.len());
        if line.is_empty() {
            return (headers, &part[i..]);
        }
        headers.push(line);
    }
    (headers, &[])
}

/// Flattens a JSON body into arguments named `json.key.0.sub`, in the body's order (a
/// repeated key gives one argument per occurrence, as ModSecurity and Coraza read it). The
/// body is read once, straight into the arguments, without building its tree; an invalid
/// body gives no arguments and the parser's error.
pub fn parse_json(body: &[u8]) -> Parsed {
    use serde::de::DeserializeSeed;
    let mut out = Parsed::default();
    let mut path = String::from("json");
    let mut reader = serde_json::Deserializer::from_slice(body);
    let read = JsonValue {
        path: &mut path,
        args: &mut out.args,
    }
    .deserialize(&mut reader)
    .and_then(|()| reader.end());
    if let Err(e) = read {
        out.args.clear();
        out.error = Some(format!("json: {e}"));
    }
    out
}

/// A JSON value read into arguments named after `path` (restored when it returns `Ok`;
/// after an error the whole body is dropped, `path` with it).
struct JsonValue<'a> {
    path: &'a mut String,
    args: &'a mut Vec<(String, Vec<u8>)>,
}

impl JsonValue<'_> {
    fn push(self, value: impl Into<Vec<u8>>) {
        self.args.push((self.path.clone(), value.into()));
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonValue<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(itoa::Buffer::new().format(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(itoa::Buffer::new().format(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // Written as serde_json writes a number it read (JSON has no NaN or infinity).
        let text = serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string());
        self.push(text);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(Vec::new());
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let len = self.path.len();
        let mut index = itoa::Buffer::new();
        for i in 0usize.. {
            self.path.push('.');
            self.path.push_str(index.format(i));
            let element = seq.next_element_seed(JsonValue {
                path: self.path,
                args: self.args,
            })?;
            self.path.truncate(len);
            if element.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let len = self.path.len();
        loop {
            self.path.push('.');
            if map.next_key_seed(JsonKey(self.path))?.is_none() {
                self.path.truncate(len);
                return Ok(());
            }
            map.next_value_seed(JsonValue {
                path: self.path,
                args: self.args,
            })?;
            self.path.truncate(len);
        }
    }
}

/// A JSON object's key, appended to an argument's name.
struct JsonKey<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for JsonKey<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push_str(v);
        Ok(())
    }
}

/// Extracts the text nodes and attribute values of an XML body. The tokenizer follows
/// XML's syntax (comments, CDATA, processing instructions, DOCTYPE) without building a tree.
pub fn parse_xml(body: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut i = 0;
    let mut depth: i32 = 0;
    let mut saw_element = false;
    while i < body.len() {
        if body[i] != b'<' {
            let end = body[i..]
                .iter()
                .position(|&b| b == b'<')
                .map_or(body.len(), |p| i + p);
            let text = decode_entities(&body[i..end]);
            if !text.iter().all(u8::is_ascii_whitespace) {
                if depth == 0 {
                    out.error = Some("xml: text outside the root element".into());
                }
                out.xml_text.push(text);
            }
            i = end;
            continue;
        }
        let rest = &body[i..];
        let skip_to = |pat: &[u8], from: usize| find(body, pat, from).map(|p| p + pat.len());
        if rest.starts_with(b"<!--") {
            match skip_to(b"-->", i + 4) {
                Some(e) => i = e,
                None => {
                    out.error = Some("xml: unterminated comment".into());
                    break;
                }
            }
        } else if rest.starts_with(b"<![CDATA[") {
            match find(body, b"]]>", i + 9) {
                Some(e) => {
                    out.xml_text.push(body[i + 9..e].to_vec());
                    i = e + 3;
                }
                None => {
                    out.error = Some("xml: unterminated CDATA".into());
                    break;
                }
            }
        } else if rest.starts_with(b"<?") {
            match skip_to(b"?>", i + 2) {
                Some(e) => i = e,
                None => {
                    out.error = Some("xml: unterminated processing instruction".into());
                    break;
                }
            }
        } else if rest.starts_with(b"<!") {
            // DOCTYPE, with an optional internal subset in brackets.
            let mut j = i + 2;
            let mut bracket = 0;
            while j < body.len() {
                match body[j] {
                    b'[' => bracket += 1,
                    b']' => bracket -= 1,
                    b'>' if bracket <= 0 => break,
                    _ => {}
                }
                j += 1;
            }
            i = j + 1;
        } else {
            let Some(end) = tag_end(body, i + 1) else {
                out.error = Some("xml: unterminated tag".into());
                break;
            };
            let tag = &body[i + 1..end];
            if tag.starts_with(b"/") {
                depth -= 1;
            } else {
                saw_element = true;
                attributes(tag, &mut out.xml_attrs);
                if !tag.ends_with(b"/") {
                    depth += 1;
                }
            }
            i = end + 1;
        }
    }
    if out.error.is_none() && (!saw_element || depth != 0) {
        out.error = Some("xml: not a well-formed document".into());
    }
    out
}

fn tag_end(body: &[u8], mut i: usize) -> Option<usize> {
    let mut quote = None;
    while i < body.len() {
        match (quote, body[i]) {
            (None, b'"' | b'\'') => quote = Some(body[i]),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn attributes(tag: &[u8], out: &mut Vec<Vec<u8>>) {
    let mut i = tag
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(tag.len());
    while i < tag.len() {
        let Some(eq) = tag[i..].iter().position(|&b| b == b'=') else {
            return;
        };
        i += eq + 1;
        while i < tag.len() && tag[i].is_ascii_whitespace() {
            i += 1;
        }
        let Some(&q) = tag.get(i) else { return };
        if q != b'"' && q != b'\'' {
            return;
        }
        let Some(len) = tag[i + 1..].iter().position(|&b| b == q) else {
            return;
        };
        out.push(decode_entities(&tag[i + 1..i + 1 + len]));
        i += len + 2;
    }
}

fn decode_entities(text: &[u8]) -> Vec<u8> {
    if !text.contains(&b'&') {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'&'
            && let Some(semi) = text[i..].iter().take(12).position(|&b| b == b';')
        {
            let name = &text[i + 1..i + semi];
            let decoded: Option<Vec<u8>> = match name {
                b"lt" => Some(b"<".to_vec()),
                b"gt" => Some(b">".to_vec()),
                b"amp" => Some(b"&".to_vec()),
                b"quot" => Some(b"\"".to_vec()),
                b"apos" => Some(b"'".to_vec()),
                _ => name.strip_prefix(b"#").and_then(|n| {
                    let s = std::str::from_utf8(n).ok()?;
                    let cp = match s.strip_prefix(['x', 'X']) {
                        Some(h) => u32::from_str_radix(h, 16).ok()?,
                        None => s.parse().ok()?,
                    };
                    let c = char::from_u32(cp)?;
                    Some(c.to_string().into_bytes())
                }),
            };
            if let Some(d) = decoded {
                out.extend_from_slice(&d);
                i += semi + 1;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_pairs_decode() {
        let a = parse_urlencoded(b"a=1+2&b=%3Cx%3E&c&=v&d=%zz");
        assert_eq!(a[0], ("a".into(), b"1 2".to_vec()));
        assert_eq!(a[1], ("b".into(), b"<x>".to_vec()));
        assert_eq!(a[2], ("c".into(), b"".to_vec()));
        assert_eq!(a[3], ("".into(), b"v".to_vec()));
        assert_eq!(a[4].1, b"%zz".to_vec());
        // Escapes cut short at the end, a bad byte in a name, runs between escapes.
        for (text, decoded) in [
            (&b"%"[..], &b"%"[..]),
            (b"%4", b"%4"),
            (b"a%4g%41+", b"a%4gA "),
            (b"%%41%", b"%A%"),
            (b"plain-run.of_bytes", b"plain-run.of_bytes"),
        ] {
            assert_eq!(
                form_decode(text),
                decoded,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(parse_urlencoded(b"k%FF=1")[0].0, "k\u{FFFD}");
    }

    #[test]
    fn multipart_fields_files_and_headers() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhello\r\n\
--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--xyz--\r\n";
        let p = parse_multipart(body, "multipart/form-data; boundary=xyz");
        assert_eq!(p.error, None);
        assert_eq!(p.args, vec![("a".into(), b"hello".to_vec())]);
        assert_eq!(
            p.files,
            vec![FilePart {
                field: "f".into(),
                filename: "x.php".into(),
                size: 5
            }]
        );
        assert_eq!(p.part_headers.len(), 3);
        assert_eq!(
            p.part_headers[2],
            ("f".into(), b"Content-Type: text/plain".to_vec())
        );
    }

    #[test]
    fn quoted_parameters_keep_semicolons() {
        let v = "form-data; name=\"a&auml;b\"; filename=x.txt";
        assert_eq!(header_param(v, "name"), Some("a&auml;b"));
        assert_eq!(header_param(v, "filename"), Some("x.txt"));
        assert_eq!(
            header_param("multipart/form-data; boundary=xyz", "boundary"),
            Some("xyz")
        );
        assert_eq!(header_param("form-data; name=a", "filename"), None);
    }

    #[test]
    fn json_flattens_with_dotted_names() {
        let p = parse_json(br#"{"a":{"b":[1,"x"]},"c":null,"d":true}"#);
        let names: Vec<_> = p.args.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["json.a.b.0", "json.a.b.1", "json.c", "json.d"]);
        assert_eq!(p.args[1].1, b"x".to_vec());
        assert!(parse_json(b"{nope").error.is_some());
    }

    #[test]
    fn json_arguments_keep_the_body_order_the_repeats_and_the_numbers_as_read() {
        let p = parse_json(
            br#"{"z":-1,"a":[{"k":"v\u00e9"},[]],"z":2.5e3,"big":18446744073709551616,"e":{},"t":false}"#,
        );
        assert_eq!(p.error, None);
        let args: Vec<_> = p
            .args
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let want = [
            ("json.z", "-1"),
            ("json.a.0.k", "v\u{e9}"),
            ("json.z", "2500.0"),
            ("json.big", "1.8446744073709552e+19"),
            ("json.t", "false"),
        ];
        let want: Vec<_> = want.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(args, want);
        let scalar = parse_json(b"\"only\"");
        assert_eq!(scalar.args, [("json".to_string(), b"only".to_vec())]);
        for bad in [&b"{nope"[..], b"[1,2", b"{\"a\":1} trailing", b"{\"a\":}"] {
            let p = parse_json(bad);
            assert!(p.error.is_some() && p.args.is_empty(), "{:?}", p.args);
        }
    }

    #[test]
    fn xml_text_and_attributes() {
        let p = parse_xml(
            b"<?xml version=\"1.0\"?><!DOCTYPE a [<!ENTITY x \"y\">]><a k=\"v&amp;\"><!-- c --><b>t&lt;1</b><![CDATA[<raw>]]></a>",
        );
        assert_eq!(p.error, None);
        assert_eq!(p.xml_text, vec![b"t<1".to_vec(), b"<raw>".to_vec()]);
        assert_eq!(p.xml_attrs, vec![b"v&".to_vec()]);
        assert!(parse_xml(b"<a><b></a>").error.is_some());
    }
}
