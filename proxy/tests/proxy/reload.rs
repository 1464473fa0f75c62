//! Hot reload: a valid document applies live and an invalid one is counted and ignored,
//! while a long download on an open connection completes.

use std::time::Duration;

use crate::util::{Conn, HOST, Proxy, Settings, client_ip, drain_pattern, empty, get, raw_tls};

async fn status_of(proxy: &Proxy, method: &str) -> u16 {
    raw_tls(
        proxy.https(),
        format!("{method} /echo-headers HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .0
}

async fn metric_reaches(proxy: &Proxy, line: &str, at_least: f64) {
    for _ in 0..100 {
        if proxy.metric(line).await.unwrap_or(0.0) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{line} never reached {at_least}: {}", proxy.log());
}

#[tokio::test]
async fn reloads_apply_live_and_bad_documents_are_ignored_while_a_download_runs() {
    let settings = Settings::default();
    let mut proxy = Proxy::start(settings.clone());
    // 32 MiB in 513 chunks, 8 ms apart: about four seconds on one connection.
    const SIZE: u64 = 32 * 1024 * 1024;
    let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
    let mut download = conn
        .send(
            get(&format!("/stream?bytes={SIZE}&pause_ms=8"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let reading = tokio::spawn(async move { drain_pattern(download.body_mut(), 0, 1).await });

    assert_eq!(status_of(&proxy, "DELETE").await, 405);

    // A valid change: DELETE is allowed from now on.
    let mut allowing = settings.clone();
    allowing.methods.push("DELETE");
    proxy.write_document(&allowing.yaml());
    metric_reaches(
        &proxy,
        "portcullis_config_reloads_total{result=\"success\"}",
        1.0,
    )
    .await;
    assert_eq!(status_of(&proxy, "DELETE").await, 200);

    // An invalid document: counted, logged, and the last good one keeps serving.
    proxy.write_document(
        &allowing
            .yaml()
            .replace("maxUriBytes: 256", "maxUriBytes: 0"),
    );
    metric_reaches(&proxy, "portcullis_config_reload_failures_total", 1.0).await;
    metric_reaches(
        &proxy,
        "portcullis_config_reloads_total{result=\"failure\"}",
        1.0,
    )
    .await;
    assert_eq!(status_of(&proxy, "DELETE").await, 200);
    proxy.write_document("this: is [not an edge document");
    metric_reaches(&proxy, "portcullis_config_reload_failures_total", 2.0).await;
    assert_eq!(status_of(&proxy, "DELETE").await, 200);
    assert!(proxy.log().contains("the last good one keeps serving"));

    // A new listen address needs a restart: said clearly, the old sockets keep serving.
    let mut moved = allowing.clone();
    moved.https = crate::util::free_port();
    proxy.write_document(&moved.yaml());
    metric_reaches(&proxy, "portcullis_config_restart_required", 1.0).await;
    assert!(proxy.log().contains("only a restart applies"));
    assert_eq!(status_of(&proxy, "DELETE").await, 200);

    let received = tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the download stalled")
        .unwrap();
    assert_eq!(received, SIZE, "the download in flight completed");
}
