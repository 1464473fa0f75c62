//! Behind Cloudflare Access, end to end: a real key server started by the test serves the
//! team's keys (a JWKS of RSA 2048 keys generated here, over plain HTTP on loopback or over
//! HTTPS with the test CA), tokens are signed here with OpenSSL, and the real proxy binary
//! fetches the keys and checks every request's token.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdTcpListener},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use openssl::{
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::Rsa,
    sign::Signer,
};
use serde_json::{Value, json};

use crate::util::{
    Proxy, Settings, client_ip, empty, eventually, fetch_from, get, origin_saw, pki, seen_headers,
    session_key_file, tls_acceptor,
};

const TEAM: &str = "myteam.cloudflareaccess.com";
const AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
const ALICE: &str = "alice@example.org";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Three team keys (RSA 2048), generated once: `k0`, `k1`, `k2`.
static KEYS: LazyLock<Vec<PKey<Private>>> = LazyLock::new(|| {
    (0..3)
        .map(|_| PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap())
        .collect()
});

/// The JWKS of keys `ids` of [`KEYS`], as Cloudflare's certificate endpoint shapes it.
fn jwks(ids: &[usize]) -> String {
    let keys: Vec<Value> = ids
        .iter()
        .map(|&i| {
            let rsa = KEYS[i].rsa().unwrap();
            json!({
                "kid": format!("k{i}"), "kty": "RSA", "alg": "RS256", "use": "sig",
                "e": b64(&rsa.e().to_vec()), "n": b64(&rsa.n().to_vec())
            })
        })
        .collect();
    json!({"keys": keys, "public_cert": {"kid": "k0", "cert": "-----BEGIN CERTIFICATE-----"}})
        .to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a valid token of the application for `email`.
fn claims(email: &str) -> Value {
    json!({
        "aud": [AUD], "email": email, "exp": now() + 600, "iat": now() - 10,
        "nbf": now() - 10, "iss": format!("https://{TEAM}"), "type": "app",
        "identity_nonce": "6ei69kawdKzMIAPF", "sub": "7335d417-61da-459d-899c-0a01c76a2f94",
        "country": "FR"
    })
}

/// A token with `claims`, signed by key `key` of [`KEYS`] and naming key id `kid`.
fn token(key: usize, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &KEYS[key]).unwrap();
    signer.update(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signer.sign_to_vec().unwrap()))
}

/// The team's certificate endpoint: serves what [`KeyServer::serve`] last set, counting
/// fetches.
struct KeyServer {
    address: SocketAddr,
    https: bool,
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    fn start(https: bool, jwks: String) -> Self {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(jwks));
        let fetches = Arc::new(AtomicUsize::new(0));
        let acceptor = https.then(|| tls_acceptor(&pki().localhost_cert, &pki().localhost_key));
        let (jwks, count) = (Arc::clone(&served), Arc::clone(&fetches));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let (jwks, count, acceptor) =
                        (Arc::clone(&jwks), Arc::clone(&count), acceptor.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (jwks, count) = (Arc::clone(&jwks), Arc::clone(&count));
                            async move {
                                let response = if req.uri().path() == "/cdn-cgi/access/certs" {
                                    count.fetch_add(1, Ordering::SeqCst);
                                    let body = jwks.lock().unwrap().clone();
                                    Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                } else {
                                    Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::new()))
                                };
                                Ok::<_, Infallible>(response.unwrap())
                            }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    });
                }
            });
        });
        Self {
            address,
            https,
            jwks: served,
            fetches,
        }
    }

    fn url(&self) -> String {
        if self.https {
            format!(
                "https://localhost:{}/cdn-cgi/access/certs",
                self.address.port()
            )
        } else {
            format!("http://{}/cdn-cgi/access/certs", self.address)
        }
    }

    /// Serves keys `ids` from now on.
    fn serve(&self, ids: &[usize]) {
        *self.jwks.lock().unwrap() = jwks(ids);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An edge behind Cloudflare Access that fetches the keys from `keys`, every `refresh`.
fn edge_behind(keys: &KeyServer, refresh: &str) -> Proxy {
    Proxy::start(edge_behind_settings(keys, refresh))
}

/// The settings of [`edge_behind`].
fn edge_behind_settings(keys: &KeyServer, refresh: &str) -> Settings {
    let mut settings = Settings {
        extra: format!(
            "access:
  emails: [{ALICE}]
  emailDomains: [family.example]
  session:
    ttl: 24h
    idleTtl: 2h
    cookieName: portcullis_session
    keyFiles: [{key}]
  bypass: [/health]
  cloudflareAccess:
    teamDomain: {TEAM}
    audiences: [{AUD}]
    jwksUrl: {url}
    jwksRefresh: {refresh}
",
            key = session_key_file("cloudflare-session-key", b'c').display(),
            url = keys.url(),
        ),
        ..Settings::default()
    };
    if keys.https {
        // The proxy trusts the test CA as its system store.
        settings
            .env
            .push(("SSL_CERT_FILE", pki().ca_file.display().to_string()));
    }
    settings
}

struct Answer {
    status: StatusCode,
    body: Bytes,
    request_id: String,
}

/// `GET path` with `headers`.
async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = get(path).header("accept", "text/html");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, body) =
        fetch_from(proxy.https(), client_ip(), request.body(empty()).unwrap()).await;
    Answer {
        status: response.status(),
        request_id: response
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned(),
        body,
    }
}

async fn with_token(proxy: &Proxy, path: &str, token: &str) -> Answer {
    get_with(proxy, path, &[("cf-access-jwt-assertion", token)]).await
}

fn unique(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "/{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn a_valid_token_reaches_the_app_with_its_verified_email() {
    let keys = KeyServer::start(false, jwks(&[0]));
    let proxy = edge_behind(&keys, "1h");
    let alice = token(0, "k0", &claims("Alice@Example.org"));
    // The e-mail the app sees is the token's, whatever the client claims.
    let seen = get_with(
        &proxy,
        "/echo-headers",
        &[
            ("cf-access-jwt-assertion", &alice),
            ("cf-access-authenticated-user-email", "mallory@example.org"),
        ],
    )
    .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", proxy.log());
    assert_eq!(
        seen_headers(&seen.body)["cf-access-authenticated-user-email"],
        [ALICE]
    );
    let line = proxy.access_log_line(&seen.request_id).await;
    assert_eq!(line["email"], ALICE);
    assert_eq!(line["layer"], "access");
    assert_eq!(line["rule"], "cloudflare-access");
    // Browsers carry the token in Cloudflare's cookie.
    let path = unique("cookie");
    let page = get_with(
        &proxy,
        &path,
        &[("cookie", &format!("theme=dark; CF_Authorization={alice}"))],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(origin_saw(&path));
    // A member of the allowed domain passes too; someone Cloudflare let in but the policy
    // does not list meets the edge's own checks (no session: 401).
    let bob = token(0, "k0", &claims("bob@family.example"));
    assert_eq!(with_token(&proxy, "/", &bob).await.status, StatusCode::OK);
    let stranger = token(0, "k0", &claims("eve@elsewhere.example"));
    let refused = with_token(&proxy, "/", &stranger).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        proxy.access_log_line(&refused.request_id).await["rule"],
        "no-credentials"
    );
    assert!(
        proxy
            .metric("portcullis_access_decisions_total{rule=\"cloudflare-access\"}")
            .await
            >= Some(3.0)
    );
}

#[tokio::test]
async fn tokens_cloudflare_did_not_issue_for_this_application_are_refused_with_the_reason() {
    let keys = KeyServer::start(false, jwks(&[0]));
    let proxy = edge_behind(&keys, "1h");
    let mut wrong_audience = claims(ALICE);
    wrong_audience["aud"] =
        json!(["0000000000000000000000000000000000000000000000000000000000000000"]);
    let mut expired = claims(ALICE);
    expired["exp"] = json!(now() - 120);
    let mut foreign_team = claims(ALICE);
    foreign_team["iss"] = json!("https://otherteam.cloudflareaccess.com");
    let cases = [
        (None, "cf-access-missing", "no Cloudflare Access token"),
        (
            Some(token(0, "k0", &wrong_audience)),
            "cf-access-audience",
            "not this application's",
        ),
        (
            Some(token(0, "k0", &expired)),
            "cf-access-expired",
            "the token expired",
        ),
        (
            Some(token(0, "k0", &foreign_team)),
            "cf-access-issuer",
            "otherteam",
        ),
        // Signed by a key that is not the team's, under the id of one that is.
        (
            Some(token(1, "k0", &claims(ALICE))),
            "cf-access-signature",
            "does not verify with key \"k0\"",
        ),
        (
            Some("not-a-token".to_owned()),
            "cf-access-malformed",
            "three dot-separated parts",
        ),
    ];
    for (token, rule, detail) in cases {
        let path = unique(rule);
        let answer = match &token {
            Some(token) => with_token(&proxy, &path, token).await,
            None => get_with(&proxy, &path, &[]).await,
        };
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{rule}");
        // The edge's own error page, with the request id and nothing about the policy.
        let body = String::from_utf8_lossy(&answer.body);
        assert!(body.contains("403 Forbidden"), "{body}");
        assert!(body.contains(&answer.request_id));
        assert!(!body.contains("cf-access"));
        assert!(!origin_saw(&path), "{rule}: the origin was reached");
        let line = proxy.access_log_line(&answer.request_id).await;
        assert_eq!(line["layer"], "access");
        assert_eq!(line["rule"], rule);
        assert!(
            line["reason"].as_str().unwrap().contains(detail),
            "{rule}: {}",
            line["reason"]
        );
    }
    // The edge's own pages need the token too; bypassed paths do not.
    assert_eq!(
        get_with(&proxy, "/.portcullis/login", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_with(&proxy, "/health", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_first_names_it_and_forged_ids_fetch_nothing() {
    let keys = KeyServer::start(false, jwks(&[0]));
    let proxy = edge_behind(&keys, "1h");
    // The edge fetches the keys as it starts.
    eventually(|| (keys.fetches() >= 1).then_some(())).await;
    assert_eq!(
        with_token(&proxy, "/", &token(0, "k0", &claims(ALICE)))
            .await
            .status,
        StatusCode::OK
    );
    let before = keys.fetches();
    // Cloudflare rotates: the new key signs, the old one is still published.
    keys.serve(&[0, 1]);
    let rotated = with_token(&proxy, "/", &token(1, "k1", &claims(ALICE))).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", proxy.log());
    assert_eq!(keys.fetches(), before + 1, "one fetch for the new key id");
    assert!(proxy.log().contains("unknown key id"));
    // A key id nobody published, right after: refused without asking the key server again.
    let forged = with_token(&proxy, "/", &token(2, "k2", &claims(ALICE))).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let line = proxy.access_log_line(&forged.request_id).await;
    assert_eq!(line["rule"], "cf-access-unknown-key");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("not among the team's 2 keys"),
        "{line}"
    );
    assert_eq!(keys.fetches(), before + 1);
    // The old key still works.
    assert_eq!(
        with_token(&proxy, "/", &token(0, "k0", &claims(ALICE)))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn keys_are_fetched_again_periodically_over_https_and_a_withdrawn_key_stops_working() {
    let keys = KeyServer::start(true, jwks(&[0]));
    let proxy = edge_behind(&keys, "1s");
    let alice = token(0, "k0", &claims(ALICE));
    assert_eq!(
        with_token(&proxy, "/", &alice).await.status,
        StatusCode::OK,
        "{}",
        proxy.log()
    );
    // Key 0 is withdrawn: within a refresh or two the edge no longer accepts it.
    keys.serve(&[1]);
    let fetched = keys.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        keys.fetches() >= fetched + 2,
        "{} fetches, then {}: no periodic refresh",
        fetched,
        keys.fetches()
    );
    let refused = with_token(&proxy, "/", &alice).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        proxy.access_log_line(&refused.request_id).await["rule"],
        "cf-access-unknown-key"
    );
    assert_eq!(
        with_token(&proxy, "/", &token(1, "k1", &claims(ALICE)))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn keys_from_a_server_whose_certificate_the_edge_cannot_verify_are_never_used() {
    let keys = KeyServer::start(true, jwks(&[0]));
    let mut proxy_settings = edge_behind_settings(&keys, "1h");
    // This edge trusts only the system's CAs, not the test CA that signed the key server's
    // certificate.
    proxy_settings.env.clear();
    let proxy = Proxy::start(proxy_settings);
    let refused = with_token(&proxy, "/", &token(0, "k0", &claims(ALICE))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let line = proxy.access_log_line(&refused.request_id).await;
    assert_eq!(line["rule"], "cf-access-unknown-key");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the last fetch failed"),
        "{line}"
    );
    assert!(
        proxy.log().contains("could not be fetched"),
        "{}",
        proxy.log()
    );
}
