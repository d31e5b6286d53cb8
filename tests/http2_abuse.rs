//! HTTP/2 peers that misbehave on purpose, from raw sockets: rapid reset, CONTINUATION flood, SETTINGS, PING and
//! WINDOW_UPDATE floods, streams past `max_concurrent_streams`, header lists past `max_header_bytes`, a body
//! that never comes. Each time limpet keeps serving everyone else, reaches no backend with a half-read request,
//! and its connection accounting returns to exactly what it was.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::StreamBody;
use support::h2::frame::*;
use support::h2::{goaway_code, raw_preface, read_frames, H2};
use support::metrics::gauge;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn h2c_config(backend: SocketAddr, keys: &str) -> String {
    simple_config("round_robin", &[backend], "", "").replacen(
        "[[server]]\n",
        &format!("[[server]]\nh2c = true\n{keys}\n"),
        1,
    )
}

/// A raw connection that has sent the preface and an empty SETTINGS, read limpet's SETTINGS and acknowledged it.
async fn raw_h2(addr: SocketAddr) -> TcpStream {
    let mut s = raw_preface(addr).await;
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("limpet's SETTINGS in time")
        .expect("limpet's SETTINGS");
    assert_eq!(head[3], SETTINGS, "limpet speaks first with SETTINGS");
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    s
}

/// Writes `bytes` in pieces while limpet takes them; stops at the first error or when a write has made no
/// progress for two seconds (limpet stopped reading). Returns how many bytes went out.
async fn push(s: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    for piece in bytes.chunks(64 * 1024) {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(piece)).await {
            Ok(Ok(())) => sent += piece.len(),
            _ => break,
        }
    }
    sent
}

/// Everyone else is still served: a fresh HTTP/2 connection and a fresh HTTP/1.1 one.
async fn others_are_served(addr: SocketAddr, name: &str) {
    let mut h2 = H2::connect(addr).await;
    let r = h2.get("/other").await;
    assert_eq!((r.status, r.body.as_str()), (200, name), "{r:?}");
    assert_eq!(who(addr, "/other-h1").await, name);
}

/// Once the attacker's connection is gone: everyone else is served, and its slot is given back.
async fn attacker_gone(limpet: &Limpet, attacker: TcpStream) {
    drop(attacker);
    others_are_served(limpet.addr(), "a").await;
    slots_return_to(limpet, 0).await;
}

/// limpet's client connections return to `base` (the attacker's slot is given back).
async fn slots_return_to(limpet: &Limpet, base: i64) {
    eventually(WAIT, "client connections back to the baseline", || async {
        (gauge(limpet, "limpet_client_connections_active").await == base).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_everyone_else_is_served() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, ""));
    let mut s = raw_h2(limpet.addr()).await;
    let mut attack = Vec::new();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        attack.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/slow/50", &[]),
        ));
        attack.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let sent = push(&mut s, &attack).await;
    let (frames, closed) = read_frames(&mut s, WAIT).await;
    let code = goaway_code(&frames);
    assert!(
        closed,
        "limpet kept a rapid-reset connection open (sent {sent} of {} bytes)",
        attack.len()
    );
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM, got {code:?}");
    assert!(
        b.hits() < 1_000,
        "{} reset streams reached the backend",
        b.hits()
    );
    attacker_gone(&limpet, s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_before_it_is_read_whole() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, ""));
    let mut s = raw_h2(limpet.addr()).await;
    let before = limpet.rss_kib();
    let mut attack = frame(HEADERS, 0, 1, &get_block("/", &[]));
    let mut field = Vec::new();
    field.push(0x00);
    let value = "v".repeat(100);
    for (part, text) in [("x-flood", value.as_str())].iter().map(|(n, v)| (*n, *v)) {
        field.push(part.len() as u8);
        field.extend_from_slice(part.as_bytes());
        field.push(text.len() as u8);
        field.extend_from_slice(text.as_bytes());
    }
    let continuation = frame(CONTINUATION, 0, 1, &field);
    for _ in 0..200_000 {
        attack.extend_from_slice(&continuation);
    }
    let sent = push(&mut s, &attack).await;
    let (frames, closed) = read_frames(&mut s, WAIT).await;
    assert!(closed, "limpet kept reading an endless header block");
    assert!(
        sent < attack.len(),
        "limpet read all {} bytes of an endless header block",
        attack.len()
    );
    assert!(
        goaway_code(&frames).is_some() || frames.iter().any(|(k, ..)| *k == RST_STREAM),
        "{frames:?}"
    );
    assert_eq!(b.hits(), 0, "a half-read request reached the backend");
    let grown = limpet.rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "limpet grew {grown} KiB on a header block it refused"
    );
    attacker_gone(&limpet, s).await;
}

/// Floods of control frames that each ask for an answer or change state: limpet either keeps up or stops
/// reading (the flood then waits on TCP), closes when the frames are invalid, grows boundedly, and serves
/// everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_ping_and_window_update_floods_do_not_hurt_others() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, ""));
    let base_rss = limpet.rss_kib();
    let floods: [(&str, Vec<u8>); 4] = [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])),
        ("PING", frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])),
        (
            "WINDOW_UPDATE",
            frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        ),
        (
            "WINDOW_UPDATE overflow",
            frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
        ),
    ];
    for (what, one) in floods {
        let mut s = raw_h2(limpet.addr()).await;
        let mut attack = Vec::with_capacity(one.len() * 200_000);
        for _ in 0..200_000 {
            attack.extend_from_slice(&one);
        }
        // The flood is not read back: limpet's answers pile up on its side until TCP stops them.
        let flood = tokio::spawn(async move {
            let sent = push(&mut s, &attack).await;
            (s, sent)
        });
        others_are_served(limpet.addr(), "a").await;
        let (mut s, sent) = tokio::time::timeout(Duration::from_secs(120), flood)
            .await
            .expect("the flood ends")
            .unwrap();
        let (frames, closed) = read_frames(&mut s, Duration::from_secs(2)).await;
        if what == "WINDOW_UPDATE overflow" {
            assert!(
                closed,
                "{what}: a window past 2^31-1 must close the connection"
            );
            assert_eq!(
                goaway_code(&frames),
                Some(0x3),
                "{what}: FLOW_CONTROL_ERROR"
            );
        }
        let grown = limpet.rss_kib().saturating_sub(base_rss);
        assert!(
            grown < 16 * 1024,
            "{what}: limpet grew {grown} KiB (sent {sent} bytes)"
        );
        attacker_gone(&limpet, s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_concurrent_streams_are_refused_and_the_rest_are_served() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, "max_concurrent_streams = 4"));
    let mut s = raw_h2(limpet.addr()).await;
    // Let the SETTINGS exchange settle, so the limit is in force.
    tokio::time::timeout(WAIT, async {
        let mut head = [0u8; 9];
        loop {
            s.read_exact(&mut head).await.unwrap();
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).await.unwrap();
            if head[3] == SETTINGS && head[4] & ACK != 0 {
                return;
            }
        }
    })
    .await
    .expect("limpet acknowledged our SETTINGS");
    let mut burst = Vec::new();
    for i in 0..6u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &get_block("/slow/1000", &[]),
        ));
    }
    s.write_all(&burst).await.unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_secs(5)).await;
    let refused: Vec<u32> = frames
        .iter()
        .filter(|(k, _, _, p)| *k == RST_STREAM && p.as_slice() == 7u32.to_be_bytes())
        .map(|(_, _, id, _)| *id)
        .collect();
    assert_eq!(
        refused,
        vec![9, 11],
        "the fifth and sixth streams are refused: {frames:?}"
    );
    let mut answered: Vec<u32> = frames
        .iter()
        .filter(|(k, f, _, _)| *k == DATA && f & END_STREAM != 0)
        .map(|(_, _, id, _)| *id)
        .collect();
    answered.sort_unstable();
    assert_eq!(
        answered,
        vec![1, 3, 5, 7],
        "the first four are served: {frames:?}"
    );
    assert_eq!(b.hits(), 4, "refused streams reach no backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_past_max_header_bytes_reaches_no_backend_and_the_connection_goes_on() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, "max_header_bytes = 4096"));
    let mut h2 = H2::connect(limpet.addr()).await;
    let big = "x".repeat(6000);
    let r = h2
        .try_request(support::h2::request(
            "GET",
            "/big-head",
            &format!("x-big: {big}\r\n"),
            "",
        ))
        .await;
    let status = r.map(|reply| reply.status);
    assert_eq!(status, Ok(431), "an oversized header list is answered 431");
    assert_eq!(b.hits(), 0, "it reached the backend");
    let mut again = H2::connect(limpet.addr()).await;
    assert_eq!(again.get("/next").await.status, 200);
}

/// A client that asks for a large answer and never reads it: once limpet's writes have made no progress for
/// `client_header_timeout`, the connection is cut and its slot given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_client_header_timeout() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, "client_header_timeout = \"1s\""));
    let mut s = raw_h2(limpet.addr()).await;
    // Windows wide open, so what stops limpet is TCP, not HTTP/2 flow control.
    s.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    s.write_all(&frame(WINDOW_UPDATE, 0, 0, &0x7000_0000u32.to_be_bytes()))
        .await
        .unwrap();
    support::h2::send_get(&mut s, 1, "/big/50000000").await;
    eventually(WAIT, "the backend was asked", || async {
        (b.hits() == 1).then_some(())
    })
    .await;
    // Nothing is read from here on.
    slots_return_to(&limpet, 0).await;
    others_are_served(limpet.addr(), "a").await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_body_never_comes_gets_408_and_its_connection_goes_on() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&h2c_config(b.addr, "client_header_timeout = \"1s\""));
    let (_tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://limpet/echo")
        .version(Version::HTTP_2)
        .header("content-length", "10")
        .body(body)
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(TcpStream::connect(limpet.addr()).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("an answer before the test's deadline")
        .expect("an answer");
    assert_eq!(resp.status(), 408);
    // The same connection serves its next stream.
    let next = Request::builder()
        .uri("http://limpet/next")
        .version(Version::HTTP_2)
        .body(StreamBody::new(tokio_stream_from(
            tokio::sync::mpsc::channel(1).1,
        )))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(next))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    others_are_served(limpet.addr(), "a").await;
}

/// A stream of a channel's items (ends when every sender is gone).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
