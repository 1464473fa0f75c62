//! Pingora with nothing of Portcullis in it: the baseline `proxy/bench/run.sh` measures
//! beside the edge and nginx, so its table shows what Pingora's own proxy path costs
//! (TLS, reading and writing the heads, the upstream pool) apart from what the edge's
//! layers add on top.
//!
//! It does what the bench's nginx does and no more: terminates TLS (Pingora's own listener
//! with its Mozilla-intermediate settings, HTTP/1.1 and h2), proxies every request to one
//! origin over a keep-alive pool, sets `X-Forwarded-For` and `X-Forwarded-Proto` on the way
//! in and adds `Strict-Transport-Security` on the way out. No log line, no metrics. It runs
//! with the edge's tuning: mimalloc, the given worker threads, work stealing off.
//!
//! `cargo build --release -p portcullis-proxy --example bare_pingora`, then
//! `bare_pingora LISTEN CERT_FILE KEY_FILE ORIGIN [THREADS]`, e.g.
//! `bare_pingora 127.0.0.1:21443 tls.crt tls.key 127.0.0.1:18080 1`.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use clap::Parser;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::proxy::http_proxy_service;
use pingora::server::{Server, configuration::ServerConf};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse proxy to one origin that only adds the forwarding headers and HSTS.
struct BareProxy {
    /// Where every request goes.
    origin: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|address| address.as_inet())
            .map(|address| address.ip().to_string())
            .unwrap_or_default();
        upstream_request.insert_header("X-Forwarded-For", client)?;
        upstream_request.insert_header("X-Forwarded-Proto", "https")?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_response.insert_header("Strict-Transport-Security", "max-age=31536000")?;
        Ok(())
    }
}

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "bare_pingora",
    about = "Pingora alone, the baseline of proxy/bench"
)]
struct Args {
    /// The HTTPS listen address, e.g. 127.0.0.1:21443.
    listen: String,
    /// The certificate chain (PEM).
    cert_file: String,
    /// Its private key (PEM).
    key_file: String,
    /// The origin every request goes to, e.g. 127.0.0.1:18080.
    origin: SocketAddr,
    /// Worker threads.
    #[arg(default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: args.threads.max(1),
            work_stealing: false,
            upstream_keepalive_pool_size: 128,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    let mut tls = match TlsSettings::intermediate(&args.cert_file, &args.key_file) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("cannot load the certificate and key: {error}");
            return ExitCode::FAILURE;
        }
    };
    tls.enable_h2();
    let mut service = http_proxy_service(
        &server.configuration,
        BareProxy {
            origin: args.origin,
        },
    );
    service.add_tls_with_settings(&args.listen, None, tls);
    server.add_service(service);
    server.run_forever()
}
