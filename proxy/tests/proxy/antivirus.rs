//! Upload antivirus end to end: the real proxy streams Jellyfin uploads to a real clamd
//! (started by the tests with a one-signature database: the EICAR test file), holds them
//! until its verdict, and forwards only clean ones; unscannable bodies (encrypted
//! archives, oversize bodies, clamd down or stalled) follow `onUnscannable`. The clamd
//! client is also tried on its own, over TCP and a Unix socket.

use std::{
    process::Command,
    sync::LazyLock,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use portcullis_proxy::antivirus::{self, Finding, Unscannable, clamd};

use crate::util::{
    Clamd, Conn, EICAR, HOST, Proxy, Settings, client_ip, origin_saw, origin_upload,
};

/// The clamd most tests share.
fn shared_clamd() -> &'static Clamd {
    static CLAMD: LazyLock<Clamd> = LazyLock::new(Clamd::start);
    &CLAMD
}

/// The document's `antivirus:` section.
fn section(clamd: &str, on_unscannable: &str, max_scan_size: &str, timeout: &str) -> String {
    format!(
        "antivirus:
  clamd: {clamd}
  paths: ['/Videos/[^/]+/Subtitles$', '/Items/[^/]+/Images/[^/]+$']
  methods: [POST]
  maxScanSize: {max_scan_size}
  onUnscannable: {on_unscannable}
  timeout: {timeout}
"
    )
}

fn av_proxy(clamd: &str, on_unscannable: &str) -> Proxy {
    Proxy::start(Settings {
        extra: section(clamd, on_unscannable, "256Ki", "5s"),
        ..Settings::default()
    })
}

/// A subtitle file as a browser posts it: one part of a multipart form.
fn multipart(file: &[u8]) -> Vec<u8> {
    let mut body = b"--portcullis-test\r\nContent-Disposition: form-data; name=\"file\"; \
filename=\"movie.en.srt\"\r\nContent-Type: application/x-subrip\r\n\r\n"
        .to_vec();
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n--portcullis-test--\r\n");
    body
}

const SUBTITLE: &[u8] = b"1\n00:00:01,000 --> 00:00:04,000\nWhere are we going?\n\n2\n\
00:00:05,000 --> 00:00:07,500\nSomewhere safe.\n";

/// A body sent in `pieces` chunks with no length: chunked over HTTP/1.1, no
/// `content-length` over HTTP/2.
fn streamed(body: Vec<u8>, pieces: usize) -> BoxBody<Bytes, std::io::Error> {
    let size = body.len().div_ceil(pieces).max(1);
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(size)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)))
}

fn whole(body: Vec<u8>) -> BoxBody<Bytes, std::io::Error> {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

/// Posts `body` as a multipart form to `target` over a new connection: status, request id,
/// response body.
async fn upload(
    proxy: &Proxy,
    target: &str,
    body: BoxBody<Bytes, std::io::Error>,
    h2: bool,
) -> (StatusCode, String, String) {
    post(
        proxy,
        target,
        "multipart/form-data; boundary=portcullis-test",
        body,
        h2,
    )
    .await
}

/// Posts `body` of `content_type` to `target` over a new connection: status, request id,
/// response body.
async fn post(
    proxy: &Proxy,
    target: &str,
    content_type: &str,
    body: BoxBody<Bytes, std::io::Error>,
    h2: bool,
) -> (StatusCode, String, String) {
    let request = Request::post(format!("https://{HOST}{target}"))
        .header("host", HOST)
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(body)
        .unwrap();
    let mut conn = Conn::open(proxy.https(), client_ip(), h2).await;
    let mut response = conn.send(request).await.unwrap();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    (
        response.status(),
        id,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A unique item id for one upload's target.
fn item(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// Whether the origin got nothing of the upload to `item`: at most the request head.
fn origin_got_no_body(item: &str) -> bool {
    origin_upload(item).is_none_or(|body| body.is_empty())
}

#[tokio::test]
async fn eicar_in_a_multipart_subtitle_upload_is_blocked_and_never_reaches_the_origin() {
    let proxy = av_proxy(&shared_clamd().address, "Block");
    for h2 in [false, true] {
        let video = item("eicar");
        let (status, id, body) = upload(
            &proxy,
            &format!("/Videos/{video}/Subtitles"),
            whole(multipart(EICAR)),
            h2,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "h2: {h2}: {body}");
        assert!(
            body.contains(&id),
            "the refusal names the request id: {body}"
        );
        assert!(
            origin_got_no_body(&video),
            "the origin got the file (h2: {h2})"
        );
        let line = proxy.access_log_line(&id).await;
        assert_eq!(line["layer"], "antivirus");
        assert_eq!(line["rule"], "infected");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("Eicar-Test-Signature"),
            "{line}"
        );
    }
    // Streamed in pieces with no length: the same.
    let video = item("eicar-chunked");
    let mut file = b"1\n00:00:01,000 --> 00:00:04,000\n".repeat(2000);
    file.extend_from_slice(EICAR);
    let (status, _, _) = upload(
        &proxy,
        &format!("/Videos/{video}/Subtitles"),
        streamed(multipart(&file), 7),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(origin_got_no_body(&video));
    assert_eq!(
        proxy
            .metric("portcullis_av_scans_total{verdict=\"infected\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_clean_upload_passes_byte_for_byte() {
    let proxy = av_proxy(&shared_clamd().address, "Block");
    // An image of 200 KiB, every byte value.
    let image: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    for (h2, pieces) in [(false, 1), (false, 9), (true, 1), (true, 5)] {
        let video = item("clean");
        let body = multipart(SUBTITLE);
        let (status, _, text) = upload(
            &proxy,
            &format!("/Videos/{video}/Subtitles"),
            streamed(body.clone(), pieces),
            h2,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "h2 {h2}, {pieces} pieces: {text}"
        );
        assert_eq!(origin_upload(&video).unwrap(), body);
        let picture = item("image");
        let (status, _, _) = upload(
            &proxy,
            &format!("/Items/{picture}/Images/Primary"),
            streamed(image.clone(), pieces),
            h2,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(origin_upload(&picture).unwrap(), image, "h2 {h2}");
    }
    assert_eq!(
        proxy
            .metric("portcullis_av_scans_total{verdict=\"clean\"}")
            .await,
        Some(8.0)
    );
    // Paths that are not uploads are not scanned (EICAR in a search is just text).
    let before = proxy
        .metric("portcullis_av_scans_total{verdict=\"clean\"}")
        .await;
    let (status, _, _) = upload(&proxy, "/echo-headers", whole(EICAR.to_vec()), false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(origin_saw("/echo-headers"));
    assert_eq!(
        proxy
            .metric("portcullis_av_scans_total{verdict=\"clean\"}")
            .await,
        before
    );
}

#[tokio::test]
async fn jellyfins_base64_uploads_are_decoded_and_scanned() {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let proxy = av_proxy(&shared_clamd().address, "Block");
    // The web client posts an image as its base64, and a subtitle as JSON holding it.
    let image = base64.encode(EICAR);
    let subtitle = serde_json::json!({
        "Language": "eng", "Format": "srt", "IsForced": false, "IsHearingImpaired": false,
        "Data": base64.encode([SUBTITLE, EICAR].concat()),
    })
    .to_string();
    for (h2, target, content_type, body) in [
        (false, "Items/{}/Images/Primary", "image/png", image.clone()),
        (true, "Items/{}/Images/Primary", "image/png", image.clone()),
        (
            false,
            "Videos/{}/Subtitles",
            "application/json",
            subtitle.clone(),
        ),
        (
            true,
            "Videos/{}/Subtitles",
            "application/json",
            subtitle.clone(),
        ),
    ] {
        let id = item("base64");
        let target = format!("/{}", target.replace("{}", &id));
        let (status, request_id, _) =
            post(&proxy, &target, content_type, whole(body.into_bytes()), h2).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}, h2 {h2}");
        assert!(origin_got_no_body(&id));
        let line = proxy.access_log_line(&request_id).await;
        assert_eq!(line["rule"], "infected", "{line}");
    }
    // Clean ones pass as they were sent.
    let clean_image = base64.encode((0..50_000).map(|i| (i % 256) as u8).collect::<Vec<_>>());
    let clean_subtitle = serde_json::json!({
        "Language": "eng", "Format": "srt", "IsForced": false, "Data": base64.encode(SUBTITLE),
    })
    .to_string();
    for (target, content_type, body) in [
        ("Items/{}/Images/Primary", "image/png", clean_image),
        ("Videos/{}/Subtitles", "application/json", clean_subtitle),
    ] {
        let id = item("base64-clean");
        let target = format!("/{}", target.replace("{}", &id));
        let (status, _, _) = post(
            &proxy,
            &target,
            content_type,
            streamed(body.clone().into_bytes(), 3),
            false,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{target}");
        assert_eq!(origin_upload(&id).unwrap(), body.into_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// An encrypted zip, written here: ZipCrypto ("traditional PKWARE encryption"), which every
// unzip reads with the password.

fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (n, entry) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    table
}

fn crc32(table: &[u32; 256], data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A zip holding `name` with `content`, encrypted with `password`.
fn encrypted_zip(name: &str, content: &[u8], password: &[u8]) -> Vec<u8> {
    let table = crc_table();
    let crc = crc32(&table, content);
    let mut keys = [0x1234_5678u32, 0x2345_6789, 0x3456_7890];
    let update = |keys: &mut [u32; 3], byte: u8| {
        keys[0] = table[((keys[0] ^ u32::from(byte)) & 0xff) as usize] ^ (keys[0] >> 8);
        keys[1] = keys[1]
            .wrapping_add(keys[0] & 0xff)
            .wrapping_mul(134_775_813)
            .wrapping_add(1);
        keys[2] = table[((keys[2] ^ (keys[1] >> 24)) & 0xff) as usize] ^ (keys[2] >> 8);
    };
    for &b in password {
        update(&mut keys, b);
    }
    // The encryption header: 11 bytes, then the CRC's high byte (the password check).
    let mut plain = vec![0x5a; 11];
    plain.push((crc >> 24) as u8);
    plain.extend_from_slice(content);
    let mut data = Vec::with_capacity(plain.len());
    for p in plain {
        let t = (keys[2] | 2) & 0xffff;
        data.push(p ^ ((t * (t ^ 1)) >> 8) as u8);
        update(&mut keys, p);
    }
    let le16 = |v: usize| (v as u16).to_le_bytes();
    let le32 = |v: usize| (v as u32).to_le_bytes();
    let mut zip = Vec::new();
    // Local header: version 20, flag 1 (encrypted), stored.
    zip.extend_from_slice(&[0x50, 0x4b, 3, 4, 20, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(&crc.to_le_bytes());
    zip.extend_from_slice(&le32(data.len()));
    zip.extend_from_slice(&le32(content.len()));
    zip.extend_from_slice(&le16(name.len()));
    zip.extend_from_slice(&le16(0));
    zip.extend_from_slice(name.as_bytes());
    zip.extend_from_slice(&data);
    let directory_at = zip.len();
    zip.extend_from_slice(&[0x50, 0x4b, 1, 2, 20, 0, 20, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(&crc.to_le_bytes());
    zip.extend_from_slice(&le32(data.len()));
    zip.extend_from_slice(&le32(content.len()));
    zip.extend_from_slice(&le16(name.len()));
    zip.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
    zip.extend_from_slice(&le32(0)); // local header offset
    zip.extend_from_slice(name.as_bytes());
    let directory_len = zip.len() - directory_at;
    zip.extend_from_slice(&[0x50, 0x4b, 5, 6, 0, 0, 0, 0, 1, 0, 1, 0]);
    zip.extend_from_slice(&le32(directory_len));
    zip.extend_from_slice(&le32(directory_at));
    zip.extend_from_slice(&le16(0));
    zip
}

#[test]
fn the_encrypted_zip_opens_with_its_password() {
    // The archive is a real one: Debian's unzip reads it back with the password.
    let zip = encrypted_zip("eicar.txt", EICAR, b"secret");
    let file = crate::util::scratch().join("encrypted.zip");
    std::fs::write(&file, &zip).unwrap();
    let out = Command::new("unzip")
        .args(["-P", "secret", "-p"])
        .arg(&file)
        .output()
        .expect("unzip (Debian package unzip) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, EICAR);
    // Without the password it does not open.
    let out = Command::new("unzip")
        .args(["-P", "wrong", "-p"])
        .arg(&file)
        .output()
        .unwrap();
    assert_ne!(out.stdout, EICAR);
}

#[tokio::test]
async fn an_encrypted_zip_follows_the_unscannable_policy() {
    let zip = encrypted_zip("subtitles.srt", EICAR, b"secret");
    let blocking = av_proxy(&shared_clamd().address, "Block");
    let video = item("zip-block");
    let (status, id, _) = upload(
        &blocking,
        &format!("/Videos/{video}/Subtitles"),
        whole(zip.clone()),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(origin_got_no_body(&video));
    let line = blocking.access_log_line(&id).await;
    assert_eq!(
        (&line["layer"], &line["rule"]),
        (&"antivirus".into(), &"encrypted".into())
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("Heuristics.Encrypted.Zip")
    );
    let allowing = av_proxy(&shared_clamd().address, "Allow");
    let video = item("zip-allow");
    let (status, _, _) = upload(
        &allowing,
        &format!("/Videos/{video}/Subtitles"),
        whole(zip.clone()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(origin_upload(&video).unwrap(), zip);
    assert_eq!(
        allowing
            .metric("portcullis_av_scans_total{verdict=\"encrypted\"}")
            .await,
        Some(1.0)
    );
    // Allowing the unscannable never lets the infected through.
    let video = item("eicar-allow");
    let (status, _, _) = upload(
        &allowing,
        &format!("/Videos/{video}/Subtitles"),
        whole(multipart(EICAR)),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(origin_got_no_body(&video));
}

#[tokio::test]
async fn an_oversize_body_follows_the_unscannable_policy() {
    // The limit is 256 KiB; this body is 400 KiB (and under the edge's 1 MiB body limit).
    let big: Vec<u8> = (0..400 * 1024).map(|i| (i % 253) as u8).collect();
    let blocking = av_proxy(&shared_clamd().address, "Block");
    // The client sends what it sends, then waits for the answer (a refused body is not
    // read to its end: bytes left unread when the edge closes would reset the connection
    // before the client reads the refusal).
    let then_wait = |pieces: Vec<Vec<u8>>| {
        let sent = futures::stream::iter(
            pieces
                .into_iter()
                .map(|piece| Ok::<_, std::io::Error>(Frame::data(Bytes::from(piece)))),
        );
        BodyExt::boxed(StreamBody::new(sent.chain(futures::stream::pending())))
    };
    // Announced by its length: refused from the head, before the origin hears of it.
    for h2 in [false, true] {
        let video = item("big-length");
        let request = Request::post(format!("https://{HOST}/Videos/{video}/Subtitles"))
            .header("host", HOST)
            .header("content-length", big.len())
            .body(then_wait(Vec::new()))
            .unwrap();
        let mut conn = Conn::open(blocking.https(), client_ip(), h2).await;
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "h2 {h2}");
        assert!(!origin_saw(&video));
    }
    // Streamed without a length: refused once it passes the limit (its last byte here).
    for h2 in [false, true] {
        let video = item("big-stream");
        let mut pieces: Vec<Vec<u8>> = big[..256 * 1024]
            .chunks(32 * 1024)
            .map(<[u8]>::to_vec)
            .collect();
        pieces.push(big[256 * 1024..257 * 1024].to_vec());
        let (status, _, _) = upload(
            &blocking,
            &format!("/Videos/{video}/Subtitles"),
            then_wait(pieces),
            h2,
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "h2 {h2}");
        assert!(origin_got_no_body(&video));
    }
    let allowing = av_proxy(&shared_clamd().address, "Allow");
    for (pieces, h2) in [(1, false), (10, false), (10, true)] {
        let video = item("big-allow");
        let (status, _, _) = upload(
            &allowing,
            &format!("/Videos/{video}/Subtitles"),
            streamed(big.clone(), pieces),
            h2,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            origin_upload(&video).unwrap(),
            big,
            "{pieces} pieces, h2 {h2}"
        );
    }
    assert_eq!(
        allowing
            .metric("portcullis_av_scans_total{verdict=\"too-large\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn clamd_killed_mid_test_gives_the_configured_fail_mode() {
    for on_unscannable in ["Block", "Allow"] {
        // Over a Unix socket, as a sidecar may offer it.
        let mut clamd = Clamd::start_unix();
        let proxy = av_proxy(&clamd.address, on_unscannable);
        let video = item("before-kill");
        let body = multipart(SUBTITLE);
        let (status, _, _) = upload(
            &proxy,
            &format!("/Videos/{video}/Subtitles"),
            whole(body.clone()),
            false,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // Killed while an upload streams: the first half is with clamd, the rest follows.
        let (first_sent, first_signal) = tokio::sync::oneshot::channel::<()>();
        let (kill_done, kill_signal) = tokio::sync::oneshot::channel::<()>();
        let half = body.len() / 2;
        let (head, tail) = (
            Bytes::copy_from_slice(&body[..half]),
            Bytes::copy_from_slice(&body[half..]),
        );
        let stream = futures::stream::unfold(
            (0, Some(first_sent), Some(kill_signal)),
            move |(step, first_sent, kill_signal)| {
                let (head, tail) = (head.clone(), tail.clone());
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, std::io::Error>(Frame::data(head)),
                            (1, first_sent, kill_signal),
                        )),
                        1 => {
                            if let Some(sent) = first_sent {
                                let _ = sent.send(());
                            }
                            if let Some(killed) = kill_signal {
                                let _ = killed.await;
                            }
                            Some((Ok(Frame::data(tail)), (2, None, None)))
                        }
                        _ => None,
                    }
                }
            },
        );
        let video = item("during-kill");
        let target = format!("/Videos/{video}/Subtitles");
        let request = {
            let proxy_address = proxy.https();
            tokio::spawn(async move {
                let request = Request::post(format!("https://{HOST}{target}"))
                    .header("host", HOST)
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap();
                let mut conn = Conn::open(proxy_address, client_ip(), false).await;
                conn.send(request).await.unwrap().status()
            })
        };
        first_signal.await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        clamd.kill();
        kill_done.send(()).unwrap();
        let status = request.await.unwrap();
        // And after it: clamd is gone.
        let after = item("after-kill");
        let (status_after, _, _) = upload(
            &proxy,
            &format!("/Videos/{after}/Subtitles"),
            whole(body.clone()),
            true,
        )
        .await;
        if on_unscannable == "Block" {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(origin_got_no_body(&video));
            assert_eq!(status_after, StatusCode::SERVICE_UNAVAILABLE);
            assert!(origin_got_no_body(&after));
        } else {
            assert_eq!(status, StatusCode::NO_CONTENT);
            assert_eq!(origin_upload(&video).unwrap(), body);
            assert_eq!(status_after, StatusCode::NO_CONTENT);
            assert_eq!(origin_upload(&after).unwrap(), body);
        }
        assert_eq!(
            proxy
                .metric("portcullis_av_scans_total{verdict=\"scanner-unavailable\"}")
                .await,
            Some(2.0),
            "{on_unscannable}"
        );
    }
}

#[tokio::test]
async fn a_stalled_clamd_times_out_into_the_fail_mode_and_never_hangs() {
    let clamd = Clamd::start();
    let proxy = Proxy::start(Settings {
        extra: section(&clamd.address, "Block", "256Ki", "1s"),
        upstream_read: "10s",
        ..Settings::default()
    });
    let signal = |name: &str| {
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(clamd.pid().to_string())
            .status()
            .unwrap();
    };
    // Stopped, clamd still accepts connections (the kernel does) but never answers.
    signal("STOP");
    let video = item("stalled");
    let started = Instant::now();
    let (status, id, _) = upload(
        &proxy,
        &format!("/Videos/{video}/Subtitles"),
        whole(multipart(SUBTITLE)),
        false,
    )
    .await;
    let waited = started.elapsed();
    signal("CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(origin_got_no_body(&video));
    let line = proxy.access_log_line(&id).await;
    assert_eq!(line["rule"], "scanner-unavailable");
    assert!(
        line["reason"].as_str().unwrap().contains("timed out"),
        "{line}"
    );
    // Diagnostic only: the scan gave up at its 1 s timeout, not at some later one.
    eprintln!("a stalled clamd answered in {waited:?}");
    // Resumed, it scans again; and a client slower than the timeout is not held against
    // clamd (each of clamd's steps has the timeout, not the whole upload).
    let video = item("resumed");
    let body = multipart(SUBTITLE);
    let pieces: Vec<Bytes> = body.chunks(40).map(Bytes::copy_from_slice).collect();
    let slow = futures::stream::unfold(pieces.into_iter(), |mut pieces| async move {
        let piece = pieces.next()?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((Ok::<_, std::io::Error>(Frame::data(piece)), pieces))
    });
    // (Seven pieces, 400 ms apart: 2.8 s against the 1 s timeout.)
    let (status, _, _) = upload(
        &proxy,
        &format!("/Videos/{video}/Subtitles"),
        BodyExt::boxed(StreamBody::new(slow)),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(origin_upload(&video).unwrap(), body);
}

// ---------------------------------------------------------------------------------------
// The clamd client on its own.

async fn scan(address: &clamd::Address, data: &[u8], pieces: usize) -> Finding {
    let mut session = clamd::Session::open(address).await.unwrap();
    for piece in data.chunks(data.len().div_ceil(pieces).max(1)) {
        if session.send(piece).await.is_err() {
            return antivirus::read_reply(&session.reply().await.unwrap());
        }
    }
    antivirus::read_reply(&session.finish().await.unwrap())
}

/// The scan the edge runs with `clamd`, blocking what it cannot scan, up to 8 MiB.
fn blocking(clamd: &Clamd) -> antivirus::Antivirus {
    let doc: portcullis_crds::edge::Antivirus = serde_json::from_value(serde_json::json!({
        "clamd": clamd.address, "methods": ["POST"], "maxScanSize": "8Mi",
        "onUnscannable": "Block", "timeout": "5s"
    }))
    .unwrap();
    antivirus::Antivirus::new(&doc).unwrap()
}

#[tokio::test]
async fn the_clamd_client_scans_over_tcp_and_a_unix_socket() {
    let unix = Clamd::start_unix();
    for clamd in [shared_clamd(), &unix] {
        let address = clamd::Address::parse(&clamd.address).unwrap();
        assert_eq!(scan(&address, SUBTITLE, 1).await, Finding::Clean);
        assert_eq!(scan(&address, b"", 1).await, Finding::Clean);
        assert_eq!(
            scan(&address, &multipart(EICAR), 3).await,
            Finding::Infected("Eicar-Test-Signature.UNOFFICIAL".into())
        );
        assert_eq!(
            scan(&address, &encrypted_zip("a.txt", SUBTITLE, b"pw"), 2).await,
            Finding::Unscannable(Unscannable::Encrypted("Heuristics.Encrypted.Zip".into()))
        );
    }
}

#[tokio::test]
async fn clamds_answer_is_read_when_it_closed_before_the_stream_ended() {
    // A body over clamd's limit sent whole into the sockets' buffers before clamd reads
    // it: clamd answers and closes, the end of the stream cannot be written, and its
    // answer still decides.
    let clamd = Clamd::start_with(false, "1K");
    let address = clamd::Address::parse(&clamd.address).unwrap();
    let body = vec![b'a'; 4096];
    let mut session = clamd::Session::open(&address).await.unwrap();
    session.send(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        antivirus::read_reply(&session.finish().await.unwrap()),
        Finding::Unscannable(Unscannable::TooLarge)
    );
    let av = blocking(&clamd);
    let mut scan = antivirus::Scan::start(&av).await.unwrap();
    scan.feed(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (finding, held) = scan.finish(&av).await;
    assert_eq!(finding, Finding::Unscannable(Unscannable::TooLarge));
    assert_eq!(held, body);
}

#[tokio::test]
async fn clamds_own_stream_limit_reads_as_too_large() {
    // clamd stops reading a stream past its StreamMaxLength and says so; the client reads
    // that answer even when its own write failed.
    let clamd = Clamd::start_with(false, "1M");
    let address = clamd::Address::parse(&clamd.address).unwrap();
    let big = vec![b'a'; 3 << 20];
    assert_eq!(
        scan(&address, &big, 24).await,
        Finding::Unscannable(Unscannable::TooLarge)
    );
    // Through the scan the edge runs: the same finding, and the body still held.
    let av = blocking(&clamd);
    let mut scan = antivirus::Scan::start(&av).await.unwrap();
    let mut finding = None;
    for piece in big.chunks(64 * 1024) {
        if let Err(found) = scan.feed(piece).await {
            finding = Some(found);
            break;
        }
    }
    let finding = match finding {
        Some(finding) => finding,
        None => scan.finish(&av).await.0,
    };
    assert_eq!(finding, Finding::Unscannable(Unscannable::TooLarge));
}
