//! Rate limits and bans end to end: the real proxy, real `redis-server` processes (Debian),
//! the seed's scenario 4, two proxies sharing one Redis, and Redis killed mid-test.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::util::{
    HOST, Proxy, RedisServer, Settings, admin_get, empty, fetch_from, session_key_file,
    trusted_proxy_ip,
};

/// A client address of its own for each use, so tests sharing a Redis never share a key.
fn fresh_client() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 256;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// A RateLimit on Jellyfin's sign-in: `limit` per `period`, banned after `ban_after`
/// limited attempts for `ban`; counters in `redis` when given.
fn login_limit(
    name: &str,
    limit: u32,
    period: &str,
    ban: Option<(u32, &str)>,
    redis: Option<PathBuf>,
    statuses: &[u16],
) -> String {
    let mut text = format!(
        "  - name: {name}
    pathPrefixes: [/Users/AuthenticateByName]
    methods: [POST]
    key: Ip
    ipv6PrefixLength: 64
    limit: {limit}
    period: {period}
    burst: 0
    status: 429
    retryAfter: true
"
    );
    if let Some((after, duration)) = ban {
        text.push_str(&format!(
            "    banAfter: {after}\n    banDuration: {duration}\n"
        ));
    }
    if let Some(file) = redis {
        text.push_str(&format!("    redisUrlFile: {}\n", file.display()));
    }
    if !statuses.is_empty() {
        let list: Vec<String> = statuses.iter().map(u16::to_string).collect();
        text.push_str(&format!("    onlyStatuses: [{}]\n", list.join(", ")));
    }
    text
}

fn proxy_with(limits: &[String]) -> Proxy {
    Proxy::start(Settings {
        extra: format!("rateLimits:\n{}", limits.concat()),
        ..Settings::default()
    })
}

struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    request_id: String,
}

/// `POST /Users/AuthenticateByName` from `client` (through the trusted proxy hop).
async fn sign_in(address: SocketAddr, client: &str, fail: bool) -> Answer {
    let request = Request::post(format!(
        "https://{HOST}/Users/AuthenticateByName?fail={}",
        u8::from(fail)
    ))
    .header("host", HOST)
    .header("x-forwarded-for", client)
    .header("user-agent", "Jellyfin-Android/2.6.1")
    .header("content-type", "application/json")
    .body(
        Full::new(Bytes::from_static(br#"{"Username":"alice","Pw":"x"}"#))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap();
    let (response, _) = fetch_from(address, trusted_proxy_ip(), request).await;
    Answer {
        status: response.status(),
        retry_after: response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        request_id: response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn scenario_4_repeated_sign_ins_are_limited_then_banned_then_let_back_after_the_ban() {
    let proxy = proxy_with(&[login_limit("login", 3, "2s", Some((2, "3s")), None, &[])]);
    let client = fresh_client();
    for _ in 0..3 {
        assert_eq!(
            sign_in(proxy.https(), &client, false).await.status,
            StatusCode::OK
        );
    }
    let limited = sign_in(proxy.https(), &client, false).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        matches!(limited.retry_after, Some(1..=2)),
        "{:?}",
        limited.retry_after
    );
    let line = proxy.access_log_line(&limited.request_id).await;
    assert_eq!(line["layer"], "ratelimit");
    assert_eq!(line["rule"], "limited");
    // The second limited attempt bans the address for 3 s.
    let banned = sign_in(proxy.https(), &client, false).await;
    assert_eq!(banned.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(banned.retry_after, Some(3));
    assert_eq!(
        proxy.access_log_line(&banned.request_id).await["rule"],
        "banned"
    );
    assert!(proxy.log().contains("banned"), "the ban is logged");
    assert_eq!(
        proxy.metric("portcullis_bans_total{limit=\"login\"}").await,
        Some(1.0)
    );
    let listed = bans(&proxy).await;
    let ban = listed
        .iter()
        .find(|ban| ban["limit"] == "login" && ban["key"] == client.as_str())
        .unwrap_or_else(|| panic!("the ban is listed: {listed:?}"));
    assert_eq!(ban["backend"], "memory");
    assert_eq!(
        ban["end"].as_u64().unwrap() - ban["start"].as_u64().unwrap(),
        3
    );
    // Another address is not affected.
    assert_eq!(
        sign_in(proxy.https(), &fresh_client(), false).await.status,
        StatusCode::OK
    );
    // Still banned after the limit's own period...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        sign_in(proxy.https(), &client, false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and let back in once the ban ends.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sign_in(proxy.https(), &client, false).await.status,
        StatusCode::OK
    );
}

/// The admin `/bans` list of `proxy`.
async fn bans(proxy: &Proxy) -> Vec<serde_json::Value> {
    let (status, body) = admin_get(proxy.admin(), "/bans").await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn only_failed_sign_ins_count_when_the_limit_says_so() {
    let proxy = proxy_with(&[login_limit("failures", 2, "1m", None, None, &[401])]);
    let client = fresh_client();
    // Successes do not count.
    for _ in 0..5 {
        assert_eq!(
            sign_in(proxy.https(), &client, false).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        sign_in(proxy.https(), &client, true).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(proxy.https(), &client, true).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Two failures used the allowance: even a right password waits now.
    assert_eq!(
        sign_in(proxy.https(), &client, false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn two_proxies_sharing_one_redis_enforce_one_limit_together() {
    let redis = RedisServer::start();
    let limit = login_limit("shared", 4, "1m", None, Some(redis.url_file()), &[]);
    let a = proxy_with(std::slice::from_ref(&limit));
    let b = proxy_with(&[limit]);
    let client = fresh_client();
    for i in 0..4 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            sign_in(proxy.https(), &client, false).await.status,
            StatusCode::OK,
            "attempt {i}"
        );
    }
    assert_eq!(
        sign_in(a.https(), &client, false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        sign_in(b.https(), &client, false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        a.metric("portcullis_ratelimit_backend_errors_total").await,
        None,
        "Redis answered every time"
    );
}

#[tokio::test]
async fn every_replica_lists_the_bans_redis_holds_for_its_edge() {
    let redis = RedisServer::start();
    let limit = login_limit(
        "shared-ban",
        1,
        "1m",
        Some((1, "10m")),
        Some(redis.url_file()),
        &[],
    );
    let a = proxy_with(std::slice::from_ref(&limit));
    let b = proxy_with(&[limit]);
    let client = fresh_client();
    assert_eq!(
        sign_in(a.https(), &client, false).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sign_in(a.https(), &client, false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Keys another edge, or a rule this edge does not have, keep in the same Redis.
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000;
    for key in [
        "portcullis:rl:other.test:shared-ban:198.51.100.1",
        &format!("portcullis:rl:{HOST}:not-a-rule:198.51.100.2"),
    ] {
        redis.command(&["HSET", key, "bs", "1", "be", &far.to_string()]);
    }
    for proxy in [&a, &b] {
        let listed = bans(proxy).await;
        let shared: Vec<_> = listed
            .iter()
            .filter(|ban| ban["backend"] == "redis")
            .collect();
        assert_eq!(
            shared.len(),
            1,
            "only this edge's ban of its rule: {listed:?}"
        );
        assert_eq!(shared[0]["limit"], "shared-ban");
        assert_eq!(shared[0]["key"], client.as_str());
        assert_eq!(
            shared[0]["end"].as_u64().unwrap() - shared[0]["start"].as_u64().unwrap(),
            600
        );
    }
    assert_eq!(
        b.metric("portcullis_ratelimit_backend_errors_total").await,
        None
    );
}

#[tokio::test]
async fn limits_per_address_answer_before_the_challenge_access_and_waf() {
    let key = session_key_file("order-session-key", b'o');
    let proxy = Proxy::start(Settings {
        extra: format!(
            "rateLimits:
  - name: per-address
    pathPrefixes: [/]
    key: Ip
    ipv6PrefixLength: 64
    limit: 1
    period: 1h
    burst: 0
    status: 429
    retryAfter: true
access:
  session:
    ttl: 24h
    idleTtl: 2h
    cookieName: portcullis_session
    keyFiles: [{key}]
  bypass: [/public/]
{waf}",
            key = key.display(),
            waf = crate::waf::waf_section("Block", None)
        ),
        ..Settings::default()
    });
    let send = |client: String, post: bool, target: &'static str| {
        let address = proxy.https();
        async move {
            let request = if post {
                http::Request::post(format!("https://{HOST}{target}"))
                    .header("content-type", "application/x-www-form-urlencoded")
            } else {
                http::Request::get(format!("https://{HOST}{target}"))
            }
            .header("host", HOST)
            .header("x-forwarded-for", client)
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
            )
            .body(if post {
                Full::new(Bytes::from_static(b"challenge=forged&answer=1"))
                    .map_err(|never| match never {})
                    .boxed()
            } else {
                empty()
            })
            .unwrap();
            let (response, _) = fetch_from(address, trusted_proxy_ip(), request).await;
            response
                .headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let sqli = "/public/search?q=1%27%20OR%20%271%27%3D%271%27%20--";
    for (post, target, first) in [
        (false, sqli, ("waf", "anomaly-score")),
        (false, "/", ("access", "no-credentials")),
        (
            true,
            "/.portcullis/challenge",
            ("ratelimit", "challenge-failed"),
        ),
    ] {
        let client = fresh_client();
        // The first request is within the limit: the later layer answers...
        let id = send(client.clone(), post, target).await;
        let line = proxy.access_log_line(&id).await;
        assert_eq!(
            (line["layer"].as_str(), line["rule"].as_str()),
            (Some(first.0), Some(first.1)),
            "{line}"
        );
        // ...the second is over it: the limit answers before that layer runs.
        let id = send(client, post, target).await;
        let line = proxy.access_log_line(&id).await;
        assert_eq!(line["layer"], "ratelimit", "{target}: {line}");
        assert_eq!(line["rule"], "limited", "{target}: {line}");
    }
}

#[tokio::test]
async fn with_redis_killed_the_edge_limits_alone_and_says_so() {
    let mut redis = RedisServer::start();
    let proxy = proxy_with(&[login_limit(
        "outage",
        3,
        "1m",
        None,
        Some(redis.url_file()),
        &[],
    )]);
    let client = fresh_client();
    assert_eq!(
        sign_in(proxy.https(), &client, false).await.status,
        StatusCode::OK
    );
    redis.kill();
    // Redis is gone: the replica's own memory decides, and the limit still holds.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(sign_in(proxy.https(), &client, false).await.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert!(
        proxy
            .metric("portcullis_ratelimit_backend_errors_total{limit=\"outage\"}")
            .await
            >= Some(4.0)
    );
    assert!(
        proxy.log().contains("Redis cannot answer"),
        "{}",
        proxy.log()
    );
    // Redis comes back on the same port: the edge uses it again.
    let _back = RedisServer::start_on(redis.port);
    let other = fresh_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let errors = || async {
        proxy
            .metric("portcullis_ratelimit_backend_errors_total{limit=\"outage\"}")
            .await
    };
    loop {
        let before = errors().await;
        assert_eq!(
            sign_in(proxy.https(), &other, false).await.status,
            StatusCode::OK
        );
        if errors().await == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge did not return to Redis"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn manual_bans_refuse_and_lifts_release() {
    let client = fresh_client();
    let limit = format!(
        "{}    manualBans: [{{key: \"{client}\", at: \"2099-01-01T00:00:00Z\"}}]\n",
        login_limit("manual", 100, "1m", Some((1, "1h")), None, &[])
    );
    let mut proxy = proxy_with(std::slice::from_ref(&limit));
    let banned = sign_in(proxy.https(), &client, false).await;
    assert_eq!(banned.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        proxy.access_log_line(&banned.request_id).await["rule"],
        "banned"
    );
    // The admin lifts it declaratively: the document without the manual ban.
    let text = Settings {
        extra: format!(
            "rateLimits:\n{}",
            login_limit("manual", 100, "1m", Some((1, "1h")), None, &[])
        ),
        ..proxy.settings.clone()
    }
    .yaml();
    proxy.write_document(&text);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sign_in(proxy.https(), &client, false).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the manual ban was not lifted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
