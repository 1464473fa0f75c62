//! Graceful shutdown: after SIGTERM the edge stops being ready, lets requests in flight
//! finish, and exits within its grace period.

use std::time::{Duration, Instant};

use crate::util::{Conn, Proxy, Settings, admin_get, client_ip, drain_pattern, empty, get};

#[tokio::test]
async fn sigterm_drains_requests_in_flight_within_the_grace_period() {
    let mut proxy = Proxy::start(Settings {
        shutdown_grace: "3s",
        ..Settings::default()
    });
    const SIZE: u64 = 8 * 1024 * 1024;
    let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
    let mut download = conn
        .send(
            get(&format!("/stream?bytes={SIZE}&pause_ms=10"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let reading = tokio::spawn(async move { drain_pattern(download.body_mut(), 0, 64).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    proxy.terminate();
    let mut unready = false;
    for _ in 0..40 {
        if admin_get(proxy.admin(), "/readyz")
            .await
            .map(|(status, _)| status)
            == Some(503)
        {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unready, "/readyz must answer 503 while draining");
    assert_eq!(
        admin_get(proxy.admin(), "/healthz")
            .await
            .map(|(status, _)| status),
        Some(200)
    );
    let received = tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("the download stalled")
        .unwrap();
    assert_eq!(received, SIZE);
    let exit = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the proxy did not exit after its grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = sent.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(7),
        "exited after {took:?} with a 3s grace period"
    );
}
