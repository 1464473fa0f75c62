//! Portcullis's edge: a Pingora proxy in front of the protected application, with one module
//! per defence layer, in request order (see DESIGN.md, "The edge, in request order").
//!
//! | layer | module | where it runs |
//! | --- | --- | --- |
//! | 1. connection guards | [`connection_guard`], [`app`] | connection setup |
//! | 2. TLS termination, plain-HTTP redirect, HSTS | [`tls`], [`app`], [`coalesce`], [`redirect`] | connection setup, the plain-HTTP listener, `response_filter` |
//! | 3. client identity (trusted proxies, PROXY protocol) | [`client_identity`], [`proxy_protocol`] | connection setup, `request_filter` |
//! | 4. request hygiene | [`hygiene`] | `request_filter`, `request_body_filter` |
//! | 5. app-aware rules (Jellyfin) | [`app_rules`] | `request_filter` |
//! | 6. rate limits and bans | [`ratelimit`] | `request_filter`, `logging` |
//! | 7. bot guards (scanners, honeypots, proof-of-work challenge) | [`bots`], [`ban_sync`], [`challenge`] | `request_filter`, background service |
//! | 8. geo | [`geo`] | `request_filter` |
//! | 9. zero-trust access | [`access`] | `request_filter`, `response_filter` |
//! | 10. WAF (OWASP CRS v4) | [`waf`] | `request_filter`, `request_body_filter` |
//! | 10b. upload antivirus (clamd) | [`antivirus`] | `request_filter`, `request_body_filter` |
//! | 11. upstream | [`upstream`] | `upstream_peer`, `upstream_request_filter`, `fail_to_proxy` |
//! | 12. response | [`edge`] | `response_filter` |
//! | 13. logging and metrics | [`access_log`], [`metrics`], [`admin`] | `logging`, admin port |
//!
//! Every layer returns a [`verdict::Verdict`]; [`edge::Edge`] (the one `ProxyHttp`) gathers
//! facts and applies verdicts. The edge document is compiled into a [`model::Policy`] off
//! the request path and swapped in by [`reload`].

pub mod access;
pub mod access_log;
pub mod admin;
pub mod antivirus;
pub mod app;
pub mod app_rules;
pub mod ban_sync;
pub mod bots;
pub mod challenge;
pub mod client_identity;
pub mod cloudflare_keys;
pub mod coalesce;
pub mod connection_guard;
pub mod edge;
pub mod error_page;
pub mod geo;
pub mod hygiene;
pub mod metrics;
pub mod model;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod redirect;
pub mod redis_link;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod verdict;
pub mod waf;
