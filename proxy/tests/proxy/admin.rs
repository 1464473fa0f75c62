//! The admin listener: health, readiness and metrics, never on the public port.

use crate::util::{admin_get, fetch, raw_tls, shared};

#[tokio::test]
async fn health_readiness_and_metrics_answer_on_the_admin_port() {
    let proxy = shared();
    assert_eq!(
        admin_get(proxy.admin(), "/healthz").await,
        Some((200, "ok\n".to_owned()))
    );
    assert_eq!(
        admin_get(proxy.admin(), "/readyz").await,
        Some((200, "ready\n".to_owned()))
    );
    assert_eq!(admin_get(proxy.admin(), "/nothing").await.unwrap().0, 404);
    let (status, _) = raw_tls(
        proxy.https(),
        b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421);
    let (status, metrics) = admin_get(proxy.admin(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "portcullis_request_duration_seconds_bucket",
        "portcullis_config_reload_failures_total",
        "portcullis_config_restart_required",
        "portcullis_connections_open",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(
        proxy
            .metric("portcullis_requests_total{decision=\"respond\",layer=\"hygiene\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn the_public_port_has_no_admin_endpoints() {
    let (response, body) = fetch(shared().https(), "/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        &body[..],
        b"hello from the origin\n",
        "/healthz came from the origin"
    );
    // `/metrics` is Jellyfin's own metrics path: refused at the edge, never the edge's.
    let (response, body) = fetch(shared().https(), "/metrics").await;
    assert_eq!(response.status(), 403);
    assert!(!String::from_utf8_lossy(&body).contains("portcullis_"));
}
