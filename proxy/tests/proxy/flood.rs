//! Floods through the real proxy: a hundred thousand distinct keys keep its memory bounded,
//! an ordinary client keeps being served while many addresses are limited and banned, and
//! slowloris connections are cut while other clients are served.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{
    Conn, HOST, Proxy, Settings, client_ip, empty, fetch, tls_from, trusted_proxy_ip,
};

/// Connections a flood is sent over (the per-address cap of the trusted hop is 12).
const FLOOD_CONNECTIONS: u32 = 8;

/// The client address of flood key `i`: distinct for every `i` below 2²⁴.
fn flood_address(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// `GET path` through the trusted hop as `client`, over `conn`: the status.
async fn get_as(conn: &mut Conn, client: &str, path: &str, agent: &str) -> StatusCode {
    let request = Request::get(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("x-forwarded-for", client)
        .header("user-agent", agent)
        .body(empty())
        .unwrap();
    let mut response = conn.send(request).await.unwrap();
    let _ = response.body_mut().collect().await.unwrap();
    response.status()
}

/// Sends one request for each client of `clients` over `FLOOD_CONNECTIONS` keep-alive
/// connections from the trusted hop (each takes every `FLOOD_CONNECTIONS`th client);
/// returns how many answers had each status.
async fn flood(
    proxy: &Proxy,
    clients: std::ops::Range<u32>,
    path: &'static str,
    agent: &'static str,
) -> BTreeMap<u16, u64> {
    let mut tasks = Vec::new();
    for lane in 0..FLOOD_CONNECTIONS {
        let address = proxy.https();
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(address, trusted_proxy_ip(), false).await;
            let mut seen = BTreeMap::new();
            for i in clients
                .skip(lane as usize)
                .step_by(FLOOD_CONNECTIONS as usize)
            {
                let status = get_as(&mut conn, &flood_address(i), path, agent).await;
                *seen.entry(status.as_u16()).or_insert(0u64) += 1;
            }
            seen
        }));
    }
    let mut seen = BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await.unwrap() {
            *seen.entry(status).or_insert(0) += n;
        }
    }
    seen
}

/// A scanner's user agent: the bot layer refuses it after the rate limits counted the
/// request, so a flood costs the edge and not the origin.
const SCANNER: &str = "sqlmap/1.8.4#stable (https://sqlmap.org)";

/// What one remembered key may cost at most, in KiB, all structures together: a key of up
/// to 256 bytes, the rule's name, the limiter's state and the map's slot, with room for the
/// allocator and the map doubling. The memory store remembers at most `CAPACITY` keys
/// (200 000, `proxy/src/ratelimit/memory.rs`), so its share of memory is bounded by
/// `CAPACITY × KEY_BUDGET_KIB`; a flood below the capacity may grow it by its own share.
const KEY_BUDGET_KIB: u64 = 1;
/// The memory store's documented capacity.
const STORE_CAPACITY: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    const KEYS: u32 = 100_000;
    let proxy = Proxy::start(Settings {
        extra: "rateLimits:
  - name: flood
    pathPrefixes: [/]
    key: Ip
    ipv6PrefixLength: 64
    limit: 3
    period: 1h
    burst: 0
    status: 429
    retryAfter: true
"
        .into(),
        ..Settings::default()
    });
    // Warm up: connections, TLS, the allocator's arenas, the access log's buffer.
    let warm = flood(&proxy, KEYS..KEYS + 2_000, "/", SCANNER).await;
    assert_eq!(warm.get(&403), Some(&2_000), "{warm:?}");
    let before = proxy.rss_kib();
    let seen = flood(&proxy, 0..KEYS, "/", SCANNER).await;
    let after = proxy.rss_kib();
    assert_eq!(
        seen.get(&403),
        Some(&u64::from(KEYS)),
        "each key's first request passes the limit and meets the bot guard: {seen:?}"
    );
    // The keys were remembered: the first one has two requests left of its three.
    let mut conn = Conn::open(proxy.https(), trusted_proxy_ip(), false).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_as(&mut conn, &flood_address(0), "/", SCANNER).await);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let bound = u64::from(KEYS).min(STORE_CAPACITY) * KEY_BUDGET_KIB;
    let grown = after.saturating_sub(before);
    println!("RSS {before} KiB before, {after} KiB after {KEYS} keys (+{grown} KiB)");
    assert!(
        grown <= bound,
        "RSS grew by {grown} KiB ({before} → {after}) for {KEYS} keys; the bound is {bound} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_client_is_served_while_a_flood_is_limited_and_banned() {
    const FLOODERS: u32 = 64;
    // Two a second per address: the ordinary client asks every 600 ms, each flooder as fast
    // as its connection goes (one request in eight on its connection).
    let proxy = Proxy::start(Settings {
        extra: "rateLimits:
  - name: per-address
    pathPrefixes: [/]
    key: Ip
    ipv6PrefixLength: 64
    limit: 2
    period: 1s
    burst: 0
    banAfter: 3
    banDuration: 1m
    status: 429
    retryAfter: true
"
        .into(),
        ..Settings::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    // One flooder in eight also touches a honeypot first.
    let mut flooders = Vec::new();
    for lane in 0..FLOOD_CONNECTIONS {
        let (address, stop, refused) = (proxy.https(), stop.clone(), refused.clone());
        flooders.push(tokio::spawn(async move {
            let mut conn = Conn::open(address, trusted_proxy_ip(), false).await;
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                for i in (lane..FLOODERS).step_by(FLOOD_CONNECTIONS as usize) {
                    let path = if first && i % 8 == 0 { "/.env" } else { "/" };
                    let status = get_as(&mut conn, &flood_address(i), path, "curl/8.14").await;
                    if status != StatusCode::OK {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                first = false;
            }
        }));
    }
    let metric = |name: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(&format!("portcullis_bans_total{{limit=\"{name}\"}}"))
                .await
                .unwrap_or(0.0)
        }
    };
    // The ordinary client, from an address of its own, until every flooder is banned.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    let mut conn = Conn::open(proxy.https(), client_ip(), false).await;
    while served < 10 || metric("per-address").await < f64::from(FLOODERS) {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was not banned within a minute: {} bans",
            metric("per-address").await
        );
        let request = crate::util::get("/").body(empty()).unwrap();
        let mut response = conn.send(request).await.unwrap();
        let body = response.body_mut().collect().await.unwrap().to_bytes();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the ordinary client was refused during the flood after {served} answers"
        );
        assert_eq!(&body[..], b"hello from the origin\n");
        served += 1;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Banned flooders keep asking; the ordinary client is still served.
    for _ in 0..5 {
        let request = crate::util::get("/").body(empty()).unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    println!(
        "{served} answers to the ordinary client; {} refusals to the flood",
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(metric("honeypot").await, f64::from(FLOODERS / 8));
    assert_eq!(metric("per-address").await, f64::from(FLOODERS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_while_other_clients_are_served() {
    const SLOW: u8 = 40;
    let proxy = Proxy::start(Settings::default());
    let dropped_before = proxy
        .metric("portcullis_connections_dropped_total{reason=\"header-timeout\"}")
        .await
        .unwrap_or(0.0);
    // Each slow client opens a connection from an address of its own and sends a request
    // head one byte every 50 ms: 10 s for the whole head, five times the 2 s deadline.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: slowloris/1.0\r\n{}\r\n",
        "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(3)
    );
    assert!(head.len() * 50 >= 10_000);
    let mut slow = Vec::new();
    for n in 0..SLOW {
        let (address, head) = (proxy.https(), head.clone());
        slow.push(tokio::spawn(async move {
            let source = IpAddr::from([127, 0, 3, n + 1]);
            let mut tls = tls_from(source, address, &[b"http/1.1"]).await.unwrap();
            for (sent, byte) in head.bytes().enumerate() {
                if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
                    return sent;
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(50), tls.read(&mut buf)).await {
                    Err(_) => {}
                    Ok(Ok(0) | Err(_)) => return sent,
                    Ok(Ok(_)) => panic!("the edge answered a head it never received whole"),
                }
            }
            head.len()
        }));
    }
    // Meanwhile, ordinary clients are served.
    let mut served = 0;
    while slow.iter().any(|task| !task.is_finished()) {
        let (response, _) = fetch(proxy.https(), "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in slow {
        let sent = task.await.unwrap();
        assert!(
            sent < head.len(),
            "a slow head was read whole ({sent} bytes)"
        );
    }
    assert!(
        served >= 1,
        "no ordinary request was made during the attack"
    );
    let dropped = proxy
        .metric("portcullis_connections_dropped_total{reason=\"header-timeout\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        dropped - dropped_before >= f64::from(SLOW),
        "{dropped} connections cut for their head"
    );
}
