//! The WAF end to end: the real proxy loads the unmodified OWASP CRS v4 (the corpus in
//! `../shared/testdata/crs`) and blocks attacks in the query and in the body before the
//! origin gets them whole, lets Jellyfin's normal traffic through, reports in detect-only
//! mode, and keeps its last good rules when a reload brings broken custom rules.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

use crate::util::{Conn, HOST, Proxy, Settings, client_ip, empty, fetch_from, origin_saw};

/// The CRS corpus beside the checkout.
pub fn crs_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/crs"
    ))
}

/// The document's `waf:` section: the test corpus's CRS in `mode`, with `custom_rules`.
pub fn waf_section(mode: &str, custom_rules: Option<&str>) -> String {
    waf_yaml(mode, Some(&crs_dir()), custom_rules)
}

/// The document's `waf:` section in `mode`, with the CRS in `crs` (off when `None`) and
/// `custom_rules`.
fn waf_yaml(mode: &str, crs: Option<&Path>, custom_rules: Option<&str>) -> String {
    let mut text = format!("waf:\n  mode: {mode}\n");
    if let Some(crs) = crs {
        text.push_str(&format!("  crsDir: {}\n", crs.display()));
    }
    text.push_str(
        "  paranoiaLevel: 1
  executingParanoiaLevel: 1
  inboundAnomalyThreshold: 5
  outboundAnomalyThreshold: 4
  appExclusions: true
  requestBodyLimit: 128Ki
  inspectResponses: false
",
    );
    if let Some(rules) = custom_rules {
        text.push_str(&format!("  customRules: {rules:?}\n"));
    }
    text
}

fn waf_proxy(mode: &str) -> Proxy {
    Proxy::start(Settings {
        extra: waf_section(mode, None),
        ..Settings::default()
    })
}

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0";

async fn get(proxy: &Proxy, target: &str) -> (StatusCode, String, String) {
    let request = Request::get(format!("https://{HOST}{target}"))
        .header("host", HOST)
        .header("user-agent", BROWSER)
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (response, body) = fetch_from(proxy.https(), client_ip(), request).await;
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        response.status(),
        id,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn post_json(proxy: &Proxy, target: &str, json: &'static str) -> (StatusCode, String) {
    let request = Request::post(format!("https://{HOST}{target}"))
        .header("host", HOST)
        .header("user-agent", BROWSER)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from_static(json.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let (response, body) = fetch_from(proxy.https(), client_ip(), request).await;
    (
        response.status(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn an_sql_injection_in_the_query_is_blocked_before_the_origin() {
    let proxy = waf_proxy("Block");
    let target = "/Items/sqli-probe?searchTerm=1%27%20OR%20%271%27%3D%271%27%20--";
    let (status, id, body) = get(&proxy, target).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(&id), "the error names the request id: {body}");
    assert!(!origin_saw("/Items/sqli-probe"));
    let line = proxy.access_log_line(&id).await;
    assert_eq!(line["layer"], "waf");
    assert_eq!(line["rule"], "anomaly-score");
    assert!(line["reason"].as_str().unwrap().contains("942"), "{line}");
    let metrics = crate::util::admin_get(proxy.admin(), "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("portcullis_waf_matches_total{rule=\"942100\"}"),
        "libinjection's SQLi rule counted"
    );
}

#[tokio::test]
async fn an_attack_in_a_json_body_is_blocked() {
    let proxy = waf_proxy("Block");
    let (status, _) = post_json(
        &proxy,
        "/Users/abc/Items",
        r#"{"Name":"<script>alert(document.cookie)</script>"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = post_json(
        &proxy,
        "/echo-headers",
        r#"{"Name":"Movie night","Overview":"A film about a heist"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn jellyfins_normal_traffic_passes() {
    let proxy = waf_proxy("Block");
    for target in [
        // (The test edge allows 256-byte targets; these are Jellyfin's, shortened.)
        "/Users/5f0e/Items?SortBy=SortName&SortOrder=Ascending&IncludeItemTypes=Movie&Recursive=true&Fields=PrimaryImageAspectRatio%2CBasicSyncInfo&StartIndex=0&Limit=100&ParentId=f137a2dd21bbc1b99aa5c0f6bf02a805",
        "/Items?searchTerm=the%20matrix&Limit=24&Fields=PrimaryImageAspectRatio&Recursive=true&EnableTotalRecordCount=false&ImageTypeLimit=1",
        "/Videos/0b4c/master.m3u8?DeviceId=TW96aWxsYS81LjA&MediaSourceId=0b4c&VideoCodec=h264&AudioCodec=aac&VideoBitrate=139616000&PlaySessionId=8e1f&api_key=0123456789abcdef&SegmentContainer=mp4&BreakOnNonKeyFrames=True",
        "/web/index.html",
    ] {
        let (status, _, body) = get(&proxy, target).await;
        assert_eq!(status, StatusCode::OK, "{target}: {body}");
    }
    let (status, body) = post_json(
        &proxy,
        "/Sessions/Playing/Progress",
        r#"{"ItemId":"0b4c","MediaSourceId":"0b4c","PositionTicks":123450000,"IsPaused":false,"PlayMethod":"Transcode","PlaySessionId":"8e1f","EventName":"timeupdate"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Browsers speak HTTP/2, where the host travels as `:authority` and no `Host` header exists:
/// the CRS must still see the host (rule 920280 would block every request otherwise).
#[tokio::test]
async fn http2_requests_pass_and_attacks_over_http2_are_blocked() {
    let proxy = waf_proxy("Block");
    let mut conn = Conn::open(proxy.https(), client_ip(), true).await;
    for (target, expected) in [
        ("/web/index.html", StatusCode::OK),
        (
            "/Items/h2-probe?searchTerm=1%27%20OR%20%271%27%3D%271%27%20--",
            StatusCode::FORBIDDEN,
        ),
    ] {
        let request = Request::get(format!("https://{HOST}{target}"))
            .header("user-agent", BROWSER)
            .header("accept", "text/html")
            .body(empty())
            .unwrap();
        assert!(request.headers().get("host").is_none());
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), expected, "{target}");
    }
    assert!(!origin_saw("/Items/h2-probe"));
}

/// A body sent as its bytes, then, a moment later, its end (as an HTTP/2 client may).
fn late_ending_body(bytes: &'static [u8]) -> BoxBody<Bytes, std::io::Error> {
    let stream = futures::stream::unfold(false, move |sent| async move {
        if sent {
            tokio::time::sleep(Duration::from_millis(300)).await;
            None
        } else {
            Some((Ok(Frame::data(Bytes::from_static(bytes))), true))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An XSS in a JSON body.
const XSS_JSON: &[u8] = br#"{"Name":"<img src=x onerror=alert(document.cookie)>"}"#;

/// POSTs a JSON `body` to `/upload` over a new HTTP/2 connection, with a `content-length`
/// when `length` is given.
async fn post_json_h2(
    proxy: &Proxy,
    body: BoxBody<Bytes, std::io::Error>,
    length: Option<usize>,
) -> Response<Incoming> {
    let mut request = Request::post(format!("https://{HOST}/upload"))
        .header("user-agent", BROWSER)
        .header("content-type", "application/json");
    if let Some(length) = length {
        request = request.header("content-length", length);
    }
    let request = request.body(body).unwrap();
    assert_eq!(
        request.headers().get("content-length").is_some(),
        length.is_some()
    );
    Conn::open(proxy.https(), client_ip(), true)
        .await
        .send(request)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_attack_in_an_http2_body_is_refused_before_the_application_has_it() {
    // Over HTTP/2 the end of a body may come after its last bytes. The body is held back
    // until the WAF has decided, so the application (which answers as soon as it has read
    // the length it was promised) never gets it, and the refusal is what the client sees.
    let proxy = waf_proxy("Block");
    let response = post_json_h2(&proxy, late_ending_body(XSS_JSON), Some(XSS_JSON.len())).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A harmless body goes through whole once its end has come.
    const HARMLESS: &[u8] = br#"{"Name":"Movie night"}"#;
    let mut response = post_json_h2(&proxy, late_ending_body(HARMLESS), Some(HARMLESS.len())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["bytes"], HARMLESS.len());
    // A body longer than the inspection limit (128 KiB here) goes through whole.
    let mut long = br#"{"Overview":""#.to_vec();
    long.extend((0..300 * 1024).map(|i| b'a' + (i % 26) as u8));
    long.extend_from_slice(br#""}"#);
    let length = long.len();
    let full = Full::new(Bytes::from(long))
        .map_err(|never| match never {})
        .boxed();
    let mut response = post_json_h2(&proxy, full, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["bytes"], length);
}

#[tokio::test]
async fn detect_only_lets_attacks_through_and_reports_them() {
    let proxy = waf_proxy("Detect");
    let (status, id, _) = get(
        &proxy,
        "/Items?searchTerm=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = proxy.access_log_line(&id).await;
    assert_ne!(line["layer"], "waf");
    assert_eq!(
        proxy.metric("portcullis_waf_detected_total").await,
        Some(1.0)
    );
    assert!(proxy.log().contains("would have blocked"));
}

#[tokio::test]
async fn broken_custom_rules_keep_the_last_good_rules() {
    let mut proxy = Proxy::start(Settings {
        extra: waf_section(
            "Block",
            Some(
                "SecRule REQUEST_URI \"@contains /forbidden-by-custom\" \"id:10001,phase:1,deny,status:403,log\"",
            ),
        ),
        ..Settings::default()
    });
    assert_eq!(
        get(&proxy, "/forbidden-by-custom").await.0,
        StatusCode::FORBIDDEN
    );
    let broken = Settings {
        extra: waf_section(
            "Block",
            Some("SecRule REQUEST_URI \"@nosuchoperator x\" \"id:10002\""),
        ),
        ..proxy.settings.clone()
    }
    .yaml();
    proxy.write_document(&broken);
    // A reload compiles the whole CRS again: seconds in a debug build, more on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy
        .metric("portcullis_config_reload_failures_total")
        .await
        < Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the broken rules were not refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        proxy.log().contains("nosuchoperator"),
        "the error names the construct"
    );
    assert_eq!(
        get(&proxy, "/forbidden-by-custom").await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_http2_body_without_a_length_is_inspected_too() {
    // HTTP/2 needs neither Content-Length nor chunking for a body: the WAF must still wait
    // for it rather than decide on an empty one and let it stream by.
    let proxy = waf_proxy("Block");
    let response = post_json_h2(&proxy, late_ending_body(XSS_JSON), None).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn custom_rules_run_without_the_crs() {
    let proxy = Proxy::start(Settings {
        extra: waf_yaml(
            "Block",
            None,
            Some(
                "SecRule REQUEST_URI \"@beginsWith /System/Logs\" \"id:10001,phase:1,deny,status:403\"",
            ),
        ),
        ..Settings::default()
    });
    assert_eq!(get(&proxy, "/System/Logs").await.0, StatusCode::FORBIDDEN);
    // The CRS is off: what it would refuse reaches the application.
    let (status, _, _) = get(
        &proxy,
        "/Items/custom-only?searchTerm=1%27%20OR%20%271%27%3D%271%27%20--",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(origin_saw("/Items/custom-only"));
}
