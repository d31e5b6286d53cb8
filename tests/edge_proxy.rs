//! The real client address: PROXY protocol v1 and v2 headers (crafted here) on `proxy_protocol = true` listeners,
//! `trusted_proxies` with the right-most untrusted `X-Forwarded-For` address, and a spoofed `X-Forwarded-For`
//! from an untrusted peer that changes neither the `ip_hash` choice nor `X-Real-IP`.
//!
//! The addresses carried in headers are documentation ranges (RFC 5737, RFC 3849): data only, never dialled.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::metrics::metric;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

/// One listener (with `server_keys`) → location "/" → upstream "app" with `ip_hash` over `backends`; access log
/// on stderr.
fn config(backends: &[SocketAddr], server_keys: &str) -> String {
    let mut s = format!(
        "[global]\naccess_log = \"stderr\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n{server_keys}\n\n\
         [[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\nconnect_timeout = \"2s\"\n\n\
         [upstream.app]\nbalance = \"ip_hash\"\n"
    );
    for a in backends {
        s.push_str(&format!("\n[[upstream.app.server]]\naddr = \"{a}\"\n"));
    }
    s
}

/// A PROXY v1 header.
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 PROXY-command header over TCP, with `tlvs` after the addresses.
fn v2(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addrs = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend(s.octets());
            addrs.extend(d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addrs.extend(s.octets());
            addrs.extend(d.octets());
            0x21
        }
        _ => panic!("mixed families"),
    };
    addrs.extend(source.port().to_be_bytes());
    addrs.extend(destination.port().to_be_bytes());
    addrs.extend(tlvs);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, family]);
    h.extend((addrs.len() as u16).to_be_bytes());
    h.extend(addrs);
    h
}

/// A PROXY v2 LOCAL header (a health check of the balancer itself: the connection's own address counts).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x20, 0x00, 0x00, 0x00]);
    h
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What came back for one request: the backend that answered (the body) and the status.
struct Answer {
    status: u16,
    backend: String,
}

/// Sends `prefix` then `GET path` (with `X-Forwarded-For: xff` when given) on a new connection.
async fn send(limpet: SocketAddr, prefix: &[u8], path: &str, xff: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(limpet).await.unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend(
        format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n").as_bytes(),
    );
    if let Some(xff) = xff {
        bytes.extend(format!("X-Forwarded-For: {xff}\r\n").as_bytes());
    }
    bytes.extend(b"\r\n");
    s.write_all(&bytes).await.unwrap();
    let text = read_response(&mut s, WAIT)
        .await
        .expect("a response from limpet");
    let backend = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Answer {
        status: status_of(&text),
        backend,
    }
}

/// Two backends, and two client addresses (from `candidates`) that `route` sends to different ones:
/// (address, backend name) for each.
async fn two_ways<F, Fut>(candidates: &[String], mut route: F) -> [(String, String); 2]
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let first = candidates[0].clone();
    let first_backend = route(first.clone()).await.backend;
    for c in &candidates[1..] {
        let b = route(c.clone()).await.backend;
        if b != first_backend {
            return [(first, first_backend), (c.clone(), b)];
        }
    }
    panic!("every candidate address went to {first_backend}");
}

/// Client addresses differing in the third octet, which ip_hash hashes.
fn candidates() -> Vec<String> {
    (0..64).map(|n| format!("198.51.{n}.10")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_source_is_the_client_address() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(&[backend.addr], "proxy_protocol = true"));
    let header = v1(sa("203.0.113.7:40000"), sa("127.0.0.1:80"));
    assert_eq!(send(limpet.addr(), &header, "/v1", None).await.status, 200);
    let seen = backend.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.7");
    limpet.wait_log("203.0.113.7 \"GET /v1\" 200", WAIT).await;

    let header = v1(sa("[2001:db8::7]:40000"), sa("[::1]:80"));
    assert_eq!(
        send(limpet.addr(), &header, "/v1-6", None).await.status,
        200
    );
    let seen = backend.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "2001:db8::7");
    assert_eq!(seen.headers["x-real-ip"], "2001:db8::7");

    // UNKNOWN: the connection's own address stands.
    let answer = send(limpet.addr(), b"PROXY UNKNOWN\r\n", "/unknown", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(backend.last().unwrap().headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_source_is_the_client_address() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(&[backend.addr], "proxy_protocol = true"));
    // TLVs after the addresses (AUTHORITY "x.io", then NOOP) are skipped.
    let tlvs = [0x02, 0x00, 0x04, b'x', b'.', b'i', b'o', 0x04, 0x00, 0x00];
    let header = v2(sa("198.51.100.9:5555"), sa("127.0.0.1:443"), &tlvs);
    assert_eq!(send(limpet.addr(), &header, "/v2", None).await.status, 200);
    let seen = backend.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.9");
    assert_eq!(seen.headers["x-real-ip"], "198.51.100.9");
    limpet.wait_log("198.51.100.9 \"GET /v2\" 200", WAIT).await;

    let header = v2(sa("[2001:db8::9]:5555"), sa("[::1]:443"), &[]);
    assert_eq!(
        send(limpet.addr(), &header, "/v2-6", None).await.status,
        200
    );
    assert_eq!(
        backend.last().unwrap().headers["x-forwarded-for"],
        "2001:db8::9"
    );

    assert_eq!(
        send(limpet.addr(), &v2_local(), "/local", None)
            .await
            .status,
        200
    );
    assert_eq!(backend.last().unwrap().headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_valid_proxy_header_is_closed() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(
        &[backend.addr],
        "proxy_protocol = true\nclient_header_timeout = \"2s\"",
    ));
    let mut bad_version = v2(sa("198.51.100.9:1"), sa("127.0.0.1:2"), &[]);
    bad_version[12] = 0x11;
    let cases: [(&str, Vec<u8>); 4] = [
        ("no header", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "bad v1",
            b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "bad v2 version",
            [bad_version, b"GET / HTTP/1.1\r\n\r\n".to_vec()].concat(),
        ),
        // A header that never ends: closed when client_header_timeout runs out.
        ("unfinished", b"PROXY TCP4 203.0.113.7".to_vec()),
    ];
    for (what, bytes) in cases {
        let (answer, closed) = raw(limpet.addr(), &bytes, WAIT).await;
        assert!(closed, "{what}: connection left open");
        assert!(answer.is_empty(), "{what}: limpet answered {answer:?}");
    }
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_outside_proxy_protocol_from_closes_the_connection() {
    let backend = HttpBackend::start("b1").await;
    // The balancers are 192.0.2.0/24; the test client (127.0.0.1) is not one of them, and is a trusted proxy
    // for X-Forwarded-For: a PROXY header would make it believed for any address it names.
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";
    let limpet = Limpet::start(
        &(admin.to_string()
            + &config(
                &[backend.addr],
                "proxy_protocol = true\nproxy_protocol_from = [\"192.0.2.0/24\"]\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\nclient_header_timeout = \"2s\"",
            )),
    );
    let forged = v1(sa("10.1.1.1:40000"), sa("127.0.0.1:80"));
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "v1",
            [
                forged.clone(),
                b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "v2",
            [
                v2(sa("10.1.1.1:1"), sa("127.0.0.1:2"), &[]),
                b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        ("v1 without the request", forged.clone()),
    ];
    for (what, bytes) in cases {
        let (answer, closed) = raw(limpet.addr(), &bytes, WAIT).await;
        assert!(closed, "{what}: connection left open");
        assert!(answer.is_empty(), "{what}: limpet answered {answer:?}");
    }
    // The signature sent a byte at a time is still seen for what it is.
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    // (Closed once the six bytes "PROXY " are in: later writes may meet a reset.)
    for b in &forged[..8] {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (answer, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed && answer.is_empty(), "byte by byte: {answer:?}");
    assert_eq!(backend.hits(), 0);
    let closed = metric(
        &limpet.metrics().await,
        "limpet_client_connections_closed_total",
        &[("reason", "proxy_protocol")],
    );
    assert_eq!(closed, 4.0);

    // The same peer speaking plain HTTP is served as itself; its X-Forwarded-For is believed as configured.
    let answer = send(limpet.addr(), b"", "/plain", Some("203.0.113.9")).await;
    assert_eq!(answer.status, 200);
    let seen = backend.last().unwrap();
    assert_eq!(seen.uri, "/plain");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
    let answer = send(limpet.addr(), b"", "/plain", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(backend.last().unwrap().headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_and_head_share_one_header_timeout() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(
        &[backend.addr],
        "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]\nclient_header_timeout = \"2s\"",
    ));
    let header = v1(sa("203.0.113.7:40000"), sa("127.0.0.1:80"));
    let head = b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Each part 1.2 s after the previous: each under 2 s, together over. A byte at a time, as a slow client.
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(&header).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut written = 0;
    for b in head {
        if started.elapsed() >= Duration::from_millis(1200) {
            break;
        }
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        written += 1;
        tokio::time::sleep(Duration::from_millis(1200 / head.len() as u64)).await;
    }
    let _ = s.write_all(&head[written..]).await;
    let (answer, closed) = read_until_close(&mut s, WAIT).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed, "connection left open");
    assert!(
        !answer.contains(" 200 "),
        "a head completed 2.4 s after the connection's start was served: {answer}"
    );
    assert_eq!(backend.hits(), 0);
    // Prompt ones are served.
    assert_eq!(
        send(limpet.addr(), &header, "/prompt", None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_follows_the_proxy_address_not_a_spoofed_header() {
    let (b1, b2) = (
        HttpBackend::start("b1").await,
        HttpBackend::start("b2").await,
    );
    // The TCP peer (127.0.0.1) is trusted, but after a PROXY header the client is the address it carries.
    let limpet = Limpet::start(&config(
        &[b1.addr, b2.addr],
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\"]",
    ));
    let addr = limpet.addr();
    let via_proxy = |ip: String, xff: Option<String>| async move {
        let header = v1(
            SocketAddr::new(ip.parse().unwrap(), 40000),
            sa("127.0.0.1:80"),
        );
        send(addr, &header, "/", xff.as_deref()).await
    };
    let [(a, a_backend), (b, b_backend)] = two_ways(&candidates(), |ip| via_proxy(ip, None)).await;
    for _ in 0..3 {
        assert_eq!(via_proxy(a.clone(), None).await.backend, a_backend);
        assert_eq!(via_proxy(b.clone(), None).await.backend, b_backend);
    }
    // An untrusted PROXY source claiming to forward for `b`: not believed.
    for _ in 0..3 {
        let answer = via_proxy(a.clone(), Some(b.clone())).await;
        assert_eq!(
            answer.backend, a_backend,
            "spoofed X-Forwarded-For moved the client"
        );
    }
    let seen = [&b1, &b2]
        .into_iter()
        .find(|be| be.name == a_backend)
        .unwrap()
        .last()
        .unwrap();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        format!("{b}, {a}").as_str()
    );
    assert_eq!(seen.headers["x-real-ip"], a.as_str());
    // A trusted PROXY source (an inner balancer) forwarding for `b`: believed.
    let answer = via_proxy("127.0.0.9".into(), Some(b.clone())).await;
    assert_eq!(answer.backend, b_backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_set_the_client_address_and_untrusted_ones_do_not() {
    let (b1, b2) = (
        HttpBackend::start("b1").await,
        HttpBackend::start("b2").await,
    );
    let backends = [b1.addr, b2.addr];
    let seen_by = |name: &str| {
        [&b1, &b2]
            .into_iter()
            .find(|be| be.name == name)
            .unwrap()
            .last()
            .unwrap()
    };

    let trusting = Limpet::start(&config(&backends, "trusted_proxies = [\"127.0.0.0/8\"]"));
    let addr = trusting.addr();
    let [(a, a_backend), (b, b_backend)] = two_ways(&candidates(), |ip| async move {
        send(addr, b"", "/", Some(&ip)).await
    })
    .await;
    // The right-most untrusted address is the client (nginx real_ip_recursive): trusted hops are skipped,
    // and whatever is left of the client is not believed.
    for xff in [format!("{b}, 127.0.0.7"), format!("{a}, {b}")] {
        let answer = send(addr, b"", "/", Some(&xff)).await;
        assert_eq!(answer.backend, b_backend, "{xff}");
        let seen = seen_by(&b_backend);
        assert_eq!(seen.headers["x-real-ip"], b.as_str());
        assert_eq!(
            seen.headers["x-forwarded-for"],
            format!("{xff}, 127.0.0.1").as_str()
        );
    }
    drop(trusting);

    // Same backends, but the peer is not a trusted proxy: X-Forwarded-For is kept and appended to, never believed.
    let wary = Limpet::start(&config(&backends, "trusted_proxies = [\"10.0.0.0/8\"]"));
    let own = send(wary.addr(), b"", "/", None).await.backend;
    for spoofed in [&a, &b] {
        for _ in 0..3 {
            let answer = send(wary.addr(), b"", "/", Some(spoofed)).await;
            assert_eq!(
                answer.backend, own,
                "X-Forwarded-For: {spoofed} moved the client"
            );
        }
        let seen = seen_by(&own);
        assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
        assert_eq!(
            seen.headers["x-forwarded-for"],
            format!("{spoofed}, 127.0.0.1").as_str()
        );
    }
    // One of the two spoofed addresses belongs to the other backend, so a believed header would have moved it.
    assert!(a_backend != own || b_backend != own);
    wary.wait_log("127.0.0.1 \"GET /\" 200", WAIT).await;
}
