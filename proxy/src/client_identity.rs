//! Layer 3, client identity: who the client is.
//!
//! Runs at the top of `request_filter`, before any layer that keys on the client. The client
//! is the socket peer (after the PROXY protocol header, when the listener expects one, see
//! [`crate::proxy_protocol`]) unless that peer is a trusted proxy: one of the configured
//! CIDRs, or one of Cloudflare's published ranges in `behindCloudflare` mode. Then
//! `X-Forwarded-For` is read from the right, skipping trusted hops, and the first untrusted
//! address is the client. A forged `X-Forwarded-For` from an untrusted peer changes nothing,
//! and the upstream never sees a client's own forwarding headers: the edge writes them.

use std::net::IpAddr;

use ipnet::IpNet;

/// Cloudflare's published edge ranges, <https://www.cloudflare.com/ips-v4> and
/// <https://www.cloudflare.com/ips-v6>. Source date: the lists as published since 2023
/// (15 IPv4 and 7 IPv6 prefixes; cross-checked against a copy taken 2024-06-25). Cloudflare
/// changes them rarely and announces changes; update this list when it does.
pub const CLOUDFLARE_RANGES: &[&str] = &[
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// The compiled set of trusted proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// The configured networks, plus Cloudflare's when `behind_cloudflare`.
    pub fn new(configured: impl IntoIterator<Item = IpNet>, behind_cloudflare: bool) -> Self {
        let mut networks: Vec<IpNet> = configured.into_iter().collect();
        if behind_cloudflare {
            networks.extend(
                CLOUDFLARE_RANGES
                    .iter()
                    .filter_map(|range| range.parse::<IpNet>().ok()),
            );
        }
        Self { networks }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// One `X-Forwarded-For` entry as an address: a bare IPv4 or IPv6 address, optionally with a
/// port (`1.2.3.4:5678`, `[2001:db8::1]:5678`) as some proxies write it.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse::<IpAddr>().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client's address, from the socket peer and the `X-Forwarded-For` header values in
/// the order they arrived.
pub fn client_ip<'a>(
    trusted: &TrustedProxies,
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    for value in forwarded_for.rev() {
        for entry in value.rsplit(|&b| b == b',') {
            if entry.trim_ascii().is_empty() {
                continue;
            }
            // An entry that is not an address cannot be vouched for: the last trusted hop is
            // as far as the chain can be followed.
            let Some(hop) = parse_hop(entry) else {
                return client;
            };
            client = hop;
            if !trusted.contains(hop) {
                return hop;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(["10.0.0.0/8".parse().unwrap()], false)
    }

    fn client(peer: &str, xff: &[&str]) -> IpAddr {
        client_ip(
            &trusted(),
            ip(peer),
            xff.iter().map(|value| value.as_bytes()),
        )
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(client("203.0.113.9", &[]), ip("203.0.113.9"));
        assert_eq!(client("203.0.113.9", &["1.2.3.4"]), ip("203.0.113.9"));
    }

    #[test]
    fn a_trusted_peer_forwards_the_rightmost_untrusted_hop() {
        assert_eq!(client("10.0.0.1", &["1.2.3.4"]), ip("1.2.3.4"));
        // The client forged its own first entry; the proxies appended the real one.
        assert_eq!(
            client("10.0.0.1", &["6.6.6.6, 1.2.3.4, 10.0.0.7"]),
            ip("1.2.3.4")
        );
        // Several header lines are one list, in order.
        assert_eq!(client("10.0.0.1", &["6.6.6.6", "1.2.3.4"]), ip("1.2.3.4"));
    }

    #[test]
    fn a_trusted_peer_without_forwarding_is_the_client() {
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
    }

    #[test]
    fn a_chain_of_only_trusted_hops_ends_at_the_leftmost() {
        assert_eq!(client("10.0.0.1", &["10.1.1.1, 10.2.2.2"]), ip("10.1.1.1"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        assert_eq!(client("10.0.0.1", &["1.2.3.4, unknown"]), ip("10.0.0.1"));
        assert_eq!(client("10.0.0.1", &["nonsense, 10.0.0.2"]), ip("10.0.0.2"));
    }

    #[test]
    fn hops_may_carry_ports_and_ipv6() {
        assert_eq!(client("10.0.0.1", &["1.2.3.4:5678"]), ip("1.2.3.4"));
        assert_eq!(
            client("10.0.0.1", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(client("10.0.0.1", &[" 2001:db8::2 "]), ip("2001:db8::2"));
    }

    #[test]
    fn ipv4_mapped_peers_are_matched_as_ipv4() {
        assert_eq!(client("::ffff:10.0.0.1", &["1.2.3.4"]), ip("1.2.3.4"));
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_always_the_client() {
        let none = TrustedProxies::default();
        let xff = [&b"1.2.3.4"[..]];
        assert_eq!(
            client_ip(&none, ip("10.0.0.1"), xff.into_iter()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_cloudflare_its_published_ranges_are_trusted() {
        let cloudflare = TrustedProxies::new([], true);
        assert_eq!(CLOUDFLARE_RANGES.len(), 22);
        assert!(cloudflare.contains(ip("173.245.48.1")));
        assert!(cloudflare.contains(ip("2606:4700::1111")));
        assert!(!cloudflare.contains(ip("1.1.1.1")));
        let xff = [&b"198.51.100.7"[..]];
        assert_eq!(
            client_ip(&cloudflare, ip("162.158.1.1"), xff.into_iter()),
            ip("198.51.100.7")
        );
    }
}
