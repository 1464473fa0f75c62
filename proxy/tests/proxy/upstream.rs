//! The upstream: websockets, ranges, header stripping, and clear 502/504 pages when the
//! origin fails.

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{
    BIG_FILE, HOST, ORIGIN_NAME, Proxy, Settings, client_ip, drain_pattern, empty, fetch,
    fetch_from, free_port, get, origins, pattern_byte, shared, tls_from,
};

#[tokio::test]
async fn websockets_pass_through() {
    let tls = tls_from(client_ip(), shared().https(), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("wss://{HOST}/socket"), tls)
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        socket
            .send(Message::text(format!("ping {i}")))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo: ping {i}")));
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn range_requests_pass_through() {
    let request = get("/big")
        .header("range", "bytes=1000-1999")
        .body(empty())
        .unwrap();
    let (response, body) = fetch_from(shared().https(), client_ip(), request).await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 1000-1999/{BIG_FILE}").as_str()
    );
    assert_eq!(body.len(), 1000);
    for (i, &byte) in body.iter().enumerate() {
        assert_eq!(byte, pattern_byte(1000 + i as u64));
    }
}

#[tokio::test]
async fn a_whole_file_streams_intact() {
    let mut conn = crate::util::Conn::open(shared().https(), client_ip(), false).await;
    let mut response = conn.send(get("/big").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(drain_pattern(response.body_mut(), 0, 1).await, BIG_FILE);
}

#[tokio::test]
async fn the_origin_does_not_say_what_it_is() {
    let (response, _) = fetch(shared().https(), "/").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("server").is_none());
    assert!(response.headers().get("x-powered-by").is_none());
}

#[tokio::test]
async fn a_slow_origin_is_504_with_a_request_id() {
    let request = get("/slow?ms=4000")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (response, body) = fetch_from(shared().https(), client_ip(), request).await;
    assert_eq!(response.status(), 504);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["status"], 504);
    let id = value["requestId"].as_str().unwrap().to_owned();
    let line = shared().access_log_line(&id).await;
    assert_eq!(line["layer"], "upstream");
    assert_eq!(line["decision"], "error");
    assert_eq!(line["rule"], "upstream-timeout");
    assert!(
        shared()
            .metric("portcullis_upstream_errors_total{kind=\"upstream-timeout\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_dead_origin_is_502_with_a_request_id_and_no_origin_details() {
    let port = free_port();
    let proxy = Proxy::start(Settings {
        upstream: format!("127.0.0.1:{port}"),
        ..Settings::default()
    });
    let (response, body) = fetch(proxy.https(), "/").await;
    assert_eq!(response.status(), 502);
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("502 Bad Gateway"), "{page}");
    assert!(page.contains("Request ID"), "{page}");
    assert!(!page.contains(&port.to_string()), "{page}");
    assert!(!page.contains("127.0.0.1"), "{page}");
}

#[tokio::test]
async fn verified_tls_to_the_origin() {
    let proxy = Proxy::start(Settings {
        upstream: origins().tls.to_string(),
        upstream_tls: Some(ORIGIN_NAME),
        ..Settings::default()
    });
    let (response, body) = fetch(proxy.https(), "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(&body[..], b"hello from the origin\n");
}

#[tokio::test]
async fn an_origin_certificate_for_another_name_is_refused() {
    let proxy = Proxy::start(Settings {
        upstream: origins().tls.to_string(),
        upstream_tls: Some("someone-else.test"),
        ..Settings::default()
    });
    let (mut response, _) = {
        let mut conn = crate::util::Conn::open(proxy.https(), client_ip(), false).await;
        let response = conn.send(get("/").body(empty()).unwrap()).await.unwrap();
        (response, ())
    };
    assert_eq!(response.status(), 502);
    let _ = response.body_mut().collect().await;
}
