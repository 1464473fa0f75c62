//! Request ids: 16 hex digits, unique within a process and unlikely to repeat across
//! replicas, made without allocating or locking.
//!
//! A per-process random seed is mixed with a counter by a bijection (SplitMix64's
//! finaliser), so two requests of one process never share an id and ids do not reveal how
//! many requests the edge has served.

use http::{HeaderName, HeaderValue};
use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
};

/// Makes request ids.
#[derive(Debug)]
pub struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::with_seed(RandomState::new().hash_one(std::process::id()))
    }
}

impl RequestIds {
    /// A generator with a fixed seed (tests).
    pub const fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        RequestId::from_u64(mix(n.wrapping_add(self.seed)))
    }
}

/// SplitMix64's finaliser: a bijection on u64 that spreads neighbouring inputs apart.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One request id, as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 16]);

impl RequestId {
    fn from_u64(value: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((value >> (60 - 4 * i)) & 0xf) as usize];
        }
        Self(digits)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id as bytes.
    pub const fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as the value of an `X-Request-Id` header.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// The header that carries the request id: every response names its request, so a user
/// can quote it and an admin find the log line. A static string in the case it goes out
/// in, which Pingora's header API takes without copying it.
pub const X_REQUEST_ID: &str = "x-request-id";

/// [`X_REQUEST_ID`] as a parsed name, for `http` header maps.
pub const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits() {
        let id = RequestIds::with_seed(7).next_id();
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn ids_of_one_generator_never_repeat() {
        let ids = RequestIds::with_seed(0);
        let seen: HashSet<_> = (0..100_000).map(|_| ids.next_id()).collect();
        assert_eq!(seen.len(), 100_000);
    }

    #[test]
    fn neighbouring_ids_look_unrelated() {
        let ids = RequestIds::with_seed(0);
        let (a, b) = (ids.next_id(), ids.next_id());
        let differing = a.0.iter().zip(b.0.iter()).filter(|(x, y)| x != y).count();
        assert!(differing > 8, "{a} and {b}");
    }
}
