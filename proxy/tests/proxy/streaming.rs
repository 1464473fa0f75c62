//! Multi-gigabyte bodies stream through the edge in both directions without its memory
//! growing: nothing is buffered whole.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::BodyExt;

use crate::util::{Conn, Proxy, Settings, client_ip, drain_pattern, empty, get, pattern_upload};

const GIB: u64 = 1024 * 1024 * 1024;
/// How much the proxy's resident memory may grow while gigabytes pass through it.
const GROWTH_LIMIT_KIB: u64 = 48 * 1024;

/// Samples the proxy's resident memory every 50 ms until stopped; returns the peak.
fn sample_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let handle = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = status
                        .lines()
                        .find_map(|line| line.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak.load(Ordering::Relaxed)
        })
    };
    (stop, handle)
}

fn streaming_proxy() -> Proxy {
    Proxy::start(Settings {
        max_body: "8Gi",
        body_read: "30s",
        ..Settings::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_gigabyte_download_streams_with_flat_memory() {
    let proxy = streaming_proxy();
    // Warm up: pools, buffers and TLS state exist before the baseline is taken.
    let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
    let mut warm = conn
        .send(get("/stream?bytes=16777216").body(empty()).unwrap())
        .await
        .unwrap();
    drain_pattern(warm.body_mut(), 0, 4096).await;
    let baseline = proxy.rss_kib();
    let (stop, peak) = sample_rss(proxy.pid());
    let size = 2 * GIB;
    let mut response = conn
        .send(get(&format!("/stream?bytes={size}")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = drain_pattern(response.body_mut(), 0, 65_536).await;
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(received, size);
    assert!(
        peak.saturating_sub(baseline) < GROWTH_LIMIT_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_gigabyte_upload_streams_with_flat_memory() {
    let proxy = streaming_proxy();
    let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
    let warm = http::Request::post(format!("https://{}/upload", crate::util::HOST))
        .header("host", crate::util::HOST)
        .header("content-length", 16 * 1024 * 1024)
        .body(pattern_upload(16 * 1024 * 1024))
        .unwrap();
    let mut response = conn.send(warm).await.unwrap();
    let _ = response.body_mut().collect().await.unwrap();
    let baseline = proxy.rss_kib();
    let (stop, peak) = sample_rss(proxy.pid());
    let size = GIB;
    let request = http::Request::post(format!("https://{}/upload", crate::util::HOST))
        .header("host", crate::util::HOST)
        .header("content-length", size)
        .body(pattern_upload(size))
        .unwrap();
    let mut response = conn.send(request).await.unwrap();
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(response.status(), 200);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["bytes"], size);
    assert_eq!(value["patternOk"], true);
    assert!(
        peak.saturating_sub(baseline) < GROWTH_LIMIT_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}
