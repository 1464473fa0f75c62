//! Bot guards and Jellyfin-aware rules end to end: honeypots ban, scanners and agentless
//! sign-ins are refused, the setup wizard closes once Jellyfin says setup is complete, and
//! Jellyfin's metrics and logs stay inside.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use http::StatusCode;

use crate::util::{
    Conn, HOST, ORIGIN_POD_URL, Proxy, RedisServer, STARTUP_DONE, Settings, admin_get,
    browser_script, client_ip, empty, fetch_from, origin_saw, trusted_proxy_ip,
};

async fn get_as(
    proxy: &Proxy,
    client: &str,
    path: &str,
    agent: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut request = http::Request::get(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("x-forwarded-for", client);
    if let Some(agent) = agent {
        request = request.header("user-agent", agent);
    }
    let (response, _) = fetch_from(
        proxy.https(),
        trusted_proxy_ip(),
        request.body(empty()).unwrap(),
    )
    .await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry_after)
}

const BROWSER: Option<&str> = Some("Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0");

#[tokio::test]
async fn a_honeypot_bans_the_address_on_first_touch() {
    let proxy = Proxy::start(Settings::default());
    let scanner = "203.0.113.66";
    assert_eq!(
        get_as(&proxy, scanner, "/", BROWSER).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&proxy, scanner, "/wp-login.php", BROWSER).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, retry_after) = get_as(&proxy, scanner, "/web/index.html", BROWSER).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&seconds), "{seconds}");
    assert_eq!(
        get_as(&proxy, "203.0.113.67", "/", BROWSER).await.0,
        StatusCode::OK
    );
    assert!(!origin_saw("/wp-login.php"));
    let bans = bans(&proxy).await;
    assert_eq!(bans[0]["limit"], "honeypot");
    assert_eq!(bans[0]["key"], scanner);
    assert_eq!(bans[0]["backend"], "memory", "no Redis: this replica's own");
    assert_eq!(
        proxy
            .metric("portcullis_bans_total{limit=\"honeypot\"}")
            .await,
        Some(1.0)
    );
    assert!(proxy.log().contains("banned"));
}

/// The admin `/bans` list of `proxy`.
async fn bans(proxy: &Proxy) -> Vec<serde_json::Value> {
    let (_, bans) = admin_get(proxy.admin(), "/bans").await.unwrap();
    serde_json::from_str(&bans).unwrap()
}

/// An edge whose RateLimit keeps its counters in `redis`, so honeypot bans go there too.
fn redis_edge(redis: &RedisServer) -> Proxy {
    Proxy::start(Settings {
        extra: format!(
            "rateLimits:
  - name: api
    pathPrefixes: [/Items/]
    key: Ip
    ipv6PrefixLength: 64
    limit: 100
    period: 1m
    burst: 0
    status: 429
    retryAfter: true
    redisUrlFile: {}
",
            redis.url_file().display()
        ),
        ..Settings::default()
    })
}

/// Asks `proxy` for `/` as `client` until the answer is `status` (5 s at most).
async fn until_status(proxy: &Proxy, client: &str, status: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_as(proxy, client, "/", BROWSER).await.0 != status {
        assert!(
            Instant::now() < deadline,
            "{client} never got {status} from the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_honeypot_touched_on_one_replica_bans_the_address_on_every_replica() {
    let mut redis = RedisServer::start();
    let a = redis_edge(&redis);
    let b = redis_edge(&redis);
    let scanner = "203.0.113.90";
    assert_eq!(get_as(&b, scanner, "/", BROWSER).await.0, StatusCode::OK);
    assert_eq!(
        get_as(&a, scanner, "/.git/config", BROWSER).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_as(&a, scanner, "/", BROWSER).await.0,
        StatusCode::FORBIDDEN
    );
    until_status(&b, scanner, StatusCode::FORBIDDEN).await;
    let listed = bans(&b).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["limit"], "honeypot");
    assert_eq!(listed[0]["key"], scanner);
    assert_eq!(listed[0]["backend"], "redis");
    assert_eq!(
        listed[0]["end"].as_u64().unwrap() - listed[0]["start"].as_u64().unwrap(),
        3600
    );
    // A replica that starts later learns the bans already made.
    let c = redis_edge(&redis);
    until_status(&c, scanner, StatusCode::FORBIDDEN).await;
    for proxy in [&a, &b, &c] {
        assert_eq!(
            proxy
                .metric("portcullis_ratelimit_backend_errors_total")
                .await,
            None,
            "Redis answered every time"
        );
    }
    // Redis gone: a honeypot still bans on the replica that saw it, which says so.
    redis.kill();
    let second = "203.0.113.91";
    assert_eq!(
        get_as(&a, second, "/.env", BROWSER).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_as(&a, second, "/", BROWSER).await.0,
        StatusCode::FORBIDDEN
    );
    assert!(
        a.metric("portcullis_ratelimit_backend_errors_total{limit=\"honeypot\"}")
            .await
            >= Some(1.0)
    );
    let listed = bans(&a).await;
    let local = listed
        .iter()
        .find(|ban| ban["key"] == second)
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(local["backend"], "memory");
    // The bans already shared still hold everywhere; the new one stays on its replica.
    assert_eq!(
        get_as(&b, scanner, "/", BROWSER).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get_as(&b, second, "/", BROWSER).await.0, StatusCode::OK);
}

#[tokio::test]
async fn scanners_and_agentless_sign_ins_are_refused() {
    let proxy = Proxy::start(Settings::default());
    let client = "203.0.113.70";
    assert_eq!(
        get_as(
            &proxy,
            client,
            "/",
            Some("sqlmap/1.8.4#stable (https://sqlmap.org)")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_as(&proxy, client, "/Users/AuthenticateByName", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // An agentless request elsewhere is not a sign-in: it passes.
    assert_eq!(get_as(&proxy, client, "/", None).await.0, StatusCode::OK);
    let lines = proxy.access_log();
    assert!(
        lines
            .iter()
            .any(|l| l["layer"] == "bot" && l["rule"] == "scanner")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["layer"] == "bot" && l["rule"] == "no-user-agent")
    );
}

/// Jellyfin's public server info names the pod's own address; through the edge it names the
/// public URL instead, over HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn jellyfins_own_address_is_hidden_from_its_server_info() {
    let proxy = Proxy::start(Settings::default());
    for h2 in [false, true] {
        let mut conn = Conn::open(proxy.https(), client_ip(), h2).await;
        let request = http::Request::get(format!("https://{HOST}/System/Info/Public"))
            .header("host", HOST)
            .header("accept-encoding", "gzip, br")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(info["LocalAddress"], format!("https://{HOST}"), "h2: {h2}");
        assert_eq!(info["ServerName"], "test");
        let origin_host = ORIGIN_POD_URL.trim_start_matches("http://");
        assert!(!String::from_utf8_lossy(&body).contains(origin_host));
    }
}

#[tokio::test]
async fn jellyfins_setup_wizard_metrics_and_logs_are_closed() {
    let client = "203.0.113.80";
    // Setup in progress: the wizard opens once the edge has asked Jellyfin.
    STARTUP_DONE.store(false, Ordering::SeqCst);
    let proxy = Proxy::start(Settings::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_as(&proxy, client, "/Startup/Configuration", BROWSER)
        .await
        .0
        != StatusCode::OK
    {
        assert!(Instant::now() < deadline, "the wizard never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Setup complete: a fresh edge keeps it closed, even once it has asked.
    STARTUP_DONE.store(true, Ordering::SeqCst);
    let proxy = Proxy::start(Settings::default());
    for _ in 0..10 {
        assert_eq!(
            get_as(&proxy, client, "/Startup/User", BROWSER).await.0,
            StatusCode::FORBIDDEN
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(origin_saw("/System/Info/Public"));
    for path in [
        "/System/Logs",
        "/System/Logs/Log?name=log_20261129.log",
        "/metrics",
    ] {
        assert_eq!(
            get_as(&proxy, client, path, BROWSER).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert!(!origin_saw("/System/Logs"));
}

#[test]
fn a_browser_over_a_challenge_limit_solves_the_proof_of_work_and_passes() {
    let proxy = Proxy::start(Settings {
        trusted: vec!["127.0.0.1/32".into()],
        extra: "rateLimits:
  - name: soft
    pathPrefixes: [/web/]
    key: Ip
    ipv6PrefixLength: 64
    limit: 1
    period: 1h
    burst: 0
    status: 429
    retryAfter: true
    challenge: true
"
        .into(),
        ..Settings::default()
    });
    let seen = browser_script(
        "challenge.mjs",
        &proxy,
        "challenge-screenshots",
        &[
            (
                "EDGE_URL",
                format!("https://{HOST}:{}/web/index.html", proxy.https().port()),
            ),
            ("CLIENT_IP", "198.51.100.50".to_owned()),
        ],
    );
    assert_eq!(seen["first"], 200, "{seen}");
    assert_eq!(
        seen["second"], 429,
        "the second visit is challenged: {seen}"
    );
    assert!(
        seen["landedOn"]
            .as_str()
            .unwrap()
            .ends_with("/web/index.html"),
        "{seen}"
    );
    assert_eq!(
        seen["third"], 200,
        "the pass lets later visits through: {seen}"
    );
    assert!(
        seen["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "portcullis_pass")
    );
    let lines = proxy.access_log();
    assert!(lines.iter().any(|l| l["rule"] == "challenge"));
    assert!(lines.iter().any(|l| l["rule"] == "challenge-solved"));
    println!(
        "solved in {} ms; screenshot in {}",
        seen["solvedMs"],
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("challenge-screenshots")
            .display()
    );
}
