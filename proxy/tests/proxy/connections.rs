//! Connection guards: caps per address and in total, and the deadlines on handshakes and
//! request heads (slowloris).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::io::AsyncReadExt;

use crate::util::{HOST, Proxy, Settings, client_ip, fetch, shared, tls_from, trickle_until_cut};

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share() {
    let source = IpAddr::from([127, 0, 0, 9]);
    let proxy = shared();
    let cap = proxy.settings.max_connections_per_ip as usize;
    let mut open = Vec::new();
    for _ in 0..cap {
        open.push(
            tls_from(source, proxy.https(), &[b"http/1.1"])
                .await
                .unwrap(),
        );
    }
    assert!(
        tls_from(source, proxy.https(), &[b"http/1.1"])
            .await
            .is_err(),
        "the connection over the cap must be closed"
    );
    // Other clients are not affected.
    let (response, _) = fetch(proxy.https(), "/").await;
    assert_eq!(response.status(), 200);
    // A freed place can be taken again.
    open.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tls_from(source, proxy.https(), &[b"http/1.1"])
            .await
            .is_ok()
    );
    assert!(
        proxy
            .metric("portcullis_connections_refused_total{reason=\"max-connections-per-ip\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn the_total_is_capped() {
    let proxy = Proxy::start(Settings {
        max_connections: 3,
        max_connections_per_ip: 3,
        ..Settings::default()
    });
    let mut open = Vec::new();
    for last in 0..3u8 {
        let source = IpAddr::from([127, 0, 1, last + 1]);
        open.push(
            tls_from(source, proxy.https(), &[b"http/1.1"])
                .await
                .unwrap(),
        );
    }
    assert!(
        tls_from(IpAddr::from([127, 0, 1, 9]), proxy.https(), &[b"http/1.1"])
            .await
            .is_err()
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (response, _) = fetch(proxy.https(), "/").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_request_head_trickled_byte_by_byte_is_cut_at_the_deadline() {
    let tls = tls_from(client_ip(), shared().https(), &[b"http/1.1"])
        .await
        .unwrap();
    let cut = trickle_until_cut(
        tls,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes(),
    )
    .await;
    assert!(
        cut >= Duration::from_millis(1800) && cut < Duration::from_secs(5),
        "cut after {cut:?}; headerRead is 2s"
    );
}

#[tokio::test]
async fn a_client_that_never_shakes_hands_is_cut_at_the_deadline() {
    let mut tcp = tokio::net::TcpStream::connect(shared().https())
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(6), tcp.read(&mut buf))
        .await
        .expect("the silent connection was never cut");
    assert!(matches!(read, Ok(0) | Err(_)));
    let cut = start.elapsed();
    assert!(
        cut >= Duration::from_millis(1800) && cut < Duration::from_secs(5),
        "cut after {cut:?}; headerRead is 2s"
    );
}
