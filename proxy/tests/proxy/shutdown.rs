//! Graceful shutdown: after SIGTERM the edge stops being ready, lets requests in flight
//! finish, and exits as soon as they have (at the latest when its grace period ends).

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
    // The download finished whole (above); the edge then had nothing left and exited,
    // within the grace period rather than after sleeping all of it.
    assert!(
        took < Duration::from_secs(7),
        "exited after {took:?} with a 3s grace period"
    );
}

#[tokio::test]
async fn with_nothing_in_flight_sigterm_exits_without_waiting_out_the_grace_period() {
    let mut proxy = Proxy::start(Settings {
        shutdown_grace: "20s",
        ..Settings::default()
    });
    // One request, then the client goes away: nothing is left to drain.
    {
        let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
        let response = conn.send(get("/").body(empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    proxy.terminate();
    let exit = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the drained proxy waited out its 20s grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(proxy.log().contains("drained"), "{}", proxy.log());
}
