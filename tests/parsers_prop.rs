//! Properties of the pure parsers, over generated input: the config loader, Engine.IO handshake and sid/cookie
//! extraction, the PROXY protocol parser, the raw request-head scanner and the upstream response reader. None
//! may panic on any input, and each finds exactly what was put in. The fuzz targets in fuzz/ explore the same functions by coverage.

#[path = "support/encode.rs"]
mod encode;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;
use encode::percent_encode;
use limpet::engineio::{
    cookie_sid, decode_sid, handshake_sid, is_handshake, query_param, query_sid, set_cookie_sid,
    MAX_SID_LEN,
};
use limpet::h1::chunked::{Chunked, Step};
use limpet::h1::head::{keeps_alive, parse_response, response_framing};
use limpet::proxy_protocol::{self, ProxyHeader};
use limpet::HeadScan;
use proptest::prelude::*;

/// A sid as Engine.IO servers make them (base64url-ish).
fn sid() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,40}"
}

/// Query text around a sid: other parameters, none named `sid`.
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-rt-z][a-z0-9]{0,6}", "[A-Za-z0-9._~-]{0,8}"), 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // ---- Engine.IO -------------------------------------------------------------------------------------

    #[test]
    fn handshake_sid_never_panics_and_finds_only_what_is_there(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(sid) = handshake_sid(&body) {
            prop_assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN);
            prop_assert!(body.windows(sid.len()).any(|w| w == sid.as_bytes()));
        }
    }

    #[test]
    fn handshake_sid_reads_eio4_and_eio3_open_packets(sid in sid(), ping in 1u32..100_000) {
        let packet = format!(r#"0{{"sid":"{sid}","upgrades":["websocket"],"pingInterval":{ping},"pingTimeout":20000}}"#);
        prop_assert_eq!(handshake_sid(packet.as_bytes()), Some(sid.as_str()));
        let eio4_more = format!("{packet}\x1e40");
        prop_assert_eq!(handshake_sid(eio4_more.as_bytes()), Some(sid.as_str()));
        let eio3 = format!("{}:{packet}2:40", packet.len());
        prop_assert_eq!(handshake_sid(eio3.as_bytes()), Some(sid.as_str()));
        // Cut anywhere before the sid's closing quote: never a truncated sid.
        let close = packet.find(&format!("{sid}\"")).unwrap() + sid.len();
        for cut in 0..=close {
            prop_assert_eq!(handshake_sid(&packet.as_bytes()[..cut]), None);
        }
    }

    #[test]
    fn query_sid_is_the_first_sid_parameter(before in params(), after in params(), sid in sid(), other in sid()) {
        let mut pairs: Vec<String> = before.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.push(format!("sid={sid}"));
        pairs.push(format!("sid={other}"));
        pairs.extend(after.iter().map(|(k, v)| format!("{k}={v}")));
        let query = pairs.join("&");
        prop_assert_eq!(query_sid(&query), Some(sid.as_str()));
        prop_assert_eq!(query_param(&query, "sid"), Some(sid.as_str()));
        let with_eio = format!("EIO=4&{query}");
        prop_assert!(!is_handshake(&with_eio));
        let without: Vec<String> = before.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let handshake = format!("EIO=4&transport=polling&{}", without.join("&"));
        prop_assert!(is_handshake(&handshake));
    }

    #[test]
    fn sid_extraction_never_panics_and_stays_bounded(text in "\\PC{0,300}|(io=|sid=|[a-z&;=% ]){0,200}") {
        for raw in [query_sid(&text), cookie_sid(&text), set_cookie_sid(&text)].into_iter().flatten() {
            prop_assert!(!raw.is_empty() && text.contains(raw));
            if let Some(sid) = decode_sid(raw) {
                prop_assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN);
            }
        }
        let _ = is_handshake(&text);
        let _ = decode_sid(&text);
    }

    #[test]
    fn cookie_and_set_cookie_give_the_io_value(sid in sid(), name in "[a-hj-z][a-z]{0,5}", v in "[a-z0-9]{0,8}") {
        let cookie = format!("{name}={v}; io={sid}; x=1");
        prop_assert_eq!(cookie_sid(&cookie), Some(sid.as_str()));
        let quoted = format!("io=\"{sid}\"");
        prop_assert_eq!(cookie_sid(&quoted), Some(sid.as_str()));
        let set = format!("io={sid}; Path=/; HttpOnly; SameSite=Lax");
        prop_assert_eq!(set_cookie_sid(&set), Some(sid.as_str()));
        let other = format!("{name}={sid}; Path=/");
        prop_assert_eq!(set_cookie_sid(&other), None);
    }

    #[test]
    fn decode_sid_inverts_percent_encoding(s in "\\PC{1,30}") {
        let encoded = percent_encode(&s);
        let decoded = decode_sid(&encoded);
        prop_assert_eq!(decoded.as_deref(), Some(s.as_str()));
    }

    #[test]
    fn decode_sid_gives_only_bounded_sids(raw in "[%0-9A-Fa-fgz]{0,400}") {
        if let Some(sid) = decode_sid(&raw) {
            prop_assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN);
        }
    }

    // ---- PROXY protocol --------------------------------------------------------------------------------

    #[test]
    fn proxy_protocol_never_panics_and_never_overreads(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, used))) = proxy_protocol::parse(&buf) {
            prop_assert!(used > 0 && used <= buf.len());
        }
    }

    #[test]
    fn proxy_v1_round_trips(src in any::<(IpAddr, u16)>().prop_map(SocketAddr::from), dst_port in any::<u16>(), rest in proptest::collection::vec(any::<u8>(), 0..40)) {
        let (family, dst) = match src.ip() {
            IpAddr::V4(_) => ("TCP4", SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), dst_port)),
            IpAddr::V6(_) => ("TCP6", SocketAddr::new(Ipv6Addr::LOCALHOST.into(), dst_port)),
        };
        let line = format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
        let mut buf = line.clone().into_bytes();
        buf.extend_from_slice(&rest);
        let want = ProxyHeader::Proxied { source: src, destination: dst };
        prop_assert_eq!(proxy_protocol::parse(&buf), Ok(Some((want, line.len()))));
        for cut in 0..line.len() - 1 {
            prop_assert_eq!(proxy_protocol::parse(&line.as_bytes()[..cut]), Ok(None));
        }
    }

    #[test]
    fn proxy_v2_round_trips(src in any::<(IpAddr, u16)>().prop_map(SocketAddr::from), dst_port in any::<u16>(), tlv in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut addrs = Vec::new();
        let (family, dst) = match src.ip() {
            IpAddr::V4(ip) => {
                let dst = Ipv4Addr::new(10, 0, 0, 1);
                addrs.extend_from_slice(&ip.octets());
                addrs.extend_from_slice(&dst.octets());
                (0x11u8, IpAddr::V4(dst))
            }
            IpAddr::V6(ip) => {
                addrs.extend_from_slice(&ip.octets());
                addrs.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                (0x21u8, IpAddr::V6(Ipv6Addr::LOCALHOST))
            }
        };
        addrs.extend_from_slice(&src.port().to_be_bytes());
        addrs.extend_from_slice(&dst_port.to_be_bytes());
        addrs.extend_from_slice(&tlv);
        let mut buf = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        buf.push(0x21);
        buf.push(family);
        buf.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        buf.extend_from_slice(&addrs);
        let want = ProxyHeader::Proxied { source: src, destination: SocketAddr::new(dst, dst_port) };
        prop_assert_eq!(proxy_protocol::parse(&buf), Ok(Some((want, buf.len()))));
        for cut in 0..buf.len() {
            prop_assert_eq!(proxy_protocol::parse(&buf[..cut]), Ok(None));
        }
    }

    // ---- Request heads -----------------------------------------------------------------------------------

    #[test]
    fn head_scan_counts_framing_lines_however_the_bytes_arrive(
        cl in 0u8..3, te in 0u8..3, padded in any::<bool>(), others in proptest::collection::vec("[A-Za-z-]{1,12}", 0..8),
        split in any::<prop::sample::Index>(), body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut head = String::from("POST / HTTP/1.1\r\n");
        for name in &others {
            head.push_str(&format!("{name}x: v\r\n"));
        }
        for _ in 0..cl {
            head.push_str("Content-Length: 5\r\n");
        }
        for _ in 0..te {
            head.push_str(if padded { "TRANSFER-ENCODING: chunked \r\n" } else { "transfer-encoding: chunked\r\n" });
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        let at = split.index(bytes.len() + 1);
        let mut scan = HeadScan::default();
        let got = scan.feed(&bytes[..at]).or_else(|| scan.feed(&bytes[at..])).expect("a whole head");
        prop_assert_eq!(got.content_length, cl);
        prop_assert_eq!(got.transfer_encoding, te);
        prop_assert_eq!(got.padded_coding, padded && te > 0);
    }

    #[test]
    fn head_scan_never_panics(a in proptest::collection::vec(any::<u8>(), 0..400), b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut scan = HeadScan::default();
        let _ = scan.feed(&a).or_else(|| scan.feed(&b));
    }

    // ---- Config --------------------------------------------------------------------------------------------
    // Text without ':' never names a host:port, so no input here can make the loader resolve a name.

    // ---- Upstream responses ----------------------------------------------------------------------------

    #[test]
    fn chunked_bodies_decode_to_what_was_encoded_however_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..8),
        split in any::<proptest::sample::Index>(),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend(format!("{:x}\r\n", c.len()).bytes());
            wire.extend(c);
            wire.extend(b"\r\n");
        }
        wire.extend(b"0\r\nx-trailer: 1\r\n\r\n");
        let split = split.index(wire.len() + 1);
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&wire[..split]);
        let mut rest = Some(&wire[split..]);
        let mut data = Vec::new();
        loop {
            match dec.step(&mut buf) {
                Ok(Step::Data(d)) => data.extend_from_slice(&d),
                Ok(Step::End) => break,
                Ok(Step::More) => match rest.take() {
                    Some(more) => buf.extend_from_slice(more),
                    None => prop_assert!(false, "ended early"),
                },
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
        prop_assert_eq!(data, chunks.concat());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn response_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(head)) = parse_response(&mut buf) {
            if let Ok(framing) = response_framing(&http::Method::GET, &head) {
                let _ = keeps_alive(&head, framing);
            }
        }
    }

    #[test]
    fn config_parse_never_panics_on_text(text in "[^:]{0,400}") {
        if let Err(problems) = limpet::parse_config(&text) {
            prop_assert!(!problems.is_empty());
        }
    }

    #[test]
    fn config_parse_never_panics_on_near_valid_files(
        listen in any::<Ipv4Addr>(), port in any::<u16>(),
        duration in prop_oneof![Just("10s".to_string()), "[0-9]{0,3}[a-z]{0,3}", any::<i64>().prop_map(|n| n.to_string())],
        size in prop_oneof![Just("1m".to_string()), "[0-9]{0,12}[kmgKMG]?", Just("-1".to_string())],
        weight in any::<i64>(), balance in "round_robin|least_conn|ip_hash|hash|sid|[a-z_]{0,10}",
        path in "/[a-z/.]{0,10}|[a-z]{0,4}", servers in 0usize..3, drop_line in any::<prop::sample::Index>(),
    ) {
        let mut text = format!(
            "[global]\nmax_connections = {weight}\n\n[[server]]\nlisten = [\"{listen}:{port}\"]\nclient_header_timeout = \"{duration}\"\nmax_header_bytes = {weight}\n\n\
[[server.location]]\npath = \"{path}\"\nproxy_pass = \"app\"\nread_timeout = \"{duration}\"\nclient_max_body_size = \"{size}\"\n\n\
[upstream.app]\nbalance = \"{balance}\"\n"
        );
        for i in 0..servers {
            text.push_str(&format!("\n[[upstream.app.server]]\naddr = \"127.0.0.{}:{port}\"\nweight = {weight}\nfail_timeout = \"{duration}\"\n", i + 1));
        }
        let full = limpet::parse_config(&text);
        if let Err(problems) = &full {
            prop_assert!(!problems.is_empty());
        }
        let lines: Vec<&str> = text.lines().collect();
        let gone = drop_line.index(lines.len());
        let fewer: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, l)| *l).collect();
        let _ = limpet::parse_config(&fewer.join("\n"));
    }
}

/// Inputs the fuzzers found that once broke a parser stay here as plain regression tests.
#[test]
fn fuzz_regressions() {
    let proxy: &[&[u8]] = &[
        b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    ];
    for input in proxy {
        let _ = proxy_protocol::parse(input);
    }
    for body in [
        &b"0"[..],
        b"1",
        b"9:",
        b"\x00",
        b"\x00\x01\xff",
        b"0{\"sid\":\"",
        b"12345678901:0",
    ] {
        let _ = handshake_sid(body);
    }
    // A raw io cookie longer than any sid: extraction returns it whole, decoding refuses it.
    let long = format!("io=a{}; x=1", "h".repeat(200));
    assert_eq!(cookie_sid(&long).map(str::len), Some(201));
    assert_eq!(cookie_sid(&long).and_then(decode_sid), None);
    for text in ["%", "%4", "%zz", "%C3", "io=\"", "io=\"\"", "sid=&sid=x"] {
        let _ = decode_sid(text);
        let _ = cookie_sid(text);
        let _ = query_sid(text);
    }
}
