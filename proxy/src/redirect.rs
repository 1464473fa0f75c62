//! The plain-HTTP listener: every request is answered with the 308 to HTTPS of
//! [`tls::https_redirect`], and logged and counted as the proxy's requests are.
//!
//! This listener proxies nothing and runs no other layer, so it does not go through
//! Pingora's proxy (request context, phases, response head building for one fixed answer):
//! hyper's HTTP/1.1 server connection serves it, on the connection Pingora's listener
//! accepted and [`crate::app`] admitted (PROXY protocol, connection caps). That takes two
//! thirds off the instructions per redirect (`proxy/README.md`, "What each tuning bought").
//!
//! Limits, as hyper enforces them: each request head within `timeouts.headerRead` from the
//! moment the listener waits for it (slowloris; also the keep-alive idle time), with at most
//! `limits.maxHeaderCount` header fields and `limits.maxHeaderBytes` bytes (431 beyond; hyper
//! reads at least 8 KiB, so a smaller byte limit counts as 8 KiB here), and a target of at
//! most 64 KiB (414). A request body is discarded unread, never taken for the next request
//! (hyper closes the connection rather than read a long one).

use std::{
    convert::Infallible,
    future::ready,
    net::IpAddr,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header::LOCATION};
use http_body_util::Empty;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::{protocols::Stream, server::ShutdownWatch};

use crate::{
    access_log::{self, AccessRecord},
    client_identity,
    request_id::X_REQUEST_ID_NAME,
    state::Shared,
    tls,
    upstream::X_FORWARDED_FOR,
    verdict::{DecisionKind, LayerId},
};

/// The smallest read buffer hyper accepts.
const SMALLEST_READ_BUFFER: usize = 8 * 1024;

/// Serves the plain-HTTP requests of one connection from `peer` until the client closes it,
/// a limit cuts it, or the edge shuts down (the request in progress is answered first).
///
/// # Errors
/// The connection failed: I/O, a malformed request (answered with 400, 414 or 431 first),
/// or a request head that did not arrive in time (`is_timeout`).
pub async fn serve(
    shared: &Shared,
    stream: Stream,
    peer: Option<IpAddr>,
    shutdown: &ShutdownWatch,
) -> Result<(), hyper::Error> {
    let policy = shared.policy.load();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(policy.timeouts.header_read)
        .max_headers(policy.head_limits.max_headers)
        .max_buf_size(policy.head_limits.max_bytes.max(SMALLEST_READ_BUFFER));
    drop(policy);
    let connection = builder.serve_connection(
        TokioIo::new(stream),
        service_fn(|request| ready(Ok::<_, Infallible>(answer(shared, &request, peer)))),
    );
    tokio::pin!(connection);
    let mut shutdown = shutdown.clone();
    if *shutdown.borrow() {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => return result,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    connection.as_mut().graceful_shutdown();
                    return connection.await;
                }
            }
        }
    }
}

/// The redirect for one request, logged and counted.
fn answer(
    shared: &Shared,
    request: &Request<Incoming>,
    peer: Option<IpAddr>,
) -> Response<Empty<Bytes>> {
    let start = Instant::now();
    let time = SystemTime::now();
    let request_id = shared.request_ids.next_id();
    let policy = shared.policy.load();
    let client_ip = peer.map(|peer| {
        client_identity::client_ip(
            &policy.trusted_proxies,
            peer,
            request
                .headers()
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    });
    let target = request.uri().path_and_query().map(|target| target.as_str());
    let redirect = tls::https_redirect(&policy.host, target.unwrap_or("/"));
    let mut response = Response::new(Empty::new());
    *response.status_mut() = redirect.status;
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID_NAME, request_id.header_value());
    headers.insert(LOCATION, redirect.location);
    let metrics = &shared.metrics;
    let duration = start.elapsed();
    metrics.request(LayerId::Tls, DecisionKind::Redirect).inc();
    metrics.request_duration.observe(duration.as_secs_f64());
    access_log::emit(&AccessRecord {
        time,
        request_id: request_id.as_str(),
        client_ip,
        country: "",
        email: "",
        method: request.method().as_str(),
        path: target.unwrap_or(""),
        status: redirect.status.as_u16(),
        bytes: 0,
        duration,
        layer: LayerId::Tls.as_str(),
        decision: DecisionKind::Redirect.as_str(),
        rule: tls::HTTPS_ONLY.rule,
        reason: &tls::HTTPS_ONLY.detail,
    });
    response
}
