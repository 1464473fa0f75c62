//! Request hygiene: each rule and its status code, on the shared proxy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{HOST, client_ip, raw_tls, shared, tls_from};

fn request(head: &str) -> Vec<u8> {
    format!("{head}\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_clean_request_is_proxied() {
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!("GET / HTTP/1.1\r\nHost: {HOST}")),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello from the origin"), "{text}");
}

#[tokio::test]
async fn another_host_is_misdirected() {
    let (status, text) = raw_tls(
        shared().https(),
        &request("GET / HTTP/1.1\r\nHost: evil.test"),
    )
    .await;
    assert_eq!(status, 421, "{text}");
    assert!(text.contains("Request ID"), "{text}");
}

#[tokio::test]
async fn a_method_off_the_list_is_refused_with_allow() {
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!("DELETE / HTTP/1.1\r\nHost: {HOST}")),
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("allow: get, head, post, put, options"),
        "{text}"
    );
}

#[tokio::test]
async fn a_long_request_target_is_414() {
    let path = format!("/{}", "a".repeat(300));
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!("GET {path} HTTP/1.1\r\nHost: {HOST}")),
    )
    .await;
    assert_eq!(status, 414, "{text}");
}

#[tokio::test]
async fn too_many_headers_are_431() {
    let headers: String = (0..40).map(|i| format!("\r\nX-Filler-{i}: x")).collect();
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!("GET / HTTP/1.1\r\nHost: {HOST}{headers}")),
    )
    .await;
    assert_eq!(status, 431, "{text}");
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let big = "b".repeat(5000);
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}")),
    )
    .await;
    assert_eq!(status, 431, "{text}");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_it_is_sent() {
    let (status, text) = raw_tls(
        shared().https(),
        &request(&format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000000"
        )),
    )
    .await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_cut_with_413() {
    let tls = tls_from(client_ip(), shared().https(), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..64 {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut out)).await;
    let _ = writing.await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"requestId\""), "{text}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (status, text) = raw_tls(
        shared().https(),
        format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Request ID"), "{text}");
}

#[tokio::test]
async fn a_duplicate_content_length_is_400() {
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 5",
    ] {
        let (status, text) = raw_tls(
            shared().https(),
            format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\n{lengths}\r\n\r\nhello").as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{lengths}: {text}");
    }
}

#[tokio::test]
async fn a_malformed_content_length_is_400() {
    let (status, text) = raw_tls(
        shared().https(),
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5x\r\n\r\nhello")
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn error_pages_are_json_when_asked_and_logged_with_their_decision() {
    let (status, text) = raw_tls(
        shared().https(),
        &request("GET /x?api_key=hunter2 HTTP/1.1\r\nHost: evil.test\r\nAccept: application/json"),
    )
    .await;
    assert_eq!(status, 421, "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(value["status"], 421);
    assert_eq!(value["error"], "Misdirected Request");
    let id = value["requestId"].as_str().unwrap().to_owned();
    assert!(
        !text.contains("evil.test"),
        "the page names no policy detail: {text}"
    );
    let line = shared().access_log_line(&id).await;
    assert_eq!(line["layer"], "hygiene");
    assert_eq!(line["decision"], "respond");
    assert_eq!(line["rule"], "host-mismatch");
    assert_eq!(line["status"], 421);
    assert_eq!(line["path"], "/x?api_key=REDACTED");
    assert!(!line.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_with_408() {
    let mut tls = tls_from(client_ip(), shared().https(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nab").as_bytes(),
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // 408, not the 504 of upstreamRead (2s): the body timer (1s) fired.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "bodyRead is 1s: cut after {took:?}"
    );
}
