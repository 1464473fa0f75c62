//! Layer 10b, upload antivirus: request bodies of the paths, methods and media types the
//! document lists are streamed to clamd ([`clamd`]) as they arrive and held back, up to
//! `maxScanSize`, until its verdict; only a clean body goes upstream. It runs after the WAF
//! in `request_filter` (which scans are needed, clamd connected before the upstream is
//! contacted) and in `request_body_filter` (after the WAF has released the bytes).
//!
//! Jellyfin's web client posts images as a base64 body and subtitles as JSON holding the
//! file in base64, which clamd does not decode; so once the body has scanned clean, each
//! base64 payload in it ([`encoded_payloads`]: the whole body, or long base64 strings of a
//! JSON body) is decoded and scanned as a file of its own.
//!
//! [`Antivirus::wants`], [`read_reply`], [`encoded_payloads`] and [`outcome`] are the pure
//! decisions; [`Scan`] is one scan in flight, each of clamd's steps (connecting, taking a
//! part of the body, its verdict) bounded by the document's `timeout`, so that a stalled
//! clamd never holds a request for longer while a slow client is not held against it.
//!
//! | finding | answer | `onUnscannable: Allow` |
//! | --- | --- | --- |
//! | `infected` (a signature) | 403 with the request id | 403 |
//! | `too-large` (over `maxScanSize` or clamd's `StreamMaxLength`) | 413 | forwarded, logged |
//! | `encrypted` (`Heuristics.Encrypted.*`: clamd cannot look inside) | 403 | forwarded, logged |
//! | `limits-exceeded` (`Heuristics.Limits.Exceeded.*`: clamd's own limits) | 403 | forwarded, logged |
//! | `scanner-unavailable` (clamd down, failing or too slow) | 503 | forwarded, logged |

pub mod clamd;

use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode};
use portcullis_crds::{edge, media_server::UnscannableAction};
use regex::{RegexSet, RegexSetBuilder};
use tokio::time::{Instant, timeout_at};

use crate::verdict::{Reason, Response, Verdict};

/// Why the antivirus section could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum AntivirusError {
    /// A path pattern.
    #[error("antivirus.paths: {0}")]
    Paths(#[from] regex::Error),
    /// clamd's address.
    #[error("antivirus.clamd: {0}")]
    Address(String),
}

/// The compiled antivirus section.
#[derive(Debug)]
pub struct Antivirus {
    /// Where clamd listens.
    pub clamd: clamd::Address,
    /// The paths scanned; every path when `None`.
    paths: Option<RegexSet>,
    methods: Vec<Method>,
    /// `(type, subtype)` in lower case; `None` for a `type/*` pattern.
    content_types: Vec<(String, Option<String>)>,
    /// The largest body scanned.
    pub max_scan_size: usize,
    /// What happens to an unscannable body.
    pub on_unscannable: UnscannableAction,
    /// The longest clamd may take over one step of a scan.
    pub timeout: Duration,
}

impl Antivirus {
    /// Compiles the document's section.
    pub fn new(doc: &edge::Antivirus) -> Result<Self, AntivirusError> {
        let paths = if doc.paths.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&doc.paths)
                    .case_insensitive(true)
                    .build()?,
            )
        };
        Ok(Self {
            clamd: clamd::Address::parse(&doc.clamd).map_err(AntivirusError::Address)?,
            paths,
            methods: doc
                .methods
                .iter()
                .filter_map(|method| Method::from_bytes(format!("{method:?}").as_bytes()).ok())
                .collect(),
            content_types: doc
                .content_types
                .iter()
                .filter_map(|pattern| {
                    let (kind, sub) = pattern.split_once('/')?;
                    Some((
                        kind.to_ascii_lowercase(),
                        (sub != "*").then(|| sub.to_ascii_lowercase()),
                    ))
                })
                .collect(),
            max_scan_size: usize::try_from(doc.max_scan_size.bytes()).unwrap_or(usize::MAX),
            on_unscannable: doc.on_unscannable,
            timeout: doc.timeout.get(),
        })
    }

    /// Whether a request's body is scanned: its method, its path (percent-decoded, as the
    /// application routes it) and its media type are listed.
    pub fn wants(&self, method: &Method, path: &str, content_type: Option<&[u8]>) -> bool {
        if !self.methods.contains(method) {
            return false;
        }
        if let Some(paths) = &self.paths
            && !paths.is_match(&percent_decode(path))
        {
            return false;
        }
        if self.content_types.is_empty() {
            return true;
        }
        let Some((kind, sub)) = content_type.and_then(media_type) else {
            // No media type (or an unreadable one): the application may still sniff the
            // content, so it is scanned.
            return true;
        };
        self.content_types.iter().any(|(want_kind, want_sub)| {
            *want_kind == kind && want_sub.as_ref().is_none_or(|want| *want == sub)
        })
    }
}

/// A `Content-Type` value's type and subtype, lower case.
fn media_type(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let essence = value.split(';').next()?.trim();
    let (kind, sub) = essence.split_once('/')?;
    (!kind.is_empty() && !sub.is_empty())
        .then(|| (kind.to_ascii_lowercase(), sub.to_ascii_lowercase()))
}

/// `%XX` escapes decoded (invalid ones kept as they are); the path the application routes.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a body could not be scanned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unscannable {
    /// Over `maxScanSize` (or clamd's `StreamMaxLength`).
    TooLarge,
    /// An encrypted archive or document: the signature clamd gave.
    Encrypted(String),
    /// Over one of clamd's scan limits (nesting, files, sizes inside archives).
    LimitsExceeded(String),
    /// clamd could not be reached, failed or took too long.
    ScannerUnavailable(String),
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Nothing.
    Clean,
    /// Malware: the signature's name.
    Infected(String),
    /// The body could not be scanned.
    Unscannable(Unscannable),
}

impl Finding {
    /// The `verdict` label of `portcullis_av_scans_total`, and the rule in the log.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Infected(_) => "infected",
            Self::Unscannable(Unscannable::TooLarge) => "too-large",
            Self::Unscannable(Unscannable::Encrypted(_)) => "encrypted",
            Self::Unscannable(Unscannable::LimitsExceeded(_)) => "limits-exceeded",
            Self::Unscannable(Unscannable::ScannerUnavailable(_)) => "scanner-unavailable",
        }
    }

    /// Details for the log: the signature or the failure.
    pub fn detail(&self) -> String {
        match self {
            Self::Clean => String::new(),
            Self::Infected(name)
            | Self::Unscannable(
                Unscannable::Encrypted(name)
                | Unscannable::LimitsExceeded(name)
                | Unscannable::ScannerUnavailable(name),
            ) => name.clone(),
            Self::Unscannable(Unscannable::TooLarge) => "over the scan size limit".to_owned(),
        }
    }

    fn scanner(what: &str, error: impl std::fmt::Display) -> Self {
        Self::Unscannable(Unscannable::ScannerUnavailable(format!(
            "clamd {what}: {error}"
        )))
    }
}

/// clamd's reply to `INSTREAM` (without its NUL) as a finding. Encryption and exceeded
/// limits are clamd's heuristic "signatures" (with `AlertEncrypted` and `AlertExceedsMax`):
/// they say the content could not be looked at, not that it is malicious.
pub fn read_reply(reply: &[u8]) -> Finding {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim();
    if let Some(found) = text.strip_suffix(" FOUND") {
        let name = found
            .rsplit_once(": ")
            .map_or(found, |(_, name)| name)
            .trim();
        return if name.starts_with("Heuristics.Encrypted.") {
            Finding::Unscannable(Unscannable::Encrypted(name.to_owned()))
        } else if name.starts_with("Heuristics.Limits.Exceeded") {
            Finding::Unscannable(Unscannable::LimitsExceeded(name.to_owned()))
        } else {
            Finding::Infected(name.to_owned())
        };
    }
    if text.ends_with(": OK") {
        return Finding::Clean;
    }
    if text.contains("size limit exceeded") {
        return Finding::Unscannable(Unscannable::TooLarge);
    }
    Finding::Unscannable(Unscannable::ScannerUnavailable(format!(
        "clamd answered {text:?}"
    )))
}

/// The edge's verdict on a finding.
pub fn outcome(finding: &Finding, on_unscannable: UnscannableAction) -> Verdict {
    let status = match finding {
        Finding::Clean => return Verdict::Continue,
        Finding::Infected(_) => StatusCode::FORBIDDEN,
        Finding::Unscannable(_) if on_unscannable == UnscannableAction::Allow => {
            return Verdict::Continue;
        }
        Finding::Unscannable(Unscannable::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Finding::Unscannable(Unscannable::Encrypted(_) | Unscannable::LimitsExceeded(_)) => {
            StatusCode::FORBIDDEN
        }
        Finding::Unscannable(Unscannable::ScannerUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Verdict::Respond(
        Response::error(status),
        Reason::owned(finding.label(), finding.detail()),
    )
}

/// The most base64 payloads of one body that are scanned; a body with more is unscannable.
pub const MAX_PAYLOADS: usize = 8;

/// The shortest JSON string taken for a base64 payload (48 bytes encoded).
const MIN_ENCODED: usize = 64;

/// Files a body carries base64-encoded, decoded: the whole body when it is base64 (ASCII
/// whitespace ignored, as .NET's decoder does), else every string of a JSON body at least
/// [`MIN_ENCODED`] characters long that is base64. `Err` with the count when there are more
/// than [`MAX_PAYLOADS`].
pub fn encoded_payloads(body: &[u8]) -> Result<Vec<Vec<u8>>, usize> {
    if let Some(decoded) = decode_base64(body) {
        return Ok(vec![decoded]);
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(Vec::new());
    };
    let mut payloads = Vec::new();
    let mut count = 0;
    let mut stack = vec![&json];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::String(text) if text.len() >= MIN_ENCODED => {
                if let Some(decoded) = decode_base64(text.as_bytes()) {
                    count += 1;
                    if payloads.len() < MAX_PAYLOADS {
                        payloads.push(decoded);
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(fields) => stack.extend(fields.values()),
            _ => {}
        }
    }
    if count > MAX_PAYLOADS {
        return Err(count);
    }
    Ok(payloads)
}

/// `text` decoded as standard base64 (padded or not, ASCII whitespace ignored); `None`
/// when it is empty or not base64.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    // Most bodies are not base64 and say so within a few bytes; only then is anything copied.
    let base64_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if text.is_empty()
        || !text
            .iter()
            .all(|b| base64_byte(b) || b.is_ascii_whitespace())
    {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    if text.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        engine.decode(&compact).ok().filter(|_| !compact.is_empty())
    } else {
        engine.decode(text).ok()
    }
}

/// One scan in flight: the clamd session and the body held until its verdict.
#[derive(Debug)]
pub struct Scan {
    session: clamd::Session,
    held: Vec<u8>,
    limit: usize,
    /// The longest any one step may take.
    step: Duration,
}

impl Scan {
    /// Connects to clamd for a request whose body is to be scanned; a finding when that
    /// fails (clamd down or too slow).
    pub async fn start(antivirus: &Antivirus) -> Result<Self, Finding> {
        let deadline = Instant::now() + antivirus.timeout;
        let session = match timeout_at(deadline, clamd::Session::open(&antivirus.clamd)).await {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => return Err(Finding::scanner("unreachable", error)),
            Err(_) => return Err(Finding::scanner("unreachable", "connection timed out")),
        };
        Ok(Self {
            session,
            held: Vec::new(),
            limit: antivirus.max_scan_size,
            step: antivirus.timeout,
        })
    }

    /// Holds the next part of the body and sends it to clamd; a finding when the scan
    /// ends early (the body is over the limit, clamd failed or refused it). What was held
    /// stays held either way ([`Self::into_held`]).
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<(), Finding> {
        self.held.extend_from_slice(chunk);
        if self.held.len() > self.limit {
            return Err(Finding::Unscannable(Unscannable::TooLarge));
        }
        match timeout_at(Instant::now() + self.step, self.session.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            // clamd stops reading when a stream passes its own limit, and says why.
            Ok(Err(error)) => {
                match timeout_at(Instant::now() + self.step, self.session.reply()).await {
                    Ok(Ok(reply)) => Err(read_reply(&reply)),
                    _ => Err(Finding::scanner("failed", error)),
                }
            }
            Err(_) => Err(Finding::scanner("timed out", "while receiving the body")),
        }
    }

    /// Ends the stream: clamd's finding on the body, then on each base64 payload in it
    /// (the first that is not clean decides), and the body held.
    pub async fn finish(self, antivirus: &Antivirus) -> (Finding, Vec<u8>) {
        let deadline = Instant::now() + self.step;
        let mut finding = verdict_of(deadline, self.session.finish()).await;
        if finding == Finding::Clean {
            finding = match encoded_payloads(&self.held) {
                Err(count) => Finding::Unscannable(Unscannable::LimitsExceeded(format!(
                    "{count} base64 payloads, more than {MAX_PAYLOADS}"
                ))),
                Ok(payloads) => {
                    let mut finding = Finding::Clean;
                    for payload in payloads {
                        let deadline = Instant::now() + self.step;
                        finding = scan_whole(antivirus, deadline, &payload).await;
                        if finding != Finding::Clean {
                            break;
                        }
                    }
                    finding
                }
            };
        }
        (finding, self.held)
    }

    /// The body held so far (the scan given up).
    pub fn into_held(self) -> Vec<u8> {
        self.held
    }
}

/// clamd's verdict at the end of a stream, within the deadline.
async fn verdict_of(
    deadline: Instant,
    reply: impl std::future::Future<Output = std::io::Result<Vec<u8>>>,
) -> Finding {
    match timeout_at(deadline, reply).await {
        Ok(Ok(reply)) => read_reply(&reply),
        Ok(Err(error)) => Finding::scanner("failed", error),
        Err(_) => Finding::scanner("timed out", "waiting for the verdict"),
    }
}

/// Scans `data` in one session of its own, within the deadline.
async fn scan_whole(antivirus: &Antivirus, deadline: Instant, data: &[u8]) -> Finding {
    let mut session = match timeout_at(deadline, clamd::Session::open(&antivirus.clamd)).await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => return Finding::scanner("unreachable", error),
        Err(_) => return Finding::scanner("unreachable", "connection timed out"),
    };
    match timeout_at(deadline, session.send(data)).await {
        Ok(Ok(())) => verdict_of(deadline, session.finish()).await,
        Ok(Err(_)) => verdict_of(deadline, session.reply()).await,
        Err(_) => Finding::scanner("timed out", "while sending a decoded payload"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(paths: &[&str], content_types: &[&str]) -> edge::Antivirus {
        serde_json::from_value(serde_json::json!({
            "clamd": "127.0.0.1:3310", "paths": paths, "methods": ["POST", "PUT"],
            "contentTypes": content_types, "maxScanSize": "1Mi", "onUnscannable": "Block",
            "timeout": "5s"
        }))
        .unwrap()
    }

    fn jellyfin() -> Antivirus {
        Antivirus::new(&doc(
            &portcullis_crds::media_server::JELLYFIN_UPLOAD_PATHS,
            &[],
        ))
        .unwrap()
    }

    #[test]
    fn jellyfins_uploads_are_scanned_whatever_the_case_or_escaping() {
        let av = jellyfin();
        for path in [
            "/Videos/5f0e/Subtitles",
            "/videos/5f0e/subtitles",
            "/Videos/5f0e/%53ubtitles",
            "/jellyfin/Videos/5f0e/Subtitles",
            "/Items/5f0e/Images/Primary",
            "/Items/5f0e/Images/Backdrop/1",
            "/Users/5f0e/Images/Primary",
            "/UserImage",
            "/Branding/Splashscreen",
        ] {
            assert!(av.wants(&Method::POST, path, None), "{path}");
        }
        assert!(av.wants(&Method::PUT, "/Videos/x/Subtitles", None));
        assert!(!av.wants(&Method::GET, "/Videos/x/Subtitles", None));
        assert!(!av.wants(&Method::POST, "/Sessions/Playing", None));
        assert!(!av.wants(&Method::POST, "/Videos/x/Subtitles/0", None));
    }

    #[test]
    fn media_types_narrow_what_is_scanned() {
        let av = Antivirus::new(&doc(&[], &["image/*", "application/x-subrip"])).unwrap();
        let wants = |content_type: &[u8]| av.wants(&Method::POST, "/any", Some(content_type));
        assert!(wants(b"image/png"));
        assert!(wants(b"IMAGE/JPEG; q=1"));
        assert!(wants(b"application/x-subrip; charset=utf-8"));
        assert!(!wants(b"application/json"));
        assert!(!wants(b"application/x-subrip-not"));
        // Without a readable type, the application may sniff the content: scanned.
        assert!(av.wants(&Method::POST, "/any", None));
        assert!(wants(b"\xff"));
        // No list: every type, every path.
        let all = Antivirus::new(&doc(&[], &[])).unwrap();
        assert!(all.wants(&Method::POST, "/whatever", Some(b"application/json")));
    }

    #[test]
    fn escapes_are_decoded_and_broken_ones_kept() {
        assert_eq!(percent_decode("/a%2Fb%41"), "/a/bA");
        assert_eq!(percent_decode("/a%zz%4"), "/a%zz%4");
    }

    #[test]
    fn clamds_replies_become_findings() {
        assert_eq!(read_reply(b"stream: OK"), Finding::Clean);
        assert_eq!(
            read_reply(b"stream: Eicar-Test-Signature FOUND"),
            Finding::Infected("Eicar-Test-Signature".into())
        );
        assert_eq!(
            read_reply(b"stream: Heuristics.Encrypted.Zip FOUND"),
            Finding::Unscannable(Unscannable::Encrypted("Heuristics.Encrypted.Zip".into()))
        );
        assert_eq!(
            read_reply(b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND"),
            Finding::Unscannable(Unscannable::LimitsExceeded(
                "Heuristics.Limits.Exceeded.MaxFileSize".into()
            ))
        );
        assert_eq!(
            read_reply(b"INSTREAM size limit exceeded. ERROR"),
            Finding::Unscannable(Unscannable::TooLarge)
        );
        assert!(matches!(
            read_reply(b"stream: Can't allocate memory ERROR"),
            Finding::Unscannable(Unscannable::ScannerUnavailable(_))
        ));
        assert!(matches!(
            read_reply(b""),
            Finding::Unscannable(Unscannable::ScannerUnavailable(_))
        ));
    }

    #[test]
    fn infected_bodies_are_refused_and_unscannable_ones_follow_the_policy() {
        let infected = Finding::Infected("Eicar-Test-Signature".into());
        for policy in [UnscannableAction::Block, UnscannableAction::Allow] {
            let Verdict::Respond(response, reason) = outcome(&infected, policy) else {
                panic!("an infected body passed");
            };
            assert_eq!(response.status, StatusCode::FORBIDDEN);
            assert_eq!(
                (reason.rule, &*reason.detail),
                ("infected", "Eicar-Test-Signature")
            );
            assert_eq!(outcome(&Finding::Clean, policy), Verdict::Continue);
        }
        for (unscannable, status) in [
            (Unscannable::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            (
                Unscannable::Encrypted("Heuristics.Encrypted.Zip".into()),
                StatusCode::FORBIDDEN,
            ),
            (
                Unscannable::LimitsExceeded("Heuristics.Limits.Exceeded.MaxFiles".into()),
                StatusCode::FORBIDDEN,
            ),
            (
                Unscannable::ScannerUnavailable("clamd unreachable".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ] {
            let finding = Finding::Unscannable(unscannable);
            let Verdict::Respond(response, reason) = outcome(&finding, UnscannableAction::Block)
            else {
                panic!("{finding:?} passed");
            };
            assert_eq!(response.status, status);
            assert_eq!(reason.rule, finding.label());
            assert_eq!(
                outcome(&finding, UnscannableAction::Allow),
                Verdict::Continue
            );
        }
    }

    #[test]
    fn base64_bodies_and_base64_strings_of_json_bodies_are_decoded() {
        use base64::engine::general_purpose::STANDARD;
        let file = b"a file carried in base64, long enough to be taken for one".repeat(2);
        let encoded = STANDARD.encode(&file);
        // Jellyfin's image uploads: the body is the base64 (line breaks are ignored).
        assert_eq!(encoded_payloads(encoded.as_bytes()), Ok(vec![file.clone()]));
        let wrapped = format!("{}\r\n{}\n", &encoded[..40], &encoded[40..]);
        assert_eq!(encoded_payloads(wrapped.as_bytes()), Ok(vec![file.clone()]));
        // Jellyfin's subtitle uploads: JSON with the file in `Data`.
        let json = serde_json::json!({
            "Language": "eng", "Format": "srt", "IsForced": false, "Data": encoded,
            "Nested": [{"More": STANDARD.encode(b"x".repeat(60))}]
        });
        let mut payloads = encoded_payloads(json.to_string().as_bytes()).unwrap();
        payloads.sort();
        assert_eq!(payloads, vec![file.clone(), b"x".repeat(60)]);
        // Short strings, words and non-base64 text are not payloads.
        let text =
            serde_json::json!({"Name": "Movie night", "Id": "5f0e", "Overview": "a".repeat(63)});
        assert_eq!(encoded_payloads(text.to_string().as_bytes()), Ok(vec![]));
        assert_eq!(encoded_payloads(b"--boundary\r\n binary \xff"), Ok(vec![]));
        assert_eq!(encoded_payloads(b""), Ok(vec![]));
        // A body hiding files among many strings is more than the scan takes.
        let many: Vec<String> = (0..=MAX_PAYLOADS).map(|_| encoded.clone()).collect();
        assert_eq!(
            encoded_payloads(serde_json::to_vec(&many).unwrap().as_slice()),
            Err(MAX_PAYLOADS + 1)
        );
    }

    #[test]
    fn broken_sections_are_refused() {
        let mut bad = doc(&["("], &[]);
        assert!(matches!(
            Antivirus::new(&bad),
            Err(AntivirusError::Paths(_))
        ));
        bad.paths.clear();
        bad.clamd = "unix:relative.sock".into();
        assert!(matches!(
            Antivirus::new(&bad),
            Err(AntivirusError::Address(_))
        ));
    }
}
