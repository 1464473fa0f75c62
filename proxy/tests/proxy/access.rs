//! Zero-trust access end to end: a real Mailpit receives the one-time codes (read back
//! through its API), a country database written by the test maps documentation addresses
//! to France and the United States, and clients from other countries arrive through the
//! trusted proxy hop (127.0.0.2 with `X-Forwarded-For`), as the seed's scenarios ask.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::LazyLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;

use crate::util::{
    HOST, Proxy, RedisServer, Settings, VALID_APP_TOKEN, browser_dir, browser_script, empty,
    fetch_from, free_port, origin_saw, scratch, session_key_file, trusted_proxy_ip, watchdog,
};

/// An address the test database places in France.
const FR_CLIENT: &str = "192.0.2.10";
/// An address it places in the United States.
const US_CLIENT: &str = "198.51.100.7";
/// An address it has no country for.
const NOWHERE_CLIENT: &str = "203.0.113.5";
/// An address in an ip-location-db shaped record (`country_code`), in France.
const FR_CLIENT_OTHER_SHAPE: &str = "100.64.0.9";

const ALICE: &str = "alice@example.org";

/// The user agent the test browser sends (the bot guard refuses sign-in without one).
const BROWSER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0";

// ---------------------------------------------------------------------------------------
// Real neighbours: Mailpit, the country database, the session key.

/// A Mailpit of this test process, on ports of its own.
struct Mailpit {
    smtp: u16,
    api: SocketAddr,
    _child: Child,
    _watchdog: Child,
}

fn e2e_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_E2E_BIN") {
        return PathBuf::from(dir);
    }
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/cluster");
    let out = Command::new(cluster).arg("env").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("export PORTCULLIS_E2E_BIN="))
        .map(PathBuf::from)
        .expect("e2e/cluster env names the binary directory")
}

fn mailpit() -> &'static Mailpit {
    static MAILPIT: LazyLock<Mailpit> = LazyLock::new(|| {
        let binary = e2e_bin().join("mailpit");
        assert!(
            binary.exists(),
            "{} is missing: run `e2e/cluster build` first",
            binary.display()
        );
        let smtp = free_port();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = scratch().join("mailpit");
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--smtp=127.0.0.1:{smtp}"))
            .arg(format!("--listen={api}"))
            .arg(format!("--database={}", dir.join("mail.db").display()))
            .arg("--smtp-auth-accept-any")
            .arg("--smtp-auth-allow-insecure")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mailpit.log")).unwrap())
            .spawn()
            .unwrap();
        // Mailpit dies with this test process.
        let watchdog = watchdog(&child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(api).is_err() {
            assert!(Instant::now() < deadline, "mailpit did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Mailpit {
            smtp,
            api,
            _child: child,
            _watchdog: watchdog,
        }
    });
    &MAILPIT
}

async fn http_get_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", address.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

impl Mailpit {
    /// The texts of every message sent to `to`, newest first.
    async fn texts_to(&self, to: &str) -> Vec<String> {
        let found = http_get_json(
            self.api,
            &format!("/api/v1/search?query=to:{}", to.replace('@', "%40")),
        )
        .await;
        let mut texts = Vec::new();
        for message in found["messages"].as_array().cloned().unwrap_or_default() {
            let id = message["ID"].as_str().unwrap();
            let full = http_get_json(self.api, &format!("/api/v1/message/{id}")).await;
            texts.push(full["Text"].as_str().unwrap_or("").to_owned());
        }
        texts
    }

    /// The code in the newest message to `to` that is not in `seen`, waiting up to 10 s.
    async fn new_code(&self, to: &str, seen: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let texts = self.texts_to(to).await;
            if texts.len() > seen {
                return texts[0]
                    .split_whitespace()
                    .find(|word| word.len() == 6 && word.bytes().all(|b| b.is_ascii_digit()))
                    .expect("the mail carries a 6-digit code")
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "no mail reached {to}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The test country database: documentation ranges in France and the United States, and
/// one range in ip-location-db's record shape.
pub fn country_database() -> PathBuf {
    static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
        let mut writer = mmdb_writer::Writer::new("Portcullis-Test-Country");
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        writer
            .insert(
                net("192.0.2.0/24"),
                &serde_json::json!({"country": {"iso_code": "FR"}}),
            )
            .unwrap();
        writer
            .insert(
                net("198.51.100.0/24"),
                &serde_json::json!({"country": {"iso_code": "US"}}),
            )
            .unwrap();
        writer
            .insert(
                net("100.64.0.0/24"),
                &serde_json::json!({"country_code": "FR"}),
            )
            .unwrap();
        let path = scratch().join("country.mmdb");
        std::fs::write(&path, writer.to_bytes().unwrap()).unwrap();
        path
    });
    PATH.clone()
}

/// The access section: France only, Alice and the family domain, codes by Mailpit.
fn access_section(extra: &str) -> String {
    access_section_with("", extra)
}

/// [`access_section`] with more of the `otp` block (`otp_extra`, indented four spaces).
fn access_section_with(otp_extra: &str, extra: &str) -> String {
    format!(
        "access:
  countries:
    allow: [FR]
  geoipFile: {db}
  emails: [{ALICE}]
  emailDomains: [family.example]
  otp:
    length: 6
    ttl: 5m
    maxAttempts: 3
    resendCooldown: 2s
    smtp:
      host: 127.0.0.1
      port: {smtp}
      tls: None
      from: \"Jellyfin <no-reply@example.org>\"
{otp_extra}  session:
    ttl: 24h
    idleTtl: 2h
    cookieName: portcullis_session
    keyFiles: [{key}]
  appTokenCacheTtl: 1m
{extra}",
        db = country_database().display(),
        smtp = mailpit().smtp,
        key = session_key_file("session-key-current", b'k').display(),
    )
}

fn access_proxy() -> Proxy {
    Proxy::start(Settings {
        extra: access_section(""),
        ..Settings::default()
    })
}

// ---------------------------------------------------------------------------------------
// A browser: a cookie jar over fresh connections through the trusted proxy hop.

struct Browser {
    address: SocketAddr,
    client: &'static str,
    origin: String,
    cookies: BTreeMap<String, String>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
    request_id: String,
}

impl Browser {
    fn new(proxy: &Proxy, client: &'static str) -> Self {
        Self {
            address: proxy.https(),
            client,
            origin: format!("https://{HOST}"),
            cookies: BTreeMap::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, form: Option<String>, accept: &str) -> Page {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://{HOST}{path}"))
            .header("host", HOST)
            .header("accept", accept)
            .header("user-agent", BROWSER_AGENT)
            .header("x-forwarded-for", self.client);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            builder = builder.header("cookie", jar.join("; "));
        }
        let body = match form {
            Some(form) => {
                builder = builder
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("origin", &self.origin);
                Full::new(Bytes::from(form))
                    .map_err(|never| match never {})
                    .boxed()
            }
            None => empty(),
        };
        let (response, body) = fetch_from(
            self.address,
            trusted_proxy_ip(),
            builder.body(body).unwrap(),
        )
        .await;
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: String::from_utf8_lossy(&body).into_owned(),
            request_id: response
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(
            "GET",
            path,
            None,
            "text/html,application/xhtml+xml,*/*;q=0.8",
        )
        .await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send("POST", path, Some(form), "text/html").await
    }

    /// Opens the sign-in page and returns its CSRF token and return path.
    async fn login_form(&mut self, path: &str) -> (String, String) {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let field = |name: &str| {
            let marker = format!("name=\"{name}\" value=\"");
            let start = page.body.find(&marker).unwrap() + marker.len();
            let end = start + page.body[start..].find('"').unwrap();
            page.body[start..end].replace("&amp;", "&")
        };
        (field("csrf"), field("rd"))
    }

    /// Asks for a code for `email`: the answer to the e-mail form.
    async fn ask_code(&mut self, email: &str, rd: &str) -> Page {
        let (csrf, _) = self
            .login_form(&format!("/.portcullis/login?rd={}", urlencode(rd)))
            .await;
        self.post(
            "/.portcullis/login",
            &[("email", email), ("csrf", &csrf), ("rd", rd)],
        )
        .await
    }

    /// Posts a code from the code page.
    async fn submit_code(&mut self, code: &str) -> Page {
        let page = self.get("/.portcullis/code").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let marker = "name=\"csrf\" value=\"";
        let start = page.body.find(marker).unwrap() + marker.len();
        let csrf = page.body[start..start + page.body[start..].find('"').unwrap()].to_owned();
        self.post("/.portcullis/code", &[("code", code), ("csrf", &csrf)])
            .await
    }

    /// Signs `email` in all the way, returning the code used.
    async fn sign_in(&mut self, email: &str, rd: &str) -> (String, Page) {
        let seen = mailpit().texts_to(email).await.len();
        let asked = self.ask_code(email, rd).await;
        assert_eq!(asked.status, StatusCode::SEE_OTHER);
        let code = mailpit().new_code(email, seen).await;
        let done = self.submit_code(&code).await;
        (code, done)
    }
}

/// An address of the allowed family domain that no other test uses, so tests running at once
/// never read each other's codes from the shared sink.
fn member(test: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{test}-{}-{n}@family.example", std::process::id())
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/{label}-{nanos}")
}

// ---------------------------------------------------------------------------------------
// The seed's scenarios.

#[tokio::test]
async fn scenario_1_france_and_an_allowed_email_get_a_code_and_reach_the_app() {
    let proxy = access_proxy();
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    let target = unique("web/index.html");
    let first = browser.get(&target).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(
        first.location.as_deref(),
        Some(format!("/.portcullis/login?rd={}", urlencode(&target)).as_str())
    );
    assert!(
        !origin_saw(&target),
        "the origin was reached before sign-in"
    );

    let (_, done) = browser.sign_in(ALICE, &target).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some(target.as_str()));
    assert!(browser.cookies.contains_key("portcullis_session"));

    let app = browser.get(&target).await;
    assert_eq!(app.status, StatusCode::OK);
    assert_eq!(app.body, "hello from the origin\n");
    assert!(origin_saw(&target));
    let line = proxy.access_log_line(&app.request_id).await;
    assert_eq!(line["email"], ALICE);
    assert_eq!(line["country"], "FR");
    assert_eq!(line["layer"], "access");
    assert_eq!(line["rule"], "session");
    assert!(
        proxy
            .metric("portcullis_otp_mails_total{result=\"sent\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test]
async fn scenario_2_a_us_address_is_refused_and_the_origin_receives_nothing() {
    let proxy = access_proxy();
    let mut browser = Browser::new(&proxy, US_CLIENT);
    let target = unique("from-us");
    let page = browser.get(&target).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(!page.body.contains("FR") && !page.body.contains("US"));
    // Even the sign-in page is out of reach.
    assert_eq!(
        browser.get("/.portcullis/login").await.status,
        StatusCode::FORBIDDEN
    );
    assert!(!origin_saw(&target));
    let line = proxy.access_log_line(&page.request_id).await;
    assert_eq!(line["layer"], "geo");
    assert_eq!(line["rule"], "country-not-allowed");
    assert_eq!(line["country"], "US");
    // An address with no country is refused too; France in the other record shape is not.
    let mut nowhere = Browser::new(&proxy, NOWHERE_CLIENT);
    assert_eq!(nowhere.get("/").await.status, StatusCode::FORBIDDEN);
    let mut other_shape = Browser::new(&proxy, FR_CLIENT_OTHER_SHAPE);
    assert_eq!(other_shape.get("/").await.status, StatusCode::SEE_OTHER);
    assert_eq!(
        proxy
            .metric("portcullis_access_decisions_total{rule=\"country-not-allowed\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn scenario_3_an_unknown_email_sees_the_same_page_and_no_mail_is_sent() {
    let proxy = access_proxy();
    let stranger = "mallory@elsewhere.example";
    let member = "bob@family.example";
    let mut a = Browser::new(&proxy, FR_CLIENT);
    let mut b = Browser::new(&proxy, FR_CLIENT);
    let member_mails = mailpit().texts_to(member).await.len();
    let refused = a.ask_code(stranger, "/").await;
    let allowed = b.ask_code(member, "/").await;
    // The same answer: a redirect to the code page with a pending cookie.
    assert_eq!(refused.status, allowed.status);
    assert_eq!(refused.location, allowed.location);
    assert_eq!(refused.body, allowed.body);
    assert!(a.cookies.contains_key("portcullis_session_pending"));
    let code_a = a.get("/.portcullis/code").await;
    let code_b = b.get("/.portcullis/code").await;
    assert_eq!(code_a.status, StatusCode::OK);
    assert_eq!(
        code_a.body.replace(stranger, "EMAIL").len(),
        code_b.body.replace(member, "EMAIL").len()
    );
    // The member's code arrives (so the sink works); the stranger's never does.
    mailpit().new_code(member, member_mails).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mailpit().texts_to(stranger).await.is_empty());
    // And no code can open the stranger's pending sign-in.
    let wrong = a.submit_code("000000").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let lines = proxy.access_log();
    assert!(
        lines
            .iter()
            .any(|l| l["rule"] == "email-not-allowed" && l["email"] == stranger)
    );
}

// ---------------------------------------------------------------------------------------
// Security.

#[tokio::test]
async fn tampered_and_foreign_session_cookies_are_refused() {
    let proxy = access_proxy();
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    browser.sign_in(&member("tampered"), "/").await;
    let good = browser.cookies["portcullis_session"].clone();
    let mut bytes = good.clone().into_bytes();
    bytes[2] = if bytes[2] == b'A' { b'B' } else { b'A' };
    browser.cookies.insert(
        "portcullis_session".into(),
        String::from_utf8(bytes).unwrap(),
    );
    let page = browser.get("/tampered").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location.unwrap().starts_with("/.portcullis/login"));
    assert!(
        !browser.cookies.contains_key("portcullis_session"),
        "the bad cookie is cleared"
    );
    let line = proxy.access_log_line(&page.request_id).await;
    assert_eq!(line["rule"], "session-invalid");
    // An API client without a browser gets 401, not a redirect.
    let mut api = Browser::new(&proxy, FR_CLIENT);
    let page = api.send("GET", "/Items", None, "application/json").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // The good cookie still works.
    browser.cookies.insert("portcullis_session".into(), good);
    assert_eq!(browser.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_code_works_once_and_brute_force_stops_at_the_cap() {
    let proxy = access_proxy();
    let email = member("brute-force");
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    let seen = mailpit().texts_to(&email).await.len();
    browser.ask_code(&email, "/").await;
    let code = mailpit().new_code(&email, seen).await;
    let pending = browser.cookies["portcullis_session_pending"].clone();
    let done = browser.submit_code(&code).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    // Replaying the same pending sign-in and code is refused.
    let mut replay = Browser::new(&proxy, FR_CLIENT);
    replay
        .cookies
        .insert("portcullis_session_pending".into(), pending);
    let again = replay.submit_code(&code).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(!replay.cookies.contains_key("portcullis_session"));
    let line = proxy.access_log_line(&again.request_id).await;
    assert_eq!(line["rule"], "code-replayed");

    // Three wrong codes end the attempt; then even the right code is refused.
    tokio::time::sleep(Duration::from_secs(2)).await; // the resend cooldown
    let mut attacker = Browser::new(&proxy, FR_CLIENT);
    let seen = mailpit().texts_to(&email).await.len();
    attacker.ask_code(&email, "/").await;
    let right = mailpit().new_code(&email, seen).await;
    let wrong = if right == "111111" {
        "222222"
    } else {
        "111111"
    };
    let pending = attacker.cookies["portcullis_session_pending"].clone();
    assert_eq!(
        attacker.submit_code(wrong).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        attacker.submit_code(wrong).await.status,
        StatusCode::UNAUTHORIZED
    );
    let capped = attacker.submit_code(wrong).await;
    assert_eq!(capped.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(capped.body.contains("Too many wrong codes"));
    assert!(!attacker.cookies.contains_key("portcullis_session_pending"));
    // Putting the pending cookie back does not help: the right code is refused now.
    attacker
        .cookies
        .insert("portcullis_session_pending".into(), pending);
    let late = attacker.submit_code(&right).await;
    assert_eq!(late.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!attacker.cookies.contains_key("portcullis_session"));
    let line = proxy.access_log_line(&late.request_id).await;
    assert_eq!(line["rule"], "attempts-exceeded");
}

/// A proxy whose one-time-code attempts live in `redis`, as two replicas of one edge have.
fn replica_sharing(redis: &RedisServer) -> Proxy {
    Proxy::start(Settings {
        extra: access_section_with(
            &format!("    redisUrlFile: {}\n", redis.url_file().display()),
            "",
        ),
        ..Settings::default()
    })
}

/// A wrong code for the right one.
fn wrong_for(right: &str) -> &'static str {
    if right == "111111" {
        "222222"
    } else {
        "111111"
    }
}

#[tokio::test]
async fn two_replicas_sharing_redis_hold_one_attempt_cap_and_spend_a_code_once() {
    let redis = RedisServer::start();
    let (a, b) = (replica_sharing(&redis), replica_sharing(&redis));

    // The cap of three wrong codes holds across both replicas, not three on each.
    let email = member("replicas-cap");
    let mut on_a = Browser::new(&a, FR_CLIENT);
    let seen = mailpit().texts_to(&email).await.len();
    on_a.ask_code(&email, "/").await;
    let right = mailpit().new_code(&email, seen).await;
    let mut on_b = Browser::new(&b, FR_CLIENT);
    on_b.cookies = on_a.cookies.clone();
    let first = on_a.submit_code(wrong_for(&right)).await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert!(first.body.contains("2 tries left"), "{}", first.body);
    let second = on_b.submit_code(wrong_for(&right)).await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED);
    assert!(second.body.contains("1 try left"), "{}", second.body);
    let third = on_a.submit_code(wrong_for(&right)).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    // The right code is refused on the other replica too, which saw one wrong code only.
    let late = on_b.submit_code(&right).await;
    assert_eq!(late.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!on_b.cookies.contains_key("portcullis_session"));
    assert_eq!(
        b.access_log_line(&late.request_id).await["rule"],
        "attempts-exceeded"
    );

    // A code used on one replica is refused on the other.
    let email = member("replicas-spent");
    let mut on_a = Browser::new(&a, FR_CLIENT);
    let seen = mailpit().texts_to(&email).await.len();
    on_a.ask_code(&email, "/").await;
    let code = mailpit().new_code(&email, seen).await;
    let mut replay = Browser::new(&b, FR_CLIENT);
    replay.cookies = on_a.cookies.clone();
    let done = on_a.submit_code(&code).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(on_a.cookies.contains_key("portcullis_session"));
    let again = replay.submit_code(&code).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(!replay.cookies.contains_key("portcullis_session"));
    assert_eq!(
        b.access_log_line(&again.request_id).await["rule"],
        "code-replayed"
    );
    for proxy in [&a, &b] {
        assert_eq!(
            proxy.metric("portcullis_otp_backend_errors_total").await,
            Some(0.0),
            "Redis answered every time"
        );
    }
}

#[tokio::test]
async fn with_the_shared_redis_gone_a_replica_still_caps_attempts_alone_and_says_so() {
    let mut redis = RedisServer::start();
    let proxy = replica_sharing(&redis);
    let email = member("redis-gone");
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    let seen = mailpit().texts_to(&email).await.len();
    browser.ask_code(&email, "/").await;
    let right = mailpit().new_code(&email, seen).await;
    // One wrong code counted in Redis, then Redis dies.
    assert_eq!(
        browser.submit_code(wrong_for(&right)).await.status,
        StatusCode::UNAUTHORIZED
    );
    redis.kill();
    assert_eq!(
        browser.submit_code(wrong_for(&right)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        browser.submit_code(wrong_for(&right)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The replica's own count (three since Redis went) reaches the cap.
    let capped = browser.submit_code(wrong_for(&right)).await;
    assert_eq!(capped.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        proxy.metric("portcullis_otp_backend_errors_total").await >= Some(3.0),
        "{:?}",
        proxy.metric("portcullis_otp_backend_errors_total").await
    );
    assert!(
        proxy
            .log()
            .contains("one-time-code attempts are counted by this replica alone"),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn the_return_path_is_local_only() {
    let proxy = access_proxy();
    for evil in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let mut browser = Browser::new(&proxy, FR_CLIENT);
        let (_, done) = browser.sign_in(&member("return-path"), evil).await;
        assert_eq!(done.location.as_deref(), Some("/"), "{evil}");
        tokio::time::sleep(Duration::from_secs(2)).await; // the resend cooldown
    }
}

#[tokio::test]
async fn revoked_before_signs_everyone_out_at_once() {
    let mut proxy = access_proxy();
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    browser.sign_in(&member("revoked"), "/").await;
    assert_eq!(browser.get("/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = utc_now();
    let text = Settings {
        extra: access_section(&format!("  revokedBefore: \"{now}\"\n")),
        ..proxy.settings.clone()
    }
    .yaml();
    proxy.write_document(&text);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = browser.get("/").await;
        if page.status == StatusCode::SEE_OTHER {
            let line = proxy.access_log_line(&page.request_id).await;
            assert_eq!(line["rule"], "session-revoked");
            break;
        }
        assert!(Instant::now() < deadline, "the session was not revoked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The current time in RFC 3339, from the system clock.
fn utc_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn native_apps_pass_with_a_token_jellyfin_accepts() {
    let proxy = access_proxy();
    let mut app = Browser::new(&proxy, FR_CLIENT);
    let path = unique("Items");
    let page = app
        .send(
            "GET",
            &format!("{path}?api_key={VALID_APP_TOKEN}"),
            None,
            "*/*",
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let line = proxy.access_log_line(&page.request_id).await;
    assert_eq!(line["rule"], "app-token");
    // The second time is answered from memory.
    app.send(
        "GET",
        &format!("{path}?api_key={VALID_APP_TOKEN}"),
        None,
        "*/*",
    )
    .await;
    assert_eq!(
        proxy
            .metric("portcullis_app_token_checks_total{result=\"cached\"}")
            .await,
        Some(1.0)
    );
    let refused = app
        .send("GET", "/Items?api_key=deadbeefdeadbeef", None, "*/*")
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // The app's own sign-in stays reachable without a session, from an allowed country...
    let sign_in = app
        .send(
            "POST",
            "/Users/AuthenticateByName",
            Some(String::new()),
            "*/*",
        )
        .await;
    assert_eq!(sign_in.status, StatusCode::OK);
    // ...and only from there.
    let mut abroad = Browser::new(&proxy, US_CLIENT);
    let page = abroad
        .send(
            "GET",
            &format!("/Items?api_key={VALID_APP_TOKEN}"),
            None,
            "*/*",
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused() {
    let proxy = access_proxy();
    let mut browser = Browser::new(&proxy, FR_CLIENT);
    browser.login_form("/.portcullis/login").await;
    let page = browser
        .post(
            "/.portcullis/login",
            &[("email", ALICE), ("csrf", "forged")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("The form expired"));
    // A right token posted from a foreign origin is refused too...
    let (csrf, _) = browser.login_form("/.portcullis/login").await;
    browser.origin = "https://evil.example".into();
    let page = browser
        .post("/.portcullis/login", &[("email", ALICE), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // ...and accepted from the edge's own.
    browser.origin = format!("https://{HOST}");
    let page = browser
        .post(
            "/.portcullis/login",
            &[("email", "carol@family.example"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
}

// ---------------------------------------------------------------------------------------
// Real browser, real country database.

#[test]
fn the_sign_in_pages_work_in_headless_chromium() {
    // The browser connects from 127.0.0.1 and stands behind a trusted proxy hop that says
    // it is in France.
    let proxy = Proxy::start(Settings {
        trusted: vec!["127.0.0.1/32".into()],
        extra: access_section(""),
        ..Settings::default()
    });
    let target = unique("web/index.html");
    let seen = browser_script(
        "sign-in.mjs",
        &proxy,
        "sign-in-screenshots",
        &[
            (
                "EDGE_URL",
                format!("https://{HOST}:{}{target}", proxy.https().port()),
            ),
            ("CLIENT_IP", FR_CLIENT.to_owned()),
            ("EMAIL", "dana@family.example".to_owned()),
            ("MAILPIT_API", format!("http://{}", mailpit().api)),
        ],
    );
    assert!(
        seen["loginUrl"]
            .as_str()
            .unwrap()
            .contains("/.portcullis/login?rd="),
        "{seen}"
    );
    assert_eq!(seen["loginTitle"], "Sign in · Jellyfin");
    assert!(
        seen["codeText"]
            .as_str()
            .unwrap()
            .contains("dana@family.example")
    );
    assert!(
        seen["appUrl"].as_str().unwrap().ends_with(&target),
        "{seen}"
    );
    assert!(
        seen["appBody"]
            .as_str()
            .unwrap()
            .contains("hello from the origin")
    );
    let session = seen["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis_session")
        .expect("the session cookie is set");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sign-in-screenshots");
    for shot in ["1-email-form.png", "2-code-form.png", "3-app.png"] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
    println!("screenshots: {}", shots.display());
}

#[test]
fn the_real_country_database_places_well_known_addresses() {
    let file = browser_dir()
        .join("node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb");
    let db = portcullis_proxy::geo::GeoDb::open(&file).unwrap();
    let country = |ip: &str| db.country(ip.parse().unwrap()).map(|c| c.to_string());
    // Google's resolver, RIPE NCC's own network, Orange France; and a private address.
    assert_eq!(country("8.8.8.8").as_deref(), Some("US"));
    assert_eq!(country("2001:4860:4860::8888").as_deref(), Some("US"));
    assert_eq!(country("193.0.6.139").as_deref(), Some("NL"));
    assert_eq!(country("90.0.0.1").as_deref(), Some("FR"));
    assert_eq!(country("10.1.2.3"), None);
}
