//! Shared test parts: a test PKI, a real origin server, the proxy binary started as a
//! subprocess with a document written the way a mounted ConfigMap lays it out, and clients
//! over real TLS.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

/// The host the proxy answers for.
pub const HOST: &str = "media.test";
/// The name on the TLS origin's certificate.
pub const ORIGIN_NAME: &str = "origin.test";
/// Size of the origin's `/big` file.
pub const BIG_FILE: u64 = 8 * 1024 * 1024;

/// The byte at `offset` of every generated body.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A directory for this test process.
pub fn scratch() -> &'static Path {
    static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    &DIR
}

/// A 32-byte session key file of `byte`, named `name` in [`scratch`].
///
/// Tests run in parallel and several start edges on the same key, so the file is
/// written under a name of its own and renamed into place: an edge never reads it
/// half written (a plain `fs::write` truncates first, and an edge starting then saw
/// an empty key).
pub fn session_key_file(name: &str, byte: u8) -> PathBuf {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let path = scratch().join(name);
    let partial = scratch().join(format!(
        "{name}.partial-{}",
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&partial, [byte; 32]).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// A test CA and the certificates it signed, written as PEM files.
pub struct Pki {
    /// The CA certificate (PEM file).
    pub ca_file: PathBuf,
    /// The CA certificate.
    pub ca_der: CertificateDer<'static>,
    /// The edge's certificate chain and key, for `media.test`.
    pub edge_cert: PathBuf,
    /// The edge's key.
    pub edge_key: PathBuf,
    /// A second edge certificate (a renewal), and its key.
    pub renewed_cert: PathBuf,
    /// The renewal's key.
    pub renewed_key: PathBuf,
    /// The TLS origin's certificate and key, for `origin.test`.
    pub origin_cert: PathBuf,
    /// The TLS origin's key.
    pub origin_key: PathBuf,
    /// A certificate and key for `localhost` (test servers the proxy itself calls).
    pub localhost_cert: PathBuf,
    /// Its key.
    pub localhost_key: PathBuf,
}

fn issue(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
    serial: u64,
    dir: &Path,
    file: &str,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} #{serial}"));
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_file = dir.join(format!("{file}.crt"));
    let key_file = dir.join(format!("{file}.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// The test PKI.
pub fn pki() -> &'static Pki {
    static PKI: LazyLock<Pki> = LazyLock::new(|| {
        let dir = scratch().join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let (edge_cert, edge_key) = issue(&ca, HOST, 1, &dir, "edge");
        let (renewed_cert, renewed_key) = issue(&ca, HOST, 2, &dir, "renewed");
        let (origin_cert, origin_key) = issue(&ca, ORIGIN_NAME, 3, &dir, "origin");
        let (localhost_cert, localhost_key) = issue(&ca, "localhost", 4, &dir, "localhost");
        Pki {
            ca_file,
            ca_der: ca.der().clone(),
            edge_cert,
            edge_key,
            renewed_cert,
            renewed_key,
            origin_cert,
            origin_key,
            localhost_cert,
            localhost_key,
        }
    });
    &PKI
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server presenting `cert` (a PEM chain) with `key`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs = vec![CertificateDer::from_pem_file(cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS client trusting the test CA, offering `alpn`.
pub fn tls_connector(alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().ca_der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// The origin.

type OriginBody = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into()).boxed()
}

/// The generated pattern from `start`, `len` bytes, in 64 KiB chunks, pausing `pause`
/// between chunks.
fn pattern_body(start: u64, len: u64, pause: Duration) -> OriginBody {
    static PATTERN: LazyLock<Bytes> =
        LazyLock::new(|| (0..(251 * 262)).map(|i| pattern_byte(i as u64)).collect());
    const CHUNK: u64 = 251 * 261;
    let stream = futures::stream::unfold((start, len), move |(offset, left)| async move {
        if left == 0 {
            return None;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let n = left.min(CHUNK);
        let from = (offset % 251) as usize;
        let chunk = PATTERN.slice(from..from + n as usize);
        Some((
            Ok::<_, Infallible>(Frame::data(chunk)),
            (offset + n, left - n),
        ))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// The generated pattern as a request body of `len` bytes.
pub fn pattern_upload(len: u64) -> BoxBody<Bytes, std::io::Error> {
    pattern_body(0, len, Duration::ZERO)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every request target the origins received, in order.
static ORIGIN_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether an origin received a request whose target contains `needle`.
pub fn origin_saw(needle: &str) -> bool {
    ORIGIN_SEEN
        .lock()
        .unwrap()
        .iter()
        .any(|target| target.contains(needle))
}

/// The bytes of every request body the origin's upload paths received, by target, as they
/// arrived (a body cut short shows what came before the cut).
static ORIGIN_UPLOADS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

/// The body bytes the origin received for the upload whose target contains `needle`;
/// `None` when no such request reached it.
pub fn origin_upload(needle: &str) -> Option<Vec<u8>> {
    ORIGIN_UPLOADS
        .lock()
        .unwrap()
        .iter()
        .find(|(target, _)| target.contains(needle))
        .map(|(_, body)| body.clone())
}

/// Jellyfin's upload endpoints (subtitles, images): the origin keeps what it received and
/// answers with its length.
async fn receive_upload(req: Request<Incoming>) -> Response<OriginBody> {
    let target = req.uri().to_string();
    ORIGIN_UPLOADS
        .lock()
        .unwrap()
        .insert(target.clone(), Vec::new());
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            if let Some(kept) = ORIGIN_UPLOADS.lock().unwrap().get_mut(&target) {
                kept.extend_from_slice(data);
            }
        }
    }
    Response::builder()
        .status(204)
        .header("x-received-bytes", bytes)
        .body(full(Bytes::new()))
        .unwrap()
}

/// The address the origin says it has in its server info, as a Jellyfin pod would.
pub const ORIGIN_POD_URL: &str = "http://10.244.1.7:8096";

/// Whether the origin says its setup wizard is complete (`/System/Info/Public`).
pub static STARTUP_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The one Jellyfin token the origin accepts on `/Users/Me`.
pub const VALID_APP_TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn origin_service(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    ORIGIN_SEEN.lock().unwrap().push(req.uri().to_string());
    let q = query(&req);
    let number =
        |key: &str, default: u64| q.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    let path = req.uri().path();
    if req.method() == http::Method::POST
        && (path.ends_with("/Subtitles") || path.contains("/Images/"))
    {
        return Ok(receive_upload(req).await);
    }
    let response = match req.uri().path() {
        "/echo-headers" => {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in req.headers() {
                headers
                    .entry(name.as_str().to_owned())
                    .or_default()
                    .push(value.to_str().unwrap_or("").to_owned());
            }
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(body.to_string()))
                .unwrap()
        }
        "/big" => {
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            match range {
                Some((first, last)) if first <= last && last < BIG_FILE => Response::builder()
                    .status(206)
                    .header("accept-ranges", "bytes")
                    .header("content-range", format!("bytes {first}-{last}/{BIG_FILE}"))
                    .header("content-length", last - first + 1)
                    .body(pattern_body(first, last - first + 1, Duration::ZERO))
                    .unwrap(),
                _ => Response::builder()
                    .header("accept-ranges", "bytes")
                    .header("content-length", BIG_FILE)
                    .body(pattern_body(0, BIG_FILE, Duration::ZERO))
                    .unwrap(),
            }
        }
        "/stream" => {
            let bytes = number("bytes", 1024);
            let pause = Duration::from_millis(number("pause_ms", 0));
            Response::builder()
                .header("content-length", bytes)
                .body(pattern_body(0, bytes, pause))
                .unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut bytes = 0u64;
            let mut pattern_ok = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    break;
                };
                if let Some(data) = frame.data_ref() {
                    if let Some(&first) = data.first() {
                        pattern_ok &= first == pattern_byte(bytes);
                    }
                    bytes += data.len() as u64;
                }
            }
            Response::builder()
                .header("content-type", "application/json")
                .body(full(
                    serde_json::json!({ "bytes": bytes, "patternOk": pattern_ok }).to_string(),
                ))
                .unwrap()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms", 1000))).await;
            Response::new(full("slow"))
        }
        "/socket" => return Ok(websocket(req)),
        "/System/Info/Public" => {
            let done = STARTUP_DONE.load(std::sync::atomic::Ordering::SeqCst);
            Response::builder()
                .header("content-type", "application/json")
                .body(full(format!(
                    r#"{{"LocalAddress":"{ORIGIN_POD_URL}","ServerName":"test","Version":"10.10.7","StartupWizardCompleted":{done}}}"#
                )))
                .unwrap()
        }
        "/Users/AuthenticateByName" => {
            // Jellyfin's sign-in: `?fail=1` stands for a wrong password.
            let failed = q.get("fail").is_some_and(|v| v == "1");
            Response::builder()
                .status(if failed { 401 } else { 200 })
                .body(full(if failed {
                    "wrong password"
                } else {
                    "signed in"
                }))
                .unwrap()
        }
        "/Users/Me" => {
            let valid = req
                .headers()
                .get("x-emby-token")
                .is_some_and(|token| token == VALID_APP_TOKEN);
            Response::builder()
                .status(if valid { 200 } else { 401 })
                .header("content-type", "application/json")
                .body(full(if valid { r#"{"Name":"alice"}"# } else { "" }))
                .unwrap()
        }
        _ => Response::builder()
            .header("server", "origin-test/1.0")
            .header("x-powered-by", "test")
            .header("content-type", "text/plain")
            .body(full("hello from the origin\n"))
            .unwrap(),
    };
    Ok(response)
}

fn websocket(mut req: Request<Incoming>) -> Response<OriginBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(full("not a websocket"))
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => {
                    let reply = format!("echo: {text}");
                    if socket.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(full(Bytes::new()))
        .unwrap()
}

async fn serve_origin_connection<S>(io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), hyper::service::service_fn(origin_service))
        .with_upgrades()
        .await;
}

/// The origins the proxies forward to, on a runtime of their own.
pub struct Origins {
    /// Plain HTTP.
    pub plain: SocketAddr,
    /// TLS with a certificate for `origin.test` from the test CA.
    pub tls: SocketAddr,
}

/// The origins, started once.
pub fn origins() -> &'static Origins {
    static ORIGINS: LazyLock<Origins> = LazyLock::new(|| {
        let plain = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let tls = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addresses = Origins {
            plain: plain.local_addr().unwrap(),
            tls: tls.local_addr().unwrap(),
        };
        let acceptor = tls_acceptor(&pki().origin_cert, &pki().origin_key);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                plain.set_nonblocking(true).unwrap();
                tls.set_nonblocking(true).unwrap();
                let plain = tokio::net::TcpListener::from_std(plain).unwrap();
                let tls = tokio::net::TcpListener::from_std(tls).unwrap();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = tls.accept().await {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_origin_connection(stream).await;
                            }
                        });
                    }
                });
                while let Ok((stream, _)) = plain.accept().await {
                    tokio::spawn(serve_origin_connection(stream));
                }
            });
        });
        addresses
    });
    &ORIGINS
}

// ---------------------------------------------------------------------------------------
// The proxy.

/// A free port on the loopback interface.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three distinct free ports (HTTPS, plain HTTP, admin): held together while they are
/// picked, so two picks cannot return the same port.
pub fn three_free_ports() -> [u16; 3] {
    let held = [(); 3].map(|()| StdTcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|listener| listener.local_addr().unwrap().port())
}

/// What a test document says; [`Settings::yaml`] writes it out.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTPS port.
    pub https: u16,
    /// Plain HTTP port.
    pub http: u16,
    /// Admin port.
    pub admin: u16,
    /// PROXY protocol on the public listeners.
    pub proxy_protocol: bool,
    /// Certificate and key.
    pub cert: (PathBuf, PathBuf),
    /// Trusted proxies.
    pub trusted: Vec<String>,
    /// Allowed methods.
    pub methods: Vec<&'static str>,
    /// `limits.maxUriBytes`.
    pub max_uri_bytes: u32,
    /// `limits.maxBody`.
    pub max_body: &'static str,
    /// `limits.maxConnections`.
    pub max_connections: u32,
    /// `limits.maxConnectionsPerIp`.
    pub max_connections_per_ip: u32,
    /// `timeouts.bodyRead`.
    pub body_read: &'static str,
    /// `timeouts.upstreamRead`.
    pub upstream_read: &'static str,
    /// `timeouts.shutdownGrace`.
    pub shutdown_grace: &'static str,
    /// `upstream.address`.
    pub upstream: String,
    /// Verified TLS to the origin, expecting this name on its certificate.
    pub upstream_tls: Option<&'static str>,
    /// More of the document (top-level sections such as `access:`), appended as is.
    pub extra: String,
    /// Environment variables of the proxy process.
    pub env: Vec<(&'static str, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        let [https, http, admin] = three_free_ports();
        Self {
            https,
            http,
            admin,
            proxy_protocol: false,
            cert: (pki().edge_cert.clone(), pki().edge_key.clone()),
            trusted: vec!["127.0.0.2/32".into()],
            methods: vec!["GET", "HEAD", "POST", "PUT", "OPTIONS"],
            max_uri_bytes: 256,
            max_body: "1Mi",
            max_connections: 1000,
            max_connections_per_ip: 12,
            body_read: "1s",
            upstream_read: "2s",
            shutdown_grace: "1s",
            upstream: origins().plain.to_string(),
            upstream_tls: None,
            extra: String::new(),
            env: Vec::new(),
        }
    }
}

impl Settings {
    /// The edge document.
    pub fn yaml(&self) -> String {
        let upstream_tls = match self.upstream_tls {
            Some(name) => format!(
                "\n  tls:\n    caFile: {}\n    serverName: {name}",
                pki().ca_file.display()
            ),
            None => String::new(),
        };
        format!(
            "apiVersion: edge.portcullis.dev/v1
kind: EdgeConfig
source:
  namespace: test
  name: jellyfin
  generation: 1
app:
  kind: Jellyfin
  displayName: Jellyfin
host: {HOST}
listen:
  https: 127.0.0.1:{https}
  http: 127.0.0.1:{http}
  admin: 127.0.0.1:{admin}
  proxyProtocol: {proxy_protocol}
tls:
  certFile: {cert}
  keyFile: {key}
  hstsMaxAge: 1h
clientIdentity:
  trustedProxies: [{trusted}]
limits:
  maxUriBytes: {max_uri_bytes}
  maxHeaderCount: 30
  maxHeaderBytes: 4Ki
  maxBody: {max_body}
  allowedMethods: [{methods}]
  maxConnections: {max_connections}
  maxConnectionsPerIp: {max_connections_per_ip}
timeouts:
  headerRead: 2s
  bodyRead: {body_read}
  upstreamConnect: 2s
  upstreamRead: {upstream_read}
  upstreamIdle: 30s
  shutdownGrace: {shutdown_grace}
upstream:
  address: {upstream}
  poolSize: 16{upstream_tls}
{extra}",
            https = self.https,
            http = self.http,
            admin = self.admin,
            proxy_protocol = self.proxy_protocol,
            cert = self.cert.0.display(),
            key = self.cert.1.display(),
            trusted = self.trusted.join(", "),
            max_uri_bytes = self.max_uri_bytes,
            max_body = self.max_body,
            methods = self.methods.join(", "),
            max_connections = self.max_connections,
            max_connections_per_ip = self.max_connections_per_ip,
            body_read = self.body_read,
            upstream_read = self.upstream_read,
            shutdown_grace = self.shutdown_grace,
            upstream = self.upstream,
            extra = self.extra,
        )
    }
}

// ---------------------------------------------------------------------------------------
// Neighbours.

/// A process that kills `child` once this test process is gone, however it ends; keep it
/// beside the child.
pub fn watchdog(child: &Child) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {child} 2>/dev/null",
            me = std::process::id(),
            child = child.id()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `e2e/browser/`, where `npm ci` installed playwright-core and the real country database.
pub fn browser_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/browser"));
    assert!(
        dir.join("node_modules").exists(),
        "run `npm ci` in {} first (e2e/install-deps does)",
        dir.display()
    );
    dir
}

/// Runs a script of `e2e/browser` (playwright-core driving Debian's Chromium) against
/// `proxy` with `env`; the one JSON line it prints. Screenshots go to `shots` under the
/// target's temporary directory.
pub fn browser_script(
    script: &str,
    proxy: &Proxy,
    shots: &str,
    env: &[(&str, String)],
) -> serde_json::Value {
    let out = Command::new("node")
        .arg(browser_dir().join(script))
        .env("EDGE_ADDRESS", proxy.https().to_string())
        .env(
            "SCREENSHOTS",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(shots),
        )
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes the document the way the kubelet lays out a ConfigMap volume: a new timestamped
/// directory, then an atomic swap of the `..data` symlink that `edge.yaml` points through.
pub fn write_document(dir: &Path, generation: u32, text: &str) {
    let config = dir.join("config");
    let data = format!("..{generation}");
    std::fs::create_dir_all(config.join(&data)).unwrap();
    std::fs::write(config.join(&data).join("edge.yaml"), text).unwrap();
    let tmp = config.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).unwrap();
    std::fs::rename(&tmp, config.join("..data")).unwrap();
    let link = config.join("edge.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/edge.yaml", &link).unwrap();
    }
}

/// A `redis-server` of this test, on a port of its own; killed when dropped.
pub struct RedisServer {
    /// Its port on the loopback interface.
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// A server on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A server on `port`.
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    /// A file holding the server's URL, as the operator mounts it.
    pub fn url_file(&self) -> PathBuf {
        let path = scratch().join(format!("redis-url-{}", self.port));
        std::fs::write(&path, format!("redis://127.0.0.1:{}/\n", self.port)).unwrap();
        path
    }

    /// Runs one command with `redis-cli`: its output.
    pub fn command(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools, with redis-server) is installed");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `clamd` of this test (Debian package clamav-daemon), started in the foreground with a
/// configuration and a signature database of its own: one signature, for the EICAR test
/// file. Killed when dropped.
pub struct Clamd {
    /// Where it listens: `127.0.0.1:port`, or `unix:` and its socket.
    pub address: String,
    /// Its directory (configuration, database, log).
    pub dir: PathBuf,
    child: Child,
    watchdog: Child,
}

/// The EICAR test file: every antivirus reports it, and it harms nothing.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

impl Clamd {
    /// A clamd on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(false, "64M")
    }

    /// A clamd listening on a Unix socket in its directory.
    pub fn start_unix() -> Self {
        Self::start_with(true, "64M")
    }

    /// A clamd that refuses streams longer than `stream_max_length` (clamd's size syntax).
    pub fn start_with(unix: bool, stream_max_length: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = scratch().join(format!("clamd-{n}"));
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        // An extended signature: any file type, the EICAR bytes anywhere in it.
        let hex: String = EICAR.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            db.join("eicar.ndb"),
            format!("Eicar-Test-Signature:0:*:{hex}\n"),
        )
        .unwrap();
        let (listen, address) = if unix {
            let socket = dir.join("clamd.sock");
            (
                format!("LocalSocket {}", socket.display()),
                format!("unix:{}", socket.display()),
            )
        } else {
            let port = free_port();
            (
                format!("TCPSocket {port}\nTCPAddr 127.0.0.1"),
                format!("127.0.0.1:{port}"),
            )
        };
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes
DatabaseDirectory {db}
{listen}
LogFile {log}
AlertEncrypted yes
StreamMaxLength {stream_max_length}
",
                db = db.display(),
                log = dir.join("clamd.log").display(),
            ),
        )
        .unwrap();
        let binary = ["clamd", "/usr/sbin/clamd"]
            .into_iter()
            .find(|candidate| {
                Command::new(candidate)
                    .arg("--version")
                    .output()
                    .is_ok_and(|out| out.status.success())
            })
            .expect("clamd (Debian package clamav-daemon) is installed");
        let child = Command::new(binary)
            .arg("--config-file")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let watchdog = watchdog(&child);
        let mut clamd = Self {
            address,
            dir,
            child,
            watchdog,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !clamd.answers() {
            if let Ok(Some(status)) = clamd.child.try_wait() {
                panic!("clamd exited with {status}: {}", clamd.log());
            }
            assert!(
                Instant::now() < deadline,
                "clamd did not start: {}",
                clamd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        clamd
    }

    /// Whether clamd answers `PING`.
    fn answers(&self) -> bool {
        use std::io::Write as _;
        let reply = |mut stream: Box<dyn ReadWrite>| {
            stream.write_all(b"zPING\0").ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).ok()?;
            Some(reply)
        };
        let stream: Option<Box<dyn ReadWrite>> = match self.address.strip_prefix("unix:") {
            Some(path) => std::os::unix::net::UnixStream::connect(path)
                .ok()
                .map(|s| Box::new(s) as Box<dyn ReadWrite>),
            None => std::net::TcpStream::connect(&self.address)
                .ok()
                .map(|s| Box::new(s) as Box<dyn ReadWrite>),
        };
        stream
            .and_then(reply)
            .is_some_and(|r| r.starts_with(b"PONG"))
    }

    /// clamd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("clamd.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it for good.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.kill();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A running proxy process.
pub struct Proxy {
    /// The process.
    pub child: Child,
    /// Kills the process if the test process dies without dropping this.
    watchdog: Child,
    /// The settings it started with.
    pub settings: Settings,
    /// Its directory: `config/` laid out like a mounted ConfigMap, its logs.
    pub dir: PathBuf,
    generation: u32,
}

impl Proxy {
    /// Starts the proxy binary with `settings` and waits until it is ready.
    pub fn start(mut settings: Settings) -> Self {
        // `free_port` hands out ports nobody holds *now*; a test starting at the same moment
        // can take one first. The proxy then exits saying so, and gets fresh ports.
        for _ in 0..5 {
            match Self::try_start(settings.clone()) {
                Ok(proxy) => return proxy,
                Err(log) if log.contains("in use") => {
                    [settings.https, settings.http, settings.admin] = three_free_ports();
                }
                Err(log) => panic!("the proxy did not start: {log}"),
            }
        }
        panic!("no free ports for the proxy after five tries")
    }

    /// Starts the proxy binary with `settings`: the proxy once ready, or its log if it
    /// exited while starting.
    fn try_start(settings: Settings) -> Result<Self, String> {
        origins();
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = scratch().join(format!("proxy-{n}"));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        write_document(&dir, 1, &settings.yaml());
        let stdout = std::fs::File::create(dir.join("access.log")).unwrap();
        let stderr = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"))
            .arg("--config")
            .arg(dir.join("config/edge.yaml"))
            .arg("--threads")
            .arg("1")
            .arg("--watch-interval")
            .arg("200ms")
            .env("RUST_LOG", "info")
            .envs(settings.env.iter().map(|(name, value)| (*name, value)))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let watchdog = watchdog(&child);
        let mut proxy = Self {
            child,
            watchdog,
            settings,
            dir,
            generation: 1,
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Replaces the document the way the kubelet updates a ConfigMap volume.
    pub fn write_document(&mut self, text: &str) {
        self.generation += 1;
        write_document(&self.dir, self.generation, text);
    }

    /// The HTTPS address.
    pub fn https(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.settings.https))
    }

    /// The plain-HTTP address.
    pub fn http(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.settings.http))
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.settings.admin))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        // A debug build compiles the CRS in seconds; several at once on a loaded machine
        // took over 30 s.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let ready = admin_get_blocking(self.admin(), "/readyz").map(|(status, _)| status);
            let https_up = std::net::TcpStream::connect(self.https()).is_ok();
            if ready == Some(200) && https_up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not get ready: {}", self.log());
    }

    /// The proxy's diagnostics so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// The access log so far, one JSON value per line.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The access-log line of request `id`, once the proxy has written it.
    pub async fn access_log_line(&self, id: &str) -> serde_json::Value {
        eventually(|| {
            self.access_log()
                .into_iter()
                .find(|line| line["requestId"] == id)
        })
        .await
    }

    /// The proxy's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The value of a metric line that starts with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = admin_get(self.admin(), "/metrics").await?;
        body.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// The proxy most tests share, started once.
pub fn shared() -> &'static Proxy {
    static PROXY: LazyLock<Proxy> = LazyLock::new(|| Proxy::start(Settings::default()));
    &PROXY
}

/// `GET path` on the admin port, blocking: status and body.
pub fn admin_get_blocking(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    parse_response(&text)
}

/// `GET path` on the admin port: status and body.
pub async fn admin_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || admin_get_blocking(address, &path))
        .await
        .ok()?
}

fn parse_response(text: &str) -> Option<(u16, String)> {
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

// ---------------------------------------------------------------------------------------
// Clients.

/// A TCP connection to `address` from the loopback address `source` (127.0.0.x stands for
/// a different client).
pub async fn tcp_from(source: IpAddr, address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

/// A TLS connection to the proxy from `source`, offering `alpn`.
pub async fn tls_from(
    source: IpAddr,
    address: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, address).await?;
    tls_over(tcp, alpn).await
}

/// TLS over an open connection.
pub async fn tls_over<S>(io: S, alpn: &[&[u8]]) -> std::io::Result<TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls_connector(alpn)
        .connect(ServerName::try_from(HOST).unwrap(), io)
        .await
}

/// The loopback address tests use as an ordinary (untrusted) client.
pub fn client_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// The loopback address the shared proxy trusts as a proxy.
pub fn trusted_proxy_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 2])
}

/// A raw HTTP/1.1 exchange over TLS (see [`raw_exchange`]).
pub async fn raw_tls(address: SocketAddr, request: &[u8]) -> (u16, String) {
    let tls = tls_from(client_ip(), address, &[b"http/1.1"])
        .await
        .unwrap();
    raw_exchange(tls, request).await
}

/// A raw HTTP/1.1 exchange over plain TCP (see [`raw_exchange`]).
pub async fn raw_tcp(address: SocketAddr, request: &[u8]) -> (u16, String) {
    raw_exchange(TcpStream::connect(address).await.unwrap(), request).await
}

/// Writes `request` over plain TCP and reads until the server closes the connection;
/// panics if it is still open after 5 s. The whole response text.
pub async fn raw_tcp_until_closed(address: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(address).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .expect("the connection was not closed")
        .unwrap();
    out
}

/// Writes `head`, the start of a request head, then another header line every 200 ms
/// until the edge cuts the connection without answering; how long after the first write
/// it did. Panics if it answers, or has not cut within 8 s.
pub async fn trickle_until_cut(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    head: &[u8],
) -> Duration {
    let start = Instant::now();
    stream.write_all(head).await.unwrap();
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream
            .write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            return start.elapsed();
        }
        let mut byte = [0u8; 1];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
        {
            assert!(matches!(read, Ok(0) | Err(_)), "no response is expected");
            return start.elapsed();
        }
    }
    panic!("the slow request head was never cut");
}

/// Writes `request`, reads until the server closes or 3 s pass, and returns the status and
/// the whole response text.
async fn raw_exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &[u8],
) -> (u16, String) {
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// An HTTP client connection to the proxy over TLS (HTTP/1.1 or HTTP/2 by ALPN).
pub enum Conn {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<BoxBody<Bytes, std::io::Error>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<BoxBody<Bytes, std::io::Error>>),
}

impl Conn {
    /// Connects from `source`; `h2` offers only HTTP/2.
    pub async fn open(address: SocketAddr, source: IpAddr, h2: bool) -> Self {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_from(source, address, alpn).await.unwrap();
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Self::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            Self::H1(send)
        }
    }

    /// Sends a request.
    pub async fn send(
        &mut self,
        request: Request<BoxBody<Bytes, std::io::Error>>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::H1(send) => {
                send.ready().await?;
                send.send_request(request).await
            }
            Self::H2(send) => {
                send.ready().await?;
                send.send_request(request).await
            }
        }
    }
}

/// An empty request body.
pub fn empty() -> BoxBody<Bytes, std::io::Error> {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A `GET` of `path` on the proxy's host.
pub fn get(path: &str) -> http::request::Builder {
    Request::get(format!("https://{HOST}{path}")).header("host", HOST)
}

/// `GET path` over a new HTTP/1.1 connection from the ordinary client: the response.
pub async fn fetch(address: SocketAddr, path: &str) -> (Response<Incoming>, Bytes) {
    fetch_from(address, client_ip(), get(path).body(empty()).unwrap()).await
}

/// Sends `request` over a new HTTP/1.1 connection from `source` and reads the whole body.
pub async fn fetch_from(
    address: SocketAddr,
    source: IpAddr,
    request: Request<BoxBody<Bytes, std::io::Error>>,
) -> (Response<Incoming>, Bytes) {
    let mut conn = Conn::open(address, source, false).await;
    let mut response = conn.send(request).await.unwrap();
    let body = response.body_mut().collect().await.unwrap().to_bytes();
    (response, body)
}

/// The headers the origin saw, from its `/echo-headers` answer.
pub fn seen_headers(body: &[u8]) -> BTreeMap<String, Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    serde_json::from_value(value["headers"].clone()).unwrap()
}

/// Reads a response body to its end, checking it is the generated pattern from `start`;
/// returns the number of bytes. `every` checks one byte in that many (1: all).
pub async fn drain_pattern(body: &mut Incoming, start: u64, every: usize) -> u64 {
    let mut offset = start;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for (i, &byte) in data.iter().enumerate().step_by(every) {
                assert_eq!(
                    byte,
                    pattern_byte(offset + i as u64),
                    "byte {}",
                    offset + i as u64
                );
            }
            offset += data.len() as u64;
        }
    }
    offset - start
}

/// Polls `check` until it gives a value (5 s at most).
pub async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
