//! Start-up: the command line, the Pingora server and its services.
//!
//! One listening service per public listener (HTTPS; plain HTTP when configured, one
//! thread), the admin endpoint, the config watcher, the Cloudflare Access key refresher and
//! the honeypot ban sync as background services. Tuning, after
//! the measurements in DESIGN.md: worker threads default to the cores available, work
//! stealing is off (measured 29% faster on one thread here), the upstream keep-alive pool
//! is sized by the document, and Pingora's grace period after SIGTERM (300 s by default) is
//! the document's `timeouts.shutdownGrace`.

use std::{net::TcpListener, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use pingora::{
    apps::HttpServerOptions,
    prelude::background_service,
    proxy::http_proxy,
    server::{Server, configuration::ServerConf},
    services::listening::Service,
};

use crate::{
    admin::Admin,
    app::EdgeApp,
    ban_sync::BanSync,
    cloudflare_keys::KeyRefresher,
    edge::Edge,
    reload::{self, ConfigWatcher, LoadError},
    state::Shared,
};

/// The Portcullis edge proxy.
#[derive(Debug, Parser)]
#[command(name = "portcullis-proxy", version, about)]
pub struct Args {
    /// The edge document (`edge.yaml`); its directory is watched and changes apply live.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    /// Worker threads of the HTTPS listener; the cores available by default.
    #[arg(long, env = "PORTCULLIS_THREADS")]
    pub threads: Option<usize>,
    /// Let idle worker threads steal work from busy ones (off by default: slower here).
    #[arg(long, env = "PORTCULLIS_WORK_STEALING")]
    pub work_stealing: bool,
    /// How often the document and the files it names are checked for changes (`1s`,
    /// `500ms`).
    #[arg(long, env = "PORTCULLIS_WATCH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<portcullis_crds::common::Duration>()
        .map(portcullis_crds::common::Duration::get)
        .map_err(|e| e.to_string())
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The first document could not be loaded.
    #[error("{0}")]
    Config(#[from] LoadError),
    /// The admin port could not be bound.
    #[error("cannot listen on the admin address {address}: {source}")]
    AdminListener {
        /// The address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The Pingora server configuration for the tuning asked for.
pub fn server_conf(
    threads: usize,
    work_stealing: bool,
    pool_size: usize,
    grace: Duration,
) -> ServerConf {
    ServerConf {
        threads: threads.max(1),
        work_stealing,
        upstream_keepalive_pool_size: pool_size,
        // Pingora sleeps the whole grace period after SIGTERM (the admin service ends the
        // process earlier once nothing is open), then gives runtimes this long.
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

fn https_service(
    conf: &Arc<ServerConf>,
    shared: &Arc<Shared>,
    address: std::net::SocketAddr,
    threads: usize,
) -> Service<EdgeApp> {
    let mut proxy = http_proxy(conf, Edge::new(Arc::clone(shared)));
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(shared.policy.load().timeouts.header_read);
    proxy.server_options = Some(options);
    let mut service = Service::new(
        "portcullis https".to_owned(),
        EdgeApp::https(proxy, Arc::clone(shared)),
    );
    service.add_tcp(&address.to_string());
    service.threads = Some(threads);
    service
}

fn redirect_service(shared: &Arc<Shared>, address: std::net::SocketAddr) -> Service<EdgeApp> {
    let mut service = Service::new(
        "portcullis http redirect".to_owned(),
        EdgeApp::redirect(Arc::clone(shared)),
    );
    service.add_tcp(&address.to_string());
    service.threads = Some(1);
    service
}

/// Loads the document, starts every service, and serves until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<(), StartError> {
    let policy = reload::load(&args.config, None)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let conf = server_conf(
        threads,
        args.work_stealing,
        policy.upstream.pool_size,
        policy.timeouts.shutdown_grace,
    );
    let listen = policy.listen.clone();
    let admin_listener = TcpListener::bind(listen.admin)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|source| StartError::AdminListener {
            address: listen.admin,
            source,
        })?;
    tracing::info!(
        source = %policy.source,
        hash = %policy.content_hash,
        https = %listen.https,
        http = ?listen.http,
        admin = %listen.admin,
        threads,
        work_stealing = args.work_stealing,
        "starting the edge"
    );
    let shared = Arc::new(Shared::new(policy));
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = Arc::clone(&server.configuration);
    server.add_service(https_service(&conf, &shared, listen.https, threads));
    if let Some(http) = listen.http {
        server.add_service(redirect_service(&shared, http));
    }
    let mut admin = background_service(
        "portcullis admin",
        Admin::new(Arc::clone(&shared), admin_listener),
    );
    admin.threads = Some(1);
    server.add_service(admin);
    let mut watcher = background_service(
        "portcullis config watcher",
        ConfigWatcher::new(args.config, Arc::clone(&shared), args.watch_interval),
    );
    watcher.threads = Some(1);
    server.add_service(watcher);
    let mut keys = background_service(
        "portcullis cloudflare access keys",
        KeyRefresher::new(Arc::clone(&shared)),
    );
    keys.threads = Some(1);
    server.add_service(keys);
    let mut ban_sync = background_service(
        "portcullis honeypot ban sync",
        BanSync::new(Arc::clone(&shared)),
    );
    ban_sync.threads = Some(1);
    server.add_service(ban_sync);
    server.run_forever()
}
