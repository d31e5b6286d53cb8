//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`): a pure parser and a reader that
//! takes exactly the header off a stream, so the bytes after it are left for TLS or HTTP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What a PROXY header said about the original connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v1 `UNKNOWN`, v2 `LOCAL` or v2 `AF_UNSPEC`: keep the peer address.
    Local,
    /// The client and the address it connected to, as seen by the balancer in front.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyProtocolError {
    #[error("connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header has unsupported version {0}")]
    V2Version(u8),
    #[error("PROXY v2 header has unknown command {0:#x}")]
    V2Command(u8),
    #[error("PROXY v2 header has unsupported family/transport {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header declares {0} bytes, more than the {V2_MAX_PAYLOAD} allowed")]
    V2TooLong(usize),
    #[error("PROXY v2 header declares {0} bytes, too few for its addresses")]
    V2Truncated(usize),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("no complete PROXY header before the deadline")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(io::ErrorKind),
}

/// Longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Bound on the v2 payload (addresses + TLVs) after the 16-byte fixed part.
pub const V2_MAX_PAYLOAD: usize = 1024;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Parse a header at the start of `buf`. `Ok(None)` = need more bytes;
/// `Ok(Some((header, consumed)))` = the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxy),
    }
}

/// Do these first bytes of a connection start a PROXY header (v1 or v2)? None while too few to tell.
pub fn starts_header(buf: &[u8]) -> Option<bool> {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        (buf[..n] == sig[..n]).then_some(n == sig.len())
    };
    match (matches(V1_PREFIX), matches(&V2_SIGNATURE)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => Some(false),
        _ => None,
    }
}

/// Read exactly the PROXY header from `stream`, never past it, within `timeout`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .unwrap_or(Err(ProxyProtocolError::Timeout))
}

async fn read_header_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    loop {
        if let Some((header, _)) = parse(&buf)? {
            return Ok(header);
        }
        let start = buf.len();
        buf.resize(start + bytes_wanted(&buf), 0);
        stream
            .read_exact(&mut buf[start..])
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ProxyProtocolError::Closed,
                kind => ProxyProtocolError::Io(kind),
            })?;
    }
}

/// How many more bytes an incomplete header surely needs: v1 is read byte-wise up to its CRLF,
/// v2 as its fixed part and then its declared payload.
fn bytes_wanted(buf: &[u8]) -> usize {
    match buf.first() {
        Some(b'\r') if buf.len() < V2_FIXED_LEN => V2_FIXED_LEN - buf.len(),
        Some(b'\r') => (V2_FIXED_LEN + v2_payload_len(buf))
            .saturating_sub(buf.len())
            .max(1),
        _ => 1,
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ProxyProtocolError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = v1_line_end(window)? else {
        return match buf.len() >= V1_MAX_LEN {
            true => Err(ProxyProtocolError::V1TooLong),
            false => Ok(None),
        };
    };
    // v1_line_end accepted only printable ASCII before the CRLF.
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyProtocolError::V1Malformed("not ASCII"))?;
    Ok(Some((parse_v1_line(line)?, end + 2)))
}

/// Index of the CR of the first CRLF, rejecting any other control byte before it.
fn v1_line_end(window: &[u8]) -> Result<Option<usize>, ProxyProtocolError> {
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => return Err(ProxyProtocolError::V1Malformed("CR without LF")),
                None => return Ok(None),
            },
            b' '..=b'~' => {}
            _ => return Err(ProxyProtocolError::V1Malformed("control or non-ASCII byte")),
        }
    }
    Ok(None)
}

fn parse_v1_line(line: &str) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts[..] else {
        return Err(ProxyProtocolError::V1Malformed(
            "expected 4 fields after the protocol",
        ));
    };
    let (src, dst) = match family {
        "TCP4" => (v1_ipv4(src)?, v1_ipv4(dst)?),
        "TCP6" => (v1_ipv6(src)?, v1_ipv6(dst)?),
        _ => {
            return Err(ProxyProtocolError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, v1_port(sport)?),
        destination: SocketAddr::new(dst, v1_port(dport)?),
    })
}

fn v1_ipv4(s: &str) -> Result<IpAddr, ProxyProtocolError> {
    s.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv4 address"))
}

fn v1_ipv6(s: &str) -> Result<IpAddr, ProxyProtocolError> {
    s.parse::<Ipv6Addr>()
        .map(IpAddr::V6)
        .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv6 address"))
}

/// A decimal port 0..=65535: digits only, no sign, no leading zero.
fn v1_port(s: &str) -> Result<u16, ProxyProtocolError> {
    let bad = ProxyProtocolError::V1Malformed("bad port");
    let digits_only = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn v2_payload_len(buf: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([buf[14], buf[15]]))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ProxyProtocolError::NotProxy);
    }
    if buf.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let (version, command, family) = (buf[12] >> 4, buf[12] & 0x0f, buf[13]);
    if version != 2 {
        return Err(ProxyProtocolError::V2Version(version));
    }
    if command > 1 {
        return Err(ProxyProtocolError::V2Command(command));
    }
    let len = v2_payload_len(buf);
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyProtocolError::V2TooLong(len));
    }
    let total = V2_FIXED_LEN + len;
    let Some(payload) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(None);
    };
    let header = match command {
        0 => ProxyHeader::Local,
        _ => v2_addresses(family, payload)?,
    };
    Ok(Some((header, total)))
}

/// The address block of a v2 PROXY command; TLVs after it are skipped.
fn v2_addresses(family: u8, payload: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    const TCP4: u8 = 0x11;
    const TCP6: u8 = 0x21;
    let (ip_len, need) = match family {
        f if f >> 4 == 0 => return Ok(ProxyHeader::Local),
        TCP4 => (4, 12),
        TCP6 => (16, 36),
        _ => return Err(ProxyProtocolError::V2Family(family)),
    };
    if payload.len() < need {
        return Err(ProxyProtocolError::V2Truncated(payload.len()));
    }
    let ip = |b: &[u8]| -> IpAddr {
        match <[u8; 4]>::try_from(b) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16])),
        }
    };
    let ports = &payload[2 * ip_len..need];
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(
            ip(&payload[..ip_len]),
            u16::from_be_bytes([ports[0], ports[1]]),
        ),
        destination: SocketAddr::new(
            ip(&payload[ip_len..2 * ip_len]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_header_from_its_first_bytes() {
        assert_eq!(starts_header(b""), None);
        assert_eq!(starts_header(b"PRO"), None);
        assert_eq!(starts_header(b"PROXY TCP4"), Some(true));
        assert_eq!(starts_header(b"\r\n\r\n\0\r\nQUIT\n!"), Some(true));
        assert_eq!(starts_header(b"\r\n\r\n"), None);
        assert_eq!(starts_header(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(starts_header(b"PUT"), Some(false));
        assert_eq!(starts_header(&[0x16, 3, 1]), Some(false));
    }
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: addr(src),
            destination: addr(dst),
        }
    }

    fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        let (s, d) = (source.ip(), destination.ip());
        let (sp, dp) = (source.port(), destination.port());
        format!("PROXY {family} {s} {d} {sp} {dp}\r\n").into_bytes()
    }

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        let len = (addrs.len() + tlvs.len()) as u16;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(addrs);
        out.extend_from_slice(tlvs);
        out
    }

    fn v2_addrs(source: SocketAddr, destination: SocketAddr) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
                0x11
            }
            (s, d) => {
                out.extend_from_slice(&to_v6(s).octets());
                out.extend_from_slice(&to_v6(d).octets());
                0x21
            }
        };
        out.extend_from_slice(&source.port().to_be_bytes());
        out.extend_from_slice(&destination.port().to_be_bytes());
        (family, out)
    }

    fn to_v6(ip: IpAddr) -> Ipv6Addr {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }
    }

    fn malformed(line: &str) -> bool {
        matches!(
            parse(line.as_bytes()),
            Err(ProxyProtocolError::V1Malformed(_))
        )
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let buf = b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let expected = proxied("192.168.0.1:56324", "10.0.0.2:443");
        assert_eq!(parse(buf), Ok(Some((expected, 43))));
        let buf = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        let expected = proxied("[2001:db8::1]:65535", "[::1]:0");
        assert_eq!(parse(buf), Ok(Some((expected, buf.len()))));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Some((ProxyHeader::Local, 15)))
        );
        let buf = b"PROXY UNKNOWN ffff:: 1.2.3.4 1 2\r\n";
        assert_eq!(parse(buf), Ok(Some((ProxyHeader::Local, buf.len()))));
    }

    #[test]
    fn v1_incomplete_needs_more() {
        for buf in [
            &b""[..],
            b"P",
            b"PROX",
            b"PROXY TCP4 1.2.3.4",
            b"PROXY UNKNOWN\r",
        ] {
            assert_eq!(parse(buf), Ok(None), "{buf:?}");
        }
    }

    #[test]
    fn v1_strict_fields() {
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"));
        assert!(malformed("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY UNKNOWNX\r\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"));
        assert!(malformed("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"));
        assert!(malformed("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(malformed("PROXY \r\n"));
    }

    #[test]
    fn v1_length_limit() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 2, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Ok(Some((ProxyHeader::Local, V1_MAX_LEN))));
        long.insert(20, b'x');
        assert_eq!(parse(&long), Err(ProxyProtocolError::V1TooLong));
    }

    #[test]
    fn not_proxy() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyProtocolError::NotProxy)
        );
        assert_eq!(parse(b"PROXX"), Err(ProxyProtocolError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyProtocolError::NotProxy));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Err(ProxyProtocolError::NotProxy)
        );
    }

    #[test]
    fn v2_proxy_inet_and_inet6() {
        let (fam, a) = v2_addrs(addr("1.2.3.4:1000"), addr("5.6.7.8:443"));
        let buf = v2(1, fam, &a, &[]);
        let expected = proxied("1.2.3.4:1000", "5.6.7.8:443");
        assert_eq!(parse(&buf), Ok(Some((expected, 28))));
        let (fam, a) = v2_addrs(addr("[2001:db8::7]:1"), addr("[::1]:65535"));
        let buf = v2(1, fam, &a, &[]);
        let expected = proxied("[2001:db8::7]:1", "[::1]:65535");
        assert_eq!(parse(&buf), Ok(Some((expected, 52))));
    }

    #[test]
    fn v2_skips_tlvs_and_stops_at_declared_length() {
        let (fam, a) = v2_addrs(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        // PP2_TYPE_AUTHORITY "x.io", then PP2_TYPE_NOOP.
        let tlvs = [0x02, 0, 4, b'x', b'.', b'i', b'o', 0x04, 0, 0];
        let mut buf = v2(1, fam, &a, &tlvs);
        let total = buf.len();
        buf.extend_from_slice(b"GET /");
        let expected = proxied("1.2.3.4:1", "5.6.7.8:2");
        assert_eq!(parse(&buf), Ok(Some((expected, total))));
    }

    #[test]
    fn v2_local_and_unspec() {
        let (fam, a) = v2_addrs(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        assert_eq!(
            parse(&v2(0, fam, &a, &[])),
            Ok(Some((ProxyHeader::Local, 28)))
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[], &[])),
            Ok(Some((ProxyHeader::Local, 16)))
        );
        assert_eq!(
            parse(&v2(0, 0x31, &[0; 216], &[])),
            Ok(Some((ProxyHeader::Local, 232)))
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[], &[])),
            Ok(Some((ProxyHeader::Local, 16)))
        );
    }

    #[test]
    fn v2_rejects() {
        use ProxyProtocolError as E;
        let (fam, a) = v2_addrs(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        let mut bad_version = v2(1, fam, &a, &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(E::V2Version(1)));
        assert_eq!(parse(&v2(2, fam, &a, &[])), Err(E::V2Command(2)));
        assert_eq!(parse(&v2(1, 0x12, &a, &[])), Err(E::V2Family(0x12)));
        assert_eq!(parse(&v2(1, 0x31, &[0; 216], &[])), Err(E::V2Family(0x31)));
        assert_eq!(parse(&v2(1, 0x41, &a, &[])), Err(E::V2Family(0x41)));
        assert_eq!(parse(&v2(1, 0x11, &a[..11], &[])), Err(E::V2Truncated(11)));
        assert_eq!(parse(&v2(1, 0x21, &a, &[])), Err(E::V2Truncated(12)));
        let big = vec![0; V2_MAX_PAYLOAD + 1];
        assert_eq!(
            parse(&v2(0, 0, &big, &[])),
            Err(E::V2TooLong(V2_MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn v2_incomplete_needs_more() {
        let (fam, a) = v2_addrs(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        let buf = v2(1, fam, &a, &[]);
        for n in 0..buf.len() {
            assert_eq!(parse(&buf[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[tokio::test]
    async fn reader_takes_exactly_the_header() {
        for header in [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0, 0, &[], &[]),
            v2(
                1,
                0x11,
                &v2_addrs(addr("1.2.3.4:1"), addr("5.6.7.8:2")).1,
                &[4, 0, 1, 0],
            ),
        ] {
            let mut input = header.clone();
            input.extend_from_slice(b"rest");
            let mut reader = &input[..];
            let parsed = read_header(&mut reader, Duration::from_secs(1)).await;
            assert_eq!(parsed, parse(&header).map(|h| h.unwrap().0));
            assert_eq!(reader, b"rest");
        }
    }

    #[tokio::test]
    async fn reader_errors() {
        let mut closed = &b"PROXY TCP4 1.2.3.4"[..];
        let res = read_header(&mut closed, Duration::from_secs(1)).await;
        assert_eq!(res, Err(ProxyProtocolError::Closed));
        let mut http = &b"GET / HTTP/1.1\r\n"[..];
        let res = read_header(&mut http, Duration::from_secs(1)).await;
        assert_eq!(res, Err(ProxyProtocolError::NotProxy));
        assert_eq!(http, b"ET / HTTP/1.1\r\n", "reads one byte to decide");
    }

    #[tokio::test]
    async fn reader_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4")
            .await
            .unwrap();
        let res = read_header(&mut server, Duration::from_millis(50)).await;
        assert_eq!(res, Err(ProxyProtocolError::Timeout));
    }

    fn any_addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)))),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)))),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&buf);
        }

        #[test]
        fn arbitrary_after_signatures_never_panic(
            v2_sig in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = if v2_sig { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
            buf.extend_from_slice(&tail);
            if let Ok(Some((_, n))) = parse(&buf) {
                prop_assert!(n <= buf.len());
            }
        }

        #[test]
        fn v1_round_trip((source, destination) in any_addr_pair(), tail in ".{0,20}") {
            let mut buf = v1(source, destination);
            let len = buf.len();
            buf.extend_from_slice(tail.as_bytes());
            let expected = ProxyHeader::Proxied { source, destination };
            prop_assert_eq!(parse(&buf), Ok(Some((expected, len))));
        }

        #[test]
        fn v2_round_trip(
            (source, destination) in any_addr_pair(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let (family, addrs) = v2_addrs(source, destination);
            let buf = v2(1, family, &addrs, &tlvs);
            let expected = ProxyHeader::Proxied { source, destination };
            prop_assert_eq!(parse(&buf), Ok(Some((expected, buf.len()))));
        }
    }
}
