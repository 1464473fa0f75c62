//! Client identity: forwarding headers from untrusted and trusted peers, the PROXY protocol,
//! and what the upstream and the access log get.

use std::{net::IpAddr, sync::LazyLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{
    HOST, Proxy, Settings, client_ip, empty, eventually, fetch_from, get, seen_headers, shared,
    tls_over, trusted_proxy_ip,
};

async fn origin_view(
    source: IpAddr,
    forwarded_for: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let request = get("/echo-headers")
        .header("x-forwarded-for", forwarded_for)
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.test")
        .header("true-client-ip", "6.6.6.6")
        .body(empty())
        .unwrap();
    let (response, body) = fetch_from(shared().https(), source, request).await;
    assert_eq!(response.status(), 200);
    seen_headers(&body)
}

#[tokio::test]
async fn forged_forwarding_from_an_untrusted_client_changes_nothing() {
    let seen = origin_view(client_ip(), "6.6.6.6").await;
    assert_eq!(seen["x-forwarded-for"], ["127.0.0.1"]);
    assert_eq!(seen["x-real-ip"], ["127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], ["https"]);
    assert_eq!(seen["x-forwarded-host"], [HOST]);
    assert!(!seen.contains_key("forwarded"));
    assert!(!seen.contains_key("true-client-ip"));
    assert_eq!(seen["x-request-id"][0].len(), 16);
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_rightmost_untrusted_hop() {
    let seen = origin_view(trusted_proxy_ip(), "6.6.6.6, 198.51.100.7").await;
    assert_eq!(seen["x-forwarded-for"], ["198.51.100.7"]);
    assert_eq!(seen["x-real-ip"], ["198.51.100.7"]);
    assert!(!seen.contains_key("forwarded"));
}

#[tokio::test]
async fn the_access_log_names_the_client_and_scrubs_api_keys() {
    let request = get("/echo-headers?api_key=topsecret&x=1")
        .header("x-forwarded-for", "198.51.100.9")
        .body(empty())
        .unwrap();
    let (_, body) = fetch_from(shared().https(), trusted_proxy_ip(), request).await;
    let id = seen_headers(&body)["x-request-id"][0].clone();
    let line = shared().access_log_line(&id).await;
    assert_eq!(line["clientIp"], "198.51.100.9");
    assert_eq!(line["path"], "/echo-headers?api_key=REDACTED&x=1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["layer"], "upstream");
    assert_eq!(line["decision"], "pass");
    assert_eq!(line["country"], "");
    assert_eq!(line["email"], "");
    assert!(line["bytes"].as_u64().unwrap() > 0);
    assert!(line["durationMs"].as_f64().is_some());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

/// A proxy behind a load balancer that speaks the PROXY protocol.
fn balanced() -> &'static Proxy {
    static PROXY: LazyLock<Proxy> = LazyLock::new(|| {
        Proxy::start(Settings {
            proxy_protocol: true,
            trusted: vec![],
            ..Settings::default()
        })
    });
    &PROXY
}

async fn through_balancer(header: &[u8]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut tcp = tokio::net::TcpStream::connect(balanced().https())
        .await
        .unwrap();
    tcp.write_all(header).await.unwrap();
    let mut tls = tls_over(tcp, &[b"http/1.1"]).await.unwrap();
    tls.write_all(
        format!("GET /echo-headers HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    seen_headers(body.as_bytes())
}

#[tokio::test]
async fn proxy_protocol_v1_gives_the_client_address() {
    let seen = through_balancer(b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 443\r\n").await;
    assert_eq!(seen["x-forwarded-for"], ["198.51.100.20"]);
}

#[tokio::test]
async fn proxy_protocol_v2_gives_the_client_address() {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0, 36]);
    header.extend_from_slice(
        &"2001:db8::20"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
    let seen = through_balancer(&header).await;
    assert_eq!(seen["x-forwarded-for"], ["2001:db8::20"]);
}

#[tokio::test]
async fn proxy_protocol_local_keeps_the_balancer_address() {
    let header = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0, 0]].concat();
    let seen = through_balancer(&header).await;
    assert_eq!(seen["x-forwarded-for"], ["127.0.0.1"]);
}

#[tokio::test]
async fn without_the_proxy_header_the_connection_is_closed() {
    let tcp = tokio::net::TcpStream::connect(balanced().https())
        .await
        .unwrap();
    assert!(tls_over(tcp, &[b"http/1.1"]).await.is_err());
}

#[tokio::test]
async fn the_redirect_listener_reads_the_proxy_header_too() {
    let mut tcp = tokio::net::TcpStream::connect(balanced().http())
        .await
        .unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.21 127.0.0.1 40000 80\r\nGET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let line = eventually(|| {
        balanced()
            .access_log()
            .into_iter()
            .find(|line| line["clientIp"] == "198.51.100.21")
    })
    .await;
    assert_eq!(line["layer"], "tls");
    assert_eq!(line["decision"], "redirect");
}
