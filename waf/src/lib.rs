//! The Portcullis WAF engine: loads the unmodified OWASP CRS v4 rule files (SecLang) and
//! runs them per request, with anomaly scoring and paranoia levels.
//!
//! ```no_run
//! use portcullis_waf::{RequestFacts, WafEngine, WafSettings};
//! let engine = WafEngine::new(&WafSettings::default(), "/etc/crs".as_ref()).unwrap();
//! let mut tx = engine.transaction(
//!     RequestFacts::new("GET", "/Items?searchTerm=x", "HTTP/1.1").header("Host", "media"),
//! );
//! let verdict = tx.process_request_headers();
//! if !verdict.is_blocked() {
//!     let verdict = tx.process_request_body(b"");
//!     println!("{:?} {}", verdict.decision, verdict.inbound_score);
//! }
//! ```
//!
//! The engine does no I/O after loading and knows nothing of the proxy: the proxy feeds
//! it request facts and bodies and acts on the [`Verdict`].

pub mod actions;
pub mod body;
mod engine;
pub mod error;
mod fold;
mod header_sets;
pub mod macros;
pub mod operators;
pub mod parser;
mod phases;
pub mod prefilter;
mod recall;
mod replay;
pub mod rule;
mod transaction;
pub mod transforms;
pub mod variables;
mod walk;

pub use engine::{
    AppProfile, Decision, Exclusion, Match, Mode, RequestFacts, Verdict, WafEngine, WafSettings,
};
pub use error::{ErrorKind, LoadError, RuleError};
pub use operators::DataFiles;
pub use transaction::Transaction;

/// A small deterministic generator (xorshift64) for the crate's tests: the same values on
/// every run.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
