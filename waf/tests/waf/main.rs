//! The WAF engine's integration tests: loading the CRS, the public API, the CRS
//! regression suite, and Jellyfin's normal traffic.

mod api;
mod conformance;
mod ftw;
mod jellyfin;
mod load;
mod util;
