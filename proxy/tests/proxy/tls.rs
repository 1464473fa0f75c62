//! TLS termination: the plain-HTTP redirect, HSTS, HTTP/2, certificate renewal.

use std::time::Duration;

use http::Version;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;

use crate::util::{
    Conn, HOST, Proxy, Settings, client_ip, empty, fetch, get, pki, raw_tcp, raw_tcp_until_closed,
    raw_tls, shared, tls_from, trickle_until_cut,
};

#[tokio::test]
async fn plain_http_only_redirects_to_the_same_path_on_https() {
    let (status, text) = raw_tcp(
        shared().http(),
        b"POST /web/index.html?x=1 HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("location: https://{HOST}/web/index.html?x=1")),
        "{text}"
    );
    assert!(!lower.contains("strict-transport-security"), "{text}");
}

#[tokio::test]
async fn plain_http_answers_request_after_request_on_one_connection() {
    let out = raw_tcp_until_closed(
        shared().http(),
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b?c=d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{out}");
    let mut ids = Vec::new();
    for (answer, path) in answers.iter().zip(["/a", "/b?c=d"]) {
        let lower = answer.to_ascii_lowercase();
        assert!(lower.starts_with("308"), "{out}");
        assert!(
            lower.contains(&format!("location: https://{HOST}{path}\r\n")),
            "{out}"
        );
        let id = lower
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .expect("no request id")
            .to_owned();
        ids.push(id);
    }
    assert!(
        answers[0]
            .to_ascii_lowercase()
            .contains("content-length: 0\r\n"),
        "{out}"
    );
    assert_ne!(ids[0], ids[1]);
    for (id, (method, path)) in ids.iter().zip([("GET", "/a"), ("HEAD", "/b?c=d")]) {
        let line = shared().access_log_line(id).await;
        assert_eq!(line["method"], method);
        assert_eq!(line["path"], path);
        assert_eq!(line["status"], 308);
        assert_eq!(line["layer"], "tls");
        assert_eq!(line["decision"], "redirect");
        assert_eq!(line["rule"], "https-only");
    }
}

#[tokio::test]
async fn a_body_sent_over_plain_http_is_discarded_not_read_as_a_request() {
    let out = raw_tcp_until_closed(
        shared().http(),
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!out.contains("/smuggled"), "{out}");
    let locations: Vec<&str> = out
        .lines()
        .filter_map(|line| line.strip_prefix("location: "))
        .collect();
    // The second request is answered too unless hyper closed the connection after the body.
    assert!(
        locations == [format!("https://{HOST}/a")]
            || locations == [format!("https://{HOST}/a"), format!("https://{HOST}/b")],
        "{out}"
    );
}

#[tokio::test]
async fn plain_http_heads_over_the_documents_limits_get_431() {
    // maxHeaderCount is 30 in the tests' document.
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..29 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    let (status, text) = raw_tcp(shared().http(), format!("{head}\r\n").as_bytes()).await;
    assert_eq!(status, 308, "{text}");
    head.push_str("X-One-Too-Many: v\r\n");
    let (status, text) = raw_tcp(shared().http(), format!("{head}\r\n").as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    // maxHeaderBytes is 4 KiB, under hyper's smallest buffer: 8 KiB is the bound here.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "v".repeat(9000)
    );
    let (status, text) = raw_tcp(shared().http(), long.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
}

#[tokio::test]
async fn a_plain_http_head_trickled_line_by_line_is_cut_at_the_deadline() {
    let proxy = shared();
    let timeouts = "portcullis_connections_dropped_total{reason=\"header-timeout\"}";
    let before = proxy.metric(timeouts).await.unwrap_or(0.0);
    let tcp = TcpStream::connect(proxy.http()).await.unwrap();
    let cut = trickle_until_cut(tcp, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        cut >= Duration::from_millis(1800) && cut < Duration::from_secs(5),
        "cut after {cut:?}; headerRead is 2s"
    );
    assert!(proxy.metric(timeouts).await.unwrap() > before);
}

#[tokio::test]
async fn every_https_response_carries_hsts() {
    let (response, _) = fetch(shared().https(), "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=3600"
    );
    let (status, text) = raw_tls(
        shared().https(),
        b"GET / HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421);
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=3600"),
        "{text}"
    );
}

#[tokio::test]
async fn http2_is_negotiated_and_proxied() {
    let mut conn = Conn::open(shared().https(), client_ip(), true).await;
    let mut response = conn.send(get("/").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=3600"
    );
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from the origin\n");
    let mut other = conn
        .send(
            http::Request::get(format!("https://{HOST}/echo-headers"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let _ = other.body_mut().collect().await;
}

fn served_certificate(
    tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = crate::util::scratch().join("renewal");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&pki().edge_cert, &cert).unwrap();
    std::fs::copy(&pki().edge_key, &key).unwrap();
    let proxy = Proxy::start(Settings {
        cert: (cert.clone(), key.clone()),
        ..Settings::default()
    });
    let first = CertificateDer::from_pem_file(&pki().edge_cert).unwrap();
    let renewed = CertificateDer::from_pem_file(&pki().renewed_cert).unwrap();
    let tls = tls_from(client_ip(), proxy.https(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(served_certificate(&tls), first);
    // Write the key first and the certificate last, as a renewal would land.
    std::fs::copy(&pki().renewed_key, &key).unwrap();
    std::fs::copy(&pki().renewed_cert, &cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tls = tls_from(client_ip(), proxy.https(), &[b"http/1.1"])
            .await
            .unwrap();
        if served_certificate(&tls) == renewed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewal was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the renewal still works.
    let (response, _) = fetch(proxy.https(), "/").await;
    assert_eq!(response.status(), 200);
    drop(tls);
}
