//! The edge proxy end to end: the real `portcullis-proxy` binary, started as a subprocess
//! with a document laid out like a mounted ConfigMap, in front of a real origin server,
//! spoken to over real TLS.

mod access;
mod admin;
mod antivirus;
mod bots;
mod cloudflare;
mod connections;
mod flood;
#[path = "../../../waf/tests/waf/ftw.rs"]
mod ftw;
mod hygiene;
mod identity;
mod model;
mod ratelimit;
mod reload;
mod shutdown;
mod streaming;
mod tls;
mod upstream;
mod util;
mod waf;
mod waf_conformance;
