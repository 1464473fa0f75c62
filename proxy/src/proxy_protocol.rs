//! The PROXY protocol, versions 1 and 2 (HAProxy's specification), for load balancers that
//! pass the client's address in front of the TCP stream. Pingora 0.9.1 has no support for it.
//!
//! Runs in connection setup ([`crate::app`]), before the TLS handshake, when
//! `listen.proxyProtocol` is set; a connection without a valid header is closed. The parser
//! is pure ([`parse`]); [`read_header`] reads exactly the header's bytes from a stream so
//! nothing of the TLS handshake or HTTP request behind it is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The largest version 2 payload accepted (addresses and TLVs).
const V2_MAX_PAYLOAD: usize = 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The stream does not start with a PROXY header.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Reading the header failed.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(String),
}

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header took.
    pub len: usize,
    /// The original source address; `None` for `UNKNOWN` (v1), `LOCAL` (v2) or address
    /// families other than TCP over IPv4/IPv6: the socket peer stands.
    pub source: Option<SocketAddr>,
}

/// The result of parsing the bytes read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed: at least this many in total.
    Incomplete(usize),
    /// A whole header.
    Complete(ProxyHeader),
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 6 {
        let v1 = b"PROXY "[..buf.len()] == *buf;
        let v2 = V2_SIGNATURE[..buf.len()] == *buf;
        return if v1 || v2 {
            Ok(Parsed::Incomplete(if v2 && !v1 { 16 } else { 8 }))
        } else {
            Err(ProxyHeaderError::Missing)
        };
    }
    if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else if V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) {
        parse_v2(buf)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes",
            ))
        } else {
            Ok(Parsed::Incomplete(buf.len() + 1))
        };
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(ProxyHeaderError::Malformed(
            "v1 header longer than 107 bytes",
        ));
    }
    let line = std::str::from_utf8(&buf[6..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 header is not ASCII"))?;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || {
                fields
                    .next()
                    .ok_or(ProxyHeaderError::Malformed("v1 header has too few fields"))
            };
            let (src, dst, src_port, dst_port) = (next()?, next()?, next()?, next()?);
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source is not an address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 destination is not an address"))?;
            if (family == "TCP4") != (src.is_ipv4() && dst.is_ipv4()) {
                return Err(ProxyHeaderError::Malformed(
                    "v1 addresses do not match the family",
                ));
            }
            let port = |text: &str| {
                (text.len() <= 5 && !text.starts_with('0') || text == "0")
                    .then(|| text.parse::<u16>().ok())
                    .flatten()
                    .ok_or(ProxyHeaderError::Malformed("v1 port is not a port"))
            };
            let src_port = port(src_port)?;
            port(dst_port)?;
            if fields.next().is_some() {
                return Err(ProxyHeaderError::Malformed("v1 header has too many fields"));
            }
            Some(SocketAddr::new(src, src_port))
        }
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v1 family is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(Parsed::Complete(ProxyHeader { len, source }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete(16));
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version is not 2"));
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::Malformed("v2 payload too long"));
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(Parsed::Incomplete(len));
    }
    let body = &buf[16..len];
    let source = match version_command & 0x0f {
        // LOCAL: the balancer's own connection (health checks); the peer stands.
        0 => None,
        1 => match buf[13] {
            // TCP over IPv4.
            0x11 => {
                let a: [u8; 12] = body
                    .get(..12)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed("v2 IPv4 addresses truncated"))?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
            }
            // TCP over IPv6.
            0x21 => {
                let a: [u8; 36] = body
                    .get(..36)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed("v2 IPv6 addresses truncated"))?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(
                    Ipv6Addr::from(octets).into(),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // UNSPEC, UDP or UNIX: keep the peer.
            _ => None,
        },
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ));
        }
    };
    Ok(Parsed::Complete(ProxyHeader { len, source }))
}

/// Reads a PROXY header from the start of `stream`, consuming exactly its bytes.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    let mut want = 8;
    loop {
        let have = buf.len();
        buf.resize(want, 0);
        stream
            .read_exact(&mut buf[have..])
            .await
            .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
        match parse(&buf)? {
            Parsed::Complete(header) => return Ok(header),
            Parsed::Incomplete(needed) => want = needed.max(buf.len() + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> ProxyHeader {
        match parse(buf) {
            Ok(Parsed::Complete(header)) => header,
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.push(0x20 | command);
        buf.push(family);
        buf.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn v1_tcp4_gives_the_source() {
        let header = complete(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET /");
        assert_eq!(header.len, 41);
        assert_eq!(header.source, Some("192.0.2.7:51234".parse().unwrap()));
    }

    #[test]
    fn v1_tcp6_gives_the_source() {
        let header = complete(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n");
        assert_eq!(header.source, Some("[2001:db8::7]:4000".parse().unwrap()));
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        let header = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!(
            header,
            ProxyHeader {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v1_is_incomplete_until_crlf() {
        assert!(matches!(
            parse(b"PROXY TCP4 1.2"),
            Ok(Parsed::Incomplete(_))
        ));
        assert!(matches!(parse(b"PRO"), Ok(Parsed::Incomplete(_))));
    }

    #[test]
    fn v1_malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyHeaderError::Malformed(_))));
    }

    #[test]
    fn anything_else_is_missing_a_header() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0, 0x10, 1]),
            Err(ProxyHeaderError::Missing)
        );
    }

    #[test]
    fn v2_tcp4_gives_the_source_and_skips_tlvs() {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0xc8, 0x22, 1, 0xbb];
        body.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c']); // a TLV
        let buf = v2(1, 0x11, &body);
        let header = complete(&buf);
        assert_eq!(header.len, 16 + 18);
        assert_eq!(header.source, Some("192.0.2.7:51234".parse().unwrap()));
    }

    #[test]
    fn v2_tcp6_gives_the_source() {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&[0x0f, 0xa0, 0x01, 0xbb]);
        let header = complete(&v2(1, 0x21, &body));
        assert_eq!(header.source, Some("[2001:db8::7]:4000".parse().unwrap()));
    }

    #[test]
    fn v2_local_keeps_the_peer() {
        let header = complete(&v2(0, 0x00, &[]));
        assert_eq!(
            header,
            ProxyHeader {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn v2_is_incomplete_until_its_payload_is_in() {
        let buf = v2(1, 0x11, &[0; 12]);
        assert_eq!(parse(&buf[..10]), Ok(Parsed::Incomplete(16)));
        assert_eq!(parse(&buf[..20]), Ok(Parsed::Incomplete(28)));
    }

    #[test]
    fn v2_bad_version_command_or_truncated_addresses_are_refused() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(
            parse(&bad_version),
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 4])),
            Err(ProxyHeaderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reading_consumes_exactly_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let header = read_header(&mut input).await.unwrap();
        assert_eq!(header.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");

        let mut buf = v2(1, 0x11, &[192, 0, 2, 7, 10, 0, 0, 1, 0, 80, 1, 0xbb]);
        buf.extend_from_slice(b"\x16\x03\x01");
        let mut input = buf.as_slice();
        let header = read_header(&mut input).await.unwrap();
        assert_eq!(header.source, Some("192.0.2.7:80".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");

        let mut short: &[u8] = b"PROXY TCP4";
        assert!(matches!(
            read_header(&mut short).await,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
