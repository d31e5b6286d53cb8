use proptest::prelude::*;

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
